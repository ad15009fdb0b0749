"""Forward+backward time and peak memory of a ViT-S/16 video encoder: vidvlm layouts vs VideoMAE and TimeSformer.

Every model has D=384, 12 layers, 6 heads, MLP 1536, 16x16 patches at 224x224, batch 1 (``--batch``), T frames
(tubelet 1, so all models see T*196 patch tokens). Peers come from ``transformers`` (VideoMAE with its SDPA
attention; TimeSformer with its own). Cases are interleaved round by round and the median per case is reported.

CPU: each (case, round) runs in a fresh subprocess; peak memory is the max-RSS growth over the state before the
step (``resource.getrusage``). CUDA: one process, ``torch.cuda.max_memory_allocated`` over the step, bf16 autocast
with ``--dtype bf16``.

``--modes eager compiled`` adds compiled cases: every transformer block of every model is compiled the same way
(regional ``torch.compile``, inductor): vidvlm's through ``vidvlm.layers.transformer.compile_blocks``, the peers'
``encoder.layer[i]`` with ``nn.Module.compile``. The compiling step is an extra warm-up, not timed. On CPU the
compiler's own allocations raise the RSS high-water mark, so peak memory is not reported for compiled cases there.
``--in-process`` (CPU) keeps every case's model in one process and interleaves their steps, so that all cases see
the same background load; it reports time only.

    python benchmarks/bench_encoder.py --frames 1 8 --rounds 3            # CPU
    python benchmarks/bench_encoder.py --frames 1 4 --models vidvlm-joint videomae --modes eager compiled \
        --in-process --rounds 5 --iters 2                                 # CPU, compile vs eager
    python benchmarks/bench_encoder.py --device cuda --dtype bf16 --rounds 5 --iters 5
    python benchmarks/bench_encoder.py --device cuda --dtype bf16 --batch 32 --modes eager compiled
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

D, DEPTH, HEADS, MLP, SIZE, PATCH = 384, 12, 6, 1536, 224, 16
MODELS = ["vidvlm-frame", "vidvlm-divided", "vidvlm-joint", "vidvlm-factorised", "videomae", "timesformer"]
PEER_OF = {"vidvlm-joint": "videomae", "vidvlm-divided": "timesformer"}  # same attention pattern and size


def build(name: str, frames: int) -> torch.nn.Module:
    if name.startswith("vidvlm-"):
        from vidvlm.models.vision import VideoViT, VisionConfig

        cfg = VisionConfig(
            image_size=SIZE, patch_size=PATCH, width=D, depth=DEPTH, num_heads=HEADS, mlp_dim=MLP,
            layout=name.split("-")[1], num_tubelets=max(frames, 1), temporal_depth=4,
        )  # fmt: skip
        return VideoViT(cfg)
    import transformers

    common = dict(
        image_size=SIZE, patch_size=PATCH, num_frames=frames, hidden_size=D, num_hidden_layers=DEPTH,
        num_attention_heads=HEADS, intermediate_size=MLP,
    )  # fmt: skip
    if name == "videomae":
        cfg = transformers.VideoMAEConfig(tubelet_size=1, attn_implementation="sdpa", **common)
        model = transformers.VideoMAEModel(cfg)
        assert model.config._attn_implementation == "sdpa", model.config._attn_implementation
        return model
    if name == "timesformer":
        return transformers.TimesformerModel(
            transformers.TimesformerConfig(attention_type="divided_space_time", **common)
        )
    raise ValueError(name)


def step(model: torch.nn.Module, video: torch.Tensor, device: str, dtype: str) -> None:
    with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bf16"):
        out = model(video) if hasattr(model, "patch_embed") else model(pixel_values=video)
        loss = out.last_hidden_state.float().square().mean()
    loss.backward()


def compile_model(model: torch.nn.Module) -> int:
    """Compile each transformer block (regional compilation), vidvlm and peers alike; returns the count."""
    if hasattr(model, "patch_embed"):
        from vidvlm.layers.transformer import compile_blocks

        return compile_blocks(model)
    for layer in model.encoder.layer:
        layer.compile()
    return len(model.encoder.layer)


def prepare(name: str, frames: int, mode: str, args: argparse.Namespace) -> tuple[torch.nn.Module, torch.Tensor]:
    """Build one case's model (compiled, with its compiling step done, for ``mode == "compiled"``) and input."""
    torch.manual_seed(0)
    model = build(name, frames).to(args.device).train()
    video = torch.randn(args.batch, frames, 3, SIZE, SIZE, device=args.device)
    if mode == "compiled":
        compile_model(model)
        step(model, video, args.device, args.dtype)  # compiles (not timed)
        model.zero_grad(set_to_none=True)
    return model, video


