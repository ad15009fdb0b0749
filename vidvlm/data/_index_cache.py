"""Keeps the exact frame index of a video, so that reopening a file costs a ``stat`` instead of a demux pass.

An entry is keyed by the file's resolved path and the requested stream, and stamped with the file's size, mtime and
ctime (nanoseconds): a file that changed in any of them is indexed again, never served from the old entry. Entries
live in an in-process LRU (bounded by the frames it holds) and, when the user names a directory (the ``index_cache``
argument of ``open_video`` or ``VIDVLM_INDEX_CACHE``), on disk as one ``.npz`` per file: two int64 arrays and a JSON
string, read with ``allow_pickle=False``. A disk entry is written to a temporary file and renamed into place, so
readers never see half an entry and concurrent writers of one entry leave one whole copy. An entry that does not load,
names another file or stamp, whose digest (SHA-256 over the arrays and the JSON) does not match, or that fails the
structural checks below is rebuilt and rewritten, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import asdict, dataclass

import numpy as np

from vidvlm.data._pyav import FrameIndex

ENV = "VIDVLM_INDEX_CACHE"
# Bump when FrameIndex or its meaning changes: entries of another version are rebuilt. 2: MPEG-TS indexes written
# before seeks were checked could miss the last GOPs, and packets the demuxer flags corrupt are now frames. 3: the
# ``seekable``, ``open_gop`` and ``header_duration`` flags.
_VERSION = 3
# About 16 MB of pts (a one-hour 30 fps video holds 108,000 frames).
_MAX_FRAMES_IN_MEMORY = 2_000_000
_SCALARS = {
    "stream": int,
    "num_video_streams": int,
    "codec": str,
    "container_format": str,
    "time_base": float,
    "duration": float,
    "width": int,
    "height": int,
    "rotation": int,
    "complete": bool,
    "seekable": bool,
    "open_gop": bool,
    "header_duration": bool,
}


@dataclass(frozen=True)
class Stamp:
    """What identifies one version of one file (and the stream asked of it)."""

    path: str  # resolved (realpath), so that two names of one file share an entry
    stream: int | None
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, path: str, stream: int | None, st: os.stat_result) -> Stamp:
        return cls(os.path.realpath(path), stream, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


_memory: OrderedDict[tuple[str, int | None], tuple[Stamp, FrameIndex]] = OrderedDict()
_memory_frames = 0
_lock = threading.Lock()
_warned: set[str] = set()


def directory(index_cache: str | os.PathLike[str] | None) -> str | None:
    """The disk cache directory: ``index_cache`` when given, else ``$VIDVLM_INDEX_CACHE``; None (or "") for none."""
    chosen = os.fspath(index_cache) if index_cache is not None else os.environ.get(ENV, "")
    return chosen or None


def lookup(stamp: Stamp, cache_dir: str | None) -> FrameIndex | None:
    """The index stored for exactly this stamp (memory first, then disk), or None."""
    key = (stamp.path, stamp.stream)
    with _lock:
        hit = _memory.get(key)
        if hit is not None and hit[0] == stamp:
            _memory.move_to_end(key)
            return hit[1]
    if cache_dir is None:
        return None
    index = _read(_entry_path(cache_dir, stamp), stamp)
    if index is not None:
        _remember(stamp, index)
    return index


def store(stamp: Stamp, index: FrameIndex, cache_dir: str | None) -> None:
    """Keeps ``index`` in memory and, with a cache directory, on disk (atomically). Disk failures only warn."""
    _remember(stamp, index)
    if cache_dir is None:
        return
    try:
        os.makedirs(cache_dir, exist_ok=True)
        _write(_entry_path(cache_dir, stamp), stamp, index)
    except OSError as err:
        if cache_dir not in _warned:  # once per directory: a read-only cache must not flood a training log
            _warned.add(cache_dir)
            message = f"{cache_dir}: cannot write the video index cache ({err}); indexing in memory only"
            warnings.warn(message, stacklevel=3)


def clear_memory() -> None:
    """Empties the in-process cache (the disk cache is left alone)."""
    global _memory_frames
    with _lock:
        _memory.clear()
        _memory_frames = 0


def _remember(stamp: Stamp, index: FrameIndex) -> None:
    global _memory_frames
    with _lock:
        old = _memory.pop((stamp.path, stamp.stream), None)
        if old is not None:
            _memory_frames -= len(old[1].pts)
        _memory[(stamp.path, stamp.stream)] = (stamp, index)
        _memory_frames += len(index.pts)
        while _memory_frames > _MAX_FRAMES_IN_MEMORY and len(_memory) > 1:
            _, (_, dropped) = _memory.popitem(last=False)
            _memory_frames -= len(dropped.pts)


def _entry_path(cache_dir: str, stamp: Stamp) -> str:
    name = hashlib.sha256(f"{stamp.path}\0{stamp.stream}".encode()).hexdigest()[:40]
    return os.path.join(cache_dir, f"{name}.npz")


def _digest(pts: np.ndarray, keyframes: np.ndarray, body: dict) -> str:
    h = hashlib.sha256(json.dumps(body, sort_keys=True).encode())
    h.update(np.ascontiguousarray(pts, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(keyframes, dtype="<i8").tobytes())
    return h.hexdigest()


def _write(entry: str, stamp: Stamp, index: FrameIndex) -> None:
    body = {"version": _VERSION, "stamp": asdict(stamp), "index": {k: getattr(index, k) for k in _SCALARS}}
    meta = json.dumps({**body, "digest": _digest(index.pts, index.keyframes, body)})
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(entry), prefix=".index-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, pts=index.pts, keyframes=index.keyframes, meta=np.array(meta))
        os.replace(tmp, entry)  # atomic: a reader sees the old entry or the new one, never a mix
    except BaseException:
        os.unlink(tmp)
        raise


def _read(entry: str, stamp: Stamp) -> FrameIndex | None:
    """Loads and checks one entry; None when it is missing, stale, of another file, or damaged in any way."""
    try:
        with np.load(entry, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            pts, keyframes = data["pts"], data["keyframes"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return None  # truncated, not a zip, a CRC mismatch, a pickled array, or a missing member
    try:
        if meta["version"] != _VERSION or meta["stamp"] != asdict(stamp):
            return None
        body = {k: meta[k] for k in ("version", "stamp", "index")}
        if pts.dtype != np.int64 or keyframes.dtype != np.int64 or meta["digest"] != _digest(pts, keyframes, body):
            return None
        scalars = meta["index"]
        if set(scalars) != set(_SCALARS) or not all(
            isinstance(scalars[k], t) and not (t is int and isinstance(scalars[k], bool)) for k, t in _SCALARS.items()
        ):
            return None
    except (KeyError, TypeError):
        return None
    if not _valid_arrays(pts, keyframes) or scalars["width"] <= 0 or scalars["height"] <= 0:
        return None
    return FrameIndex(pts=pts, keyframes=keyframes, **scalars)


def _valid_arrays(pts: np.ndarray, keyframes: np.ndarray) -> bool:
    """int64 [N] sorted presentation times and int64 [K] strictly increasing positions in [0, N), starting at 0."""
    return (
        pts.dtype == np.int64
        and keyframes.dtype == np.int64
        and pts.ndim == 1
        and keyframes.ndim == 1
        and pts.size > 0
        and keyframes.size > 0
        and bool(np.all(np.diff(pts) >= 0))
        and bool(np.all(np.diff(keyframes) > 0))
        and int(keyframes[0]) == 0
        and int(keyframes[-1]) < pts.size
    )
