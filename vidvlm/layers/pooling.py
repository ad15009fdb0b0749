"""Spatiotemporal token poolers: ``[B, T, N, D]`` vision tokens -> ``[B, M, D]`` tokens for a head or a language model.

Contract shared by every pooler:

* Poolers receive **all** tokens of each frame, prefix tokens (class / register tokens) first, as the vision tower
  returns them. ``num_prefix_tokens`` says how many there are; spatial poolers drop them (see
  :func:`split_prefix_tokens`) and read the remaining ``N - P`` tokens as an ``h x w`` patch grid (``grid``, or
  square by default). A tower's per-frame embeddings ``[B, T, D]`` can be pooled as ``[B, T, 1, D]``.
* ``frame_mask [B, T]`` (``True`` = real frame) is honoured everywhere: padded frames never change the output.
  Poolers whose M grows with T (one group of tokens per frame) return zeros in the slots of padded frames, and
  :meth:`Pooler.output_mask` says which of the M tokens are real.
* ``num_output_tokens(T, N)`` gives M for an unpadded clip; every pooler's docstring states its ``T = 1`` (image)
  behaviour.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, reduce, repeat
from torch import Tensor, nn

from vidvlm.devices import device_tensor, to_device
from vidvlm.errors import ConfigError, VidVLMError
from vidvlm.layers.attention import AttnMask
from vidvlm.layers.transformer import TransformerBlock


def split_prefix_tokens(tokens: Tensor, num_prefix_tokens: int) -> tuple[Tensor, Tensor]:
    """Split ``tokens [B, T, N, D]`` into prefix ``[B, T, P, D]`` and patch tokens ``[B, T, N - P, D]``."""
    return tokens[:, :, :num_prefix_tokens], tokens[:, :, num_prefix_tokens:]


def patch_grid(num_patches: int, grid: tuple[int, int] | list[int] | None = None) -> tuple[int, int]:
    """The ``(h, w)`` patch grid of ``num_patches`` tokens: ``grid`` if given, else the square one."""
    h, w = (math.isqrt(num_patches),) * 2 if grid is None else tuple(grid)
    if h * w != num_patches:
        raise VidVLMError(
            f"pooler grid: {num_patches} patch tokens do not form a {h}x{w} grid; set 'grid' or "
            f"'num_prefix_tokens' (class/register tokens must be dropped first)"
        )
    return h, w


def _valid(tokens: Tensor, frame_mask: Tensor | None, where: str = "tokens") -> Tensor:
    """Bool ``[B, T]`` of real frames, checked against ``tokens [B, T, N, D]``: on the tokens' device, or where the
    mask lies (``where="mask"``)."""
    if tokens.dim() != 4:
        raise VidVLMError(f"pooler: tokens must be [B, T, N, D], got {tuple(tokens.shape)}")
    if frame_mask is None:
        return torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
    if frame_mask.shape != tokens.shape[:2]:
        raise VidVLMError(
            f"pooler: frame_mask {tuple(frame_mask.shape)} does not match tokens [B, T] = {tuple(tokens.shape[:2])}"
        )
    return frame_mask.bool() if where == "mask" else to_device(frame_mask, tokens.device, torch.bool)


def _real_frame_groups(tokens: Tensor, frame_mask: Tensor | None) -> list[tuple[Tensor, Tensor]] | None:
    """The clips of ``tokens [B, T, N, D]`` grouped by their number of real frames, for poolers whose output
    depends on it: None when every frame is real (no mask), else ``(rows [G], frames [G, count])`` index pairs on
    the tokens' device, one per count (clips with no real frame are left out). The mask is listed on the host: one
    given there costs the accelerator nothing, one on the device one read."""
    real = _valid(tokens, frame_mask, where="mask")
    if frame_mask is None:
        return None
    frames = [[t for t, r in enumerate(row) if r] for row in real.tolist()]
    groups = []
    for count in sorted({len(f) for f in frames} - {0}):
        rows = [i for i, f in enumerate(frames) if len(f) == count]
        groups.append((device_tensor(rows, tokens.device), device_tensor([frames[i] for i in rows], tokens.device)))
    return groups


def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over dim 1 of the rows ``mask`` keeps: ``x [B, S, ...]``, ``mask`` bool ``[B, S]`` or None (all kept)
    -> ``[B, ...]``; a row with nothing kept gives zeros."""
    if mask is None:
        return x.mean(1)
    w = mask.to(x.dtype).reshape(*mask.shape, *([1] * (x.dim() - 2)))
    return (x * w).sum(1) / w.sum(1).clamp(min=1)