def time_steps(model: torch.nn.Module, video: torch.Tensor, args: argparse.Namespace, n: int) -> list[float]:
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    times = []
    for _ in range(n):
        model.zero_grad(set_to_none=True)
        sync()
        start = time.perf_counter()
        step(model, video, args.device, args.dtype)
        sync()
        times.append(time.perf_counter() - start)
    return times


def run_case(name: str, frames: int, mode: str, args: argparse.Namespace) -> dict:
    """Time ``iters`` steps after one warm-up; report seconds per step and peak memory of the step in MiB."""
    import resource

    model, video = prepare(name, frames, mode, args)
    if args.device == "cuda":
        time_steps(model, video, args, 1)  # warm-up (kernel selection, allocator)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        times = time_steps(model, video, args, args.iters)
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:  # the first step is the warm-up whose max-RSS growth is the peak (KiB on Linux)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        time_steps(model, video, args, 1)
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
        if mode == "compiled":
            peak = float("nan")  # the compiler raised the RSS high-water mark before the step
        times = time_steps(model, video, args, args.iters)
    return {"times": times, "peak_mib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--frames", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--modes", nargs="+", default=["eager"], choices=["eager", "compiled"],
                        help="compiled: torch.compile every transformer block of every model")  # fmt: skip
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all cases")
    parser.add_argument("--iters", type=int, default=1, help="timed steps per case per round")
    parser.add_argument("--in-process", action="store_true",
                        help="CPU: all models in this process, steps interleaved (timing only)")  # fmt: skip
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    parser.add_argument("--markdown", help="append the table to this file")
    args = parser.parse_args()
    if args.case:
        name, frames, mode = args.case.split(":")
        print(json.dumps(run_case(name, int(frames), mode, args)))
        return
    cases = [(m, t, mode) for t in args.frames for mode in args.modes for m in args.models]
    results: dict[tuple[str, int, str], dict] = {c: {"times": [], "peaks": []} for c in cases}
    live = {}
    if args.in_process and args.device == "cpu":
        for case in cases:
            live[case] = prepare(*case, args)
            time_steps(*live[case], args, 1)  # warm-up
    for r in range(args.rounds):
        for case in cases:
            name, frames, mode = case
            if case in live:
                res = {"times": time_steps(*live[case], args, args.iters), "peak_mib": float("nan")}
            elif args.device == "cpu":
                cmd = [sys.executable, __file__, "--case", f"{name}:{frames}:{mode}", "--device", "cpu",
                       "--dtype", args.dtype, "--batch", str(args.batch), "--iters", str(args.iters)]  # fmt: skip
                res = json.loads(
                    subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]
                )
            else:
                res = run_case(name, frames, mode, args)
                torch.cuda.empty_cache()
            results[case]["times"] += res["times"]
            results[case]["peaks"].append(res["peak_mib"])
            ms = statistics.median(res["times"]) * 1e3
            print(f"round {r} {name:18s} {mode:8s} T={frames:2d} {ms:9.1f} ms", file=sys.stderr)
    table = render(results, args, bool(live))
    print(table)
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write(table + "\n")


def render(results: dict, args: argparse.Namespace, live: bool) -> str:
    dev = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    lines = [
        f"Device: {dev}; dtype {args.dtype}; batch {args.batch}; median of {args.rounds} rounds x {args.iters} steps"
        f"{'; all cases in one process, steps interleaved' if live else ''}.",
        "",
        "| model | T | tokens | fwd+bwd ms (median) | peak MiB | speed-up vs peer | memory vs peer "
        "| compiled vs eager |",
        "|---|---|---|---|---|---|---|---|",
    ]
    med = {case: statistics.median(res["times"]) * 1e3 for case, res in results.items()}
    for (name, frames, mode), res in results.items():
        ms = med[(name, frames, mode)]
        mib = statistics.median(res["peaks"])
        peer, speed, mem, gain = PEER_OF.get(name), "", "", ""
        if peer and (peer, frames, mode) in results:
            speed = f"{med[(peer, frames, mode)] / ms:.2f}x vs {peer}"
            peer_mib = statistics.median(results[(peer, frames, mode)]["peaks"])
            mem = f"{mib / max(peer_mib, 1e-9):.2f}x" if mib == mib else "n/a"
        if mode == "compiled" and (name, frames, "eager") in results:
            gain = f"{med[(name, frames, 'eager')] / ms:.2f}x"
        mib_text = f"{mib:.0f}" if mib == mib else "n/a"  # NaN: not measured
        label = name if mode == "eager" else f"{name} (compiled)"
        lines.append(f"| {label} | {frames} | {frames * 197} | {ms:.1f} | {mib_text} | {speed} | {mem} | {gain} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
