"""vidvlm.devices: host values reach the device whole, without a blocking copy."""

from __future__ import annotations

import pytest
import torch

from tests.models.device_reads import META, DeviceReads
from vidvlm.devices import device_tensor, to_device


def test_to_device_keeps_values_and_casts_on_the_host():
    x = torch.tensor([[1, 2], [3, 4]])
    same = to_device(x, "cpu")
    assert same is x  # already there: no copy
    cast = to_device(x, torch.device("cpu"), torch.float32)
    assert cast.dtype == torch.float32 and torch.equal(cast, x.float())
    assert torch.equal(device_tensor([[True, False]], "cpu"), torch.tensor([[True, False]]))
    assert device_tensor([], "cpu", torch.long).dtype == torch.long


def test_host_values_go_over_without_a_blocking_copy():
    """On ``meta`` as on CUDA: to_device asks for a non-blocking copy; a plain ``.to`` and ``torch.tensor(...,
    device=)`` are what the counter flags (so the counter can fail)."""
    counter = DeviceReads()
    with counter:
        moved = to_device(torch.ones(2, 3), META, torch.float16)
        made = device_tensor([1, 2, 3], META)
    assert counter.copies == []
    assert moved.device == META and moved.shape == (2, 3) and moved.dtype == torch.float16
    assert made.device == META and made.shape == (3,) and made.dtype == torch.long
    with counter:
        torch.ones(2).to(META)
        torch.tensor([1, 2], device=META)
    assert [kind for kind, _, _ in counter.copies] == ["blocking copy to the device", "torch.tensor on the device"]


@pytest.mark.gpu
def test_to_device_on_cuda_is_exact_and_does_not_synchronise():
    """torch's sync debug mode raises on a synchronising call: a plain ``.to("cuda")`` does, to_device does not."""
    x = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    to_device(x, "cuda")  # first use: the CUDA context and the pinned-memory pool start outside the checked part
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        moved = to_device(x, "cuda", torch.int32)
        made = device_tensor([[1.5, 2.5]], "cuda")
        with pytest.raises(RuntimeError):
            x.to("cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(moved.cpu(), x.int()) and torch.equal(made.cpu(), torch.tensor([[1.5, 2.5]]))
