"""Counting the reads of an accelerator's tensors on the host, without an accelerator (the ``meta`` device)."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

META = torch.device("meta")
_aten = torch.ops.aten


def _all_true_nonzero(shape: tuple[int, ...]) -> torch.Tensor:
    """What ``nonzero`` gives for a mask of ``shape`` that is True everywhere, on ``meta``: long ``[N, ndim]``."""
    return torch.ones(shape, dtype=torch.bool).nonzero().to(META)


class DeviceReads(TorchDispatchMode):
    """Counts ops that read a ``meta`` tensor's values on the host, and gives a stand-in so the code goes on:
    ``.item()`` gives 0 (True for a bool), a copy to the CPU zeros, and a data-dependent shape (``nonzero``, indexing
    or ``masked_select`` with a bool mask) the shape of a mask that is True everywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if x is None or x.device.type != "meta":
            return func(*args, **kwargs)
        if func is _aten._local_scalar_dense.default:
            self.reads.append(("item", tuple(x.shape)))
            return True if x.dtype == torch.bool else 0
        if func is _aten._to_copy.default and torch.device(kwargs.get("device") or META).type == "cpu":
            self.reads.append(("copy to host", tuple(x.shape)))
            return torch.zeros(x.shape, dtype=kwargs.get("dtype") or x.dtype)
        if func is _aten.nonzero.default:
            self.reads.append(("nonzero", tuple(x.shape)))
            return _all_true_nonzero(tuple(x.shape))
        if func is _aten.masked_select.default:
            self.reads.append(("masked_select", tuple(args[1].shape)))
            return x.expand(torch.broadcast_shapes(x.shape, args[1].shape)).reshape(-1)
        if func in (_aten.index.Tensor, _aten.index_put.default, _aten.index_put_.default):
            indices = list(args[1])
            for i, index in enumerate(indices):
                if index is not None and index.dtype in (torch.bool, torch.uint8):
                    self.reads.append(("bool index", tuple(index.shape)))
                    # a bool mask over k dims = the k long indices of its True positions
                    rows = _all_true_nonzero(tuple(index.shape)).unbind(1)
                    indices[i : i + 1] = list(rows)
            return func(x, indices, *args[2:], **kwargs)
        return func(*args, **kwargs)
