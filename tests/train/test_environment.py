"""Where a run was computed: recorded in its checkpoints, checked on resume, reported by qa_table."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from train_tiny import TinyDataset, TinyModel, collate, make_cfg

from vidvlm.environment import NUMERIC_KEYS, environment, numeric_differences
from vidvlm.train.trainer import Trainer

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "qa_table.py"
_spec = importlib.util.spec_from_file_location("qa_table", _PATH)
qa_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(qa_table)


def _trainer(out):
    torch.manual_seed(0)
    cfg = make_cfg(out, None, checkpoint_every=3, keep_checkpoints=10)
    return Trainer(cfg, model=TinyModel(), datasets={"a": TinyDataset(24)}, collate_fn=collate)


def _state(directory: Path) -> dict:
    return json.loads((directory / "trainer_state.json").read_text())


def test_environment_describes_this_process():
    env = environment("cpu")
    assert env["accelerator"] == "cpu"
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["threads"] == torch.get_num_threads()
    assert env["torch"] == torch.__version__
    assert env["cpu"]  # a model name, never empty
    assert json.loads(json.dumps(env)) == env  # plain JSON values
    assert set(NUMERIC_KEYS) <= set(env)


def test_numeric_differences_name_only_keys_that_change_results():
    env = environment("cpu")
    assert numeric_differences(env, dict(env)) == []
    assert numeric_differences(env, {**env, "python": "0.0", "platform": "elsewhere"}) == []
    moved = numeric_differences(env, {**env, "cpu": "Another CPU", "threads": env["threads"] + 1})
    assert moved == [f"cpu: {env['cpu']} -> Another CPU", f"threads: {env['threads']} -> {env['threads'] + 1}"]
    assert numeric_differences(None, env) == [] and numeric_differences(env, {}) == []


def test_checkpoints_and_final_record_the_environment(tmp_path):
    _trainer(tmp_path).train()
    here = environment("cpu")
    for directory in (tmp_path / "checkpoint-00000003", tmp_path / "checkpoint-00000006", tmp_path / "final"):
        assert _state(directory)["environment"] == here, directory


def test_resume_elsewhere_warns_and_resume_here_does_not(tmp_path, caplog):
    _trainer(tmp_path).train()
    ckpt = tmp_path / "checkpoint-00000006"
    with caplog.at_level("WARNING", logger="vidvlm.train.trainer"):
        _trainer(tmp_path).train(resume=ckpt)
    assert not [r for r in caplog.records if "bit-exact" in r.getMessage()]

    state = _state(ckpt)
    real = state["environment"]["cpu"]
    state["environment"]["cpu"] = "Another CPU"
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    caplog.clear()
    with caplog.at_level("WARNING", logger="vidvlm.train.trainer"):
        _trainer(tmp_path).train(resume=ckpt)
    warned = [r.getMessage() for r in caplog.records if "bit-exact" in r.getMessage()]
    assert len(warned) == 1 and f"cpu: Another CPU -> {real}" in warned[0] and str(ckpt) in warned[0]
    # the continuation records where it ran now
    assert _state(tmp_path / "final")["environment"]["cpu"] == real

    del state["environment"]  # a checkpoint from before environments were recorded: nothing to compare
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    caplog.clear()
    with caplog.at_level("WARNING", logger="vidvlm.train.trainer"):
        _trainer(tmp_path).train(resume=ckpt)
    assert not [r for r in caplog.records if "bit-exact" in r.getMessage()]


def _run(root: Path, name: str, env: dict | None) -> Path:
    final = root / name / "final"
    final.mkdir(parents=True)
    state = {"step": 10} if env is None else {"step": 10, "environment": env}
    (final / "trainer_state.json").write_text(json.dumps(state))
    return root / name


def test_qa_table_notes_runs_trained_in_different_environments(tmp_path):
    env = environment("cpu")
    a, b = _run(tmp_path, "a", env), _run(tmp_path, "b", dict(env))
    assert qa_table.environments_note([a, b]) is None
    c = _run(tmp_path, "c", {**env, "cpu": "Another CPU"})
    d = _run(tmp_path, "d", None)
    note = qa_table.environments_note([a, b, c, d])
    assert note.startswith("note: these runs were trained in 3 environments")
    lines = note.splitlines()[1:]
    assert any(str(a) in line and str(b) in line and env["cpu"] in line for line in lines)
    assert any(str(c) in line and "Another CPU" in line for line in lines)
    assert any(line.strip().startswith("not recorded") and str(d) in line for line in lines)
