"""X-FM's stop-gradient, with and without: does the language encoder stay a better language model, and what does
retrieval do? Also ITM re-ranking on the same held-out set.

Each row trains ``configs/xfm_tiny_8f_shapes.yaml`` through ``tools/train.py`` with the same seed, data and schedule
and one override (``model.stop_gradient=true`` / ``false``), ``--steps`` steps (warm-up a tenth of them), then
evaluates its ``final/`` model on the held-out manifest (``data.val``):

* ``mlm_heldout``: text-only masked language modelling on the held-out captions (text encoder + MLM head, no video):
  the mean cross-entropy over ``--mlm-draws`` fixed random 15 % maskings (the same maskings for every row);
* ``t2v_R@1`` (exact clip), ``t2v_caption_R@1`` (any clip with the query's caption), ``v2t_R@1`` from the ITC
  embeddings, and ``t2v_itm_R@1``: the top ``--rerank-k`` clips of each caption re-ranked by the ITM head.

    OMP_NUM_THREADS=1 python benchmarks/xfm_stop_gradient.py --steps 300 --out runs/xfm_stop_gradient --parallel

Rows run one after the other, or side by side with ``--parallel`` (one process each). A row is a single run (one
seed): differences within run-to-run noise mean nothing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "xfm_tiny_8f_shapes.yaml"
ROWS = {"stop_gradient": ["model.stop_gradient=true"], "no_stop_gradient": ["model.stop_gradient=false"]}


def train_command(name: str, args: argparse.Namespace) -> list[str]:
    out = Path(args.out) / name
    steps = args.steps
    overrides = [f"output_dir={out}", f"stages.0.steps={steps}", f"schedule.warmup_steps={max(1, steps // 10)}",
                 f"eval_every={steps}", f"checkpoint_every={steps}", "trackers=[]"]  # fmt: skip
    overrides += ROWS[name] + list(args.override)
    return [sys.executable, str(ROOT / "tools" / "train.py"), "--config", str(CONFIG), *overrides]


@torch.no_grad()
def heldout_mlm(model, captions: list[str], draws: int) -> float:
    """Mean text-only MLM cross-entropy over ``draws`` fixed 15 % maskings of ``captions``."""
    from vidvlm.layers.masking import mask_text
    from vidvlm.losses import mlm_loss

    ids, amask = model.tokenize(captions)
    tok = model.require_tokenizer()
    special = tuple(int(i) for i in tok.hf.all_special_ids)
    losses = []
    for seed in range(draws):
        g = torch.Generator().manual_seed(seed)
        masked, labels = mask_text(ids, amask, 0.15, model.mask_id, tok.vocab_size, special, generator=g)
        losses.append(float(mlm_loss(model.mlm_head(model.text(masked, amask)[0]), labels)))
    return sum(losses) / len(losses)


@torch.no_grad()
def evaluate(run: Path, args: argparse.Namespace) -> dict[str, float]:
    from torch.utils.data import DataLoader

    from vidvlm.data.collate import collate_video_text
    from vidvlm.data.datasets import VideoTextDataset
    from vidvlm.data.sampling import SamplerConfig, build_sampler
    from vidvlm.eval.rerank import VideoContexts, itm_rerank_metrics
    from vidvlm.eval.retrieval import embed_dataset, retrieval_metrics
    from vidvlm.models.registry import load
    from vidvlm.train.config import load_train_config
    from vidvlm.train.evaluation import caption_recall

    cfg = load_train_config(run / "train_config.yaml")
    model = load(run / "final").eval()
    sampler = build_sampler(SamplerConfig(name="uniform", num_frames=model.num_frames))
    dataset = VideoTextDataset(cfg.data.val.manifest, sampler, model.transform, train=False)
    loader = DataLoader(dataset, batch_size=32, collate_fn=collate_video_text)
    contexts = VideoContexts(model, loader)
    emb = embed_dataset(model, contexts)
    captions = [list(r.captions) for r in dataset.rows]
    flat = [c for per_clip in captions for c in per_clip]
    out = {"mlm_heldout": heldout_mlm(model, [c[0] for c in captions], args.mlm_draws)}
    ret = retrieval_metrics(emb["video"], emb["text"], emb["text_to_video"])
    out.update({k: ret[k] for k in ("t2v_R@1", "v2t_R@1")})
    out.update(caption_recall(emb["video"], emb["text"], captions))
    rerank = itm_rerank_metrics(model, contexts.gathered(), flat, emb["video"], emb["text"], emb["text_to_video"],
                                k=args.rerank_k)  # fmt: skip
    out.update({k: rerank[k] for k in ("t2v_itm_R@1", "t2v_itm_R@5", "t2v_R@5", "itm_k")})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", default="runs/xfm_stop_gradient")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--parallel", action="store_true", help="train the rows side by side")
    parser.add_argument("--mlm-draws", type=int, default=5)
    parser.add_argument("--rerank-k", type=int, default=16)
    parser.add_argument("--override", nargs="*", default=[], help="more key=value overrides for every row")
    parser.add_argument("--eval-only", action="store_true", help="evaluate the rows' existing runs")
    args = parser.parse_args()
    walls: dict[str, float] = {}
    if not args.eval_only:
        from vidvlm.train.config import load_train_config
        from vidvlm.train.data import ensure_synthetic

        ensure_synthetic(load_train_config(CONFIG, args.override))  # once, before rows race to write it
        procs = {}
        for name in args.rows:
            procs[name] = (time.perf_counter(), subprocess.Popen(train_command(name, args)))
            if not args.parallel:
                procs[name][1].wait()
                walls[name] = time.perf_counter() - procs[name][0]
        for name, (start, proc) in procs.items():
            if proc.wait():
                sys.exit(f"row {name} failed ({proc.returncode})")
            walls.setdefault(name, time.perf_counter() - start)
    results = {name: evaluate(Path(args.out) / name, args) for name in args.rows}
    for name in args.rows:
        results[name]["train_wall_s"] = walls.get(name, float("nan"))
    print(json.dumps(results, indent=1))
    keys = ["mlm_heldout", "t2v_R@1", "t2v_caption_R@1", "v2t_R@1", "t2v_itm_R@1", "t2v_R@5", "t2v_itm_R@5",
            "train_wall_s"]  # fmt: skip
    print("| row | " + " | ".join(keys) + " |\n|" + "---|" * (len(keys) + 1))
    for name, res in results.items():
        print(f"| {name} | " + " | ".join(f"{res.get(k, float('nan')):.3f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
