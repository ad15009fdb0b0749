"""Training throughput (samples/s) and peak memory of the contrastive tiny recipe with token dropping (FLIP).

Cases (``--cases``): ``drop-0`` (every token: how every peer trains video CLIP), ``drop-50`` and ``drop-75``
(``front_end.token_drop`` with ratio 0.5 / 0.75, ``--kind`` random, tube or content): the model of
``configs/contrastive_tiny_8f_shapes.yaml`` (8 frames as two 4-frame tubelets of 8 x 8 patches, joint attention
over 2 x 65 tokens, 3 blocks of width 96; text 2 blocks of width 64), built as ``tools/train.py`` builds it, with
only ``model.front_end.token_drop`` changed. With dropping the tower gathers ``K = 32`` or ``16`` of each step's 64
patches before its blocks; the patch embedding still sees every pixel.

One training step = forward + loss + backward + AdamW step + ``zero_grad`` on random inputs (clips
``[B, 8, 3, 32, 32]``, token ids ``[B, 12]``; decoding, augmentation and tokenisation excluded), as in
``benchmarks/bench_train.py``, whose measurement it reuses: every (case, round) in a fresh subprocess, cases
interleaved round by round, the median step over all rounds; peak memory = the growth of peak RSS over the
full-batch steps above the RSS after one batch-1 step (a lower bound: memory the allocator kept is reused unseen).

    OMP_NUM_THREADS=1 python benchmarks/bench_token_drop.py --threads 1 --rounds 3 --steps 5

``--inference --kind content``: what a model trained with ``token_drop.at_eval`` saves at inference, the clips'
embeddings (``encode_video``) in eval mode under ``no_grad``, every token (drop-0) against the content-chosen half
or quarter (content scoring included).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import interleaved, load_config, measure, run_in_subprocess  # noqa: E402  (benchmarks/ is not a package)

CONFIG = "vidvlm-8f"  # bench_train's name for configs/contrastive_tiny_8f_shapes.yaml
CASES = {"drop-0": 0.0, "drop-50": 0.5, "drop-75": 0.75}


def build(ratio: float, kind: str, batch: int, inference: bool = False):
    """Model and ``step(b)`` of the recipe with ``front_end.token_drop = {ratio, kind}`` (``inference``: the clips'
    embeddings in eval mode under ``no_grad``, with ``at_eval`` where tokens are dropped)."""
    from vidvlm.models.registry import build_model
    from vidvlm.train.optim import apply_stage_trainable, build_optimizer

    cfg, model_cfg = load_config(CONFIG)
    data = dict(cfg.model)
    drop = {"ratio": ratio, "kind": kind, **({"at_eval": True} if inference and ratio > 0 else {})}
    data["front_end"] = {**data["front_end"], "token_drop": drop}
    model = build_model(data).train()
    stage = cfg.stages[0]
    apply_stage_trainable(model, stage)
    opt = build_optimizer(model, cfg.optim, stage)
    size, length, vocab = model.front_end.image_size, model_cfg.text.context_length, model_cfg.text.vocab_size
    inputs = {}
    for b in {1, batch}:
        video = torch.randn(b, model.num_frames, 3, size, size)
        ids = torch.randint(1, vocab, (b, length))
        inputs[b] = ({"video": video, "text": [""] * b}, ids, torch.ones(b, length, dtype=torch.bool))

    if inference:
        model.eval()

        def embed(b: int) -> None:
            with torch.no_grad():
                model.encode_video(inputs[b][0]["video"])

        return model, embed

    def step(b: int) -> None:
        batch_dict, ids, mask = inputs[b]
        model.tokenize = lambda texts: (ids, mask)  # pre-made random ids instead of string tokenisation
        out = model(batch_dict)
        sum(v for k, v in out.items() if k.endswith("_loss")).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return model, step


def run_case(name: str, args: argparse.Namespace) -> dict:
    """Warm-up, then ``steps`` timed steps: seconds per step, peak memory (MiB), tokens the tower encoded."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, step = build(CASES[name], args.kind, args.batch, args.inference)
    seen = []
    model.front_end.tower.register_forward_hook(lambda m, a, o: seen.append(tuple(o.last_hidden_state.shape[1:3])))
    times, peak = measure(step, args.batch, args.warmup, args.steps, "cpu")
    steps, tokens = seen[-1]
    return {
        "name": name, "times": times, "peak_mib": peak, "tokens": steps * tokens,
        "threads": torch.get_num_threads(),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--kind", default="random", choices=["random", "tube", "content"], help="token_drop.kind")
    parser.add_argument("--batch", type=int, default=None, help="samples per step (default: the config's batch)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all cases")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per case per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per case per round")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--inference", action="store_true",
                        help="time the clips' embedding in eval mode (no_grad) instead of a training step; with "
                             "--kind content the dropped cases set at_eval")  # fmt: skip
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = parser.parse_args()
    if args.inference and args.kind != "content":
        parser.error("--inference: only --kind content selects tokens at evaluation (at_eval)")
    if args.batch is None:
        args.batch = load_config(CONFIG)[0].data.batch_size
    if args.case:
        print(json.dumps(run_case(args.case, args)))
        return
    options = ["--kind", args.kind, "--batch", str(args.batch), "--steps", str(args.steps),
               "--warmup", str(args.warmup)] + (["--inference"] if args.inference else [])  # fmt: skip
    results = interleaved(
        args.cases, args.rounds, lambda name: run_in_subprocess(__file__, name, options, args.threads),
        ("tokens", "threads"),
    )  # fmt: skip
    print(render(results, args))


def render(results: dict, args: argparse.Namespace) -> str:
    threads = next(iter(results.values()))["threads"]
    ref = results.get("drop-0")
    lines = [
        f"CPU ({threads} threads); batch {args.batch}; token_drop.kind {args.kind}"
        f"{'; inference (eval-mode embedding, at_eval)' if args.inference else ''}; median step of {args.rounds} "
        f"rounds x {args.steps} steps ({args.warmup} warm-up steps per round excluded); peak = peak RSS growth.",
        "",
        "| case | tower tokens / clip | median step ms | samples/s | peak MiB | speed vs drop-0 | memory vs drop-0 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, res in results.items():
        step, mib = statistics.median(res["times"]), statistics.median(res["peaks"])
        speed = memory = ""
        if ref is not None:
            speed = f"{statistics.median(ref['times']) / step:.2f}x"
            memory = f"{mib / max(statistics.median(ref['peaks']), 1e-9):.2f}x"
        row = [name, res["tokens"], f"{step * 1e3:.1f}", f"{args.batch / step:.0f}", f"{mib:.1f}", speed, memory]
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
