"""Per-frame boxes from a manifest row, taken at a clip's sampled frames (see :mod:`vidvlm.data.datasets`).

Boxes are pixel corners ``x0, y0, x1, y1`` (ends exclusive) until the end of the data path, where
:func:`normalise_boxes` writes them as ``cx, cy, w, h`` in units of the output frame's width and height.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from vidvlm.data.reader import Clip
from vidvlm.errors import ConfigError


def row_boxes(row: Any) -> list | None:
    """The per-frame boxes of ``row`` (a :class:`~vidvlm.data.datasets.ManifestRow`): its ``boxes``, or those of the
    only entry of its ``shapes``; None when it has none (or several shapes)."""
    if "boxes" in row.extra:
        return row.extra["boxes"]
    shapes = row.extra.get("shapes")
    if isinstance(shapes, list) and len(shapes) == 1 and isinstance(shapes[0], dict) and "boxes" in shapes[0]:
        return shapes[0]["boxes"]
    return None


def _box(value: Any, where: str, frame: int) -> list[float]:
    if value is None:
        return [math.nan] * 4
    ok = isinstance(value, list | tuple) and len(value) == 4
    ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    if not ok or not (value[2] >= value[0] and value[3] >= value[1]):
        raise ConfigError(f"{where}: 'boxes'[{frame}] must be [x0, y0, x1, y1] with x1 >= x0, y1 >= y0, or null")
    return [float(v) for v in value]


def sampled_boxes(raw: Any, clip: Clip, where: str) -> torch.Tensor:
    """The boxes of ``clip``'s sampled frames in its decoded pixels.

    Args:
        raw: the row's boxes, one per frame of the file (``[x0, y0, x1, y1]`` or None).
        clip: the decoded clip (its ``indices`` pick the frames; its ``source_size`` against the decoded frames'
            size gives the scale of a decode-time resize).
        where: ``file:line`` for error messages.

    Returns:
        float ``[T, 4]`` pixel corners, NaN rows where the shape is hidden.
    """
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: 'boxes' must be a list with one entry per frame, got {type(raw).__name__}")
    top = int(clip.indices.max()) if len(clip.indices) else -1
    if top >= len(raw):
        raise ConfigError(f"{where}: 'boxes' has {len(raw)} entries but frame {top} was sampled (one per frame)")
    boxes = torch.tensor([_box(raw[int(i)], where, int(i)) for i in clip.indices], dtype=torch.float32)
    boxes = boxes.reshape(-1, 4)
    if clip.source_size is not None:
        (h0, w0), (h, w) = clip.source_size, clip.frames.shape[-2:]
        boxes = boxes * torch.tensor([w / w0, h / h0, w / w0, h / h0])
    return boxes


def normalise_boxes(boxes: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Pixel corners ``[T, 4]`` of frames ``size = (H, W)`` -> normalised ``cx, cy, w, h`` ``[T, 4]`` (NaN kept)."""
    h, w = int(size[0]), int(size[1])
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / (2 * w), (y0 + y1) / (2 * h), (x1 - x0) / w, (y1 - y0) / h], dim=-1)


__all__ = ["row_boxes", "sampled_boxes", "normalise_boxes"]
