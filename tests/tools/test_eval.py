"""tools/eval.py on a manifest whose files are partly missing: it never substitutes one video for another, it names and
counts the missing rows, and its metrics are those of the readable rows alone."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from vidvlm.data.synthetic import make_synthetic
from vidvlm.models.contrastive import ContrastiveConfig, ContrastiveModel

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("eval_tool", ROOT / "tools" / "eval.py")
cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    manifest = make_synthetic(root, 5, seed=2, frames=8, size=32, split="val")
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    torch.manual_seed(0)
    model = ContrastiveModel(ContrastiveConfig.tiny())
    model.prepare_for_training([r["caption"] for r in rows])
    model.save_pretrained(root / "ckpt")
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a movie")
    return root, rows, model.num_frames


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _run(capsys, root: Path, manifest: Path, *extra: str) -> tuple[int, dict | None, str]:
    rc = cli.main(["--checkpoint", str(root / "ckpt"), "--manifest", str(manifest), "--batch-size", "2", *extra])
    out = capsys.readouterr()
    return rc, (json.loads(out.out) if out.out.strip() else None), out.err


def test_missing_rows_are_reported_and_left_out_not_substituted(setup, tmp_path, capsys):
    root, rows, num_frames = setup
    holes = [rows[0], {"path": "gone.mp4", "caption": "a ghost"}, rows[1], rows[2],
             {"path": "corrupt.mp4", "caption": "broken"}, rows[3], rows[4]]  # fmt: skip
    rc, metrics, err = _run(capsys, root, _write(root / "holes.jsonl", holes), "--variant-words", "left", "right")
    assert rc == 1
    assert (metrics["num_videos"], metrics["num_rows"], metrics["num_missing"]) == (5, 7, 2)
    assert metrics["missing"] == [str(root / "gone.mp4"), str(root / "corrupt.mp4")]
    assert metrics["num_frames"] == num_frames  # the model's frame count (the tool read model.vision before)
    assert "gone.mp4: file does not exist" in err and "2 of 7 row(s) could not be read" in err
    rc, clean, _ = _run(capsys, root, _write(root / "clean.jsonl", rows), "--variant-words", "left", "right")
    assert rc == 0 and clean["num_missing"] == 0 and clean["num_videos"] == 5
    # every metric is that of the readable rows alone
    assert {k: v for k, v in metrics.items() if k not in ("num_rows", "num_missing", "missing")} == {
        k: v for k, v in clean.items() if k not in ("num_rows", "num_missing", "missing")
    }


def test_no_readable_row_and_zero_frames_are_one_line_errors(setup, tmp_path, capsys):
    root, _, _ = setup
    rc, metrics, err = _run(capsys, root, _write(tmp_path / "none.jsonl", [{"path": "gone.mp4", "caption": "x"}]))
    assert (
        rc == 2
        and metrics is None
        and err.strip().splitlines()[-1].endswith("none.jsonl: no row of the manifest could be read")
    )
    rc = cli.main(["--checkpoint", str(root / "ckpt"), "--manifest", str(root / "manifest.jsonl"), "--num-frames",
                   "0"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--num-frames: must be >= 1, got 0" in err


@pytest.mark.parametrize("trained_on_questions", [False, True])
def test_auto_answers_the_rows_questions_only_with_a_model_that_answers(tmp_path, capsys, trained_on_questions):
    """A coca model both embeds and answers: on a manifest with questions, ``--task auto`` asks them when the model
    was trained on questions, and ranks when it was trained on captions alone (it would refuse the questions)."""
    from vidvlm.models.generative import CoCaCaptioner, GenerativeConfig

    manifest = make_synthetic(tmp_path / "qa", 2, seed=3, frames=4, size=32, split="val", conversations=True)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    torch.manual_seed(0)
    model = CoCaCaptioner(GenerativeConfig.tiny(answers_questions=trained_on_questions))
    model.prepare_for_training([r["caption"] for r in rows] + [q["question"] for r in rows for q in r["qa"]])
    model.save_pretrained(tmp_path / "ckpt")
    rc, metrics, _ = _run(capsys, tmp_path, manifest)
    assert rc == 0
    asked = sum(len(r["qa"]) for r in rows)
    if trained_on_questions:
        assert metrics["qa_num"] == asked and "t2v_R@1" not in metrics
    else:
        assert "t2v_R@1" in metrics and "qa_num" not in metrics
