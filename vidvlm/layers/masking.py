"""Token masks for masked modelling and token dropping: which patch tokens of every time step stay visible.

A mask is given by the indices of the visible tokens, ``keep`` long ``[B, T', K]``: the same count K in every time
step (so the visible tokens still form a ``[B, T', K, D]`` block that every space-time layout can attend over) and
sorted ascending within a step (so a 0 % mask keeps the original order and changes nothing).

* ``tube`` (VideoMAE): one random set of spatial positions per clip, repeated in every time step, so a masked
  position is hidden in the whole clip and cannot be copied from a neighbouring frame.
* ``random`` (FLIP / open_clip patch dropout): an independent random set per time step.

At ``T' = 1`` (an image) both kinds are the same random patch mask. The encoder gathers the visible tokens
(:func:`gather_tokens`) before its blocks, so dropped tokens cost nothing; nothing is hidden by an attention mask.

Text is masked BERT's way (:func:`mask_text`): an exact share of each caption's real, non-special tokens is chosen;
of those 80 % become the mask id, 10 % a random id and 10 % stay, and all are predicted.
"""

from __future__ import annotations

from typing import Literal

import torch
from einops import rearrange, repeat
from torch import Tensor

from vidvlm.errors import ConfigError

MaskKind = Literal["tube", "random"]
MASK_KINDS = ("tube", "random")


def num_visible(num_tokens: int, ratio: float) -> int:
    """Visible tokens per time step when a fraction ``ratio`` of ``num_tokens`` is masked (at least one)."""
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"mask ratio: must lie in [0, 1), got {ratio}")
    return max(1, num_tokens - int(round(num_tokens * ratio)))


def make_keep(
    batch: int,
    steps: int,
    num_tokens: int,
    ratio: float,
    kind: MaskKind = "tube",
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Indices of the visible patch tokens of every time step.

    Args:
        batch: clips B.
        steps: time steps T' (tubelets; an image has one).
        num_tokens: patch tokens N per time step (prefix tokens excluded).
        ratio: fraction of each step's tokens to hide, in ``[0, 1)``.
        kind: ``tube`` (the same positions in every step) or ``random`` (independent per step).
        device: device of the result.
        generator: random generator (None: the global one of ``device``).

    Returns:
        long ``[B, T', K]`` with ``K = num_visible(N, ratio)``, ascending within each step.
    """
    if kind not in MASK_KINDS:
        raise ConfigError(f"mask kind: expected one of {list(MASK_KINDS)}, got {kind!r}")
    k = num_visible(num_tokens, ratio)
    rows = batch if kind == "tube" else batch * steps
    noise = torch.rand(rows, num_tokens, device=device, generator=generator)
    keep = noise.argsort(dim=1)[:, :k].sort(dim=1).values
    if kind == "tube":
        return repeat(keep, "b k -> b t k", t=steps)
    return rearrange(keep, "(b t) k -> b t k", b=batch)


def full_keep(batch: int, steps: int, num_tokens: int, device: torch.device | str | None = None) -> Tensor:
    """The 0 % mask: every token visible, ``[B, T', N]``."""
    return repeat(torch.arange(num_tokens, device=device), "n -> b t n", b=batch, t=steps)


def gather_tokens(tokens: Tensor, keep: Tensor) -> Tensor:
    """The visible tokens: ``tokens [B, T', N, D]``, ``keep`` long ``[B, T', K]`` -> ``[B, T', K, D]``."""
    if keep.shape[:2] != tokens.shape[:2]:
        raise ValueError(f"keep: expected [B, T'] = {tuple(tokens.shape[:2])} leading dims, got {tuple(keep.shape)}")
    idx = repeat(keep, "b t k -> b t k d", d=tokens.shape[-1])
    return torch.gather(tokens, 2, idx)


def visible_mask(keep: Tensor, num_tokens: int) -> Tensor:
    """bool ``[B, T', N]``, True at the visible positions of ``keep`` long ``[B, T', K]``."""
    mask = torch.zeros(*keep.shape[:2], num_tokens, dtype=torch.bool, device=keep.device)
    return mask.scatter(2, keep, True)


def hidden_positions(keep: Tensor, num_tokens: int) -> Tensor:
    """The positions ``keep`` leaves out: long ``[B, T', N - K]``, ascending within each step (the targets of
    masked modelling), from ``keep`` long ``[B, T', K]`` among ``num_tokens`` N."""
    hidden = (~visible_mask(keep, num_tokens)).to(torch.uint8)
    order = torch.sort(hidden, dim=2, descending=True, stable=True).indices
    return order[:, :, : num_tokens - keep.shape[2]]


def scatter_tokens(visible: Tensor, keep: Tensor, num_tokens: int, fill: Tensor) -> Tensor:
    """Put visible tokens back on the full grid, ``fill`` elsewhere (a decoder's mask token).

    Args:
        visible: ``[B, T', K, D]`` tokens of the visible positions.
        keep: long ``[B, T', K]`` their positions.
        num_tokens: N, the full count per step.
        fill: ``[D]`` the token for hidden positions.

    Returns:
        ``[B, T', N, D]``.
    """
    b, t, _, d = visible.shape
    out = repeat(fill.to(visible.dtype), "d -> b t n d", b=b, t=t, n=num_tokens)
    return out.scatter(2, repeat(keep, "b t k -> b t k d", d=d), visible)


def mask_text(
    input_ids: Tensor,
    attention_mask: Tensor,
    ratio: float,
    mask_id: int,
    vocab_size: int,
    special_ids: tuple[int, ...] = (),
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Hide tokens for masked language modelling (see the module docstring).

    Args:
        input_ids: long ``[B, L]``.
        attention_mask: bool ``[B, L]``, True for real tokens.
        ratio: share of each caption's maskable tokens to predict, in ``(0, 1]``; at least one per caption that
            has a maskable token.
        mask_id: the id that replaces a hidden token.
        vocab_size: random replacements are drawn from ``[0, vocab_size)``.
        special_ids: ids never hidden (bos, eos, pad).
        generator: random generator (None: the global one of the ids' device).

    Returns:
        ``ids`` long ``[B, L]`` (the corrupted input) and ``labels`` long ``[B, L]`` (the original id where a token
        is predicted, -100 elsewhere).
    """
    if not 0.0 < ratio <= 1.0:
        raise ConfigError(f"mlm ratio: must lie in (0, 1], got {ratio}")
    dev = input_ids.device
    maskable = attention_mask.to(torch.bool) & ~torch.isin(input_ids, torch.tensor(special_ids, device=dev))
    n = maskable.sum(1)
    count = torch.where(n > 0, (n.float() * ratio).round().long().clamp(min=1), n)
    scores = torch.rand(input_ids.shape, device=dev, generator=generator).masked_fill(~maskable, 2.0)
    rank = scores.argsort(1).argsort(1)
    picked = (rank < count[:, None]) & maskable
    labels = torch.where(picked, input_ids, torch.full_like(input_ids, -100))
    how = torch.rand(input_ids.shape, device=dev, generator=generator)
    noise = torch.randint(0, vocab_size, input_ids.shape, device=dev, generator=generator)
    ids = torch.where(picked & (how < 0.8), torch.full_like(input_ids, mask_id), input_ids)
    ids = torch.where(picked & (how >= 0.8) & (how < 0.9), noise, ids)
    return ids, labels


__all__ = [
    "mask_text",
    "MASK_KINDS",
    "num_visible",
    "make_keep",
    "full_keep",
    "gather_tokens",
    "visible_mask",
    "hidden_positions",
    "scatter_tokens",
]
