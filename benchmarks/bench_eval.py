"""Time the trainer's periodic evaluation (``Trainer.evaluate``: validation loss and, for embedding models, retrieval)
on a recipe's validation set, as a training run pays it every ``eval_every`` steps.

Builds the trainer from a config (its data are generated on first use) and calls ``evaluate()`` ``--repeats`` times
after one untimed call; prints the median wall time and the metrics (which must not change between code versions).
To compare two versions, run the same command with ``PYTHONPATH=<a checkout>`` alternately:

    OMP_NUM_THREADS=1 python benchmarks/bench_eval.py --config configs/contrastive_tiny_8f_shapes.yaml \
        [--repeats 5] [key=value overrides, e.g. data.num_workers=1 eval_batches=0]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    import tempfile

    import vidvlm
    from vidvlm.train.config import load_train_config
    from vidvlm.train.trainer import Trainer

    with tempfile.TemporaryDirectory() as out:
        cfg = load_train_config(args.config, [*args.overrides, f"output_dir={out}", "trackers=[]"])
        trainer = Trainer(cfg)
        metrics = trainer.evaluate()  # untimed: first use (imports, index of every file)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            again = trainer.evaluate()
            times.append(time.perf_counter() - start)
            assert again == metrics, "evaluation is not deterministic"
    print(f"vidvlm at {vidvlm.__file__}")
    each = ", ".join(f"{t:.2f}" for t in times)
    print(f"evaluate(): median {statistics.median(times):.2f} s over {args.repeats} ({each})")
    print(json.dumps({k: round(v, 4) for k, v in metrics.items()}))


if __name__ == "__main__":
    main()
