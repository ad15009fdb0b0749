"""Training throughput (samples/s) and peak memory: vidvlm's tiny contrastive model vs open_clip at the same size.

Cases (``--cases``):

* ``vidvlm-1f``: ``configs/contrastive_tiny_1f_shapes.yaml`` (T = 1), built as ``tools/train.py`` builds it
  (``load_train_config`` -> ``build_model``; AdamW groups from ``vidvlm.train.optim.build_optimizer``); the loss is
  the model's own ``forward(batch)`` (``contrastive_loss``, ``vidvlm.losses.clip_loss``).
* ``open_clip``: an ``open_clip.model.CLIP`` whose towers are read off the 1-frame config (image 32, patch 4, width
  96, 3 blocks, head width 16; text context 12, vocab 64, width 64, 4 heads, 2 blocks; embed 64), trained with
  ``open_clip.loss.ClipLoss`` and AdamW with open_clip's own no-decay rule. This is the matched pair: open_clip is
  image-only, so the fair comparison is T = 1.
* ``vidvlm-8f``: ``configs/contrastive_tiny_8f_shapes.yaml`` (T = 8: two 4-frame tubelets, joint attention over
  2 x 65 tokens). open_clip has no video equivalent, so this row has no ratio.

Both models get the config's optimiser settings (lr, betas, eps, weight decay) and batch size (``--batch``).
Inputs are random tensors of the same shapes: images ``[B, 3, 32, 32]`` (open_clip), clips ``[B, T, 3, 32, 32]``
(vidvlm) and token ids ``[B, 12]`` for both, so video decoding, augmentation and tokenisation are excluded (vidvlm's
``tokenize`` is replaced by one returning those ids; its ``forward(batch)`` runs unchanged).

One training step = forward + loss + backward + ``optimizer.step()`` + ``zero_grad``; open_clip's step also clamps
``logit_scale`` as its training loop does. The extras of ``vidvlm.train.Trainer`` (gradient clipping, the finite
check, the LR schedule, accelerate) and of open_clip's loop are left out of both. ``--warmup`` untimed steps, then
``--steps`` timed steps per round; cases are interleaved round by round and the median step over all rounds is
reported.

CPU: each (case, round) runs in a fresh subprocess. Peak memory is the growth of the peak RSS over the full-batch
steps above the RSS after one batch-1 step (so library start-up and the lazily created AdamW state are not counted):
the activations, gradients and temporaries of a step. The peak is reset before the steps (``/proc/self/clear_refs``;
``resource.getrusage`` max RSS where that is unavailable), and memory that the allocator kept from earlier steps is
reused without showing up, so small figures are a lower bound. CUDA: one process,
``torch.cuda.max_memory_allocated`` over the timed steps minus the allocation before them; ``--dtype bf16`` runs the
forward and the loss under bf16 autocast (CUDA only).

    pip install --no-deps open_clip_torch ftfy          # the peer (not a vidvlm dependency)
    OMP_NUM_THREADS=1 python benchmarks/bench_train.py --threads 1 --rounds 3 --steps 5     # CPU
    python benchmarks/bench_train.py --device cuda --dtype bf16 --batch 256 --rounds 5 --steps 20
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {
    "vidvlm-1f": ROOT / "configs/contrastive_tiny_1f_shapes.yaml",
    "vidvlm-8f": ROOT / "configs/contrastive_tiny_8f_shapes.yaml",
}
CASES = ["open_clip", "vidvlm-1f", "vidvlm-8f"]
PEER_OF = {"vidvlm-1f": "open_clip"}  # the matched (T = 1) pair
MATCHED = "vidvlm-1f"  # the config open_clip's towers and the optimiser settings are read from


def require_open_clip() -> None:
    try:
        import open_clip  # noqa: F401
    except ImportError as e:
        sys.exit(
            f"open_clip is not installed ({e}); it is the peer of this benchmark but not a vidvlm dependency:\n"
            "    pip install --no-deps open_clip_torch ftfy   (or run with --cases vidvlm-1f vidvlm-8f)"
        )


def load_config(name: str):
    from vidvlm.train.config import load_train_config, validate_model_config

    cfg = load_train_config(CONFIGS[name])
    model_cfg = validate_model_config(cfg, where=str(CONFIGS[name]))
    return cfg, model_cfg


def autocast(args: argparse.Namespace):
    if args.dtype == "bf16":
        return torch.autocast(args.device, dtype=torch.bfloat16)
    return nullcontext()


def build_vidvlm(name: str, batch: int, args: argparse.Namespace):
    """Model, step(b) and T of a vidvlm case; ``step(b)`` trains on ``b`` random samples."""
    cfg, model_cfg = load_config(name)
    return vidvlm_step(cfg, model_cfg, batch, args)


def vidvlm_step(cfg, model_cfg, batch: int, args: argparse.Namespace, stage_index: int = 0):
    """Model, step(b) and T of a contrastive training config (``cfg``, its checked ``model_cfg``), trained as its
    stage ``stage_index`` trains it; ``step(b)`` trains on ``b`` random samples (``args.device``, ``args.dtype``)."""
    from vidvlm.models.registry import build_model
    from vidvlm.train.optim import apply_stage_trainable, build_optimizer

    model = build_model(cfg.model).to(args.device).train()  # as Trainer builds it
    stage = cfg.stages[stage_index]
    apply_stage_trainable(model, stage)
    opt = build_optimizer(model, cfg.optim, stage)
    frames = model.num_frames
    size, length, vocab = model.front_end.image_size, model_cfg.text.context_length, model_cfg.text.vocab_size
    if model_cfg.text.kind == "hf":  # a transformers text model: its own vocabulary
        vocab = model.text.model.config.vocab_size
    inputs = {}
    for b in {1, batch}:
        video = torch.randn(b, frames, 3, size, size, device=args.device)
        ids = torch.randint(1, vocab, (b, length), device=args.device)
        mask = torch.ones(b, length, dtype=torch.bool, device=args.device)
        inputs[b] = ({"video": video, "text": [""] * b}, ids, mask)

    def step(b: int) -> None:
        batch_dict, ids, mask = inputs[b]
        model.tokenize = lambda texts: (ids, mask)  # pre-made random ids instead of string tokenisation
        with autocast(args):
            out = model(batch_dict)
            loss = sum(v for k, v in out.items() if k.endswith("_loss"))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return model, step, frames


def open_clip_cfgs(model_cfg) -> tuple[int, dict, dict]:
    """embed_dim, vision_cfg and text_cfg of an open_clip CLIP of the same size as a vidvlm contrastive config."""
    v, t = model_cfg.front_end.tower.vision, model_cfg.text
    vision = dict(
        image_size=v.image_size, patch_size=v.patch_size, width=v.width, layers=v.depth,
        head_width=v.width // v.num_heads, mlp_ratio=(v.mlp_dim or 4 * v.width) / v.width,
    )  # fmt: skip
    text = dict(
        context_length=t.context_length, vocab_size=t.vocab_size, width=t.width, heads=t.num_heads, layers=t.depth,
        mlp_ratio=t.mlp_ratio,
    )  # fmt: skip
    return model_cfg.embed_dim, vision, text


def open_clip_optimizer(model: torch.nn.Module, optim) -> torch.optim.AdamW:
    """AdamW with a vidvlm config's ``optim`` settings (``fused`` too), grouped by open_clip's training script's rule:
    no weight decay on gains, biases (and other 1-D tensors) and ``logit_scale``."""
    no_wd = [p for n, p in model.named_parameters() if p.ndim < 2 or "ln" in n or "bias" in n or "logit_scale" in n]
    ids_no_wd = {id(p) for p in no_wd}
    rest = [p for p in model.parameters() if id(p) not in ids_no_wd]
    return torch.optim.AdamW(
        [{"params": no_wd, "weight_decay": 0.0}, {"params": rest, "weight_decay": optim.weight_decay}],
        lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, fused=optim.fused,
    )  # fmt: skip


def open_clip_update(model: torch.nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """Backward, optimiser step, ``zero_grad``, then ``logit_scale`` clamped as open_clip's training loop does."""
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))


