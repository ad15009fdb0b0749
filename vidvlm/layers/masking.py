"""Token masks for masked modelling and token dropping: which patch tokens of every time step stay visible.

A mask is given by the indices of the visible tokens, ``keep`` long ``[B, T', K]``: the same count K in every time
step (so the visible tokens still form a ``[B, T', K, D]`` block that every space-time layout can attend over) and
sorted ascending within a step (so a 0 % mask keeps the original order and changes nothing).

* ``tube`` (VideoMAE): one random set of spatial positions per clip, repeated in every time step, so a masked
  position is hidden in the whole clip and cannot be copied from a neighbouring frame.
* ``random`` (FLIP / open_clip patch dropout): an independent random set per time step.
* ``content`` (token dropping only, :func:`content_keep`): the tokens whose pixels carry the most, kept per time
  step: :func:`content_scores` adds a patch's change from the neighbouring frames (the redundancy EVEREST and
  run-length tokenisation remove: static patches repeat the previous frame) to its spatial contrast (a flat patch
  carries little), so flat, static background goes first and small or moving objects stay; with a
  ``random_share`` part of the kept tokens is drawn at random from the rest, so the background is still seen.
  Unlike the random kinds it can also select tokens at evaluation (``random_ties=False``: ties by position).

At ``T' = 1`` (an image) ``tube`` and ``random`` are the same random patch mask, and ``content`` ranks by contrast.
The encoder gathers the visible tokens (:func:`gather_tokens`) before its blocks, so dropped tokens cost nothing;
nothing is hidden by an attention mask.

Text is masked BERT's way (:func:`mask_text`): an exact share of each caption's real, non-special tokens is chosen;
of those 80 % become the mask id, 10 % a random id and 10 % stay, and all are predicted.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange, reduce, repeat
from torch import Tensor

from vidvlm.devices import device_tensor
from vidvlm.errors import ConfigError

MaskKind = Literal["tube", "random"]
MASK_KINDS = ("tube", "random")
DropKind = Literal["tube", "random", "content"]
DROP_KINDS = (*MASK_KINDS, "content")


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


def content_scores(video: Tensor, tubelet_size: int, patch_size: int) -> Tensor:
    """How much each patch token of a clip carries: its mean absolute change from the neighbouring frames plus its
    spatial contrast (the standard deviation of its pixels), averaged over the frames of its tubelet.

    Args:
        video: float ``[B, T, C, H, W]`` with ``T`` a multiple of ``tubelet_size`` (the tower's filled clip); H and W
            beyond a multiple of ``patch_size`` are ignored, as the patch embedding ignores them.
        tubelet_size: frames per time step Ts.
        patch_size: patch side P.

    Returns:
        float ``[B, T / Ts, N]``, N patches per step in the patch embedding's row-major order. A clip of one frame
        is scored by contrast alone.
    """
    b, t, _, h, w = video.shape
    p = patch_size
    x = video[..., : h // p * p, : w // p * p].float()

    def per_patch(frames: Tensor) -> Tensor:  # [B, F, C, H, W] -> patch means [B, F, C, gh, gw]
        pooled = F.avg_pool2d(rearrange(frames, "b f c h w -> (b f) c h w"), p)
        return rearrange(pooled, "(b f) c gh gw -> b f c gh gw", b=b)

    mean = per_patch(x)
    var = (per_patch(x * x) - mean * mean).clamp(min=0)
    score = reduce(var.sqrt(), "b t c gh gw -> b t (gh gw)", "mean")  # spatial contrast [B, T, N]
    if t > 1:
        step = reduce(per_patch((x[:, 1:] - x[:, :-1]).abs()), "b t c gh gw -> b t (gh gw)", "mean")  # f-1 -> f
        zero = torch.zeros_like(step[:, :1])
        before, after = torch.cat([zero, step], 1), torch.cat([step, zero], 1)
        sides = torch.full((t, 1), 2.0, device=video.device)
        sides[0] = sides[-1] = 1.0
        score = score + (before + after) / sides
    return reduce(score, "b (t s) n -> b t n", "mean", s=tubelet_size)


def content_keep(
    scores: Tensor,
    ratio: float,
    random_share: float = 0.0,
    generator: torch.Generator | None = None,
    random_ties: bool = True,
) -> Tensor:
    """Keep the highest-scoring patch tokens of every time step (ties, such as a flat background, broken at random),
    or, with ``random_share``, that share of the kept tokens drawn at random from the rest.

    Args:
        scores: float ``[B, T', N]`` (:func:`content_scores`).
        ratio: fraction of each step's tokens to drop, in ``[0, 1)``.
        random_share: fraction of the K kept tokens drawn uniformly from those outside the top ones, in ``[0, 1]``
            (0: the top K by score; 1: a random mask). Mixing keeps the object in every step while the model still
            sees the background it meets with every token at evaluation.
        generator: random generator for the ties and the random share (None: the global one of the scores' device).
        random_ties: False breaks ties by position (the first patches in row-major order win) and draws nothing, so
            a clip's selection depends on its pixels alone: evaluation (``token_drop.at_eval``). Needs
            ``random_share`` 0.

    Returns:
        long ``[B, T', K]`` with ``K = num_visible(N, ratio)``, ascending within each step.
    """
    if not 0.0 <= random_share <= 1.0:
        raise ConfigError(f"content keep: random_share must lie in [0, 1], got {random_share}")
    k = num_visible(scores.shape[-1], ratio)
    if not random_ties:
        if random_share:
            raise ConfigError("content keep: random_share must be 0 without random_ties")
        return scores.argsort(dim=-1, descending=True, stable=True)[..., :k].sort(dim=-1).values
    scale = scores.abs().amax().clamp(min=1.0)
    jitter = torch.rand(scores.shape, device=scores.device, generator=generator) * (scale * 1e-6)
    top = k - int(round(k * random_share))
    if top == k:
        return (scores + jitter).topk(k, dim=-1).indices.sort(dim=-1).values
    ranked = (scores + jitter).argsort(dim=-1, descending=True)  # [B, T', N]
    rest = ranked[..., top:]
    draw = torch.rand(rest.shape, device=scores.device, generator=generator).argsort(dim=-1)[..., : k - top]
    keep = torch.cat([ranked[..., :top], rest.gather(-1, draw)], dim=-1)
    return keep.sort(dim=-1).values


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
    maskable = attention_mask.to(torch.bool) & ~torch.isin(input_ids, device_tensor(special_ids, dev, torch.long))
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
    "DROP_KINDS",
    "content_scores",
    "content_keep",
    "num_visible",
    "make_keep",
    "full_keep",
    "gather_tokens",
    "visible_mask",
    "hidden_positions",
    "scatter_tokens",
]
