"""Poolers: how many tokens M each leaves for the language model, and what that costs downstream.

    python benchmarks/bench_pooling.py                       # CPU: small LM stack (2 x 256 wide)
    python benchmarks/bench_pooling.py --device cuda --lm-width 4096 --lm-heads 32 --lm-layers 4 --dtype bfloat16

For T = 8 and 16 frames of N = 196 patch tokens (a 14 x 14 grid, ViT-L/14 at 224 px, width 1024), each pooler's
M, its own time, the measured prefill time of a causal stack of ``--lm-layers`` :class:`TransformerBlock` over the
M tokens, and the analytic prefill FLOPs of a 7B-class LM (32 layers, d = 4096, SwiGLU 11008) over them.
Times are medians of ``--repeats`` runs after one warm-up, with no gradients.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from vidvlm.layers.attention import AttnMask
from vidvlm.layers.pooling import PoolerConfig, build_pooler
from vidvlm.layers.transformer import TransformerBlock

GRID = 14


def settings(t: int) -> list[tuple[str, PoolerConfig | None]]:
    return [
        ("none (all tokens)", None),
        ("meanP", PoolerConfig("meanP", {"token": "mean"})),
        ("seqTransf (4 layers)", PoolerConfig("seqTransf", {"depth": 4, "num_heads": 16, "token": "mean"})),
        ("video_chatgpt", PoolerConfig("video_chatgpt")),
        ("adaptive3d (T/2, 7, 7)", PoolerConfig("adaptive3d", {"output_size": [t // 2, 7, 7]})),
        ("spatial2d 7x7 avg", PoolerConfig("spatial2d", {"size": 7, "mode": "avg"})),
        ("spatial2d 3x3 bilinear", PoolerConfig("spatial2d", {"size": 3, "mode": "bilinear"})),
        ("resampler (64 queries)", PoolerConfig("resampler", {"num_queries": 64, "depth": 2, "num_heads": 16})),
        ("tome frame (r=49, 2 steps)", PoolerConfig("tome", {"r": 49, "steps": 2})),
        ("tome video (r=T*49, 2 steps)", PoolerConfig("tome", {"r": t * 49, "steps": 2, "scope": "video"})),
    ]


def lm_prefill_flops(m: int, layers: int = 32, d: int = 4096, ffn: int = 11008) -> float:
    """Forward FLOPs of a Llama-7B-shaped decoder over m tokens (projections, SwiGLU, causal attention)."""
    per_layer = 2 * m * (4 * d * d + 3 * d * ffn) + 2 * m * m * d  # causal: half of 4 m^2 d
    return layers * per_layer


def _median_ms(fn, device: torch.device, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--dim", type=int, default=1024, help="vision width D")
    parser.add_argument("--lm-width", type=int, default=256)
    parser.add_argument("--lm-heads", type=int, default=4)
    parser.add_argument("--lm-layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    lm = nn.ModuleList(TransformerBlock(args.lm_width, args.lm_heads) for _ in range(args.lm_layers))
    lm = lm.to(device=device, dtype=dtype).eval()
    to_lm = nn.Linear(args.dim, args.lm_width).to(device=device, dtype=dtype)

    def run_lm(x: torch.Tensor) -> torch.Tensor:
        x = to_lm(x)
        for block in lm:
            x = block(x, AttnMask(causal=True))
        return x

    print(
        f"device {args.device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}), {args.dtype}, "
        f"D={args.dim}, N={GRID * GRID}; LM stack {args.lm_layers} x {args.lm_width}; median of {args.repeats}"
    )
    print("| T | pooler | M | pooler ms | LM stack ms | 7B prefill TFLOP |")
    print("|---:|---|---:|---:|---:|---:|")
    with torch.no_grad():
        for t in args.frames:
            tokens = torch.randn(2, t, GRID * GRID, args.dim, device=device, dtype=dtype)
            for label, cfg in settings(t):
                if cfg is None:
                    pool = lambda x: x.flatten(1, 2)
                    m = t * GRID * GRID
                else:
                    pooler = build_pooler(cfg, args.dim).to(device=device, dtype=dtype).eval()
                    pool, m = pooler, pooler.num_output_tokens(t, GRID * GRID)
                pooled = pool(tokens)
                assert pooled.shape[1] == m, (label, pooled.shape, m)
                pool_ms = _median_ms(lambda p=pool, x=tokens: p(x), device, args.repeats)
                lm_ms = _median_ms(lambda x=pooled: run_lm(x), device, args.repeats)
                tflop = lm_prefill_flops(m) / 1e12
                print(f"| {t} | {label} | {m} | {pool_ms:.2f} | {lm_ms:.2f} | {tflop:.2f} |", flush=True)


if __name__ == "__main__":
    main()
