"""One attention function for every model, with interchangeable kernels and one mask type.

``attention(q, k, v, mask)`` takes ``[B, H, N, Dh]`` tensors on every backend and converts layouts inside:

* ``"xformers"``: ``xformers.ops.memory_efficient_attention`` (CUDA only; layout ``[B, N, H, Dh]``). This is the
  only file in vidvlm that imports xformers, and it does so lazily, the first time the backend is asked for.
* ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention``. On CPU its kernels are flash and math only;
  a boolean mask keeps flash, but ``dropout_p > 0`` silently falls back to math (N² memory, ~9x slower).
* ``"math"``: the reference, ``softmax(Q K^T * scale + mask) V`` accumulated in float32. Quadratic memory; used to
  check the other two.
* ``"auto"``: xformers for packed clips (a block-diagonal ``seq_lens`` mask) when the tensors are on CUDA and
  xformers imports and runs (probed once per device and dtype: a wheel built for another torch imports but has no
  kernels); SDPA for everything else. Measured on an H100 (BENCHMARKS.md, "Attention backends"), SDPA's flash kernels
  were about 2x faster than xformers for unmasked and causal attention, and its broadcast boolean mask 3x faster
  and ~10x leaner than the dense bias xformers needs for prefix-LM and key padding; xformers' ``BlockDiagonalMask``
  is where it still wins, because SDPA has to loop over clip lengths.

The default backend is ``"auto"``; :func:`set_attention_backend` changes it (from a config), and the environment
variable ``VIDVLM_ATTENTION`` overrides that. A ``backend=`` argument to :func:`attention` overrides both.

Mask semantics (:class:`AttnMask`), ``True`` meaning "may attend":

* causal is aligned to the bottom right: query ``i`` of ``Nq`` sits at key position ``i + Nk - Nq`` and sees keys up
  to it (with ``Nq == Nk`` this is the usual lower triangle; with a KV cache the new queries see the whole cache).
* ``prefix_len = P`` (an int or a ``[B]`` tensor): prefix-LM. Keys ``j < P`` are visible to every query, the rest
  causally, so the first ``P`` tokens (the visual prefix) attend bidirectionally among themselves. It implies causal.
* ``key_padding [B, Nk]`` (``True`` = real key) hides padded keys.
* ``seq_lens`` (``B == 1``, ``sum(seq_lens) == Nq == Nk``): block-diagonal attention over clips packed into one
  sequence; with ``causal`` each block is causal. With ``key_padding`` padded keys are hidden inside each block.

A query row whose keys are all masked returns zeros (and zero gradient), never NaN, on every backend.
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from vidvlm.devices import device_tensor, to_device
from vidvlm.errors import ConfigError, VidVLMError

BACKENDS = ("auto", "xformers", "sdpa", "math")
ENV_VAR = "VIDVLM_ATTENTION"

# The one process-wide switch the contract asks for (like timm's set_fused_attn); everything else is per call.
_default_backend = "auto"


@dataclass
class AttnMask:
    """Which keys each query may attend to. Fields combine (logical AND); see the module docstring.

    Attributes:
        causal: Causal (bottom-right aligned) masking.
        prefix_len: Prefix-LM length ``P``, an int or a long tensor ``[B]`` (may differ per row). Implies causal.
        key_padding: Bool ``[B, Nk]``, ``True`` for real keys.
        seq_lens: Lengths of the sequences packed along N (block-diagonal attention); needs ``B == 1``.
    """

    causal: bool = False
    prefix_len: int | Tensor | None = None
    key_padding: Tensor | None = None
    seq_lens: list[int] | None = None

    @property
    def is_empty(self) -> bool:
        """True when the mask hides nothing."""
        return not self.causal and self.prefix_len is None and self.key_padding is None and self.seq_lens is None


def set_attention_backend(name: str) -> None:
    """Set the process-wide default backend (``"auto"``, ``"xformers"``, ``"sdpa"`` or ``"math"``).

    Raises:
        ConfigError: ``name`` is not a backend.
    """
    global _default_backend
    _default_backend = _check_backend(name, "set_attention_backend(name)")


def get_attention_backend() -> str:
    """The default backend in force: ``VIDVLM_ATTENTION`` if set, else the one from :func:`set_attention_backend`."""
    env = os.environ.get(ENV_VAR)
    if env:
        return _check_backend(env.strip().lower(), f"environment variable {ENV_VAR}")
    return _default_backend


def _check_backend(name: str, where: str) -> str:
    if name not in BACKENDS:
        raise ConfigError(f"{where}: unknown attention backend {name!r}; expected one of {list(BACKENDS)}")
    return name


@functools.cache
def _load_xformers() -> tuple[Any, str]:
    """Import ``xformers.ops`` once; returns ``(module or None, reason it is unusable)``."""
    try:
        import xformers.ops as xops
    except Exception as err:  # ImportError, or a broken binary raising OSError/RuntimeError at import
        return None, f"{type(err).__name__}: {err}"
    return xops, ""


def xformers_available() -> bool:
    """Whether ``xformers.ops`` imports (it may still lack kernels for a given device or dtype)."""
    return _load_xformers()[0] is not None


@functools.cache
def _xformers_probe(device: torch.device, dtype: torch.dtype) -> str:
    """Run one tiny unmasked xformers call on ``device``/``dtype``; returns "" if it works, else the reason.

    An xformers wheel built for another torch/CUDA imports fine but refuses every kernel ("No operator found";
    seen with xformers 0.0.35 on torch 2.11+cu130), so importing is not enough to pick it.
    """
    xops = _load_xformers()[0]
    if xops is None or device.type != "cuda":
        return "xformers does not import" if xops is None else f"no kernels for {device.type}"
    x = torch.randn(1, 8, 1, 64, device=device, dtype=dtype)
    try:
        xops.memory_efficient_attention(x, x, x)
    except (NotImplementedError, RuntimeError, ValueError) as err:
        return _short(err)
    return ""


def xformers_usable(device: torch.device | str = "cuda", dtype: torch.dtype = torch.bfloat16) -> bool:
    """Whether xformers imports *and* runs a kernel on ``device`` in ``dtype`` (probed once, then cached)."""
    return xformers_available() and not _xformers_probe(torch.device(device), dtype)


def _short(err: BaseException, lines: int = 12) -> str:
    text = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return "; ".join(text[:lines])


def _xformers_supports(q: Tensor, k: Tensor, mask: AttnMask | None) -> bool:
    """Inputs the ``auto`` backend sends to xformers: packed clips that need no dense bias."""
    if not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16, torch.float32) or q.shape[-1] > 256:
        return False
    if mask is None or mask.seq_lens is None:
        return False  # SDPA's flash kernels beat xformers here (see the module docstring)
    if mask.prefix_len is not None or mask.key_padding is not None or _dense_causal(mask, q.shape[2], k.shape[2]):
        return False  # would need a dense [B, H, Nq, Nk] bias; SDPA takes a broadcast boolean mask instead
    return mask.seq_lens is None or q.shape[0] == 1


def _dense_causal(mask: AttnMask, nq: int, nk: int) -> bool:
    """Causal with more queries than keys: xformers' bottom-right mask gave wrong rows there (cutlass fp32, 0.0.35),
    so such calls use a dense bias."""
    return mask.causal and mask.seq_lens is None and nq > nk


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: AttnMask | None = None,
    *,
    backend: str | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """Scaled dot-product attention with the chosen backend.

    Args:
        q: Queries ``[B, H, Nq, Dh]``.
        k: Keys ``[B, H, Nk, Dh]``.
        v: Values ``[B, H, Nk, Dv]``.
        mask: Which keys each query sees; ``None`` attends to all.
        backend: ``"auto"``, ``"xformers"``, ``"sdpa"`` or ``"math"``; ``None`` uses :func:`get_attention_backend`.
        scale: Logit scale; defaults to ``Dh ** -0.5``.
        dropout_p: Dropout on the attention weights, applied whenever ``> 0`` (pass 0 in eval mode).

    Returns:
        ``[B, H, Nq, Dv]`` in the dtype of ``q``. Rows with no visible key are zeros.

    Raises:
        ConfigError: Unknown backend, or ``"xformers"`` asked for where it cannot run.
        VidVLMError: Shapes or mask inconsistent.
    """
    name = get_attention_backend() if backend is None else _check_backend(backend, "attention(backend=...)")
    _check_inputs(q, k, v, mask)
    if mask is not None and mask.is_empty:
        mask = None
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if name == "math":
        return _math(q, k, v, mask, scale, dropout_p)
    if name == "sdpa":
        return _sdpa(q, k, v, mask, scale, dropout_p)
    if name == "xformers":
        return _xformers(q, k, v, mask, scale, dropout_p)
    if _xformers_supports(q, k, mask) and xformers_usable(q.device, q.dtype):
        try:
            return _xformers(q, k, v, mask, scale, dropout_p)
        except (NotImplementedError, ValueError) as err:  # "No operator found" for this GPU/dtype/shape
            _warn_once(f"vidvlm attention: xformers rejected these inputs ({_short(err, 1)}); using SDPA")
    return _sdpa(q, k, v, mask, scale, dropout_p)


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def _check_inputs(q: Tensor, k: Tensor, v: Tensor, mask: AttnMask | None) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise VidVLMError(
            f"attention: q, k, v must be [B, H, N, Dh]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape[:2] != k.shape[:2] or k.shape[:3] != v.shape[:3] or q.shape[-1] != k.shape[-1]:
        raise VidVLMError(f"attention: shapes disagree: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if mask is None:
        return
    b, nq, nk = q.shape[0], q.shape[2], k.shape[2]
    kp = mask.key_padding
    if kp is not None and (kp.dtype != torch.bool or tuple(kp.shape) != (b, nk)):
        raise VidVLMError(f"attention: key_padding must be bool [B={b}, Nk={nk}], got {kp.dtype} {tuple(kp.shape)}")
    p = mask.prefix_len
    if isinstance(p, Tensor) and tuple(p.shape) not in ((b,), ()):
        raise VidVLMError(f"attention: prefix_len tensor must be [B={b}], got {tuple(p.shape)}")
    if mask.seq_lens is not None:
        if b != 1 or nq != nk or sum(mask.seq_lens) != nq or min(mask.seq_lens, default=0) <= 0:
            raise VidVLMError(
                f"attention: seq_lens {list(mask.seq_lens)} need B == 1 and positive lengths summing "
                f"to Nq == Nk; got B={b}, Nq={nq}, Nk={nk}"
            )
        if p is not None:
            raise VidVLMError("attention: prefix_len cannot be combined with seq_lens (packed sequences)")


def _bool_mask(mask: AttnMask, b: int, nq: int, nk: int, device: torch.device) -> Tensor:
    """The mask as a broadcastable bool tensor ``[B|1, 1, Nq|1, Nk]``, ``True`` = may attend."""
    out = torch.ones(1, 1, 1, nk, dtype=torch.bool, device=device)
    kpos = torch.arange(nk, device=device)
    if mask.seq_lens is not None:
        seg = torch.repeat_interleave(  # the output size given: torch need not read the lengths' sum back
            torch.arange(len(mask.seq_lens), device=device), device_tensor(mask.seq_lens, device), output_size=nk
        )
        out = out & rearrange(seg[:, None] == seg[None, :], "q k -> 1 1 q k")
    if mask.causal or mask.prefix_len is not None:
        qpos = torch.arange(nq, device=device) + (nk - nq)
        visible = rearrange(kpos[None, :] <= qpos[:, None], "q k -> 1 1 q k")
        if mask.prefix_len is not None:
            plen = mask.prefix_len  # an int is compared as it is: nothing to copy over
            if isinstance(plen, Tensor):  # [B] or []
                plen = rearrange(to_device(plen, device), "... -> (...) 1 1 1")
            visible = visible | (kpos < plen)  # keys before P: [1 | B, 1, 1, Nk]
        out = out & visible
    if mask.key_padding is not None:
        out = out & rearrange(to_device(mask.key_padding, device), "b k -> b 1 1 k")
    return out


def _guard_empty_rows(allowed: Tensor) -> tuple[Tensor, Tensor]:
    """Let rows with no visible key see everything (finite softmax); the caller zeroes those rows afterwards.

    Returns the patched mask and ``valid [B|1, 1, Nq|1, 1]`` (``True`` where the row had a visible key).
    Done without a host sync, so it is safe inside CUDA graphs and cheap relative to attention.
    """
    valid = allowed.any(dim=-1, keepdim=True)
    return allowed | ~valid, valid


def _math(q: Tensor, k: Tensor, v: Tensor, mask: AttnMask | None, scale: float, dropout_p: float) -> Tensor:
    logits = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale  # [B, H, Nq, Nk]
    valid = None
    if mask is not None:
        allowed, valid = _guard_empty_rows(_bool_mask(mask, q.shape[0], q.shape[2], k.shape[2], q.device))
        logits = logits.masked_fill(~allowed, float("-inf"))
    probs = logits.softmax(dim=-1)
    if dropout_p > 0:
        probs = F.dropout(probs, dropout_p)
    out = torch.matmul(probs, v.float())
    if valid is not None:
        out = out.masked_fill(~valid, 0.0)
    return out.to(q.dtype)


def _sdpa(q: Tensor, k: Tensor, v: Tensor, mask: AttnMask | None, scale: float, dropout_p: float) -> Tensor:
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
    if mask.seq_lens is not None:
        return _packed(_sdpa, q, k, v, mask, scale, dropout_p)
    if mask.causal and mask.prefix_len is None and mask.key_padding is None and q.shape[2] == k.shape[2]:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, scale=scale)
    allowed, valid = _guard_empty_rows(_bool_mask(mask, q.shape[0], q.shape[2], k.shape[2], q.device))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout_p, scale=scale)
    return out.masked_fill(~valid, 0.0)


def _packed(fn, q: Tensor, k: Tensor, v: Tensor, mask: AttnMask, scale: float, dropout_p: float) -> Tensor:
    """Block-diagonal attention as one dense call per distinct segment length.

    A boolean block mask would cost ``N²`` memory (8 packed clips of 16x196 tokens: 630 MB of bool, and the CUDA
    mem-efficient kernel turns it into a float bias of twice that) and forbids the flash kernels. Cutting the
    sequence instead does exactly the ``sum(L_i²)`` work in linear memory, and stacking segments of equal length
    into a batch keeps the number of kernel launches at the number of distinct lengths.
    """
    lens = list(mask.seq_lens)
    starts = [sum(lens[:i]) for i in range(len(lens))]
    pieces: list[Tensor | None] = [None] * len(lens)
    for length in sorted(set(lens)):
        cuts = [slice(starts[i], starts[i] + length) for i, n in enumerate(lens) if n == length]
        ids = [i for i, n in enumerate(lens) if n == length]
        sub = AttnMask(causal=mask.causal)
        if mask.key_padding is not None:
            sub.key_padding = torch.cat([mask.key_padding[:, c] for c in cuts])  # [G, L]
        qs, ks, vs = (torch.cat([t[:, :, c] for c in cuts]) for t in (q, k, v))  # [G, H, L, D]
        out = fn(qs, ks, vs, None if sub.is_empty else sub, scale, dropout_p)
        for g, i in enumerate(ids):
            pieces[i] = out[g : g + 1]
    return torch.cat(pieces, dim=2)


def _xformers(q: Tensor, k: Tensor, v: Tensor, mask: AttnMask | None, scale: float, dropout_p: float) -> Tensor:
    xops, reason = _load_xformers()
    if xops is None:
        raise ConfigError(
            f"attention backend 'xformers' was asked for but xformers does not import ({reason}); "
            f"install vidvlm[xformers] or use backend 'auto'/'sdpa' (env {ENV_VAR})"
        )
    if not q.is_cuda:
        raise ConfigError(
            f"attention backend 'xformers' has no CPU kernels (tensors on {q.device}); use 'auto' or 'sdpa'"
        )
    from xformers.ops import fmha

    b, nq, nk = q.shape[0], q.shape[2], k.shape[2]
    bias: Any = None
    valid = None
    if mask is not None and mask.key_padding is None and mask.prefix_len is None and not _dense_causal(mask, nq, nk):
        if mask.seq_lens is not None:
            bias = fmha.attn_bias.BlockDiagonalMask.from_seqlens(list(mask.seq_lens))
            bias = bias.make_causal() if mask.causal else bias
        elif nq == nk:
            bias = fmha.attn_bias.LowerTriangularMask()
        else:
            bias = fmha.attn_bias.LowerTriangularFromBottomRightMask()
    elif mask is not None:
        # Prefix-LM / key padding / causal with Nq > Nk: a dense additive bias, materialised per head as xformers
        # wants [B, H, Nq, Nk]; its last dim is allocated to a multiple of 8 because the kernels need aligned rows.
        allowed, valid = _guard_empty_rows(_bool_mask(mask, b, nq, nk, q.device))
        pad = -(-nk // 8) * 8
        bias = torch.zeros(b, q.shape[1], nq, pad, dtype=q.dtype, device=q.device)[..., :nk]
        bias.masked_fill_(~allowed, float("-inf"))
    to_x = lambda t: rearrange(t, "b h n d -> b n h d")
    try:
        out = xops.memory_efficient_attention(to_x(q), to_x(k), to_x(v), attn_bias=bias, p=dropout_p, scale=scale)
    except NotImplementedError as err:
        raise ConfigError(
            f"attention backend 'xformers' has no kernel for these inputs ({_short(err)}); "
            "see `python -m xformers.info`, or use backend 'auto'/'sdpa'"
        ) from err
    out = rearrange(out, "b n h d -> b h n d")
    return out if valid is None else out.masked_fill(~valid, 0.0)


def attention_flops(b: int, h: int, nq: int, nk: int, dh: int, causal: bool = False) -> float:
    """Matmul FLOPs of one attention forward (``QK^T`` and ``PV``); halved for causal. Used by the benchmarks."""
    flops = 4.0 * b * h * nq * nk * dh
    return flops / 2 if causal else flops


__all__ = [
    "AttnMask",
    "attention",
    "set_attention_backend",
    "get_attention_backend",
    "xformers_available",
    "xformers_usable",
    "attention_flops",
    "BACKENDS",
    "ENV_VAR",
]
