"""An on-disk feature store that survives interruption: safetensors shards beside a JSONL index.

Layout of an output directory::

    extract.json              the run's settings (model, level, frames, ...); a rerun must match them
    extract.lock              held (``flock``) by the run writing into the directory; names its pid and host
    shard-00000.safetensors   rows of several sources: ``features`` [R, ...] (or ``layer.<k>`` per chosen layer)
    index.jsonl               one object per source: {"source", "shard", "rows": [start, end], "timestamps"}
                              or {"source", "error"} for a source that could not be read

Crash safety: a shard is written to ``*.tmp``, fsynced and renamed; only then are its index lines appended and
fsynced. A source is done exactly when its index line is complete, so an interrupted run loses at most the shard in
progress, and a rerun skips every indexed source (failed ones too, unless asked to retry them). A shard file
that never reached the index is simply overwritten by the next run.

One writer at a time: a :class:`ShardWriter` holds an exclusive ``flock`` on ``extract.lock`` until it is closed,
and a second writer into the same directory (another process, or another run on the same host) is refused with the
holder's pid and host. The lock dies with its process, so a killed run never leaves the directory locked.

An index is data, not a path to follow: a ``shard`` entry must be a plain ``shard-NNNNN.safetensors`` name of a file
inside the directory; ``../x``, absolute paths and symlinks leading out of the directory are refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vidvlm.atomic import write_atomic
from vidvlm.errors import ConfigError
from vidvlm.extract.result import FeatureResult, from_rows, to_rows
from vidvlm.locks import FolderLock

INDEX = "index.jsonl"
SETTINGS = "extract.json"
LOCK = "extract.lock"
SHARD_NAME = re.compile(r"shard-(\d{5,})\.safetensors")


def read_index(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The entries of ``out_dir/index.jsonl`` (empty when absent).

    A torn last line (the process died while appending) is ignored: that source simply is not done yet.

    Raises:
        ConfigError: a line other than the last is not valid JSON (the index was edited or damaged), or an entry's
            ``shard`` is not a shard file inside ``out_dir`` (see the module docstring).
    """
    path = Path(out_dir) / INDEX
    if not path.exists():
        return []
    lines = path.read_text().split("\n")
    entries = []
    checked: set[str] = set()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:  # torn final write, no newline after it
                break
            raise ConfigError(f"{path}:{i + 1}: damaged index line: {e}") from e
        if not isinstance(entry, dict) or not isinstance(entry.get("source"), str):
            raise ConfigError(f"{path}:{i + 1}: an index line must be an object with a 'source'")
        if "shard" in entry and entry["shard"] not in checked:
            _check_shard(Path(out_dir), entry["shard"], f"{path}:{i + 1}")
            checked.add(entry["shard"])
        entries.append(entry)
    return entries


def _check_shard(out_dir: Path, name: object, where: str) -> None:
    """Refuse a ``shard`` entry that is not a plain shard name, or whose file resolves outside ``out_dir``."""
    if not isinstance(name, str) or not SHARD_NAME.fullmatch(name):
        raise ConfigError(f"{where}: shard {name!r} is not a shard file name (shard-NNNNN.safetensors) of this "
                          "directory; the index was edited or damaged")  # fmt: skip
    real = os.path.realpath(out_dir / name)
    if os.path.dirname(real) != os.path.realpath(out_dir):
        raise ConfigError(f"{where}: shard {name!r} leads outside {out_dir} (to {real}); refusing to read it")


def extraction_lock(folder: Path) -> FolderLock:
    """The lock a :class:`ShardWriter` holds on ``folder/extract.lock``, creating the folder (:mod:`vidvlm.locks`)."""
    return FolderLock(folder, LOCK, "another extraction", "wait for it to finish or use another --out")


