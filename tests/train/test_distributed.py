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


def _torchrun(out, *args: str) -> None:
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [str(HERE / "train_tiny.py"), str(out), "stages.0.steps=6", "checkpoint_every=3", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.timeout(240)
def test_two_process_ddp(tmp_path):
    _torchrun(tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert [r["drawn"] for r in ranks] == [{"a": 48}, {"a": 48}]  # 6 steps x 4 samples x 2 ranks, summed
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

    # resume both ranks from step 3: the same losses and weights, and metrics.jsonl keeps one row per step
    _torchrun(tmp_path, f"--resume={tmp_path / 'checkpoint-00000003'}")
    again = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in again] == [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in again[3:]] == pytest.approx([r["loss"] for r in rows[3:]], rel=1e-6)
    resumed = json.loads((tmp_path / "rank0.json").read_text())["params"]
    for name, value in ranks[0]["params"].items():
        torch.testing.assert_close(torch.tensor(resumed[name]), torch.tensor(value), rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.timeout(180)
def test_two_process_evaluation_matches_one_process(tmp_path):
    """Each rank loss-evaluates, embeds, captions and answers its shard (11 samples: 6 + 5); the main process gathers
    the embeddings back in dataset order and the generated texts, and the metrics over the whole set equal one
    process's."""
    from eval_ranks import Numbered, OneHot, collate

    from vidvlm.train.evaluation import evaluate

    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run([*cmd, str(HERE / "eval_ranks.py"), str(tmp_path / "out.json")], env=env,
                          capture_output=True, text=True, timeout=150)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    two = json.loads((tmp_path / "out.json").read_text())
    one = evaluate(OneHot(11), Numbered(11), batch_size=3, collate_fn=collate, generation=True)
    assert two["world"] == 2
    assert one["t2v_R@1"] == one["v2t_R@1"] == one["t2v_caption_R@1"] == 100.0
    # each rank's captions and answers reach the main process: every caption right, "yes" right on the 5 odd clips
    assert one["caption_exact_match"] == 1.0 and one["caption_num"] == 11
    assert one["qa_parity_accuracy"] == pytest.approx(5 / 11) and one["qa_num"] == 11
    assert one["number_loss"] == pytest.approx(5.0)  # the mean of 0..10
    assert two["metrics"] == pytest.approx(one)
    assert two["captions"] == [Numbered(11)[i]["captions"] for i in range(11)]
