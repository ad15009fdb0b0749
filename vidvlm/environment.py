"""Where a run was computed: the software and hardware that decide its floating-point results.

A seeded run is bit-exact only on the same kind of machine with the same software: the same command on two CPU
models (their matrix-multiply kernels round differently) or two torch builds gives different tensors, and a few
hundred steps later a different model. The trainer writes :func:`environment` into every checkpoint's
``trainer_state.json`` and into ``final/``'s, warns when a run is resumed somewhere else (the continuation is then not
exact), and ``benchmarks/qa_table.py`` says when the runs of one table were trained on different machines.

A CPU's model name does not tell its kernels apart (virtual machines often report only "AMD EPYC" or "Intel(R) Xeon(R)
Processor"), so the environment also carries ``kernels``: :func:`kernel_fingerprint`, a hash of what the kernels a
training step uses (matrix multiply, batched matmul, attention, softmax, layer norm, GELU, the 3-D patch convolution,
their backward, and a bf16 matmul) return on fixed inputs. Two processes whose fingerprints differ round differently;
``python -m vidvlm.environment`` prints this process's environment.

    >>> env = environment()
    >>> sorted(env)[:3]
    ['accelerator', 'av', 'cores']
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from importlib import metadata
from typing import Any

import torch
from einops import rearrange

# The keys whose difference changes the numbers a run computes (not just where it ran).
NUMERIC_KEYS = ("cpu", "cpu_model", "cpu_capability", "accelerator", "torch", "threads", "kernels")

# CPU flags that decide which kernels MKL, oneDNN and torch pick (recorded when present, in this order).
_KERNEL_FLAGS = ("fma", "avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields in ``/proc/cpuinfo`` (empty where there is no such file)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # one processor's block is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux; ``platform.processor()`` or the architecture elsewhere)."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_model() -> str | None:
    """Vendor, family, model and stepping with the kernel-relevant flags, e.g. ``"AuthenticAMD 25/17/1 avx2 avx512f"``.

    Read from ``/proc/cpuinfo`` (``None`` elsewhere): two CPUs that share a model name can differ here.
    """
    fields = _cpuinfo()
    if "vendor_id" not in fields:
        return None
    flags = set(fields.get("flags", "").split())
    ident = "/".join(fields.get(k, "?") for k in ("cpu family", "model", "stepping"))
    return " ".join([fields["vendor_id"], ident, *(f for f in _KERNEL_FLAGS if f in flags)])


def kernel_fingerprint(device: torch.device | str = "cpu") -> str:
    """A 12-hex-digit hash of a few small computations as this process's kernels round them on ``device``.

    Fixed inputs (from a private generator: the global random state is not touched) go through the operations a
    training step spends its time in: a linear layer and a batched matmul (BLAS), scaled dot-product attention,
    softmax, layer norm, GELU, a 3-D convolution with a tubelet-sized stride, on the CPU the backward of all of them
    (a GPU's backward kernels may add with atomics, in an order that changes from run to run), and a bf16 matmul (what
    autocast runs). Equal fingerprints do not prove two machines agree on every shape; different ones prove they do
    not agree on these. The result depends on the intra-op thread count (recorded beside it as ``threads``).
    """
    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device)

    digest = hashlib.sha256()
    with torch.enable_grad():
        x = rand(2, 37, 48).requires_grad_()
        w, ln_w = rand(96, 48).requires_grad_(), (1 + rand(96)).requires_grad_()
        h = torch.nn.functional.layer_norm(torch.nn.functional.linear(x, w), (96,), ln_w)  # (2, 37, 96)
        q = rearrange(h, "b n (heads d) -> b heads n d", heads=4)  # (2, 4, 37, 24): heads as a block splits them
        a = torch.nn.functional.scaled_dot_product_attention(q, q.flip(-1), q.roll(1, -1))
        s = torch.softmax(torch.bmm(h, h.transpose(1, 2)) / 10, -1)  # (2, 37, 37)
        video, kernel = rand(1, 3, 8, 32, 32).requires_grad_(), rand(16, 3, 4, 4, 4).requires_grad_()
        c = torch.nn.functional.conv3d(video, kernel, stride=4)  # (1, 16, 2, 8, 8)
        outputs = [h, a, s, torch.nn.functional.gelu(h), c]
        grads = []
        if device.type == "cpu":
            loss = sum(o.square().mean() for o in outputs)
            grads = torch.autograd.grad(loss, [x, w, ln_w, video, kernel])
    half = torch.mm(rand(33, 64).bfloat16(), rand(64, 40).bfloat16())
    for t in [*outputs, *grads, half]:
        digest.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


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
        ``cpu`` (model name), ``cpu_model`` (:func:`cpu_model`), ``cpu_capability`` (the SIMD level torch's CPU
        kernels use, e.g. ``AVX512``),
        ``accelerator`` (``"cpu"``, e.g. ``"cuda: NVIDIA H100 80GB HBM3 (sm_90)"``, or another device's type),
        ``threads`` (torch's intra-op threads), ``cores`` (logical CPUs), ``torch``, ``cuda`` (torch's CUDA version
        or ``None``), ``python``, ``platform``, the versions of ``vidvlm``, ``transformers``, ``av`` and
        ``decord`` (``None`` when not installed), and ``kernels`` (:func:`kernel_fingerprint` on ``device``).
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
        "cpu_model": cpu_model(),
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
        "kernels": _fingerprint_or_reason(device if device is not None else torch.device("cuda" if on_cuda else "cpu")),
    }


def _fingerprint_or_reason(device: torch.device) -> str:
    """:func:`kernel_fingerprint`, or why there is none (a device without one of its operations): recording where a
    run computes must never stop the run."""
    try:
        return kernel_fingerprint(device)
    except (RuntimeError, NotImplementedError, TypeError) as e:
        return f"unavailable on {device.type}: {type(e).__name__}"


def numeric_differences(a: dict[str, Any] | None, b: dict[str, Any] | None) -> list[str]:
    """The keys of :data:`NUMERIC_KEYS` in which two environments differ, as ``"key: A -> B"`` lines.

    A missing environment (a checkpoint written before they were recorded) differs in nothing that can be told, nor
    does a key only one of them records (``cpu_model`` and ``kernels`` came later than the rest).
    """
    if not a or not b:
        return []
    return [f"{k}: {a[k]} -> {b[k]}" for k in NUMERIC_KEYS if k in a and k in b and a[k] != b[k]]


def main(argv: list[str] | None = None) -> int:
    """``python -m vidvlm.environment [RUN_OR_CHECKPOINT ...]``: this process's environment as JSON; with
    directories (a run, its ``final/`` or a ``checkpoint-*``), whether each was computed here, i.e. whether training
    it again or resuming it here would be bit-exact. Run it with the thread count the training used
    (``OMP_NUM_THREADS``). Exit status 0: all the same (or no directory given); 1: some were computed elsewhere or
    record no environment; 2: a directory holds no readable ``trainer_state.json``."""
    import argparse
    import sys
    from pathlib import Path

    from vidvlm.train.checkpoint import STATE_FILE
    from vidvlm.train.rundir import FINAL

    parser = argparse.ArgumentParser(prog="python -m vidvlm.environment", description=main.__doc__)
    parser.add_argument("runs", nargs="*", type=Path, metavar="RUN_OR_CHECKPOINT")
    parser.add_argument("--device", default=None, help="the device the runs computed on (default: cuda if available)")
    args = parser.parse_args(argv)
    here = environment(args.device)
    if not args.runs:
        print(json.dumps(here, indent=1))
        return 0
    status = 0
    for run in args.runs:
        state = run / FINAL / STATE_FILE if (run / FINAL).is_dir() else run / STATE_FILE
        try:
            recorded = json.loads(state.read_text()).get("environment")
        except (OSError, json.JSONDecodeError) as e:
            print(f"error: {state}: cannot read: {e}", file=sys.stderr)
            return 2
        if not recorded:
            print(f"{run}: records no environment (trained before they were recorded)")
            status = 1
        elif moved := numeric_differences(recorded, here):
            print(f"{run}: computed elsewhere ({'; '.join(moved)})")
            status = 1
        else:
            unknown = [k for k in NUMERIC_KEYS if k not in recorded]
            note = f" (not recorded there: {', '.join(unknown)})" if unknown else ""
            print(f"{run}: same environment as here{note}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
