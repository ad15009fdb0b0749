"""Atomic checkpoints: crash mid-save, pruning, optimizer and RNG round trips (safetensors + JSON only)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from train_tiny import TinyDataset, TinyModel, collate, make_cfg

from vidvlm.errors import CheckpointError
from vidvlm.train import checkpoint as ckpt
from vidvlm.train.trainer import Trainer


def _run(out, **top):
    torch.manual_seed(0)
    t = Trainer(make_cfg(out, **top), model=TinyModel(), datasets={"a": TinyDataset(24)}, collate_fn=collate)
    return t, t.train()


def test_prune_keeps_last_k_and_files_are_safe(tmp_path):
    _run(tmp_path, checkpoint_every=2, keep_checkpoints=2)
    names = [p.name for p in ckpt.list_checkpoints(tmp_path)]
    assert names == ["checkpoint-00000006", "checkpoint-00000008"]
    files = {p.name for p in (tmp_path / names[-1]).iterdir()}
    assert files == {
        "config.yaml",
        "model.safetensors",
        "train_config.yaml",
        "optimizer.safetensors",
        "optimizer.json",
        "rng_state_0.safetensors",
        "rng_state_0.json",
        "trainer_state.json",
    }
    assert not list(tmp_path.glob("tmp-*"))
    state = ckpt.read_json(tmp_path / names[-1] / ckpt.STATE_FILE)
    assert state["step"] == 8 and state["stage"] == 0 and state["scheduler"]["last_epoch"] == 8


def test_crash_mid_save_keeps_previous(tmp_path, monkeypatch):
    t, _ = _run(tmp_path, checkpoint_every=4, keep_checkpoints=1)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["checkpoint-00000008"]

    def boom(directory, rank):
        (directory / f"rng_state_{rank}.json").write_text("{trunc")  # half-written, then the process dies
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(ckpt, "save_rng", boom)
    t.state.step = 12
    opt = torch.optim.AdamW(t.acc.unwrap_model(t.model).parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    with pytest.raises(KeyboardInterrupt):
        t.save_checkpoint(opt, sched)
    assert (tmp_path / "tmp-checkpoint-00000012").is_dir()
    assert ckpt.latest_checkpoint(tmp_path).name == "checkpoint-00000008"  # the half-written one is ignored
    monkeypatch.undo()
    # resume from the surviving checkpoint works, and the next save clears the stale temporary directory
    torch.manual_seed(0)
    cfg = make_cfg(tmp_path, ["stages.0.steps=10"], checkpoint_every=10, keep_checkpoints=1)
    t = Trainer(cfg, model=TinyModel(), datasets={"a": TinyDataset(24)}, collate_fn=collate)
    hist = t.train(resume="auto", force_resume=True)  # 10 steps instead of 8: a changed schedule, forced
    assert [m["step"] for m in hist if "grad_norm" in m] == [9, 10]
    assert not list(tmp_path.glob("tmp-*"))
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["checkpoint-00000010"]


def test_resume_auto_and_if_any(tmp_path):
    with pytest.raises(CheckpointError, match="found no complete checkpoint.*if-any"):
        ckpt.resolve_resume("auto", tmp_path)
    assert ckpt.resolve_resume("if-any", tmp_path) is None  # a fresh run
    assert ckpt.resolve_resume("if-any", tmp_path / "not_made_yet") is None
    for step in (2, 4):
        (tmp_path / ckpt.checkpoint_name(step)).mkdir()
        (tmp_path / ckpt.checkpoint_name(step) / ckpt.STATE_FILE).write_text("{}")
    (tmp_path / ckpt.checkpoint_name(6)).mkdir()  # incomplete: never chosen
    for mode in ("auto", "if-any"):
        assert ckpt.resolve_resume(mode, tmp_path) == tmp_path / ckpt.checkpoint_name(4)


def test_incomplete_checkpoint_is_refused(tmp_path):
    (tmp_path / "checkpoint-00000003").mkdir()
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        ckpt.resolve_resume(str(tmp_path / "checkpoint-00000003"), tmp_path)
    assert ckpt.latest_checkpoint(tmp_path) is None


def test_optimizer_round_trip(tmp_path):
    model = TinyModel()
    opt = torch.optim.AdamW([{"params": [model.encoder.weight], "lr": 0.1}, {"params": [model.head.weight]}], lr=0.01)
    for _ in range(3):
        model.encoder.weight.sum().add(model.head.weight.pow(2).sum()).backward()
        opt.step()
    ckpt.save_optimizer(opt, tmp_path)
    opt2 = torch.optim.AdamW([{"params": [model.encoder.weight], "lr": 0.5}, {"params": [model.head.weight]}], lr=0.02)
    ckpt.load_optimizer(opt2, tmp_path)
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for k in a["state"]:
        for name, v in a["state"][k].items():
            torch.testing.assert_close(b["state"][k][name], v)
    wrong = torch.optim.AdamW([model.encoder.weight, model.head.weight])
    with pytest.raises(CheckpointError, match="does not match"):
        ckpt.load_optimizer(wrong, tmp_path)


def test_rng_round_trip(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    ckpt.save_rng(tmp_path, 0)
    expected = (random.random(), np.random.rand(), torch.rand(2))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    ckpt.load_rng(tmp_path, 0)
    got = (random.random(), np.random.rand(), torch.rand(2))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])
