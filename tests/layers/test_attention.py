"""attention(): every backend and mask against the math reference, and math against a naive loop written here."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from vidvlm.errors import ConfigError, VidVLMError
from vidvlm.layers import attention as attn_mod
from vidvlm.layers.attention import AttnMask, attention, get_attention_backend, set_attention_backend

CUDA = torch.cuda.is_available()
gpu = pytest.mark.gpu


def _segments(lens: list[int]) -> list[int]:
    return [s for s, n in enumerate(lens) for _ in range(n)]


def _rule(mask: AttnMask | None, nq: int, nk: int):
    """The mask semantics restated one (b, i, j) at a time, independently of the library's tensor code."""
    if mask is None:
        return lambda b, i, j: True
    seg = _segments(mask.seq_lens) if mask.seq_lens is not None else None

    def allowed(b: int, i: int, j: int) -> bool:
        pos = i + nk - nq  # bottom-right aligned query position
        if seg is not None and seg[i] != seg[j]:
            return False
        if mask.key_padding is not None and not bool(mask.key_padding[b, j]):
            return False
        if mask.prefix_len is not None:
            p = mask.prefix_len
            p = int(p[b]) if isinstance(p, torch.Tensor) and p.dim() == 1 else int(p)
            return j < p or j <= pos
        return j <= pos if mask.causal else True

    return allowed


def naive(q, k, v, mask, scale=None):
    """Loop over (b, h, i) in float64: softmax over the visible keys; no visible key gives zeros."""
    b_, h_, nq, dh = q.shape
    nk = k.shape[2]
    scale = dh**-0.5 if scale is None else scale
    allowed = _rule(mask, nq, nk)
    q, k, v = q.double(), k.double(), v.double()
    out = torch.zeros(b_, h_, nq, v.shape[-1], dtype=torch.float64)
    for b in range(b_):
        for i in range(nq):
            keys = [j for j in range(nk) if allowed(b, i, j)]
            if not keys:
                continue
            for h in range(h_):
                logits = (k[b, h, keys] @ q[b, h, i]) * scale
                out[b, h, i] = logits.softmax(0) @ v[b, h, keys]
    return out


def _kp(rows: list[str]) -> torch.Tensor:
    return torch.tensor([[c == "1" for c in r] for r in rows])


# (name, B, Nq, Nk, mask); the masks are built lazily so that tensors live on the test's device
CASES = [
    ("none", 2, 6, 6, lambda: None),
    ("cross_none", 2, 5, 7, lambda: None),
    ("causal", 2, 6, 6, lambda: AttnMask(causal=True)),
    ("causal_kv_cache", 2, 3, 7, lambda: AttnMask(causal=True)),
    ("causal_more_queries", 1, 6, 4, lambda: AttnMask(causal=True)),  # first two rows see nothing
    ("prefix_int", 2, 7, 7, lambda: AttnMask(prefix_len=3)),
    ("prefix_per_row", 2, 7, 7, lambda: AttnMask(prefix_len=torch.tensor([2, 5]))),
    ("key_padding", 2, 5, 6, lambda: AttnMask(key_padding=_kp(["111100", "110000"]))),
    ("key_padding_empty_row", 2, 4, 6, lambda: AttnMask(key_padding=_kp(["000000", "101011"]))),
    ("causal_key_padding", 2, 6, 6, lambda: AttnMask(causal=True, key_padding=_kp(["011111", "111100"]))),
    (
        "prefix_key_padding",
        2,
        7,
        7,
        lambda: AttnMask(prefix_len=torch.tensor([3, 2]), key_padding=_kp(["1111100", "0111111"])),
    ),
    ("block_diag", 1, 9, 9, lambda: AttnMask(seq_lens=[3, 2, 3, 1])),
    ("block_diag_causal", 1, 9, 9, lambda: AttnMask(seq_lens=[3, 2, 3, 1], causal=True)),
    ("block_diag_key_padding", 1, 8, 8, lambda: AttnMask(seq_lens=[4, 4], key_padding=_kp(["11101100"]))),
]
IDS = [c[0] for c in CASES]


