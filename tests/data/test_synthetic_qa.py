"""Conversations and questions agree with the manifest's ground truth; the compositional split keeps its pairs apart;
the text corpus is deterministic."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from vidvlm.data.synthetic import HELD_OUT_PAIRS, SHAPES_ATTRIBUTES, allowed_pairs, make_synthetic
from vidvlm.data.synthetic_qa import QUESTION_TYPES, STILL_TYPES, make_text_corpus
from vidvlm.data.synthetic_scenes import sample_scene
from vidvlm.errors import ConfigError

FRAMES, SIZE, FPS = 8, 48, 4
ATTRIBUTE_WORDS = r"\b(" + "|".join(w for values in SHAPES_ATTRIBUTES.values() for w in values) + r")\b"
MOTION_WORDS = ("move", "moving", "when", "after", "direction", "way", "going", "time", "seconds")


def read_rows(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text().splitlines()]


@pytest.fixture(scope="module")
def talk(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("talk")
    keywords = {"frames": FRAMES, "size": SIZE, "fps": FPS, "shapes": (1, 3), "events": True, "conversations": True}
    return read_rows(make_synthetic(out, 40, seed=11, **keywords))


def seconds_text(t: float) -> str:
    return f"at {t:g} second" + ("" if t == 1 else "s")


def answer(row: dict, question: str) -> str:
    """The answer to ``question`` read off the row's ground truth: a second reading of the manifest, apart from the
    generator's own code."""
    shapes = row.get("shapes") or [{**row["attributes"], "motion": "moves"}]
    events = row.get("events", [])
    words = re.findall(r"[a-z]+", question.lower())
    if re.search(r"describe|caption|what do you see|what happens in|what is in the", question):
        return row["caption"]
    if question.startswith(("what happens after", "what happens next")):
        (e,) = [e for e in events if f"the {shapes[e['shape']]['color']} {shapes[e['shape']]['shape']} " in question]
        nxt = min((x for x in events if x["frame"] > e["frame"]), key=lambda x: x["frame"])
        return f"the {shapes[nxt['shape']]['color']} {shapes[nxt['shape']]['shape']} {nxt['event']}"
    by_color = {i for i, s in enumerate(shapes) if s["color"] in words}
    by_kind = {i for i, s in enumerate(shapes) if s["shape"] in words}
    named = (by_color & by_kind if by_color and by_kind else by_color or by_kind) or set(range(len(shapes)))
    if "how many shapes" in question or "count" in words:
        return str(len(shapes))
    (i,) = named
    s = shapes[i]
    turn = [e["direction"] for e in events if e["shape"] == i and e["event"] == "changes direction"]
    if "how many shapes" in question or "count" in words:
        return str(len(shapes))
    if question.startswith(("what colour", "what color", "which colour")):
        return s["color"]
    if question.startswith(("what shape", "which shape", "what kind")):
        return s["shape"]
    if "big or small" in question or "size" in words or "how big" in question:
        return s["size"]
    if "do after" in question or question.startswith("after"):
        return {
            "starts": f"it moves {s['direction']}",
            "stops": "it stops",
            "turns": f"it moves {turn[0] if turn else ''}",
            "appears": f"it moves {s['direction']}",
            "disappears": "it disappears",
        }[s["motion"]]
    if question.startswith(("when", "at what time", "how many seconds")):
        (e,) = [e for e in events if e["shape"] == i]
        return seconds_text(e["frame"] / FPS)
    if any(w in words for w in ("way", "direction", "going", "move")):
        return " then ".join([s["direction"], *turn])
    raise AssertionError(f"a question of no known kind: {question!r}")


