"""Token masks: exact visible counts per time step, tube = the same positions in every step, gather/scatter, and
``content`` dropping's scores (hand-computed) and choice (the object stays, flat background goes)."""

from __future__ import annotations

import pytest
import torch

from vidvlm.errors import ConfigError
from vidvlm.layers.masking import (
    content_keep,
    content_scores,
    full_keep,
    gather_tokens,
    make_keep,
    num_visible,
    scatter_tokens,
    visible_mask,
)


@pytest.mark.parametrize("ratio, expected", [(0.0, 16), (0.5, 8), (0.75, 4), (0.9, 2), (0.99, 1)])
def test_num_visible(ratio, expected):
    assert num_visible(16, ratio) == expected


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_ratio_out_of_range_is_refused(bad):
    with pytest.raises(ConfigError, match="mask ratio"):
        num_visible(16, bad)


@pytest.mark.parametrize("kind", ["tube", "random"])
@pytest.mark.parametrize("steps", [1, 4])
def test_exact_count_per_step_sorted_and_distinct(kind, steps):
    g = torch.Generator().manual_seed(0)
    keep = make_keep(3, steps, 49, 0.9, kind, generator=g)
    assert keep.shape == (3, steps, 5) and keep.dtype == torch.long
    assert bool((keep[..., 1:] > keep[..., :-1]).all())  # ascending, hence distinct
    assert int(keep.min()) >= 0 and int(keep.max()) < 49
    assert (visible_mask(keep, 49).sum(-1) == 5).all()  # exactly 5 of 49 visible in every step of every clip


def test_tube_repeats_positions_random_does_not():
    g = torch.Generator().manual_seed(0)
    tube = make_keep(2, 4, 64, 0.75, "tube", generator=g)
    assert torch.equal(tube, tube[:, :1].expand_as(tube))
    assert not torch.equal(tube[0], tube[1])  # clips differ
    rand = make_keep(2, 4, 64, 0.75, "random", generator=g)
    assert not torch.equal(rand, rand[:, :1].expand_as(rand))


def test_unknown_kind_is_refused():
    with pytest.raises(ConfigError, match="mask kind"):
        make_keep(1, 1, 4, 0.5, "block")


def test_gather_then_scatter_round_trip():
    x = torch.randn(2, 3, 6, 4)
    assert torch.equal(gather_tokens(x, full_keep(2, 3, 6)), x)  # a 0 % mask keeps every token in order
    keep = make_keep(2, 3, 6, 0.5, "random", generator=torch.Generator().manual_seed(1))
    vis = gather_tokens(x, keep)
    assert vis.shape == (2, 3, 3, 4)
    assert torch.equal(vis[1, 2, 0], x[1, 2, keep[1, 2, 0]])
    fill = torch.full((4,), -7.0)
    full = scatter_tokens(vis, keep, 6, fill)
    shown = visible_mask(keep, 6)
    assert torch.equal(full[shown], x[shown])
    assert bool((full[~shown] == -7.0).all())
    with pytest.raises(ValueError, match="keep"):
        gather_tokens(x, keep[:, :2])


def test_content_scores_by_hand():
    """One channel, 4 x 4 frames of 2 x 2 patches (N = 4): patch 0 flat and static, patch 1 flat but +3 in frame 1,
    patch 2 static with values 0 / 2 (std 1), patch 3 flat 0 then the 0 / 2 texture in frame 2."""
    v = torch.zeros(1, 3, 1, 4, 4)
    v[0, 1, 0, :2, 2:] = 3.0  # patch 1 (top right), frame 1 only
    v[0, :, 0, 2, :2] = 2.0  # patch 2 (bottom left): top row 2, bottom row 0, every frame
    v[0, 2, 0, 2:, 2] = 2.0  # patch 3 (bottom right): left column 2 in frame 2
    frame = content_scores(v, tubelet_size=1, patch_size=2)
    # frame f: std of the patch + mean |change| to the neighbouring frames (averaged over the sides it has)
    expected = torch.tensor(
        [
            [0.0, 3.0, 1.0, 0.0],  # frame 0: patch 1 changes by 3 towards frame 1; patch 3 is still flat
            [0.0, 3.0, 1.0, 0.5],  # frame 1: (3 + 3) / 2; patch 3 changes by 1 on average towards frame 2
            [0.0, 3.0, 1.0, 2.0],  # frame 2: patch 1 back from 3; patch 3: std 1 + change 1
        ]
    )
    torch.testing.assert_close(frame[0], expected)
    steps = content_scores(torch.cat([v, v[:, -1:]], 1), tubelet_size=2, patch_size=2)  # 4 frames as 2 tubelets
    assert steps.shape == (1, 2, 4)
    torch.testing.assert_close(steps[0, 0], (expected[0] + expected[1]) / 2)
    image = content_scores(v[:, :1], tubelet_size=1, patch_size=2)  # one frame: contrast alone
    torch.testing.assert_close(image[0, 0], torch.tensor([0.0, 0.0, 1.0, 0.0]))


