"""Boxes through the data path: manifest -> sampled frames -> transform (resize, crops, flip) -> collate."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from vidvlm.data.collate import collate_video_text
from vidvlm.data.datasets import VideoTextDataset
from vidvlm.data.sampling import UniformSampler
from vidvlm.data.synthetic import make_synthetic
from vidvlm.data.transforms import (
    CenterCrop,
    ClipTransform,
    Compose,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    build_transform,
)
from vidvlm.errors import ConfigError

NAN = math.nan


def test_geometry_hand_cases():
    video = torch.zeros(1, 3, 20, 40, dtype=torch.uint8)
    boxes = torch.tensor([[4.0, 2.0, 12.0, 8.0]])
    out, b = Resize(10).with_boxes(video, boxes)  # short side 20 -> 10: everything halves
    assert out.shape[-2:] == (10, 20) and b.tolist() == [[2.0, 1.0, 6.0, 4.0]]
    crop = CenterCrop(20)  # 40 wide -> columns 10..30
    _, b = crop.with_boxes(video.expand(2, -1, -1, -1), torch.tensor([[12.0, 3.0, 35.0, 9.0], [0.0, 0.0, 5.0, 5.0]]))
    assert b[0].tolist() == [2.0, 3.0, 20.0, 9.0] and bool(b[1].isnan().all())  # cut to the crop; cut away
    flip = RandomHorizontalFlip(p=1.0)
    _, b = flip.with_boxes(video, torch.tensor([[5.0, 2.0, 15.0, 8.0]]))
    assert b.tolist() == [[25.0, 2.0, 35.0, 8.0]]
    _, b = flip.with_boxes(video, torch.tensor([[NAN] * 4]))
    assert bool(b.isnan().all())

    class Blur(ClipTransform):
        def __call__(self, video, generator=None):
            return video

    with pytest.raises(ConfigError, match="^Blur: this transform cannot carry boxes"):
        Compose([Resize(10), Blur()]).with_boxes(video, boxes)


@pytest.mark.parametrize("seed", range(6))
def test_random_crop_moves_the_box_with_the_pixels(seed):
    """A white rectangle's extent after one random resized crop is where its transformed box says (nearest
    interpolation, so edges stay sharp), and the clip equals what ``__call__`` makes with the same generator."""
    video = torch.zeros(2, 3, 48, 64, dtype=torch.uint8)
    video[:, :, 10:30, 20:44] = 255  # box [20, 10, 44, 30]
    crop = RandomResizedCrop(32, scale=(0.3, 0.9), ratio=(0.7, 1.4), interpolation="nearest")
    out, boxes = crop.with_boxes(
        video, torch.tensor([[20.0, 10.0, 44.0, 30.0]] * 2), torch.Generator().manual_seed(seed)
    )
    assert torch.equal(out, crop(video, torch.Generator().manual_seed(seed)))
    lit = out[0, 0] > 127
    if not bool(lit.any()):
        assert bool(boxes.isnan().all())
        return
    rows, cols = lit.any(1).nonzero()[:, 0], lit.any(0).nonzero()[:, 0]
    extent = torch.tensor([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=torch.float32)
    torch.testing.assert_close(boxes[0], extent, atol=1.0, rtol=0)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scenes")
    make_synthetic(root, 3, seed=0, frames=16, size=32, shapes=1)
    make_synthetic(root, 1, seed=0, frames=16, size=32, shapes=2, manifest_name="two.jsonl")
    make_synthetic(root, 1, seed=0, frames=16, size=32, manifest_name="plain.jsonl")
    return root


def _expected(row: dict, timestamps: torch.Tensor, fps: int = 8) -> torch.Tensor:
    """The manifest's boxes at the sampled frames as normalised cx, cy, w, h of a 32-pixel frame."""
    frames = [row["shapes"][0]["boxes"][round(float(t) * fps)] for t in timestamps]
    return torch.tensor([[(a + c) / 64, (b + d) / 64, (c - a) / 32, (d - b) / 32] for a, b, c, d in frames])


@pytest.mark.parametrize("decode_size", [None, 16])
def test_dataset_delivers_the_sampled_frames_boxes(scenes: Path, decode_size):
    """Boxes follow the sampled frames and a decode-time resize (16 px decoded, the transform back to 32)."""
    rows = [json.loads(x) for x in (scenes / "manifest.jsonl").read_text().splitlines()]
    ds = VideoTextDataset(scenes / "manifest.jsonl", UniformSampler(5), build_transform(32), decode_size=decode_size)
    for i, row in enumerate(rows):
        sample = ds[i]
        torch.testing.assert_close(sample["boxes"], _expected(row, sample["timestamps"]), atol=1e-5, rtol=0)


def test_training_crops_boxes_and_keeps_the_clip(scenes: Path):
    """With a random crop in training the clip is the same as without boxes (the same random draws) and every
    box lies inside the output frame."""
    transform = build_transform(32, train=True, scale=(0.5, 0.8))
    ds = VideoTextDataset(scenes / "manifest.jsonl", UniformSampler(4), transform, train=True, seed=3)
    sample = ds[0]
    finite = sample["boxes"][~sample["boxes"].isnan().any(1)]
    corners = torch.cat([finite[:, :2] - finite[:, 2:] / 2, finite[:, :2] + finite[:, 2:] / 2], 1)
    assert bool((corners >= -1e-6).all() and (corners <= 1 + 1e-6).all())
    ds.rows[0] = dataclasses.replace(ds.rows[0], extra={})  # the same row without boxes
    again = ds[0]
    assert "boxes" not in again and torch.equal(again["video"], sample["video"]) and again["text"] == sample["text"]


def test_rows_without_one_box_track_have_no_boxes_and_collate_pads_nan(scenes: Path):
    sampler, transform = UniformSampler(4), build_transform(32)
    two = VideoTextDataset(scenes / "two.jsonl", sampler, transform)[0]
    plain = VideoTextDataset(scenes / "plain.jsonl", sampler, transform)[0]
    assert "boxes" not in two and "boxes" not in plain
    assert "boxes" not in collate_video_text([plain, two])
    one = VideoTextDataset(scenes / "manifest.jsonl", sampler, transform)[0]
    short = {**one, "video": one["video"][:2], "timestamps": one["timestamps"][:2], "boxes": one["boxes"][:2]}
    batch = collate_video_text([one, short, plain])
    assert batch["boxes"].shape == (3, 4, 4)
    torch.testing.assert_close(batch["boxes"][0], one["boxes"])
    assert bool(batch["boxes"][1, 2:].isnan().all() and batch["boxes"][2].isnan().all())
    assert not bool(batch["boxes"][1, :2].isnan().any())


def test_malformed_boxes_name_the_row(tmp_path: Path, scenes: Path):
    row = json.loads((scenes / "manifest.jsonl").read_text().splitlines()[0])
    (tmp_path / "clip.mp4").symlink_to(scenes / row["path"])  # a manifest names files under its own folder
    row["path"] = "clip.mp4"
    for boxes, match in (([[1, 2, 3]] * 16, r"'boxes'\[\d+\] must be"), ([[0, 0, 4, 4]] * 3, "'boxes' has 3 entries")):
        (tmp_path / "m.jsonl").write_text(json.dumps({**row, "boxes": boxes}) + "\n")
        with pytest.raises(ConfigError, match=f"m.jsonl:1: {match}"):
            VideoTextDataset(tmp_path / "m.jsonl", UniformSampler(4), build_transform(32))[0]
