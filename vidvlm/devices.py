"""Moving small host tensors to an accelerator without making the host wait for it.

A plain ``x.to("cuda")`` of a host tensor, and ``torch.tensor(data, device="cuda")``, copy with a stream
synchronisation: the host waits until the GPU has run everything queued before, as for ``.item()``. In a training step
that happens whenever host-made values (token ids, label positions, an index) meet the device mid-step. The copy
from page-locked ("pinned") memory with ``non_blocking=True`` is queued like a kernel instead; torch's caching host
allocator keeps the pinned block until the copy has run, so the temporary may go out of scope at once.

:func:`to_device` and :func:`device_tensor` do that on CUDA; elsewhere they copy as ``.to`` does (a non-blocking
request, which other devices treat as they can). ``tests/models/test_device_reads.py`` counts the blocking copies of
every family's training step on the ``meta`` device and expects none.
"""

from __future__ import annotations

from typing import Any

import torch


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
