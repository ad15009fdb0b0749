"""benchmarks/negative_kinds.py sorts each generated hard negative into the kind the generator made it as."""

import importlib.util
import json
from pathlib import Path

import pytest

from vidvlm.data.synthetic import make_synthetic

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "negative_kinds.py"
_spec = importlib.util.spec_from_file_location("negative_kinds", _PATH)
negative_kinds = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(negative_kinds)

CAPTION = "a big red square moves left then stops at 3 seconds and a small blue circle moves up"


@pytest.mark.parametrize(
    ("negative", "kind"),
    [
        ("a big red square moves left then stops at 4 seconds and a small blue circle moves up", "time"),
        ("a big red square moves right then stops at 3 seconds and a small blue circle moves up", "direction"),
        ("a big red square moves left then stops at 3 seconds and a small blue circle moves down", "direction"),
        ("a big red square starts moving left at 3 seconds and a small blue circle moves up", "event"),
        ("a big red square moves up then stops at 3 seconds and a small blue circle moves left", "exchange"),
    ],
)
def test_kind_of_each_change(negative: str, kind: str) -> None:
    assert negative_kinds.kind_of(CAPTION, negative) == kind


def test_split_keeps_every_negative_once_and_writes_beside_the_manifest(tmp_path: Path) -> None:
    manifest = make_synthetic(
        tmp_path, 8, 5, frames=16, size=48, fps=2, shapes=(1, 3), events=True, negatives=True, timed_captions=True
    )
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert negative_kinds.main([str(manifest)]) == 0
    per_kind = {k: (tmp_path / f"manifest_{k}.jsonl").read_text().splitlines() for k in negative_kinds.KINDS}
    assert all(per_kind.values())  # every kind occurs in 8 timed scenes of 1-3 shapes
    for row in rows:
        split = [
            n
            for k in negative_kinds.KINDS
            for r in map(json.loads, per_kind[k])
            if r["path"] == row["path"]
            for n in r["negatives"]
        ]
        assert sorted(split) == sorted(row["negatives"])
    for line in per_kind["time"]:
        r = json.loads(line)
        plain = negative_kinds._TIME.sub("", r["caption"])
        assert all(n != r["caption"] and negative_kinds._TIME.sub("", n) == plain for n in r["negatives"])
    with pytest.raises(ValueError, match="changes 0 clauses"):
        negative_kinds.kind_of(CAPTION, CAPTION)


def test_a_bad_line_is_named(tmp_path: Path) -> None:
    """Bad JSON, a row without a caption, a negative naming other shapes: one line naming file and line."""
    bad = tmp_path / "manifest.jsonl"
    cases = {
        '{"path": \n': "JSONDecodeError",
        '{"path": "a.mp4", "negatives": ["x"]}\n': "KeyError",
        '{"path": "a.mp4", "caption": "a red square moves up", "negatives": ["a x and a y"]}\n': "does not name",
    }
    for text, reason in cases.items():
        bad.write_text(text)
        with pytest.raises(SystemExit, match=rf"manifest.jsonl:1: .*{reason}"):
            negative_kinds.main([str(bad)])
