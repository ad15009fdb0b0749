"""Split a manifest's hard negative captions by kind, one manifest per kind, to score a tower on each alone.

    python benchmarks/negative_kinds.py data/shapes_llava8s/val_select_timed/manifest.jsonl
    python tools/eval.py --checkpoint RUN/final --num-frames 8 \
        --manifest data/shapes_llava8s/val_select_timed/manifest_time.jsonl     # negatives_pair_acc: time only

A negative from ``make_synthetic --negatives`` changes one thing of its clip's caption (clauses joined by " and ",
one a shape, in the caption's order). Its kind, found by comparing the two clause by clause:

    exchange   two clauses differ: two shapes' directions exchanged (the binding)
    time       one clause differs only in its event time ("... stops at 3 seconds" -> "at 4 seconds")
    direction  one clause differs only in direction words (left, right, up, down)
    event      one clause differs otherwise: the event moved to the other end (starts <-> stops, ...)

Writes ``manifest_{kind}.jsonl`` beside the manifest (the clips' paths stay relative to its folder), each row kept
with only its negatives of that kind and rows without any left out, and prints the count of each kind.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from vidvlm.atomic import write_text_atomic

KINDS = ("exchange", "time", "direction", "event")
DIRECTION_WORDS = {"left", "right", "up", "down"}
_TIME = re.compile(r" at [0-9.]+ seconds?\b")


def kind_of(caption: str, negative: str) -> str:
    """The kind of ``negative`` against ``caption`` (see the module docstring)."""
    ours, theirs = caption.split(" and "), negative.split(" and ")
    if len(ours) != len(theirs):
        raise ValueError(f"{negative!r} does not name the shapes of {caption!r}")
    changed = [(a, b) for a, b in zip(ours, theirs, strict=True) if a != b]
    if len(changed) == 2:
        return "exchange"
    if len(changed) != 1:
        raise ValueError(f"{negative!r} changes {len(changed)} clauses of {caption!r}")
    (a, b) = changed[0]
    a_plain, b_plain = _TIME.sub("", a), _TIME.sub("", b)
    if a_plain == b_plain:
        return "time"
    rest = [[w for w in text.split() if w not in DIRECTION_WORDS] for text in (a_plain, b_plain)]
    return "direction" if rest[0] == rest[1] else "event"


def split_by_kind(manifest: Path) -> dict[str, list[dict]]:
    """Rows of ``manifest`` per kind, each with only its negatives of that kind (rows without any left out)."""
    out: dict[str, list[dict]] = {k: [] for k in KINDS}
    for line_no, line in enumerate(manifest.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            kinds = [kind_of(row["caption"], n) for n in row.get("negatives", [])]
        except (ValueError, KeyError, TypeError) as e:  # bad JSON, no caption, or a negative of other shapes
            raise SystemExit(f"error: {manifest}:{line_no}: {e!r}") from None
        for kind in KINDS:
            negatives = [n for n, k in zip(row.get("negatives", []), kinds, strict=True) if k == kind]
            if negatives:
                out[kind].append({**row, "negatives": negatives})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", type=Path, help="a JSONL manifest whose rows carry negatives")
    args = parser.parse_args(argv)
    if not args.manifest.is_file():
        print(f"error: {args.manifest}: no such manifest", file=sys.stderr)
        return 2
    for kind, rows in split_by_kind(args.manifest).items():
        path = args.manifest.with_name(f"manifest_{kind}.jsonl")
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
        print(f"{kind}: {len(rows)} clips, {sum(len(r['negatives']) for r in rows)} negatives -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
