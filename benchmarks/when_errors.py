"""How far off a model's "when" answers are, and whether they follow the true event time at all.

    python benchmarks/when_errors.py ens=runs/c0_ens48p,runs/c0_ens48p_s1 times=runs/c0_ens48p_times \
        [--answers test_answers.jsonl]

Each argument is ``LABEL=RUN[,RUN...]``; a run directory holds the predictions ``tools/eval.py --predictions``
writes. Per run: the share of "when" answers within 0.5 s (the issue's metric, ``tools/eval.py``'s rule), 1 s and
1.5 s of the true time; the Pearson correlation of the answered time with the true one (0: the answer does not
follow the clip; an answer without a number counts as missing); the same share for the best constant answer on those
questions; and the 0.5-s accuracy per event (appears, disappears, starts moving, stops, turns).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

from vidvlm.eval.qa import WHEN_TOLERANCE_S, parse_seconds

EVENTS = {"appear": "appears", "disappear": "disappears", "start": "starts", "stop": "stops", "turn": "turns"}


def when_rows(run: Path, answers: str) -> list[dict]:
    path = run / answers
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"error: {path}: cannot read the predictions: {e}") from None
    return [r for r in rows if r.get("kind") == "qa" and r.get("type") == "when"]


def event_of(question: str) -> str:
    """The event a "when" question asks about, by its verb ("change direction" is a turn)."""
    if "direction" in question:
        return "turns"
    return next((name for verb, name in EVENTS.items() if re.search(rf"\b{verb}", question)), "other")


def summarise(rows: list[dict]) -> dict[str, float]:
    true = np.array([float(r["value"]) for r in rows])
    said = np.array([np.nan if (s := parse_seconds(r["prediction"])) is None else s for r in rows])
    err = np.abs(said - true)  # NaN (no number) is never within a tolerance
    tol = WHEN_TOLERANCE_S + 1e-9
    constants = np.unique(true)
    best_constant = max(float((np.abs(c - true) <= tol).mean()) for c in constants)
    answered = ~np.isnan(said)
    corr = float(np.corrcoef(said[answered], true[answered])[0, 1]) if answered.sum() > 2 else float("nan")
    out = {
        "n": float(len(rows)),
        "within_0.5": float((err <= tol).mean()),
        "within_1": float((err <= 1 + 1e-9).mean()),
        "within_1.5": float((err <= 1.5 + 1e-9).mean()),
        "corr": corr,
        "best_constant": best_constant,
    }
    events = np.array([event_of(r["question"]) for r in rows])
    for name in [*EVENTS.values(), "other"]:
        if (events == name).any():
            out[name] = float((err[events == name] <= tol).mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("groups", nargs="+", help="LABEL=RUN[,RUN...]")
    parser.add_argument("--answers", default="test_answers.jsonl")
    args = parser.parse_args()
    columns = ["within_0.5", "within_1", "within_1.5", "corr", "best_constant", *EVENTS.values(), "other"]
    print("| setting | run | n | " + " | ".join(columns) + " |")
    print("|" + "---|" * (len(columns) + 3))
    for group in args.groups:
        label, _, runs = group.partition("=")
        if not runs:
            raise SystemExit(f"error: {group!r}: expected LABEL=RUN[,RUN...]")
        for run in runs.split(","):
            s = summarise(when_rows(Path(run), args.answers))
            cells = [f"{s[c]:.3f}" if c in s else "—" for c in columns]
            print(f"| {label} | {Path(run).name} | {int(s['n'])} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
