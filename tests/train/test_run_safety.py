"""One run per output folder, resumes that continue the same run, an always-loadable final/, one metrics row per
step, a folder locked while its run is live, and a stop when too many training files are unreadable."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from train_tiny import TinyDataset, TinyModel, collate, make_cfg

from vidvlm.errors import ConfigError, VideoDecodeError
from vidvlm.train import checkpoint as ckpt
from vidvlm.train.rundir import truncate_metrics
from vidvlm.train.trainer import Trainer


def _trainer(out, overrides=None, datasets=None, **top):
    torch.manual_seed(0)
    cfg = make_cfg(out, overrides, **top)
    return Trainer(cfg, model=TinyModel(), datasets=datasets or {"a": TinyDataset(24)}, collate_fn=collate)


def _final_weights(out):
    return load_file(str(out / "final" / "model.safetensors"))


def _steps(out):
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_fresh_run_into_a_run_folder_is_refused_unless_overwrite(tmp_path):
    # the old run: 8 steps, checkpoints 6 and 8 kept
    _trainer(tmp_path / "run", checkpoint_every=2).train()
    with pytest.raises(ConfigError, match=r"output_dir .*run: holds another run .*--overwrite"):
        _trainer(tmp_path / "run", ["optim.lr=0.01", "stages.0.steps=4"], checkpoint_every=2).train()
    # --overwrite: the new run's checkpoints and final/ only; `--resume auto` then finds the new run
    new = ["optim.lr=0.01", "stages.0.steps=4"]
    _trainer(tmp_path / "run", new, checkpoint_every=2).train(overwrite=True)
    _trainer(tmp_path / "alone", new, checkpoint_every=2).train()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run")] == ["checkpoint-00000002", "checkpoint-00000004"]
    assert _steps(tmp_path / "run") == [1, 2, 3, 4]
    alone, run = _final_weights(tmp_path / "alone"), _final_weights(tmp_path / "run")
    assert all(torch.equal(alone[k], run[k]) for k in alone)
    assert ckpt.latest_checkpoint(tmp_path / "run").name == "checkpoint-00000004"


def test_other_files_in_the_folder_are_no_run(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    _trainer(tmp_path).train()
    assert (tmp_path / "notes.txt").read_text() == "mine"
    _trainer(tmp_path).train(overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"  # overwrite removes only what a run writes


def test_resume_refuses_a_changed_config_naming_the_keys(tmp_path):
    _trainer(tmp_path, checkpoint_every=4).train()
    changed = ["optim.lr=0.01", "schedule.warmup_steps=3"]
    with pytest.raises(ConfigError, match="config differs") as e:
        _trainer(tmp_path, changed, seed=1, checkpoint_every=4).train(resume="auto")
    message = str(e.value)
    assert "optim.lr: 0.05 -> 0.01" in message and "schedule.warmup_steps: 2 -> 3" in message
    assert "seed: 0 -> 1" in message and "--force-resume" in message and "log_every" not in message
    # cadence, logging, evaluation, workers and the output folder may change
    free = ["data.num_workers=0", "eval_batches=3"]
    hist = _trainer(tmp_path, free, checkpoint_every=3, log_every=2, eval_every=5, keep_checkpoints=4).train(
        resume=tmp_path / "checkpoint-00000004"
    )
    assert [m["step"] for m in hist if "grad_norm" in m] == [6, 8]
    elsewhere = tmp_path / "copy"
    elsewhere.mkdir()
    shutil.copytree(tmp_path / "checkpoint-00000004", elsewhere / "checkpoint-00000004")
    _trainer(elsewhere, checkpoint_every=4).train(resume="auto")
    # forced: trains with the new config
    forced = _trainer(tmp_path / "f", changed, seed=1).train(resume=tmp_path / "checkpoint-00000004", force_resume=True)
    assert [m["step"] for m in forced if "grad_norm" in m] == [5, 6, 7, 8]


def test_resume_into_a_folder_of_another_run_is_refused(tmp_path):
    _trainer(tmp_path / "a", checkpoint_every=4).train()
    _trainer(tmp_path / "b", ["optim.lr=0.01"]).train()
    with pytest.raises(ConfigError, match=r"output_dir .*b: holds another run"):
        _trainer(tmp_path / "b").train(resume=tmp_path / "a" / "checkpoint-00000004")


def test_metrics_have_one_row_per_step_after_resume(tmp_path):
    _trainer(tmp_path, checkpoint_every=4, keep_checkpoints=3).train()
    assert _steps(tmp_path) == list(range(1, 9))
    _trainer(tmp_path, checkpoint_every=4, keep_checkpoints=3).train(resume=tmp_path / "checkpoint-00000004")
    assert _steps(tmp_path) == list(range(1, 9))  # steps 5-8 once, from the resumed run
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "lo')  # a row torn by a kill
    _trainer(tmp_path, checkpoint_every=4, keep_checkpoints=3).train(resume=tmp_path / "checkpoint-00000004")
    assert _steps(tmp_path) == list(range(1, 9))


def _rows(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], "val/loss" in r) for r in rows]


@pytest.mark.parametrize("eval_every", [0, 4])
def test_a_crash_after_the_last_checkpoint_repeats_no_row_and_a_finished_run_is_left_alone(tmp_path, eval_every):
    """Killed between the last checkpoint and ``final/``: the resume logs each step and each evaluation once,
    whether the final evaluation came after the checkpoint (``eval_every=0``: its row is dropped and it runs again)
    or before it (``eval_every=4``: the checkpoint records it, so it is not repeated). A finished run resumed with
    ``auto`` / ``if-any`` is left as it is."""
    val = TinyDataset(8)
    kw = {"checkpoint_every": 4, "eval_every": eval_every}
    t = _trainer(tmp_path, **kw)
    t.val_data = val
    t.train()
    expected = [(s, False) for s in range(1, 9)] + [(8, True)]
    if eval_every:
        expected.insert(4, (4, True))
    assert _rows(tmp_path) == expected
    shutil.rmtree(tmp_path / "final")  # the kill: the last checkpoint is written, final/ is not
    t = _trainer(tmp_path, **kw)
    t.val_data = val
    hist = t.train(resume="if-any")
    assert [(m["step"], "val/loss" in m) for m in hist] == ([(8, True)] if not eval_every else [])
    assert _rows(tmp_path) == expected and (tmp_path / "final" / "model.safetensors").is_file()
    # finished: nothing trained, evaluated or rewritten
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.name != "train.lock"}
    for mode in ("auto", "if-any"):
        t = _trainer(tmp_path, **kw)
        t.val_data = val
        assert t.train(resume=mode) == []
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.name != "train.lock"} == before
    # asking for more steps (forced) is not finished: it continues from the last checkpoint
    t = _trainer(tmp_path, ["stages.0.steps=10"], **kw)
    hist = t.train(resume="auto", force_resume=True)
    assert [m["step"] for m in hist if "grad_norm" in m] == [9, 10]


def test_a_checkpoint_without_the_row_count_rewinds_by_step(tmp_path):
    """Checkpoints written before ``metrics_rows`` existed still resume: rows are kept up to the step."""
    _trainer(tmp_path, checkpoint_every=4, keep_checkpoints=3).train()
    state_file = tmp_path / "checkpoint-00000004" / ckpt.STATE_FILE
    state = json.loads(state_file.read_text())
    assert state["metrics_rows"] == 4
    del state["metrics_rows"], state["last_eval_step"]
    state_file.write_text(json.dumps(state))
    t = _trainer(tmp_path, checkpoint_every=4, keep_checkpoints=3)
    t.train(resume=tmp_path / "checkpoint-00000004")
    assert _steps(tmp_path) == list(range(1, 9)) and t.state.metrics_rows == 8


def test_resume_drops_later_checkpoints(tmp_path):
    # resuming from step 4 rewrites history from there: the old checkpoint-8 must not outlive the new run
    _trainer(tmp_path, checkpoint_every=4, keep_checkpoints=3).train()
    old8 = load_file(str(tmp_path / "checkpoint-00000008" / "model.safetensors"))
    cfg_lr = ["optim.lr=0.01"]
    _trainer(tmp_path, cfg_lr, stages=[{"name": "all", "steps": 6}], checkpoint_every=4, keep_checkpoints=3).train(
        resume=tmp_path / "checkpoint-00000004", force_resume=True
    )
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["checkpoint-00000004"]
    assert _steps(tmp_path) == [1, 2, 3, 4, 5, 6]
    final = _final_weights(tmp_path)
    assert not all(torch.equal(final[k], old8[k]) for k in final)


def test_truncate_metrics(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "val/loss": 1.0}\n{"step": 3}\n{"step": 2}\n{"st')
    assert truncate_metrics(path, 2) == 2
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 2]
    assert truncate_metrics(tmp_path / "missing.jsonl", 2) == 0
    # with the checkpoint's row count, a row logged at its step after it was saved goes too
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 2, "val/loss": 1.0}\n{"step": 3}\n')
    assert truncate_metrics(path, 2, rows=2) == 2
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"step": 1}, {"step": 2}]


def test_final_is_swapped_never_deleted_first(tmp_path, monkeypatch):
    _trainer(tmp_path).train()
    old = _final_weights(tmp_path)
    t = _trainer(tmp_path)
    with torch.no_grad():
        for p in t.model.parameters():
            p.add_(1.0)
    expected = {k: v.clone() for k, v in t.model.state_dict().items()}
    real_rmtree = shutil.rmtree

    def crash_after_delete(path, *args, **kwargs):
        real_rmtree(path, *args, **kwargs)
        if "final" in str(path):
            raise KeyboardInterrupt("killed right after deleting a final directory")

    monkeypatch.setattr(shutil, "rmtree", crash_after_delete)
    with pytest.raises(KeyboardInterrupt):
        t._save_final()
    monkeypatch.undo()
    new = _final_weights(tmp_path)  # the kill came after the swap: final/ is the new model, whole
    assert set(new) == set(old) == set(expected)
    assert all(torch.equal(new[k], expected[k]) for k in new)


class Flaky(TinyDataset):
    """Marks samples whose index is a multiple of ``every`` as substituted (as the data layer does for bad files)."""

    def __init__(self, n: int, every: int) -> None:
        super().__init__(n)
        self.every = every

    def __getitem__(self, i):
        s = super().__getitem__(i)
        if i % self.every == 0:
            s["replaced_from"] = i
        return s


def test_too_many_unreadable_files_stop_training(tmp_path):
    # half of the files unreadable: judged once the 24 samples' worth were drawn (step 6 of 8)
    overrides = ["data.datasets.a.manifest=data/broken.jsonl"]
    t = _trainer(tmp_path, overrides, datasets={"a": Flaky(24, every=2)}, log_every=1)
    expected = r"data/broken\.jsonl: 12 of 24 samples .*data\.datasets\.a.*data\.max_bad_fraction=0\.05"
    with pytest.raises(VideoDecodeError, match=expected):
        t.train()
    assert t.state.step == 6 and t.state.drawn_by_dataset == {"a": 24}
    assert not (tmp_path / "final").exists()
    # under the limit (1 in 24 files, limit 10 %), training runs to the end
    ok = _trainer(tmp_path / "ok", ["data.max_bad_fraction=0.1"], datasets={"a": Flaky(24, every=24)}).train()
    assert ok[-1]["step"] == 8 and ok[-1]["replaced_samples"] >= 1


def test_a_run_stopped_before_its_first_checkpoint_can_be_rerun(tmp_path):
    with pytest.raises(VideoDecodeError):
        _trainer(tmp_path, datasets={"a": Flaky(24, every=2)}).train()
    assert _steps(tmp_path) == [1, 2, 3, 4, 5, 6] and not ckpt.list_checkpoints(tmp_path)
    with pytest.raises(ConfigError, match="holds another run"):  # another config is another run
        _trainer(tmp_path, ["optim.lr=0.01"]).train()
    # the same run (max_bad_fraction does not change training) starts over: its leftovers are replaced
    _trainer(tmp_path, ["data.max_bad_fraction=1.0"], datasets={"a": Flaky(24, every=2)}).train()
    assert _steps(tmp_path) == list(range(1, 9))


def test_bad_fraction_is_per_dataset(tmp_path):
    stages = ["data.datasets.b={manifest: b.jsonl}", "data.max_bad_fraction=0.2"]
    datasets = {"a": TinyDataset(24), "b": Flaky(24, every=2)}
    with pytest.raises(VideoDecodeError, match=r"^b\.jsonl: .*data\.datasets\.b"):
        _trainer(tmp_path, stages, datasets=datasets, stages=[{"name": "s", "steps": 20}]).train()


HOLD_RUN_DIR = """
import sys
from vidvlm.train.rundir import lock_run_dir
lock = lock_run_dir(sys.argv[1])  # what a training run holds while it trains
print("locked", flush=True)
sys.stdin.read()  # hold the folder until the test kills us
"""


def test_a_live_run_locks_its_folder_against_overwrite_and_resume(tmp_path):
    """Without the lock, ``overwrite`` deleted a live run's checkpoints under it and ``resume="auto"`` made two
    processes write one folder. Now both are refused before touching anything, naming the holder; a killed holder
    leaves no lock behind."""
    out = tmp_path / "run"
    _trainer(out).train()
    snapshot = lambda: {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != "train.lock"}  # noqa: E731
    before = snapshot()
    assert "final" in before and "metrics.jsonl" in before
    holder = subprocess.Popen([sys.executable, "-c", HOLD_RUN_DIR, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        holder_id = f"pid {holder.pid} on {socket.gethostname()}"
        busy = re.escape(f"{out}: another training run is writing into this directory ({holder_id})")
        for how in ({"overwrite": True}, {"resume": "auto"}):
            with pytest.raises(ConfigError, match=busy):
                _trainer(out).train(**how)
        assert snapshot() == before  # nothing deleted, truncated or rewritten
    finally:
        holder.kill()  # SIGKILL: no cleanup runs, the kernel drops the flock
        holder.wait()
    _trainer(out).train(overwrite=True)
    assert _steps(out) == sorted(_steps(out)) and snapshot() != before
