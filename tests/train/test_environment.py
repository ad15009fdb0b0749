"""Where a run was computed: recorded in its checkpoints, checked on resume, reported by qa_table."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_tiny import TinyDataset, TinyModel, collate, make_cfg

from vidvlm.environment import NUMERIC_KEYS, cpu_model, environment, kernel_fingerprint, numeric_differences
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
    assert env["kernels"] == kernel_fingerprint("cpu")
    if Path("/proc/cpuinfo").exists():  # vendor family/model/stepping, then the flags kernels are chosen by
        assert re.fullmatch(r"\S+ \d+/\d+/\d+( [a-z0-9_]+)*", env["cpu_model"]), env["cpu_model"]
        assert env["cpu_model"] == cpu_model()


def test_kernel_fingerprint_is_stable_and_leaves_the_random_state_alone():
    state = torch.random.get_rng_state()
    first = kernel_fingerprint()
    assert re.fullmatch(r"[0-9a-f]{12}", first)
    assert kernel_fingerprint("cpu") == first
    assert torch.equal(torch.random.get_rng_state(), state)  # training right after it draws what it would have


def _fingerprint_in_process(**env: str) -> str:
    """This machine's fingerprint in a fresh interpreter with one thread and ``env`` added."""
    code = "from vidvlm.environment import kernel_fingerprint; print(kernel_fingerprint())"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1", **env},
                         capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    return out.stdout.strip()


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() == "DEFAULT", reason="no vectorised kernels to turn off")
def test_kernel_fingerprint_tells_other_kernels_apart():
    env = {k: v for k, v in os.environ.items() if k == "ATEN_CPU_CAPABILITY"}
    here = _fingerprint_in_process(**env)
    assert _fingerprint_in_process(**env) == here  # the same kernels in another process: the same hash
    # torch's scalar kernels instead of its SIMD ones: same machine and model name, other rounding
    assert _fingerprint_in_process(ATEN_CPU_CAPABILITY="default") != here


def test_numeric_differences_name_only_keys_that_change_results():
    env = environment("cpu")
    assert numeric_differences(env, dict(env)) == []
    assert numeric_differences(env, {**env, "python": "0.0", "platform": "elsewhere"}) == []
    moved = numeric_differences(env, {**env, "cpu": "Another CPU", "threads": env["threads"] + 1})
    assert moved == [f"cpu: {env['cpu']} -> Another CPU", f"threads: {env['threads']} -> {env['threads'] + 1}"]
    assert numeric_differences(None, env) == [] and numeric_differences(env, {}) == []
    older = {k: v for k, v in env.items() if k not in ("cpu_model", "kernels")}  # recorded before these keys existed
    assert numeric_differences(older, env) == [] and numeric_differences(env, older) == []
    other = {**env, "kernels": "000000000000"}
    assert numeric_differences(env, other) == [f"kernels: {env['kernels']} -> 000000000000"]


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
    older = _run(tmp_path, "older", {k: v for k, v in env.items() if k not in ("cpu_model", "kernels")})
    assert qa_table.environments_note([a, older]) is None  # compared on the keys both record
    c = _run(tmp_path, "c", {**env, "cpu": "Another CPU"})
    d = _run(tmp_path, "d", None)
    note = qa_table.environments_note([a, b, c, d])
    assert note.startswith("note: these runs were trained in 3 environments")
    lines = note.splitlines()[1:]
    assert any(str(a) in line and str(b) in line and env["cpu"] in line for line in lines)
    assert any(str(c) in line and "Another CPU" in line for line in lines)
    assert any(line.strip().startswith("not recorded") and str(d) in line for line in lines)


def _save_coca(final: Path, freeze: bool = True, tower_shift: float = 0.0, rest_shift: float = 0.0) -> None:
    """A tiny coca checkpoint; ``tower_shift`` / ``rest_shift`` move the tower's / the other weights."""
    import dataclasses

    from tests.models.test_registry import tiny_config
    from vidvlm.models.registry import build_model

    torch.manual_seed(0)
    cfg = tiny_config("coca")
    model = build_model(dataclasses.replace(cfg, front_end=dataclasses.replace(cfg.front_end, freeze_tower=freeze)))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(tower_shift if name.startswith("front_end.tower.") else rest_shift)
    model.save_pretrained(final)


def test_qa_table_notes_runs_on_different_frozen_towers(tmp_path):
    runs = {name: tmp_path / name for name in ("a", "b", "c", "unfrozen", "named")}
    _save_coca(runs["a"] / "final")
    _save_coca(runs["b"] / "final", rest_shift=0.5)  # the same frozen tower, other trained weights
    _save_coca(runs["c"] / "final", tower_shift=1e-6)  # a tower that differs in the last bits
    _save_coca(runs["unfrozen"] / "final", freeze=False, tower_shift=0.25)  # its tower trained with it: not compared
    digest = qa_table.frozen_tower_digest
    assert digest(runs["a"] / "final") == digest(runs["b"] / "final") != digest(runs["c"] / "final")
    assert digest(runs["unfrozen"] / "final") is None
    assert qa_table.towers_note([runs["a"], runs["b"], runs["unfrozen"]]) is None

    # a checkpoint that names its frozen tower (an ensemble's members) by sha256 instead of storing it
    named = runs["named"] / "final"
    named.mkdir(parents=True)
    tower = {"name": "ensemble", "members": [{"name": "checkpoint", "sha256": "1" * 64}, {"sha256": "2" * 64}]}
    (named / "config.yaml").write_text(json.dumps({"family": "llava", "front_end": {"tower": tower}}))
    from safetensors.torch import save_file

    save_file({"connector.weight": torch.zeros(2)}, named / "model.safetensors")
    assert digest(named) is not None
    note = qa_table.towers_note(list(runs.values()))
    assert note.startswith("note: these runs were trained on 3 different frozen towers")
    lines = note.splitlines()[1:]
    assert any(str(runs["a"]) in line and str(runs["b"]) in line for line in lines)
    assert any(line.endswith(str(runs["c"])) for line in lines)
    assert any(line.endswith(str(named.parent)) for line in lines)
    assert not any(str(runs["unfrozen"]) in line for line in lines)


def test_environment_command_says_whether_a_run_was_computed_here(tmp_path, capsys):
    from vidvlm.environment import main

    _trainer(tmp_path / "run").train()
    assert main([str(tmp_path / "run"), str(tmp_path / "run" / "checkpoint-00000003")]) == 0
    assert capsys.readouterr().out.count("same environment as here") == 2

    final = tmp_path / "run" / "final"
    state = _state(final)
    state["environment"]["kernels"] = "000000000000"
    (final / "trainer_state.json").write_text(json.dumps(state))
    assert main([str(tmp_path / "run")]) == 1
    assert f"kernels: 000000000000 -> {kernel_fingerprint()}" in capsys.readouterr().out

    del state["environment"]
    (final / "trainer_state.json").write_text(json.dumps(state))
    assert main([str(final)]) == 1
    assert "records no environment" in capsys.readouterr().out
    assert main([str(tmp_path / "nothing")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_a_device_without_the_fingerprints_operations_still_gets_an_environment(monkeypatch):
    import vidvlm.environment as env_module

    def unsupported(device):
        raise NotImplementedError("bf16 matmul is not implemented here")

    monkeypatch.setattr(env_module, "kernel_fingerprint", unsupported)
    assert env_module.environment("cpu")["kernels"] == "unavailable on cpu: NotImplementedError"
