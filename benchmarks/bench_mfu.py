"""Training throughput and model FLOPs utilisation (MFU) of video CLIP at ViT-B/16 size, against open_clip.

Cases (``--cases``):

* ``vidvlm-8f``: the model of ``configs/contrastive_vitb16_8f_webvid.yaml`` (CLIP4Clip-style: a CLIP ViT-B/16 on
  each of 8 frames, the ``seqTransf`` temporal pooler, a CLIP text tower), built as ``tools/train.py`` builds it and
  trained as its long stage trains it (``unfreeze``: every part, AdamW with the config's groups). Its two towers
  are HF CLIP directories with random weights that this script writes (``--size``), since no CLIP weights are
  loaded here: the architecture and the work per step are the pretrained model's.
* ``vidvlm-1f``: the same model on one frame (an image batch; the temporal pooler sees one step).
* ``open_clip-8f``: the peer a user would pick instead: open_clip's ``CLIP`` at the same size, the clip's frames
  through its image tower as one batch of ``B*T`` images, their embeddings averaged (CLIP4Clip's meanP, which has
  no temporal blocks: vidvlm's ``seqTransf`` does a little more work), ``open_clip.loss.ClipLoss``, AdamW.

* ``vidvlm-8f-trainer``: ``vidvlm-8f`` through the trainer's own step (``Trainer._train_step``, as ``tools/train.py``
  runs it) on batches made beforehand in pinned host memory, as its loader delivers them: the copy to the device,
  per-step seeding, accelerate's autocast and clipping at the config's ``max_grad_norm``, the skip decision (the
  step's one read of the device) and the schedule. What training adds to the bare step, decoding aside; compared
  with ``vidvlm-8f`` in the same run (opt-in: ``--cases ... vidvlm-8f-trainer``).
* ``vidvlm-8f-drop50``, ``vidvlm-8f-drop75`` (``--token-drop 0.5 0.75``): ``vidvlm-8f`` with that share of each
  frame's patch tokens dropped before the tower's blocks (``front_end.token_drop``, ``--drop-kind``; FLIP's
  speed-up, compared with ``vidvlm-8f`` in the same interleaved run).

``--set`` overrides the vidvlm config (``model.front_end.pooler={name: meanP}`` makes the two models alike).

One training step = forward + loss + backward + AdamW step + ``zero_grad`` on random inputs (clips
``[B, T, 3, S, S]``, token ids ``[B, 77]``): decoding, augmentation and tokenisation are excluded, as in
``bench_train.py``, whose measurement this reuses (cases interleaved round by round; on the CPU every (case, round)
in a fresh subprocess; the median step over all rounds).

FLOPs: one untimed step of each case under ``torch.utils.flop_counter.FlopCounterMode`` (matrix products,
convolutions and the attention kernels, forward and backward; the optimiser's elementwise work is not counted).
With ``--grad-checkpointing`` the recomputed forward is counted too, so the figure is then the hardware FLOPs
(HFU) rather than the model's. On the CPU, SDPA's CPU kernel is not in torch's FLOP registry, so attention is left out
of the count there (a smoke, not a figure). MFU = counted FLOPs per step / median step time / the device's peak
(``--peak-tflops``; by default 989 TFLOP/s for H100 / H200 bf16 dense, 312 for A100 bf16; none on the CPU, where
only the achieved TFLOP/s is given).

    pip install --no-deps open_clip_torch ftfy wcwidth      # the peer (not a vidvlm dependency)
    python benchmarks/bench_mfu.py --device cuda --dtype bf16 --batch 32 --rounds 3 --steps 10
    OMP_NUM_THREADS=2 python benchmarks/bench_mfu.py --size tiny --rounds 1 --steps 2     # a CPU smoke
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import (  # noqa: E402
    autocast,
    case_runner,
    interleaved,
    measure,
    open_clip_optimizer,
    open_clip_update,
    vidvlm_step,
)

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs/contrastive_vitb16_8f_webvid.yaml"
CASES = ["open_clip-8f", "vidvlm-8f", "vidvlm-1f"]
OPTIONAL = ["vidvlm-8f-trainer"]  # run only when named in --cases
PEER_OF = {"vidvlm-8f": "open_clip-8f", "vidvlm-8f-trainer": "vidvlm-8f"}
SIZES = {  # HF CLIP vision / text configs and the shared embedding width
    "b16": {
        "vision": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       image_size=224, patch_size=16),
        "text": dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
                     max_position_embeddings=77, vocab_size=49408),
        "embed": 512,
    },
    "tiny": {
        "vision": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                       image_size=64, patch_size=16),
        "text": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                     max_position_embeddings=77, vocab_size=1000, bos_token_id=1, eos_token_id=2, pad_token_id=0),
        "embed": 32,
    },
}  # fmt: skip
PEAK_TFLOPS = {"bf16": {"H100": 989.0, "H200": 989.0, "A100": 312.0}}  # dense tensor-core peaks (vendor figures)
UNFREEZE = 1  # the config's long stage: every part trainable


def write_towers(size: str, root: Path) -> tuple[Path, Path]:
    """Random-weight HF CLIP vision and text models of ``size`` under ``root`` (the text one with a tokenizer, which
    the model loads although the steps use pre-made ids). Returns the two directories."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

    from vidvlm.models.tokenizer import TextTokenizer

    vision_dir, text_dir = root / "vision", root / "text"
    if not (vision_dir / "config.json").is_file():
        torch.manual_seed(0)
        CLIPVisionModel(CLIPVisionConfig(**SIZES[size]["vision"])).save_pretrained(vision_dir)
        CLIPTextModel(CLIPTextConfig(**SIZES[size]["text"])).save_pretrained(text_dir)
        TextTokenizer.train(["a red square moves left", "a blue circle"], kind="word").save(text_dir)
    return vision_dir, text_dir