class Pooler(nn.Module):
    """Base class: ``forward(tokens [B, T, N, D], frame_mask [B, T] | None) -> [B, M, D]``."""

    num_prefix_tokens: int = 0
    # forward lists each clip's real frames on the host (its output layout depends on them): a caller that has the
    # mask there (the front-end, from a trainer's batch) passes that copy, which costs the accelerator no read
    lists_frames: bool = False

    def num_output_tokens(self, num_frames: int, num_tokens: int) -> int:
        """M for an unpadded clip of ``num_frames`` frames of ``num_tokens`` tokens (prefix included)."""
        raise NotImplementedError

    def output_mask(self, frame_mask: Tensor, num_tokens: int) -> Tensor:
        """Bool ``[B, M]``: which output tokens are real, given ``frame_mask [B, T]``. Default: all of them."""
        m = self.num_output_tokens(frame_mask.shape[1], num_tokens)
        return torch.ones(frame_mask.shape[0], m, dtype=torch.bool, device=frame_mask.device)

    def token_steps(self, num_frames: int, num_tokens: int) -> Tensor:
        """Long ``[M]``: the input time step each output token comes from (its first, when it spans several), or
        -1 for a token that mixes every time step. Default: -1 for all (the pooler mixes time)."""
        return torch.full((self.num_output_tokens(num_frames, num_tokens),), -1, dtype=torch.long)


def _frame_features(tokens: Tensor, token: str, num_prefix_tokens: int) -> Tensor:
    """One embedding per frame ``[B, T, D]``: the first (class) token, or the mean of the patch tokens."""
    if token == "first":
        return tokens[:, :, 0]
    if token == "mean":
        return reduce(tokens[:, :, num_prefix_tokens:], "b t n d -> b t d", "mean")
    raise ConfigError(f"pooler.params.token: {token!r} is not 'first' or 'mean'")


class MeanPooler(Pooler):
    """CLIP4Clip meanP: the mean over real frames of one embedding per frame. M = 1.

    ``token="first"`` takes each frame's first token (the class token, or the only token of ``[B, T, 1, D]``);
    ``"mean"`` averages the patch tokens. At T = 1 the output is that frame's embedding.
    """

    def __init__(self, dim: int, token: str = "first", num_prefix_tokens: int = 0) -> None:
        super().__init__()
        self.token, self.num_prefix_tokens = token, num_prefix_tokens

    def num_output_tokens(self, num_frames: int, num_tokens: int) -> int:
        return 1

    def forward(self, tokens: Tensor, frame_mask: Tensor | None = None) -> Tensor:
        valid = _valid(tokens, frame_mask)
        return masked_mean(_frame_features(tokens, self.token, self.num_prefix_tokens), valid)[:, None]


