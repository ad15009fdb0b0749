"""One writer per output folder: an exclusive ``flock`` on a lock file inside it, held while the writer runs.

A second writer into the same folder (another process, or another run in the same process) is refused at once with
a one-line :class:`~vidvlm.errors.ConfigError` naming the holder's pid and host, before it reads or changes
anything. The kernel drops the lock when its process ends, so a killed run never leaves the folder locked, and the
lock file stays (removing it would let two writers lock two different files). Feature extraction
(``extract.lock``) and training (``train.lock``) use it.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from vidvlm.errors import ConfigError


class FolderLock:
    """An exclusive ``flock`` on ``folder/name``, held until :meth:`release` (or the process ends).

    Args:
        folder: the output folder (created if missing).
        name: the lock file's name inside it.
        what: who would hold such a folder, for the message (``"another extraction"``).
        busy: the refusal's advice after the holder (``"wait for it to finish or use another --out"``).

    Raises:
        ConfigError: another writer holds the folder (the message names its pid and host), or the folder cannot be
            created.
    """

    def __init__(self, folder: Path, name: str, what: str, busy: str) -> None:
        folder = Path(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"{folder}: cannot create the output directory: {e.strerror}") from e
        self.path = folder / name
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 256, 0).decode(errors="replace").strip() or "a writer that is starting"
            os.close(self._fd)
            self._fd = None
            raise ConfigError(f"{folder}: {what} is writing into this directory ({holder}); {busy}") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)

    def release(self) -> None:
        """Unlock (the file stays)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


__all__ = ["FolderLock"]