def vidvlm_config(frames: int, args: argparse.Namespace, extra: list[str] | None = None):
    """The ViT-B/16 config (with ``--set``, then ``extra``) pointed at this script's towers, at ``frames`` frames."""
    from vidvlm.train.config import load_train_config, validate_model_config

    vision_dir, text_dir = write_towers(args.size, Path(args.workdir))
    spec = SIZES[args.size]
    overrides = [
        f"model.front_end.tower.source={vision_dir}", f"model.text.source={text_dir}", f"model.tokenizer={text_dir}",
        f"model.front_end.num_frames={frames}", f"model.front_end.image_size={spec['vision']['image_size']}",
        f"model.embed_dim={spec['embed']}", f"model.front_end.tower.vision.num_tubelets={frames}",
        f"model.front_end.tower.vision.grad_checkpointing={str(args.grad_checkpointing).lower()}",
        *args.set, *(extra or []),
    ]  # fmt: skip
    cfg = load_train_config(CONFIG, overrides)
    return cfg, validate_model_config(cfg, where=str(CONFIG))


def build_open_clip(batch: int, args: argparse.Namespace):
    """Model, step(b) and T of the peer: open_clip's CLIP at ``--size``, frames as images, meanP over time."""
    from open_clip.loss import ClipLoss
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    spec, frames = SIZES[args.size], 8
    v, t = spec["vision"], spec["text"]
    vision = CLIPVisionCfg(
        layers=v["num_hidden_layers"], width=v["hidden_size"], head_width=v["hidden_size"] // v["num_attention_heads"],
        mlp_ratio=v["intermediate_size"] / v["hidden_size"], patch_size=v["patch_size"], image_size=v["image_size"],
    )  # fmt: skip
    text = CLIPTextCfg(
        context_length=t["max_position_embeddings"], vocab_size=t["vocab_size"], width=t["hidden_size"],
        heads=t["num_attention_heads"], layers=t["num_hidden_layers"],
        mlp_ratio=t["intermediate_size"] / t["hidden_size"],
    )  # fmt: skip
    model = CLIP(spec["embed"], vision, text, quick_gelu=True).to(args.device).train()
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    opt = open_clip_optimizer(model, vidvlm_config(frames, args)[0].optim)  # the vidvlm case's settings
    loss_fn = ClipLoss(cache_labels=True)
    size, length = v["image_size"], t["max_position_embeddings"]
    inputs = {}
    for b in {1, batch}:
        clips = torch.randn(b * frames, 3, size, size, device=args.device)  # [B*T, 3, S, S]: frames as images
        inputs[b] = (clips, torch.randint(1, t["vocab_size"], (b, length), device=args.device))

    def step(b: int) -> None:
        clips, ids = inputs[b]
        with autocast(args):
            frame_emb = model.encode_image(clips, normalize=True)
            video = torch.nn.functional.normalize(frame_emb.unflatten(0, (b, frames)).mean(dim=1), dim=-1)
            loss = loss_fn(video, model.encode_text(ids, normalize=True), model.logit_scale.exp())
        open_clip_update(model, opt, loss)

    return model, step, frames


