"""Poolers: output sizes, frame-mask padding invariance, T = 1 behaviour, ToMe against a loop, token budgets."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vidvlm.config import from_dict, to_dict
from vidvlm.errors import ConfigError, VidVLMError
from vidvlm.layers.pooling import (
    MeanPooler,
    PoolerConfig,
    TemporalTransformerPooler,
    _tome,
    build_pooler,
    fit_token_budget,
    split_prefix_tokens,
)

D, P, H, W = 16, 1, 4, 4  # width, class tokens, patch grid
N = P + H * W

CONFIGS = {
    "meanP": {},
    "meanP_patch_mean": {"token": "mean", "num_prefix_tokens": P},
    "video_chatgpt": {"num_prefix_tokens": P},
    "adaptive3d": {"output_size": [2, 2, 2], "num_prefix_tokens": P},
    "spatial2d_avg": {"size": 2, "mode": "avg", "num_prefix_tokens": P},
    "spatial2d_max": {"size": [2, 3], "mode": "max", "num_prefix_tokens": P},
    "spatial2d_bilinear": {"size": 3, "mode": "bilinear", "num_prefix_tokens": P},
    "spatial2d_prefix": {"size": 2, "mode": "avg", "num_prefix_tokens": P, "keep_prefix": True},
    "slowfast_full": {"fast_size": 1, "slow_every": 2, "num_prefix_tokens": P, "keep_prefix": True},
    "slowfast_pooled": {"fast_size": 1, "slow_size": 2, "slow_every": 3, "num_prefix_tokens": P},
    "resampler": {"num_queries": 5, "depth": 2, "num_heads": 4, "max_frames": 8},
    "seqTransf": {"depth": 2, "num_heads": 4, "max_frames": 8},
    "tome_frame": {"r": 3, "steps": 2, "num_prefix_tokens": P},
    "tome_video": {"r": 7, "steps": 3, "scope": "video", "num_prefix_tokens": P},
}


def _build(key: str):
    name = key.split("_")[0] if key.startswith(("spatial2d", "slowfast", "tome", "meanP")) else key
    pooler = build_pooler(PoolerConfig(name, dict(CONFIGS[key])), D)
    torch.manual_seed(0)
    with torch.no_grad():  # random weights everywhere, so zero-initialised parts cannot hide a mask bug
        for p in pooler.parameters():
            p.normal_(0, 0.3)
    return pooler.eval()


def _tokens(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("key", list(CONFIGS))
def test_shape_matches_num_output_tokens(key):
    pooler = _build(key)
    for t in (1, 3):
        out = pooler(_tokens(2, t, N, D))
        assert out.shape == (2, pooler.num_output_tokens(t, N), D)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("key", list(CONFIGS))
def test_non_square_grid_and_odd_frame_counts(key):
    """A 3 x 5 patch grid (a wide frame) with T = 1, 3, 5: every pooler keeps its output-size contract; the grid-aware
    ones read the grid as given, so pooling a frame's left columns never mixes in its right ones."""
    gh, gw = 3, 5
    params = dict(CONFIGS[key])
    if key.startswith(("spatial2d", "slowfast", "adaptive3d")):
        params["grid"] = [gh, gw]
    name = key.split("_")[0] if key.startswith(("spatial2d", "slowfast", "tome", "meanP")) else key
    pooler = build_pooler(PoolerConfig(name, params), D).eval()
    n = P + gh * gw
    for t in (1, 3, 5):
        with torch.no_grad():
            out = pooler(_tokens(2, t, n, D, seed=t))
        assert out.shape == (2, pooler.num_output_tokens(t, n), D)
        assert torch.isfinite(out).all()
    if key == "spatial2d_avg":  # 3 x 5 -> 2 x 2 adaptive cells: rows {0,1},{1,2}; columns {0,1,2},{2,3,4}
        frame = _tokens(1, 1, n, D, seed=9)
        grid = frame[0, 0, P:].reshape(gh, gw, D)
        with torch.no_grad():
            out = pooler(frame)[0]
        torch.testing.assert_close(out[0], grid[0:2, 0:3].reshape(-1, D).mean(0))
        torch.testing.assert_close(out[3], grid[1:3, 2:5].reshape(-1, D).mean(0))


