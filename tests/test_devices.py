"""vidvlm.devices: host values reach the device whole, without a blocking copy."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.models.device_reads import META, DeviceReads
from vidvlm.devices import PlacedBatch, batch_to_device, device_tensor, to_device


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


def _padded_batch() -> dict:
    return {
        "video": torch.randn(2, 3, 3, 8, 8),
        "frame_mask": torch.tensor([[True, True, True], [True, True, False]]),
        "timestamps": torch.tensor([[0.0, 0.5, 1.0], [0.0, 0.5, 0.0]]),
        "caption": ["a", "b"],
    }


def test_batch_to_device_places_each_entry_and_reads_like_a_dict():
    placed = batch_to_device(_padded_batch(), META)
    assert isinstance(placed, PlacedBatch) and not isinstance(placed, dict)
    assert placed["video"].device == META
    assert placed["frame_mask"].device.type == "cpu" and placed["timestamps"].device.type == "cpu"
    assert placed["caption"] == ["a", "b"] and "frame_mask" in placed and placed.get("missing") is None
    assert sorted(placed) == ["caption", "frame_mask", "timestamps", "video"] and len(placed) == 4
    assert {**placed}.keys() == placed.keys()
    with pytest.raises(TypeError, match="read-only .*'video'.*copy it"):
        placed["video"] = None  # read-only: a model cannot change what the trainer placed


def test_distributed_data_parallel_hands_the_placed_batch_over_as_it_is():
    """What ``DistributedDataParallel`` does to the forward's inputs when it owns a device (``device_ids``, as
    accelerate wraps a model on each GPU): torch's ``_to_kwargs`` moves every tensor inside dicts, lists and tuples,
    with a blocking copy each. A plain dict loses its host-kept mask and times to it (so this test can fail); a
    PlacedBatch comes through as the same object."""
    to_kwargs = getattr(torch.distributed.utils, "_to_kwargs", None)
    if to_kwargs is None:
        pytest.skip("this torch has no torch.distributed.utils._to_kwargs (DDP's input move)")
    placed = batch_to_device(_padded_batch(), META)
    counter = DeviceReads()
    with counter:
        (passed,), _ = to_kwargs((placed,), {}, META, False)
        (as_dict,), _ = to_kwargs(({**placed},), {}, META, False)
    assert passed[0] is placed
    assert as_dict[0]["frame_mask"].device == META and as_dict[0]["timestamps"].device == META
    assert [kind for kind, _, _ in counter.copies] == ["blocking copy to the device"] * 2  # the dict's two


class _Devices(nn.Module):
    """Records where each tensor of the batch it is given lies."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1))
        self.seen: dict[str, str] = {}

    def forward(self, batch):
        self.seen = {k: v.device.type for k, v in batch.items() if isinstance(v, torch.Tensor)}
        return {"loss": self.weight.sum() * batch["video"].mean()}


@pytest.mark.gpu
def test_a_cuda_ddp_model_gets_the_mask_on_the_host(tmp_path):
    """The real wrapper, one process on one GPU: the placed batch's mask and times reach the model on the host."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = nn.parallel.DistributedDataParallel(_Devices().cuda(), device_ids=[0])
        model(batch_to_device(_padded_batch(), "cuda"))["loss"].backward()
        assert model.module.seen == {"video": "cuda", "frame_mask": "cpu", "timestamps": "cpu"}
        model({**batch_to_device(_padded_batch(), "cuda")})  # a dict: the wrapper moves everything
        assert model.module.seen == {"video": "cuda", "frame_mask": "cuda", "timestamps": "cuda"}
    finally:
        dist.destroy_process_group()
