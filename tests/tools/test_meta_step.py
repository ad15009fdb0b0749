"""benchmarks/meta_step.py, the GPU pre-flight: one step of each stage of a real config on the meta device."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.models.tiny_lm import make_tiny_lm
from tests.tools.test_train_llava import CONFIG

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("peft")


@pytest.mark.timeout(300)
def test_meta_step_runs_every_stage_and_counts_the_reads_and_copies(tmp_path):
    config = tmp_path / "llava.yaml"
    text = CONFIG.format(out=tmp_path / "run", lm=make_tiny_lm(tmp_path / "lm"), data=tmp_path / "data")
    config.write_text(text.replace("  max_length: 64\n", "  max_length: 96\n  frame_times: true\n"))
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/meta_step.py"), "--config", str(config)],
        capture_output=True, text=True, timeout=280, cwd=ROOT,
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("stage ")]
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    # frame times: the layout reads the clips' timestamps on the host, where the trainer leaves them; host values
    # (ids, labels, positions) go over without a wait
    assert lines == [
        f"stage {name!r} (video (4, 4, 3, 32, 32)): ok; 0 reads of the device: none; 0 blocking copies to it: none"
        for name in ("align", "instruct")
    ], lines
    assert not (tmp_path / "run").exists()  # a pre-flight writes no run


def test_meta_step_bad_config_is_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/meta_step.py"), "--config", str(tmp_path / "missing.yaml")],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: {tmp_path / 'missing.yaml'}: config file not found"]
