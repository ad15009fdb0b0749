"""The one clip reader: open -> window -> sample -> get_frames, used by datasets, captioning and extraction.

A *window* is a ``(start, end)`` time range in seconds (``None`` for the video's edge; see
:mod:`vidvlm.data.sampling` for the window helpers). Each window is restricted with ``window_metadata``, sampled by
the sampler on the window's own metadata, and its frames are decoded at one size. The size is chosen once per
video: ``size`` as :meth:`~vidvlm.data.video.Video.get_frames` takes it, or ``shrink_to``, a short side used only
when the video's is larger (so that a 1080p file is decoded near a model's input size, never upscaled).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vidvlm.data.sampling import Sampler, Window, window_metadata
from vidvlm.data.transforms import Compose, Resize
from vidvlm.data.video import Size, Video, VideoMetadata, open_video


@dataclass
class Clip:
    """The sampled frames of one window of a video.

    Attributes:
        frames: uint8 ``[T, 3, H, W]``, display orientation, at the chosen decode size.
        timestamps: float64 ``[T]``, seconds of each frame in the file.
        indices: int64 ``[T]``, frame positions in the whole video.
        window: the ``(start, end)`` window it was sampled from, as given.
        source_size: ``(H, W)`` of the file's frames before any decode-time resize (display orientation), or None.
    """

    frames: torch.Tensor
    timestamps: torch.Tensor
    indices: np.ndarray
    window: Window
    source_size: tuple[int, int] | None = None


def decode_size(metadata: VideoMetadata, size: Size = None, shrink_to: int | None = None) -> Size:
    """The ``size`` to decode ``metadata``'s video at: ``size`` when given, else ``shrink_to`` when the video's
    short side is larger than it, else None (native size)."""
    if size is not None or shrink_to is None:
        return size
    return int(shrink_to) if min(metadata.width, metadata.height) > shrink_to else None


def transform_short_side(transform: object) -> int | None:
    """The short side a vidvlm eval transform resizes to first (a :class:`Compose` starting with a short-side
    :class:`Resize`), or None when it is another kind of transform (then decode at native size)."""
    if isinstance(transform, Compose) and transform.transforms and isinstance(transform.transforms[0], Resize):
        sizes = transform.transforms[0].size
        return int(sizes[0]) if len(sizes) == 1 else None
    return None


def iter_clips(
    video: Video | str | os.PathLike,
    sampler: Sampler,
    windows: Sequence[Window] | None = None,
    *,
    size: Size = None,
    shrink_to: int | None = None,
    rng: np.random.Generator | None = None,
    backend: str = "auto",
    num_threads: int = 1,
) -> Iterator[Clip]:
    """Decode the sampled frames of each window, one window at a time (memory holds one clip).

    Args:
        video: an opened :class:`Video` (left open) or a path (opened here and closed when the iterator ends).
        sampler: ``sampler(metadata, rng) -> indices`` (see :mod:`vidvlm.data.sampling`).
        windows: ``(start, end)`` windows in seconds; None is one window over the whole video.
        size: decode size (short side or ``(H, W)``), as ``Video.get_frames`` takes it.
        shrink_to: when ``size`` is None, decode at this short side if the video's is larger.
        rng: the sampler's generator (None: deterministic evaluation sampling).
        backend: ``open_video`` backend when ``video`` is a path.
        num_threads: decoder threads when ``video`` is a path.

    Yields:
        One :class:`Clip` per window, in order.

    Raises:
        VideoDecodeError: the file cannot be opened or decoded. ConfigError: the sampler rejects the video.
    """
    if isinstance(video, Video):
        yield from _clips(video, sampler, windows, size, shrink_to, rng)
        return
    with open_video(video, backend=backend, num_threads=num_threads) as opened:
        yield from _clips(opened, sampler, windows, size, shrink_to, rng)


def read_clips(
    video: Video | str | os.PathLike,
    sampler: Sampler,
    windows: Sequence[Window] | None = None,
    **kwargs,
) -> list[Clip]:
    """Every clip of :func:`iter_clips` as a list (same arguments)."""
    return list(iter_clips(video, sampler, windows, **kwargs))


def _clips(
    video: Video,
    sampler: Sampler,
    windows: Sequence[Window] | None,
    size: Size,
    shrink_to: int | None,
    rng: np.random.Generator | None,
) -> Iterator[Clip]:
    meta = video.metadata
    at = decode_size(meta, size, shrink_to)
    stamps = np.asarray(meta.timestamps, dtype=np.float64)
    for window in windows if windows is not None else [(None, None)]:
        sub, offset = window_metadata(meta, *window)
        indices = np.asarray(sampler(sub, rng), dtype=np.int64) + offset
        frames = video.get_frames(indices, size=at)
        yield Clip(frames, torch.from_numpy(stamps[indices]), indices, window, (meta.height, meta.width))


__all__ = ["Clip", "decode_size", "iter_clips", "read_clips", "transform_short_side"]