class SpatioTemporalMeanPooler(Pooler):
    """Video-ChatGPT: T per-frame spatial means, then ``N - P`` per-patch temporal means. M = T + N - P.

    At T = 1 the T part is the mean patch token and the spatial part is the frame's patch tokens themselves.
    Padded frames give zero tokens in the first part (see :meth:`output_mask`).
    """

    def __init__(self, dim: int, num_prefix_tokens: int = 0) -> None:
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens

    def num_output_tokens(self, num_frames: int, num_tokens: int) -> int:
        return num_frames + num_tokens - self.num_prefix_tokens

    def output_mask(self, frame_mask: Tensor, num_tokens: int) -> Tensor:
        rest = torch.ones(
            frame_mask.shape[0], num_tokens - self.num_prefix_tokens, dtype=torch.bool, device=frame_mask.device
        )
        return torch.cat([frame_mask.bool(), rest], dim=1)

    def token_steps(self, num_frames: int, num_tokens: int) -> Tensor:
        spatial = torch.full((num_tokens - self.num_prefix_tokens,), -1, dtype=torch.long)
        return torch.cat([torch.arange(num_frames), spatial])

    def forward(self, tokens: Tensor, frame_mask: Tensor | None = None) -> Tensor:
        valid = _valid(tokens, frame_mask)
        _, patches = split_prefix_tokens(tokens, self.num_prefix_tokens)
        per_frame = reduce(patches, "b t n d -> b t d", "mean") * valid[..., None]
        return torch.cat([per_frame, masked_mean(patches, valid)], dim=1)


class Adaptive3DPooler(Pooler):
    """PLLaVA: adaptive 3D average pooling of the patch tokens to a ``(t, h, w)`` grid. M = t * h * w.

    Each clip is pooled over its own real frames. At T = 1 (or any T < t) adaptive pooling repeats frames, so the t
    temporal slices of an image are equal; prefix tokens are dropped.
    """

    lists_frames = True

    def __init__(
        self,
        dim: int,
        output_size: tuple[int, int, int] | list[int] = (4, 12, 12),
        num_prefix_tokens: int = 0,
        grid: tuple[int, int] | list[int] | None = None,
    ) -> None:
        super().__init__()
        if len(output_size) != 3:
            raise ConfigError(f"pooler.params.output_size: expected (t, h, w), got {output_size!r}")
        self.output_size = tuple(int(s) for s in output_size)
        self.num_prefix_tokens, self.grid = num_prefix_tokens, grid

    def num_output_tokens(self, num_frames: int, num_tokens: int) -> int:
        return math.prod(self.output_size)

    def token_steps(self, num_frames: int, num_tokens: int) -> Tensor:
        t, h, w = self.output_size
        starts = (torch.arange(t) * num_frames) // t  # adaptive pooling's bin i starts at floor(i * T / t)
        return repeat(starts, "t -> (t m)", m=h * w)

    def forward(self, tokens: Tensor, frame_mask: Tensor | None = None) -> Tensor:
        """``tokens [B, T, N, D]`` -> ``[B, t*h*w, D]``. Without a mask the batch pools in one call. With one, the
        pooling grid depends on each clip's real frames, which are therefore listed on the host: a mask given there
        costs the accelerator nothing, one on the device one read."""
        groups = _real_frame_groups(tokens, frame_mask)
        _, patches = split_prefix_tokens(tokens, self.num_prefix_tokens)
        h, w = patch_grid(patches.shape[2], self.grid)
        if groups is None:
            return self._pool(patches, h, w)
        out = tokens.new_zeros(tokens.shape[0], math.prod(self.output_size), tokens.shape[-1])
        for rows, frames in groups:
            out[rows] = self._pool(patches[rearrange(rows, "g -> g 1"), frames], h, w)
        return out

    def _pool(self, patches: Tensor, h: int, w: int) -> Tensor:
        """``[G, T, h*w, D]`` (every frame real) -> ``[G, t*h*w, D]``."""
        grid = rearrange(patches, "g t (h w) d -> g d t h w", h=h, w=w)
        return rearrange(F.adaptive_avg_pool3d(grid, self.output_size), "g d t h w -> g (t h w) d")