@pytest.mark.parametrize("key", list(CONFIGS))
def test_padded_frames_never_change_the_output(key):
    pooler = _build(key)
    short, long = _tokens(1, 2, N, D, seed=1), _tokens(1, 4, N, D, seed=2)
    garbage = 100 * _tokens(1, 2, N, D, seed=3)
    batch = torch.cat([torch.cat([short, garbage], dim=1), long])  # clip 0 padded from 2 to 4 frames
    mask = torch.tensor([[True, True, False, False], [True] * 4])
    with torch.no_grad():
        out = pooler(batch, mask)
        alone_short, alone_long = pooler(short), pooler(long)
    real = pooler.output_mask(mask, N)
    assert real.shape == out.shape[:2]
    torch.testing.assert_close(out[0][real[0]], alone_short[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], alone_long[0], atol=1e-5, rtol=1e-5)
    assert out[0][~real[0]].abs().sum() == 0  # padded slots are zeros


def test_meanP_is_the_mean_of_class_tokens_and_identity_at_T1():
    tokens = _tokens(2, 3, N, D)
    mask = torch.tensor([[True, False, True], [True, True, True]])
    out = MeanPooler(D)(tokens, mask)
    torch.testing.assert_close(out[0, 0], (tokens[0, 0, 0] + tokens[0, 2, 0]) / 2)
    torch.testing.assert_close(MeanPooler(D)(tokens[:, :1])[:, 0], tokens[:, 0, 0])
    per_frame = _tokens(2, 3, 1, D)  # a tower's per-frame embeddings [B, T, 1, D]
    torch.testing.assert_close(MeanPooler(D)(per_frame)[:, 0], per_frame[:, :, 0].mean(1))


def test_video_chatgpt_layout_and_T1():
    tokens = _tokens(1, 3, N, D)
    out = _build("video_chatgpt")(tokens)
    patches = tokens[:, :, P:]
    torch.testing.assert_close(out[0, :3], patches[0].mean(1))  # per-frame spatial means
    torch.testing.assert_close(out[0, 3:], patches[0].mean(0))  # per-patch temporal means
    one = _build("video_chatgpt")(tokens[:, :1])
    torch.testing.assert_close(one[0, 1:], patches[0, 0])


def _quadrant_means(frame: torch.Tensor) -> torch.Tensor:
    """[H*W, D] on a 4x4 grid -> the 4 means of its 2x2 quadrants, row-major, by explicit loops."""
    grid = frame.reshape(H, W, D)
    return torch.stack([grid[i : i + 2, j : j + 2].reshape(4, D).mean(0) for i in (0, 2) for j in (0, 2)])


def test_spatial2d_avg_max_bilinear_against_loops():
    tokens = _tokens(1, 2, N, D)
    frames = tokens[0, :, P:]
    avg = _build("spatial2d_avg")(tokens)
    torch.testing.assert_close(avg[0, :4], _quadrant_means(frames[0]))
    torch.testing.assert_close(avg[0, 4:], _quadrant_means(frames[1]))
    pooler = build_pooler(PoolerConfig("spatial2d", {"size": 2, "mode": "bilinear", "num_prefix_tokens": P}), D)
    # halving with align_corners=False samples the centre of each 2x2 block: the block mean
    torch.testing.assert_close(pooler(tokens)[0, :4], _quadrant_means(frames[0]))
    mx = build_pooler(PoolerConfig("spatial2d", {"size": 2, "mode": "max", "num_prefix_tokens": P}), D)(tokens)
    grid = frames[0].reshape(H, W, D)
    expect = torch.stack([grid[i : i + 2, j : j + 2].reshape(4, D).amax(0) for i in (0, 2) for j in (0, 2)])
    torch.testing.assert_close(mx[0, :4], expect)


