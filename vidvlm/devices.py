"""Moving small host tensors to an accelerator without making the host wait for it.

A plain ``x.to("cuda")`` of a host tensor, and ``torch.tensor(data, device="cuda")``, copy with a stream
synchronisation: the host waits until the GPU has run everything queued before, as for ``.item()``. In a training step
that happens whenever host-made values (token ids, label positions, an index) meet the device mid-step. The copy
from page-locked ("pinned") memory with ``non_blocking=True`` is queued like a kernel instead; torch's caching host
allocator keeps the pinned block until the copy has run, so the temporary may go out of scope at once.

:func:`to_device` and :func:`device_tensor` do that on CUDA; elsewhere they copy as ``.to`` does (a non-blocking
request, which other devices treat as they can). :func:`batch_to_device` moves a collated batch as the trainer and
its evaluation do, leaving on the host what the models read there, and hands it over as a :class:`PlacedBatch`,
which ``DistributedDataParallel`` passes to the model as it is. ``tests/models/test_device_reads.py`` counts the
reads and blocking copies of every family's training step on the ``meta`` device and expects none.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch

# read by the models on the host (the vision tower checks the mask, LLaVA lays out its sequences with both): a
# trainer that moved them would make the models read them back
ON_HOST = ("frame_mask", "timestamps")


def to_device(x: torch.Tensor, device: torch.device | str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``x`` (any shape) on ``device`` (and ``dtype``); a host tensor bound for CUDA goes through pinned memory,
    copied without a synchronisation. A tensor already there is returned as it is (cast if ``dtype`` differs).

    A host tensor that is already pinned is copied from where it lies, later: do not change it in place until the
    device has used it (a pageable one is first copied to a pinned temporary, so it is free at once)."""
    device = torch.device(device)
    if x.device.type == "cpu" and device.type != "cpu":
        if dtype is not None:
            x = x.to(dtype)  # cast on the host: the copy moves the final bytes
        if device.type == "cuda" and not torch.compiler.is_compiling():  # a compiled graph places its own copies
            x = x.pin_memory()
        return x.to(device, non_blocking=True)
    return x.to(device=device, dtype=dtype)


def device_tensor(data: Any, device: torch.device | str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``torch.tensor(data, dtype=dtype)`` made on the host and moved with :func:`to_device`."""
    return to_device(torch.tensor(data, dtype=dtype), device)


class PlacedBatch(Mapping):
    """A read-only batch (key -> value) whose tensors already lie where the model reads them.

    A ``Mapping`` but deliberately not a ``dict``: ``DistributedDataParallel`` (as ``accelerate`` wraps a model on
    more than one GPU) copies every tensor it finds inside the forward's dicts, lists and tuples onto its device,
    with a blocking copy per tensor, which would undo :data:`ON_HOST`; any other object it passes through untouched.
    The models read a batch with ``[]``, ``get`` and ``in``, which this supports.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Any]) -> None:
        self._items = dict(items)

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __setitem__(self, key: str, value: Any) -> None:
        raise TypeError(
            f"PlacedBatch is read-only (setting {key!r}): copy it with dict(batch) or {{**batch}} to change it"
        )

    def __repr__(self) -> str:
        return f"PlacedBatch({sorted(self._items)})"


def batch_to_device(batch: Mapping[str, Any], device: torch.device | str) -> PlacedBatch:
    """A collated batch's tensors on ``device`` (with :func:`to_device`: they overlap the step), except
    those the models read on the host (:data:`ON_HOST`). ``frame_mask``: one with no padded frame becomes None
    (every frame real, as the models read it); one with padding stays on the host, where the vision tower checks it
    before it moves it over and makes the layout masks (:meth:`vidvlm.models.vision.VideoViT.forward`).
    ``timestamps`` stay there too: they are layout (the LLaVA family writes them into the prompt). The trainer and
    its evaluation move every batch with this; the result is a :class:`PlacedBatch`, so that a model wrapped in
    ``DistributedDataParallel`` receives it as placed here."""
    stay = {k: batch[k] for k in ON_HOST if isinstance(batch.get(k), torch.Tensor) and batch[k].device.type == "cpu"}
    if "frame_mask" in stay and bool(stay["frame_mask"].all()):
        stay["frame_mask"] = None
    moved = {k: to_device(v, device) for k, v in batch.items() if isinstance(v, torch.Tensor) and k not in stay}
    return PlacedBatch({**batch, **moved, **stay})
