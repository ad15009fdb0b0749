"""Finite scalar quantisation: the implicit codebook, the straight-through gradient, parity with the reference."""

from __future__ import annotations

import pytest
import torch

from vidvlm.errors import ConfigError
from vidvlm.layers.quantize import FSQ

LEVELS = [[8, 5, 5, 5], [5, 5, 3], [4, 7]]


@pytest.mark.parametrize("levels", LEVELS)
def test_every_index_is_a_distinct_code_and_comes_back(levels):
    fsq = FSQ(levels)
    k = fsq.codebook_size
    codes = fsq.indices_to_codes(torch.arange(k))
    assert codes.shape == (k, len(levels)) and codes.abs().max() <= 1
    assert torch.unique(codes, dim=0).shape[0] == k
    torch.testing.assert_close(fsq.codes_to_indices(codes), torch.arange(k), rtol=0, atol=0)
    # each channel takes exactly its number of values
    for i, n in enumerate(levels):
        assert torch.unique(codes[:, i]).numel() == n


@pytest.mark.parametrize("levels", LEVELS)
def test_quantised_vectors_are_codebook_entries(levels):
    fsq = FSQ(levels)
    z = torch.randn(3, 11, len(levels)) * 3  # many saturate at the ends of the range
    codes, indices = fsq(z)
    assert indices.shape == (3, 11) and indices.dtype == torch.long
    assert indices.min() >= 0 and indices.max() < fsq.codebook_size
    torch.testing.assert_close(codes, fsq.indices_to_codes(indices), rtol=0, atol=1e-6)


def test_rounding_passes_the_gradient_of_the_bound_straight_through():
    fsq = FSQ([8, 5, 5, 5])
    z = torch.randn(6, 4, requires_grad=True)
    w = torch.randn(6, 4)
    (fsq(z)[0] * w).sum().backward()
    # the same function without rounding: its gradient is what the rounded one must pass on
    z2 = z.detach().clone().requires_grad_(True)
    half = (fsq.levels - 1) * (1 + 1e-3) / 2
    offset = torch.where(fsq.levels % 2 == 0, 0.5, 0.0)
    smooth = (torch.tanh(z2 + torch.atanh(offset / half)) * half - offset) / (fsq.levels // 2)
    (smooth * w).sum().backward()
    torch.testing.assert_close(z.grad, z2.grad)
    assert (z.grad != 0).all()


def test_bad_levels_and_widths_are_refused():
    with pytest.raises(ConfigError, match="levels"):
        FSQ([2, 5])
    with pytest.raises(ConfigError, match="levels"):
        FSQ([])
    with pytest.raises(ValueError, match="3 channels"):
        FSQ([5, 5, 3])(torch.zeros(2, 4))


@pytest.mark.parametrize("levels", LEVELS)
def test_matches_vector_quantize_pytorch(levels):
    """Codes and indices equal those of the reference implementation (``vector_quantize_pytorch.FSQ``)."""
    vqp = pytest.importorskip("vector_quantize_pytorch")
    ref = vqp.FSQ(levels)
    fsq = FSQ(levels)
    z = torch.randn(2, 50, len(levels)) * 2
    ref_codes, ref_indices = ref(z)
    codes, indices = fsq(z)
    torch.testing.assert_close(codes, ref_codes, rtol=0, atol=1e-6)
    torch.testing.assert_close(indices, ref_indices.long(), rtol=0, atol=0)
    all_ids = torch.arange(fsq.codebook_size)
    torch.testing.assert_close(fsq.indices_to_codes(all_ids), ref.indices_to_codes(all_ids), rtol=0, atol=1e-6)