class Spatial2DPooler(Pooler):
    """LLaVA-OneVision: each frame's patch grid pooled to ``k x k`` by ``avg``, ``max`` or ``bilinear``. M = T*k*k.

    ``keep_prefix=True`` puts each frame's ``P`` prefix tokens (the class token a contrastive tower trains) before
    its pooled grid: M = T*(P + k*k). At T = 1 this is the image's pooled grid (after its prefix tokens). Padded
    frames give zero tokens (see :meth:`output_mask`).
    """

    def __init__(
        self,
        dim: int,
        size: int | tuple[int, int] | list[int] = 2,
        mode: str = "avg",
        num_prefix_tokens: int = 0,
        grid: tuple[int, int] | list[int] | None = None,
        keep_prefix: bool = False,
    ) -> None:
        super().__init__()
        if mode not in ("avg", "max", "bilinear"):
            raise ConfigError(f"pooler.params.mode: {mode!r} is not 'avg', 'max' or 'bilinear'")
        if keep_prefix and num_prefix_tokens < 1:
            raise ConfigError("pooler.params.keep_prefix: needs num_prefix_tokens >= 1 (the tokens to keep)")
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.mode, self.num_prefix_tokens, self.grid = mode, num_prefix_tokens, grid
        self.keep_prefix = keep_prefix

    @property
    def _per_frame(self) -> int:
        return self.size[0] * self.size[1] + (self.num_prefix_tokens if self.keep_prefix else 0)

    def num_output_tokens(self, num_frames: int, num_tokens: int) -> int:
        return num_frames * self._per_frame

    def output_mask(self, frame_mask: Tensor, num_tokens: int) -> Tensor:
        return repeat(frame_mask.bool(), "b t -> b (t m)", m=self._per_frame)

    def token_steps(self, num_frames: int, num_tokens: int) -> Tensor:
        return repeat(torch.arange(num_frames), "t -> (t m)", m=self._per_frame)

    def forward(self, tokens: Tensor, frame_mask: Tensor | None = None) -> Tensor:
        valid = _valid(tokens, frame_mask)
        prefix, patches = split_prefix_tokens(tokens, self.num_prefix_tokens)
        h, w = patch_grid(patches.shape[2], self.grid)
        x = rearrange(patches, "b t (h w) d -> (b t) d h w", h=h, w=w)
        if self.mode == "avg":
            x = F.adaptive_avg_pool2d(x, self.size)
        elif self.mode == "max":
            x = F.adaptive_max_pool2d(x, self.size)
        else:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        x = rearrange(x, "(b t) d kh kw -> b t (kh kw) d", b=tokens.shape[0])
        if self.keep_prefix:
            x = torch.cat([prefix, x], dim=2)  # [B, T, P + k*k, D]
        return rearrange(x * valid[:, :, None, None], "b t m d -> b (t m) d")


