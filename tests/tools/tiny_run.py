"""Overrides that shrink a shapes recipe to a few steps on a few generated clips (for end-to-end tests)."""

from __future__ import annotations

from pathlib import Path


def tiny_run_overrides(out: Path, data: Path) -> list[str]:
    """``key=value`` overrides: output in ``out``, 16 train / 8 val clips of 4 frames generated under ``data``,
    4 steps, checkpoints every 2."""
    return [
        f"output_dir={out}",
        f"data.synthetic.out_dir={data}",
        f"data.datasets.shapes.manifest={data}/train/manifest.jsonl",
        f"data.val.manifest={data}/val/manifest.jsonl",
        "data.synthetic.sets.train={num: 16, seed: 0, split: train, frames: 4, size: 32}",
        "data.synthetic.sets.val={num: 8, seed: 0, split: val, frames: 4, size: 32}",
        "data.sampler.num_frames=4",
        "model.front_end.num_frames=4",
        "model.front_end.tower.vision.num_tubelets=1",
        "data.batch_size=4",
        "stages.0.steps=4",
        "schedule.warmup_steps=1",
        "checkpoint_every=2",
        "eval_every=0",
        "log_every=1",
        "trackers=[]",
    ]
