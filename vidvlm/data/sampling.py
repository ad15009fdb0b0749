"""Frame samplers: pure functions of a video's metadata that choose which frames to decode.

Every sampler is a callable ``sampler(metadata, rng=None) -> numpy.int64 array [n]``. ``metadata`` is a
:class:`~vidvlm.data.video.VideoMetadata` (only ``num_frames``, ``timestamps`` and ``duration`` are read);
``rng`` is a :class:`numpy.random.Generator` in training and ``None`` in evaluation, where every sampler is
deterministic. Samplers never decode.

Notation: ``N`` frames in the video, ``n`` frames wanted. When ``N`` is smaller than what a sampler asks for,
its ``short_policy`` decides (the same three choices everywhere):

- ``"repeat_last"``: take every frame once, then repeat the last one up to the requested count;
- ``"loop"``: wrap around, index ``i mod N``;
- ``"fewer"``: return only the frames that exist (a shorter ``T``).

A one-frame source (an image) therefore gives ``T = 1`` with ``"fewer"`` or with a sampler that asks for no fixed
count (``FpsSampler`` with ``min_frames=1``, ``AllFramesSampler``); a fixed count (``UniformSampler(8)``) repeats it.
A key-frame-only mode is not offered: the metadata contract has no key-frame list.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from vidvlm.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from vidvlm.data.video import VideoMetadata

ShortPolicy = Literal["repeat_last", "loop", "fewer"]
_POLICIES = ("repeat_last", "loop", "fewer")
# Timestamps are floats decoded from rational PTS; a frame "is shown at" t when its timestamp is <= t + _EPS.
_EPS = 1e-6


class Sampler(Protocol):
    def __call__(self, metadata: VideoMetadata, rng: np.random.Generator | None = None) -> np.ndarray: ...


def _check_policy(policy: str) -> None:
    if policy not in _POLICIES:
        raise ConfigError(f"short_policy: {policy!r} is not one of {list(_POLICIES)}")


def _num_frames(metadata: VideoMetadata) -> int:
    n = int(metadata.num_frames)
    if n < 1:
        raise ConfigError(f"{metadata.path}: the video has no frames to sample")
    return n


def pad_short(num_frames: int, wanted: int, policy: str) -> np.ndarray:
    """Indices for a video of ``num_frames`` frames when ``wanted >= num_frames`` frames are asked for.

    ``"repeat_last"``: ``[0, 1, ..., N-1, N-1, ...]``; ``"loop"``: ``arange(wanted) mod N``; ``"fewer"``: ``arange(N)``.
    """
    if policy == "fewer":
        return np.arange(num_frames, dtype=np.int64)
    if policy == "loop":
        return np.arange(wanted, dtype=np.int64) % num_frames
    return np.minimum(np.arange(wanted, dtype=np.int64), num_frames - 1)


@dataclass(frozen=True)
class UniformSampler:
    """TSN-style sampling: ``n`` equal segments, one frame per segment.

    Segment ``i`` covers frames ``[floor(i*N/n), floor((i+1)*N/n))`` (exact integer arithmetic; the segments tile
    every frame). Evaluation (``rng is None``) takes a fixed point of each segment:

    - ``anchor="center"``: ``floor((2i+1)*N / (2n))``, the segment centre; this is mmaction2 ``SampleFrames``
      in test mode with ``clip_len=1`` (TSN).
    - ``anchor="start"``: ``floor(i*N/n)``, the segment start; this is transformers' ``default_sample_indices_fn``.

    Training draws one frame uniformly inside each segment (``draw="segment"``), or, with ``draw="subset"``, ``n``
    distinct frames from the whole video, in order: a frame's place in the sequence then says its time only roughly,
    and a model has to read the frame times (e.g. ``model.frame_times`` of the LLaVA family) to know when it was
    taken. When ``N < n`` the ``short_policy`` applies.

    Args:
        num_frames: ``n``, the number of frames returned (when the video has at least ``n``).
        anchor: ``"center"`` or ``"start"`` (evaluation only).
        short_policy: see the module docstring.
        draw: ``"segment"`` or ``"subset"`` (training only).
    """

    num_frames: int
    anchor: Literal["center", "start"] = "center"
    short_policy: ShortPolicy = "repeat_last"
    draw: Literal["segment", "subset"] = "segment"

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise ConfigError(f"num_frames: must be >= 1, got {self.num_frames}")
        if self.anchor not in ("center", "start"):
            raise ConfigError(f"anchor: {self.anchor!r} is not one of ['center', 'start']")
        if self.draw not in ("segment", "subset"):
            raise ConfigError(f"draw: {self.draw!r} is not one of ['segment', 'subset']")
        _check_policy(self.short_policy)

    def __call__(self, metadata: VideoMetadata, rng: np.random.Generator | None = None) -> np.ndarray:
        big_n, n = _num_frames(metadata), self.num_frames
        if big_n < n:
            return pad_short(big_n, n, self.short_policy)
        i = np.arange(n, dtype=np.int64)
        lo = i * big_n // n
        if rng is None:
            return (2 * i + 1) * big_n // (2 * n) if self.anchor == "center" else lo
        if self.draw == "subset":
            return np.sort(rng.choice(big_n, size=n, replace=False)).astype(np.int64)
        hi = (i + 1) * big_n // n  # exclusive, hi > lo because N >= n
        return lo + np.floor(rng.random(n) * (hi - lo)).astype(np.int64)


@dataclass(frozen=True)
class StridedClipSampler:
    """Clips of ``clip_len`` frames spaced ``frame_interval`` apart (mmaction2 ``SampleFrames`` conventions).

    A clip starting at ``s`` is ``s + j*frame_interval`` for ``j < clip_len``; its span is
    ``span = (clip_len-1)*frame_interval + 1`` frames, so valid starts are ``0..M`` with ``M = N - span``.

    - Evaluation, ``num_clips = K = 1``: the centred start ``M // 2``.
    - Evaluation, ``K > 1``: ``round(k*M/(K-1))`` (round half to even), ``K`` clips evenly spread from the first
      to the last valid start, for test-time averaging. Both equal mmaction2 ``SampleFrames`` in test mode.
    - Training: the ``M+1`` valid starts are cut into ``K`` equal segments ``[floor(k(M+1)/K), floor((k+1)(M+1)/K))``
      and one start is drawn uniformly from each (with ``K = 1``: uniform over ``0..M``). A segment that is empty
      (``M + 1 < K``) uses its lower bound.

    The result is the ``K`` clips concatenated: shape ``[K*clip_len]``, clip ``k`` at ``[k*clip_len:(k+1)*clip_len]``
    (reshape with ``rearrange(x, "(k t) ... -> k t ...", k=K)``).

    When the video is shorter than ``span`` (``M < 0``) every clip starts at 0 and indices past the end follow
    ``short_policy``: ``"repeat_last"`` repeats the clip's last in-range index (as mmaction2's ``repeat_last``),
    ``"loop"`` takes them modulo ``N`` (mmaction2's ``loop``), ``"fewer"`` drops them (each clip gets
    ``ceil(N/frame_interval)`` frames).

    Args:
        clip_len: frames per clip.
        frame_interval: the stride between frames of a clip.
        num_clips: ``K``, clips per video.
        short_policy: see above.
    """

    clip_len: int
    frame_interval: int = 1
    num_clips: int = 1
    short_policy: ShortPolicy = "repeat_last"

    def __post_init__(self) -> None:
        for name in ("clip_len", "frame_interval", "num_clips"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        _check_policy(self.short_policy)

    def starts(self, num_frames: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """The ``K`` clip start indices for a video of ``num_frames`` frames."""
        k_clips = self.num_clips
        max_start = num_frames - ((self.clip_len - 1) * self.frame_interval + 1)
        k = np.arange(k_clips, dtype=np.int64)
        if max_start < 0:
            return np.zeros(k_clips, dtype=np.int64)
        if rng is None:
            if k_clips == 1:
                return np.array([max_start // 2], dtype=np.int64)
            return np.rint(k * (max_start / (k_clips - 1))).astype(np.int64)
        lo = k * (max_start + 1) // k_clips
        hi = np.maximum((k + 1) * (max_start + 1) // k_clips, lo + 1)
        return lo + np.floor(rng.random(k_clips) * (hi - lo)).astype(np.int64)

    def __call__(self, metadata: VideoMetadata, rng: np.random.Generator | None = None) -> np.ndarray:
        big_n = _num_frames(metadata)
        starts = self.starts(big_n, rng)
        inds = starts[:, None] + np.arange(self.clip_len, dtype=np.int64)[None, :] * self.frame_interval  # [K, L]
        if inds.max() < big_n:
            return inds.reshape(-1)
        if self.short_policy == "loop":
            return (inds % big_n).reshape(-1)
        if self.short_policy == "fewer":
            return inds[inds < big_n].reshape(-1)
        valid = inds < big_n
        last_valid = np.where(valid, inds, -1).max(axis=1, keepdims=True)
        return np.where(valid, inds, last_valid).reshape(-1)


@dataclass(frozen=True)
class FpsSampler:
    """A target frame rate on the real timestamps (correct on variable-frame-rate video).

    The window is ``[t0, t1)`` with ``t0 = start`` (default: the first timestamp) and ``t1 = end`` (default and
    upper bound: the video's end, its duration or its last timestamp, whichever is later). Its frames ``W`` are
    those with ``t0 <= timestamp < t1`` (at least the frame shown at ``t0``). The count is
    ``n = clamp(floor((t1 - t0) * fps), min_frames, max_frames)`` (at least 1), the target times are
    ``t_k = t0 + (k + u) * (t1 - t0) / n`` with ``u = 0`` in evaluation and ``u ~ U[0, 1)`` (one draw per call) in
    training, and index ``k`` is the frame shown at ``t_k``: the last frame whose timestamp is ``<= t_k``, kept
    inside ``W``. On a constant-rate video starting at 0 with ``duration*fps`` an integer, this equals transformers'
    ``default_sample_indices_fn(metadata, fps=fps)``: ``floor(k*N/n)``. A frame held on screen longer than
    ``1/fps`` is returned more than once, as a player would show it. When ``n`` exceeds the frames in ``W`` the
    ``short_policy`` applies over ``W``.

    Args:
        fps: target frames per second.
        min_frames: the fewest frames returned (then subject to ``short_policy`` on very short videos).
        max_frames: the most frames returned; ``None`` for no limit.
        start: window start in seconds, or ``None``.
        end: window end in seconds, or ``None``.
        short_policy: see the module docstring.
    """

    fps: float
    min_frames: int = 1
    max_frames: int | None = None
    start: float | None = None
    end: float | None = None
    short_policy: ShortPolicy = "repeat_last"

    def __post_init__(self) -> None:
        if not self.fps > 0:
            raise ConfigError(f"fps: must be > 0, got {self.fps}")
        if self.min_frames < 1 or (self.max_frames is not None and self.max_frames < self.min_frames):
            raise ConfigError(
                f"min_frames/max_frames: need 1 <= min_frames <= max_frames, got {self.min_frames}/{self.max_frames}"
            )
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ConfigError(f"start/end: end ({self.end}) must be after start ({self.start})")
        _check_policy(self.short_policy)

    def __call__(self, metadata: VideoMetadata, rng: np.random.Generator | None = None) -> np.ndarray:
        _num_frames(metadata)
        ts = np.asarray(metadata.timestamps, dtype=np.float64)
        first, last = window_range(metadata, self.start, self.end)
        t0 = ts[0] if self.start is None else max(float(self.start), ts[0])
        video_end = max(float(metadata.duration), float(ts[-1]))
        t1 = video_end if self.end is None else min(float(self.end), video_end)
        span = max(t1 - t0, 0.0)
        n = max(int(np.floor(span * self.fps + _EPS)), self.min_frames)
        if self.max_frames is not None:
            n = min(n, self.max_frames)
        available = last - first
        if n > available:
            return first + pad_short(available, n, self.short_policy)
        u = 0.0 if rng is None else float(rng.random())
        targets = t0 + (np.arange(n) + u) * (span / n)
        inds = np.searchsorted(ts, targets + _EPS, side="right") - 1
        return np.clip(inds, first, last - 1).astype(np.int64)


@dataclass(frozen=True)
class AllFramesSampler:
    """Every frame, ``arange(N)``; with ``max_frames`` set, longer videos raise instead of being silently cut.

    Args:
        max_frames: the most frames allowed, or ``None``.
    """

    max_frames: int | None = None

    def __call__(self, metadata: VideoMetadata, rng: np.random.Generator | None = None) -> np.ndarray:
        big_n = _num_frames(metadata)
        if self.max_frames is not None and big_n > self.max_frames:
            raise ConfigError(
                f"{metadata.path}: {big_n} frames exceed max_frames={self.max_frames} of the all-frames sampler"
            )
        return np.arange(big_n, dtype=np.int64)


def window_range(metadata: VideoMetadata, start: float | None, end: float | None) -> tuple[int, int]:
    """The frames ``[first, last)`` of a ``[start, end)`` time window (seconds, on the real timestamps).

    ``first`` is the frame shown at ``start`` (the last one with timestamp ``<= start``); ``last`` excludes frames
    whose timestamp is ``>= end``. The window always holds at least one frame. ``None`` means the video's edge.
    """
    ts = np.asarray(metadata.timestamps, dtype=np.float64)
    first = 0 if start is None else max(int(np.searchsorted(ts, float(start) + _EPS, side="right")) - 1, 0)
    last = len(ts) if end is None else int(np.searchsorted(ts, float(end) - _EPS, side="left"))
    return first, max(last, first + 1)


def window_metadata(metadata: VideoMetadata, start: float | None, end: float | None) -> tuple[VideoMetadata, int]:
    """Restrict metadata to a ``[start, end)`` window so that any sampler works on a clip of a longer video.

    Returns:
        ``(sub, offset)``: ``sub`` has the window's ``num_frames`` and timestamps shifted to start at 0;
        add ``offset`` to the indices a sampler returns for ``sub`` to index the full video.
    """
    if start is None and end is None:
        return metadata, 0
    first, last = window_range(metadata, start, end)
    ts = tuple(float(t) for t in metadata.timestamps[first:last])
    video_end = max(float(metadata.duration), float(metadata.timestamps[-1]))
    t_end = video_end if end is None else min(float(end), video_end)
    sub = dataclasses.replace(
        metadata,
        num_frames=last - first,
        timestamps=tuple(t - ts[0] for t in ts),
        duration=max(t_end - ts[0], 0.0),
    )
    return sub, first


@dataclass
class SamplerConfig:
    """Which sampler to build and its parameters (fields unused by the chosen ``name`` are ignored).

    ``name``: ``"uniform"`` (``num_frames``, ``anchor``, ``draw``), ``"strided"`` (``clip_len``, ``frame_interval``,
    ``num_clips``), ``"fps"`` (``fps``, ``min_frames``, ``max_frames``) or ``"all"`` (``max_frames``).
    """

    name: Literal["uniform", "strided", "fps", "all"] = "uniform"
    num_frames: int = 8
    anchor: Literal["center", "start"] = "center"
    draw: Literal["segment", "subset"] = "segment"
    clip_len: int = 8
    frame_interval: int = 1
    num_clips: int = 1
    fps: float = 1.0
    min_frames: int = 1
    max_frames: int | None = None
    short_policy: ShortPolicy = "repeat_last"


def build_sampler(cfg: SamplerConfig) -> Sampler:
    """Build the sampler a :class:`SamplerConfig` describes."""
    if cfg.name == "uniform":
        return UniformSampler(cfg.num_frames, anchor=cfg.anchor, short_policy=cfg.short_policy, draw=cfg.draw)
    if cfg.name == "strided":
        return StridedClipSampler(cfg.clip_len, cfg.frame_interval, cfg.num_clips, short_policy=cfg.short_policy)
    if cfg.name == "fps":
        return FpsSampler(cfg.fps, cfg.min_frames, cfg.max_frames, short_policy=cfg.short_policy)
    if cfg.name == "all":
        return AllFramesSampler(cfg.max_frames)
    raise ConfigError(f"sampler.name: {cfg.name!r} is not one of ['uniform', 'strided', 'fps', 'all']")


# -- windows: where in a video a sampler is applied -------------------------------------------------------------------
Window = tuple[float | None, float | None]


def clip_windows(num_frames: int, num_clips: int) -> list[tuple[int, int]]:
    """``num_clips`` consecutive, equal frame windows ``[first, last)`` tiling the video (empty ones dropped)."""
    bounds = [k * num_frames // num_clips for k in range(num_clips + 1)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def equal_windows(metadata: VideoMetadata, num_clips: int) -> list[Window]:
    """``num_clips`` equal time windows ``(start, end)`` tiling the video's frames (test-time clips).

    Window ``k`` holds the frames :func:`clip_windows` gives and lasts until the next window's first frame; the last
    window's ``end`` is ``None`` (the end of the video). An image (one frame) gives one window.
    """
    if num_clips < 1:
        raise ConfigError(f"num_clips: must be >= 1, got {num_clips}")
    stamps = metadata.timestamps
    frames = clip_windows(int(metadata.num_frames), num_clips)
    return [(float(stamps[a]), float(stamps[b]) if b < len(stamps) else None) for a, b in frames]


def segment_windows(duration: float, segment: float | None) -> list[Window]:
    """Consecutive ``[start, end)`` windows of ``segment`` seconds over ``duration`` seconds (the last one shorter).

    ``segment=None`` gives one window, ``(None, None)``: the whole video.
    """
    if segment is None:
        return [(None, None)]
    if not segment > 0 or not np.isfinite(segment):
        raise ConfigError(f"segment: must be a finite number of seconds > 0, got {segment}")
    starts = np.arange(0.0, max(float(duration), 1e-9), segment)
    return [(float(s), float(min(s + segment, duration))) for s in starts]
