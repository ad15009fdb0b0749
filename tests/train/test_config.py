"""Strict run configs: unknown keys and bad values name the key and the file; overrides; optimiser groups."""

from __future__ import annotations

import pytest
import torch
import yaml
from train_tiny import TinyModel, make_cfg

from vidvlm.errors import ConfigError
from vidvlm.train.config import StageConfig, load_train_config
from vidvlm.train.optim import apply_stage_trainable, build_optimizer, lr_factor

BASE = {
    "output_dir": "runs/x",
    "model": {"family": "tiny"},
    "data": {"datasets": {"a": {"manifest": "a.jsonl"}}},
    "stages": [{"name": "s", "steps": 3}],
}


def _write(tmp_path, data, name="run.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("patch", "key"),
    [
        ({"learning_rate": 1.0}, "learning_rate"),
        ({"optim": {"lr": 1e-3, "momentum": 0.9}}, "momentum"),
        ({"data": {"datasets": {"a": {"manifest": "a.jsonl", "shuffle": True}}}}, "shuffle"),
        ({"stages": [{"name": "s", "steps": 3, "train": ["head"]}]}, "train"),
    ],
)
def test_unknown_key_names_key_and_file(tmp_path, patch, key):
    path = _write(tmp_path, {**BASE, **patch}, "bad_run.yaml")
    with pytest.raises(ConfigError, match=rf"bad_run\.yaml.*'{key}'"):
        load_train_config(path)


def test_bad_values(tmp_path):
    with pytest.raises(ConfigError, match=r"run\.yaml\.mixed_precision.*'fp8'"):
        load_train_config(_write(tmp_path, {**BASE, "mixed_precision": "fp8"}))
    with pytest.raises(ConfigError, match="data.mixture.b: no such dataset"):
        load_train_config(_write(tmp_path, {**BASE, "data": {**BASE["data"], "mixture": {"b": 1.0}}}))
    with pytest.raises(ConfigError, match="stages: at least one stage"):
        load_train_config(_write(tmp_path, {**BASE, "stages": []}))
    with pytest.raises(ConfigError, match="model.family"):
        load_train_config(_write(tmp_path, {**BASE, "model": {}}))


def test_overrides(tmp_path):
    path = _write(tmp_path, BASE)
    cfg = load_train_config(path, ["optim.lr=0.5", "stages.0.steps=7", "data.batch_size=3", "nonfinite=stop"])
    assert (cfg.optim.lr, cfg.stages[0].steps, cfg.data.batch_size, cfg.nonfinite) == (0.5, 7, 3, "stop")
    with pytest.raises(ConfigError, match=r"run\.yaml.*'lrr'"):
        load_train_config(path, ["optim.lrr=0.5"])
    with pytest.raises(ConfigError, match="expected an integer"):
        load_train_config(path, ["stages.0.steps=many"])


def test_param_groups_and_no_decay(tmp_path):
    model = TinyModel()
    cfg = make_cfg(tmp_path)
    stage = StageConfig(name="s", steps=1, lr=0.1, lr_mult={"encoder": 0.5})
    apply_stage_trainable(model, stage)
    opt = build_optimizer(model, cfg.optim, stage)
    by_name = {n: (g["lr"], g["weight_decay"]) for g in opt.param_groups for n in g["names"]}
    assert by_name["head.weight"] == pytest.approx((0.2, 0.1))  # optim.groups head lr_mult 2
    assert by_name["head.bias"] == pytest.approx((0.2, 0.0))
    assert by_name["encoder.weight"] == pytest.approx((0.05, 0.1))  # stage lr_mult 0.5
    assert by_name["norm.weight"] == pytest.approx((0.1, 0.0))
    frozen = StageConfig(name="f", steps=1, frozen=["encoder"])
    apply_stage_trainable(model, frozen)
    opt = build_optimizer(model, cfg.optim, frozen)
    names = {n for g in opt.param_groups for n in g["names"]}
    assert "encoder.weight" not in names and "head.weight" in names
    assert all(p.requires_grad == (not n.startswith("encoder")) for n, p in model.named_parameters())
    assert isinstance(opt, torch.optim.AdamW)


def test_schedule_shape():
    f = [lr_factor(s, 10, 2, 0.1) for s in range(11)]
    assert f[0] == pytest.approx(0.5) and f[1] == pytest.approx(1.0) and f[2] == pytest.approx(1.0)
    assert f[10] == pytest.approx(0.1) and all(a >= b for a, b in zip(f[1:], f[2:], strict=False))