def drop_case(ratio: float) -> str:
    return f"vidvlm-8f-drop{round(ratio * 100)}"


def build_trainer_case(args: argparse.Namespace):
    """Model, step(b) and T of ``vidvlm-8f-trainer``: the trainer's step on pre-made batches (see the docstring)."""
    from vidvlm.models.registry import build_model
    from vidvlm.train.trainer import Trainer

    precision = "bf16" if args.dtype == "bf16" else "'no'"  # quoted: YAML reads a bare no as false
    run_dir = Path(args.workdir) / "trainer_case"
    cfg, model_cfg = vidvlm_config(8, args, [f"mixed_precision={precision}", f"output_dir={run_dir}", "data.val=null",
                                             "eval_every=0", "checkpoint_every=0",
                                             f"grad_checkpointing={str(args.grad_checkpointing).lower()}"])  # fmt: skip
    model = build_model(cfg.model)
    frames, size = model.num_frames, model.front_end.image_size
    vocab, length = model.text.model.config.vocab_size, model_cfg.text.context_length
    trainer = Trainer(cfg, model=model, datasets={"clips": list(range(args.batch))})  # the list is never read
    stage = cfg.stages[UNFREEZE]
    trainer.state.stage = UNFREEZE
    optimizer, scheduler = trainer._prepare_stage(stage, None)
    pin = args.device == "cuda"
    batches = {}
    for b in {1, args.batch}:
        ids = torch.randint(1, vocab, (b, length), device=args.device)
        tokens = (ids, torch.ones(b, length, dtype=torch.bool, device=args.device))
        video = torch.randn(b, frames, 3, size, size)
        batch = {
            "video": video.pin_memory() if pin else video, "frame_mask": torch.ones(b, frames, dtype=torch.bool),
            "text": [""] * b, "drawn_per_source": [b], "replaced_per_source": [0],
        }  # fmt: skip
        batches[b] = (batch, tokens)

    def step(b: int) -> None:
        batch, tokens = batches[b]
        model.tokenize = lambda texts: tokens  # pre-made random ids instead of string tokenisation
        trainer._train_step(stage, iter([dict(batch)]), optimizer, scheduler)  # the step pops the counts
        trainer.state.step += 1

    return model, step, frames


def build_case(name: str, args: argparse.Namespace):
    if name == "open_clip-8f":
        return build_open_clip(args.batch, args)
    if name == "vidvlm-8f-trainer":
        return build_trainer_case(args)
    extra = []
    if "-drop" in name:
        ratio = int(name.rsplit("-drop", 1)[1]) / 100
        extra = [f"model.front_end.token_drop={{ratio: {ratio}, kind: {args.drop_kind}}}"]
    cfg, model_cfg = vidvlm_config(1 if name == "vidvlm-1f" else 8, args, extra)
    return vidvlm_step(cfg, model_cfg, args.batch, args, stage_index=UNFREEZE)


def count_flops(step, batch: int) -> int:
    """FLOPs of one training step ``step(batch)`` (forward + backward), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step(batch)
    return int(counter.get_total_flops())


def run_case(name: str, args: argparse.Namespace) -> dict:
    """Warm-up, one counted step, then ``steps`` timed steps: seconds per step, peak memory (MiB), FLOPs."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, step, frames = build_case(name, args)
    counted = []
    if args.compile and name != "open_clip-8f":  # as ``compile: true`` in a config: every vidvlm block compiled
        from vidvlm.layers.transformer import compile_blocks

        counted.append(count_flops(step, args.batch))  # on an eager step: the counter cannot see into compiled code
        compile_blocks(model)
    times, peak = measure(
        step, args.batch, args.warmup, args.steps, args.device,
        lambda: counted or counted.append(count_flops(step, args.batch)),
    )  # fmt: skip
    flops = counted[0]
    params = sum(p.numel() for p in model.parameters())
    return {
        "name": name, "frames": frames, "times": times, "peak_mib": peak, "flops": flops, "params": params,
        "threads": torch.get_num_threads(),
    }  # fmt: skip


def peak_tflops(args: argparse.Namespace) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if args.device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_TFLOPS.get(args.dtype, {}).items() if k in name), None)


