"""Captioning quality on held-out synthetic clips, and decoding speed.

    OMP_NUM_THREADS=1 python benchmarks/bench_caption.py --model vidvlm/assets/default_captioner \
        --manifest /tmp/shapes32/test/manifest.jsonl [--num-frames 8] [--speed]

Quality: exact match, per-attribute accuracy (colour, shape, size, motion direction; read from the words of the
caption), BLEU-4 / ROUGE-L / CIDEr-D (``vidvlm.eval.caption_metrics``). Make the held-out clips with a seed never
used in training: ``python tools/make_synthetic.py --out /tmp/shapes32/test --num 400 --seed 12345 --frames 8
--size 32 --split test``. Speed: captions per second of greedy decoding (and beam 3) at batch 1 and 16 on
preprocessed clips (decoding of the video files excluded), median of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.utils.data import DataLoader

from vidvlm.data.collate import collate_video_text
from vidvlm.data.datasets import VideoTextDataset
from vidvlm.data.sampling import SamplerConfig, build_sampler
from vidvlm.data.synthetic import SHAPES_ATTRIBUTES
from vidvlm.eval.captions import caption_metrics
from vidvlm.models.decoding import DecodeConfig
from vidvlm.models.registry import load


def attribute_of(caption: str, name: str) -> str | None:
    words = caption.split()
    found = [v for v in SHAPES_ATTRIBUTES[name] if v in words]
    return found[0] if len(found) == 1 else None


def quality(model, manifest: str, num_frames: int, batch_size: int = 32) -> dict:
    with open(manifest) as f:
        rows = [json.loads(line) for line in f]
    sampler = build_sampler(SamplerConfig(name="uniform", num_frames=num_frames, short_policy="fewer"))
    ds = VideoTextDataset(manifest, sampler, model.transform, train=False)
    preds: dict[str, str] = {}
    for batch in DataLoader(ds, batch_size=batch_size, collate_fn=collate_video_text):
        texts = model.generate(batch["video"], batch["frame_mask"])
        for i, t in zip(batch["index"].tolist(), texts, strict=True):
            preds[str(i)] = t
    refs = {str(i): [r["caption"]] for i, r in enumerate(rows)}
    out = {"num": len(rows), "exact_match": sum(preds[k] == refs[k][0] for k in refs) / len(rows)}
    for name in SHAPES_ATTRIBUTES:
        out[f"acc_{name}"] = sum(
            attribute_of(preds[str(i)], name) == r["attributes"].get(name) for i, r in enumerate(rows)
        ) / len(rows)
    out.update({k: v for k, v in caption_metrics(refs, preds).items() if k != "num"})
    return out


def speed(model, num_frames: int, batch: int, decode: DecodeConfig, repeats: int) -> float:
    size = model.config.image_size
    video = torch.randn(batch, num_frames, 3, size, size)
    model.generate(video, decode=decode)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model.generate(video, decode=decode)
        times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--manifest", default=None)
    p.add_argument("--num-frames", type=int, default=None)
    p.add_argument("--speed", action="store_true")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.manual_seed(0)
    model = load(args.model).eval()
    n = args.num_frames or model.num_frames
    result: dict = {"model": args.model, "num_frames": n, "threads": torch.get_num_threads()}
    if args.manifest:
        result["quality"] = quality(model, args.manifest, n)
    if args.speed:
        fixed = dict(max_new_tokens=model.config.decode.max_new_tokens)
        for name, dec in (
            ("greedy", DecodeConfig("greedy", **fixed)),
            ("beam3", DecodeConfig("beam", num_beams=3, **fixed)),
        ):
            for b in (1, 16):
                result[f"captions_per_s_{name}_b{b}"] = round(speed(model, n, b, dec, args.repeats), 2)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
