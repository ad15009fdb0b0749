"""Pre-flight for a GPU run, on the CPU: one training step of each stage of a config on the ``meta`` device.

A GPU call is scarce; a step that mixes devices (a tensor brought back to the host and combined with one left on the
device) fails only there, and reads of the device on the host (``.item()``, ``.tolist()``, ``.cpu()``) slow it there
without failing. On the ``meta`` device tensors have shapes and no data, so both show here: the trainer builds the
model and the data as ``tools/train.py`` would, each stage's trainable parts are set, the stage's first batch with
clips (the first batch when the stage has none) is moved as the trainer moves it, and its forward and backward run
under :class:`tests.models.device_reads.DeviceReads`, which counts the reads (and hands back zeros so the step goes
on) and the blocking copies of host data onto the device (each a stream synchronisation on CUDA; the batch's own
move is non-blocking, as the trainer's). A data-dependent shape (``nonzero``) stops the stage with
NotImplementedError. Exit status 1 when a stage fails.

    python benchmarks/meta_step.py --config runs/smol_leads_pf/train_config.yaml          # a run's own config
    python benchmarks/meta_step.py --config configs/llava_tiny_8f_shapes.yaml data.batch_size=4

The clips must exist (or the config's synthetic sets are generated, as by ``tools/train.py``); the model's weights
are loaded once, on the CPU, before the move.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.models.device_reads import META, DeviceReads  # noqa: E402


def first_batch(trainer, stage) -> dict:
    """The stage's first batch that has clips (or its first batch, when none in a few has)."""
    batches = trainer._batches(stage)
    batch = next(batches)
    for _ in range(16):
        if batch.get("video") is not None:
            break
        batch = next(batches)
    batches.close()
    for key in ("drawn_per_source", "replaced_per_source"):  # the trainer's bookkeeping, not model input
        batch.pop(key, None)
    return batch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="a training config (YAML)")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE overrides, as tools/train.py takes them")
    args = parser.parse_args()

    from vidvlm.errors import VidVLMError
    from vidvlm.train.config import load_train_config
    from vidvlm.train.trainer import Trainer

    with tempfile.TemporaryDirectory(prefix="vidvlm-meta-step-") as out:  # the run directory: nothing is kept
        try:
            cfg = load_train_config(args.config, [*args.overrides, f"output_dir={out}", "data.num_workers=0"])
            trainer = Trainer(cfg)
        except VidVLMError as e:  # a bad config or data: one line, as tools/train.py says it
            print(f"error: {e}", file=sys.stderr)
            return 2
        return run_stages(cfg, trainer)


def run_stages(cfg, trainer) -> int:
    """One step of each stage on ``meta``; prints a line per stage; 1 when a stage failed, else 0."""
    from vidvlm.devices import batch_to_device
    from vidvlm.train.optim import apply_stage_trainable

    model = trainer.model
    failed = 0
    for i, stage in enumerate(cfg.stages):
        apply_stage_trainable(model, stage, cfg.optim.groups)
        batch = first_batch(trainer, stage)
        if i == 0:
            model.to(META)  # after the first batch: the front-end's transform ran in the data pipeline already
        model.train()
        random.seed(0)
        counter = DeviceReads()
        kind = "text only" if batch.get("video") is None else f"video {tuple(batch['video'].shape)}"
        try:
            with counter:
                result = model(batch_to_device(batch, META))
                sum(v for k, v in result.items() if k.endswith("_loss")).backward()
        except Exception as e:  # noqa: BLE001 (reported per stage)
            failed += 1
            where = [f"{Path(f.filename).name}:{f.lineno}" for f in traceback.extract_tb(e.__traceback__)]
            print(f"stage {stage.name!r} ({kind}): FAILED {type(e).__name__}: {str(e)[:160]} at {where[-3:]}")
            continue
        reads = ", ".join(f"{what} {list(shape)}" for what, shape in counter.reads) or "none"
        at = Counter(where for _, _, where in counter.copies)  # one line per sample adds up: grouped by line
        copies = ", ".join(f"{n} at {where}" for where, n in at.items()) or "none"
        print(
            f"stage {stage.name!r} ({kind}): ok; {len(counter.reads)} reads of the device: {reads}; "
            f"{len(counter.copies)} blocking copies to it: {copies}"
        )
        model.zero_grad(set_to_none=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