def build_open_clip(batch: int, args: argparse.Namespace):
    """Model, step(b) and T (= 1) of open_clip at the size and optimiser settings of the 1-frame config."""
    require_open_clip()
    from open_clip.loss import ClipLoss
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    cfg, model_cfg = load_config(MATCHED)
    embed_dim, vision, text = open_clip_cfgs(model_cfg)
    model = CLIP(embed_dim, CLIPVisionCfg(**vision), CLIPTextCfg(**text), output_dict=True)
    model = model.to(args.device).train()
    opt = open_clip_optimizer(model, cfg.optim)
    loss_fn = ClipLoss(cache_labels=True)
    size, length, vocab = vision["image_size"], text["context_length"], text["vocab_size"]
    inputs = {}
    for b in {1, batch}:
        images = torch.randn(b, 3, size, size, device=args.device)
        inputs[b] = (images, torch.randint(1, vocab, (b, length), device=args.device))

    def step(b: int) -> None:
        images, ids = inputs[b]
        with autocast(args):
            out = model(images, ids)
            loss = sum(loss_fn(**out, output_dict=True).values())
        open_clip_update(model, opt, loss)

    return model, step, 1


def param_parts(name: str, model: torch.nn.Module) -> dict[str, int]:
    """Parameter counts by part: vision tower, text tower, the two projections and the temperature."""
    if name == "open_clip":
        parts = {"vision": ("visual.",), "proj": ("visual.proj", "text_projection"), "logit": ("logit_",)}
        extra = {"ln_pre": "visual.ln_pre."}
    else:
        parts = {"vision": ("front_end.",), "proj": ("video_proj.", "text_proj."), "logit": ("logit_",)}
        extra = {
            "patch_bias": "front_end.tower.patch_embed.proj.bias",
            "temporal_pos": "front_end.tower.pos_embed.temporal",
        }
    out = {"total": 0, "vision": 0, "text": 0, "proj": 0, "logit": 0}
    for n, p in model.named_parameters():
        part = "text"
        for key in ("proj", "logit", "vision"):  # projections first: open_clip's visual.proj is under visual.
            if n.startswith(parts[key]):
                part = key
                break
        out[part] += p.numel()
        out["total"] += p.numel()
        for key, prefix in extra.items():
            if n.startswith(prefix):
                out[key] = out.get(key, 0) + p.numel()
    return out