def render(results: dict, args: argparse.Namespace) -> str:
    threads = next(iter(results.values()))["threads"]
    dev = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({threads} threads)"
    peak = peak_tflops(args)
    flops_kind = "hardware FLOPs (recomputation counted)" if args.grad_checkpointing else "model FLOPs"
    lines = [
        f"Device: {dev}; dtype {args.dtype}; size {args.size}; batch {args.batch}; gradient checkpointing "
        f"{'on' if args.grad_checkpointing else 'off'}; vidvlm blocks {'compiled' if args.compile else 'eager'}; "
        f"median step of {args.rounds} rounds x {args.steps} steps "
        f"({args.warmup} warm-up steps per round excluded); FLOPs: {flops_kind} of one step, FlopCounterMode"
        f"{' (attention not counted on the CPU)' if args.device == 'cpu' else ''}; "
        f"peak {peak or 'not given'} TFLOP/s; overrides {args.set or 'none'}.",
        "",
        "| case | T | params | median step ms | samples/s | frames/s | GFLOP/step | TFLOP/s | MFU | peak MiB | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, res in results.items():
        step, mib = statistics.median(res["times"]), statistics.median(res["peaks"])
        achieved = res["flops"] / step / 1e12
        mfu = f"{achieved / peak:.1%}" if peak else "n/a"
        ratio = ""
        peer = "vidvlm-8f" if "-drop" in name else PEER_OF.get(name)
        if peer in results:
            p = results[peer]
            ratio = (
                f"{statistics.median(p['times']) / step:.2f}x samples/s, "
                f"{mib / max(statistics.median(p['peaks']), 1e-9):.2f}x memory vs {peer}"
            )
        row = [
            name, res["frames"], f"{res['params']:,}", f"{step * 1e3:.1f}", f"{args.batch / step:.1f}",
            f"{args.batch * res['frames'] / step:.0f}", f"{res['flops'] / 1e9:,.1f}", f"{achieved:.3g}", mfu,
            f"{mib:.0f}", ratio,
        ]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16: autocast, CUDA only")
    parser.add_argument("--size", default="b16", choices=sorted(SIZES), help="tower size (tiny: a CPU smoke)")
    parser.add_argument("--cases", nargs="+", default=CASES, help=f"of {CASES + OPTIONAL} (and the drop cases)")
    parser.add_argument("--batch", type=int, default=32, help="clips per step")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all cases")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per case per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per case per round")
    parser.add_argument("--token-drop", type=float, nargs="*", default=[], help="also these drop ratios (0-1)")
    parser.add_argument("--drop-kind", default="tube", choices=["random", "tube"], help="token_drop.kind")
    parser.add_argument("--grad-checkpointing", action="store_true", help="recompute the towers' blocks")
    parser.add_argument("--compile", action="store_true", help="compile vidvlm's transformer blocks (compile: true)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak for MFU")
    parser.add_argument("--set", nargs="*", default=[], help="KEY=VALUE overrides of the vidvlm config")
    parser.add_argument("--workdir", help="where the random-weight towers are written (default: a temp dir)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    parser.add_argument("--markdown", help="append the table to this file")
    args = parser.parse_args()
    if any(not 0 < r < 1 for r in args.token_drop):
        parser.error(f"--token-drop: ratios in (0, 1), got {args.token_drop}")
    drops = [drop_case(r) for r in args.token_drop]
    unknown = sorted(set(args.cases) - set(CASES) - set(OPTIONAL) - {n for n in args.cases if "-drop" in n})
    if unknown:
        parser.error(f"--cases: unknown {unknown} (choose from {CASES + OPTIONAL})")
    args.cases = list(dict.fromkeys([*args.cases, *drops]))
    if args.dtype == "bf16" and args.device != "cuda":
        parser.error("--dtype bf16 is for --device cuda (bf16 autocast on CPU is not measured here)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    if "open_clip-8f" in ([args.case] if args.case else args.cases):  # a case process checks only its own case
        try:
            import open_clip  # noqa: F401
        except ImportError as e:
            parser.error(f"open_clip is not installed ({e}): pip install --no-deps open_clip_torch ftfy wcwidth")
    if args.case:
        print(json.dumps(run_case(args.case, args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        args.workdir = args.workdir or tmp
        write_towers(args.size, Path(args.workdir))  # once, before any case reads them
        options = ["--size", args.size, "--batch", str(args.batch), "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--workdir", args.workdir, "--drop-kind", args.drop_kind,
                   *(["--grad-checkpointing"] if args.grad_checkpointing else []),
                   *(["--compile"] if args.compile else []), "--set", *args.set]  # fmt: skip
        run_one = case_runner(__file__, options, args, run_case)
        results = interleaved(args.cases, args.rounds, run_one, ("frames", "flops", "params", "threads"))
    table = render(results, args)
    print(table)
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