def test_spatial2d_keep_prefix_puts_each_frames_class_token_before_its_grid():
    tokens = _tokens(2, 3, N, D)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    pooler = _build("spatial2d_prefix")
    out = pooler(tokens, mask)
    assert out.shape == (2, 3 * (P + 4), D) and pooler.num_output_tokens(3, N) == 3 * (P + 4)
    for t in range(3):
        block = out[0, t * (P + 4) : (t + 1) * (P + 4)]
        torch.testing.assert_close(block[:P], tokens[0, t, :P])  # the class token itself, untouched
        torch.testing.assert_close(block[P:], _quadrant_means(tokens[0, t, P:]))
    assert (out[1, P + 4 :] == 0).all()  # padded frames: zero tokens, and masked
    assert pooler.output_mask(mask, N).tolist()[1] == [True] * (P + 4) + [False] * 2 * (P + 4)
    assert pooler.token_steps(3, N).tolist() == [0] * (P + 4) + [1] * (P + 4) + [2] * (P + 4)
    with pytest.raises(ConfigError, match="keep_prefix: needs num_prefix_tokens >= 1"):
        build_pooler(PoolerConfig("spatial2d", {"size": 2, "keep_prefix": True}), D)


def test_slowfast_keeps_every_kth_step_fine_and_pools_the_rest():
    """Steps 0 and 2 of 4 (slow_every 2) are the whole grid after their class token, steps 1 and 3 one averaged
    cell after theirs; blocks in time order, and the steps, the mask and M say so. At T = 1 the image is slow."""
    tokens = _tokens(2, 4, N, D)
    mask = torch.tensor([[True] * 4, [True, True, True, False]])
    pooler = _build("slowfast_full")
    out = pooler(tokens, mask)
    slow, fast = P + H * W, P + 1
    assert out.shape == (2, 2 * slow + 2 * fast, D) and pooler.num_output_tokens(4, N) == out.shape[1]
    starts = [0, slow, slow + fast, 2 * slow + fast]
    for t, start in enumerate(starts):
        if t % 2 == 0:  # slow: the step's tokens as they are
            torch.testing.assert_close(out[0, start : start + slow], tokens[0, t])
        else:  # fast: class token, then the mean of the patches
            torch.testing.assert_close(out[0, start], tokens[0, t, 0])
            torch.testing.assert_close(out[0, start + 1], tokens[0, t, P:].mean(0))
    assert pooler.token_steps(4, N).tolist() == [0] * slow + [1] * fast + [2] * slow + [3] * fast
    assert pooler.output_mask(mask, N)[1].tolist() == [True] * (2 * slow + fast) + [False] * fast
    assert (out[1, starts[3] :] == 0).all()
    image = tokens[:, :1]
    torch.testing.assert_close(pooler(image), image[:, 0])  # T = 1: the image's own tokens, class token first
    pooled = _build("slowfast_pooled")  # slow steps 0 and 3 of 4 pooled to 2 x 2 (class token dropped)
    ref = build_pooler(PoolerConfig("spatial2d", {"size": 2, "num_prefix_tokens": P}), D)
    out = pooled(tokens)
    assert out.shape == (2, 4 + 1 + 1 + 4, D)
    torch.testing.assert_close(out[:, :4], ref(tokens[:, :1]))
    torch.testing.assert_close(out[:, 6:], ref(tokens[:, 3:4]))
    torch.testing.assert_close(out[:, 4], tokens[:, 1, P:].mean(1))
    with pytest.raises(ConfigError, match="slow_every: must be >= 1"):
        build_pooler(PoolerConfig("slowfast", {"slow_every": 0}), D)