def _proc_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_baseline() -> int:
    """Reset the process's peak RSS to its current RSS (Linux ``/proc/self/clear_refs``) and return it in KiB.

    Without the reset (not Linux, or not permitted) the baseline is the lifetime peak (``ru_maxrss``), which a
    transient peak during imports or model building can hold above the step's, hiding part of its growth.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        rss = _proc_status_kib("VmRSS")
        if rss is not None:
            return rss
    except OSError:
        pass
    return peak_rss_kib()


def peak_rss_kib() -> int:
    """Peak resident set size since start or the last reset, in KiB."""
    import resource

    hwm = _proc_status_kib("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def measure(step, batch: int, warmup: int, steps: int, device: str, after_warmup=None) -> tuple[list[float], float]:
    """``warmup`` untimed steps of ``step(batch)``, then ``after_warmup()`` if given (untimed), then ``steps`` timed
    ones. Returns the seconds of each timed step and the peak memory growth in MiB: on CUDA
    ``max_memory_allocated`` over the timed steps above the allocation before them; on the CPU the peak RSS over all
    full-batch steps above the RSS after one batch-1 step (library start-up and optimiser state left out)."""
    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if not cuda:
        step(1)
        base = rss_baseline()
    for _ in range(warmup):
        step(batch)
    if after_warmup is not None:
        after_warmup()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for _ in range(steps):
        sync()
        start = time.perf_counter()
        step(batch)
        sync()
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else (peak_rss_kib() - base) / 1024
    return times, peak


def run_case(name: str, args: argparse.Namespace) -> dict:
    """Warm-up, then ``steps`` timed steps; seconds per step, peak memory (MiB) and parameter counts."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    builder = build_open_clip if name == "open_clip" else lambda b, a: build_vidvlm(name, b, a)
    model, step, frames = builder(args.batch, args)
    times, peak = measure(step, args.batch, args.warmup, args.steps, args.device)
    return {
        "name": name, "frames": frames, "times": times, "peak_mib": peak, "params": param_parts(name, model),
        "threads": torch.get_num_threads(),
    }  # fmt: skip


def interleaved(cases: list[str], rounds: int, run_one, keep: tuple[str, ...]) -> dict[str, dict]:
    """Runs ``run_one(name)`` for every case, round by round (so that drifting load hits all cases alike), and
    gathers per case the timed steps of every round (``times``), each round's ``peak_mib`` (``peaks``) and the
    ``keep`` keys of its last result."""
    results: dict[str, dict] = {c: {"times": [], "peaks": []} for c in cases}
    for r in range(rounds):
        for name in cases:
            res = run_one(name)
            entry = results[name]
            entry["times"] += res["times"]
            entry["peaks"].append(res["peak_mib"])
            entry.update({k: res[k] for k in keep})
            ms = statistics.median(res["times"]) * 1e3
            print(f"round {r} {name:16s} {ms:9.1f} ms/step  peak {res['peak_mib']:.0f} MiB", file=sys.stderr)
    return results


