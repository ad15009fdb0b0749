"""Stage lengths as fractions of ``total_steps``: resolution, one-line errors, zero-step stages and exact resume
across a fractional boundary."""

from __future__ import annotations

import pytest
import torch
import yaml
from train_tiny import TinyDataset, TinyModel, collate, make_cfg

from vidvlm.config import to_dict
from vidvlm.errors import ConfigError
from vidvlm.train.config import resolve_stage_steps, resume_changes
from vidvlm.train.trainer import Trainer


@pytest.mark.parametrize(
    ("steps", "total", "expected"),
    [
        ([0.8, 0.2], 10, [8, 2]),
        ([0.5, 0.5, 4], 14, [5, 5, 4]),  # the integer stage first takes its steps; the fractions share the rest
        ([0.0, 1.0, 3], 13, [0, 10, 3]),
        ([1 / 3, 1 / 3, 1 / 3], 10, [3, 4, 3]),  # cumulative boundaries round(10/3)=3, round(20/3)=7, 10
        ([5, 3], None, [5, 3]),
        ([5, 3], 8, [5, 3]),
    ],
)
def test_resolution(steps, total, expected):
    assert resolve_stage_steps(steps, total) == expected


@pytest.mark.parametrize(
    ("steps", "total", "message"),
    [
        ([0.8, 0.2], None, r"^total_steps: required when a stage gives its steps as a fraction"),
        ([0.8, 0.1], 10, r"^stages: the fractional steps \[0\.8, 0\.1\] sum to 0\.9; they must sum to 1"),
        ([4, 5], 10, r"^total_steps: 10, but the stages' steps sum to 9"),
        ([0.5, 0.5, 12], 10, r"^total_steps: 10 is less than the integer stages' 12 steps"),
        ([1.0], 0, r"^total_steps: must be >= 1"),
    ],
)
def test_errors_name_the_key(steps, total, message):
    with pytest.raises(ConfigError, match=message):
        resolve_stage_steps(steps, total)


def test_overrides_and_a_fraction_out_of_range(tmp_path):
    stages = "stages=[{name: text, steps: 0.8}, {name: mixed, steps: 0.2}, {name: tune, steps: 4}]"
    cfg = make_cfg(tmp_path, [stages, "total_steps=24", "stages.0.steps=0.5", "stages.1.steps=0.5"])
    assert (cfg.stage_steps, cfg.num_steps) == ([10, 10, 4], 24)
    assert [s["steps"] for s in to_dict(cfg)["stages"]] == [0.5, 0.5, 4]  # the saved config keeps the fractions
    with pytest.raises(ConfigError, match=r"stage 'text': steps as a fraction must be in \[0, 1\], got 1\.5"):
        make_cfg(tmp_path, [stages, "total_steps=24", "stages.0.steps=1.5"])


def _trainer(out, overrides, **top):
    torch.manual_seed(0)
    cfg = make_cfg(out, overrides, **top)
    return Trainer(cfg, model=TinyModel(), datasets={"a": TinyDataset(24)}, collate_fn=collate)


def _losses(history):
    return [(m["step"], m["stage"], m["loss"]) for m in history if "grad_norm" in m]


def test_resume_across_a_fractional_boundary_is_exact(tmp_path):
    # 10 steps: stage a 7, stage b 3 (head only, another lr); checkpoints at 6 (before the boundary) and 8 (after)
    over = ["total_steps=10", "stages=[{name: a, steps: 0.7}, {name: b, steps: 0.3, trainable: [head], lr: 0.01}]"]
    top = {"checkpoint_every": 2, "keep_checkpoints": 10}
    full = _losses(_trainer(tmp_path / "full", over, **top).train())
    assert [(s, st) for s, st, _ in full] == [(s, "a" if s <= 7 else "b") for s in range(1, 11)]
    for at in (6, 8):
        part = tmp_path / f"part{at}"
        _trainer(part, over, **top).train()
        got = _losses(_trainer(part, over, **top).train(resume=part / f"checkpoint-{at:08d}"))
        expected = [x for x in full if x[0] > at]
        assert [x[:2] for x in got] == [x[:2] for x in expected]
        assert [x[2] for x in got] == pytest.approx([x[2] for x in expected], rel=1e-6, abs=1e-7)


def test_a_stage_of_no_steps_is_skipped(tmp_path):
    over = ["total_steps=4", "stages=[{name: a, steps: 0.0}, {name: b, steps: 1.0}]"]
    assert {st for _, st, _ in _losses(_trainer(tmp_path, over).train())} == {"b"}


def test_a_checkpoint_saved_before_a_key_existed_resumes(tmp_path):
    cfg = make_cfg(tmp_path, [])
    saved = yaml.safe_load(yaml.safe_dump(to_dict(cfg)))
    del saved["total_steps"]  # written before total_steps and data.datasets.*.kind existed
    del saved["data"]["datasets"]["a"]["kind"]
    assert resume_changes(saved, cfg) == []
    saved["stages"][0]["steps"] = 9
    assert resume_changes(saved, cfg) == ["stages.0.steps: 9 -> 8"]
