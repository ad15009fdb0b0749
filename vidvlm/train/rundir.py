"""The output folder of a run: one run per folder, resumes that continue the same run, one metrics row per step.

A fresh run refuses a folder that already holds a run (``overwrite`` removes that run's files first: checkpoints,
``final/``, ``metrics.jsonl``, ``train_config.yaml``; nothing else in the folder is touched), except the leftovers of
the same run stopped before its first checkpoint (same config, no checkpoint, no ``final/``), which it replaces.
A resume refuses a config that differs from the checkpoint's in a key that changes training (see
:func:`vidvlm.train.config.resume_changes`) unless forced, and rewinds the folder to the checkpoint: checkpoints of
later steps (an abandoned continuation) are deleted and ``metrics.jsonl`` keeps only the rows written before it.
A run that finished (``final/`` at its last step, same config) is recognised (:func:`finished_step`), so a
restart-anything job command does not train or evaluate it again.

One run at a time: the trainer holds ``train.lock`` in the folder (:func:`lock_run_dir`, :mod:`vidvlm.locks`) from
before it reads the folder until it returns, so a second run, resume or ``overwrite`` into a folder that a live run
is writing is refused with the holder's pid and host instead of deleting or interleaving its files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from vidvlm.atomic import recover_dir, write_text_atomic
from vidvlm.config import read_mapping
from vidvlm.errors import CheckpointError, ConfigError
from vidvlm.locks import FolderLock
from vidvlm.train import checkpoint as ckpt
from vidvlm.train.config import TrainConfig, resume_changes

LOCK_FILE = "train.lock"
CONFIG_FILE = "train_config.yaml"
METRICS_FILE = "metrics.jsonl"
FINAL = "final"
# What a run writes into its folder (besides tracker logs): these mark a folder as holding a run.
_RUN_FILES = (CONFIG_FILE, METRICS_FILE, FINAL)
_RUN_GLOBS = ("checkpoint-*", "tmp-checkpoint-*", "old-checkpoint-*", "tmp-final", "old-final")


def run_files(output_dir: str | Path) -> list[Path]:
    """The files and directories of a run found in ``output_dir`` (empty when it holds none)."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [out / n for n in _RUN_FILES if (out / n).exists()]
    for pattern in _RUN_GLOBS:
        found += sorted(out.glob(pattern))
    return found


def lock_run_dir(output_dir: str | Path) -> FolderLock:
    """Create ``output_dir`` if needed and hold its ``train.lock`` (release it when the run ends).

    Raises:
        ConfigError: another live run holds the folder (the message names its pid and host), or the folder cannot be
            created.
    """
    return FolderLock(
        Path(output_dir), LOCK_FILE, "another training run", "wait for it to finish or choose another output_dir"
    )


def check_output_dir(
    cfg: TrainConfig, resume_dir: Path | None, *, overwrite: bool = False, force_resume: bool = False
) -> list[str]:
    """Refuse a run that would mix with another in ``cfg.output_dir``; reads only (every rank may call it).

    Args:
        cfg: the run config.
        resume_dir: the checkpoint resumed from, or None for a fresh run.
        overwrite: replace the run the folder holds.
        force_resume: resume even when keys that change training differ from the checkpoint's config.

    Returns:
        the differing keys a forced resume accepted (empty otherwise).

    Raises:
        ConfigError: the folder holds another run (fresh run without ``overwrite``), or the config changed since
            the checkpoint (without ``force_resume``); the message names the folder or the keys.
        CheckpointError: the checkpoint has no readable ``train_config.yaml``.
    """
    out = Path(cfg.output_dir)
    if resume_dir is None:
        found = run_files(out)
        if found and not overwrite and not _restartable(out, cfg, found):
            names = ", ".join(p.name for p in found[:4]) + (", ..." if len(found) > 4 else "")
            raise ConfigError(
                f"output_dir {out}: holds another run ({names}); resume it (--resume), replace it (--overwrite) "
                "or choose another output_dir"
            )
        return []
    saved = resume_dir / CONFIG_FILE
    if saved.is_file():
        try:
            changes = resume_changes(read_mapping(saved), cfg)
        except ConfigError as e:
            raise CheckpointError(str(e)) from e
    elif force_resume:
        changes = [f"(no {CONFIG_FILE} in the checkpoint)"]
    else:
        raise CheckpointError(f"{resume_dir}: no {CONFIG_FILE}, so the run config cannot be checked (--force-resume)")
    if changes and not force_resume:
        raise ConfigError(
            f"--resume {resume_dir}: the config differs from the checkpoint's in keys that change training: "
            f"{'; '.join(changes)}; use the checkpoint's config or force it (--force-resume)"
        )
    own = out / CONFIG_FILE
    elsewhere = not _same_dir(resume_dir.parent, out)  # resuming another folder's checkpoint into this one
    if not overwrite and elsewhere and own.is_file() and resume_changes(read_mapping(own), cfg):
        raise ConfigError(
            f"output_dir {out}: holds another run (its {CONFIG_FILE} differs from this config); "
            "replace it (--overwrite) or choose another output_dir"
        )
    return changes


