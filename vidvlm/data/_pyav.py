"""PyAV decoding: the exact frame index built at open, and planned (seek-once-per-GOP) decoding.

The index is built by demuxing packets without decoding them, so it costs one pass over the file's bytes. Only the
last GOP is decoded at open, to prove that the frames the index lists really decode (headers and truncated files
over-report frames).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np

from vidvlm.errors import VideoDecodeError


@dataclass(frozen=True)
class FrameIndex:
    """Presentation-ordered description of every decodable frame of a video stream.

    Attributes:
        pts: int64 [N], stream time-base units, sorted (presentation order).
        keyframes: int64 [K], positions (into ``pts``) of keyframes, sorted; the first is 0.
        time_base: seconds per pts unit.
        duration: seconds from the first frame's start to the last frame's end.
        width: stored (coded) width, before rotation.
        height: stored (coded) height, before rotation.
        rotation: counter-clockwise display rotation in degrees, one of 0, 90, 180, 270.
        complete: False when the file lists more frames than decode (a demux error, undecodable tail frames, or a
            header frame count above the decodable count): decoders that trust the header must not read it.
    """

    pts: np.ndarray
    keyframes: np.ndarray
    time_base: float
    duration: float
    width: int
    height: int
    rotation: int
    complete: bool


def open_container(path: str, num_threads: int) -> av.container.InputContainer:
    """Opens ``path`` with a single-stream decoder bounded to ``num_threads`` threads."""
    try:
        container = av.open(path, metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError) as err:
        raise VideoDecodeError(f"{path}: not a readable video or image ({err})") from err
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(f"{path}: has no video stream")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    if ctx is None:
        container.close()
        raise VideoDecodeError(f"{path}: video stream has no usable codec (corrupt header or unsupported format)")
    ctx.thread_count = max(1, int(num_threads))
    # SLICE threading never reorders output and is not affected by the FRAME-threading hangs on an early break
    # (PyAV issues 1849/1861); with the default single thread the choice does not matter.
    ctx.thread_type = "SLICE"
    return container


def _packet_time(packet: av.Packet, fallback: int) -> int:
    if packet.pts is not None:
        return int(packet.pts)
    if packet.dts is not None:
        return int(packet.dts)
    return fallback


def _frame_time(frame: av.VideoFrame) -> int | None:
    if frame.pts is not None:
        return int(frame.pts)
    return None if frame.dts is None else int(frame.dts)


def build_index(path: str, container: av.container.InputContainer) -> FrameIndex:
    """Demuxes every packet of the first video stream (no decoding) and proves which frames decode.

    When the container is intact - every packet the sample table lists came back whole, within the file, with no
    demux error - only the first frame is decoded (for the rotation and to prove the stream decodes at all).
    Otherwise (truncated or damaged files, whose headers over-report frames) the last GOP is decoded and frames
    that do not come out are dropped.

    Raises:
        VideoDecodeError: when no frame decodes.
    """
    stream = container.streams.video[0]
    times: list[int] = []
    keys: list[bool] = []
    durations: list[int] = []
    sizes: list[int] = []
    end = 0
    clean = True  # no demux error, no corrupt packet
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # the flush packet at end of stream
            if packet.is_corrupt:
                clean = False
                continue
            times.append(_packet_time(packet, len(times)))
            keys.append(bool(packet.is_keyframe))
            durations.append(int(packet.duration or 0))
            sizes.append(packet.size)
            end = max(end, (packet.pos or 0) + packet.size)
    except av.error.FFmpegError:
        clean = False  # a damaged tail: keep the packets read so far; the tail decode below decides what is real
    if not times:
        raise VideoDecodeError(f"{path}: video stream holds no frames")
    order = np.argsort(np.asarray(times, dtype=np.int64), kind="stable")
    pts = np.asarray(times, dtype=np.int64)[order]
    keyframes = np.flatnonzero(np.asarray(keys, dtype=bool)[order])
    if keyframes.size == 0 or keyframes[0] != 0:
        # Streams without flagged keyframes (or a leading non-key frame) can only be decoded from the start.
        keyframes = np.concatenate([[0], keyframes]).astype(np.int64)
    last_duration = durations[order[-1]]
    time_base = float(stream.time_base) if stream.time_base else 1.0

    # The sample table (MP4/MOV: one entry per sample) says what the file should hold; truncation cuts the end, so
    # the count and the last sample (whole, and inside the file) are what to compare.
    entries = stream.index_entries or []
    intact = (
        clean
        and len(entries) == len(sizes)
        and entries[-1].size == sizes[-1]
        and max(end, entries[-1].pos + entries[-1].size) <= os.path.getsize(path)
        and (stream.frames or 0) in (0, len(sizes))
    )
    head = _first_frame(container, stream) if intact else None
    if head is not None:
        num_frames, rotation, size = len(pts), int(round(head.rotation or 0)) % 360, (head.width, head.height)
    else:
        num_frames, rotation, size = _verify_tail(path, container, pts, keyframes)
    pts, keyframes = pts[:num_frames], keyframes[keyframes < num_frames]
    if last_duration <= 0 or num_frames < len(order):
        steps = np.diff(pts)
        last_duration = int(np.median(steps)) if steps.size else 0
    duration = float(pts[-1] - pts[0] + last_duration) * time_base
    complete = clean and num_frames == len(order) and (stream.frames or 0) <= num_frames
    return FrameIndex(pts, keyframes, time_base, duration, size[0], size[1], rotation, complete)


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
    path: str, container: av.container.InputContainer, pts: np.ndarray, keyframes: np.ndarray
) -> tuple[int, int, tuple[int, int]]:
    """Decodes from the last keyframe to the end; returns (decodable frame count, rotation, (width, height)).

    Frames after the first one missing from the decoded tail are dropped. When the last keyframe itself does not
    decode, the GOP before it is tried, and so on: each try ends at end of file, so this never hangs.
    """
    stream = container.streams.video[0]
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


def _decode_from(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    seek_pts: int | None,
    keep: set[int] | None = None,
) -> Iterator[av.VideoFrame]:
    """Seeks to the keyframe at or before ``seek_pts`` (None: the start) and yields frames in presentation order.

    With ``keep`` (pts of wanted frames), packets of other frames that no frame references (e.g. most B-frames) are
    not decoded at all (``skip_frame=NONREF``): they never reach the output and cannot affect any other frame, which
    roughly halves the decoding work on B-frame video.
    """
    ctx = stream.codec_context
    container.seek(seek_pts if seek_pts is not None else 0, stream=stream, backward=True, any_frame=False)
    mode = "DEFAULT"
    try:
        for packet in container.demux(stream):
            if keep is not None and packet.size:
                want = "DEFAULT" if packet.pts is None or packet.pts in keep else "NONREF"
                if want != mode:
                    ctx.skip_frame = mode = want
            elif mode != "DEFAULT":
                ctx.skip_frame = mode = "DEFAULT"  # the flush packet drains every buffered frame
            yield from packet.decode()
    finally:
        if mode != "DEFAULT":
            ctx.skip_frame = "DEFAULT"


def decode_frames(
    path: str,
    container: av.container.InputContainer,
    index: FrameIndex,
    wanted: np.ndarray,
    out_wh: tuple[int, int] | None,
) -> list[np.ndarray]:
    """Decodes the frames at sorted unique positions ``wanted``; returns one HWC uint8 RGB array per position.

    The plan: for each wanted frame, find the keyframe before it; seek only when that keyframe lies beyond the frames
    already decoded (so never backwards, and at most once per GOP); stop right after the last wanted frame.
    Scaling to ``out_wh`` (stored orientation) happens in the colour conversion (sws_scale), never on a full-size copy.
    """
    stream = container.streams.video[0]
    want_pts = index.pts[wanted].tolist()
    kf_for = index.keyframes[np.searchsorted(index.keyframes, wanted, side="right") - 1].tolist()
    width, height = out_wh if out_wh is not None else (None, None)
    keep_pts = set(want_pts)
    out: list[np.ndarray] = []
    while len(out) < len(wanted):
        i = len(out)
        seek = int(index.pts[kf_for[i]]) if kf_for[i] > 0 else None
        frames = _decode_from(container, stream, seek, keep_pts)
        try:
            for frame in frames:
                t = _frame_time(frame)
                if t is None or t < want_pts[i]:
                    continue
                if t > want_pts[i]:
                    raise VideoDecodeError(f"{path}: frame {int(wanted[i])} does not decode")
                out.append(frame.to_ndarray(width=width, height=height, format="rgb24"))
                i += 1
                if i == len(wanted) or kf_for[i] > wanted[i - 1]:
                    break  # done, or the next wanted frame lies past a keyframe not yet reached: seek forward
            else:
                raise VideoDecodeError(f"{path}: frame {int(wanted[i])} does not decode (end of stream reached)")
        except av.error.FFmpegError as err:
            raise VideoDecodeError(f"{path}: decoding failed near frame {int(wanted[i])} ({err})") from err
        finally:
            frames.close()
    return out