def case_runner(script: str, options: list[str], args: argparse.Namespace, run_case):
    """``run(name)`` for :func:`interleaved`: on the CPU, case ``name`` of ``script`` in a fresh process with
    ``options`` (so that its peak RSS is its own); on CUDA, ``run_case(name, args)`` in this process, then the cache
    emptied."""

    def run(name: str) -> dict:
        if args.device == "cpu":
            return run_in_subprocess(script, name, options, args.threads)
        res = run_case(name, args)
        torch.cuda.empty_cache()
        return res

    return run


def run_in_subprocess(script: str, name: str, options: list[str], threads: int | None) -> dict:
    """Run case ``name`` of a benchmark ``script`` in a fresh process (so its peak RSS is its own) and return the
    JSON its last output line holds; a failed case stops the benchmark with its error output."""
    cmd = [sys.executable, script, "--case", name, *options]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"case {name} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16: autocast, CUDA only")
    parser.add_argument("--cases", nargs="+", default=CASES, choices=CASES)
    parser.add_argument("--batch", type=int, default=None, help="samples per step (default: the configs' batch)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all cases")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per case per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per case per round")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    parser.add_argument("--markdown", help="append the table to this file")
    args = parser.parse_args()
    if args.dtype == "bf16" and args.device != "cuda":
        parser.error("--dtype bf16 is for --device cuda (bf16 autocast on CPU is not measured here)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    if args.batch is None:
        args.batch = load_config(MATCHED)[0].data.batch_size
    if args.case:
        print(json.dumps(run_case(args.case, args)))
        return
    if "open_clip" in args.cases:
        require_open_clip()  # fail before any measurement
    options = ["--dtype", args.dtype, "--batch", str(args.batch), "--steps", str(args.steps),
               "--warmup", str(args.warmup)]  # fmt: skip
    run_one = case_runner(__file__, options, args, run_case)
    results = interleaved(args.cases, args.rounds, run_one, ("frames", "params", "threads"))
    table = render(results, args)
    print(table)
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write(table + "\n")


def render(results: dict, args: argparse.Namespace) -> str:
    threads = next(iter(results.values()))["threads"]
    dev = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({threads} threads)"
    mem = "peak RSS growth" if args.device == "cpu" else "max_memory_allocated growth"
    lines = [
        f"Device: {dev}; dtype {args.dtype}; batch {args.batch}; median step of {args.rounds} rounds x "
        f"{args.steps} steps ({args.warmup} warm-up steps per round excluded); peak = {mem} of a training step.",
        "Step = forward + loss + backward + AdamW step + zero_grad on random inputs (images/clips [B,T,3,32,32], "
        "token ids [B,12]): decoding, augmentation and tokenisation excluded.",
        "",
        "| case | T | params | median step ms | samples/s | peak MiB | ratio vs open_clip |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, res in results.items():
        step = statistics.median(res["times"])
        mib = statistics.median(res["peaks"])
        ratio = ""
        peer = PEER_OF.get(name)
        if peer and peer in results:
            p = results[peer]
            speed = statistics.median(p["times"]) / step
            ratio = f"{speed:.2f}x samples/s, {mib / max(statistics.median(p['peaks']), 1e-9):.2f}x memory"
        elif name == "vidvlm-8f":
            ratio = "n/a: open_clip has no video (T = 8) model"
        elif name == "open_clip":
            ratio = "1.00x (reference)"
        lines.append(
            f"| {name} | {res['frames']} | {res['params']['total']:,} | {step * 1e3:.1f} | {args.batch / step:.0f} "
            f"| {mib:.1f} | {ratio} |"
        )
    lines += ["", "Parameters by part (vision tower | text tower | projections | logit scale):"]
    for name, res in results.items():
        p = res["params"]
        own = ", ".join(f"{k} {v:,}" for k, v in p.items() if k not in ("total", "vision", "text", "proj", "logit"))
        lines.append(
            f"- {name}: {p['vision']:,} | {p['text']:,} | {p['proj']:,} | {p['logit']:,} = {p['total']:,} "
            f"(only in this model: {own})"
        )
    lines.append(
        "  vidvlm's vision tower has a patch-embedding bias and a temporal position table (T' rows; 2 for the "
        "8-frame tubelets, whose 3D patch kernel is also 4x the 2D one) where open_clip has a LayerNorm before the "
        "blocks (ln_pre); the blocks, class token, spatial positions, final norms, text tower and bias-free "
        "projections match one for one."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
