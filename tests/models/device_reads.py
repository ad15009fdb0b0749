"""Counting what makes the host wait for an accelerator, without an accelerator (the ``meta`` device): reads of
its tensors on the host, and blocking copies of host data onto it."""

from __future__ import annotations

import traceback
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

META = torch.device("meta")
_aten = torch.ops.aten


def _all_true_nonzero(shape: tuple[int, ...]) -> torch.Tensor:
    """What ``nonzero`` gives for a mask of ``shape`` that is True everywhere, on ``meta``: long ``[N, ndim]``."""
    return torch.ones(shape, dtype=torch.bool).nonzero().to(META)


def _is_meta(device) -> bool:
    return device is not None and torch.device(device).type == "meta"


def _caller() -> str:
    """``file:line`` of the innermost frame in vidvlm's own code (else the innermost outside torch)."""
    frames = [f for f in traceback.extract_stack() if "/torch/" not in f.filename and f.filename != __file__]
    ours = [f for f in frames if "/vidvlm/" in f.filename]
    f = (ours or frames)[-1]
    return f"{Path(f.filename).name}:{f.lineno}"


def _blocking_copy_to_meta(func, args, kwargs) -> tuple[int, ...] | None:
    """The shape of the host tensor that ``func`` copies onto ``meta`` without ``non_blocking``, else None (also
    for an empty one: torch copies nothing then, and does not wait)."""
    if func is _aten._to_copy.default and args[0].device.type == "cpu" and _is_meta(kwargs.get("device")):
        blocking, src = not kwargs.get("non_blocking", False), args[0]
    elif func is _aten.copy_.default and args[0].device.type == "meta" and args[1].device.type == "cpu":
        blocking, src = not (args[2] if len(args) > 2 else kwargs.get("non_blocking", False)), args[1]
    else:
        return None
    return tuple(src.shape) if blocking and src.numel() else None


class DeviceReads(TorchDispatchMode):
    """Counts ops that read a ``meta`` tensor's values on the host (``reads``), and gives a stand-in so the code goes
    on: ``.item()`` and a copy to the CPU give zeros (True for a bool), and a data-dependent shape (``nonzero``,
    indexing or ``masked_select`` with a bool mask) the shape of a mask that is True everywhere.

    ``copies`` lists the blocking copies of host data onto ``meta``, each with the line of vidvlm that made it:
    ``.to(device)`` of a host tensor without ``non_blocking=True``, and ``torch.tensor`` / ``torch.as_tensor`` of
    Python data with ``device=``. On CUDA torch synchronises the stream for each (a copy from pinned memory with
    ``non_blocking=True`` is queued instead; see :mod:`vidvlm.devices`). ``torch.tensor`` builds below the
    dispatcher, so it is wrapped while the mode is on."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[tuple[str, tuple[int, ...]]] = []
        self.copies: list[tuple[str, tuple[int, ...], str]] = []  # (what, shape, file:line)
        self._factories: dict[str, object] = {}

    def __enter__(self):
        for name in ("tensor", "as_tensor"):
            self._factories[name] = original = getattr(torch, name)
            setattr(torch, name, self._watch(name, original))
        return super().__enter__()

    def __exit__(self, *exc):
        for name, original in self._factories.items():
            setattr(torch, name, original)
        return super().__exit__(*exc)

    def _watch(self, name: str, original):
        def factory(data, *args, **kwargs):
            out = original(data, *args, **kwargs)
            if not isinstance(data, torch.Tensor) and _is_meta(kwargs.get("device")) and out.numel():
                self.copies.append((f"torch.{name} on the device", tuple(out.shape), _caller()))
            return out

        return factory

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        copied = _blocking_copy_to_meta(func, args, kwargs)
        if copied is not None:
            self.copies.append(("blocking copy to the device", copied, _caller()))
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if x is None or x.device.type != "meta":
            return func(*args, **kwargs)
        if func is _aten._local_scalar_dense.default:
            self.reads.append(("item", tuple(x.shape)))
            return True if x.dtype == torch.bool else 0
        if func is _aten._to_copy.default and torch.device(kwargs.get("device") or META).type == "cpu":
            self.reads.append(("copy to host", tuple(x.shape)))
            dtype = kwargs.get("dtype") or x.dtype
            return (torch.ones if dtype == torch.bool else torch.zeros)(x.shape, dtype=dtype)
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
