"""Per-type question answering and caption scores: the scoring rules on hand-checked answers, and tools/eval.py on a
tiny llava checkpoint (a generation run, then hand-set answers routed through the same tool)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from vidvlm.eval.qa import answer_is_correct, caption_exact_match, parse_seconds, qa_accuracy

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import eval as eval_cli  # noqa: E402  (tools/ is not a package)


def test_scoring_rules_by_hand():
    assert parse_seconds("at 1.5 seconds") == 1.5 and parse_seconds("2") == 2.0 and parse_seconds("soon") is None
    assert parse_seconds("at 1 . 3 7 5 seconds") == 1.375  # digits decoded apart by a word-level tokenizer
    items = [
        {"type": "color", "answer": "red", "prediction": "Red."},  # punctuation and case: right
        {"type": "color", "answer": "red", "prediction": "reddish"},  # wrong
        {"type": "shape", "answer": "square", "prediction": "the square"},  # article dropped: right
        {"type": "count", "answer": "2", "value": 2, "prediction": "two"},  # number word: right
        {"type": "direction", "answer": "left then up", "prediction": "left"},  # half a turn: wrong
        {"type": "when", "answer": "at 1.5 seconds", "value": 1.5, "prediction": "at 1.9 seconds"},  # 0.4 s: right
        {"type": "when", "answer": "at 1.5 seconds", "value": 1.5, "prediction": "at 2.125 seconds"},  # 0.625: wrong
        {"type": "when", "answer": "at 1 second", "value": 1.0, "prediction": "at 1.5 seconds"},  # 0.5 s: right
        {"type": "when", "answer": "at 1 second", "value": 1.0, "prediction": "it starts"},  # no time: wrong
    ]
    got = qa_accuracy(items)
    assert got == {
        "qa_accuracy": 5 / 9, "qa_num": 9.0,
        "qa_color_accuracy": 0.5, "qa_color_num": 2.0, "qa_count_accuracy": 1.0, "qa_count_num": 1.0,
        "qa_direction_accuracy": 0.0, "qa_direction_num": 1.0, "qa_shape_accuracy": 1.0, "qa_shape_num": 1.0,
        "qa_when_accuracy": 0.5, "qa_when_num": 4.0,
    }  # fmt: skip
    assert not answer_is_correct("when", "at 1.5 seconds", "at 1.5 seconds", None)  # no ground-truth time
    assert caption_exact_match([["a red square moves left"], ["a big blue circle"]], ["A red square moves left.",
                               "a blue circle"]) == 0.5  # fmt: skip


@pytest.mark.timeout(300)
def test_eval_tool_scores_a_llava_checkpoint(tmp_path, capsys, monkeypatch):
    import torch

    from tests.models.tiny_lm import make_tiny_lm
    from vidvlm.data.synthetic import make_synthetic
    from vidvlm.models.llava import LanguageModelConfig, LlavaConfig, LlavaModel

    manifest = make_synthetic(tmp_path / "qa", 2, seed=0, frames=4, size=32, shapes=(1, 2), events=True,
                              conversations=True)  # fmt: skip
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for i, row in enumerate(rows):  # questions that name their clip, so that hand-set answers can be looked up
        for q in row["qa"]:
            q["question"] += f" ({i})"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    torch.manual_seed(0)
    model = LlavaModel(LlavaConfig.tiny(lm=LanguageModelConfig(source=str(make_tiny_lm(tmp_path / "lms")))))
    model.save_pretrained(tmp_path / "ckpt")

    # a real generation run: every clip captioned, every question of its qa answered, the metrics from those answers
    args = ["--checkpoint", str(tmp_path / "ckpt"), "--manifest", str(manifest), "--batch-size", "3"]
    assert eval_cli.main([*args, "--predictions", str(tmp_path / "p.jsonl")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    answers = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    asked = [(i, q["question"]) for i, r in enumerate(rows) for q in r["qa"]]
    assert sorted((a["index"], a["question"]) for a in answers if a["kind"] == "qa") == sorted(asked)
    assert metrics["qa_num"] == len(asked) and metrics["caption_num"] == 2 and "caption_cider" in metrics
    assert metrics["qa_accuracy"] == qa_accuracy([a for a in answers if a["kind"] == "qa"])["qa_accuracy"]

    # hand-set answers through the same tool: row 0's answers all right, row 1's all wrong but its "when" (0.25 s off)
    truth = {(0, q["question"]): q["answer"] for q in rows[0]["qa"]}
    wrong = {(1, q["question"]): "at " + str(q["value"] + 0.25) + " seconds" if q["type"] == "when" else "nothing"
             for q in rows[1]["qa"]}  # fmt: skip
    by_question = {q: a for (_, q), a in {**wrong, **truth}.items()}

    def answer(self, video, frame_mask=None, questions=None, **kwargs):
        return [rows[0]["caption"] if q is None else by_question[q] for q in questions]

    monkeypatch.setattr(LlavaModel, "generate", answer)
    assert eval_cli.main(args) == 0
    metrics = json.loads(capsys.readouterr().out)
    types1 = {q["type"] for q in rows[1]["qa"]}
    for q in rows[0]["qa"]:
        expected = 1.0 if q["type"] == "when" or q["type"] not in types1 else 0.5
        assert metrics[f"qa_{q['type']}_accuracy"] == expected, q["type"]
    assert metrics["caption_exact_match"] == 0.5  # row 0's caption for both clips
