"""The per-source result of feature extraction, and how each level's tensor maps to shard rows."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange

LEVELS = ("pooled", "frames", "tokens", "layers")


@dataclass
class FeatureResult:
    """Features of one source (a video or an image, which is a one-frame video).

    Attributes:
        source: the absolute path the features came from.
        features: ``None`` when ``error`` is set, else by level:
            ``pooled`` ``[D]``; ``frames`` ``[T, D]``; ``tokens`` ``[M, D]``; ``layers`` ``[L, T, N, D]``.
            With several clips, ``pooled`` is the mean over clips and the other levels concatenate the clips in
            time order (``T`` and ``M`` then count every clip).
        timestamps: float64 ``[T]``, seconds of every sampled frame (all clips, in order), or ``None`` on error.
        error: why the source could not be read (``"VideoDecodeError: ..."``), or ``None``.
    """

    source: str
    features: torch.Tensor | None
    timestamps: torch.Tensor | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def to_rows(features: torch.Tensor, level: str) -> dict[str, torch.Tensor]:
    """Named tensors whose first axis is this source's rows in a shard.

    ``pooled`` is one row; ``frames`` and ``tokens`` are one row per frame / pooled token; ``layers`` is one row per
    frame, one tensor per chosen layer (``layer.<k>`` for the k-th requested layer, ``[T, N, D]``).
    """
    if level == "pooled":
        return {"features": rearrange(features, "d -> 1 d")}
    if level in ("frames", "tokens"):
        return {"features": features}
    assert level == "layers", level
    return {f"layer.{k}": features[k] for k in range(features.shape[0])}


def from_rows(tensors: dict[str, torch.Tensor], level: str) -> torch.Tensor:
    """Inverse of :func:`to_rows` for one source's slice of a shard."""
    if level == "pooled":
        return rearrange(tensors["features"], "1 d -> d")
    if level in ("frames", "tokens"):
        return tensors["features"]
    names = sorted((n for n in tensors if n.startswith("layer.")), key=lambda n: int(n.split(".", 1)[1]))
    return torch.stack([tensors[n] for n in names])
