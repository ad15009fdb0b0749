"""configs/llava_tiny_8f_shapes.yaml end to end through tools/train.py (a couple of steps per stage on a few generated
clips, its from-scratch LM written by tools/prepare_lm.py tiny-shapes), then scored per question type by
tools/eval.py on its held-out split."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import eval as eval_cli  # noqa: E402  (tools/ is not a package)
import prepare_lm as prepare_cli  # noqa: E402
import train as train_cli  # noqa: E402

CONFIG = ROOT / "configs" / "llava_tiny_8f_shapes.yaml"


def tiny_recipe_overrides(out: Path, data: Path, lm: Path) -> list[str]:
    """Output in ``out``, a handful of clips per set under ``data``, 2 steps per stage (8 in all)."""
    sets = {"captions": 8, "qa": 8, "text": 16, "text_test": 8, "val": 4, "test": 3, "compositional": 3}
    return [
        f"output_dir={out}",
        f"model.lm.source={lm}",
        f"data.synthetic.out_dir={data}",
        *(f"data.synthetic.sets.{name}.num={n}" for name, n in sets.items()),
        *(f"data.datasets.{name}.manifest={data}/{name}/manifest.jsonl" for name in ("captions", "qa", "text")),
        f"data.val.manifest={data}/val/manifest.jsonl",
        "data.batch_size=4",
        "total_steps=8",  # the two fractional pre-training stages share what the integer ones leave: 2 + 2
        "stages.2.steps=2",
        "stages.3.steps=2",
        "schedule.warmup_steps=1",
        "checkpoint_every=0",
        "eval_every=0",
        "eval_batches=1",
        "log_every=1",
    ]


@pytest.mark.timeout(600)
def test_tiny_recipe_trains_every_stage_and_is_scored(tmp_path, capsys):
    lm = tmp_path / "lms" / "tiny_shapes"
    assert prepare_cli.main(["tiny-shapes", "--out", str(lm)]) == 0
    out, data = tmp_path / "run", tmp_path / "data"
    assert train_cli.main(["--config", str(CONFIG), *tiny_recipe_overrides(out, data, lm)]) == 0
    # the word-level vocabulary covers what the world writes: no <unk> in any caption, question, answer or sentence
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(lm)
    texts = [json.loads(line).get("text", "") for line in (data / "text" / "manifest.jsonl").read_text().splitlines()]
    for name in ("qa", "compositional"):
        for line in (data / name / "manifest.jsonl").read_text().splitlines():
            row = json.loads(line)
            texts += [row["caption"], *(t["content"] for t in row["conversation"]), *(q["answer"] for q in row["qa"])]
    assert not any(tok.unk_token_id in tok(t)["input_ids"] for t in texts)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "grad_norm" in r]
    assert [(r["step"], r["stage"]) for r in steps] == list(enumerate(
        ["text", "text", "align", "align", "joint", "joint", "task", "task"], start=1))  # fmt: skip
    allowed = {"text": {"text"}, "align": {"captions", "text"}, "joint": {"captions", "qa", "text"}, "task": {"qa"}}
    assert all(set(r["drawn"]) <= allowed[r["stage"]] for r in steps)  # each stage draws from its own mixture
    assert all(len({"text"} & set(r["drawn"])) == 0 or set(r["drawn"]) == {"text"} for r in steps)  # one kind
    assert any("val/loss" in r for r in rows)

    capsys.readouterr()
    test = data / "test" / "manifest.jsonl"
    corpus = data / "text_test" / "manifest.jsonl"
    assert (
        eval_cli.main(["--checkpoint", str(out / "final"), "--manifest", str(test), "--text-corpus", str(corpus)]) == 0
    )
    metrics = json.loads(capsys.readouterr().out)
    assert 0 < metrics["text_loss"] < 20
    asked = sum(len(json.loads(line)["qa"]) for line in test.read_text().splitlines())
    assert metrics["qa_num"] == asked and metrics["caption_num"] == 3
    assert {"qa_color_accuracy", "qa_count_accuracy", "qa_when_accuracy", "caption_cider"} <= set(metrics)