def check_row(row: dict, placeholder: str, types: tuple[str, ...]) -> None:
    turns = row["conversation"]
    assert [t["role"] for t in turns] == ["user", "assistant"] * (len(turns) // 2) and turns
    assert turns[0]["content"].startswith(f"{placeholder}\n")
    assert sum(t["content"].count("<video>") + t["content"].count("<image>") for t in turns) == 1
    for user, assistant in zip(turns[::2], turns[1::2], strict=True):
        question = user["content"].removeprefix(f"{placeholder}\n")
        assert assistant["content"] == answer(row, question), (row["caption"], question)
    qa = row["qa"]
    assert [q["type"] for q in qa] == [t for t in types if t in {q["type"] for q in qa}]
    for q in qa:
        assert q["answer"] == answer(row, q["question"]), (row["caption"], q)
        if q["type"] == "count":
            assert q["value"] == len(row.get("shapes", [0])) and isinstance(q["value"], int)
        elif q["type"] == "when":
            assert seconds_text(q["value"]) == q["answer"] and q["value"] in [e["time"] for e in row["events"]]
        else:
            assert q["value"] == q["answer"]


def test_video_conversations_and_qa_match_the_ground_truth(talk: list[dict]) -> None:
    phrasings, lengths = defaultdict(set), set()
    for row in talk:
        check_row(row, "<video>", QUESTION_TYPES)
        types = {q["type"] for q in row["qa"]}
        assert types >= {"color", "shape", "size", "direction", "count"}
        assert ("when" in types) == ("after" in types) == bool(row["events"])
        lengths.add(len(row["conversation"]) // 2)
        for q in row["qa"]:
            phrasings[q["type"]].add(
                re.sub(r"\b(" + "|".join(sum(SHAPES_ATTRIBUTES.values(), ())) + r")\b", "_", q["question"])
            )
    assert set(phrasings) == set(QUESTION_TYPES)
    assert all(len(p) >= 2 for p in phrasings.values()), phrasings
    assert 1 in lengths and max(lengths) >= 3  # single- and multi-turn
    assert any("what happens after" in q["question"] for r in talk for q in r["qa"])  # across shapes


def test_per_shape_questions_ask_about_every_shape_and_change_nothing_else(tmp_path: Path, talk: list[dict]) -> None:
    keywords = {"frames": FRAMES, "size": SIZE, "fps": FPS, "shapes": (1, 3), "events": True, "conversations": True}
    rows = read_rows(make_synthetic(tmp_path, 40, seed=11, qa_per_shape=["color", "direction"], **keywords))
    multi = 0
    for row, plain in zip(rows, talk, strict=True):
        assert {k: v for k, v in row.items() if k not in ("conversation", "qa")} == {
            k: v for k, v in plain.items() if k not in ("conversation", "qa")
        }
        qa = row["qa"]
        assert [q for q in qa if q in plain["qa"]] == plain["qa"]  # the usual questions, first of their type
        order = [QUESTION_TYPES.index(q["type"]) for q in qa]
        assert order == sorted(order)
        for q in qa:
            assert q["answer"] == answer(row, q["question"]), (row["caption"], q)
        for kind in ("color", "direction"):
            asked = [q["question"] for q in qa if q["type"] == kind]
            assert len(asked) == len(row["shapes"]) == len(set(asked))
        for kind in ("shape", "size", "count"):
            assert sum(q["type"] == kind for q in qa) == 1
        for user, assistant in zip(row["conversation"][::2], row["conversation"][1::2], strict=True):
            assert assistant["content"] == answer(row, user["content"].removeprefix("<video>\n"))
        multi += len(row["shapes"]) > 1
    assert multi >= 10


def test_per_shape_questions_need_conversations_and_known_types(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="qa_per_shape"):
        make_synthetic(tmp_path, 2, seed=0, size=SIZE, shapes=(1, 3), qa_per_shape=["color"])
    with pytest.raises(ConfigError, match="qa_per_shape.*count"):
        make_synthetic(tmp_path, 2, seed=0, size=SIZE, shapes=(1, 3), conversations=True, qa_per_shape=["count"])


def test_still_conversations_need_no_motion(tmp_path: Path) -> None:
    rows = read_rows(make_synthetic(tmp_path, 16, seed=2, size=SIZE, images=True, shapes=(1, 3), conversations=True))
    for row in rows:
        check_row(row, "<image>", STILL_TYPES)
        questions = [t["content"] for t in row["conversation"][::2]] + [q["question"] for q in row["qa"]]
        assert not any(re.search(rf"\b{w}\b", q) for q in questions for w in MOTION_WORDS), questions
        assert {q["type"] for q in row["qa"]} == set(STILL_TYPES)


def test_default_clips_gain_only_the_conversation(tmp_path: Path) -> None:
    plain = read_rows(make_synthetic(tmp_path / "plain", 6, seed=5, frames=4, size=32))
    rows = read_rows(make_synthetic(tmp_path / "talk", 6, seed=5, frames=4, size=32, conversations=True))
    for p, row in zip(plain, rows, strict=True):
        assert {k: v for k, v in row.items() if k not in ("conversation", "qa")} == p
        check_row(row, "<video>", QUESTION_TYPES)
        assert {q["type"] for q in row["qa"]} == {"color", "shape", "size", "direction", "count"}


def test_same_seed_same_conversations(tmp_path: Path) -> None:
    keywords = {"size": SIZE, "images": True, "shapes": (1, 3), "conversations": True}
    a = make_synthetic(tmp_path / "a", 8, seed=9, **keywords).read_text()
    assert make_synthetic(tmp_path / "b", 8, seed=9, **keywords).read_text() == a
    assert make_synthetic(tmp_path / "c", 8, seed=10, **keywords).read_text() != a


def pairs_of(row: dict) -> set[tuple[str, str]]:
    shapes = row.get("shapes") or [row["attributes"]]
    return {(s["color"], s["shape"]) for s in shapes}


def test_held_out_pairs_partition() -> None:
    train = allowed_pairs("train", compositional=True)
    assert set(HELD_OUT_PAIRS) == set(allowed_pairs("compositional", compositional=False))
    assert not set(train) & set(HELD_OUT_PAIRS) and len(train) + len(HELD_OUT_PAIRS) == 24
    # every word of a held-out caption is seen in training: each colour and each shape keeps training pairs
    assert {c for c, _ in train} == set(SHAPES_ATTRIBUTES["color"])
    assert {s for _, s in train} == set(SHAPES_ATTRIBUTES["shape"])
    assert len(allowed_pairs("train", compositional=False)) == 24


@pytest.mark.parametrize("shapes", [None, (1, 3)], ids=["one_shape", "scenes"])
def test_compositional_split_is_disjoint_from_training(tmp_path: Path, shapes: tuple[int, int] | None) -> None:
    seen: dict[str, set] = {}
    for split, compositional in (("train", True), ("val", True), ("test", True), ("compositional", False)):
        manifest = make_synthetic(
            tmp_path / split,
            30,
            seed=1,
            size=SIZE,
            images=True,
            split=split,
            shapes=shapes,
            compositional=compositional,
        )
        seen[split] = set().union(*(pairs_of(r) for r in read_rows(manifest)))
    for split in ("train", "val", "test"):
        assert not seen[split] & set(HELD_OUT_PAIRS), (split, seen[split] & set(HELD_OUT_PAIRS))
    assert seen["compositional"] <= set(HELD_OUT_PAIRS) and len(seen["compositional"]) >= 4
    unrestricted = make_synthetic(tmp_path / "all", 30, seed=1, size=SIZE, images=True, shapes=shapes)
    assert set().union(*(pairs_of(r) for r in read_rows(unrestricted))) & set(HELD_OUT_PAIRS)


def test_compositional_scenes_of_three_shapes_draw_held_out_pairs_only() -> None:
    rng = np.random.default_rng(0)
    for split, compositional in (("train", True), ("compositional", False)):
        pairs = allowed_pairs(split, compositional)
        for _ in range(40):
            scene = sample_scene(rng, FRAMES, SIZE, FPS, count=(3, 3), events=True, pairs=pairs)
            assert {(t.color, t.shape) for t in scene.tracks} <= set(pairs)


def test_text_corpus_is_deterministic_and_about_the_world(tmp_path: Path) -> None:
    path = make_text_corpus(tmp_path / "a", 400, seed=3)
    assert path.name == "text.jsonl"
    assert make_text_corpus(tmp_path / "b", 400, seed=3).read_bytes() == path.read_bytes()
    assert make_text_corpus(tmp_path / "c", 400, seed=4).read_bytes() != path.read_bytes()
    rows = read_rows(path)
    assert len(rows) == 400 and all(set(r) == {"text"} and r["text"] for r in rows)
    texts = [r["text"] for r in rows]
    assert len(set(texts)) > 150
    assert any("question:" in t and "answer:" in t for t in texts)
    assert any(re.search(r"when does .* answer: at [0-9.]+ seconds?$", t) for t in texts)
    assert any("edge" in t for t in texts) and any(" and " in t and " moves " in t for t in texts)
    assert not any(w in t for t in texts for w in ("<video>", "<image>"))


def mentions_held_out(text: str) -> bool:
    plural = {"square": "squares", "circle": "circles", "triangle": "triangles", "cross": "crosses"}
    return any(re.search(rf"\b{c} ({s}|{plural[s]})\b", text) for c, s in HELD_OUT_PAIRS)


def test_compositional_text_corpus_never_names_a_held_out_pair(tmp_path: Path) -> None:
    texts = [r["text"] for r in read_rows(make_text_corpus(tmp_path, 600, seed=0, compositional=True))]
    assert not [t for t in texts if mentions_held_out(t)]
    everything = [r["text"] for r in read_rows(make_text_corpus(tmp_path, 600, seed=0, file_name="all.jsonl"))]
    assert any(mentions_held_out(t) for t in everything)
    with pytest.raises(ConfigError, match="num"):
        make_text_corpus(tmp_path, 0, seed=0)


def test_scene_manifest_reads_with_the_new_fields_kept(tmp_path: Path) -> None:
    """Today's reader keeps the new fields in ``ManifestRow.extra`` and decodes the clips (datasets.py unchanged)."""
    from vidvlm.data.datasets import VideoTextDataset, read_manifest
    from vidvlm.data.sampling import UniformSampler

    keywords = {"frames": FRAMES, "size": 32, "fps": FPS, "shapes": (2, 2), "events": True, "conversations": True}
    manifest = make_synthetic(tmp_path, 2, seed=0, **keywords)
    for parsed, row in zip(read_manifest(manifest), read_rows(manifest), strict=True):
        assert parsed.captions == (row["caption"],) and parsed.label == -1 and parsed.attributes == {"count": 2}
        assert {k: parsed.extra[k] for k in ("shapes", "events", "conversation", "qa")} == {
            k: row[k] for k in ("shapes", "events", "conversation", "qa")
        }
    sample = VideoTextDataset(manifest, UniformSampler(4))[0]
    assert tuple(sample["video"].shape) == (4, 3, 32, 32) and sample["text"] == read_rows(manifest)[0]["caption"]
