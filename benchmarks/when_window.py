"""Does a LLaVA model read the frame times written into its prompt? Same frames, only the written times change.

    python benchmarks/when_window.py times=runs/pf2x_qa12k_times_s0c notimes=runs/pf2x_qa12k_notimes_s0c \
        --manifest data/shapes_llava8s/test/manifest.jsonl --first 4 [--out when_window.json]

In the recipe's data a frame's place in the sequence says most of its time: evaluation samples every clip at the
same 8 of 16 frames (0.5, 1.5, ..., 7.5 s), and training draws one of the two frames of each 1-s segment (i or
i + 0.5 s), so written times (``model.frame_times``) add at most half a second to what the order says. This script
asks only the "when" questions of held-out clips, in ways that set the two apart:

- ``grid``: the recipe's uniform sampler, as in ``tools/eval.py``;
- ``jitter``: the training draw (one frame at random in each segment, seeded by the clip's path, so every run sees
  the same frames), real times written: inside what training showed;
- ``jitter, mirrored times``: the same frames, each written with the time of the other frame of its segment (0.5 s
  off, earlier or later); only for a model with ``frame_times``;
- ``window``: ``T`` consecutive frames from frame ``--first`` (at 2 fps: 2.0, 2.5, ..., 5.5 s, the range every event
  of the generator falls in), real times written: outside what training showed;
- ``window, grid times``: the same frames with the grid's times written instead (what training showed at those
  places in the sequence); only for a model with ``frame_times``.

Jitter: a model that reads the times moves its answer by the written shift of the frame where the event shows (the
first frame at or after the event), ``+-0.5 s``; one that reads the order does not. The table's "follows" is the
least-squares slope of (answer with mirrored times - answer with real times) on that shift: 1 for a time reader,
0 for an order reader.

Window: an order reader answers the window as if it were the grid: an event at true time ``t`` is answered near
``t'`` = the grid time of the window position showing ``t`` (for the defaults, ``t' = 0.5 + 2 (t - 2.0)``). A time
reader answers near ``t`` and changes its answers when the written times change. Per run and way: the share of
answers within 0.5 s of ``t`` (``tools/eval.py``'s rule), on all questions and on those where ``t`` and ``t'`` are at
least 1 s apart (where the two readings disagree); there, the mean signed error (answer - ``t``) on early events
(``t' < t``: an order reader answers too early) and on late ones (too late); the least-squares slope of the answer
on ``t`` (1 for a time reader, 2 for an order reader, less where answers stay in the range training taught); and,
between the two ways of the same frames, the share of answers that changed. The window's ``t'`` is known only to
about half a second (where in the window the change first shows), so read the signs and the slope, and compare with
a model that has no times (an order reader by construction).
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from pathlib import Path

import numpy as np
import torch

from vidvlm.data.sampling import UniformSampler
from vidvlm.eval.qa import WHEN_TOLERANCE_S, parse_seconds


class ConsecutiveSampler:
    """``count`` consecutive frames from frame ``first`` (the window of the module docstring)."""

    def __init__(self, first: int, count: int) -> None:
        self.first, self.count = first, count

    def __call__(self, metadata, rng=None) -> np.ndarray:
        if metadata.num_frames < self.first + self.count:
            need = self.first + self.count
            raise ValueError(f"{metadata.path}: {metadata.num_frames} frames, the window needs {need}")
        return np.arange(self.first, self.first + self.count, dtype=np.int64)


class JitterSampler:
    """The uniform sampler's training draw (one frame at random in each of ``count`` equal segments), seeded by the
    clip's path; ``mirror``: in each segment the frame mirrored about its centre (the other of two)."""

    def __init__(self, count: int, seed: int = 0, mirror: bool = False) -> None:
        self.count, self.seed, self.mirror = count, seed, mirror

    def __call__(self, metadata, rng=None) -> np.ndarray:
        if metadata.num_frames < self.count:
            raise ValueError(f"{metadata.path}: {metadata.num_frames} frames, jitter needs {self.count}")
        draw = np.random.default_rng([self.seed, zlib.crc32(str(metadata.path).encode())])
        pick = UniformSampler(self.count)(metadata, draw)
        if not self.mirror:
            return pick
        i = np.arange(self.count, dtype=np.int64)
        lo, hi = i * metadata.num_frames // self.count, (i + 1) * metadata.num_frames // self.count  # its segments
        return lo + hi - 1 - pick


