"""Pre-norm transformer blocks shared by the vision tower, the text towers and the decoders.

All attention goes through :func:`vidvlm.layers.attention.attention`, so every block gets the same kernels
(SDPA / xformers / math) and the same masks (causal, prefix-LM, key padding, packed sequences).
Parameter names follow timm (``norm1``, ``attn.qkv``, ``attn.proj``, ``ls1.gamma``, ``norm2``, ``mlp.fc1``,
``mlp.fc2``) so that converted checkpoints read naturally.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vidvlm.errors import ConfigError
from vidvlm.layers.attention import AttnMask, attention
from vidvlm.layers.kv_cache import LayerCache

ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu", "relu", "silu")


def activation(name: str) -> nn.Module:
    """Build an activation by name: ``gelu`` (exact erf), ``gelu_tanh`` (SigLIP's ``gelu_pytorch_tanh``),
    ``quick_gelu`` (OpenAI CLIP: ``x * sigmoid(1.702 x)``), ``relu``, ``silu``."""
    if name == "gelu":
        return nn.GELU()
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    if name == "quick_gelu":
        return QuickGELU()
    if name == "relu":
        return nn.ReLU()
    if name == "silu":
        return nn.SiLU()
    raise ConfigError(f"act: unknown activation {name!r}; expected one of {ACTIVATIONS}")


class QuickGELU(nn.Module):
    """The sigmoid approximation of GELU that OpenAI CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class LayerScale(nn.Module):
    """Per-channel residual scale ``gamma`` (CaiT / DINOv2 layer scale)."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """Two-layer feed-forward network ``fc2(act(fc1(x)))``.

    Args:
        dim: input and output width D.
        hidden_dim: inner width.
        act: activation name (see :func:`activation`).
        bias: whether both linears have a bias.
    """

    def __init__(self, dim: int, hidden_dim: int, act: str = "gelu", bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim, bias=bias)
        self.act = activation(act)
        self.fc2 = nn.Linear(hidden_dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., D] -> [..., D]``."""
        return self.fc2(self.act(self.fc1(x)))


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection and an output ``proj``.

    Args:
        dim: width D (a multiple of ``num_heads``).
        num_heads: number of heads H.
        qkv_bias: whether ``qkv`` has a bias (``proj`` always has one).
        qk_norm: LayerNorm each head's queries and keys over the head dimension (``q_norm``, ``k_norm``), as
            timm ViTs built with ``qk_norm=True`` do.
        norm_eps: epsilon of those norms.

    Attributes:
        backend: attention backend for this module (None = the global default of ``attention()``).
    """

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool = True, qk_norm: bool = False, norm_eps: float = 1e-6
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"num_heads: width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.backend: str | None = None

    def forward(self, x: torch.Tensor, mask: AttnMask | None = None, cache: LayerCache | None = None) -> torch.Tensor:
        """``x [B, N, D]`` -> ``[B, N, D]``. Without a cache the mask is over the N keys; with one, the new keys and
        values are appended to it and the mask is over all ``S + N`` of them."""
        if x.shape[1] == 1 and cache is None:
            # One key: its softmax weight is exactly 1, so attention returns its value (a masked-out key gives
            # zeros, as attention() does). Skipping q, k and the kernel matters for temporal attention at T = 1.
            d = x.shape[-1]
            bias = None if self.qkv.bias is None else self.qkv.bias[2 * d :]
            v = F.linear(x, self.qkv.weight[2 * d :], bias)
            if mask is not None and mask.key_padding is not None:
                v = v * rearrange(mask.key_padding, "b n -> b n 1").to(v.dtype)
            return self.proj(v)
        q, k, v = rearrange(self.qkv(x), "b n (three h e) -> three b h n e", three=3, h=self.num_heads)
        q, k = self.q_norm(q), self.k_norm(k)
        if cache is not None:
            k, v = cache.append(k, v)
        out = attention(q, k, v, mask, backend=self.backend, scale=self.head_dim**-0.5)
        return self.proj(rearrange(out, "b h n e -> b n (h e)"))


class CrossAttention(nn.Module):
    """Multi-head attention from queries ``x`` to a context: ``q`` from x, fused ``kv`` from the context, ``proj``.

    Args:
        dim: query width D.
        num_heads: number of heads.
        qkv_bias: whether ``q`` and ``kv`` have a bias.
        context_dim: width of the context (defaults to D).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, context_dim: int | None = None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"num_heads: width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(context_dim or dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.backend: str | None = None

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None,
        mask: AttnMask | None = None,
        cache: LayerCache | None = None,
    ) -> torch.Tensor:
        """``x [B, N, D]``, ``context [B, M, Dc]`` (mask over the M keys) -> ``[B, N, D]``. With a cache the
        context's keys and values are projected on the first call and read from the cache afterwards (``context``
        may then be None)."""
        q = rearrange(self.q(x), "b n (h e) -> b h n e", h=self.num_heads)
        if cache is not None and cache.ctx_k is not None:
            k, v = cache.ctx_k, cache.ctx_v
        else:
            if context is None:
                raise ValueError("CrossAttention needs a context until its cache holds one")
            k, v = rearrange(self.kv(context), "b m (two h e) -> two b h m e", two=2, h=self.num_heads)
            if cache is not None:
                cache.ctx_k, cache.ctx_v = k, v
        out = attention(q, k, v, mask, backend=self.backend, scale=self.head_dim**-0.5)
        return self.proj(rearrange(out, "b h n e -> b n (h e)"))


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + ls1(attn(norm1(x)))``, optionally ``x + ls_c(cross_attn(norm_cross(x), context))``,
    then ``x + ls2(mlp(norm2(x)))``.

    Args:
        dim: width D.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / D (rounded down to an integer width).
        qkv_bias: bias on the query/key/value projections.
        cross_attention: add a cross-attention sub-block (``cross_attn`` with ``q``, ``kv``, ``proj``).
        norm_eps: LayerNorm epsilon.
        act: MLP activation name (``gelu``, ``gelu_tanh``, ``quick_gelu``, ...).
        ls_init: initial layer-scale value; None disables layer scale.
        context_dim: context width for cross-attention (defaults to D).
        mlp_dim: explicit MLP hidden width (overrides ``mlp_ratio``; converted checkpoints use it).
        qk_norm: LayerNorm on each head's queries and keys in self-attention.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        cross_attention: bool = False,
        norm_eps: float = 1e-6,
        act: str = "gelu",
        ls_init: float | None = None,
        context_dim: int | None = None,
        mlp_dim: int | None = None,
        qk_norm: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = SelfAttention(dim, num_heads, qkv_bias, qk_norm, norm_eps)
        self.ls1 = LayerScale(dim, ls_init) if ls_init is not None else nn.Identity()
        self.cross_attn: CrossAttention | None = None
        if cross_attention:
            self.norm_cross = nn.LayerNorm(dim, eps=norm_eps)
            self.cross_attn = CrossAttention(dim, num_heads, qkv_bias, context_dim)
            self.ls_cross = LayerScale(dim, ls_init) if ls_init is not None else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, mlp_dim or int(math.floor(dim * mlp_ratio)), act)
        self.ls2 = LayerScale(dim, ls_init) if ls_init is not None else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        mask: AttnMask | None = None,
        context: torch.Tensor | None = None,
        context_mask: AttnMask | None = None,
        cache: LayerCache | None = None,
    ) -> torch.Tensor:
        """Apply the block.

        Args:
            x: tokens ``[B, N, D]``.
            mask: self-attention mask over the N tokens (causal / prefix / key padding / packed); with a cache, over
                the cached keys and the N new ones.
            context: ``[B, M, Dc]`` for cross-attention (required iff the block was built with it, except once a
                cache holds its keys and values).
            context_mask: mask over the M context keys.
            cache: this block's :class:`~vidvlm.layers.kv_cache.LayerCache` for incremental decoding (None: no cache).

        Returns:
            ``[B, N, D]``.
        """
        x = x + self.ls1(self.attn(self.norm1(x), mask, cache))
        if self.cross_attn is not None:
            if context is None and (cache is None or cache.ctx_k is None):
                raise ValueError("TransformerBlock built with cross_attention=True needs a context tensor")
            x = x + self.ls_cross(self.cross_attn(self.norm_cross(x), context, context_mask, cache))
        elif context is not None:
            raise ValueError("TransformerBlock got a context but was built without cross_attention")
        return x + self.ls2(self.mlp(self.norm2(x)))

    def zero_init_residual(self) -> None:
        """Zero the output projections so that the block starts as the identity (used for new temporal blocks)."""
        for lin in (self.attn.proj, self.mlp.fc2):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        if self.cross_attn is not None:
            nn.init.zeros_(self.cross_attn.proj.weight)
            nn.init.zeros_(self.cross_attn.proj.bias)


