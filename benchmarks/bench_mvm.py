"""Masked video modelling cost: vidvlm's video ViT encoding only the visible tokens of a 90 % tube mask against the
same encoder on the full clip, and vidvlm's masked-video training step against transformers'
``VideoMAEForPreTraining`` at the same size and mask ratio.

Cases (``--cases``), all at one size (``--frames``, ``--size``, ``--patch``, ``--tubelet``, ``--width``,
``--depth``, ``--heads``; MLP 4 x width; decoder ``--decoder-width`` / ``--decoder-depth`` / ``--decoder-heads``):

* ``enc-full`` / ``enc-mask``: vidvlm's ``VideoViT`` (joint space-time attention) on every patch token, or on the
  ``1 - ratio`` share kept by a tube mask (``keep``: the visible tokens are gathered before the blocks). It adds a
  class token to every time step (``--no-class-token`` drops it, as VideoMAE has none); the token counts reported
  are patch tokens.
* ``mae-enc-full`` / ``mae-enc-mask``: transformers' ``VideoMAEModel`` (SDPA attention), the same, the mask given as
  ``bool_masked_pos`` (tube: the same positions hidden in every time step).
* ``mvm-vidvlm``: a training step of the masking family's ``mvm_loss`` (a ``flava`` model with only ``mvm`` on):
  tube mask, visible-token encoder, light decoder over every position, loss on the hidden tubelets' normalised pixels.
* ``mvm-videomae``: a training step of ``VideoMAEForPreTraining`` (``norm_pix_loss``) with the same tube mask.

One step = forward + loss + backward + AdamW step + ``zero_grad`` on random clips ``[B, T, 3, H, W]`` (the encoder
cases' loss is the mean square of the last hidden state). Each (case, round) runs in a fresh subprocess (its peak
RSS is its own), cases interleaved round by round; reported: the median step over all rounds, peak memory = peak RSS
growth over the timed steps above the RSS after a batch-1 step (``benchmarks/bench_train.py``'s measurement), and
the FLOPs of one step counted by ``torch.utils.flop_counter.FlopCounterMode`` (matrix products and attention).
``--in-process`` instead builds every case in one process and alternates single steps case by case (``--rounds``
times ``--steps``), so that all cases see the same background load; it reports time and FLOPs only.

    OMP_NUM_THREADS=1 python benchmarks/bench_mvm.py --threads 1 --rounds 3 --steps 3
    OMP_NUM_THREADS=1 python benchmarks/bench_mvm.py --threads 1 --in-process --rounds 10 --steps 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import measure, run_in_subprocess  # noqa: E402  (benchmarks/ is not a package)

CASES = ["enc-full", "enc-mask", "mae-enc-full", "mae-enc-mask", "mvm-vidvlm", "mvm-videomae"]
SIZE_ARGS = ("frames", "size", "patch", "tubelet", "width", "depth", "heads", "decoder_width", "decoder_depth",
             "decoder_heads", "ratio", "batch")  # fmt: skip


def vision_config(a: argparse.Namespace):
    from vidvlm.models.vision import VisionConfig

    return VisionConfig(
        image_size=a.size, patch_size=a.patch, width=a.width, depth=a.depth, num_heads=a.heads, layout="joint",
        num_tubelets=a.frames // a.tubelet, tubelet_size=a.tubelet, final_norm=True, class_token=a.class_token,
        pool="token" if a.class_token else "avg",
    )  # fmt: skip


def mae_config(a: argparse.Namespace):
    import transformers

    return transformers.VideoMAEConfig(
        image_size=a.size, patch_size=a.patch, num_frames=a.frames, tubelet_size=a.tubelet, hidden_size=a.width,
        num_hidden_layers=a.depth, num_attention_heads=a.heads, intermediate_size=4 * a.width,
        decoder_hidden_size=a.decoder_width, decoder_num_hidden_layers=a.decoder_depth,
        decoder_num_attention_heads=a.decoder_heads, decoder_intermediate_size=4 * a.decoder_width,
        norm_pix_loss=True, use_mean_pooling=False, attn_implementation="sdpa",
    )  # fmt: skip


def tube_mask(a: argparse.Namespace, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One tube mask in both forms: vidvlm's ``keep`` long ``[B, T', K]`` and VideoMAE's ``bool_masked_pos``
    ``[B, T' * N]`` (True = hidden, ``(t h w)`` order)."""
    from einops import rearrange

    from vidvlm.layers.masking import make_keep, visible_mask

    steps, n = a.frames // a.tubelet, (a.size // a.patch) ** 2
    keep = make_keep(batch, steps, n, a.ratio, "tube", generator=generator)
    return keep, rearrange(~visible_mask(keep, n), "b t n -> b (t n)")


