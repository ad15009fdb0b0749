"""The one clip reader: windows, sampling and decode size applied once, the same frames as the loops it replaced."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vidvlm.data.reader import decode_size, iter_clips, read_clips, transform_short_side
from vidvlm.data.sampling import (
    AllFramesSampler,
    FpsSampler,
    UniformSampler,
    clip_windows,
    equal_windows,
    segment_windows,
    window_metadata,
)
from vidvlm.data.synthetic import make_synthetic
from vidvlm.data.transforms import build_transform
from vidvlm.data.video import open_video
from vidvlm.errors import ConfigError, VideoDecodeError


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 64x64 clip of 24 frames at 8 fps (3 s) and a still."""
    root = tmp_path_factory.mktemp("reader")
    make_synthetic(root, 1, seed=4, frames=24, size=64, fps=8)
    make_synthetic(root, 1, seed=4, size=64, images=True, split="test", manifest_name="stills.jsonl")
    return root / "train_00000.mp4"


def test_windows_match_the_open_window_sample_decode_loop(clip: Path) -> None:
    windows = segment_windows(3.0, 1.0)
    assert windows == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)]
    sampler = UniformSampler(3)
    clips = read_clips(clip, sampler, windows)
    with open_video(clip) as video:
        for got, window in zip(clips, windows, strict=True):
            sub, offset = window_metadata(video.metadata, *window)
            idx = sampler(sub) + offset
            assert got.window == window and np.array_equal(got.indices, idx)
            assert torch.equal(got.frames, video.get_frames(idx))
            expect = torch.tensor(video.metadata.timestamps, dtype=torch.float64)[torch.from_numpy(idx)]
            assert got.timestamps.dtype == torch.float64 and torch.equal(got.timestamps, expect)
    assert [c.indices.tolist() for c in clips] == [[1, 4, 6], [9, 12, 14], [17, 20, 22]]


def test_equal_windows_tile_the_frames_like_clip_windows(clip: Path) -> None:
    with open_video(clip) as video:
        meta = video.metadata
        windows = equal_windows(meta, 3)
        assert clip_windows(24, 3) == [(0, 8), (8, 16), (16, 24)]
        assert windows == [(0.0, 1.0), (1.0, 2.0), (2.0, None)]
        clips = read_clips(video, UniformSampler(2), windows)
        assert [c.indices.tolist() for c in clips] == [[2, 6], [10, 14], [18, 22]]
        assert video.get_frames([0]).shape[0] == 1  # an opened Video is left open for the caller
    with pytest.raises(ConfigError, match="num_clips"):
        equal_windows(meta, 0)


def test_no_window_is_the_whole_video_and_rng_reaches_the_sampler(clip: Path) -> None:
    (whole,) = read_clips(clip, AllFramesSampler())
    assert whole.window == (None, None) and whole.indices.tolist() == list(range(24))
    a = read_clips(clip, UniformSampler(4), rng=np.random.default_rng(1))[0].indices
    b = read_clips(clip, UniformSampler(4), rng=np.random.default_rng(1))[0].indices
    draws = {tuple(read_clips(clip, UniformSampler(4), rng=np.random.default_rng(s))[0].indices) for s in range(6)}
    assert np.array_equal(a, b) and len(draws) > 1


def test_decode_size_shrinks_but_never_upscales(clip: Path) -> None:
    (small,) = read_clips(clip, UniformSampler(2), shrink_to=32)
    assert small.frames.shape == (2, 3, 32, 32)
    (native,) = read_clips(clip, UniformSampler(2), shrink_to=128)
    assert native.frames.shape == (2, 3, 64, 64)
    (exact,) = read_clips(clip, UniformSampler(2), size=(16, 24), shrink_to=32)
    assert exact.frames.shape == (2, 3, 16, 24)  # an explicit size wins
    with open_video(clip) as video:
        assert decode_size(video.metadata, None, 32) == 32 and decode_size(video.metadata, None, 64) is None
        assert decode_size(video.metadata, 48, 32) == 48 and decode_size(video.metadata) is None


def test_transform_short_side() -> None:
    assert transform_short_side(build_transform(32)) == 32
    assert transform_short_side(build_transform(32, resize_size=40)) == 40
    assert transform_short_side(build_transform(32, train=True)) is None  # a random crop: decode at native size
    assert transform_short_side(lambda video: video) is None


def test_iterating_holds_one_window_and_a_still_is_one_frame(clip: Path) -> None:
    it = iter_clips(clip, FpsSampler(2.0), segment_windows(3.0, 0.5))
    first = next(it)
    assert first.frames.shape[0] == 1 and first.window == (0.0, 0.5)
    assert len([first, *it]) == 6
    still = clip.parent / "test_00000.png"
    (one,) = read_clips(still, UniformSampler(8, short_policy="fewer"), equal_windows(open_video(still).metadata, 3))
    assert one.frames.shape[0] == 1 and one.timestamps.tolist() == [0.0]


def test_errors(clip: Path, tmp_path: Path) -> None:
    with pytest.raises(VideoDecodeError, match="missing.mp4: file does not exist"):
        read_clips(tmp_path / "missing.mp4", UniformSampler(2))
    for bad in (0, -1.0, math.nan, math.inf):
        with pytest.raises(ConfigError, match="segment: must be a finite number of seconds > 0"):
            segment_windows(3.0, bad)
    assert segment_windows(3.0, None) == [(None, None)]
    assert segment_windows(2.5, 1.0)[-1] == (2.0, 2.5)