class TemporalAttention(nn.Module):
    """Pre-norm self-attention residual ``x + attn(norm(x))`` over time (the temporal half of a TimeSformer
    ``divided`` block); its ``attn.proj`` starts at zero, so a fresh one is the identity."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, norm_eps: float, qk_norm: bool = False) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = SelfAttention(dim, num_heads, qkv_bias, qk_norm, norm_eps)
        nn.init.zeros_(self.attn.proj.weight)
        nn.init.zeros_(self.attn.proj.bias)

    def forward(self, x: torch.Tensor, mask: AttnMask | None) -> torch.Tensor:
        """``x [B*N, T', D]`` (mask over frames) -> ``[B*N, T', D]``."""
        return x + self.attn(self.norm(x), mask)


COMPILE_REGIONS = (TransformerBlock, TemporalAttention)


def compile_blocks(model: nn.Module, recompile_limit: int = 64, **options: Any) -> int:
    """Compile every transformer block of ``model`` in place with ``torch.compile`` ("regional" compilation).

    Each :class:`TransformerBlock` and :class:`TemporalAttention` is compiled with ``nn.Module.compile(**options)``.
    Unlike wrapping the whole model in ``torch.compile``, this keeps every parameter name and state-dict key (no
    ``_orig_mod.`` prefix), so checkpoints, optimiser groups, freezing and gradient checkpointing work unchanged;
    and blocks of one shape reuse one compiled graph, so compiling costs about one block, not the whole depth.
    Inductor fuses the LayerNorms, bias adds, activation and residual adds around the matmuls and attention.
    Compilation happens on the first call (on CPU it needs a C++ compiler).

    All blocks share one ``forward``, and each kind of call (self-attention only, with key padding, causal, with
    cross-attention, with or without gradients, ...) is one compiled variant of it. A captioner in training needs
    more than dynamo's default of 8 variants per function, after which it silently runs the rest eagerly, so this
    raises that process-wide limit to at least ``recompile_limit``.

    Args:
        model: any module; its blocks are found by type.
        recompile_limit: the least ``torch._dynamo.config.recompile_limit`` to set.
        **options: passed to ``torch.compile`` (``mode``, ``dynamic``, ``backend``, ...).

    Returns:
        The number of blocks compiled.
    """
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, recompile_limit)
    blocks = [m for m in model.modules() if isinstance(m, COMPILE_REGIONS)]
    for blk in blocks:
        blk.compile(**options)
    return len(blocks)


__all__ = [
    "Mlp",
    "SelfAttention",
    "CrossAttention",
    "TransformerBlock",
    "TemporalAttention",
    "LayerScale",
    "QuickGELU",
    "activation",
    "compile_blocks",
]
