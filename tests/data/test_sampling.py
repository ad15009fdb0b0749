"""Samplers against the published formulas of mmaction2 and against transformers' own sampler."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vidvlm.config import from_dict
from vidvlm.data.sampling import (
    AllFramesSampler,
    FpsSampler,
    SamplerConfig,
    StridedClipSampler,
    UniformSampler,
    build_sampler,
    window_metadata,
)
from vidvlm.errors import ConfigError


@dataclass(frozen=True)
class Meta:
    """Mirrors the fields of vidvlm.data.video.VideoMetadata (samplers read only metadata)."""

    path: str = "clip.mp4"
    backend: str = "test"
    num_frames: int = 1
    fps: float = 30.0
    duration: float = 0.0
    width: int = 64
    height: int = 64
    rotation: int = 0
    timestamps: tuple[float, ...] = (0.0,)


def cfr(n: int, fps: float = 30.0) -> Meta:
    return Meta(num_frames=n, fps=fps, duration=n / fps, timestamps=tuple(i / fps for i in range(n)))


# --- reference formulas, written from mmaction2's documented definitions (not installed here) ---------------


def mmaction_tsn_test(n_total: int, num_clips: int) -> np.ndarray:
    """SampleFrames(clip_len=1, num_clips=K, test_mode=True): off_k = k*N/K + N/(2K), truncated."""
    avg = n_total / float(num_clips)
    return (np.arange(num_clips) * avg + avg / 2.0).astype(int)


def mmaction_clips_test(n_total: int, clip_len: int, interval: int, num_clips: int) -> np.ndarray:
    """SampleFrames(clip_len>1, test_mode=True): M = max(N-(L-1)s-1, 0); K=1 -> M//2; else round(k*M/(K-1))."""
    max_off = max(n_total - (clip_len - 1) * interval - 1, 0)
    if num_clips > 1:
        offs = np.around(np.arange(num_clips) * (max_off / float(num_clips - 1))).astype(int)
    else:
        offs = np.array([max_off // 2])
    inds = offs[:, None] + np.arange(clip_len)[None, :] * interval
    return inds.reshape(-1)


def mmaction_out_of_bound(inds: np.ndarray, n_total: int, clip_len: int, opt: str) -> np.ndarray:
    """mmaction2's out_of_bound_opt: loop -> mod N; repeat_last -> the clip's last in-range index."""
    if opt == "loop":
        return np.mod(inds, n_total)
    clips = inds.reshape(-1, clip_len)
    safe = clips < n_total
    last = np.max(safe * clips, axis=1)
    return np.where(safe, clips, last[:, None]).reshape(-1)


@pytest.mark.parametrize("n_total", [1, 7, 8, 16, 37, 300, 1001])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_uniform_center_equals_mmaction_tsn(n_total: int, k: int) -> None:
    if n_total < k:
        return
    got = UniformSampler(k, anchor="center")(cfr(n_total))
    np.testing.assert_array_equal(got, mmaction_tsn_test(n_total, k))


def test_uniform_center_note_example() -> None:
    # notes §3: N=300, n=8 segment centres -> 18,56,93,131,168,206,243,281
    got = UniformSampler(8)(cfr(300))
    np.testing.assert_array_equal(got, [18, 56, 93, 131, 168, 206, 243, 281])


@pytest.mark.parametrize("n_total,n", [(300, 8), (16, 16), (17, 4), (1000, 7), (5, 1), (1, 1)])
def test_uniform_start_equals_transformers(n_total: int, n: int) -> None:
    from transformers.video_utils import VideoMetadata, default_sample_indices_fn

    ref = default_sample_indices_fn(VideoMetadata(total_num_frames=n_total, fps=30.0), num_frames=n)
    got = UniformSampler(n, anchor="start")(cfr(n_total))
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("n_total,clip_len,interval,k", [(300, 8, 4, 1), (300, 8, 4, 5), (40, 16, 2, 3), (33, 1, 1, 1)])
def test_strided_eval_equals_mmaction(n_total: int, clip_len: int, interval: int, k: int) -> None:
    got = StridedClipSampler(clip_len, interval, k)(cfr(n_total))
    np.testing.assert_array_equal(got, mmaction_clips_test(n_total, clip_len, interval, k))
    assert got.shape == (k * clip_len,)


@pytest.mark.parametrize("opt", ["loop", "repeat_last"])
@pytest.mark.parametrize("n_total,clip_len,interval,k", [(10, 8, 2, 1), (5, 8, 1, 3), (1, 4, 3, 2)])
def test_strided_short_equals_mmaction_out_of_bound(opt: str, n_total: int, clip_len: int, interval: int, k: int):
    got = StridedClipSampler(clip_len, interval, k, short_policy=opt)(cfr(n_total))
    raw = mmaction_clips_test(n_total, clip_len, interval, k)
    np.testing.assert_array_equal(got, mmaction_out_of_bound(raw, n_total, clip_len, opt))


def test_strided_fewer_drops_out_of_range() -> None:
    got = StridedClipSampler(8, 2, 2, short_policy="fewer")(cfr(10))
    np.testing.assert_array_equal(got, [0, 2, 4, 6, 8, 0, 2, 4, 6, 8])


def test_uniform_train_stays_in_segments_and_covers_them() -> None:
    n_total, n = 103, 8
    sampler = UniformSampler(n)
    rng = np.random.default_rng(0)
    draws = np.stack([sampler(cfr(n_total), rng) for _ in range(4000)])
    i = np.arange(n)
    lo, hi = i * n_total // n, (i + 1) * n_total // n
    assert (draws >= lo).all() and (draws < hi).all()
    for seg in range(n):  # every frame of each segment is reachable
        assert set(draws[:, seg]) == set(range(lo[seg], hi[seg]))


def test_uniform_subset_draw_spreads_each_place_over_the_video_and_keeps_evaluation() -> None:
    meta, n = cfr(16), 8
    segment, subset = UniformSampler(n), UniformSampler(n, draw="subset")
    draws = np.stack([subset(meta, np.random.default_rng(seed)) for seed in range(400)])
    assert ((np.diff(draws, axis=1) > 0) & (draws[:, 1:] < 16)).all()  # distinct frames, in order
    # A place's frame is no longer tied to its segment (2 frames wide): the first ranges over frames 0..8.
    assert draws[:, 0].min() == 0 and draws[:, 0].max() >= 5 and len(np.unique(draws[:, 3])) >= 6
    seg = np.stack([segment(meta, np.random.default_rng(seed)) for seed in range(400)])
    assert (seg // 2 == np.arange(n)).all()  # the default draw stays inside each segment
    np.testing.assert_array_equal(subset(meta), segment(meta))  # evaluation: the same centres
    with pytest.raises(ConfigError, match="draw"):
        UniformSampler(4, draw="random")
    assert build_sampler(from_dict(SamplerConfig, {"num_frames": 4, "draw": "subset"}, "t")).draw == "subset"


def test_uniform_train_matches_mmaction_support_when_divisible() -> None:
    # mmaction2 train (clip_len=1): avg = N // K, off_k = k*avg + U{0..avg-1}; equal to our segments when K | N
    n_total, k = 96, 8
    rng = np.random.default_rng(1)
    draws = np.stack([UniformSampler(k)(cfr(n_total), rng) for _ in range(3000)])
    avg = n_total // k
    for seg in range(k):
        assert set(draws[:, seg]) == set(range(seg * avg, seg * avg + avg))


def test_strided_train_random_start_range() -> None:
    sampler = StridedClipSampler(4, 3, 1)
    rng = np.random.default_rng(2)
    starts = {int(sampler(cfr(30), rng)[0]) for _ in range(2000)}
    assert starts == set(range(0, 30 - (3 * 3 + 1) + 1))


def test_fps_equals_transformers_on_cfr() -> None:
    from transformers.video_utils import VideoMetadata, default_sample_indices_fn

    for n_total, src, target in [(300, 30.0, 2.0), (240, 24.0, 1.0), (100, 25.0, 5.0), (90, 30.0, 30.0)]:
        ref = default_sample_indices_fn(VideoMetadata(total_num_frames=n_total, fps=src), fps=target)
        got = FpsSampler(target)(cfr(n_total, src))
        np.testing.assert_array_equal(got, ref, err_msg=f"N={n_total} src={src} target={target}")


def test_fps_on_variable_frame_rate_uses_timestamps() -> None:
    # 10 frames at 10 fps, a 2 s freeze, then 10 frames at 10 fps: 3 s of video.
    ts = tuple([i / 10 for i in range(10)] + [3.0 + i / 10 for i in range(10)])
    meta = Meta(num_frames=20, fps=20 / 4.0, duration=4.0, timestamps=ts)
    got = FpsSampler(2.0)(meta)  # targets 0, .5, 1, ..., 3.5
    expect = [0, 5, 9, 9, 9, 9, 10, 15]  # the frame on screen at each target time
    np.testing.assert_array_equal(got, expect)


def test_fps_window_and_limits() -> None:
    meta = cfr(300)  # 10 s
    got = FpsSampler(1.0, start=2.0, end=6.0)(meta)
    np.testing.assert_array_equal(got, [60, 90, 120, 150])
    assert len(FpsSampler(1.0, max_frames=4)(meta)) == 4
    np.testing.assert_array_equal(FpsSampler(1.0, start=8.0, end=100.0)(meta), [240, 270])  # end clamped to 10 s
    assert len(FpsSampler(0.1, min_frames=6)(meta)) == 6
    with pytest.raises(ConfigError):
        FpsSampler(1.0, start=3.0, end=2.0)


def test_window_metadata_offsets_any_sampler() -> None:
    meta = cfr(300)
    sub, offset = window_metadata(meta, 2.0, 4.0)
    assert (sub.num_frames, offset) == (60, 60)
    assert sub.timestamps[0] == 0.0 and sub.duration == pytest.approx(2.0)
    got = UniformSampler(4)(sub) + offset
    assert (got >= 60).all() and (got < 120).all()


@pytest.mark.parametrize(
    "policy,expect", [("repeat_last", [0, 1, 2, 2, 2]), ("loop", [0, 1, 2, 0, 1]), ("fewer", [0, 1, 2])]
)
def test_short_policies(policy: str, expect: list[int]) -> None:
    np.testing.assert_array_equal(UniformSampler(5, short_policy=policy)(cfr(3)), expect)


def test_one_frame_source() -> None:
    image = Meta(num_frames=1, fps=0.0, duration=0.0, timestamps=(0.0,))
    assert FpsSampler(2.0)(image).tolist() == [0]
    assert AllFramesSampler()(image).tolist() == [0]
    assert UniformSampler(8, short_policy="fewer")(image).tolist() == [0]
    assert UniformSampler(8)(image).tolist() == [0] * 8  # a fixed count was asked for
    assert StridedClipSampler(4, 2)(image, np.random.default_rng(0)).tolist() == [0] * 4


def test_all_frames_limit() -> None:
    np.testing.assert_array_equal(AllFramesSampler()(cfr(5)), np.arange(5))
    with pytest.raises(ConfigError, match="max_frames"):
        AllFramesSampler(max_frames=4)(cfr(5))


def test_build_sampler_from_config() -> None:
    cfg = from_dict(SamplerConfig, {"name": "strided", "clip_len": 4, "frame_interval": 2, "num_clips": 2}, "t")
    sampler = build_sampler(cfg)
    assert isinstance(sampler, StridedClipSampler)
    assert sampler(cfr(100)).shape == (8,)
    with pytest.raises(ConfigError):
        from_dict(SamplerConfig, {"name": "nope"}, "t")
    with pytest.raises(ConfigError):
        build_sampler(SamplerConfig(name="uniform", num_frames=0))


samplers = st.one_of(
    st.builds(
        UniformSampler,
        st.integers(1, 12),
        st.sampled_from(["center", "start"]),
        st.sampled_from(["repeat_last", "loop", "fewer"]),
        st.sampled_from(["segment", "subset"]),
    ),
    st.builds(
        StridedClipSampler,
        st.integers(1, 8),
        st.integers(1, 4),
        st.integers(1, 4),
        st.sampled_from(["repeat_last", "loop", "fewer"]),
    ),
    st.builds(
        FpsSampler,
        st.floats(0.1, 30.0),
        st.integers(1, 4),
        st.none(),
        short_policy=st.sampled_from(["repeat_last", "loop", "fewer"]),
    ),
)


@settings(max_examples=150, deadline=None)
@given(
    sampler=samplers,
    n_total=st.integers(1, 400),
    src_fps=st.floats(1.0, 60.0),
    seed=st.integers(0, 2**32 - 1),
    train=st.booleans(),
)
def test_property_range_count_determinism(sampler, n_total: int, src_fps: float, seed: int, train: bool) -> None:
    meta = cfr(n_total, src_fps)
    rng = (lambda: np.random.default_rng(seed)) if train else (lambda: None)
    a, b = sampler(meta, rng()), sampler(meta, rng())
    assert a.dtype == np.int64 and a.ndim == 1
    np.testing.assert_array_equal(a, b)  # deterministic given the seed
    assert len(a) >= 1 and (a >= 0).all() and (a < n_total).all()
    policy = sampler.short_policy
    if isinstance(sampler, UniformSampler):
        assert len(a) == (min(n_total, sampler.num_frames) if policy == "fewer" else sampler.num_frames)
        if n_total >= sampler.num_frames:
            assert (np.diff(a) > 0).all()  # one frame per segment, in order
    elif isinstance(sampler, StridedClipSampler):
        span = (sampler.clip_len - 1) * sampler.frame_interval + 1
        if policy != "fewer" or n_total >= span:
            assert len(a) == sampler.clip_len * sampler.num_clips
    elif policy != "loop":
        assert (np.diff(a) >= 0).all()  # time order (a held frame may repeat)
