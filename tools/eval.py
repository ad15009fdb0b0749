"""Evaluate a checkpoint on a manifest: text<->video retrieval, caption-variant accuracy, zero-shot classification.

    python tools/eval.py --checkpoint runs/contrastive_tiny_8f_shapes/final --manifest data/shapes/val/manifest.jsonl \
        --num-frames 8 --variant-words left right up down [--classes left right up down] [--out metrics.json]

The checkpoint is any directory ``vidvlm.load`` opens (``final/`` or a ``checkpoint-*`` of a run). Frames are taken
with a uniform sampler (deterministic) and the model's own evaluation transform. Prints the metrics as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vidvlm.errors import VidVLMError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a directory vidvlm.load opens")
    parser.add_argument("--manifest", required=True, help="JSONL or CSV manifest")
    parser.add_argument("--num-frames", type=int, default=None, help="frames per clip (default: the tower's)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variant-words", nargs="*", default=[], help="e.g. left right up down")
    parser.add_argument("--classes", nargs="*", default=[], help="zero-shot class names (manifest labels index them)")
    parser.add_argument("--templates", nargs="*", default=None, help="zero-shot prompt templates with {}")
    parser.add_argument("--out", default=None, help="also write the metrics to this JSON file")
    args = parser.parse_args(argv)
    try:
        import torch

        from vidvlm.data.datasets import VideoTextDataset
        from vidvlm.data.sampling import SamplerConfig, build_sampler
        from vidvlm.eval.retrieval import (
            DEFAULT_TEMPLATES,
            embed_dataset,
            retrieval_metrics,
            zero_shot_accuracy,
            zero_shot_classifier,
        )
        from vidvlm.models.base import EMBED_TEXT, EMBED_VIDEO
        from vidvlm.models.registry import load
        from vidvlm.train.evaluation import caption_recall, variant_accuracy

        model = load(args.checkpoint).to(args.device).eval()
        model.require(EMBED_VIDEO, "evaluate retrieval")
        model.require(EMBED_TEXT, "evaluate retrieval")
        frames = args.num_frames or model.num_frames
        sampler = build_sampler(SamplerConfig(name="uniform", num_frames=frames))
        dataset = VideoTextDataset(args.manifest, sampler, model.transform, train=False)
        with torch.no_grad():
            emb = embed_dataset(model, dataset, batch_size=args.batch_size, num_workers=args.num_workers)
            metrics = {"num_videos": len(dataset), "num_frames": frames}
            metrics.update(retrieval_metrics(emb["video"], emb["text"], emb["text_to_video"]))
            caps = [list(row.captions) for row in dataset.rows]
            metrics.update(caption_recall(emb["video"], emb["text"], caps))
            if args.variant_words:
                metrics.update(variant_accuracy(model, emb["video"], [c[0] for c in caps], args.variant_words))
            if args.classes:
                classifier = zero_shot_classifier(model, args.classes, args.templates or DEFAULT_TEMPLATES)
                keep = emb["labels"] >= 0
                zs = zero_shot_accuracy(emb["video"][keep], classifier, emb["labels"][keep])
                metrics.update({f"zero_shot_{k}": v for k, v in zs.items()})
    except VidVLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(metrics, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
