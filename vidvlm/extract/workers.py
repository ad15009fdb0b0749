"""DataLoader workers of feature extraction: how they start (forkserver, preloaded) and how they end (with the main
process, also when it is killed)."""

from __future__ import annotations

import multiprocessing
import os
import select
import threading
import time

import torch

# Workers start from a clean forkserver process by default: a forked worker inherits the caller's threads and
# crashed (SIGSEGV) on CPU and on GPU after a transformers load_video + CLIP loop had run in the same process.
_DEFAULT_START = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else None
# What the forkserver imports once, so that each worker forked from it starts in milliseconds instead of importing
# torch (seconds per worker, every run). The server only imports: it runs no torch op and starts no thread, which is
# what makes forking it safe. "__main__" stays first, as in multiprocessing's default (samplers defined in a script).
FORKSERVER_PRELOAD = ["__main__", "torch", "vidvlm.extract.api"]


def loader_context(worker_start: str | None, num_workers: int) -> str | None:
    """The DataLoader start method for ``worker_start`` (None: forkserver where available, preloaded)."""
    if not num_workers:
        return None
    method = worker_start or _DEFAULT_START
    if method == "forkserver":  # no effect once the process's forkserver runs (then it was preloaded already)
        multiprocessing.get_context("forkserver").set_forkserver_preload(FORKSERVER_PRELOAD)
    return method


def worker_init(main_pid: int, _worker_id: int) -> None:
    """``worker_init_fn`` (bind ``main_pid`` with ``functools.partial``): one thread, and exit with ``main_pid``."""
    # Workers decode; one intra-op thread each keeps N workers from oversubscribing the cores the encoder uses.
    torch.set_num_threads(1)
    exit_with(main_pid)


def exit_with(pid: int) -> None:
    """End this process as soon as process ``pid`` ends (a DataLoader worker watching the main process).

    A forkserver worker is the forkserver's child, not the main process's, and it holds the forkserver's and the
    resource tracker's pipes open: when the main process is killed, neither the worker (whose parent is still
    alive) nor those two (whose pipes are still open) notice. A daemon thread waits on a pidfd of ``pid`` (readable
    when it exits, zombie or not; a 0.5 s poll where pidfds are missing) and exits the process; then the
    forkserver and the resource tracker see their pipes close and exit too.
    """
    threading.Thread(target=_watch, args=(pid,), name="vidvlm-exit-with-parent", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:  # a killed, not yet reaped process is a zombie: gone for us
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _watch(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd here, or the process is already gone
        fd = None
    if fd is not None:
        select.select([fd], [], [])
    else:
        while _alive(pid):
            time.sleep(0.5)
    os._exit(1)
