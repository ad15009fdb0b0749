"""Does a LLaVA-style model's caption likelihood follow the clip? A forced-choice test per attribute word.

    OMP_NUM_THREADS=2 python benchmarks/probe_lm_grounding.py --checkpoint runs/llava_tiny_ct/final \
        --manifest data/shapes_llava8s/test/manifest.jsonl [--num 100] [--offset 7]

For each single-shape clip of the manifest and each attribute (colour, shape, size, direction), the clip's reference
caption is scored by the model (teacher-forced LM loss of the answer, the ``caption_prompt`` as the question) once
with its attribute word and once with each other value of that attribute; the model "chooses" the lowest loss. The
same is done with another clip's video (the clip ``--offset`` places further in the list) in place of the true one.
Accuracy with the true video above accuracy with the other video is what the model reads from the clip; the two
equal means the word comes from the text alone. Chance is 1 / (number of values).

This separates "the tower does not hold it" (``benchmarks/probe_tower.py``) from "the LM does not read it": both
are diagnostics of one checkpoint, not benchmarks against a peer.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from vidvlm.data.datasets import VideoTextDataset
from vidvlm.data.sampling import UniformSampler
from vidvlm.data.synthetic import SHAPES_ATTRIBUTES
from vidvlm.errors import VidVLMError
from vidvlm.models.base import CHAT
from vidvlm.models.registry import load

ATTRIBUTES = ("color", "shape", "size", "direction")


def values_of(attribute: str) -> tuple[str, ...]:
    """The words one attribute takes in the generator's captions."""
    return SHAPES_ATTRIBUTES[attribute]


@torch.no_grad()
def caption_loss(model, caption: str, sample: dict) -> float:
    """Mean next-token loss of ``caption`` as the answer to the caption prompt about ``sample``'s clip: the family's
    own training loss on one caption sample."""
    batch = {"video": sample["video"][None], "timestamps": sample["timestamps"][None], "text": [caption]}
    return model(batch)["lm_loss"].item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a llava-family run's final/ (or checkpoint-*)")
    parser.add_argument("--manifest", type=Path, required=True, help="a scenes manifest with 'shapes' ground truth")
    parser.add_argument("--num", type=int, default=100, help="single-shape clips to use")
    parser.add_argument("--offset", type=int, default=7, help="the other clip: this many places further")
    args = parser.parse_args()
    try:
        model = load(args.checkpoint).eval()
        model.require(CHAT, "score captions with a caption prompt")
        dataset = VideoTextDataset(args.manifest, UniformSampler(model.num_frames), model.front_end.transform(False))
    except VidVLMError as e:
        raise SystemExit(f"error: {e}") from None
    keep = [i for i, row in enumerate(dataset.rows) if len(row.extra.get("shapes") or []) == 1][: args.num]
    if len(keep) < 2:
        raise SystemExit(f"error: {args.manifest}: fewer than two single-shape rows with a 'shapes' ground truth")
    hits = {(a, kind): 0 for a in ATTRIBUTES for kind in ("own", "other")}
    counts = dict.fromkeys(ATTRIBUTES, 0)
    for j, i in enumerate(keep):
        caption, truth = dataset.rows[i].captions[0], dataset.rows[i].extra["shapes"][0]
        samples = {"own": dataset[i], "other": dataset[keep[(j + args.offset) % len(keep)]]}
        for attribute in ATTRIBUTES:
            word, values = truth.get(attribute), values_of(attribute)
            if word not in values or not re.search(rf"\b{word}\b", caption):
                continue
            candidates = [re.sub(rf"\b{word}\b", v, caption, count=1) for v in values]
            counts[attribute] += 1
            for kind, sample in samples.items():
                losses = [caption_loss(model, c, sample) for c in candidates]
                hits[attribute, kind] += values[losses.index(min(losses))] == word
    print(f"{args.checkpoint}: forced choice of the attribute word in {len(keep)} single-shape captions")
    print("| attribute | clips | chance | own video | another clip's video |")
    print("|---|---|---|---|---|")
    for a in ATTRIBUTES:
        n = counts[a]
        if n:
            own, other = hits[a, "own"] / n, hits[a, "other"] / n
            print(f"| {a} | {n} | {1 / len(values_of(a)):.2f} | {own:.3f} | {other:.3f} |")


if __name__ == "__main__":
    main()
