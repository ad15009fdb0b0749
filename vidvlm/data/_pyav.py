"""PyAV decoding: stream choice, the exact frame index built at open, and planned (seek-once-per-GOP) decoding.

The index lists packets without decoding them: an MP4's sample table (``_index_mp4``, checked against real packets)
or one demux pass over the file's bytes. When the container's sample table shows the file intact only the first frame
is decoded; otherwise the last GOP is decoded, to prove that the frames the index lists really decode (headers and
truncated files over-report frames). Packets an edit list marks as discarded decode but are never shown, so they are
not frames. A request is decoded as runs (one seek each), concurrently on several decoders when the caller gives some.
Each container's decode is kept between requests (:class:`StreamDecoder`): a request that starts where the last one
left off goes on decoding instead of seeking back. A stream whose timestamps cannot tell its frames apart is numbered
in decode order instead, and read by that forward decode alone.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from vidvlm.data import _index_mp4
from vidvlm.errors import VideoDecodeError

# Metadata that is not UTF-8 must not make a readable video unreadable. PyAV before 19 decodes it strictly unless
# ``av.open`` is told ``metadata_errors="ignore"``; PyAV 19 dropped that argument (and rejects it).
_OPEN_OPTIONS = {"metadata_errors": "ignore"} if int(av.__version__.split(".")[0]) < 19 else {}


@dataclass(frozen=True)
class FrameIndex:
    """Presentation-ordered description of every decodable frame of a video stream.

    Attributes:
        stream: the stream's index among all the container's streams (ffprobe's ``index``, ``-map 0:<index>``).
        num_video_streams: how many video streams the container holds.
        codec: FFmpeg's name of the stream's codec (``"h264"``, ``"av1"``, ...).
        container_format: FFmpeg's name of the container format (``"mov,mp4,m4a,3gp,3g2,mj2"``, ``"matroska,webm"``).
        pts: int64 [N], stream time-base units, sorted (presentation order).
        keyframes: int64 [K], positions (into ``pts``) of keyframes, sorted; the first is 0.
        time_base: seconds per pts unit.
        duration: seconds from the first frame's start to the last frame's end.
        width: stored (coded) width, before rotation.
        height: stored (coded) height, before rotation.
        rotation: counter-clockwise display rotation in degrees, one of 0, 90, 180, 270.
        complete: False when the file lists more frames than decode (a demux error, undecodable tail frames, packets
            an edit list discards, or a header frame count above the decodable count): decoders that trust the
            header must not read it.
        seekable: False when the stream's timestamps cannot tell its frames apart (packets without any timestamp,
            or two frames presented at the same time: a muxer's or a parser's error). Frames are then numbered in
            the order the decoder gives them out, counted by one decode of the whole stream at open; ``pts`` are
            those positions in ``time_base = 1 / frame rate`` (nominal times), ``keyframes`` is ``[0]``, and frames
            are read by :class:`StreamDecoder`: exact; a request before the last one's frames decodes again
            from the start of the file.
        open_gop: some keyframe is followed, in decode order, by a frame presented before it (an open GOP: those
            frames reference the GOP before; PyAV decodes them from the keyframe before, a decoder that starts at
            their own GOP's keyframe gets them wrong).
        header_duration: the container header states the file's duration (live-recorded Matroska/WebM, e.g. from a
            browser's MediaRecorder, does not).
    """

    stream: int
    num_video_streams: int
    codec: str
    container_format: str
    pts: np.ndarray
    keyframes: np.ndarray
    time_base: float
    duration: float
    width: int
    height: int
    rotation: int
    complete: bool
    seekable: bool = True
    open_gop: bool = False
    header_duration: bool = True


def open_container(
    path: str, num_threads: int, stream: int | None, container_format: str | None = None
) -> tuple[av.container.InputContainer, int]:
    """Opens ``path`` and readies one video stream's decoder, bounded to ``num_threads`` threads.

    Args:
        path: the file.
        num_threads: decoder threads.
        stream: None for FFmpeg's best video stream (``av_find_best_stream``: what the ffmpeg tools and torchcodec
            pick), else the stream's index among all the container's streams (ffprobe's numbering).
        container_format: the demuxer FFmpeg chose when the file was indexed (:attr:`FrameIndex.container_format`):
            opening with it skips the format probe (half of an open of a small MP4); if it fails, the file is
            probed as usual.

    Returns:
        The container and the index of the chosen stream.
    """
    container = None
    if container_format:  # on failure, probe below (which words the error if the file is unreadable)
        with contextlib.suppress(av.error.FFmpegError, UnicodeDecodeError, ValueError):
            container = av.open(path, format=container_format.split(",")[0], **_OPEN_OPTIONS)
    if container is None:
        try:
            container = av.open(path, **_OPEN_OPTIONS)
        except (av.error.FFmpegError, UnicodeDecodeError) as err:
            raise VideoDecodeError(f"{path}: not a readable video or image ({err})") from err
    try:
        chosen = _choose_stream(path, container, stream)
        ctx = chosen.codec_context
        if ctx is None:
            raise VideoDecodeError(f"{path}: video stream has no usable codec (corrupt header or unsupported format)")
        ctx.thread_count = max(1, int(num_threads))
        # SLICE threading never reorders output and is not affected by the FRAME-threading hangs on an early break
        # (PyAV issues 1849/1861); with the default single thread the choice does not matter.
        ctx.thread_type = "SLICE"
    except BaseException:
        container.close()
        raise
    return container, chosen.index


def _choose_stream(path: str, container: av.container.InputContainer, stream: int | None) -> av.video.VideoStream:
    videos = container.streams.video
    if not videos:
        raise VideoDecodeError(f"{path}: has no video stream")
    if stream is None:
        return container.streams.best("video") or videos[0]
    if isinstance(stream, bool) or not isinstance(stream, (int, np.integer)):
        raise VideoDecodeError(f"{path}: stream must be None or an int stream index, got {stream!r}")
    if not 0 <= stream < len(container.streams) or container.streams[stream].type != "video":
        found = ", ".join(str(v.index) for v in videos)
        raise VideoDecodeError(f"{path}: stream {stream} is not a video stream (video streams: {found})")
    return container.streams[int(stream)]


def _frame_time(frame: av.VideoFrame) -> int | None:
    if frame.pts is not None:
        return int(frame.pts)
    return None if frame.dts is None else int(frame.dts)


def build_index(path: str, container: av.container.InputContainer, stream_index: int) -> FrameIndex:
    """Lists every packet of one video stream (no decoding) and proves which frames decode.

    MP4/MOV files are listed from their sample table (``_index_mp4``: the tables checked packet for packet against
    the first packets and the whole last GOP); other files, and MP4s whose tables do not check out, are demuxed.

    When the container is intact - every packet the sample table lists came back whole, within the file, with no
    demux error - only the first frame is decoded (for the rotation and to prove the stream decodes at all).
    Otherwise (truncated or damaged files, whose headers over-report frames) the last GOP is decoded and frames
    that do not come out are dropped.

    Raises:
        VideoDecodeError: when no frame decodes.
    """
    stream = container.streams[stream_index]
    table = _index_mp4.read(path, container, stream) if container.format.name == _index_mp4.FORMAT else None
    if table is not None:  # the MP4 sample table, checked against the first packets and the whole last GOP
        times, keys, durations = table.pts, table.keyframes, table.durations
        clean, discarded, end, last_size = True, 0, table.end, int(stream.index_entries[-1].size)
    elif container.format.name == _index_mp4.FORMAT:
        # The table reader may have moved this demuxer (seeking back is unreliable on damaged files): scan afresh.
        with av.open(path, **_OPEN_OPTIONS) as fresh:
            scan = _demux_scan(fresh, fresh.streams[stream_index])
        times, keys, durations, clean, discarded, end, last_size = scan
    else:
        times, keys, durations, clean, discarded, end, last_size = _demux_scan(container, stream)
    if not len(times):
        raise VideoDecodeError(f"{path}: video stream holds no frames")
    if table is None and not any(t is not None for t in times):
        raise VideoDecodeError(
            f"{path}: the video stream has no timestamps (a raw elementary stream); put it in a container first, "
            "e.g. ffmpeg -i IN -c copy OUT.mp4"
        )
    if any(t is None for t in times):
        return _index_in_decode_order(path, container, stream)
    decode_times = np.asarray(times, dtype=np.int64)
    order = np.argsort(decode_times, kind="stable")
    pts = decode_times[order]
    if np.any(np.diff(pts) == 0):
        return _index_in_decode_order(path, container, stream)
    is_key = np.asarray(keys, dtype=bool)
    later_min = np.minimum.accumulate(decode_times[::-1])[::-1]  # earliest time presented at or after each packet
    key_at = np.flatnonzero(is_key[:-1])  # keyframes with a packet after them
    open_gop = bool(np.any(later_min[key_at + 1] < decode_times[key_at]))
    keyframes = np.flatnonzero(is_key[order])
    if keyframes.size == 0 or keyframes[0] != 0:
        # Streams without flagged keyframes (or a leading non-key frame) can only be decoded from the start.
        keyframes = np.concatenate([[0], keyframes]).astype(np.int64)
    if container.format.name in _DECODE_TIMES_ONLY:
        reordered = _index_if_reordered(path, container, stream, pts, keyframes)
        if reordered is not None:
            return reordered
    last_duration = int(durations[order[-1]])
    time_base = float(stream.time_base) if stream.time_base else 1.0

    # The sample table (MP4/MOV: one entry per sample) says what the file should hold; truncation cuts the end, so
    # the count and the last sample (whole, and inside the file) are what to compare.
    entries = stream.index_entries or []
    intact = (
        clean
        and len(entries) == len(times) + discarded
        and entries[-1].size == last_size
        and max(end, entries[-1].pos + entries[-1].size) <= os.path.getsize(path)
        and (stream.frames or 0) in (0, len(times) + discarded)
    )
    head = _first_frame(container, stream) if intact else None
    if head is not None:
        num_frames, rotation, size = len(pts), int(round(head.rotation or 0)) % 360, (head.width, head.height)
    else:
        num_frames, rotation, size = _verify_tail(path, container, stream, pts, keyframes)
    pts, keyframes = pts[:num_frames], keyframes[keyframes < num_frames]
    if last_duration <= 0 or num_frames < len(order):
        steps = np.diff(pts)
        last_duration = int(np.median(steps)) if steps.size else 0
    duration = float(pts[-1] - pts[0] + last_duration) * time_base
    complete = clean and not discarded and num_frames == len(order) and (stream.frames or 0) <= num_frames
    return FrameIndex(
        stream=stream_index,
        num_video_streams=len(container.streams.video),
        codec=stream.codec_context.name,
        container_format=container.format.name,
        pts=pts,
        keyframes=keyframes,
        time_base=time_base,
        duration=duration,
        width=size[0],
        height=size[1],
        rotation=rotation,
        complete=complete,
        open_gop=open_gop,
        header_duration=container.duration is not None,
    )


# Containers that store no presentation times: their packets carry decode times, which are presentation times only
# when no frame is reordered (AVI: H.264 with B-frames comes out of the decoder as 1, 3, 4, 2, ...).
_DECODE_TIMES_ONLY = {"avi"}


def _index_if_reordered(
    path: str,
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    pts: np.ndarray,
    keyframes: np.ndarray,
) -> FrameIndex | None:
    """None when the first GOP's frames come out of the decoder with the index's first times, in order (up to 64
    frames: reordering shows within a few); otherwise the decode-order index of ``_index_in_decode_order``, whose
    count goes on from this decode, so the frames already decoded for the check are not decoded again."""
    check = min(len(pts), int(keyframes[1]) if len(keyframes) > 1 else len(pts), 64)
    expected = pts[:check].tolist()
    first = None
    frames = _decode_from(container, stream, None)
    try:
        for decoded, frame in enumerate(frames, 1):
            first = first or frame
            if _frame_time(frame) != expected[decoded - 1]:
                return _index_in_decode_order(path, container, stream, frames=frames, count=decoded, first=first)
            if decoded == check:
                return None
    except av.error.FFmpegError:
        pass  # a damaged file whose frames came out in order as far as they go
    finally:
        frames.close()
    return None


def _index_in_decode_order(
    path: str,
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    frames: Iterator[av.VideoFrame] | None = None,
    count: int = 0,
    first: av.VideoFrame | None = None,
) -> FrameIndex:
    """The index of a stream whose timestamps cannot address frames (``FrameIndex.seekable`` False): one decode of
    the whole stream counts the frames that come out (a damaged tail ends the count), in the order they come out.
    ``frames``: a decode from the start already under way, of which ``count`` frames, ``first`` the first, came out.

    Raises:
        VideoDecodeError: when no frame decodes.
    """
    frames = _decode_from(container, stream, None) if frames is None else frames
    try:
        for frame in frames:
            count, first = count + 1, first or frame
    except av.error.FFmpegError:
        pass  # corrupt data near the end: the frames before the error are the video
    finally:
        frames.close()
    if first is None:
        raise VideoDecodeError(f"{path}: no frame of the video stream decodes (corrupt or truncated data)")
    rate = stream.average_rate or stream.guessed_rate or stream.codec_context.framerate
    fps = float(rate) if rate else 0.0
    return FrameIndex(
        stream=stream.index,
        num_video_streams=len(container.streams.video),
        codec=stream.codec_context.name,
        container_format=container.format.name,
        pts=np.arange(count, dtype=np.int64),
        keyframes=np.zeros(1, dtype=np.int64),
        time_base=1.0 / fps if fps > 0 else 1.0,
        duration=count / fps if fps > 0 else float(count),
        width=first.width,
        height=first.height,
        rotation=int(round(first.rotation or 0)) % 360,
        complete=False,
        seekable=False,
    )


def _demux_scan(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> tuple[list[int | None], list[bool], list[int], bool, int, int, int]:
    """Demuxes every packet of ``stream`` (no decoding).

    Returns:
        (pts, keyframe flags, durations) of each shown packet in decode order (pts: the decode time where a packet
        has no presentation time, None where it has neither), whether no demux error or corrupt
        packet was met, how many packets an edit list discards, the end offset of the furthest packet, and the size
        of the last packet read.
    """
    times: list[int | None] = []
    keys: list[bool] = []
    durations: list[int] = []
    end = last_size = discarded = 0
    clean = True
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # the flush packet at end of stream
            if packet.is_corrupt:
                # Flagged by the demuxer (an MPEG-TS continuity gap where two files were joined, a damaged PES), yet
                # usually decodable: it stays a frame, and the index is not complete. A frame that then fails to
                # come out of the decoder is an error when asked for, as in any damaged file.
                clean = False
            end, last_size = max(end, (packet.pos or 0) + packet.size), packet.size
            if packet.is_discard:
                discarded += 1  # before an edit list's start: decoded as a reference, never shown
                continue
            times.append(packet.pts if packet.pts is not None else packet.dts)
            keys.append(bool(packet.is_keyframe))
            durations.append(int(packet.duration or 0))
    except av.error.FFmpegError:
        clean = False  # a damaged tail: keep the packets read so far; the tail decode decides what is real
    return times, keys, durations, clean, discarded, end, last_size


def _first_frame(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> av.VideoFrame | None:
    """The first frame out of the decoder, or None when the stream yields nothing before end of file or an error."""
    frames = _decode_from(container, stream, None)
    try:
        return next(frames, None)
    except av.error.FFmpegError:
        return None
    finally:
        frames.close()


def _verify_tail(
    path: str,
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    pts: np.ndarray,
    keyframes: np.ndarray,
) -> tuple[int, int, tuple[int, int]]:
    """Decodes from the last keyframe to the end; returns (decodable frame count, rotation, (width, height)).

    Frames after the first one missing from the decoded tail are dropped. When the last keyframe itself does not
    decode, the GOP before it is tried, and so on: each try ends at end of file, so this never hangs.
    """
    for start in keyframes[::-1]:
        wanted = set(pts[start:].tolist())
        seen: set[int] = set()
        first: av.VideoFrame | None = None
        try:
            for frame in _decode_from(container, stream, int(pts[start]) if start > 0 else None):
                t = _frame_time(frame)
                if t in wanted:
                    seen.add(t)
                    first = first or frame
        except av.error.FFmpegError:
            pass  # corrupt data near the end: what decoded before the error still counts
        if first is None:
            continue
        count = int(start)
        for t in pts[start:].tolist():
            if t not in seen:
                break
            count += 1
        rotation = int(round(first.rotation or 0)) % 360
        return count, rotation, (first.width, first.height)
    raise VideoDecodeError(f"{path}: no frame of the video stream decodes (corrupt or truncated data)")


@dataclass
class Skipping:
    """Which frames a decode may skip (:func:`_decode_from`), and which it did.

    Attributes:
        keep: pts of the frames wanted.
        ahead: decode every frame after the last wanted one too (a reader that goes on to later frames: the packets
            the decoder reads ahead of its output must not be lost to the skip).
        passed: pts of the packets fed while skipping: those frames may not have been decoded.
        last: the latest pts ever wanted (the frames at or before it are no longer asked for).
    """

    keep: set[int] = field(default_factory=set)
    ahead: bool = False
    passed: set[int] = field(default_factory=set)
    last: int = -(2**62)

    def want(self, pts: list[int]) -> None:
        """Adds the frames of the next request. A reader asks only for frames after the ones it asked before, so the
        frames up to the last of those no longer matter: both sets stay within about one request's span, however
        long the file read window by window."""
        self.keep = {k for k in self.keep if k > self.last}
        self.keep.update(pts)
        self.last = max(self.last, *pts)
        self.passed = {p for p in self.passed if p > self.last}

    def decodes(self, pts: int | None) -> bool:
        """Whether the packet presented at ``pts`` is decoded in full (recording it in ``passed`` when not)."""
        if pts is None or pts in self.keep or (self.ahead and pts > self.last):
            return True
        self.passed.add(pts)
        return False


def _decode_from(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    seek_pts: int | None,
    skip: Skipping | None = None,
) -> Iterator[av.VideoFrame]:
    """Seeks to the keyframe at or before ``seek_pts`` (None: the start) and yields frames in presentation order.

    With ``skip`` (read as packets arrive, so the caller may change it between frames), packets of frames not in
    ``skip.keep`` that no frame references (e.g. most B-frames) are not decoded at all (``skip_frame=NONREF``): they
    never reach the output and cannot affect any other frame, which roughly halves the decoding work on B-frame video.
    """
    ctx = stream.codec_context
    mode = "DEFAULT"
    try:
        for packet in _packets_from(container, stream, seek_pts):
            if skip is not None and packet.size:
                want = "DEFAULT" if skip.decodes(packet.pts) else "NONREF"
                if want != mode:
                    ctx.skip_frame = mode = want
            elif mode != "DEFAULT":
                ctx.skip_frame = mode = "DEFAULT"  # the flush packet drains every buffered frame
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                # A damaged packet (a truncated file's last one). Skipping unreferenced frames makes the decoder hold
                # wanted frames longer than the full decode of the open-time check did, so frames it counted may
                # still be inside: they come from whole packets before this one, so give them out, then the error.
                if skip is not None:
                    ctx.skip_frame = mode = "DEFAULT"
                    yield from _drain(ctx)
                raise
            yield from frames
    finally:
        if mode != "DEFAULT":
            ctx.skip_frame = "DEFAULT"


_SEEK_BACK_SECONDS = (1.0, 4.0, 16.0)  # further tries after a seek that lands past the keyframe, then the start


def _packets_from(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, seek_pts: int | None
) -> Iterator[av.Packet]:
    """The stream's packets in decode order from the keyframe whose presentation time is ``seek_pts`` (None: from
    the start of the file).

    Containers without a sample table (MPEG-TS, MPEG-PS) seek by bisecting on the timestamps met in the bytes, and
    can land past the keyframe asked for (MPEG-TS seeks on decode times, which run behind presentation times by the
    muxer's delay). The landing is checked on the packets themselves: the keyframe must be the first packet
    presented at or after ``seek_pts``. Packets before it are earlier frames, not needed to decode from a keyframe,
    and are dropped; a later one first means the seek overshot, and it is repeated 1, 4 and 16 seconds earlier,
    then from the start. A packet with no timestamp at all cannot be placed: decoding then starts at the beginning.
    """
    unit = float(stream.time_base) if stream.time_base else 0.0  # seconds per pts step
    tries = [0.0, *_SEEK_BACK_SECONDS] if seek_pts is not None and unit > 0 else []
    for back in tries:
        container.seek(int(seek_pts - back / unit), stream=stream, backward=True, any_frame=False)
        packets = container.demux(stream)
        landing, key = _skip_to_keyframe(packets, seek_pts)
        if key is not None:
            yield key
            yield from packets
            return
        if landing == "unplaceable":
            break
    container.seek(0, stream=stream, backward=True, any_frame=False)
    yield from container.demux(stream)


def _skip_to_keyframe(packets: Iterator[av.Packet], seek_pts: int) -> tuple[str, av.Packet | None]:
    """Reads ``packets`` up to the keyframe presented at ``seek_pts``.

    Returns:
        ``("found", keyframe packet)``; ``("past", None)`` when a later packet or the end of the file comes first,
        or when the packet presented at ``seek_pts`` is not flagged a keyframe; ``("unplaceable", None)`` at a packet
        without timestamps.
    """
    for packet in packets:
        at = packet.pts if packet.pts is not None else packet.dts
        if packet.size and at is None:
            return "unplaceable", None
        if not packet.size or at > seek_pts:
            return "past", None
        if at == seek_pts:
            # The index found this frame's packet flagged a keyframe. Unflagged here, the demuxer lost its footing
            # at the landing (an MPEG-1 program stream's parser, mid-file, gives the frames after it the times of
            # later ones): start further back, where it reads the stream as the index did.
            return ("found", packet) if packet.is_keyframe else ("past", None)
    return "past", None


def _drain(ctx: av.video.codeccontext.VideoCodecContext) -> list[av.VideoFrame]:
    """The frames a decoder holds (end-of-stream flush); none when flushing fails too."""
    try:
        return ctx.decode(None)
    except av.error.FFmpegError:
        return []


_local = threading.local()
_inherited: list[VideoReformatter] = []  # converters a forked process inherited: never used, never freed (see below)


def _reformatter() -> VideoReformatter:
    """This thread's colour converter, reused from frame to frame (each call passes its own scaling thread count).

    ``VideoFrame.to_ndarray(width=..., format=...)`` builds a new converter for every frame, and with it a new
    swscale context, its filter tables and (by default) a pool of as many threads as the machine has cores: 3-4.5 ms
    per frame at 240p against 0.2-0.5 ms reused, same pixels. Contexts are per thread (swscale is not thread-safe)
    and per process: a forked child must neither use nor free its parent's, whose scaling threads it does not have.
    """
    if getattr(_local, "pid", None) != os.getpid():
        if getattr(_local, "reformatter", None) is not None:
            _inherited.append(_local.reformatter)
        _local.pid, _local.reformatter = os.getpid(), VideoReformatter()
    return _local.reformatter


def plan_runs(index: FrameIndex, wanted: np.ndarray) -> list[np.ndarray]:
    """Splits sorted unique positions into runs: each run starts with one seek and is then one forward decode.

    A new run starts only where the next wanted frame's keyframe lies beyond the previous wanted frame, so runs never
    share a GOP's decoding work and can be decoded independently (one seek per GOP at most, never backwards).

    Args:
        index: the stream's frame index.
        wanted: int64 [U], sorted unique positions.

    Returns:
        int64 arrays whose concatenation is ``wanted``.
    """
    kf_for = index.keyframes[np.searchsorted(index.keyframes, wanted, side="right") - 1]
    starts = np.flatnonzero(kf_for[1:] > wanted[:-1]) + 1
    return np.split(wanted, starts)


def decode_runs(
    decoders: Sequence[StreamDecoder], runs: list[np.ndarray], out_wh: tuple[int, int] | None
) -> list[np.ndarray]:
    """Decodes the runs of :func:`plan_runs`; returns one HWC uint8 RGB array per position, in order.

    With one decoder the runs are decoded in order on this thread. With several, one thread per decoder takes runs
    from a shared queue (PyAV releases the GIL while decoding and scaling); the error reported is the one the serial
    order would meet first. Scaling to ``out_wh`` (stored orientation) happens in the colour conversion (sws_scale),
    never on a full-size copy.
    """
    if len(decoders) == 1 or len(runs) == 1:
        return [frame for run in runs for frame in decoders[0].read(run, out_wh)]
    results: list[list[np.ndarray] | BaseException | None] = [None] * len(runs)
    queue = iter(range(len(runs)))  # next() on a shared iterator hands each run to exactly one thread
    lock = threading.Lock()

    def work(decoder: StreamDecoder) -> None:
        while True:
            with lock:
                r = next(queue, None)
            if r is None:
                return
            try:
                results[r] = decoder.read(runs[r], out_wh)
            except (VideoDecodeError, av.error.FFmpegError) as err:
                results[r] = err

    with ThreadPoolExecutor(len(decoders), thread_name_prefix="vidvlm-decode") as pool:
        for future in [pool.submit(work, d) for d in decoders]:
            future.result()
    out: list[np.ndarray] = []
    for result in results:
        if isinstance(result, BaseException):
            raise result
        out.extend(result)
    return out


class StreamDecoder:
    """One container's decoder of the indexed stream, kept between requests.

    A run (:func:`plan_runs`) is read by seeking to the keyframe before its first frame and decoding forward, unless
    the decode left by the previous run can simply go on: its last frame lies before the run's first and at or after
    the run's keyframe (a seek would decode the same frames again), and none of the run's frames was passed while
    unreferenced frames were skipped. Once requests come in that order, the decoder stops skipping the frames it
    reads ahead of its output, so that the next window finds them: reading a file window by window then decodes each
    GOP about once. A single request (runs in different GOPs) never continues and skips as before. A stream indexed
    in decode order (``FrameIndex.seekable`` False) has no seek: its frames are counted from the start of the file,
    and a run behind the live decode starts it again.
    """

    def __init__(self, path: str, container: av.container.InputContainer, index: FrameIndex) -> None:
        self.path, self.container, self.index = path, container, index
        self._frames: Iterator[av.VideoFrame] | None = None
        self._skip = Skipping()  # what the live decode skips (it reads this as packets arrive)
        self._last = -1  # position of the last frame the live decode gave out
        self._onward = False  # requests have come in order, each after the last: keep frames read ahead

    def read(self, run: np.ndarray, out_wh: tuple[int, int] | None) -> list[np.ndarray]:
        """The frames at positions ``run`` (sorted, unique; one run of :func:`plan_runs`), HWC uint8 RGB."""
        index, stream = self.index, self.container.streams[self.index.stream]
        want = index.pts[run].tolist() if index.seekable else run.tolist()
        if not self._goes_on(run, want):
            self._stop()
            seek = None
            if index.seekable and (key := self._keyframe(run)) > 0:
                seek = int(index.pts[key])
            self._skip, self._last = Skipping(ahead=self._onward), -1
            self._frames = _decode_from(self.container, stream, seek, self._skip if index.seekable else None)
        self._skip.want(want)
        try:
            return _collect(self.path, stream, self._timed(), run, want, _size(index, out_wh))
        except BaseException:
            self._stop()  # a failed or interrupted decode is not resumed
            raise

    def close(self) -> None:
        """Stops the live decode and closes the container."""
        self._stop()
        self.container.close()

    def _keyframe(self, run: np.ndarray) -> int:
        keyframes = self.index.keyframes
        return int(keyframes[np.searchsorted(keyframes, run[0], side="right") - 1])

    def _goes_on(self, run: np.ndarray, want: list[int]) -> bool:
        if self._frames is None or run[0] <= self._last:
            return False
        if not self.index.seekable:
            return True
        if self._keyframe(run) > self._last:
            return False  # a seek skips the GOPs in between
        # The run lies ahead in the GOP being decoded: reading on is cheaper than seeking back, unless the decode
        # already fed one of its frames while skipping. From now on the decode keeps what it reads ahead.
        self._onward = self._skip.ahead = True
        return self._skip.passed.isdisjoint(want)

    def _stop(self) -> None:
        if self._frames is not None:
            self._frames.close()
        self._frames = None

    def _timed(self) -> Iterator[tuple[int | None, av.VideoFrame]]:
        """(time, frame) of the live decode: the pts, or the position when the stream is read in decode order."""
        pts = self.index.pts
        for frame in self._frames:
            if self.index.seekable:
                t = _frame_time(frame)
                # A frame between the index's times counts as the next indexed one; an untimed one makes every frame
                # count as passed. Overstating the position only costs a seek, understating it would lose frames.
                self._last = len(pts) if t is None else max(self._last, int(np.searchsorted(pts, t)))
            else:
                self._last = t = self._last + 1
            yield t, frame


def _size(index: FrameIndex, out_wh: tuple[int, int] | None) -> tuple[int, int]:
    """(width, height) of the frames given out. Without a decode size, frames come at the index's size: a stream that
    changes resolution part-way (adaptive streaming segments joined into one file) still gives frames of one shape."""
    return out_wh if out_wh is not None else (index.width, index.height)


def _collect(
    path: str,
    stream: av.video.stream.VideoStream,
    timed: Iterator[tuple[int | None, av.VideoFrame]],
    run: np.ndarray,
    want: list[int],
    wh: tuple[int, int],
) -> list[np.ndarray]:
    """Takes from ``timed`` ((time, frame) in presentation order) the frames whose times are ``want`` (sorted; the
    times of positions ``run``), converted to RGB at ``wh`` (width, height); stops after the last one, leaving the
    rest unread."""
    width, height = wh
    threads = max(1, stream.codec_context.thread_count)  # the caller's bound (1 on the concurrent-GOP decoders)
    out: list[np.ndarray] = []
    try:
        for t, frame in timed:
            if t is None or t < want[len(out)]:
                continue
            if t > want[len(out)]:
                raise VideoDecodeError(f"{path}: frame {int(run[len(out)])} does not decode")
            out.append(_reformatter().reformat(frame, width, height, "rgb24", threads=threads).to_ndarray())
            if len(out) == len(run):
                return out
        raise VideoDecodeError(f"{path}: frame {int(run[len(out)])} does not decode (end of stream reached)")
    except av.error.FFmpegError as err:
        raise VideoDecodeError(f"{path}: decoding failed near frame {int(run[len(out)])} ({err})") from err
