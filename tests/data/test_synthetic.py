"""The moving-shapes generator: deterministic, decodable, captions that match the pixels."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vidvlm.data.synthetic import (
    BACKGROUND_RGB,
    COLORS_RGB,
    SHAPES_ATTRIBUTES,
    all_captions,
    make_synthetic,
    sample_clip,
)
from vidvlm.data.video import open_video
from vidvlm.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("shapes"), 24, seed=5)


def read_rows(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text().splitlines()]


def foreground(frames: torch.Tensor) -> torch.Tensor:
    """bool [T,H,W]: pixels clearly brighter than the background in some channel."""
    return (frames.int().amax(dim=1) - max(BACKGROUND_RGB)) > 80


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path, shapes: Path) -> None:
    again = make_synthetic(tmp_path / "again", 24, seed=5)
    assert again.read_text() == shapes.read_text()
    for row in read_rows(shapes)[:5]:
        assert (tmp_path / "again" / row["path"]).read_bytes() == (shapes.parent / row["path"]).read_bytes()
    other = make_synthetic(tmp_path / "other", 24, seed=6)
    assert other.read_text() != shapes.read_text()
    val = make_synthetic(tmp_path / "val", 24, seed=5, split="val")
    assert [r["caption"] for r in read_rows(val)] != [r["caption"] for r in read_rows(shapes)]


def test_manifest_rows_and_captions_match_attributes(shapes: Path) -> None:
    rows = read_rows(shapes)
    assert len(rows) == 24
    vocab = set(all_captions())
    for r in rows:
        a = r["attributes"]
        assert set(a) == set(SHAPES_ATTRIBUTES)
        assert all(a[k] in SHAPES_ATTRIBUTES[k] for k in a)
        assert r["caption"] == f"a {a['size']} {a['color']} {a['shape']} moves {a['direction']}"
        assert r["caption"] in vocab
        assert r["label"] == SHAPES_ATTRIBUTES["direction"].index(a["direction"])
        assert (shapes.parent / r["path"]).is_file()
    assert len({r["caption"] for r in rows}) > 12  # varied


def test_clips_decode_and_pixels_match_caption(shapes: Path) -> None:
    axis_of = {"left": (0, -1), "right": (0, 1), "up": (1, -1), "down": (1, 1)}  # (0 = x, 1 = y), sign
    areas: dict[str, list[float]] = {"big": [], "small": []}
    for r in read_rows(shapes):
        with open_video(shapes.parent / r["path"]) as video:
            meta = video.metadata
            frames = video.get_frames(np.arange(meta.num_frames))
        assert (meta.num_frames, meta.width, meta.height) == (16, 64, 64)
        mask = foreground(frames)
        assert mask.flatten(1).any(dim=1).all(), "the shape is visible in every frame"
        ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
        count = mask.flatten(1).sum(1).float()
        cx = (mask * xs).flatten(1).sum(1) / count
        cy = (mask * ys).flatten(1).sum(1) / count
        axis, sign = axis_of[r["attributes"]["direction"]]
        along, across = (cx, cy) if axis == 0 else (cy, cx)
        steps = sign * torch.diff(along)
        assert (along[-1] - along[0]) * sign > 15, f"{r['caption']}: centroid moved {along[-1] - along[0]:.1f}"
        assert (steps > -0.5).all(), "moves monotonically in the captioned direction"
        assert (across.max() - across.min()) < 1.0, "no motion across the direction"
        # the colour: mean foreground RGB is nearest to the captioned colour
        rgb = (frames.float() * mask[:, None]).sum(dim=(0, 2, 3)) / mask.sum()
        nearest = min(COLORS_RGB, key=lambda c: float(((rgb - torch.tensor(COLORS_RGB[c])) ** 2).sum()))
        assert nearest == r["attributes"]["color"], f"{r['caption']}: mean colour {rgb.tolist()}"
        areas[r["attributes"]["size"]].append(float(count.mean()))
    assert min(areas["big"]) > max(areas["small"])


def test_middle_frame_does_not_reveal_direction() -> None:
    rng = np.random.default_rng(0)
    frames, size = 16, 64
    mids: dict[str, list[tuple[int, int]]] = {d: [] for d in SHAPES_ATTRIBUTES["direction"]}
    for _ in range(4000):
        clip = sample_clip(rng, frames, size)
        if clip.size != "big":
            continue
        side = round(0.34 * size)
        assert clip.x.min() >= 0 and clip.x.max() <= size - side and clip.y.min() >= 0 and clip.y.max() <= size - side
        mids[clip.direction].append((int(clip.x[frames // 2]), int(clip.y[frames // 2])))
    for axis in (0, 1):  # the same support and mean on both axes for every direction
        ranges = {d: (min(p[axis] for p in v), max(p[axis] for p in v)) for d, v in mids.items()}
        assert len(set(ranges.values())) == 1, ranges
        means = [np.mean([p[axis] for p in v]) for v in mids.values()]
        assert max(means) - min(means) < 1.0, means


def test_images_variant(tmp_path: Path) -> None:
    manifest = make_synthetic(tmp_path, 6, seed=1, images=True)
    for r in read_rows(manifest):
        assert "moves" not in r["caption"] and "direction" not in r["attributes"] and r["label"] == -1
        assert r["caption"] in all_captions(images=True)
        with open_video(tmp_path / r["path"]) as video:
            assert video.metadata.num_frames == 1
            assert foreground(video.get_frames([0])).any()


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="split"):
        make_synthetic("/nonexistent", 1, 0, split="nope")
    with pytest.raises(ConfigError, match="size"):
        make_synthetic("/nonexistent", 1, 0, size=31)


def test_cli_writes_manifest(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "tools" / "make_synthetic.py"), "--out", str(tmp_path), "--num", "3"]
    cmd += ["--seed", "2", "--frames", "20", "--size", "48"]
    subprocess.run(cmd, check=True, capture_output=True)
    rows = read_rows(tmp_path / "manifest.jsonl")
    assert len(rows) == 3 and all("path" in r and "caption" in r for r in rows)
    with open_video(tmp_path / rows[0]["path"]) as video:
        assert (video.metadata.num_frames, video.metadata.width) == (20, 48)


WRITE_SET = """
import sys
from vidvlm.data.synthetic import make_synthetic
make_synthetic(sys.argv[1], int(sys.argv[2]), 0, frames=16, size=32)
"""


def test_a_second_writer_of_a_set_never_exposes_a_partial_clip(tmp_path):
    """Training runs started together generate their data on first use. The second writer used to rewrite every
    clip in place (truncate, then encode), so a run already reading the set could meet a half-written file. Now each
    file is replaced whole: while another process rewrites the set, every clip keeps its full size."""
    out, num = tmp_path / "set", 40
    make_synthetic(out, num, 0, frames=16, size=32)
    clips = sorted(out.glob("*.mp4"))
    sizes = [p.stat().st_size for p in clips]
    inodes = [p.stat().st_ino for p in clips]
    writer = subprocess.Popen([sys.executable, "-c", WRITE_SET, str(out), str(num)])
    torn = polls = 0
    while writer.poll() is None:
        for path, size in zip(clips, sizes, strict=True):
            try:
                torn += path.stat().st_size != size
            except FileNotFoundError:
                torn += 1
        polls += 1
    assert writer.returncode == 0 and polls > 0
    assert torn == 0
    assert all(p.stat().st_ino != i for p, i in zip(clips, inodes, strict=True))  # the second writer replaced each
    assert sorted(p.name for p in out.iterdir()) == sorted([p.name for p in clips] + ["manifest.jsonl"])  # no .tmp
    (tmp_path / "plain").write_bytes(b"")  # the mode a plain open gives (the temporaries start at 0600)
    assert {p.stat().st_mode & 0o777 for p in clips} == {(tmp_path / "plain").stat().st_mode & 0o777}
