"""configs/generative_qa_8f_shapes.yaml end to end through tools/train.py (a few steps per stage on a few generated
clips with conversations), then scored per question type by tools/eval.py on its held-out split."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import eval as eval_cli  # noqa: E402  (tools/ is not a package)
import train as train_cli  # noqa: E402

CONFIG = ROOT / "configs" / "generative_qa_8f_shapes.yaml"
FROZEN = ROOT / "configs" / "generative_qa_frozen_tower_8f_shapes.yaml"


def _small(out: Path, data: Path) -> list[str]:
    """Overrides that shrink the QA recipes to a few steps on a few generated clips (the second stage's steps and
    the evaluation are the test's)."""
    sets = {"captions": 8, "qa": 8, "val": 4, "test": 3, "compositional": 3}
    return [
        f"output_dir={out}",
        f"data.synthetic.out_dir={data}",
        *(f"data.synthetic.sets.{name}.num={n}" for name, n in sets.items()),
        *(f"data.datasets.{name}.manifest={data}/{name}/manifest.jsonl" for name in ("captions", "qa")),
        f"data.val.manifest={data}/val/manifest.jsonl",
        "data.batch_size=4",
        "data.num_workers=0",
        "stages.0.steps=2",
        "schedule.warmup_steps=1",
        "checkpoint_every=0",
        "log_every=1",
    ]


@pytest.mark.timeout(600)
def test_recipe_trains_on_questions_and_is_scored_per_type(tmp_path, capsys):
    out, data = tmp_path / "run", tmp_path / "data"
    overrides = [*_small(out, data), "stages.1.steps=3", "eval_every=2", "eval_batches=1"]
    assert train_cli.main(["--config", str(CONFIG), *overrides]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "val/loss" in r]
    assert [r["step"] for r in evals] == [2, 4, 5]
    # the recipe's eval.generation: captions scored from the start, questions once the model answers them
    assert "val/caption_cider" in evals[0] and not any(k.startswith("val/qa_") for k in evals[0])
    steps = [r for r in rows if "grad_norm" in r]
    assert [r["stage"] for r in steps] == ["captions"] * 2 + ["qa"] * 3
    assert all("contrastive_loss" in r for r in steps[:2])  # captions alone: caption and contrastive loss
    # a batch that drew instruction samples trains on their questions, and in this recipe
    # (contrastive_with_questions: false) has no contrastive loss
    assert any(r["drawn"].get("qa") and "contrastive_loss" not in r for r in steps[2:])
    saved = (out / "final" / "config.yaml").read_text()
    assert "answers_questions: true" in saved  # it answers questions once loaded

    # the tokenizer was trained on the questions and answers too (words like "how" and "many" are in no caption)
    from vidvlm.models.registry import load

    tok = load(out / "final").tokenizer.hf
    texts = []
    for line in (data / "qa" / "manifest.jsonl").read_text().splitlines():
        row = json.loads(line)
        texts += [*(q["question"] for q in row["qa"]), *(q["answer"] for q in row["qa"])]
    assert not any(tok.unk_token_id in tok(t)["input_ids"] for t in texts)
    test = data / "test" / "manifest.jsonl"

    capsys.readouterr()
    # --task auto: the rows hold questions and the model was trained on some, so it answers them (not ranks)
    assert eval_cli.main(["--checkpoint", str(out / "final"), "--manifest", str(test)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    asked = sum(len(json.loads(line)["qa"]) for line in test.read_text().splitlines())
    assert metrics["qa_num"] == asked and metrics["caption_num"] == 3
    assert {"qa_color_accuracy", "qa_count_accuracy", "qa_when_accuracy", "caption_cider"} <= set(metrics)
    assert "t2v_R@1" not in metrics
    assert eval_cli.main(["--checkpoint", str(out / "final"), "--manifest", str(test), "--task", "retrieval"]) == 0
    assert "t2v_R@1" in json.loads(capsys.readouterr().out)

    # the in-run scores of the final model are tools/eval.py's on the same (validation) clips
    val = data / "val" / "manifest.jsonl"
    assert eval_cli.main(["--checkpoint", str(out / "final"), "--manifest", str(val)]) == 0
    offline = json.loads(capsys.readouterr().out)
    scored = {k: v for k, v in offline.items() if k.startswith(("qa_", "caption_")) and k != "caption_num"}
    assert scored["qa_num"] == sum(len(json.loads(line)["qa"]) for line in val.read_text().splitlines())
    assert {k: evals[-1][f"val/{k}"] for k in scored} == pytest.approx(scored, abs=1e-9)

    # evaluating with generation draws no random numbers: the same run without it ends with the same weights
    from safetensors.torch import load_file

    again = tmp_path / "again"
    assert train_cli.main(["--config", str(CONFIG), *overrides, f"output_dir={again}", "eval.generation=false"]) == 0
    rows = [json.loads(line) for line in (again / "metrics.jsonl").read_text().splitlines()]
    assert not any(k.startswith("val/qa_") or k == "val/caption_cider" for r in rows for k in r)
    assert "val/caption_loss" in rows[-1]
    a, b = load_file(out / "final" / "model.safetensors"), load_file(again / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.timeout(600)
def test_frozen_tower_recipe_reads_another_runs_tower_and_keeps_it(tmp_path, capsys):
    """generative_qa_frozen_tower_8f_shapes.yaml: the contrastive recipe's tower (here a random one saved as that
    recipe's run) is read, stays as it was through training, gives the decoder each tubelet's pooled grid without its
    class vector (2 x 16 tokens a clip) and is stored in the new checkpoint, which loads and answers without the
    tower's run."""
    import shutil

    from safetensors.torch import load_file

    from vidvlm.models.registry import build_model, load
    from vidvlm.train.config import load_train_config

    source = tmp_path / "contrastive" / "final"
    torch.manual_seed(0)
    build_model(load_train_config(ROOT / "configs" / "contrastive_tiny_8f_shapes.yaml").model).save_pretrained(source)
    out, data = tmp_path / "run", tmp_path / "data"
    overrides = [*_small(out, data), f"model.front_end.tower.source={source}", "stages.1.steps=2", "eval_every=0"]
    assert train_cli.main(["--config", str(FROZEN), *overrides]) == 0
    saved = load_file(source / "model.safetensors")
    before = {k.removeprefix("front_end.tower."): v for k, v in saved.items() if k.startswith("front_end.tower.")}
    shutil.rmtree(source.parent)  # the new checkpoint holds the tower: its source run is not needed to load it
    model = load(out / "final").eval()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    tower = sum(p.numel() for p in model.front_end.tower.parameters())
    everything = sum(p.numel() for p in model.parameters())
    assert {r["trainable_params"] for r in rows if "grad_norm" in r} == {everything - tower}  # each stage, logged
    after = model.front_end.base_tower.state_dict()
    assert before and before.keys() <= after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # frozen: every tower weight as it was read
    video = torch.rand(2, 8, 3, 32, 32)
    with torch.no_grad():
        assert model.front_end(video).tokens.shape[:2] == (2, 2 * 4 * 4)  # 4 x 4 per tubelet, class vector dropped
    capsys.readouterr()
    assert eval_cli.main(["--checkpoint", str(out / "final"), "--manifest", str(data / "test" / "manifest.jsonl")]) == 0
    assert "qa_direction_accuracy" in json.loads(capsys.readouterr().out)


@pytest.mark.timeout(300)
def test_hard_negatives_enter_the_captioners_contrastive_loss(tmp_path):
    """``make_synthetic``'s negatives reach coca's contrastive loss through the recipe's manifest, loader and
    trainer: with the same seed, data and first batch, step 1's contrastive loss with ``model.hard_negatives=3`` is
    above the plain one (each clip's softmax gains columns) and its caption loss is the same."""
    data = tmp_path / "data"
    first = {}
    for n in (0, 3):
        out = tmp_path / f"hn{n}"
        args = [*_small(out, data), "data.synthetic.sets.captions.negatives=true", f"model.hard_negatives={n}",
                "stages=[{name: captions, steps: 1, mixture: {captions: 1.0}}]", "eval_every=0"]  # fmt: skip
        assert train_cli.main(["--config", str(CONFIG), *args]) == 0
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        first[n] = next(r for r in rows if r.get("step") == 1 and "grad_norm" in r)
    assert all(json.loads(line)["negatives"] for line in (data / "captions" / "manifest.jsonl").open())
    assert first[3]["contrastive_loss"] > first[0]["contrastive_loss"] + 0.05, first
    assert first[3]["caption_loss"] == pytest.approx(first[0]["caption_loss"], rel=1e-5)
