"""Markdown rows of held-out question accuracy per type from evaluated runs, with the seed spread of groups.

    python benchmarks/qa_table.py base=runs/llava_tiny_ct,runs/ct_s1,runs/ct_s2 bidir=runs/ct_bidir \
        [--metrics test_metrics.json] [--stage joint]

Each argument is ``LABEL=RUN[,RUN...]``: the runs of one setting (different seeds). A run directory holds the
``tools/eval.py --out`` JSON (``--metrics``, default ``test_metrics.json``) and the trainer's ``metrics.jsonl``. A
row gives, per question type, the mean over the group's runs and, for groups of two or more, the spread
(``min–max``); then caption CIDEr-D, held-out text loss and the median step time of the ``--stage`` stage from
``metrics.jsonl`` (seconds; it depends on the machine's load, so compare rows measured together). A difference
between two rows smaller than the spread of either is no difference.

``--by-shapes MANIFEST`` splits each group into two rows, clips with one shape and clips with two or three, scored
again from each run's predictions (``--answers``, default ``test_answers.jsonl``, as ``tools/eval.py --predictions``
writes them) with ``tools/eval.py``'s rule; ``MANIFEST`` is the evaluated manifest (it says how many shapes each
clip has). Captions, text loss and step time are not split (their cells show "—").

``--against LABEL`` follows every other group's row with the two-sided permutation p of its difference from the
group ``LABEL`` (:func:`vidvlm.eval.seeds.permutation_p`, exact over every relabelling of the runs): a cell of 0.3
says a relabelling of the seeds separates the means that far three times in ten. Both groups need two runs or more;
with two a side p cannot fall below 0.33.

A seeded run is bit-exact only where it was computed (:mod:`vidvlm.environment`): when the runs of the table were
trained on different CPUs, kernels, accelerators, torch builds or thread counts (``final/trainer_state.json`` records
it), a note on stderr says which runs ran where, so a reader knows a rerun elsewhere gives other numbers. A second note
names the runs whose frozen towers differ in content (the weights a frozen tower left in ``final/model.safetensors``,
or the sha256 a checkpoint names an unstored tower by): a tower retrained at the same path, on another machine or
with another command, makes the rows compare different towers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from vidvlm.config import read_mapping
from vidvlm.environment import NUMERIC_KEYS
from vidvlm.eval.qa import qa_accuracy
from vidvlm.eval.seeds import permutation_p
from vidvlm.models.base import CONFIG_FILE, WEIGHTS_FILE
from vidvlm.train.checkpoint import STATE_FILE

TYPES = ("color", "shape", "size", "direction", "count", "when", "after")


def read_run(run: Path, metrics: str, stage: str) -> dict[str, float]:
    """``{type: accuracy, 'all': ..., 'cider': ..., 'text_loss': ..., 'step_s': ...}`` of one run."""
    path = run / metrics
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"error: {path}: cannot read the evaluation: {e}") from None
    out = {t: data.get(f"qa_{t}_accuracy") for t in TYPES}
    out.update(all=data.get("qa_accuracy"), cider=data.get("caption_cider"), text_loss=data.get("text_loss"))
    times = []
    log = run / "metrics.jsonl"
    if log.is_file():
        for line in log.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("stage") == stage and "step_time_s" in row:
                times.append(row["step_time_s"])
    out["step_s"] = statistics.median(times) if times else None
    return out


def environments_note(runs: list[Path]) -> str | None:
    """A note naming the runs trained in each environment when there is more than one (``None`` otherwise)."""
    envs = {}
    for run in runs:
        try:
            envs[run] = json.loads((run / "final" / STATE_FILE).read_text()).get("environment")
        except (OSError, json.JSONDecodeError):
            envs[run] = None
    # the keys every recorded environment has (``kernels`` and ``cpu_model`` are newer than the rest)
    keys = [k for k in NUMERIC_KEYS if all(k in env for env in envs.values() if env)]
    where: dict[str, list[str]] = {}
    for run, env in envs.items():
        key = ", ".join(f"{k} {env.get(k)}" for k in keys) if env else "not recorded"
        where.setdefault(key, []).append(str(run))
    return _grouped_note(where, "trained in {} environments (results are bit-exact only within one)")


def _grouped_note(groups: dict[str, list[str]], what: str, prefix: str = "") -> str | None:
    """``note: these runs were WHAT:`` and a line per group (``None`` for fewer than two groups)."""
    if len(groups) < 2:
        return None
    lines = [f"note: these runs were {what.format(len(groups))}:"]
    lines += [f"  {prefix}{key}: {', '.join(names)}" for key, names in groups.items()]
    return "\n".join(lines)


def frozen_tower_digest(final: Path) -> str | None:
    """A short content hash of the frozen tower a checkpoint was trained on (``None``: its tower was trained too).

    The hash covers the ``front_end.tower.`` tensors of ``final/model.safetensors`` (what a frozen checkpoint or
    pretrained tower leaves there), or, for a checkpoint that names its tower instead of storing it, the sha256 values
    its config gives the tower and its ensemble members.
    """
    front = read_mapping(final / CONFIG_FILE).get("front_end") or {}
    named = _named_hashes(front.get("tower") or {})
    if not front.get("freeze_tower") and not named:
        return None
    digest = hashlib.sha256()
    with safe_open(final / WEIGHTS_FILE, framework="pt") as f:
        names = sorted(k for k in f.keys() if k.startswith("front_end.tower."))  # noqa: SIM118 (not iterable)
        for name in names:
            digest.update(name.encode())
            digest.update(f.get_tensor(name).contiguous().view(-1).view(torch.uint8).numpy().tobytes())  # any dtype
    if not names:
        if not named:
            return None
        digest.update(" ".join(named).encode())
    return digest.hexdigest()[:12]


def _named_hashes(tower: dict) -> list[str]:
    """The ``sha256`` values a tower config and its ensemble members name their sources by, depth first."""
    own = [tower["sha256"]] if tower.get("sha256") else []
    return own + [h for member in tower.get("members") or [] for h in _named_hashes(member)]


def towers_note(runs: list[Path]) -> str | None:
    """A note naming the runs trained on each frozen tower when they used more than one (``None`` otherwise)."""
    towers: dict[str, list[str]] = {}
    for run in runs:
        try:
            digest = frozen_tower_digest(run / "final")
        except (OSError, ValueError, SafetensorError) as e:  # an unreadable config or weights file: say so
            digest = f"unreadable ({type(e).__name__})"
        if digest is not None:
            towers.setdefault(digest, []).append(str(run))
    return _grouped_note(towers, "trained on {} different frozen towers (compare within one)", prefix="tower ")


def shape_counts(manifest: Path) -> dict[str, int]:
    """``{clip file name: number of shapes}`` from a synthetic manifest with per-shape ground truth."""
    counts = {}
    for line in manifest.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            counts[Path(entry["path"]).name] = len(entry.get("shapes") or [entry])
    return counts


def read_split(run: Path, answers: str, counts: dict[str, int]) -> dict[str, dict[str, float]]:
    """Per-type accuracy of one run's predicted answers on one-shape clips (``"1"``) and on the others (``"2-3"``)."""
    path = run / answers
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"error: {path}: cannot read the predictions: {e}") from None
    split: dict[str, list[dict]] = {"1": [], "2-3": []}
    for row in rows:
        if row.get("kind") == "qa":
            name = Path(row["path"]).name
            if name not in counts:
                raise SystemExit(f"error: {path}: clip {name!r} is not in the --by-shapes manifest")
            split["1" if counts[name] == 1 else "2-3"].append(row)
    out = {}
    for key, items in split.items():
        acc = qa_accuracy(items) if items else {}
        out[key] = {t: acc.get(f"qa_{t}_accuracy") for t in TYPES}
        out[key].update(all=acc.get("qa_accuracy"), cider=None, text_loss=None, step_s=None)
    return out