def prepare_output_dir(output_dir: str | Path, resume_dir: Path | None, *, overwrite: bool = False) -> None:
    """Make ``output_dir`` ready (main process only, after :func:`check_output_dir` passed on every rank).

    Restores a ``final/`` left aside by an interrupted replacement; for a fresh run or with ``overwrite`` deletes the
    run files (the checkpoint resumed from excepted); on resume deletes checkpoints after the resumed step and cuts
    ``metrics.jsonl`` back to the rows written before the checkpoint.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    recover_dir(out / FINAL)
    keep = resume_dir.resolve() if resume_dir is not None else None
    if overwrite or resume_dir is None:  # a fresh run got here only past check_output_dir
        for path in run_files(out):
            if keep is not None and path.resolve() == keep:
                continue
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    if resume_dir is None:
        return
    state = ckpt.read_json(resume_dir / ckpt.STATE_FILE)
    step = int(state["step"])
    for c in ckpt.list_checkpoints(out):
        if (ckpt.checkpoint_step(c) or 0) > step and c.resolve() != keep:
            shutil.rmtree(c)
    truncate_metrics(out / METRICS_FILE, step, int(state.get("metrics_rows", -1)))


def truncate_metrics(path: Path, step: int, rows: int = -1) -> int:
    """Rewind a ``metrics.jsonl`` to a checkpoint; returns the rows dropped (a torn last line is always dropped).

    Args:
        path: the file (missing: nothing to do).
        step: the checkpoint's step; rows of later steps are dropped.
        rows: the number of rows the run had written when the checkpoint was saved (``TrainState.metrics_rows``);
            when known (>= 0) exactly those are kept, so an evaluation logged at ``step`` after the checkpoint goes
            too and is not repeated on resume. -1 (checkpoints written before the count existed): keep every row up
            to ``step``.

    The file is rewritten through a temporary file and an atomic rename.
    """
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            dropped += 1
            continue
        in_step = isinstance(row, dict) and int(row.get("step", 0)) <= step
        if in_step and (rows < 0 or len(kept) < rows):
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        write_text_atomic(path, "".join(f"{line}\n" for line in kept))
    return dropped


def finished_step(cfg: TrainConfig) -> int | None:
    """The last step of a run that already finished in ``cfg.output_dir`` with this config, else None.

    Finished means ``final/`` records the run's last step (``final/trainer_state.json``, written with it) and its
    ``train_config.yaml`` matches ``cfg`` in every key that changes training; a config asking for more steps (with
    ``--force-resume``) is not finished.
    """
    final = Path(cfg.output_dir) / FINAL
    try:
        step = int(json.loads((final / ckpt.STATE_FILE).read_text())["step"])
        same = not resume_changes(read_mapping(final / CONFIG_FILE), cfg)
    except (OSError, ValueError, KeyError, TypeError, ConfigError):  # no final/, or not one this check can read
        return None
    return step if same and step == cfg.num_steps else None


def _restartable(out: Path, cfg: TrainConfig, found: list[Path]) -> bool:
    """Whether ``found`` is what the same run leaves when stopped before its first checkpoint (a rerun replaces it)."""
    if any(p.name == FINAL or p.name.startswith("checkpoint-") for p in found):
        return False
    own = out / CONFIG_FILE
    try:
        return own.is_file() and not resume_changes(read_mapping(own), cfg)
    except ConfigError:  # an unreadable config is not evidence of the same run
        return False


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False
