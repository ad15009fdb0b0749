"""Rank extracted videos for a text query with a contrastive model (cosine of pooled features).

    python tools/search_features.py feats/ --model CKPT_DIR "a red square moves left" [--top 10]

``feats/`` is an output directory of tools/extract_features.py made at ``--level pooled`` with the same model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from vidvlm.errors import ConfigError, VidVLMError
from vidvlm.extract import extract_text_features, load_features
from vidvlm.extract.shards import SETTINGS


def search(out_dir: str, model: str, query: str, top: int = 10) -> list[tuple[float, str]]:
    """The ``top`` (score, source) pairs of ``out_dir`` for ``query``, best first."""
    settings = json.loads((Path(out_dir) / SETTINGS).read_text()) if (Path(out_dir) / SETTINGS).exists() else {}
    if settings.get("level") != "pooled":
        raise ConfigError(f"{out_dir}: search needs features extracted at --level pooled, got {settings.get('level')}")
    results = [r for r in load_features(out_dir) if r.ok]
    if not results:
        raise ConfigError(f"{out_dir}: holds no extracted features")
    videos = F.normalize(torch.stack([r.features for r in results]), dim=-1)  # [V, D]
    text = F.normalize(extract_text_features(model, [query]), dim=-1)  # [1, D]
    if text.shape[-1] != videos.shape[-1]:
        raise ConfigError(f"--model {model}: text features have {text.shape[-1]} dims but {out_dir} holds "
                          f"{videos.shape[-1]}; extract with the same model")  # fmt: skip
    scores = (videos @ text[0]).tolist()
    order = sorted(range(len(results)), key=lambda i: -scores[i])[:top]
    return [(scores[i], results[i].source) for i in order]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("features", help="output directory of tools/extract_features.py")
    p.add_argument("query", help="the text to search for")
    p.add_argument("--model", required=True, help="the vidvlm contrastive checkpoint used for extraction")
    p.add_argument("--top", type=int, default=10)
    args = p.parse_args(argv)
    try:
        hits = search(args.features, args.model, args.query, args.top)
    except VidVLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for rank, (score, source) in enumerate(hits, 1):
        print(f"{rank:3d}  {score:+.4f}  {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