def build(name: str, a: argparse.Namespace):
    """``(model, step(b), tokens)``: a training step at batch ``b`` and the encoder tokens per clip."""
    g = torch.Generator().manual_seed(0)
    inputs = {b: (torch.randn(b, a.frames, 3, a.size, a.size, generator=g), *tube_mask(a, b, g)) for b in {1, a.batch}}
    steps, n = a.frames // a.tubelet, (a.size // a.patch) ** 2
    visible = n - int(round(n * a.ratio))
    masked = name.endswith("mask") or name.startswith("mvm")
    if name.startswith("enc"):
        from vidvlm.models.vision import VideoViT

        model = VideoViT(vision_config(a))

        def forward(b):
            video, keep, _ = inputs[b]
            out = model(video, keep=keep if masked else None)
            return out.last_hidden_state.float().pow(2).mean()

    elif name.startswith("mae-enc"):
        import transformers

        model = transformers.VideoMAEModel(mae_config(a))

        def forward(b):
            video, _, hidden = inputs[b]
            out = model(pixel_values=video, bool_masked_pos=hidden if masked else None)
            return out.last_hidden_state.float().pow(2).mean()

    elif name == "mvm-vidvlm":
        from vidvlm.models.frontend import FrontEndConfig, TowerConfig
        from vidvlm.models.masking import MaskingConfig, MaskingModel
        from vidvlm.models.text import TextConfig

        off = dict(itc_weight=0.0, itm_weight=0.0, mlm_weight=0.0, video_mlm_weight=0.0)
        cfg = MaskingConfig(
            front_end=FrontEndConfig(tower=TowerConfig(vision=vision_config(a)), num_frames=a.frames),
            text=TextConfig(vocab_size=64, context_length=8, width=32, depth=1, num_heads=2, causal=False),
            embed_dim=16, mvm_weight=1.0, mvm_ratio=a.ratio, decoder_width=a.decoder_width,
            decoder_depth=a.decoder_depth, decoder_heads=a.decoder_heads, **off,
        )  # fmt: skip
        model = MaskingModel(cfg)

        def forward(b):
            return model.mvm_loss(inputs[b][0], None)  # draws its own tube mask at mvm_ratio

    elif name == "mvm-videomae":
        import transformers

        model = transformers.VideoMAEForPreTraining(mae_config(a))

        def forward(b):
            video, _, hidden = inputs[b]
            return model(pixel_values=video, bool_masked_pos=hidden).loss

    else:
        raise ValueError(name)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step(b: int) -> None:
        forward(b).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return model, step, steps * (visible if masked else n)


def run_case(name: str, a: argparse.Namespace) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model, step, tokens = build(name, a)
    times, peak = measure(step, a.batch, a.warmup, a.steps, "cpu")
    counter = FlopCounterMode(display=False)
    with counter:
        step(a.batch)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"name": name, "times": times, "peak_mib": peak, "flops": counter.get_total_flops(), "tokens": tokens,
            "params": params, "threads": torch.get_num_threads()}  # fmt: skip