def _inputs(b, nq, nk, dh=8, h=2, dtype=torch.float32, device="cpu", grad=False):
    g = torch.Generator().manual_seed(b * 100 + nq * 10 + nk)
    make = lambda n: torch.randn(b, h, n, dh, generator=g).to(device=device, dtype=dtype).requires_grad_(grad)
    return make(nq), make(nk), make(nk)


def _to(mask: AttnMask | None, device) -> AttnMask | None:
    if mask is None:
        return None
    kp, p = mask.key_padding, mask.prefix_len
    return AttnMask(
        causal=mask.causal,
        prefix_len=p.to(device) if isinstance(p, torch.Tensor) else p,
        key_padding=None if kp is None else kp.to(device),
        seq_lens=mask.seq_lens,
    )


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_math_matches_naive_loop(case):
    _, b, nq, nk, make = case
    q, k, v = _inputs(b, nq, nk)
    out = attention(q, k, v, make(), backend="math")
    torch.testing.assert_close(out.double(), naive(q, k, v, make()), atol=1e-5, rtol=1e-5)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_sdpa_matches_math_forward_and_grad(case):
    _, b, nq, nk, make = case
    q, k, v = _inputs(b, nq, nk, grad=True)
    ref = attention(q, k, v, make(), backend="math")
    out = attention(q, k, v, make(), backend="sdpa")
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    w = torch.randn_like(out)
    g_ref = torch.autograd.grad((ref * w).sum(), (q, k, v))
    g_out = torch.autograd.grad((out * w).sum(), (q, k, v))
    for a, r in zip(g_out, g_ref, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["causal", "prefix_key_padding", "block_diag_causal"])
def test_sdpa_bf16_close_to_math(name):
    _, b, nq, nk, make = CASES[IDS.index(name)]
    q, k, v = _inputs(b, nq, nk, dtype=torch.bfloat16)
    out = attention(q, k, v, make(), backend="sdpa")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), naive(q, k, v, make()).float(), atol=2e-2, rtol=2e-2)


def test_fully_masked_rows_are_zero_with_zero_grad():
    q, k, v = _inputs(2, 4, 6, grad=True)
    mask = AttnMask(key_padding=_kp(["000000", "111111"]))
    for backend in ("math", "sdpa"):
        out = attention(q, k, v, mask, backend=backend)
        assert out[0].abs().max() == 0 and out[1].abs().min() > 0
        grads = torch.autograd.grad(out.sum(), (q, k, v))
        assert all(torch.isfinite(g).all() for g in grads)
        assert grads[0][0].abs().max() == 0


def test_scale_argument():
    q, k, v = _inputs(1, 5, 5)
    for backend in ("math", "sdpa"):
        out = attention(q, k, v, AttnMask(causal=True), backend=backend, scale=0.3)
        torch.testing.assert_close(out.double(), naive(q, k, v, AttnMask(causal=True), scale=0.3), atol=1e-5, rtol=1e-5)


def test_dropout_is_applied_and_seeded():
    q, k, v = _inputs(1, 8, 8)
    for backend in ("math", "sdpa"):
        plain = attention(q, k, v, backend=backend)
        torch.manual_seed(3)
        a = attention(q, k, v, backend=backend, dropout_p=0.5)
        torch.manual_seed(3)
        b = attention(q, k, v, backend=backend, dropout_p=0.5)
        assert not torch.allclose(a, plain)
        torch.testing.assert_close(a, b)


def test_backend_selection_config_env_and_argument(monkeypatch):
    calls = []
    monkeypatch.setattr(attn_mod, "_math", lambda *a: calls.append("math") or a[0])
    monkeypatch.setattr(attn_mod, "_sdpa", lambda *a: calls.append("sdpa") or a[0])
    monkeypatch.delenv("VIDVLM_ATTENTION", raising=False)
    q, k, v = _inputs(1, 3, 3)
    try:
        assert get_attention_backend() == "auto"
        attention(q, k, v)  # auto on CPU: SDPA (xformers has no CPU kernels)
        set_attention_backend("math")
        attention(q, k, v)
        monkeypatch.setenv("VIDVLM_ATTENTION", "sdpa")  # the environment overrides the config
        attention(q, k, v)
        attention(q, k, v, backend="math")  # the argument overrides both
        assert calls == ["sdpa", "math", "sdpa", "math"]
        monkeypatch.setenv("VIDVLM_ATTENTION", "flash9")
        with pytest.raises(ConfigError, match="VIDVLM_ATTENTION"):
            attention(q, k, v)
    finally:
        set_attention_backend("auto")
    with pytest.raises(ConfigError, match="unknown attention backend"):
        set_attention_backend("fast")


