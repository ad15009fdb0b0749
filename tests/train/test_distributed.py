"""Two CPU processes (gloo) really train together: torchrun + ACCELERATE_USE_CPU=1 through the real trainer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_tiny import TinyDataset, TinyModel, collate

from vidvlm.train.data import mix_seed as _mix_seed

HERE = Path(__file__).parent


@pytest.mark.timeout(180)
def test_two_process_ddp(tmp_path):
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [str(HERE / "train_tiny.py"), str(tmp_path), "stages.0.steps=6", "checkpoint_every=3"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {r["world_size"] for r in rows} == {2}
    # each rank saw 6 batches of 4 distinct samples; in an epoch (32 samples = 4 global batches) no sample twice
    seen0, seen1 = ranks[0]["seen"], ranks[1]["seen"]
    assert len(seen0) == len(seen1) == 24
    assert not set(seen0[:16]) & set(seen1[:16]) and len(set(seen0[:16]) | set(seen1[:16])) == 32
    # DDP kept the replicas identical
    for name, value in ranks[0]["params"].items():
        assert value == ranks[1]["params"][name], name
    # the logged loss of step 1 is the mean of the two ranks' halves (dropout seeded per step and rank)
    torch.manual_seed(0)
    model = TinyModel().train()
    data = TinyDataset(32)
    data.set_epoch(0)
    halves = []
    for rank, seen in enumerate((seen0, seen1)):
        torch.manual_seed(_mix_seed(0, 0, 0, rank))
        out = model(collate([data[i] for i in seen[:4]]))
        halves.append(float((out["ce_loss"] + out["aux_loss"]).detach()))
    assert rows[0]["step"] == 1
    assert rows[0]["loss"] == pytest.approx(sum(halves) / 2, rel=1e-5)
    assert halves[0] != pytest.approx(halves[1])
    assert (tmp_path / "checkpoint-00000006" / "rng_state_1.json").is_file()
    assert (tmp_path / "final" / "model.safetensors").is_file()