def test_adaptive3d_time_and_space_and_T1():
    tokens = _tokens(1, 4, N, D)
    out = _build("adaptive3d")(tokens).reshape(2, 4, D)  # (t=2, h*w=4)
    frames = tokens[0, :, P:]
    torch.testing.assert_close(out[0], (_quadrant_means(frames[0]) + _quadrant_means(frames[1])) / 2)
    torch.testing.assert_close(out[1], (_quadrant_means(frames[2]) + _quadrant_means(frames[3])) / 2)
    image = _build("adaptive3d")(tokens[:, :1]).reshape(2, 4, D)
    torch.testing.assert_close(image[0], _quadrant_means(frames[0]))
    torch.testing.assert_close(image[1], image[0])  # T < t repeats the frame


def test_class_token_must_be_dropped_for_spatial_poolers():
    pooler = build_pooler(PoolerConfig("spatial2d", {"size": 2}), D)  # num_prefix_tokens forgotten: 17 tokens
    with pytest.raises(VidVLMError, match="num_prefix_tokens"):
        pooler(_tokens(1, 1, N, D))
    prefix, patches = split_prefix_tokens(_tokens(1, 2, N, D), P)
    assert prefix.shape == (1, 2, P, D) and patches.shape == (1, 2, H * W, D)


def test_seqTransf_starts_as_meanP_and_learns_away_from_it():
    tokens = _tokens(2, 3, N, D)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    pooler = TemporalTransformerPooler(D, depth=1, num_heads=4)
    torch.testing.assert_close(pooler(tokens, mask), MeanPooler(D)(tokens, mask))
    torch.nn.init.normal_(pooler.proj.weight)
    assert not torch.allclose(pooler(tokens, mask), MeanPooler(D)(tokens, mask))


def test_resampler_is_a_set_function_of_the_frame_tokens_at_T1():
    pooler = _build("resampler")
    tokens = _tokens(1, 1, N, D)
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(pooler(tokens), pooler(tokens[:, :, perm]), atol=1e-5, rtol=1e-5)


def test_learned_poolers_backprop_with_an_empty_clip():
    for key in ("resampler", "seqTransf"):
        pooler = _build(key).train()
        out = pooler(_tokens(2, 3, N, D), torch.tensor([[False] * 3, [True] * 3]))
        out.sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in pooler.parameters() if p.grad is not None)


def _tome_loop(tokens: list[torch.Tensor], sizes: list[float], r: int) -> tuple[list[torch.Tensor], list[float]]:
    """One ToMe bipartite matching step restated with Python lists."""
    a, b = list(range(0, len(tokens), 2)), list(range(1, len(tokens), 2))
    best = {}
    for i in a:
        sims = [F.cosine_similarity(tokens[i], tokens[j], dim=0).item() for j in b]
        best[i] = (max(sims), b[sims.index(max(sims))])
    merged = sorted(a, key=lambda i: -best[i][0])[:r]
    sums = {j: tokens[j] * sizes[j] for j in b}
    size_b = {j: sizes[j] for j in b}
    for i in merged:
        sums[best[i][1]] = sums[best[i][1]] + tokens[i] * sizes[i]
        size_b[best[i][1]] += sizes[i]
    kept = [i for i in a if i not in merged]
    return [tokens[i] for i in kept] + [sums[j] / size_b[j] for j in b], [sizes[i] for i in kept] + [
        size_b[j] for j in b
    ]


def test_tome_matches_a_loop_with_size_weighted_averages():
    x = _tokens(1, 10, 6)
    tokens, sizes = list(x[0]), [1.0] * 10
    for _ in range(3):
        tokens, sizes = _tome_loop(tokens, sizes, min(3, len(tokens) // 2))
    torch.testing.assert_close(_tome(x, r=3, steps=3)[0], torch.stack(tokens), atol=1e-5, rtol=1e-5)
    assert sum(sizes) == 10  # every input token is counted once
    dup = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 3.0]]])  # two identical pairs
    torch.testing.assert_close(_tome(dup, r=2, steps=1)[0], torch.tensor([[1.0, 0.0], [0.0, 2.0]]))


