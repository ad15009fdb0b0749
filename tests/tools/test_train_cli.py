"""End to end through tools/train.py: the tiny contrastive config on generated moving shapes, CLI overrides,
exact resume, strict errors, a final directory that vidvlm.load opens, and tools/eval.py on it."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from tests.tools.tiny_run import tiny_run_overrides

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import eval as eval_cli  # noqa: E402  (tools/ is not a package)
import train as train_cli  # noqa: E402

CONFIG = ROOT / "configs" / "contrastive_tiny_8f_shapes.yaml"


def _overrides(out: Path, data: Path) -> list[str]:
    return tiny_run_overrides(out, data)


def _losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "grad_norm" in r}


@pytest.mark.timeout(240)
def test_train_resume_load_eval(tmp_path, capsys):
    data = tmp_path / "shapes"
    full = tmp_path / "full"
    # --resume if-any on a folder with no checkpoint yet starts the run (a job script's one command)
    assert train_cli.main(["--config", str(CONFIG), *_overrides(full, data), "--resume", "if-any"]) == 0
    assert (data / "train" / "manifest.jsonl").is_file()  # generated from data.synthetic
    assert sorted(p.name for p in full.glob("checkpoint-*")) == ["checkpoint-00000002", "checkpoint-00000004"]
    assert sorted(_losses(full)) == [1, 2, 3, 4]
    # the same job command again, once the run has finished: nothing is trained, evaluated or written
    rows_before = (full / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert train_cli.main(["--config", str(CONFIG), *_overrides(full, data), "--resume", "if-any"]) == 0
    assert "the run finished already (final/ at step 4)" in capsys.readouterr().out
    assert (full / "metrics.jsonl").read_text() == rows_before
    rows = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert any("val/t2v_R@1" in r for r in rows)  # the final evaluation ran retrieval
    saved = (full / "checkpoint-00000002" / "train_config.yaml").read_text()
    assert "batch_size: 4" in saved and str(full) in saved

    # resume from the step-2 checkpoint in a fresh directory: steps 3 and 4 give the same losses
    part = tmp_path / "part"
    part.mkdir()
    shutil.copytree(full / "checkpoint-00000002", part / "checkpoint-00000002")
    assert train_cli.main(["--config", str(CONFIG), *_overrides(part, data), "--resume", "if-any"]) == 0
    a, b = _losses(full), _losses(part)
    assert sorted(b) == [3, 4]
    assert [b[s] for s in (3, 4)] == pytest.approx([a[s] for s in (3, 4)], rel=1e-5)

    import vidvlm.models.registry as registry

    model = registry.load(full / "final")
    assert model.config.family == "contrastive"

    capsys.readouterr()
    manifest = data / "val" / "manifest.jsonl"
    args = ["--checkpoint", str(full / "final"), "--manifest", str(manifest), "--num-frames", "4"]
    assert eval_cli.main([*args, "--variant-words", "left", "right", "up", "down"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["num_videos"] == 8 and 0.0 <= metrics["t2v_R@1"] <= 100.0 and metrics["variant_n"] == 8


def test_bad_key_and_override_name_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.read_text().replace("log_every:", "log_evry:"))
    assert train_cli.main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "'log_evry'" in err
    assert train_cli.main(["--config", str(CONFIG), "model.front_end.tower.vision.widht=3"]) == 2
    err = capsys.readouterr().err
    assert "contrastive_tiny_8f_shapes.yaml" in err and "'widht'" in err
    # options may follow overrides and overrides options: the override after --overwrite is read, and named
    argv = ["--config", str(CONFIG), "seed=1", "--overwrite", "model.front_end.tower.vision.widht=3"]
    assert train_cli.main(argv) == 2
    assert "'widht'" in capsys.readouterr().err
    # resume is checked before any data is generated or model built
    args = ["--config", str(CONFIG), "--resume", str(tmp_path / "nope"), *_overrides(tmp_path / "o", tmp_path / "d")]
    assert train_cli.main(args) == 2
    assert "not a complete checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


@pytest.mark.timeout(240)
def test_run_folder_and_resume_checks(tmp_path, capsys):
    from vidvlm.train.config import load_train_config, save_train_config

    out, data = tmp_path / "run", tmp_path / "d"
    args = ["--config", str(CONFIG), *_overrides(out, data)]
    # a folder holding another run (here only its metrics) is refused before any data is generated
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 7, "loss": 1.0}\n')
    assert train_cli.main(args) == 2
    err = capsys.readouterr().err
    assert "holds another run (metrics.jsonl)" in err and "--overwrite" in err
    assert not data.exists()
    # a checkpoint written with another learning rate: --resume names the key, before any work
    ckpt_dir = out / "checkpoint-00000002"
    ckpt_dir.mkdir()
    save_train_config(load_train_config(CONFIG, _overrides(out, data)), ckpt_dir / "train_config.yaml")
    (ckpt_dir / "trainer_state.json").write_text('{"step": 2}')
    assert train_cli.main([*args, "optim.lr=0.1", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "optim.lr: 0.002 -> 0.1" in err and "--force-resume" in err
    assert not data.exists()
    # --force-resume passes the check (this fake checkpoint has no weights, which is the next error)
    assert train_cli.main([*args, "optim.lr=0.1", "--force-resume", "--resume"]) == 2
    assert "missing model.safetensors" in capsys.readouterr().err
    # --overwrite starts over: only the new run's files remain
    assert train_cli.main([*args, "--overwrite"]) == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-00000002", "checkpoint-00000004"]
    assert sorted(_losses(out)) == [1, 2, 3, 4]
    assert (out / "checkpoint-00000002" / "model.safetensors").is_file()


def test_overwrite_into_a_live_runs_folder_is_one_line_error(tmp_path, capsys):
    """``--overwrite`` while another process trains into the folder: refused before any data is generated or any
    file removed, naming the live run."""
    import socket
    import subprocess

    out, data = tmp_path / "run", tmp_path / "d"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 7, "loss": 1.0}\n')
    hold = (
        "import sys; from vidvlm.train.rundir import lock_run_dir; lock = lock_run_dir(sys.argv[1]); "
        "print(1, flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "1"
        assert train_cli.main(["--config", str(CONFIG), *_overrides(out, data), "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "another training run is writing into this directory" in err
        assert f"pid {holder.pid} on {socket.gethostname()}" in err
        assert not data.exists() and (out / "metrics.jsonl").read_text() == '{"step": 7, "loss": 1.0}\n'
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.timeout(240)
def test_content_at_eval_trains_saves_and_evaluates_on_the_chosen_tokens(tmp_path, capsys, monkeypatch):
    """``token_drop.at_eval`` from the command line: the saved model keeps it and tools/eval.py encodes half of each
    step's patch tokens, the same ones when the clips come in another batch size."""
    from vidvlm.models.frontend import VideoFrontEnd

    data, out = tmp_path / "shapes", tmp_path / "run"
    drop = "model.front_end.token_drop={ratio: 0.5, kind: content, at_eval: true}"
    assert train_cli.main(["--config", str(CONFIG), *_overrides(out, data), drop]) == 0
    import vidvlm.models.registry as registry

    model = registry.load(out / "final")
    assert model.front_end.cfg.token_drop.at_eval and model.front_end.cfg.token_drop.ratio == 0.5
    grid = model.front_end.base_tower.token_grid(4, 32, 32)[1]

    kept: list = []
    encode = VideoFrontEnd.encode

    def recording(self, video, frame_mask=None, keep=None):
        kept.append(None if keep is None else keep.clone())
        return encode(self, video, frame_mask, keep)

    monkeypatch.setattr(VideoFrontEnd, "encode", recording)
    args = ["--checkpoint", str(out / "final"), "--manifest", str(data / "val" / "manifest.jsonl"), "--num-frames", "4"]
    capsys.readouterr()
    results = []
    for batch in ("8", "3"):
        kept.clear()
        assert eval_cli.main([*args, "--batch-size", batch]) == 0
        results.append(json.loads(capsys.readouterr().out))
        assert kept and all(k is not None and k.shape[-1] == grid // 2 for k in kept)
        if batch == "8":
            whole = kept[0]
    assert torch.equal(torch.cat(kept), whole)  # the same tokens, batch by batch
    assert results[0]["num_videos"] == results[1]["num_videos"] == 8


def test_generation_asked_of_a_family_that_cannot_generate_is_refused_before_training(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--config", str(CONFIG), *_overrides(out, tmp_path / "d"), "eval.generation=true"]
    assert train_cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "eval.generation: family 'contrastive' cannot generate text" in err[-1]
    assert not (out / "metrics.jsonl").exists() or not _losses(out)  # not one step trained


def test_a_tower_run_not_trained_yet_is_one_line_before_any_data(tmp_path, capsys):
    """A recipe on another run's tower (e.g. generative_qa_frozen_tower_8f_shapes.yaml) names the missing run."""
    missing = tmp_path / "runs" / "tower" / "final"
    data = tmp_path / "d"
    args = ["--config", str(CONFIG), *_overrides(tmp_path / "run", data)]
    assert train_cli.main([*args, f"model.front_end.tower={{name: checkpoint, source: {missing}}}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: tower.source: {missing}: no such directory (a vidvlm run's final/ or checkpoint-*)"]
    assert not data.exists()  # refused before the clips are generated


@pytest.mark.timeout(240)
@pytest.mark.parametrize("config", [CONFIG, ROOT / "configs" / "masking_tiny_8f_shapes.yaml"], ids=["clip", "flava"])
def test_hard_negatives_from_generated_data_enter_the_training_loss(tmp_path, capsys, config):
    """``make_synthetic``'s ``negatives`` reach the loss through the manifest, dataset, loader and trainer: with the
    same seed, data and first batch, step 1's loss with ``model.hard_negatives=3`` is above the plain one (each video's
    softmax gains columns; text -> video is unchanged). For the masking family they enter ``itc_loss`` alone."""
    data = tmp_path / "shapes"
    with_negatives = [f"data.synthetic.sets.{split}={{num: {num}, seed: 0, split: {split}, frames: 4, size: 32, "
                      "negatives: true}" for split, num in (("train", 16), ("val", 8))]  # fmt: skip
    first, others = {}, {}
    for n in (0, 3):
        out = tmp_path / f"hn{n}"
        args = [*_overrides(out, data), *with_negatives, "stages.0.steps=1", f"model.hard_negatives={n}"]
        assert train_cli.main(["--config", str(config), *args]) == 0
        first[n] = _losses(out)[1]
        step1 = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][0]
        others[n] = {
            k: v for k, v in step1.items() if k.endswith("_loss") and k not in ("contrastive_loss", "itc_loss")
        }
    rows = [json.loads(line) for line in (data / "train" / "manifest.jsonl").read_text().splitlines()]
    assert all(len(r["negatives"]) == 3 for r in rows)  # one shape moving: the three other directions
    assert first[3] > first[0] + 0.05, first
    assert bool(others[0]) == (config != CONFIG)  # the masking recipe has its other objectives
    assert others[3] == pytest.approx(others[0], rel=1e-5)  # masking, matching: the same masks, the same losses
    final = [json.loads(line) for line in (tmp_path / "hn3" / "metrics.jsonl").read_text().splitlines()][-1]
    assert final["val/negatives_n"] == 8  # the run's own evaluation scores the val set's negatives
    # tools/eval.py scores a manifest's negatives: every clip of this one has three
    capsys.readouterr()
    args = ["--checkpoint", str(tmp_path / "hn3" / "final"), "--manifest", str(data / "train" / "manifest.jsonl")]
    assert eval_cli.main([*args, "--num-frames", "4"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["negatives_n"] == 16 and 0.0 <= metrics["negatives_acc"] <= metrics["negatives_pair_acc"] <= 100.0
