"""A tiny real model and dataset for engine tests (no decoding), also runnable under torchrun.

``python tests/train/train_tiny.py OUTPUT_DIR [key=value ...] [--resume=DIR]`` trains the tiny setup; the two-process
test launches it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import save_file
from torch import nn

from vidvlm.config import apply_overrides, from_dict
from vidvlm.train.config import TrainConfig


class TinyModel(nn.Module):
    """Linear classifier with dropout and a norm, ``forward(batch) -> {"ce_loss", "aux_loss"}``."""

    def __init__(self, dim: int = 12, classes: int = 4, nan_at_step_index: int = -1) -> None:
        super().__init__()
        self.encoder = nn.Linear(dim, 16)
        self.norm = nn.LayerNorm(16)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(16, classes)
        self.nan_index = nan_at_step_index  # a sample index that makes the loss NaN (non-finite tests)
        self.grad_ckpt = False

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.grad_ckpt = enabled

    def forward(self, batch: dict) -> dict:
        x = batch["video"].flatten(1)
        logits = self.head(self.drop(self.norm(self.encoder(x))))
        loss = nn.functional.cross_entropy(logits, batch["label"])
        if self.nan_index >= 0 and bool((batch["index"] == self.nan_index).any()):
            loss = loss * float("nan")
        return {"ce_loss": loss, "aux_loss": 0.01 * logits.pow(2).mean(), "logits": logits}

    def save_pretrained(self, directory) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(directory / "model.safetensors"))
        (directory / "config.yaml").write_text(yaml.safe_dump({"family": "tiny"}))


class TinyDataset(torch.utils.data.Dataset):
    """``n`` samples; sample ``i`` of epoch ``e`` is a pure function of (seed, e, i) (noise = augmentation)."""

    def __init__(self, n: int = 32, seed: int = 0, frames: int = 1, offset: int = 0) -> None:
        self.n, self.seed, self.frames, self.epoch, self.offset = n, seed, frames, 0, offset
        rng = np.random.default_rng(1234 + offset)
        self.base = torch.from_numpy(rng.standard_normal((n, 12)).astype(np.float32))
        self.labels = torch.from_numpy(rng.integers(0, 4, n))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 10_007 + i)
        x = self.base[i] + 0.1 * torch.randn(12, generator=g)
        video = x.view(1, 3, 2, 2).expand(self.frames, 3, 2, 2).clone()
        return {"video": video, "label": int(self.labels[i]), "index": i + self.offset, "text": f"c{i}"}


def collate(samples: list[dict]) -> dict:
    return {
        "video": torch.stack([s["video"] for s in samples]),
        "label": torch.tensor([s["label"] for s in samples]),
        "index": torch.tensor([s["index"] for s in samples]),
        "text": [s["text"] for s in samples],
    }


def make_cfg(output_dir, overrides: list[str] | None = None, **top) -> TrainConfig:
    data = {
        "output_dir": str(output_dir),
        "model": {"family": "tiny"},
        "data": {"datasets": {"a": {"manifest": "unused.jsonl"}}, "batch_size": 4},
        "optim": {"lr": 0.05, "weight_decay": 0.1, "groups": [{"prefix": "head", "lr_mult": 2.0}]},
        "schedule": {"warmup_steps": 2, "min_lr_ratio": 0.1},
        "stages": [{"name": "all", "steps": 8}],
        "log_every": 1,
        **top,
    }
    return from_dict(TrainConfig, apply_overrides(data, overrides or []), where="test")


def main() -> None:
    from vidvlm.train.trainer import Trainer

    out = sys.argv[1]
    resume = next((a.split("=", 1)[1] for a in sys.argv[2:] if a.startswith("--resume=")), None)
    cfg = make_cfg(out, [a for a in sys.argv[2:] if not a.startswith("--resume=")])
    torch.manual_seed(0)
    model = TinyModel()
    trainer = Trainer(cfg, model=model, datasets={"a": TinyDataset(32)}, collate_fn=collate)
    rank = trainer.acc.process_index
    seen: list[int] = []
    orig = trainer.collate.collate_fn
    trainer.collate.collate_fn = lambda s: (seen.extend(int(x["index"]) for x in s), orig(s))[1]
    trainer.train(resume=resume)
    params = {k: v.tolist() for k, v in trainer.acc.unwrap_model(trainer.model).state_dict().items()}
    record = {"rank": rank, "world": trainer.acc.num_processes, "seen": seen, "params": params}
    record["drawn"] = trainer.state.drawn_by_dataset
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