def test_tome_keeps_prefix_tokens():
    tokens = _tokens(1, 2, N, D)
    out = _build("tome_frame")(tokens)
    per_frame = out.shape[1] // 2
    torch.testing.assert_close(out[0, 0], tokens[0, 0, 0])
    torch.testing.assert_close(out[0, per_frame], tokens[0, 1, 0])


def test_fit_token_budget():
    assert fit_token_budget(1000, 16, 196) == (16, 7)  # 16 * 49 = 784 <= 1000 < 16 * 64
    assert fit_token_budget(1000, 16, 196, prefer="space") == (5, 14)
    assert fit_token_budget(100, 16, 196, min_side=3) == (11, 3)
    assert fit_token_budget(4000, 8, 196) == (8, 14)  # everything fits
    for budget in range(20, 3000, 37):
        for frames in (1, 4, 16, 32):
            for prefer in ("frames", "space"):
                t, s = fit_token_budget(budget, frames, 196, extra_tokens=10, prefer=prefer)
                assert 1 <= t <= frames and 1 <= s <= 14 and t * s * s + 10 <= budget
                if prefer == "frames" and t == frames and s < 14:
                    assert t * (s + 1) ** 2 + 10 > budget  # the largest grid that keeps every frame
    with pytest.raises(ConfigError, match="max_tokens"):
        fit_token_budget(3, 8, 196, min_side=2)


def test_config_and_builder_errors():
    cfg = from_dict(PoolerConfig, {"name": "spatial2d", "params": {"size": 3}}, where="model.pooler")
    assert to_dict(cfg) == {"name": "spatial2d", "params": {"size": 3}}
    assert build_pooler(cfg, D).num_output_tokens(8, 196) == 8 * 9
    with pytest.raises(ConfigError, match="pooler.name"):
        build_pooler(PoolerConfig("meanQ"), D)
    with pytest.raises(ConfigError, match="sizes"):
        build_pooler(PoolerConfig("spatial2d", {"sizes": 3}), D)
    with pytest.raises(ConfigError, match="mode"):
        build_pooler(PoolerConfig("spatial2d", {"mode": "median"}), D)
    assert math.prod((2, 2, 2)) == build_pooler(
        PoolerConfig("adaptive3d", {"output_size": [2, 2, 2]}), D
    ).num_output_tokens(5, 17)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("key", list(CONFIGS))
def test_cuda_bf16_matches_cpu_fp32(key):
    pooler = _build(key)
    tokens = _tokens(2, 3, N, D)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    with torch.no_grad():
        ref = pooler(tokens, mask)
        out = pooler.to("cuda", torch.bfloat16)(tokens.to("cuda", torch.bfloat16), mask.cuda())
    torch.testing.assert_close(out.float().cpu(), ref, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("key", list(CONFIGS))
def test_pooling_reads_the_device_only_where_the_output_depends_on_the_mask(key):
    """On the ``meta`` device (a read there stands for one that makes the host wait for a GPU): no pooler reads
    without a mask, nor with a mask given on the host; with a padded mask on the device, only the poolers whose
    output layout depends on each clip's real frames read it, once."""
    from tests.models.device_reads import META, DeviceReads

    pooler = _build(key).to(META)
    tokens = torch.randn(2, 4, N, D, device=META)
    mask = torch.tensor([[True, True, False, False], [True] * 4])
    counter = DeviceReads()
    with counter:
        pooler(tokens)
        pooler(tokens, mask)
    assert counter.reads == [] and counter.copies == [], (key, counter.reads, counter.copies)
    with counter:
        pooler(tokens, mask.to(META))
    expected = 1 if key in ("adaptive3d", "tome_video") else 0
    assert len(counter.reads) == expected, (key, counter.reads)
