"""Does an early-fusion model write the clip its caption asks for? A closed loop on held-out captions.

For each caption of a held-out manifest the model writes a clip (``EarlyFusion.generate_video``: visual ids after the
caption, then the pixel decoder). A reader that never saw a generated clip (default: the embedded default captioner)
captions it, and each attribute of the reader's caption (colour, shape, size, direction) is compared with the
prompt's. Two yardsticks come from the same reader: the real clips, and the model's reconstructions of them (the
tokenizer's own ids through the pixel decoder: the most a written clip can show).

    python benchmarks/early_fusion_generation.py --model runs/s35_ef_text_first/final \
        --manifest /tmp/shapes32/test/manifest.jsonl [--num 200] [--reader vidvlm/assets/default_captioner]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_caption import attribute_of  # noqa: E402

from vidvlm.captioning import DEFAULT_MODEL_DIR  # noqa: E402
from vidvlm.data.collate import collate_video_text  # noqa: E402
from vidvlm.data.datasets import VideoTextDataset  # noqa: E402
from vidvlm.data.sampling import SamplerConfig, build_sampler  # noqa: E402
from vidvlm.data.synthetic import SHAPES_ATTRIBUTES  # noqa: E402
from vidvlm.data.transforms import NORMALIZE_PRESETS  # noqa: E402
from vidvlm.models.registry import load  # noqa: E402


def to_uint8(frames: torch.Tensor, preset: str) -> torch.Tensor:
    """Normalised ``[B, T, 3, s, s]`` -> uint8 pixels."""
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in NORMALIZE_PRESETS[preset])
    return ((frames * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)


def read(reader, clips: torch.Tensor) -> list[str]:
    """Caption uint8 clips ``[B, T, 3, s, s]`` with the reader (through its own transform)."""
    video = torch.stack([reader.transform(c) for c in clips])
    return reader.generate(video)


def agreement(said: list[str], asked: list[str]) -> dict[str, float]:
    """Share of clips whose read caption names the asked value of each attribute (and the whole caption)."""
    out = {"exact": sum(s == a for s, a in zip(said, asked, strict=True)) / len(asked)}
    for name in SHAPES_ATTRIBUTES:
        out[name] = sum(attribute_of(s, name) == attribute_of(a, name) for s, a in zip(said, asked, strict=True)) / len(
            asked
        )
    return {k: round(v, 3) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="an early_fusion checkpoint trained with text_first > 0")
    parser.add_argument("--manifest", required=True, help="held-out clips with their captions")
    parser.add_argument("--num", type=int, default=200)
    parser.add_argument("--reader", default=str(DEFAULT_MODEL_DIR), help="the captioner that reads the clips")
    parser.add_argument("--batch-size", type=int, default=50)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, reader = load(args.model).eval(), load(args.reader).eval()
    preset = model.front_end.cfg.normalize
    sampler = build_sampler(SamplerConfig(name="uniform", num_frames=model.num_frames, short_policy="fewer"))
    ds = VideoTextDataset(args.manifest, sampler, model.transform, train=False)
    ds = torch.utils.data.Subset(ds, range(min(args.num, len(ds))))
    asked, written, rebuilt, real = [], [], [], []
    with torch.no_grad():
        for batch in DataLoader(ds, batch_size=args.batch_size, collate_fn=collate_video_text):
            captions = list(batch["text"])
            asked += captions
            frames, _ = model.generate_video(captions, num_frames=batch["video"].shape[1])
            written += read(reader, to_uint8(frames, preset))
            rebuilt += read(reader, to_uint8(model.reconstruct(batch["video"], batch["frame_mask"]), preset))
            real += read(reader, to_uint8(model.pixel_decoder.target(batch["video"]), preset))
    result = {
        "model": args.model,
        "reader": args.reader,
        "num": len(asked),
        "written from the caption": agreement(written, asked),
        "reconstruction of the real clip": agreement(rebuilt, asked),
        "real clip (at the pixel decoder's size)": agreement(real, asked),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
