"""Batches per second the trainer's loader delivers over several epochs: one loader per stage vs one per epoch.

Both sides read the same datasets, built from a training config as ``tools/train.py`` builds them (decoding,
sampling, augmentation, tokenisation in ``--workers`` DataLoader workers, the trainer's collate), and the same batches
(``MixtureBatchSampler``, the same seed and epochs); nothing trains:

- vidvlm: ``Trainer._batches``, the trainer's own loop: one DataLoader iterator for the stage, each index carrying
  its epoch (``EpochBatches`` / ``EpochKeyed``), so the workers start once, keep the frame index of every file they
  opened in an earlier epoch and prefetch across epoch boundaries;
- per-epoch loader: the usual PyTorch loop (and the trainer's before this change): ``set_epoch`` on the dataset, then
  a new DataLoader (new workers, empty index caches) for every epoch.

Each (side, round) runs in a fresh subprocess (cold caches on both sides); sides alternate round by round. Reported:
the wall time of ``--epochs`` whole epochs from creating the loader to the last batch (worker start-up included), and
its median per batch. Machine load is printed with the results: compare sides within one run.

    OMP_NUM_THREADS=1 python benchmarks/bench_train_loader.py [--config configs/contrastive_tiny_8f_shapes.yaml] \
        [--workers 1] [--epochs 3] [--rounds 3] [key.sub=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

SIDES = ("vidvlm (one loader per stage)", "per-epoch loader")


def measure(config: str, overrides: list[str], side: str, workers: int, epochs: int) -> dict:
    """Runs in the subprocess: per-batch wall times of ``epochs`` epochs of the config's first stage."""
    from torch.utils.data import DataLoader

    from vidvlm.train.config import load_train_config
    from vidvlm.train.data import MixtureBatchSampler, mix_seed, set_epoch
    from vidvlm.train.trainer import Trainer

    with tempfile.TemporaryDirectory() as out:
        cfg = load_train_config(config, [*overrides, f"data.num_workers={workers}", f"output_dir={out}/run"])
        trainer = Trainer(cfg)
        stage = cfg.stages[0]
        weights = trainer._weights(stage)

        def per_epoch():
            for epoch in range(epochs):
                sampler = MixtureBatchSampler(
                    trainer.sizes, weights, cfg.data.batch_size, seed=mix_seed(cfg.seed, 0), epoch=epoch,
                    kinds=trainer.kinds,
                )  # fmt: skip
                set_epoch(trainer.train_data, epoch)
                loader = DataLoader(trainer.train_data, batch_sampler=sampler, collate_fn=trainer.collate,
                                    num_workers=workers)  # fmt: skip
                yield from loader

        batches = trainer._batches(stage) if side == SIDES[0] else per_epoch()
        per_epoch_batches = len(
            MixtureBatchSampler(trainer.sizes, weights, cfg.data.batch_size, seed=0, epoch=0, kinds=trainer.kinds)
        )
        times, start = [], time.perf_counter()
        last = start
        for _ in range(epochs * per_epoch_batches):
            next(batches)
            now = time.perf_counter()
            times.append(now - last)
            last = now
        total = last - start
        if hasattr(batches, "close"):
            batches.close()
    return {"total_s": total, "batches": len(times), "median_batch_s": statistics.median(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/contrastive_tiny_8f_shapes.yaml")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="config overrides, key.sub=value")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.config, args.overrides, args.child, args.workers, args.epochs)))
        return
    results: dict[str, list[dict]] = {s: [] for s in SIDES}
    for r in range(args.rounds):
        for side in SIDES[r % 2 :] + SIDES[: r % 2]:
            cmd = [sys.executable, __file__, "--config", args.config, "--workers", str(args.workers),
                   "--epochs", str(args.epochs), "--child", side, *args.overrides]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            results[side].append(row)
            print(f"round {r} {side:32s} {row['total_s']:6.2f} s for {row['batches']} batches "
                  f"(median {row['median_batch_s'] * 1e3:.0f} ms)", flush=True)  # fmt: skip
    base = statistics.median(x["total_s"] for x in results[SIDES[1]])
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n{os.cpu_count()} cores, load average {load} at the end; {args.config}, {args.workers} worker(s), "
          f"{args.epochs} epochs {' '.join(args.overrides)}\n")  # fmt: skip
    print("| loader | total s (median of rounds) | median batch ms | speed vs per-epoch loader |\n|---|---|---|---|")
    for side in SIDES:
        total = statistics.median(x["total_s"] for x in results[side])
        batch = statistics.median(x["median_batch_s"] for x in results[side]) * 1e3
        print(f"| {side} | {total:.2f} | {batch:.0f} | {base / total:.2f}x |")


if __name__ == "__main__":
    main()
