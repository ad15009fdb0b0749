"""What the pixels allow for "when": an oracle that reads each shape's position off the frames a model is given.

    python benchmarks/when_pixels.py --manifest data/shapes_llava8s/test/manifest.jsonl --sizes 32 48 --frames 8 16

For every timed event of a clip (a shape appears, disappears, starts or stops moving, or turns), the frames the
model's uniform sampler picks are decoded and resized as its evaluation transform does (bicubic, whole frame, to
S x S). Each shape is measured from its colour: per pixel, the share of the shape's colour over the background
(pixels nearer another palette colour count 0), summed into a coverage and a centroid per frame. The oracle knows
everything about the shape but the event frame k: its story, directions and step (1 px per frame at 48 px for the
LLaVA data), so it tries every k and keeps the one whose simulated positions (up to a common shift) and visibility
best match the measurements, answering k / fps (the mean time of tied frames). Its share within the questions'
0.5 s is a ceiling for any reader of those pixels; it is not a model.

Also printed, per setting: the centroid displacement between consecutive sampled frames of a visible shape when it
moved between them (true boxes) and when it rested, and the AUC of telling them apart by that displacement.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from vidvlm.data.datasets import path_in_folder
from vidvlm.data.sampling import SamplerConfig, build_sampler
from vidvlm.data.synthetic import BACKGROUND_RGB, COLORS_RGB
from vidvlm.data.synthetic_scenes import EVENT_OF_STORY, motion_step, story_path
from vidvlm.data.transforms import build_transform
from vidvlm.data.video import open_video
from vidvlm.errors import VidVLMError
from vidvlm.eval.qa import WHEN_TOLERANCE_S

STORY_OF_EVENT = {event: story for story, event in EVENT_OF_STORY.items()}


def coverage(frames: np.ndarray, color: str) -> np.ndarray:
    """float ``[T, H, W]``: the share of ``color`` in each pixel of ``frames`` float ``[T, H, W, 3]`` (0-255)."""
    bg = np.asarray(BACKGROUND_RGB, dtype=np.float64)
    palette = {name: np.asarray(rgb, dtype=np.float64) for name, rgb in COLORS_RGB.items()}
    c = palette[color] - bg
    alpha = np.clip(((frames - bg) @ c) / (c @ c), 0.0, 1.0)
    dist = {name: np.linalg.norm(frames - rgb, axis=-1) for name, rgb in palette.items()}
    nearest_other = np.min([d for name, d in dist.items() if name != color], axis=0)
    return np.where(dist[color] <= nearest_other, alpha, 0.0)


def measure(frames: np.ndarray, color: str) -> tuple[np.ndarray, np.ndarray]:
    """Coverage ``[T]`` and centroid ``[T, 2]`` (x, y in pixels; NaN where nothing is covered) of ``color``."""
    a = coverage(frames, color)
    mass = a.sum(axis=(1, 2))
    h, w = a.shape[1:]
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (a * xs).sum(axis=(1, 2)) / mass
        cy = (a * ys).sum(axis=(1, 2)) / mass
    return mass, np.stack([cx, cy], axis=-1)


def oracle_frame(
    mass: np.ndarray,
    centre: np.ndarray,
    sampled: np.ndarray,
    story: str,
    directions: tuple[str, ...],
    frames: int,
    step: int,
    scale: float,
) -> float:
    """The event frame (mean of the tied best) that best explains the measured coverage and centroids."""
    seen = mass > 0.5 * mass.max()
    costs = []
    for k in range(1, frames):
        pos, visible = story_path(story, directions, k, frames, step)
        pos, visible = pos[sampled] * scale, visible[sampled]
        mismatch = int((visible != seen).sum())
        both = visible & seen
        resid = centre[both] - pos[both]
        resid = resid - resid.mean(axis=0) if len(resid) else resid
        costs.append((mismatch, float((resid**2).sum())))
    best = min(costs)
    tied = [k for k, c in enumerate(costs, start=1) if c[0] == best[0] and np.isclose(c[1], best[1], atol=1e-6)]
    return float(np.mean(tied))


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a random positive scores above a random negative), ties counted half."""
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


def run(manifest: Path, size: int, num_frames: int, limit: int | None) -> dict:
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("events")][:limit]
    sampler = build_sampler(SamplerConfig(name="uniform", num_frames=num_frames))
    transform = build_transform(size, preset="none", train=False)
    hits, per_event, moved, rested = [], {}, [], []
    for row in rows:
        with open_video(path_in_folder(row["path"], manifest.parent, str(manifest))) as video:
            meta = video.metadata
            sampled = np.asarray(sampler(meta))
            clip = transform(video.get_frames(sampled))  # [T, 3, S, S] in 0..1
        pixels = rearrange(clip.double().numpy() * 255.0, "t c h w -> t h w c")
        step, _ = motion_step(meta.num_frames, meta.width)
        scale = size / meta.width
        shapes = row["shapes"]
        for i, shape in enumerate(shapes):
            mass, centre = measure(pixels, shape["color"])
            boxes = [shape["boxes"][f] for f in sampled]
            for a, b, ca, cb in zip(boxes, boxes[1:], centre, centre[1:], strict=False):
                if a is None or b is None:
                    continue
                (moved if a != b else rested).append(float(np.linalg.norm(cb - ca)))
            for event in (e for e in row["events"] if e["shape"] == i):
                story = STORY_OF_EVENT[event["event"]]
                directions = (shape["direction"], event["direction"]) if story == "turns" else (shape["direction"],)
                k = oracle_frame(mass, centre, sampled, story, directions, meta.num_frames, step, scale)
                ok = abs(k / meta.fps - event["time"]) <= WHEN_TOLERANCE_S + 1e-9
                hits.append(ok)
                per_event.setdefault(story, []).append(ok)
    moved_a, rested_a = np.asarray(moved), np.asarray(rested)
    return {
        "size": size,
        "frames": num_frames,
        "events": len(hits),
        "within_0.5": float(np.mean(hits)) if hits else float("nan"),
        **{story: float(np.mean(v)) for story, v in sorted(per_event.items())},
        "moved_px": float(np.median(moved_a)) if len(moved_a) else float("nan"),
        "rested_px": float(np.median(rested_a)) if len(rested_a) else float("nan"),
        "auc": auc(moved_a, rested_a),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 48])
    p.add_argument("--frames", type=int, nargs="+", default=[8, 16])
    p.add_argument("--limit", type=int, default=None, help="first N clips with events")
    args = p.parse_args()
    torch.set_num_threads(1)
    try:
        results = [run(args.manifest, s, f, args.limit) for f in args.frames for s in args.sizes]
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"error: {args.manifest}: cannot read the manifest: {e}") from None
    except VidVLMError as e:  # a video that does not decode, a path outside the manifest's folder: named already
        raise SystemExit(f"error: {e}") from None
    except KeyError as e:
        raise SystemExit(f"error: {args.manifest}: a row without the scenes' ground truth ({e})") from None
    keys = list(dict.fromkeys(k for r in results for k in r))
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in results:
        cells = [f"{r[k]:.3f}" if isinstance(r.get(k), float) else str(r.get(k, "—")) for k in keys]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
