"""Token masks: exact visible counts per time step, tube = the same positions in every step, gather/scatter."""

from __future__ import annotations

import pytest
import torch

from vidvlm.errors import ConfigError
from vidvlm.layers.masking import full_keep, gather_tokens, make_keep, num_visible, scatter_tokens, visible_mask


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
