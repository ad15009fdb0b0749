"""Atomic, pickle-free training checkpoints.

A checkpoint directory ``{output_dir}/checkpoint-{step:08d}`` holds:

- the model as its family writes it (``config.yaml`` + ``model.safetensors`` + tokenizer files), so that
  ``vidvlm.load(checkpoint_dir)`` opens it;
- ``train_config.yaml``: the resolved run config;
- ``optimizer.safetensors`` (state tensors) + ``optimizer.json`` (param groups and non-tensor state);
- ``rng_state_{rank}.safetensors`` + ``rng_state_{rank}.json`` (python, numpy, torch, cuda generators);
- ``trainer_state.json`` (step, stage, data position, scheduler, scaler, the step of the latest evaluation, the
  number of ``metrics.jsonl`` rows logged so far, and the ``environment`` that computed it:
  :func:`vidvlm.environment.environment`): written last, it marks completeness.

``final/`` holds the model files, ``train_config.yaml`` and ``trainer_state.json`` of the run's last step (which
marks the run finished: :func:`vidvlm.train.rundir.finished_step`; it holds the ``environment`` too).

Saving writes ``tmp-checkpoint-*`` in the same directory, fsyncs every file, renames it, then prunes old ones, so a
crash mid-save leaves the previous checkpoint intact. A directory that already exists (``final/``, a checkpoint saved
again) is replaced by :func:`vidvlm.atomic.replace_dir`, an atomic exchange, so that at every instant it holds a
whole model.
Loading reads only these files (safetensors, JSON).
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from vidvlm.atomic import replace_dir
from vidvlm.errors import CheckpointError

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:08d}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first (``tmp-*`` and incomplete ones are ignored)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        m = _NAME.match(d.name)
        if m and d.is_dir() and (d / STATE_FILE).is_file():
            found.append((int(m.group(1)), d))
    return [d for _, d in sorted(found)]


def checkpoint_step(directory: Path) -> int | None:
    """The step of a ``checkpoint-{step}`` directory name (None for another name)."""
    m = _NAME.match(directory.name)
    return int(m.group(1)) if m else None


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def resolve_resume(resume: str, output_dir: str | Path) -> Path | None:
    """The checkpoint to resume from: ``"auto"`` the newest of ``output_dir``, ``"if-any"`` the same or None (a
    fresh run) when the folder has none yet, so one command both starts a job and restarts it after a crash;
    otherwise ``resume`` is a checkpoint directory's path.

    Raises:
        CheckpointError: ``"auto"`` found nothing to resume from, or the directory is incomplete.
    """
    if resume in ("auto", "if-any"):
        found = latest_checkpoint(output_dir)
        if found is None and resume == "auto":
            raise CheckpointError(
                f"{output_dir}: --resume auto found no complete checkpoint-* directory"
                " (--resume if-any starts a fresh run instead)"
            )
        return found
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"{path}: not a complete checkpoint (missing {STATE_FILE})")
    return path


def write_json(path: Path, data: Any) -> None:
    """JSON into a checkpoint's temporary directory (made whole by the directory's rename, not file by file)."""
    path.write_text(json.dumps(data, indent=1))


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read: {e}") from e


def tmp_dir_for(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f"tmp-{checkpoint_name(step)}"


def begin_dir(path: Path) -> Path:
    """Create ``path`` empty (a leftover of an interrupted save is removed first)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def begin(output_dir: str | Path, step: int) -> Path:
    """Create a fresh temporary directory for the checkpoint of ``step`` (main process only)."""
    return begin_dir(tmp_dir_for(output_dir, step))


def commit(tmp: Path, step: int, keep: int) -> Path:
    """fsync ``tmp``, rename it to its final name, then prune all but the ``keep`` newest checkpoints."""
    final = tmp.parent / checkpoint_name(step)
    # re-saving the same step (e.g. stop after a save) replaces it only once the new one is whole
    replace_dir(tmp, final)
    for stale in list_checkpoints(tmp.parent)[:-keep]:
        shutil.rmtree(stale)
    for leftover in tmp.parent.glob("tmp-checkpoint-*"):  # from an earlier crash
        if leftover != tmp:
            shutil.rmtree(leftover, ignore_errors=True)
    return final


# --- optimizer ---------------------------------------------------------------------------------------------------


def save_optimizer(optimizer: torch.optim.Optimizer, directory: Path, extra: dict | None = None) -> None:
    """Optimizer state as ``optimizer.safetensors`` (tensors) + ``optimizer.json`` (everything else)."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    save_file(tensors, str(directory / "optimizer.safetensors"))
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    write_json(directory / "optimizer.json", {"param_groups": groups, "scalars": scalars, "extra": extra or {}})


def load_optimizer(optimizer: torch.optim.Optimizer, directory: Path) -> dict:
    """Restore what :func:`save_optimizer` wrote; returns its ``extra`` dict.

    Raises:
        CheckpointError: the files are missing or do not fit the optimizer (other groups or parameters).
    """
    meta = read_json(directory / "optimizer.json")
    tensors = load_file(str(directory / "optimizer.safetensors"))
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for idx, values in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    current = optimizer.state_dict()["param_groups"]
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in current]:
        raise CheckpointError(f"{directory}: the optimizer state does not match the trainable parameters")
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{directory}: cannot restore the optimizer: {e}") from e
    return meta.get("extra", {})


# --- random number generators -------------------------------------------------------------------------------------


def save_rng(directory: Path, rank: int) -> None:
    """The python, numpy, torch and CUDA generator states of this process."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    tensors = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64))}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    save_file(tensors, str(directory / f"rng_state_{rank}.safetensors"))
    meta = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, int(np_pos), int(np_has_gauss), float(np_gauss)],
    }
    write_json(directory / f"rng_state_{rank}.json", meta)


def load_rng(directory: Path, rank: int) -> None:
    """Restore :func:`save_rng`'s states; a missing rank file (other world size) falls back to rank 0's."""
    name = rank if (directory / f"rng_state_{rank}.json").is_file() else 0
    meta = read_json(directory / f"rng_state_{name}.json")
    tensors = load_file(str(directory / f"rng_state_{name}.safetensors"))
    version, state, gauss = meta["python"]
    random.setstate((version, tuple(state), gauss))
    np_name, np_pos, np_has_gauss, np_gauss = meta["numpy"]
    np.random.set_state((np_name, tensors["numpy_keys"].numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# --- model --------------------------------------------------------------------------------------------------------


def save_model(model: torch.nn.Module, directory: Path) -> None:
    """The module's own format when it has ``save_pretrained`` (every family does), else a bare
    ``model.safetensors``."""
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(directory)
    else:
        from safetensors.torch import save_model as st_save_model

        st_save_model(model, str(directory / "model.safetensors"))


def load_model_weights(model: torch.nn.Module, directory: Path) -> None:
    """Load ``model.safetensors`` into ``model``: a family loads it its own way (strictly, or, for a family that
    stores only what it trained, every stored tensor), any other module strictly.

    Raises:
        CheckpointError: missing file or mismatched tensors.
    """
    from safetensors.torch import load_model as st_load_model

    from vidvlm.models.base import VLMModel

    path = directory / "model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{directory}: missing model.safetensors")
    if isinstance(model, VLMModel):
        model.load_saved_weights(directory)
        return
    try:
        st_load_model(model, str(path), strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: does not fit the model: {e}") from e