def interleaved(a: argparse.Namespace) -> dict:
    """Every case in this process; one untimed step each, then ``rounds x steps`` single steps, case by case."""
    from torch.utils.flop_counter import FlopCounterMode

    if a.threads:
        torch.set_num_threads(a.threads)
    built = {}
    for name in a.cases:
        torch.manual_seed(0)
        model, step, tokens = build(name, a)
        counter = FlopCounterMode(display=False)
        with counter:
            step(a.batch)
        params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        results = {"times": [], "peaks": [float("nan")], "flops": counter.get_total_flops(), "tokens": tokens,
                   "params": params, "threads": torch.get_num_threads()}  # fmt: skip
        built[name] = (step, results)
    for _ in range(a.rounds * a.steps):
        for step, res in built.values():
            start = time.perf_counter()
            step(a.batch)
            res["times"].append(time.perf_counter() - start)
    return {name: res for name, (_, res) in built.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=CASES, choices=CASES)
    for key, default in (("frames", 16), ("size", 64), ("patch", 8), ("tubelet", 2), ("width", 192), ("depth", 4),
                         ("heads", 3), ("decoder_width", 96), ("decoder_depth", 2), ("decoder_heads", 3),
                         ("batch", 4)):  # fmt: skip
        parser.add_argument("--" + key.replace("_", "-"), type=int, default=default)
    parser.add_argument("--no-class-token", dest="class_token", action="store_false",
                        help="vidvlm's tower without its per-step class token (VideoMAE has none)")  # fmt: skip
    parser.add_argument("--ratio", type=float, default=0.9, help="share of patch positions hidden (tube)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all cases")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per case per round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per case per round")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--in-process", action="store_true", help="one process, steps interleaved (time only)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args)))
        return
    if args.in_process:
        print(render(interleaved(args), args))
        return
    options = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in SIZE_ARGS]
    options += [] if args.class_token else ["--no-class-token"]
    options += [f"--steps={args.steps}", f"--warmup={args.warmup}"]
    results: dict[str, dict] = {c: {"times": [], "peaks": []} for c in args.cases}
    for r in range(args.rounds):
        for name in args.cases:
            res = run_in_subprocess(__file__, name, options, args.threads)
            entry = results[name]
            entry["times"] += res["times"]
            entry["peaks"].append(res["peak_mib"])
            entry.update({k: res[k] for k in ("flops", "tokens", "params", "threads")})
            ms = statistics.median(res["times"]) * 1e3
            print(f"round {r} {name:13s} {ms:9.1f} ms/step  peak {res['peak_mib']:.0f} MiB", file=sys.stderr)
    print(render(results, args))


PAIRS = [("enc-mask", "enc-full"), ("mae-enc-mask", "mae-enc-full"), ("mvm-vidvlm", "mvm-videomae"),
         ("enc-mask", "mae-enc-mask"), ("enc-full", "mae-enc-full")]  # fmt: skip


def render(results: dict, a: argparse.Namespace) -> str:
    med = {n: (statistics.median(r["times"]), statistics.median(r["peaks"]), r["flops"]) for n, r in results.items()}
    threads = next(iter(results.values()))["threads"]
    lines = [
        f"CPU ({threads} threads); batch {a.batch}, {a.frames} frames of {a.size}x{a.size}, patch {a.patch}, tubelet "
        f"{a.tubelet}, width {a.width}, depth {a.depth}, heads {a.heads}, decoder {a.decoder_width}/{a.decoder_depth}"
        f"/{a.decoder_heads}; vidvlm class token {'on' if a.class_token else 'off'}; tube ratio {a.ratio}; median "
        f"step of {a.rounds} rounds x {a.steps} steps.",
        "",
        "| case | encoder tokens / clip | trained params | median step ms | peak MiB | GFLOP / step |",
        "|---|---|---|---|---|---|",
    ]
    for name, res in results.items():
        step, mib, flops = med[name]
        row = [name, res["tokens"], res["params"], f"{step * 1e3:.1f}", f"{mib:.1f}", f"{flops / 1e9:.2f}"]
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    lines += ["", "| ratio | time | peak memory | FLOPs |", "|---|---|---|---|"]
    for x, y in PAIRS:
        if x in med and y in med:
            tx, mx, fx = med[x]
            ty, my, fy = med[y]
            lines.append(f"| {x} / {y} | {tx / ty:.3f} | {mx / max(my, 1e-9):.3f} | {fx / max(fy, 1):.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
