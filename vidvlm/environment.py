"""Where a run was computed: the software and hardware that decide its floating-point results.

A seeded run is bit-exact only on the same kind of machine with the same software: the same command on two CPU
models (their matrix-multiply kernels round differently) or two torch builds gives different tensors, and a few
hundred steps later a different model. The trainer writes :func:`environment` into every checkpoint's
``trainer_state.json`` and into ``final/``'s, warns when a run is resumed somewhere else (the continuation is then not
exact), and ``benchmarks/qa_table.py`` says when the runs of one table were trained on different machines.

    >>> env = environment()
    >>> sorted(env)[:3]
    ['accelerator', 'av', 'cores']
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

import torch

# The keys whose difference changes the numbers a run computes (not just where it ran).
NUMERIC_KEYS = ("cpu", "cpu_capability", "accelerator", "torch", "threads")


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux; ``platform.processor()`` or the architecture elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment(device: torch.device | str | None = None) -> dict[str, Any]:
    """The software and hardware a computation runs on, as plain JSON values.

    Args:
        device: the device the model runs on; a CUDA device adds its name and capability under ``accelerator``
            (``None``: the current CUDA device when CUDA is available, else the CPU).

    Returns:
        ``cpu`` (model name), ``cpu_capability`` (the SIMD level torch's CPU kernels use, e.g. ``AVX512``),
        ``accelerator`` (``"cpu"``, e.g. ``"cuda: NVIDIA H100 80GB HBM3 (sm_90)"``, or another device's type),
        ``threads`` (torch's intra-op threads), ``cores`` (logical CPUs), ``torch``, ``cuda`` (torch's CUDA version
        or ``None``), ``python``, ``platform``, and the versions of ``vidvlm``, ``transformers``, ``av`` and
        ``decord`` (``None`` when not installed).
    """
    from vidvlm import __version__

    device = torch.device(device) if device is not None else None
    on_cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
    accelerator = "cpu"
    if on_cuda:
        index = device.index if device is not None and device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        accelerator = f"cuda: {torch.cuda.get_device_name(index)} (sm_{major}{minor})"
    elif device is not None and device.type != "cpu":
        accelerator = device.type  # e.g. "mps"
    return {
        "cpu": cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "accelerator": accelerator,
        "threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "vidvlm": __version__,
        "transformers": _version("transformers"),
        "av": _version("av"),
        "decord": _version("decord"),
    }


def numeric_differences(a: dict[str, Any] | None, b: dict[str, Any] | None) -> list[str]:
    """The keys of :data:`NUMERIC_KEYS` in which two environments differ, as ``"key: A -> B"`` lines.

    A missing environment (a checkpoint written before they were recorded) differs in nothing that can be told.
    """
    if not a or not b:
        return []
    return [f"{k}: {a.get(k)} -> {b.get(k)}" for k in NUMERIC_KEYS if a.get(k) != b.get(k)]
