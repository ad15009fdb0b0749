"""Attention backends on video token shapes: forward+backward time, peak memory and error against fp32 math.

    python benchmarks/bench_attention.py                      # CUDA if present (xformers / sdpa / math), else CPU
    python benchmarks/bench_attention.py --device cpu --frames 4 --batch 1 --heads 6   # CPU: sdpa vs math only

Cases (all through ``vidvlm.layers.attention.attention``, inputs ``[B, H, N, Dh]``):

* ``full``: B clips of ``frames x tokens`` tokens, no mask (joint space-time attention of a video ViT).
* ``packed``: clips of different lengths (``--packed-frames``, default 16,8,4,12 frames) in one sequence with
  block-diagonal attention, against the usual alternative: padding every clip to the longest with a key mask.

Times are medians of ``--repeats`` runs after warm-up (CUDA events on GPU). Peak memory is what the step allocates
beyond its inputs, gradients included (``torch.cuda.max_memory_allocated``); on CPU it is not measured. ``rel_err`` is
``||out - ref|| / ||ref||`` against the math backend on fp32 copies of the same inputs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from vidvlm.layers.attention import AttnMask, attention, attention_flops, xformers_available


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device: torch.device, warmup: int, repeats: int) -> float:
    """Median milliseconds of ``fn()``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _peak_mib(fn, device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _step(q, k, v, mask, backend):
    """One forward + backward; returns the output (detached)."""
    for t in (q, k, v):
        t.grad = None
    out = attention(q, k, v, mask, backend=backend)
    out.backward(torch.ones_like(out))
    return out.detach()


def run_case(name, q, k, v, mask, backends, flops, args, device, ref=None):
    rows = []
    if ref is None:
        q32, k32, v32 = (t.detach().float() for t in (q, k, v))
        ref = attention(q32, k32, v32, mask, backend="math").double()
    for backend, label, m in backends:
        try:
            out = _step(q, k, v, m, backend)
            err = ((out.double() - ref).norm() / ref.norm()).item()
            ms = _time(lambda b=backend, m=m: _step(q, k, v, m, b), device, args.warmup, args.repeats)
            mib = _peak_mib(lambda b=backend, m=m: _step(q, k, v, m, b), device)
            rows.append(
                {"case": name, "backend": label, "ms": ms, "tflops": flops / ms / 1e9, "peak_mib": mib, "rel_err": err}
            )
        except (RuntimeError, NotImplementedError, ValueError) as err:  # OOM or unsupported: report, keep going
            rows.append({"case": name, "backend": label, "error": str(err).splitlines()[0][:120]})
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--heads", type=int, nargs="+", default=[6, 12])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=196, help="tokens per frame")
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--packed-frames", default="16,8,4,12")
    parser.add_argument("--no-math", action="store_true", help="skip the quadratic-memory reference timings")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", help="write all rows here")
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator(device="cpu").manual_seed(0)
    rand = lambda *s: torch.randn(*s, generator=gen).to(device=device, dtype=dtype).requires_grad_(True)
    names = ["sdpa"] + (["xformers"] if device.type == "cuda" and xformers_available() else [])
    names += [] if args.no_math else ["math"]
    rows = []
    n = args.frames * args.tokens
    for h in args.heads:
        q, k, v = (rand(args.batch, h, n, args.head_dim) for _ in range(3))
        flops = 3.5 * attention_flops(args.batch, h, n, n, args.head_dim)  # backward = 2.5x forward
        rows += run_case(
            f"full B={args.batch} H={h} N={n}", q, k, v, None, [(b, b, None) for b in names], flops, args, device
        )
        del q, k, v

    lens = [int(f) * args.tokens for f in args.packed_frames.split(",")]
    h = args.heads[-1]
    q, k, v = (rand(1, h, sum(lens), args.head_dim) for _ in range(3))
    packed = AttnMask(seq_lens=lens)
    flops = 3.5 * sum(attention_flops(1, h, n_i, n_i, args.head_dim) for n_i in lens)
    rows += run_case(
        f"packed {args.packed_frames} frames H={h} N={sum(lens)}",
        q,
        k,
        v,
        packed,
        [(b, f"{b} block-diag", packed) for b in names],
        flops,
        args,
        device,
    )
    # the padded alternative: B clips each padded to the longest, keys masked; FLOPs counted as useful work only
    longest = max(lens)
    qp, kp, vp = (rand(len(lens), h, longest, args.head_dim) for _ in range(3))
    pad = AttnMask(key_padding=torch.arange(longest, device=device)[None] < torch.tensor(lens, device=device)[:, None])
    rows += run_case(
        f"padded to {longest} (same clips) H={h}",
        qp,
        kp,
        vp,
        pad,
        [(b, f"{b} key-padding", pad) for b in names],
        flops,
        args,
        device,
    )

    print(
        f"\ndevice: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}; torch {torch.__version__}; "
        f"dtype {args.dtype}; Dh={args.head_dim}; fwd+bwd; median of {args.repeats}"
    )
    print("| case | backend | ms | TFLOP/s | peak MiB | rel err vs fp32 math |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['case']} | {r['backend']} | error: {r['error']} | | | |")
        else:
            mib = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
            print(f"| {r['case']} | {r['backend']} | {r['ms']:.2f} | {r['tflops']:.3g} | {mib} | {r['rel_err']:.1e} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
