"""Finite scalar quantisation (FSQ, Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple").

Each of the ``d = len(levels)`` channels of a vector is squashed into a bounded range and rounded to one of
``levels[i]`` values; the tuple of rounded values is the code, and the codebook is implicit: every combination, so
``prod(levels)`` codes, all of them usable (no codebook to learn, no commitment loss, no dead codes to restart).
Rounding passes gradients straight through. The conventions (the bound for even levels, the mixed-radix index with
the first channel least significant) are those of ``vector_quantize_pytorch.FSQ``; ``tests/layers/test_quantize.py``
checks codes and indices against it when it is installed. The forty lines live here rather than behind that
library because a trained model's visual ids are part of its checkpoint: a quantiser whose rounding or index order
moved with a dependency's release (its FSQ has grown options that change the rounding: ``preserve_symmetry``,
``bound_hard_clamp``) would silently re-map every saved model's vocabulary.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vidvlm.errors import ConfigError


class FSQ(nn.Module):
    """Finite scalar quantiser with an implicit codebook of ``prod(levels)`` codes.

    Args:
        levels: values per channel, each >= 3 (e.g. ``[8, 5, 5, 5]``: 1000 codes in 4 channels).
    """

    def __init__(self, levels: list[int] | tuple[int, ...]) -> None:
        super().__init__()
        levels = [int(v) for v in levels]
        if not levels or min(levels) < 3:
            raise ConfigError(f"levels: every channel needs at least 3 values, got {levels}")
        self.levels_list = levels
        self.codebook_size = math.prod(levels)
        basis = [math.prod(levels[:i]) for i in range(len(levels))]
        self.register_buffer("levels", torch.tensor(levels, dtype=torch.long), persistent=False)
        self.register_buffer("basis", torch.tensor(basis, dtype=torch.long), persistent=False)

    @property
    def dim(self) -> int:
        """Channels per vector (``len(levels)``)."""
        return len(self.levels_list)

    def quantize(self, z: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
        """``z [..., d]`` (any real values) -> codes ``[..., d]`` in ``[-1, 1]``, rounded with a straight-through
        gradient. Computed in float32 whatever the input dtype."""
        zf = z.float()
        half = (self.levels - 1) * (1 + eps) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0)
        bounded = torch.tanh(zf + torch.atanh(offset / half)) * half - offset
        rounded = bounded + (torch.round(bounded) - bounded).detach()
        return rounded / (self.levels // 2)

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[..., d]`` -> long indices ``[...]`` in ``[0, codebook_size)``."""
        digits = torch.round(codes * (self.levels // 2) + self.levels // 2).long()
        return (digits * self.basis).sum(-1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Long indices ``[...]`` -> float codes ``[..., d]`` (the inverse of :meth:`codes_to_indices`)."""
        digits = (indices.unsqueeze(-1) // self.basis) % self.levels
        half = self.levels // 2
        return (digits - half).float() / half

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z [..., d]`` -> ``(codes [..., d], indices [...])``."""
        if z.shape[-1] != self.dim:
            raise ValueError(f"FSQ with levels {self.levels_list} takes {self.dim} channels, got {z.shape[-1]}")
        codes = self.quantize(z)
        return codes, self.codes_to_indices(codes.detach())


__all__ = ["FSQ"]