def _drop_torn_tail(index: Path) -> None:
    """Cut a final line left without its newline by a crash, so that new lines do not append to it."""
    if not index.exists():
        return
    data = index.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(index, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
            f.flush()
            os.fsync(f.fileno())


class ShardWriter:
    """Buffers :class:`FeatureResult` objects and commits them shard by shard.

    Args:
        out_dir: the output directory (created).
        settings: what produced the features (model, level, sampler, ...). Stored in ``extract.json``; a rerun into
            the same directory with different settings raises rather than mixing incompatible features.
        shard_size: sources per shard (failed sources count too, so that errors reach the index promptly).
        retry_failed: treat sources that failed before as not done.
        background: commit shards in a writer thread, off the caller's critical path (one shard in flight at a
            time: memory holds at most two shards of results).
        on_commit: called with the number of shards committed so far, after each commit, in the caller's thread
            (with ``background=True``: when the commit is collected, at the next flush or at close).

    Raises:
        ConfigError: ``out_dir`` is an existing file, another writer holds it (:func:`extraction_lock`), or
            ``settings`` differ from the ones stored in it.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        settings: dict[str, Any],
        shard_size: int = 1000,
        retry_failed: bool = False,
        *,
        background: bool = False,
        on_commit: Callable[[int], None] | None = None,
    ):
        if shard_size < 1:
            raise ConfigError(f"shard_size: must be at least 1, got {shard_size}")
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise ConfigError(f"{self.out_dir}: the output must be a directory, and this is an existing file")
        self._lock = extraction_lock(self.out_dir)  # creates the directory
        try:
            self._open(settings, retry_failed)
        except BaseException:
            self._lock.release()
            raise
        self.shard_size = shard_size
        self.on_commit = on_commit
        self._pending: list[FeatureResult] = []
        self._inflight: tuple[Future, list[FeatureResult]] | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="vidvlm-shards") if background else None
        self.written = 0
        self.failed = 0
        self.commits = 0
        self.seconds_writing = 0.0  # spent committing shards (in the writer thread with background=True)
        self.seconds_waiting = 0.0  # the caller spent waiting for the writer thread

    def _open(self, settings: dict[str, Any], retry_failed: bool) -> None:
        self.level = settings["level"]
        settings_path = self.out_dir / SETTINGS
        settings = json.loads(json.dumps(settings))  # normalise tuples to lists for the comparison
        if settings_path.exists():
            old = json.loads(settings_path.read_text())
            if old != settings:
                diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
                raise ConfigError(
                    f"{settings_path}: this directory holds features made with other settings ({', '.join(diff)}: "
                    f"{[old.get(k) for k in diff]} vs {[settings.get(k) for k in diff]}); use a new --out directory"
                )
        else:
            write_atomic(settings_path, lambda p: p.write_text(json.dumps(settings, indent=2)))
        for stale in self.out_dir.glob("*.tmp"):  # half-written shard of an interrupted run
            stale.unlink()
        _drop_torn_tail(self.out_dir / INDEX)
        entries = read_index(self.out_dir)
        self.done: set[str] = {e["source"] for e in entries if retry_failed is False or "error" not in e}
        shard_ids = [int(SHARD_NAME.fullmatch(e["shard"]).group(1)) for e in entries if "shard" in e]
        self._next_shard = max(shard_ids, default=-1) + 1

    def add(self, result: FeatureResult) -> bool:
        """Queue one result; returns True when this call handed a full shard over to be committed."""
        self._pending.append(result)
        if len(self._pending) >= self.shard_size:
            self.flush()
            return True
        return False

    def flush(self) -> None:
        """Commit the pending results: the shard file first (atomically), then their index lines (fsynced).

        With ``background=True`` the commit runs in the writer thread and this returns at once, after waiting for
        the previous shard's commit: at most one shard is in flight, and shards reach the index in order.
        """
        self._collect()
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        name = None
        if any(r.ok for r in batch):
            name = f"shard-{self._next_shard:05d}.safetensors"
            self._next_shard += 1
        if self._pool is None:
            self._commit(batch, name)
            self._committed(batch)
        else:
            self._inflight = (self._pool.submit(self._commit, batch, name), batch)

    def _commit(self, batch: list[FeatureResult], name: str | None) -> None:
        start_time = time.perf_counter()
        parts: dict[str, list[torch.Tensor]] = {}
        lines = []  # in source order, so that the index reads like the input list
        start = 0
        for r in batch:
            if not r.ok:
                lines.append({"source": r.source, "error": r.error})
                continue
            rows = to_rows(r.features.detach().to("cpu", torch.float32), self.level)
            n = next(iter(rows.values())).shape[0]
            for key, t in rows.items():
                parts.setdefault(key, []).append(t)
            lines.append({"source": r.source, "shard": name, "rows": [start, start + n],
                          "timestamps": [float(t) for t in r.timestamps]})  # fmt: skip
            start += n
        if name is not None:
            tensors = {k: torch.cat(v).contiguous() for k, v in parts.items()}
            meta = {"level": self.level, "format": "vidvlm-features-1"}
            write_atomic(self.out_dir / name, lambda p: save_file(tensors, str(p), metadata=meta))
        with open(self.out_dir / INDEX, "a") as f:
            f.write("".join(json.dumps(line) + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
        self.seconds_writing += time.perf_counter() - start_time

    def _collect(self, report: bool = True) -> None:
        """Wait for the shard in flight (re-raising its error here) and count it as committed."""
        if self._inflight is None:
            return
        future, batch = self._inflight
        self._inflight = None
        start = time.perf_counter()
        try:
            future.result()
        finally:
            self.seconds_waiting += time.perf_counter() - start
        self._committed(batch, report)

    def _committed(self, batch: list[FeatureResult], report: bool = True) -> None:
        ok = sum(r.ok for r in batch)
        self.written += ok
        self.failed += len(batch) - ok
        self.done.update(r.source for r in batch)
        self.commits += 1
        if report and self.on_commit is not None:
            self.on_commit(self.commits)

    def close(self) -> None:
        """Commit what is pending, wait for the writer thread and release the directory."""
        try:
            self.flush()
            self._collect()
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        try:
            if self._inflight is not None:  # an error stopped the run: let the shard in flight finish, quietly
                with contextlib.suppress(Exception):
                    self._collect(report=False)
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
        finally:
            self._lock.release()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # On an exception the pending (not yet handed over) results are dropped on purpose: the index must only ever
        # describe shards that are fully on disk, and a rerun recomputes them. A shard already being written is
        # finished first: the writer thread cannot be stopped half-way, and the lock must outlive it.
        if exc_type is None:
            self.close()
        else:
            self._shutdown()


def iter_stored(out_dir: str | os.PathLike) -> Iterator[FeatureResult]:
    """Read back every indexed source of an output directory, in index order (failed sources have ``error``)."""
    out_dir = Path(out_dir)
    settings_path = out_dir / SETTINGS
    if not settings_path.exists():
        raise ConfigError(f"{out_dir}: not a feature directory (no {SETTINGS})")
    level = json.loads(settings_path.read_text())["level"]
    cache: dict[str, dict[str, torch.Tensor]] = {}
    for e in read_index(out_dir):
        if "error" in e:
            yield FeatureResult(e["source"], None, None, e["error"])
            continue
        if e["shard"] not in cache:
            cache.clear()  # index order follows shard order: keep one shard in memory
            with safe_open(str(out_dir / e["shard"]), framework="pt") as f:
                cache[e["shard"]] = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iter)
        start, end = e["rows"]
        tensors = {k: v[start:end] for k, v in cache[e["shard"]].items()}
        yield FeatureResult(e["source"], from_rows(tensors, level), torch.tensor(e["timestamps"], dtype=torch.float64))


def load_features(out_dir: str | os.PathLike) -> list[FeatureResult]:
    """Every indexed source of an output directory, as :class:`FeatureResult` objects (see :func:`iter_stored`)."""
    return list(iter_stored(out_dir))