class SlowFastPooler(Pooler):
    """SlowFast (SlowFast-LLaVA, LLaVA-Video): a few *slow* time steps keep a fine grid, the others are pooled hard.

    Steps ``0, k, 2k, ...`` (``k = slow_every``) are slow: their patch grid is pooled to ``slow_size`` (None: the
    whole grid, unpooled); every other step is pooled to ``fast_size``, as :class:`Spatial2DPooler` does (``mode``,
    ``grid`` and ``keep_prefix`` as there). Tokens stay in time order, one block per step, so an LM can tell which
    frame each comes from (:meth:`token_steps`). With S = ceil(T / k) slow steps, M = S * (P' + s) + (T - S) * (P' + f)
    (s, f: the slow and fast cells, P': the kept prefix tokens). A fine grid on every step keeps which attribute
    belongs to which object apart in a scene of several, but multiplies the tokens; a few fine steps keep it for a
    fraction of them. Slow steps are fixed by their index, not by a clip's length, so padding a clip changes none of
    its real tokens. At T = 1 the image is a slow step: its fine grid.
    """

    def __init__(
        self,
        dim: int,
        fast_size: int | tuple[int, int] | list[int] = 2,
        slow_size: int | tuple[int, int] | list[int] | None = None,
        slow_every: int = 4,
        mode: str = "avg",
        num_prefix_tokens: int = 0,
        grid: tuple[int, int] | list[int] | None = None,
        keep_prefix: bool = False,
    ) -> None:
        super().__init__()
        if int(slow_every) < 1:
            raise ConfigError(f"pooler.params.slow_every: must be >= 1 (every k-th step is slow), got {slow_every}")
        self.slow_every, self.num_prefix_tokens, self.grid = int(slow_every), num_prefix_tokens, grid
        self.kept = num_prefix_tokens if keep_prefix else 0  # prefix tokens each step's block starts with
        self.fast = Spatial2DPooler(dim, fast_size, mode, num_prefix_tokens, grid, keep_prefix)
        self.slow = (
            None if slow_size is None else Spatial2DPooler(dim, slow_size, mode, num_prefix_tokens, grid, keep_prefix)
        )

    def _is_slow(self, step: int) -> bool:
        return step % self.slow_every == 0

    def _per_step(self, num_frames: int, num_tokens: int) -> list[int]:
        """Tokens of each step's block."""
        slow = self.kept + num_tokens - self.num_prefix_tokens if self.slow is None else self.slow._per_frame
        return [slow if self._is_slow(t) else self.fast._per_frame for t in range(num_frames)]

    def num_output_tokens(self, num_frames: int, num_tokens: int) -> int:
        return sum(self._per_step(num_frames, num_tokens))

    def output_mask(self, frame_mask: Tensor, num_tokens: int) -> Tensor:
        sizes = self._per_step(frame_mask.shape[1], num_tokens)
        # the output size given: torch need not sum the sizes on the device (a read back)
        return torch.repeat_interleave(
            frame_mask.bool(), device_tensor(sizes, frame_mask.device), dim=1, output_size=sum(sizes)
        )

    def token_steps(self, num_frames: int, num_tokens: int) -> Tensor:
        return torch.repeat_interleave(torch.arange(num_frames), torch.tensor(self._per_step(num_frames, num_tokens)))

    def forward(self, tokens: Tensor, frame_mask: Tensor | None = None) -> Tensor:
        valid = _valid(tokens, frame_mask)
        steps = range(tokens.shape[1])
        slow_at = [t for t in steps if self._is_slow(t)]  # each step is pooled once, by its own pooler
        fast_at = [t for t in steps if not self._is_slow(t)]
        slow_tokens, slow_valid = tokens[:, slow_at], valid[:, slow_at]
        if self.slow is None:  # the whole grid: each step's tokens as they are (prefix kept or dropped)
            patch_grid(tokens.shape[2] - self.num_prefix_tokens, self.grid)  # checks the grid as the fast pooler does
            slow = slow_tokens[:, :, self.num_prefix_tokens - self.kept :] * slow_valid[:, :, None, None]
        else:
            slow = rearrange(self.slow(slow_tokens, slow_valid), "b (t m) d -> b t m d", t=len(slow_at))
        fast = ()
        if fast_at:
            fast = rearrange(self.fast(tokens[:, fast_at], valid[:, fast_at]), "b (t m) d -> t b m d", t=len(fast_at))
        slow_blocks, fast_blocks = iter(rearrange(slow, "b t m d -> t b m d")), iter(fast)
        return torch.cat([next(slow_blocks) if self._is_slow(t) else next(fast_blocks) for t in steps], dim=1)


class ResamplerPooler(Pooler):
    """Learned queries that cross-attend to every real token of the clip (Perceiver resampler / Q-Former style).

    Each block is a pre-norm :class:`TransformerBlock` with self-attention among the queries and cross-attention to
    the tokens (plus a learned per-frame time embedding, so frame order is visible). M = ``num_queries`` for any T;
    at T = 1 the queries read the image's tokens. Padded frames are masked keys.
    """

    def __init__(
        self,
        dim: int,
        num_queries: int = 32,
        depth: int = 2,
        num_heads: int = 8,
        max_frames: int = 64,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_queries, dim) * 0.02)
        self.time_embed = nn.Parameter(torch.randn(max_frames, dim) * 0.02)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, num_heads, mlp_ratio, cross_attention=True) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def num_output_tokens(self, num_frames: int, num_tokens: int) -> int:
        return self.queries.shape[0]

    def forward(self, tokens: Tensor, frame_mask: Tensor | None = None) -> Tensor:
        valid = _valid(tokens, frame_mask)
        b, t, n, _ = tokens.shape
        if t > self.time_embed.shape[0]:
            raise VidVLMError(f"resampler pooler: {t} frames exceed max_frames={self.time_embed.shape[0]}")
        context = rearrange(tokens + self.time_embed[:t, None], "b t n d -> b (t n) d")
        keys = AttnMask(key_padding=repeat(valid, "b t -> b (t n)", n=n))
        x = repeat(self.queries, "m d -> b m d", b=b)
        for block in self.blocks:
            x = block(x, context=context, context_mask=keys)
        return self.norm(x)


