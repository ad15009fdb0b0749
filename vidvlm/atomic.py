"""Outputs that are either whole or absent: write beside the target, then rename over it.

* :func:`write_text_atomic` / :func:`write_atomic` for one file (metrics, predictions, manifests, configs);
* :func:`building_dir` (or :func:`staging_dir` + :func:`publish_dir`) for a directory (a prepared LM, an imported
  checkpoint);
  :func:`replace_dir` (training checkpoints, ``final/``) swaps a finished directory in with one atomic exchange.

A kill at any moment leaves the old output or the new one, never a mix; two processes that write the same output
each write their own temporary (unique names), and the last rename wins, whole. Temporaries are siblings of the
target (same file system, so the rename is atomic) and are removed when writing fails.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path


def _read_umask() -> int:
    """The process umask, read without changing it where Linux shows it (``os.umask`` can only be read by setting
    it, which for a moment changes the mode of files other threads create)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


_UMASK = _read_umask()  # at import (the main thread, before any writer thread); later umask changes are not seen


def _umask_mode(path: Path) -> None:
    """The mode a plain ``open`` would give (``mkstemp`` and some writers leave 0600)."""
    path.chmod(0o666 & ~_UMASK)


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (best effort: some file systems cannot open a directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None], *, durable: bool = True) -> None:
    """Write ``path`` through ``write(tmp)`` (any writer that takes a path), fsync, then rename over ``path``.

    ``durable=False`` skips the fsyncs: the file still appears whole or not at all to every reader, but a power
    loss may leave it empty (for many small files whose completion another durable file records)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        _umask_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """``Path(path).write_text(text)`` (UTF-8), atomically."""
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def staging_dir(out: str | os.PathLike) -> Path:
    """A new, empty hidden sibling of ``out`` to build a directory output in (then :func:`publish_dir`)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()  # not tempfile.mkdtemp: its 0700 would make a shared base unreadable to others
    return tmp


@contextlib.contextmanager
def building_dir(out: str | os.PathLike) -> Iterator[Path]:
    """``with building_dir(out) as tmp:`` write the directory's files into ``tmp``; on a normal exit it replaces
    ``out`` whole (:func:`publish_dir`), on an exception it is removed and ``out`` is left as it was."""
    tmp = staging_dir(out)
    try:
        yield tmp
        publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def fsync_tree(path: Path) -> None:
    """fsync every file under ``path``, then ``path`` itself."""
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(path)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns:
        False where the platform, C library or filesystem cannot (the caller falls back to two renames).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a C library without renameat2 (glibc < 2.28, some musl)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # kernel or filesystem without the flag
        return False
    raise OSError(err, os.strerror(err), str(b))


def _old_name(target: Path) -> Path:
    return target.with_name(f"old-{target.name}")


def replace_dir(new: Path, target: Path) -> None:
    """Move the whole directory ``new`` (same filesystem) to ``target``, replacing what is there.

    The new contents are fsynced first; an existing ``target`` is exchanged with ``new`` atomically, so that at every
    instant ``target`` is either the old or the new directory, then the old one is deleted. Where an atomic exchange
    is not available, ``target`` is renamed to ``old-{name}`` and ``new`` renamed in; :func:`recover_dir` puts the
    old one back after a crash between the two renames.
    """
    fsync_tree(new)
    if not target.exists():
        new.rename(target)
    elif _exchange(new, target):
        shutil.rmtree(new)  # it now holds the old contents
    else:
        old = _old_name(target)
        if old.exists():
            shutil.rmtree(old)
        target.rename(old)
        new.rename(target)
        shutil.rmtree(old)
    fsync_dir(target.parent)


def recover_dir(target: Path) -> None:
    """Undo an interrupted :func:`replace_dir` fallback: restore ``old-{name}`` when ``target`` is missing."""
    old = _old_name(target)
    if old.is_dir() and not target.exists():
        old.rename(target)
    elif old.exists():
        shutil.rmtree(old, ignore_errors=True)


def publish_dir(tmp: Path, out: str | os.PathLike) -> Path:
    """Put the finished ``tmp`` (from :func:`staging_dir`) in place of ``out`` with :func:`replace_dir`, after giving
    its files the modes a plain ``open`` would; ``out`` is always a whole directory."""
    out = Path(out)
    recover_dir(out)  # a crash inside an earlier fallback exchange
    for path in tmp.iterdir():
        if path.is_file():
            _umask_mode(path)
    replace_dir(tmp, out)
    return out


__all__ = [
    "building_dir",
    "fsync_dir",
    "fsync_tree",
    "publish_dir",
    "recover_dir",
    "replace_dir",
    "staging_dir",
    "write_atomic",
    "write_text_atomic",
]