def test_explicit_xformers_unusable_is_a_clear_error():
    q, k, v = _inputs(1, 3, 3)  # CPU tensors: xformers either is missing or has no CPU kernel
    with pytest.raises(ConfigError, match="xformers"):
        attention(q, k, v, backend="xformers")


def test_bad_shapes_and_masks_raise():
    q, k, v = _inputs(2, 4, 4)
    with pytest.raises(VidVLMError, match="key_padding"):
        attention(q, k, v, AttnMask(key_padding=torch.ones(2, 3, dtype=torch.bool)))
    with pytest.raises(VidVLMError, match="seq_lens"):
        attention(q, k, v, AttnMask(seq_lens=[2, 2]))  # B == 2
    with pytest.raises(VidVLMError, match="shapes"):
        attention(q, k[:, :1], v)


def test_xformers_not_imported_by_package_import():
    code = (
        "import sys, vidvlm, vidvlm.layers.attention as a, torch;"
        "a.attention(*[torch.randn(1,1,2,4)]*3);"
        "assert 'xformers' not in sys.modules, 'xformers imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---------------------------------------------------------------- GPU: xformers and CUDA SDPA against math


@gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("backend", ["sdpa", "xformers", "auto"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cuda_backends_match_math(case, dtype, backend):
    _, b, nq, nk, make = case
    q, k, v = _inputs(b, nq, nk, dh=64, h=4, dtype=dtype, device="cuda", grad=True)
    mask = _to(make(), "cuda")
    if backend == "xformers" and not attn_mod.xformers_usable("cuda", dtype):
        with pytest.raises(ConfigError, match="xformers"):  # missing, or a wheel whose kernels do not load
            attention(q, k, v, mask, backend="xformers")
        return
    ref = attention(q, k, v, mask, backend="math")
    out = attention(q, k, v, mask, backend=backend)
    tol = 2e-3 if dtype == torch.float32 else 2e-2  # xformers/cutlass fp32 uses TF32-free fp32 but other sums
    torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol)
    w = torch.randn_like(out)
    g_ref = torch.autograd.grad((ref.float() * w).sum(), (q, k, v))
    g_out = torch.autograd.grad((out.float() * w).sum(), (q, k, v))
    for a, r in zip(g_out, g_ref, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a.float(), r.float(), atol=5 * tol, rtol=5 * tol)


@gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_auto_picks_xformers_when_usable(monkeypatch):
    used = []
    real = attn_mod._xformers
    monkeypatch.setattr(attn_mod, "_xformers", lambda *a: used.append(1) or real(*a))
    q, k, v = _inputs(1, 64, 64, dh=64, h=4, dtype=torch.bfloat16, device="cuda")
    out = attention(q, k, v, AttnMask(seq_lens=[40, 24], causal=True), backend="auto")
    ref = attention(q, k, v, AttnMask(seq_lens=[40, 24], causal=True), backend="math")
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)
    if not attn_mod.xformers_usable("cuda", torch.bfloat16):
        assert used == []  # unusable xformers is probed once and never tried again
        return
    assert used == [1]
    attention(q, k, v, AttnMask(key_padding=torch.ones(1, 64, dtype=torch.bool, device="cuda")), backend="auto")
    assert used == [1]  # key padding goes to SDPA (broadcast boolean mask instead of a dense bias)
    attention(q, k, v, AttnMask(causal=True), backend="auto")
    attention(q, k, v, backend="auto")
    assert used == [1]  # unpacked inputs go to SDPA, which was faster on the H100