def ask(model, dataset, batch_size: int, written: torch.Tensor | None = None) -> list[dict]:
    """Every "when" question of the dataset's rows, answered greedily; ``written`` (``[T]``, or ``[rows, T]`` one per
    row of the dataset) replaces the real times in the prompt. Each answer keeps its clip's real frame times."""
    from torch.utils.data import DataLoader

    from vidvlm.data.collate import collate_video_text

    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_video_text)
    out = []
    for batch in loader:
        if batch["failed"]:
            raise SystemExit(f"error: {batch['failed'][0]['error']}")
        times = batch["timestamps"]
        if written is not None:
            times = written.expand_as(times) if written.dim() == 1 else written[batch["index"]]
        jobs = [(k, q) for k, i in enumerate(batch["index"].tolist())
                for q in dataset.rows[i].extra.get("qa", []) if q["type"] == "when"]  # fmt: skip
        for lo in range(0, len(jobs), batch_size):
            part = jobs[lo : lo + batch_size]
            pick, clip_of = torch.unique(torch.tensor([k for k, _ in part]), return_inverse=True)
            with torch.no_grad():
                said = model.generate(batch["video"][pick], batch["frame_mask"][pick], clip_of=clip_of,
                                      questions=[q["question"] for _, q in part], timestamps=times[pick])  # fmt: skip
            out += [{"question": q["question"], "value": float(q["value"]), "prediction": s,
                     "frame_times": batch["timestamps"][k].tolist(), "written": times[k].tolist()}
                    for (k, q), s in zip(part, said, strict=True)]  # fmt: skip
    return out


def summarise(rows: list[dict], order_map) -> dict[str, float]:
    """Share within 0.5 s of the true time (all, and where the two readings differ by >= 1 s), the mean signed error
    of the answers there on early (answer - t, order reader < 0) and late events (> 0), and the slope on ``t``."""
    true = np.array([r["value"] for r in rows])
    said = np.array([np.nan if (s := parse_seconds(r["prediction"])) is None else s for r in rows])
    right = np.abs(said - true) <= WHEN_TOLERANCE_S + 1e-9  # NaN (no number) is never right
    out = {"n": len(rows), "within_0.5": float(right.mean())}
    if order_map is not None:
        shift = order_map(true) - true
        apart = np.abs(shift) >= 1.0
        out["n_apart"], out["apart_within_0.5"] = int(apart.sum()), float(right[apart].mean())
        for name, part in (("early", apart & (shift < 0)), ("late", apart & (shift > 0))):
            err = (said - true)[part]
            out[f"error_{name}"] = float(np.nanmean(err)) if np.isfinite(err).any() else float("nan")
    ok = ~np.isnan(said)
    fit = ok.sum() > 2 and np.ptp(true[ok]) > 0
    out["slope"] = float(np.polyfit(true[ok], said[ok], 1)[0]) if fit else float("nan")
    return out


