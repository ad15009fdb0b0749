"""Patch / tubelet embedding and the spatial + temporal position embeddings of the video ViT.

Space and time are embedded separately so that a pretrained image ViT becomes a video ViT without changing what it
computes on one frame: the spatial table is the image model's, the temporal table starts at zero, and a tubelet
kernel is inflated from the 2D patch kernel so that a static clip embeds exactly like the image.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vidvlm.errors import ConfigError


class PatchEmbed(nn.Module):
    """Split frames into patches (``tubelet_size == 1``: a 2D conv per frame) or space-time tubelets (3D conv).

    Args:
        patch_size: spatial patch side P.
        in_chans: input channels C.
        dim: output width D.
        tubelet_size: frames per tubelet Ts (1 = per-frame 2D patches).
        bias: whether the projection has a bias (HF CLIP has none).
    """

    def __init__(self, patch_size: int, in_chans: int, dim: int, tubelet_size: int = 1, bias: bool = True) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.tubelet_size = tubelet_size
        if tubelet_size == 1:
            self.proj: nn.Module = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size, bias=bias)
        else:
            kernel = (tubelet_size, patch_size, patch_size)
            self.proj = nn.Conv3d(in_chans, dim, kernel, stride=kernel, bias=bias)

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Embed ``video [B, T, C, H, W]`` (T a multiple of Ts, H and W multiples of P).

        Returns:
            tokens ``[B, T', N, D]`` with ``T' = T / Ts`` and ``N = (H/P)(W/P)`` in row-major order, and the grid
            ``(H/P, W/P)``.
        """
        b = video.shape[0]
        if self.tubelet_size == 1:
            x = self.proj(rearrange(video, "b t c h w -> (b t) c h w"))
            gh, gw = x.shape[-2:]
            return rearrange(x, "(b t) d gh gw -> b t (gh gw) d", b=b), (gh, gw)
        x = self.proj(rearrange(video, "b t c h w -> b c t h w"))
        gh, gw = x.shape[-2:]
        return rearrange(x, "b d t gh gw -> b t (gh gw) d"), (gh, gw)


def inflate_patch_weight(
    weight: torch.Tensor, tubelet_size: int, mode: Literal["center", "average"] = "center"
) -> torch.Tensor:
    """Inflate a 2D patch kernel ``[D, C, P, P]`` to a tubelet kernel ``[D, C, Ts, P, P]``.

    Both modes give the image embedding for a static tubelet: ``center`` puts the kernel on the middle frame
    (index ``Ts // 2``) and zeros elsewhere (I3D "centre" init, which ignores the other frames at the start);
    ``average`` puts ``kernel / Ts`` on every frame (I3D "mean" init, which responds to all frames equally).
    """
    if weight.ndim != 4:
        raise ConfigError(f"patch_embed.proj.weight: expected a 4D kernel to inflate, got shape {tuple(weight.shape)}")
    if mode == "center":
        out = weight.new_zeros(weight.shape[0], weight.shape[1], tubelet_size, *weight.shape[2:])
        out[:, :, tubelet_size // 2] = weight
        return out
    if mode == "average":
        return weight.unsqueeze(2).repeat(1, 1, tubelet_size, 1, 1) / tubelet_size
    raise ConfigError(f"tubelet_init: expected 'center' or 'average', got {mode!r}")


def resize_spatial_pos(
    pos: torch.Tensor, grid: tuple[int, int], new_grid: tuple[int, int], antialias: bool = False
) -> torch.Tensor:
    """Resample a patch position table ``[gh*gw, D]`` on grid ``grid`` to ``new_grid``, bicubic without corner
    alignment. ``antialias=False`` is HF CLIP/SigLIP's ``interpolate_pos_encoding``; ``True`` is timm's
    ``resample_abs_pos_embed`` (PyTorch's antialiased bicubic uses another kernel, so the two differ even when
    upsampling). Returns ``[gh'*gw', D]``."""
    if tuple(grid) == tuple(new_grid):
        return pos
    img = rearrange(pos, "(gh gw) d -> 1 d gh gw", gh=grid[0], gw=grid[1])
    img = F.interpolate(img.float(), size=new_grid, mode="bicubic", align_corners=False, antialias=antialias)
    img = img.to(pos.dtype)
    return rearrange(img, "1 d gh gw -> (gh gw) d")


class SpaceTimePosEmbed(nn.Module):
    """Learned spatial table (optionally with rows for the prefix tokens) plus a separate temporal table.

    Args:
        dim: width D.
        grid: spatial grid ``(gh, gw)`` the table was trained at.
        num_frames: length of the temporal table (in tubelets).
        num_prefix: number of prefix tokens (class + register) that have their own spatial rows (0 if they have
            none, as in SigLIP or timm ``no_embed_class``).
        antialias: resample the spatial table as timm does (see :func:`resize_spatial_pos`).

    The temporal table starts at zero, so a fresh video model equals the image model. For ``T' <=
    num_frames`` the first ``T'`` rows are used (not a resampled table), so a frame's embedding does not depend on
    how much padding follows it and an image (``T' = 1``) always gets row 0; longer clips resample linearly (a
    padded clip uses the table for its real length, see ``VideoViT``).
    """

    def __init__(
        self, dim: int, grid: tuple[int, int], num_frames: int, num_prefix: int = 0, antialias: bool = False
    ) -> None:
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))
        self.num_prefix = num_prefix
        self.antialias = antialias
        self.spatial = nn.Parameter(torch.randn(num_prefix + grid[0] * grid[1], dim) * 0.02)
        self.temporal = nn.Parameter(torch.zeros(num_frames, dim))

    def spatial_table(self, new_grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the prefix rows ``[num_prefix, D]`` and the patch rows ``[gh'*gw', D]`` for ``new_grid``."""
        prefix, patches = self.spatial[: self.num_prefix], self.spatial[self.num_prefix :]
        return prefix, resize_spatial_pos(patches, self.grid, new_grid, self.antialias)

    def temporal_table(self, num_frames: int) -> torch.Tensor:
        """Return ``[T', D]`` temporal rows (see the class docstring for the rule)."""
        if num_frames <= self.temporal.shape[0]:
            return self.temporal[:num_frames]
        table = rearrange(self.temporal, "t d -> 1 d t")
        table = F.interpolate(table.float(), size=num_frames, mode="linear", align_corners=False)
        return rearrange(table, "1 d t -> t d").to(self.temporal.dtype)