def _moving_square(batch: int = 2, frames: int = 4, side: int = 32, patch: int = 8) -> tuple[torch.Tensor, list]:
    """A bright square one patch wide moving right on a flat background, and the patch it covers per frame."""
    video = torch.full((batch, frames, 3, side, side), -1.0)
    where = []
    for f in range(frames):
        video[:, f, :, patch : 2 * patch, f * patch : (f + 1) * patch] = 1.0
        where.append(side // patch + f)  # row 1, column f
    return video, where


def test_content_keep_keeps_the_object_and_breaks_ties_at_random():
    video, where = _moving_square()
    scores = content_scores(video, tubelet_size=1, patch_size=8)
    keep = content_keep(scores, 0.75, generator=torch.Generator().manual_seed(0))
    assert keep.shape == (2, 4, 4) and bool((keep[..., 1:] > keep[..., :-1]).all())
    for f, patch in enumerate(where):
        assert bool((keep[:, f] == patch).any(-1).all()), f"frame {f}: the square's patch was dropped"
        if f > 0:  # where the square just left changes too
            assert bool((keep[:, f] == where[f - 1]).any(-1).all())
    other = content_keep(scores, 0.75, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(keep, other)  # the flat background's ties fall differently
    assert (visible_mask(other, 16).sum(-1) == 4).all()
    random = make_keep(2, 4, 16, 0.75, "random", generator=torch.Generator().manual_seed(0))
    hits = sum(bool((random[:, f] == p).any(-1).all()) for f, p in enumerate(where))
    assert hits < 4  # random dropping loses the square somewhere (the control: the test can tell them apart)


def test_content_keep_random_share_keeps_the_object_and_samples_the_rest_uniformly():
    video, where = _moving_square()  # 16 patches per frame; the square's patch and the one it left score highest
    scores = content_scores(video, tubelet_size=1, patch_size=8)
    draws = 400
    counts = torch.zeros(16)
    for seed in range(draws):
        keep = content_keep(scores, 0.5, random_share=0.5, generator=torch.Generator().manual_seed(seed))
        assert keep.shape == (2, 4, 8) and bool((keep[..., 1:] > keep[..., :-1]).all())  # distinct, ascending
        for f, patch in enumerate(where):
            assert bool((keep[:, f] == patch).any(-1).all()), f"frame {f}: the square's patch was dropped"
        counts += visible_mask(keep[:, 2:3], 16).sum((0, 1)).float()
    # frame 2: the top 4 are the three patches that change (where the square was, is, will be) and one flat patch
    # (a tie); 4 more are drawn from the other 12 flat ones, so each of the 13 flat patches is kept 5 / 13 of the time
    moving = list(where[1:4])
    flat = [p for p in range(16) if p not in moving]
    assert bool((counts[moving] == 2 * draws).all())
    rates = counts[flat] / (2 * draws)
    assert float(rates.min()) > 0.3 and float(rates.max()) < 0.48, rates  # all seen, none favoured
    # share 0 draws only the tie-breaking noise, as before the share existed, so earlier seeded runs repeat
    used, expected = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    content_keep(scores, 0.5, generator=used)
    torch.rand(scores.shape, generator=expected)
    assert torch.equal(used.get_state(), expected.get_state())
    with pytest.raises(ConfigError, match="random_share"):
        content_keep(scores, 0.5, random_share=1.5)


def test_content_keep_without_random_ties_depends_on_the_pixels_alone():
    """Evaluation's selection (``token_drop.at_eval``): the object is kept, flat ties go to the first positions, no
    random number is drawn, and a clip gets the same tokens whatever else is in its batch."""
    video, where = _moving_square()  # 16 patches per frame, the square at patch 4 + f
    scores = content_scores(video, tubelet_size=1, patch_size=8)
    state = torch.get_rng_state()
    keep = content_keep(scores, 0.75, random_ties=False)
    assert torch.equal(torch.get_rng_state(), state)
    # frame 2: the patches the square was on, is on and moves to (5, 6, 7), then the first flat one (0)
    assert keep[:, 2].tolist() == [[0, 5, 6, 7]] * 2
    assert keep[:, 0].tolist() == [[0, 1, 4, 5]] * 2  # frame 0 has one neighbour: 4 and 5 change, ties 0 and 1
    other = torch.cat([scores[:1], torch.rand_like(scores[:1])])
    assert torch.equal(content_keep(other, 0.75, random_ties=False)[0], keep[0])
    assert torch.equal(content_keep(scores[:1], 0.75, random_ties=False), keep[:1])
    with pytest.raises(ConfigError, match="random_share must be 0 without random_ties"):
        content_keep(scores, 0.75, random_share=0.5, random_ties=False)
