"""Opening videos, GIFs and images as frame sequences: ``open_video(path) -> Video``.

Every file gets an exact frame index at open (an MP4's sample table checked against its first packets and last GOP,
or a PyAV demux of every packet; no decoding, plus a decode of the last GOP unless the file is intact), so
``metadata.num_frames`` counts frames that really decode and ``metadata.timestamps`` are the true presentation times.
The index is kept per file version (``_index_cache``): reopening costs a ``stat``.
Frames are then decoded by PyAV (planned seeks, independent GOPs on up to ``num_threads`` threads) or decord (clamped
to the PyAV index, rotation applied here). An image is a one-frame video decoded by Pillow.

Decoders are opened lazily and dropped when a :class:`Video` is pickled, so a ``Video`` built in the main process can
be sent to DataLoader workers: each worker reopens the file on its first ``get_frames``.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from einops import rearrange

from vidvlm.data import _image, _index_cache, _pyav
from vidvlm.errors import VideoDecodeError

BACKENDS = ("auto", "pyav", "decord")
# FFmpeg demuxers that read a single still image; such files are decoded by Pillow like any other image.
_STILL_FORMATS = {"image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "tiff_pipe", "jpegls_pipe"}
# decord serves only what the tests prove it right on: H.264 (8 and 10 bit) and VP9, in one-video-stream files that are
# not AVI and whose index is complete. Everything else goes to PyAV, even when decord is asked for, because decord
# - cannot open codecs its bundled FFmpeg lacks (AV1: "cannot find video stream", dmlc/decord#262);
# - cannot be told which stream to decode, and its older FFmpeg picks another "best" stream than PyAV's on files with
#   several video streams (it returned the 480x270 stream of a file whose default stream is 320x180);
# - reads GIFs wrongly or not at all; on AVI (no pts, only dts) with B-frames its random access returns frames
#   shifted by several positions; VP8 WebM returns frames from the start whatever the index (dmlc/decord#91); on HEVC
#   (x265 default open GOPs) its random access returned wrong frames in 2 of 5 random index sets on this corpus;
# - counts frames an edit list discards and then returns shifted frames; trusts header frame counts and can hang past
#   the real end (dmlc/decord#373): such indexes are not ``complete``;
# - seeks MPEG-TS/PS by their clocks and returns frames a GOP or more away (H.264 in MPEG-TS: wrong frames in every
#   random index set tried);
# - on FLV with H.264 B-frames returns the wrong frame when asked for one of the last few alone (frame 249 of 250 gave
#   frame 246);
# - on H.264 with open GOPs (x264 open-gop, in MP4 or Matroska) returns wrong frames (16 of a few hundred asked): it
#   decodes a GOP's leading B-frames from their own keyframe, without the references of the GOP before;
# - cannot open Matroska/WebM whose header states no duration (live recordings, e.g. a browser's MediaRecorder).
_DECORD_CODECS = {"h264", "vp9"}
_DECORD_UNSAFE_FORMATS = {"gif", "avi", "mpegts", "mpeg", "flv"}

Size = int | tuple[int, int] | None


@dataclass(frozen=True)
class VideoMetadata:
    """What a video holds, measured on the file rather than read from its header.

    Attributes:
        path: the file.
        backend: the decoder that serves frames: ``"pyav"``, ``"decord"`` or ``"pillow"`` (images).
        num_frames: frames that really decode.
        fps: average frame rate, ``num_frames / duration`` (0.0 for an image).
        duration: seconds from the start of the first frame to the end of the last (0.0 for an image).
        width: display width (after rotation).
        height: display height (after rotation).
        rotation: counter-clockwise display rotation in degrees (0, 90, 180 or 270), already applied to frames.
        timestamps: presentation time in seconds of each frame, in presentation order; ``len == num_frames``.
        stream: index, among all the file's streams (ffprobe's numbering), of the video stream the frames come from;
            0 for an image.
    """

    path: str
    backend: str
    num_frames: int
    fps: float
    duration: float
    width: int
    height: int
    rotation: int
    timestamps: tuple[float, ...]
    stream: int = 0


class Video:
    """An opened video (or image): exact metadata now, frames on demand.

    Use :func:`open_video` to build one. A ``Video`` is a context manager; ``close()`` releases the decoder, and the
    next call to a frame method reopens it.
    """

    def __init__(self, metadata: VideoMetadata, num_threads: int, index: _pyav.FrameIndex | None) -> None:
        self.metadata = metadata
        self.num_threads = num_threads
        self._index = index
        self._decoder: _pyav.StreamDecoder | None = None
        self._workers: list[_pyav.StreamDecoder] = []  # single-threaded decoders for concurrent GOPs
        self._decord: Any = None
        self._pid = os.getpid()

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Closes any open decoder; the Video stays usable and reopens the file when frames are asked for."""
        for decoder in [self._decoder, *self._workers]:
            if decoder is not None:
                decoder.close()
        self._decoder, self._workers, self._decord = None, [], None

    def __enter__(self) -> Video:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # Live decoders hold file handles and native threads; a worker reopens the file instead of sharing them.
        state = self.__dict__.copy()
        state["_decoder"], state["_workers"], state["_decord"] = None, [], None
        return state

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown may have torn down av already
            self.close()

    def __repr__(self) -> str:
        m = self.metadata
        return f"Video({m.path!r}, backend={m.backend}, frames={m.num_frames}, {m.width}x{m.height}, fps={m.fps:.3f})"

    # -- frames ------------------------------------------------------------------------------------------------
    def get_frames(self, indices: Sequence[int] | np.ndarray | torch.Tensor, size: Size = None) -> torch.Tensor:
        """Decodes the frames at ``indices`` (any order, duplicates allowed) in display orientation.

        Args:
            indices: frame positions in presentation order, each in ``[0, num_frames)``.
            size: None (native), an int short side (aspect kept), or ``(H, W)``; applied while decoding.

        Returns:
            uint8 [T, 3, H, W] with ``T = len(indices)``, frame ``t`` being ``indices[t]``.
        """
        idx = self._check_indices(indices)
        out_h, out_w = _resolve_size(size, self.metadata.height, self.metadata.width, self.metadata.path)
        if idx.size == 0:
            return torch.empty((0, 3, out_h, out_w), dtype=torch.uint8)
        wanted, inverse = np.unique(idx, return_inverse=True)
        stored_wh = (out_h, out_w) if self.metadata.rotation in (90, 270) else (out_w, out_h)
        native = size is None or (out_h, out_w) == (self.metadata.height, self.metadata.width)
        video = self._decode(wanted, None if native else stored_wh, (out_h, out_w))  # [U, h, w, 3], stored orientation
        # The reordering, rotation and layout change stay in NumPy (views, then one copy): torch kernels here would
        # start an OpenMP pool, which hangs in a process forked after the parent used one.
        if self.metadata.rotation and self.metadata.backend != "pillow":  # Pillow already applied EXIF orientation
            video = np.rot90(video, k=self.metadata.rotation // 90, axes=(1, 2))
        if not np.array_equal(wanted, idx.reshape(-1)):  # out of order or repeated: place each decoded frame
            video = video[inverse.reshape(-1)]
        return torch.from_numpy(np.ascontiguousarray(rearrange(video, "t h w c -> t c h w")))

    def get_frames_at(self, seconds: Sequence[float] | np.ndarray | torch.Tensor, size: Size = None) -> torch.Tensor:
        """Decodes the frame shown at each time: the last frame whose presentation time is <= t (VFR-correct).

        Args:
            seconds: times in seconds on the stream's clock (as in ``metadata.timestamps``); times before the first
                frame give the first frame; times past ``duration`` after the first frame are an error.
            size: as in :meth:`get_frames`.

        Returns:
            uint8 [T, 3, H, W], ``T = len(seconds)``.
        """
        times = np.asarray(torch.as_tensor(seconds, dtype=torch.float64).reshape(-1).numpy())
        stamps = np.asarray(self.metadata.timestamps, dtype=np.float64)
        end = stamps[0] + self.metadata.duration
        bad = ~np.isfinite(times) | (times < 0) | (times > end + 1e-6)
        if bad.any():
            t = float(times[np.flatnonzero(bad)[0]])
            raise VideoDecodeError(f"{self.metadata.path}: time {t} s is outside the video (0 to {end:.6f} s)")
        # A small tolerance absorbs float rounding of pts * time_base when t is exactly a frame's timestamp.
        idx = np.searchsorted(stamps, times + 1e-9, side="right") - 1
        return self.get_frames(np.clip(idx, 0, self.metadata.num_frames - 1), size=size)

    # -- internals ---------------------------------------------------------------------------------------------
    def _check_indices(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
        arr = indices.cpu().numpy() if isinstance(indices, torch.Tensor) else np.asarray(indices)
        if arr.size == 0:
            return np.zeros(0, dtype=np.int64)
        integral = np.issubdtype(arr.dtype, np.integer) or (
            np.issubdtype(arr.dtype, np.floating) and bool(np.all(np.mod(arr, 1) == 0))
        )
        if arr.ndim != 1 or not integral:
            raise VideoDecodeError(f"{self.metadata.path}: indices must be a 1-D sequence of integers, got {arr!r}")
        arr = arr.astype(np.int64)
        n = self.metadata.num_frames
        bad = np.flatnonzero((arr < 0) | (arr >= n))
        if bad.size:
            raise VideoDecodeError(
                f"{self.metadata.path}: frame index {int(arr[bad[0]])} is out of range; the video has {n} frames "
                f"(valid indices 0..{n - 1})"
            )
        return arr

    def _decode(self, wanted: np.ndarray, stored_wh: tuple[int, int] | None, out_hw: tuple[int, int]) -> np.ndarray:
        """Decodes sorted unique positions; returns uint8 [U, h, w, 3] in stored orientation."""
        m = self.metadata
        if self._pid != os.getpid():
            # Forked (not pickled) into a DataLoader worker: the parent's decoder shares its file offset with this
            # process, so using it here would read garbage. Drop it without closing and open a private one.
            self._decoder, self._workers, self._decord, self._pid = None, [], None, os.getpid()
        if m.backend == "pillow":
            return _image.load_image(m.path, None if stored_wh is None else out_hw)[None]
        if m.backend == "decord":
            if self._decord is None:
                from vidvlm.data._decord import DecordReader  # lazy: decord is optional and must come after torch

                self._decord = DecordReader(m.path, self._index, self.num_threads, self._reference_frame)
            return self._decord.get(wanted, stored_wh)
        runs = _pyav.plan_runs(self._index, wanted)
        if self.num_threads > 1 and len(runs) > 1:
            # Independent GOPs on up to num_threads single-threaded decoders (kept open for the next request).
            while len(self._workers) < min(self.num_threads, len(runs)):
                self._workers.append(self._open(1))
            decoders = self._workers[: min(self.num_threads, len(runs))]
        else:
            if self._decoder is None:
                self._decoder = self._open(self.num_threads)
            decoders = [self._decoder]
        return np.stack(_pyav.decode_runs(decoders, runs, stored_wh))

    def _open(self, num_threads: int) -> _pyav.StreamDecoder:
        """A decoder of the indexed stream, opened with the demuxer the index names (no format probe)."""
        index, path = self._index, self.metadata.path
        return _pyav.StreamDecoder(
            path, _pyav.open_container(path, num_threads, index.stream, index.container_format)[0], index
        )

    def _reference_frame(self) -> np.ndarray:
        """Frame 0 at native size in display orientation, decoded by PyAV: uint8 [H, W, 3]."""
        with open_video(self.metadata.path, "pyav", self.num_threads, stream=self.metadata.stream) as ref:
            return rearrange(ref.get_frames([0]), "1 c h w -> h w c").numpy()


def _resolve_size(size: Size, height: int, width: int, path: str) -> tuple[int, int]:
    """Turns ``size`` (None, short side, or (H, W)) into the output (H, W) in display orientation."""
    if size is None:
        return height, width
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        if size <= 0:
            raise VideoDecodeError(f"{path}: size must be positive, got {size}")
        scale = int(size) / min(height, width)
        if height <= width:
            return int(size), max(1, int(math.floor(width * scale + 0.5)))
        return max(1, int(math.floor(height * scale + 0.5))), int(size)
    if isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(s, (int, np.integer)) for s in size):
        if min(size) <= 0:
            raise VideoDecodeError(f"{path}: size must be positive, got {tuple(size)}")
        return int(size[0]), int(size[1])
    raise VideoDecodeError(f"{path}: size must be None, an int short side or an (H, W) pair, got {size!r}")


def open_video(
    path: str | os.PathLike[str],
    backend: str = "auto",
    num_threads: int = 1,
    stream: int | None = None,
    index_cache: str | os.PathLike[str] | None = None,
) -> Video:
    """Opens a video, GIF or image and measures it (exact frame index, kept per file version for the next open).

    Args:
        path: the file.
        backend: ``"auto"`` (PyAV), ``"pyav"`` or ``"decord"``. Images always use Pillow. decord serves only H.264
            and VP9 from files with one video stream (not AVI, no edit list, frame count as the header says); every
            other file is served by PyAV even when decord is asked for, because decord decodes it wrongly, cannot
            open it (AV1) or cannot be pointed at the chosen stream. ``metadata.backend`` says which decoder serves.
        num_threads: decoding threads for this file. PyAV decodes up to this many independent GOPs of one request at
            once (one single-threaded decoder each); a request within one GOP uses FFmpeg slice threads. Keep 1 in
            DataLoader workers.
        stream: None for FFmpeg's best video stream (``av_find_best_stream``, as the ffmpeg tools and torchcodec
            choose: the default-disposition stream first), or an index among all the file's streams as ffprobe
            numbers them (``-map 0:<stream>``), which must be a video stream. ``metadata.stream`` says which.
        index_cache: a directory that keeps frame indexes across processes (created if missing); None reads
            ``$VIDVLM_INDEX_CACHE``; ``""`` for none. Indexes are always kept in memory for this process.

    Raises:
        VideoDecodeError: missing, empty, unreadable or corrupt file, a symbolic link loop or a broken link, no video
            stream or no such stream, or no decodable frame.
    """
    path = os.fspath(path)
    if backend not in BACKENDS:
        raise VideoDecodeError(f"{path}: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    st = _stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise VideoDecodeError(f"{path}: not a regular file")
    if st.st_size == 0:
        raise VideoDecodeError(f"{path}: file is empty")
    if path.lower().endswith(_image.IMAGE_SUFFIXES):
        return _open_image(path, num_threads, stream)
    cache_dir = _index_cache.directory(index_cache)
    stamp = _index_cache.Stamp.of(path, stream, st)
    index = _index_cache.lookup(stamp, cache_dir)
    container = None
    if index is None:
        container, chosen_stream = _pyav.open_container(path, num_threads, stream)
        try:
            if container.format.name in _STILL_FORMATS:
                container.close()
                return _open_image(path, num_threads, stream)
            index = _pyav.build_index(path, container, chosen_stream)
        except BaseException:
            container.close()
            raise
        _index_cache.store(stamp, index, cache_dir)
    decord_safe = (
        index.complete
        and index.num_video_streams == 1
        and index.container_format not in _DECORD_UNSAFE_FORMATS
        and index.codec in _DECORD_CODECS
        and not index.open_gop
        and index.header_duration
    )
    chosen = "decord" if backend == "decord" and decord_safe else "pyav"
    stamps = tuple((index.pts * index.time_base).tolist())
    num = len(index.pts)
    width, height = (index.height, index.width) if index.rotation in (90, 270) else (index.width, index.height)
    fps = num / index.duration if index.duration > 0 else 0.0
    meta = VideoMetadata(path, chosen, num, fps, index.duration, width, height, index.rotation, stamps, index.stream)
    video = Video(meta, num_threads, index)
    if container is not None and chosen == "pyav":
        video._decoder = _pyav.StreamDecoder(path, container, index)  # the indexing container serves (saves an open)
    elif container is not None:
        container.close()
    return video


def _stat(path: str) -> os.stat_result:
    """``os.stat`` with the reason a path cannot be opened spelled out (a loop is not a missing file)."""
    try:
        return os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise VideoDecodeError(f"{path}: symbolic link loop (too many levels of symbolic links)") from err
        if err.errno == errno.ENOENT and os.path.islink(path):
            target = os.readlink(path)
            raise VideoDecodeError(f"{path}: broken symbolic link (its target {target!r} is missing)") from err
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            raise VideoDecodeError(f"{path}: file does not exist") from err
        raise VideoDecodeError(f"{path}: cannot be read ({err.strerror})") from err


def _open_image(path: str, num_threads: int, stream: int | None) -> Video:
    if stream not in (None, 0):
        raise VideoDecodeError(f"{path}: an image has a single stream (0), got stream={stream!r}")
    width, height, rotation = _image.probe_image(path)
    meta = VideoMetadata(path, "pillow", 1, 0.0, 0.0, width, height, rotation, (0.0,))
    return Video(meta, num_threads, None)
