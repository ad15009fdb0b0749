"""Parts of the masking family (``vidvlm.models.masking``): the fusion encoder, the MLM head, the box head, and the
light decoder of masked video modelling with its tubelet targets (text-guided when it cross-attends to text)."""

from __future__ import annotations

import torch
from einops import rearrange, repeat
from torch import nn

from vidvlm.devices import to_device
from vidvlm.layers.attention import AttnMask
from vidvlm.layers.embeddings import SpaceTimePosEmbed
from vidvlm.layers.masking import gather_tokens, scatter_tokens
from vidvlm.layers.transformer import TransformerBlock
from vidvlm.models.vision import fill_to_tubelets


def _padding(mask: torch.Tensor | None) -> AttnMask | None:
    """A key-padding mask (None: every key is real). Not dropped when it pads nothing: that would read it back from
    a GPU every call."""
    return None if mask is None else AttnMask(key_padding=mask)


class FusionEncoder(nn.Module):
    """Text tokens that read the video: blocks of self-attention over the text, cross-attention to the visual
    tokens, and an MLP (the shared :class:`TransformerBlock`).

    Args:
        width: text width D.
        depth: blocks.
        num_heads: attention heads.
        context_dim: width of the visual tokens.
    """

    def __init__(self, width: int, depth: int, num_heads: int, context_dim: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TransformerBlock(width, num_heads, cross_attention=True, context_dim=context_dim, norm_eps=1e-5)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width, eps=1e-5)

    def forward(
        self, text: torch.Tensor, text_mask: torch.Tensor, video: torch.Tensor, video_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """``text [B, L, D]`` (bool ``text_mask [B, L]``), ``video [B, M, Dv]`` (bool ``video_mask [B, M]`` or
        None) -> fused text tokens ``[B, L, D]``."""
        mask, context_mask = _padding(text_mask), _padding(video_mask)
        x = text
        for blk in self.blocks:
            x = blk(x, mask, context=video, context_mask=context_mask)
        return self.norm(x)


class MLMHead(nn.Module):
    """``[..., D] -> [..., V]`` logits over the vocabulary (dense, GELU, LayerNorm, decoder; BERT's head)."""

    def __init__(self, width: int, vocab_rows: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(width, eps=1e-5)
        self.decoder = nn.Linear(width, vocab_rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(self.act(self.dense(x))))


class BoxHead(nn.Module):
    """``[..., D] -> [..., 4]`` a normalised box ``cx, cy, w, h`` in ``(0, 1)`` (a two-layer MLP and a sigmoid)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc2(self.act(self.fc1(x))))


class PixelDecoder(nn.Module):
    """VideoMAE's light decoder: visible encoder tokens plus a learned mask token at every hidden position, with
    their own space-time positions, joint attention over the clip, then each tubelet's pixels.

    Args:
        encoder_width: width of the encoder tokens.
        width: decoder width.
        depth: decoder blocks.
        num_heads: decoder heads.
        grid: the encoder's patch grid ``(H/P, W/P)`` at its training size.
        num_tubelets: length of the decoder's temporal table (longer clips resample it).
        out_dim: pixels per tubelet (``tubelet_size * P * P * C``).
        context_dim: width of text tokens every block cross-attends to (X-FM's text-guided MIM), or None.
    """

    def __init__(
        self,
        encoder_width: int,
        width: int,
        depth: int,
        num_heads: int,
        grid: tuple[int, int],
        num_tubelets: int,
        out_dim: int,
        context_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(encoder_width, width)
        self.mask_token = nn.Parameter(torch.zeros(width))
        self.pos = SpaceTimePosEmbed(width, grid, num_tubelets)
        nn.init.normal_(self.pos.temporal, std=0.02)  # unlike the encoder's, time is new information here
        nn.init.normal_(self.mask_token, std=0.02)
        cross = {} if context_dim is None else {"cross_attention": True, "context_dim": context_dim}
        self.blocks = nn.ModuleList(TransformerBlock(width, num_heads, norm_eps=1e-6, **cross) for _ in range(depth))
        self.guided = context_dim is not None
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.head = nn.Linear(width, out_dim)

    def forward(
        self,
        visible: torch.Tensor,
        keep: torch.Tensor,
        grid: tuple[int, int],
        step_mask: torch.Tensor | None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        predict: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the tubelets at ``predict`` (every tubelet when None).

        Args:
            visible: ``[B, T', K, De]`` encoder outputs of the visible patch tokens (prefix tokens removed).
            keep: long ``[B, T', K]`` their positions among the ``N = gh * gw`` patches of a step.
            grid: ``(gh, gw)`` of this input.
            step_mask: bool ``[B, T']`` real time steps (padded ones are never keys), or None.
            context: ``[B, L, Dc]`` text tokens to cross-attend to (only and always for a text-guided decoder).
            context_mask: bool ``[B, L]`` their real tokens, or None.
            predict: long ``[B, T', H]`` positions whose pixels to predict (the hidden ones: every position goes
                through the blocks, only these through the head, as VideoMAE's decoder does), or None for all N.

        Returns:
            ``[B, T', H, out_dim]`` predicted (normalised) pixels (``H = N`` when ``predict`` is None).
        """
        if (context is not None) != self.guided:
            kind = "a text-guided decoder needs" if self.guided else "a plain decoder takes no"
            raise ValueError(f"context: {kind} text context")
        b, t = visible.shape[:2]
        n = grid[0] * grid[1]
        x = scatter_tokens(self.embed(visible), keep, n, self.mask_token)
        _, space = self.pos.spatial_table(grid)
        x = x + space.to(x.dtype) + rearrange(self.pos.temporal_table(t).to(x.dtype), "t d -> t 1 d")
        h = rearrange(x, "b t n d -> b (t n) d")
        mask = None
        if step_mask is not None:  # used as it is, even when it pads nothing: testing that would read it back
            mask = AttnMask(key_padding=repeat(step_mask.bool(), "b t -> b (t n)", n=n))
        extra = {} if context is None else {"context": context, "context_mask": _padding(context_mask)}
        for blk in self.blocks:
            h = blk(h, mask, **extra)
        h = rearrange(h, "b (t n) d -> b t n d", t=t)
        if predict is not None:
            h = gather_tokens(h, predict)
        return self.head(self.norm(h))


def tubelet_pixels(
    video: torch.Tensor, frame_mask: torch.Tensor | None, patch_size: int, tubelet_size: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The prediction targets: each tubelet's pixels, as the encoder cuts them.

    Args:
        video: ``[B, T, C, H, W]`` (the model's input).
        frame_mask: bool ``[B, T]`` or None.
        patch_size: P.
        tubelet_size: frames per tubelet Ts (padded frames and frames beyond T repeat the last real one, as the
            encoder fills them).

    Returns:
        ``[B, T', N, Ts * P * P * C]`` (row-major patches) and the real time steps bool ``[B, T']`` or None.
    """
    if tubelet_size > 1:
        video, frame_mask = fill_to_tubelets(video, frame_mask, tubelet_size)
    elif frame_mask is not None:
        frame_mask = to_device(frame_mask.bool(), video.device)  # the trainer's mask lies on the host
    gh, gw = video.shape[-2] // patch_size, video.shape[-1] // patch_size
    video = video[..., : gh * patch_size, : gw * patch_size]
    pixels = rearrange(
        video, "b (t s) c (h p) (w q) -> b t (h w) (s p q c)", s=tubelet_size, p=patch_size, q=patch_size
    )
    return pixels, frame_mask


__all__ = ["FusionEncoder", "MLMHead", "BoxHead", "PixelDecoder", "tubelet_pixels"]