class TemporalTransformerPooler(Pooler):
    """CLIP4Clip seqTransf: per-frame embeddings + time embedding through a small transformer over the real frames,
    added back to the embeddings through a zero-initialised projection, then meanP. M = 1.

    The zero init makes an untrained pooler exactly :class:`MeanPooler`; at T = 1 the output is the frame's
    embedding plus the transformer's correction.
    """

    def __init__(
        self,
        dim: int,
        depth: int = 1,
        num_heads: int = 8,
        max_frames: int = 64,
        token: str = "first",
        num_prefix_tokens: int = 0,
    ) -> None:
        super().__init__()
        self.token, self.num_prefix_tokens = token, num_prefix_tokens
        self.time_embed = nn.Parameter(torch.randn(max_frames, dim) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(dim, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def num_output_tokens(self, num_frames: int, num_tokens: int) -> int:
        return 1

    def forward(self, tokens: Tensor, frame_mask: Tensor | None = None) -> Tensor:
        valid = _valid(tokens, frame_mask)
        t = tokens.shape[1]
        if t > self.time_embed.shape[0]:
            raise VidVLMError(f"seqTransf pooler: {t} frames exceed max_frames={self.time_embed.shape[0]}")
        frames = _frame_features(tokens, self.token, self.num_prefix_tokens)  # [B, T, D]
        x = frames + self.time_embed[:t]
        for block in self.blocks:
            x = block(x, AttnMask(key_padding=valid))
        return masked_mean(frames + self.proj(self.norm(x)), valid)[:, None]


def _tome_step(x: Tensor, size: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """One bipartite soft-matching step: merge the ``r`` tokens of set A (even positions) most similar to a token
    of set B (odd positions) into it, by size-weighted average. ``x [G, n, D]``, ``size [G, n, 1]`` -> ``n - r``."""
    a, b = x[:, ::2], x[:, 1::2]
    sa, sb = size[:, ::2], size[:, 1::2]
    sim = F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).transpose(1, 2)  # cosine [G, na, nb]
    best, dst = sim.max(dim=-1)
    order = best.argsort(dim=-1, descending=True)
    src, keep = order[:, :r], order[:, r:].sort(dim=-1).values  # kept A tokens stay in their original order
    dst = dst.gather(1, src)
    d = x.shape[-1]
    pick = lambda t, idx: t.gather(1, repeat(idx, "g r -> g r c", c=t.shape[-1]))
    b_sum = (b * sb).scatter_add(1, repeat(dst, "g r -> g r c", c=d), pick(a * sa, src))
    sb = sb.scatter_add(1, dst[..., None], pick(sa, src))
    sa = pick(sa, keep)
    return torch.cat([pick(a, keep), b_sum / sb], dim=1), torch.cat([sa, sb], dim=1)


def _tome(x: Tensor, r: int, steps: int) -> Tensor:
    size = x.new_ones(*x.shape[:2], 1)
    for _ in range(steps):
        x, size = _tome_step(x, size, min(r, x.shape[1] // 2))
    return x


def _tome_count(n: int, r: int, steps: int) -> int:
    for _ in range(steps):
        n -= min(r, n // 2)
    return n


class ToMePooler(Pooler):
    """Token merging (ToMe): ``steps`` rounds of bipartite soft matching, each merging ``r`` tokens (at most half)
    by size-weighted averaging, on token cosine similarity. Prefix tokens are kept apart and never merged.

    ``scope="frame"`` merges within each frame (M = T * (P + merged patches); padded frames give zeros, see
    :meth:`output_mask`). ``scope="video"`` merges across all real frames of a clip (M = T * P + merged T * (N - P));
    a clip with fewer real frames yields fewer tokens, zero-padded at the end. At T = 1 both merge the image's patches.
    """

    def __init__(self, dim: int, r: int = 16, steps: int = 1, scope: str = "frame", num_prefix_tokens: int = 0) -> None:
        super().__init__()
        if scope not in ("frame", "video"):
            raise ConfigError(f"pooler.params.scope: {scope!r} is not 'frame' or 'video'")
        self.r, self.steps, self.scope, self.num_prefix_tokens = r, steps, scope, num_prefix_tokens
        self.lists_frames = scope == "video"

    def num_output_tokens(self, num_frames: int, num_tokens: int) -> int:
        p = self.num_prefix_tokens
        if self.scope == "frame":
            return num_frames * (p + _tome_count(num_tokens - p, self.r, self.steps))
        return num_frames * p + _tome_count(num_frames * (num_tokens - p), self.r, self.steps)

    def output_mask(self, frame_mask: Tensor, num_tokens: int) -> Tensor:
        if self.scope == "frame":
            return repeat(frame_mask.bool(), "b t -> b (t m)", m=self.num_output_tokens(1, num_tokens))
        counts = [self.num_output_tokens(int(c), num_tokens) for c in frame_mask.sum(1).tolist()]
        m = self.num_output_tokens(frame_mask.shape[1], num_tokens)
        return torch.arange(m, device=frame_mask.device)[None] < device_tensor(counts, frame_mask.device)[:, None]

    def token_steps(self, num_frames: int, num_tokens: int) -> Tensor:
        if self.scope == "frame":
            return repeat(torch.arange(num_frames), "t -> (t m)", m=self.num_output_tokens(1, num_tokens))
        return super().token_steps(num_frames, num_tokens)

    def forward(self, tokens: Tensor, frame_mask: Tensor | None = None) -> Tensor:
        prefix, patches = split_prefix_tokens(tokens, self.num_prefix_tokens)
        b, t = tokens.shape[:2]
        if self.scope == "frame":
            valid = _valid(tokens, frame_mask)
            merged = rearrange(
                _tome(rearrange(patches, "b t n d -> (b t) n d"), self.r, self.steps), "(b t) m d -> b t m d", b=b
            )
            out = torch.cat([prefix, merged], dim=2) * valid[:, :, None, None]
            return rearrange(out, "b t m d -> b (t m) d")
        groups = _real_frame_groups(tokens, frame_mask)
        if groups is None:
            return self._merge_clips(prefix, patches)
        out = tokens.new_zeros(b, self.num_output_tokens(t, tokens.shape[2]), tokens.shape[-1])
        for rows, frames in groups:
            at = (rearrange(rows, "g -> g 1"), frames)
            clips = self._merge_clips(prefix[at], patches[at])
            out[rows, : clips.shape[1]] = clips
        return out

    def _merge_clips(self, prefix: Tensor, patches: Tensor) -> Tensor:
        """Whole clips ``[G, T, P, D]`` and ``[G, T, N - P, D]`` (every frame real) -> ``[G, T*P + merged, D]``."""
        merged = _tome(rearrange(patches, "g t n d -> g (t n) d"), self.r, self.steps)
        return torch.cat([rearrange(prefix, "g t p d -> g (t p) d"), merged], dim=1)


POOLERS: dict[str, type[Pooler]] = {
    "meanP": MeanPooler,
    "video_chatgpt": SpatioTemporalMeanPooler,
    "adaptive3d": Adaptive3DPooler,
    "spatial2d": Spatial2DPooler,
    "slowfast": SlowFastPooler,
    "resampler": ResamplerPooler,
    "seqTransf": TemporalTransformerPooler,
    "tome": ToMePooler,
}


@dataclass
class PoolerConfig:
    """Which pooler and its parameters (the keyword arguments of its class, ``dim`` excepted).

    Example: ``PoolerConfig("spatial2d", {"size": 3, "mode": "bilinear", "num_prefix_tokens": 1})``.
    """

    name: str = "meanP"
    params: dict[str, Any] = field(default_factory=dict)


def build_pooler(cfg: PoolerConfig, dim: int) -> Pooler:
    """Build the pooler ``cfg.name`` for token width ``dim``.

    Raises:
        ConfigError: unknown name or parameter (the message names ``pooler.name`` / ``pooler.params.<key>``).
    """
    if cfg.name not in POOLERS:
        raise ConfigError(f"pooler.name: unknown pooler {cfg.name!r}; expected one of {sorted(POOLERS)}")
    cls = POOLERS[cfg.name]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "dim"}
    unknown = sorted(set(cfg.params) - accepted)
    if unknown:
        raise ConfigError(f"pooler.params: unknown key(s) {unknown} for pooler {cfg.name!r}; valid: {sorted(accepted)}")
    return cls(dim, **cfg.params)


def fit_token_budget(
    max_tokens: int,
    num_frames: int,
    tokens_per_frame: int,
    *,
    min_side: int = 1,
    prefer: str = "frames",
    extra_tokens: int = 0,
) -> tuple[int, int]:
    """Choose frames x per-frame grid side so that ``frames * side**2 + extra_tokens <= max_tokens``.

    Args:
        max_tokens: the budget of visual tokens (e.g. the LM context left for the video).
        num_frames: frames available (the most that will be used).
        tokens_per_frame: per-frame patch tokens, a square grid (``side**2``), prefix tokens excluded.
        min_side: smallest per-frame grid side allowed.
        prefer: ``"frames"`` keeps all frames and pools each frame harder first (down to ``min_side``), then drops
            frames; ``"space"`` keeps the full grid and drops frames first, then pools.
        extra_tokens: tokens per clip that do not scale with frames (e.g. Video-ChatGPT's spatial part).

    Returns:
        ``(frames, side)``: use ``frames`` frames and pool each to ``side x side`` (e.g. :class:`Spatial2DPooler`).

    Raises:
        ConfigError: the budget cannot hold one frame of ``min_side x min_side`` tokens, or bad arguments.
    """
    full = math.isqrt(tokens_per_frame)
    if full * full != tokens_per_frame or num_frames < 1 or not 1 <= min_side <= full:
        raise ConfigError(
            f"fit_token_budget: need a square tokens_per_frame ({tokens_per_frame}), num_frames >= 1 "
            f"({num_frames}) and 1 <= min_side <= {full} ({min_side})"
        )
    budget = max_tokens - extra_tokens
    if budget < min_side * min_side:
        raise ConfigError(
            f"max_tokens: {max_tokens} (minus {extra_tokens} fixed) cannot hold one frame of "
            f"{min_side}x{min_side} tokens"
        )
    if prefer == "frames":
        side = min(full, math.isqrt(budget // num_frames)) if budget >= num_frames else 0
        if side >= min_side:
            return num_frames, side
        return budget // (min_side * min_side), min_side
    if prefer == "space":
        for side in range(full, min_side - 1, -1):
            if budget >= side * side:
                return min(num_frames, budget // (side * side)), side
    raise ConfigError(f"fit_token_budget: prefer={prefer!r} is not 'frames' or 'space'")


__all__ = [
    "Pooler",
    "PoolerConfig",
    "build_pooler",
    "POOLERS",
    "MeanPooler",
    "SpatioTemporalMeanPooler",
    "Adaptive3DPooler",
    "Spatial2DPooler",
    "SlowFastPooler",
    "ResamplerPooler",
    "TemporalTransformerPooler",
    "ToMePooler",
    "split_prefix_tokens",
    "patch_grid",
    "fit_token_budget",
    "masked_mean",
]
