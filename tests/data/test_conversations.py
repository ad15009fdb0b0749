"""``qa_turns``: training conversations drawn afresh from a row's question-answer ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vidvlm.data.conversations import conversation_from_qa, placeholder_of
from vidvlm.data.datasets import VideoTextDataset
from vidvlm.data.sampling import SamplerConfig, build_sampler
from vidvlm.data.synthetic import make_synthetic
from vidvlm.errors import ConfigError

QA = [{"question": f"question {i}?", "answer": f"answer {i}", "type": "t"} for i in range(5)]


def pairs(conversation: list[dict[str, str]]) -> list[tuple[str, str]]:
    """(question, answer) of each user/assistant pair, the placeholder line removed."""
    users = [t["content"].split("\n")[-1] for t in conversation[0::2]]
    return list(zip(users, [t["content"] for t in conversation[1::2]], strict=True))


def test_every_pair_once_in_a_random_order_with_the_placeholder_first() -> None:
    orders = set()
    for seed in range(20):
        conversation = conversation_from_qa(QA, 99, np.random.default_rng(seed), "<image>")
        assert [t["role"] for t in conversation] == ["user", "assistant"] * 5
        assert conversation[0]["content"].startswith("<image>\n")
        assert all("<image>" not in t["content"] for t in conversation[1:])
        got = pairs(conversation)
        assert sorted(got) == sorted((q["question"], q["answer"]) for q in QA)
        orders.add(tuple(got))
    assert len(orders) > 10  # 120 orders possible: the order is drawn, not fixed


def test_a_smaller_count_draws_that_many_distinct_pairs_and_repeats_with_the_generator() -> None:
    a = conversation_from_qa(QA, 2, np.random.default_rng(3))
    assert a == conversation_from_qa(QA, 2, np.random.default_rng(3))
    got = pairs(a)
    assert len(got) == 2 and len(set(got)) == 2
    assert set(got) <= {(q["question"], q["answer"]) for q in QA}
    with pytest.raises(ValueError, match="at least 1"):
        conversation_from_qa(QA, 0, np.random.default_rng(0))


def test_the_placeholder_follows_the_rows_own_conversation() -> None:
    assert placeholder_of([{"role": "user", "content": "<image>\nwhat?"}], 8) == "<image>"
    assert placeholder_of(None, 1) == "<image>"
    assert placeholder_of(None, 8) == "<video>"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("qa_turns")
    keywords = {"frames": 8, "size": 32, "fps": 4, "shapes": (1, 3), "events": True, "conversations": True}
    return make_synthetic(out, 6, seed=5, **keywords)


def dataset(manifest: Path, **kwargs) -> VideoTextDataset:
    sampler = build_sampler(SamplerConfig(name="uniform", num_frames=4))
    return VideoTextDataset(manifest, sampler, None, seed=1, **kwargs)


def test_training_samples_carry_every_question_of_the_row_and_the_same_frames(manifest: Path) -> None:
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    plain, drawn = dataset(manifest, train=True), dataset(manifest, train=True, qa_turns=10)
    orders = set()
    for epoch in range(3):
        plain.set_epoch(epoch)
        drawn.set_epoch(epoch)
        for i, row in enumerate(rows):
            a, b = plain[i], drawn[i]
            assert torch.equal(a["video"], b["video"])  # the draw comes after the frames: nothing else moves
            assert a["conversation"] == row["conversation"]
            assert sorted(pairs(b["conversation"])) == sorted((q["question"], q["answer"]) for q in row["qa"])
            assert b["conversation"][0]["content"].startswith("<video>\n")
            assert b["conversation"] == drawn[i]["conversation"]  # the same sample again: the same turns
            orders.add((i, tuple(pairs(b["conversation"]))))
    assert len(orders) > len(rows)  # some row got another order in another epoch


def test_evaluation_keeps_the_rows_own_conversation_and_bad_counts_are_refused(manifest: Path) -> None:
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    evaluation = dataset(manifest, train=False, qa_turns=10)
    assert [evaluation[i]["conversation"] for i in range(len(rows))] == [r["conversation"] for r in rows]
    for bad in (0, -2, 1.5, True, "all"):
        with pytest.raises(ConfigError, match="qa_turns"):
            dataset(manifest, qa_turns=bad)


def test_the_option_reaches_the_dataset_from_a_run_config_and_a_bad_value_names_its_key(manifest: Path) -> None:
    from vidvlm.train.config import load_train_config
    from vidvlm.train.data import build_dataset

    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    base = [
        "data.synthetic=null",
        f"data.datasets.qa.manifest={manifest}",
        "data.sampler={name: uniform, num_frames: 4}",
        "data.transform={size: 32}",
    ]
    cfg = load_train_config("configs/llava_tiny_8f_shapes.yaml", [*base, "data.datasets.qa.options={qa_turns: 2}"])
    data = build_dataset(cfg, cfg.data.datasets["qa"], True, "data.datasets.qa")
    for i, row in enumerate(rows):
        got = pairs(data[i]["conversation"])
        assert len(got) == min(2, len(row["qa"])) and set(got) <= {(q["question"], q["answer"]) for q in row["qa"]}
    bad = load_train_config("configs/llava_tiny_8f_shapes.yaml", [*base, "data.datasets.qa.options={qa_turns: 0}"])
    with pytest.raises(ConfigError, match=r"^data\.datasets\.qa\.options: qa_turns: expected a positive integer"):
        build_dataset(bad, bad.data.datasets["qa"], True, "data.datasets.qa")


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("qa", [{"answer": "red"}], r"qa: entry 0: expected \{'question'"),  # an entry without its question
        ("qa", [{"question": "which?", "answer": None}], r"qa: entry 0: expected"),
        ("qa", [], r"qa: expected a non-empty list"),
        ("conversation", "what colour?", r"conversation: expected a non-empty list of turns"),
        ("conversation", [{"role": "user", "content": "<video>\nq?"}, {"role": "bot", "content": "red"}],
         r"conversation: turn 1: expected \{'role'"),
        ("conversation", [{"role": "user", "content": "<video>\nq?"}], r"conversation: no assistant turn"),
    ],
)  # fmt: skip
def test_a_malformed_row_is_refused_when_the_manifest_is_read_naming_its_line(
    tmp_path: Path, manifest: Path, key: str, value, message: str
) -> None:
    rows = [json.loads(line) for line in manifest.read_text().splitlines()[:2]]
    for row in rows:
        (tmp_path / row["path"]).write_bytes((manifest.parent / row["path"]).read_bytes())
    rows[1][key] = value
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ConfigError, match=rf"manifest\.jsonl:2: {message}"):
        dataset(tmp_path / "manifest.jsonl", train=True, qa_turns=3)


def test_a_csv_manifest_carries_conversations_and_qa_as_json(tmp_path: Path, manifest: Path) -> None:
    import csv

    row = json.loads(manifest.read_text().splitlines()[0])
    (tmp_path / row["path"]).write_bytes((manifest.parent / row["path"]).read_bytes())
    fields = ["path", "caption", "conversation", "qa"]
    with open(tmp_path / "m.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        w.writerow([row["path"], row["caption"], json.dumps(row["conversation"]), json.dumps(row["qa"])])
        w.writerow([row["path"], row["caption"], "", ""])  # a caption-only row
    data = dataset(tmp_path / "m.csv", train=False)
    assert data[0]["conversation"] == row["conversation"] and data.rows[0].extra["qa"] == row["qa"]
    assert "conversation" not in data[1] and "qa" not in data.rows[1].extra
    (tmp_path / "bad.csv").write_text(f'path,caption,conversation\n{row["path"]},a caption,"[{{oops"\n')
    with pytest.raises(ConfigError, match=r"bad\.csv:2: 'conversation' must be JSON"):
        dataset(tmp_path / "bad.csv", train=False)