def cell(values: list[float | None], digits: int = 3) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("groups", nargs="+", metavar="LABEL=RUN[,RUN...]")
    parser.add_argument("--metrics", default="test_metrics.json", help="the evaluation JSON inside each run")
    parser.add_argument("--stage", default="joint", help="the stage whose median step time is reported")
    parser.add_argument("--by-shapes", type=Path, metavar="MANIFEST", help="split rows by shapes per clip")
    parser.add_argument("--answers", default="test_answers.jsonl", help="the predictions inside each run")
    parser.add_argument("--against", metavar="LABEL", help="add each group's permutation p against this group")
    args = parser.parse_args()
    counts = shape_counts(args.by_shapes) if args.by_shapes else None
    tables: dict[str, dict[str, list[dict[str, float | None]]]] = {}  # group label -> row label -> its runs
    for group in args.groups:
        label, sep, runs = group.rpartition("=")  # a label may hold "=" (an override), run paths do not
        if not sep or not label or not runs:
            raise SystemExit(f"error: {group!r}: expected LABEL=RUN[,RUN...]")
        if counts is None:
            tables[label] = {label: [read_run(Path(r), args.metrics, args.stage) for r in runs.split(",")]}
            continue
        splits = [read_split(Path(r), args.answers, counts) for r in runs.split(",")]
        tables[label] = {f"{label}, {k} shape{'s' if k != '1' else ''}": [s[k] for s in splits] for k in ("1", "2-3")}
    all_runs = list(dict.fromkeys(Path(r) for group in args.groups for r in group.rpartition("=")[2].split(",")))
    for note in (environments_note(all_runs), towers_note(all_runs)):
        if note is not None:
            print(note, file=sys.stderr)
    if args.against is not None and args.against not in tables:
        raise SystemExit(f"error: --against {args.against!r}: not one of the groups' labels {sorted(tables)}")
    header = ["setting", "runs", *TYPES, "all", "CIDEr-D", "text loss", "step s"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for label, rows in tables.items():
        against = args.against is not None and label != args.against
        bases = list(tables[args.against].values()) if against else [None] * len(rows)  # its rows in the same order
        for (name, runs), base in zip(rows.items(), bases, strict=True):
            print_row(name, runs)
            if base is not None:
                print_p_row(f"p against {args.against!r}", runs, base)


COLUMNS = (*TYPES, "all", "cider", "text_loss", "step_s")


def print_row(label: str, rows: list[dict[str, float | None]]) -> None:
    cells = [cell([r[k] for r in rows], 3 if k in (*TYPES, "all") else 2) for k in COLUMNS]
    print(f"| {label} | {len(rows)} | " + " | ".join(cells) + " |")


def print_p_row(label: str, rows: list[dict[str, float | None]], base: list[dict[str, float | None]]) -> None:
    """The permutation p of each column between two groups ("—" where either has under two scored runs)."""
    cells = []
    for k in COLUMNS:
        a, b = [r[k] for r in rows if r[k] is not None], [r[k] for r in base if r[k] is not None]
        p = permutation_p(a, b) if len(a) >= 2 and len(b) >= 2 else None
        cells.append("—" if p is None else f"{p:.3f}" if p >= 0.001 else f"{p:.0e}")
    print(f"| {label} | | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
