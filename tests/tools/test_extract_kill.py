"""Killing tools/extract_features.py (SIGKILL or SIGTERM) takes its DataLoader worker, the forkserver and the
resource tracker with it: they used to stay alive for a minute or more (the worker, about 750 MB on real models)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vidvlm.data.synthetic import make_synthetic
from vidvlm.models.contrastive import ContrastiveConfig, ContrastiveModel

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    manifest = make_synthetic(root / "media", 120, seed=3, frames=8, size=32)
    torch.manual_seed(0)
    model = ContrastiveModel(ContrastiveConfig.tiny())
    model.prepare_for_training([json.loads(line)["caption"] for line in manifest.read_text().splitlines()])
    model.save_pretrained(root / "ckpt")
    return root


def _stat(pid: int) -> tuple[int, str] | None:
    """``(ppid, state)`` of a live process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[1]), fields[0]


def _descendants(pid: int) -> set[int]:
    parents = {int(p): s[0] for p in os.listdir("/proc") if p.isdigit() and (s := _stat(int(p))) is not None}
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _running(pids: set[int]) -> set[int]:
    # a zombie has exited (an init that does not reap, as in some containers, may leave it listed)
    return {p for p in pids if (s := _stat(p)) is not None and s[1] != "Z"}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_forkserver_and_tracker_exit_with_the_killed_parent(setup, tmp_path, sig):
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "tools" / "extract_features.py"), str(setup / "media"), "--out", str(out),
           "--model", str(setup / "ckpt"), "--num-workers", "1", "--batch-size", "1", "--shard-size", "1",
           "--no-progress"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while not (out / "index.jsonl").exists() or not (out / "index.jsonl").read_text():
            assert proc.poll() is None, "the extraction ended before it could be killed"
            assert time.monotonic() < deadline, "no shard was written in 120 s"
            time.sleep(0.05)
        children = _descendants(proc.pid)
        assert len(children) >= 2  # the forkserver and the worker it forked (and the resource tracker)
        os.kill(proc.pid, sig)
        proc.wait()
        deadline = time.monotonic() + 10
        while _running(children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(children), f"still running 10 s after the parent died: {sorted(_running(children))}"
        assert len((out / "index.jsonl").read_text().splitlines()) < 121  # it was killed mid-run
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in _running(children):  # only the processes this test started
            os.kill(pid, signal.SIGKILL)