def follows(real: list[dict], moved: list[dict]) -> float:
    """Least-squares slope (through 0) of how far each answer moved between ``real`` and ``moved`` (the same
    questions on the same frames, other times written) on how far the written time moved at the frame where the event
    shows (the first frame at or after it, else the last): 1 when answers follow the written times, 0 when not."""
    moved_by, shift = [], []
    for a, b in zip(real, moved, strict=True):
        x, y = parse_seconds(a["prediction"]), parse_seconds(b["prediction"])
        if x is None or y is None:
            continue
        times = np.asarray(a["frame_times"])
        p = int(np.searchsorted(times, a["value"] - 1e-6)) if a["value"] <= times[-1] else len(times) - 1
        moved_by.append(y - x)
        shift.append(b["written"][p] - a["written"][p])
    x, y = np.asarray(shift), np.asarray(moved_by)
    return float((x * y).sum() / (x * x).sum()) if len(x) and (x * x).sum() > 0 else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="LABEL=RUN (a run directory with final/, or a checkpoint)")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--first", type=int, default=4, help="first frame of the window")
    parser.add_argument("--seed", type=int, default=0, help="seed of the jitter draw")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", default=None, help="also write every answer and the summary here (JSON)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    from vidvlm.data.datasets import VideoTextDataset
    from vidvlm.data.sampling import SamplerConfig, build_sampler
    from vidvlm.models.registry import load

    nan = float("nan")
    report: dict[str, dict] = {}
    print(
        "| run | way | when ±0.5 s | where the readings differ by ≥ 1 s | error, early events | error, late events "
        "| slope | answers changed | follows |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for spec in args.runs:
        label, _, run = spec.partition("=")
        directory = Path(run) / "final" if (Path(run) / "final").is_dir() else Path(run)  # a run, or a checkpoint
        model = load(directory).eval()
        t = model.num_frames
        grid = build_sampler(SamplerConfig(name="uniform", num_frames=t))
        ways = {name: VideoTextDataset(args.manifest, sampler, model.transform, train=False)
                for name, sampler in (("grid", grid), ("jitter", JitterSampler(t, args.seed)),
                                      ("mirror", JitterSampler(t, args.seed, mirror=True)),
                                      ("window", ConsecutiveSampler(args.first, t)))}  # fmt: skip
        first_clip = ways["grid"][0]
        grid_times = first_clip["timestamps"].to(torch.float32)
        window_times = ways["window"][0]["timestamps"].to(torch.float32)
        # the order reader: window position p shows time window_times[p]; it answers grid_times[p] (linear in t)
        slope = float((grid_times[-1] - grid_times[0]) / (window_times[-1] - window_times[0]))
        order_map = lambda v, s=slope, g0=float(grid_times[0]), w0=float(window_times[0]): g0 + s * (v - w0)  # noqa: E731
        answers = {way: ask(model, ways[way], args.batch_size) for way in ("grid", "jitter", "window")}
        if model.config.frame_times:
            mirrored = torch.stack([ways["mirror"][i]["timestamps"] for i in range(len(ways["mirror"]))])
            answers["jitter, mirrored times"] = ask(model, ways["jitter"], args.batch_size, written=mirrored)
            answers["window, grid times"] = ask(model, ways["window"], args.batch_size, written=grid_times)
        same_frames = {"jitter, mirrored times": "jitter", "window, grid times": "window"}
        report[label] = {"run": run, "frame_times": bool(model.config.frame_times), "ways": {}}
        for way, rows in answers.items():
            s = summarise(rows, order_map if way.startswith("window") else None)
            if way in same_frames:
                pairs = zip(rows, answers[same_frames[way]], strict=True)
                s["changed"] = float(np.mean([a["prediction"] != b["prediction"] for a, b in pairs]))
                s["follows"] = follows(answers[same_frames[way]], rows)
            report[label]["ways"][way] = {"summary": s, "answers": rows}
            cells = [
                f"{s['within_0.5']:.3f}",
                f"{s.get('apart_within_0.5', nan):.3f} (n={s.get('n_apart', 0)})",
                f"{s.get('error_early', nan):+.2f} s",
                f"{s.get('error_late', nan):+.2f} s",
                f"{s['slope']:.2f}",
                f"{s['changed']:.3f}" if "changed" in s else "",
                f"{s['follows']:.2f}" if "follows" in s else "",
            ]
            print(f"| {label} | {way} | " + " | ".join(cells) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
