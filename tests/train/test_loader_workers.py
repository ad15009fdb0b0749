"""The training loader: one iterator per stage (workers start once); a sample is a function of (seed, epoch, index)."""

from __future__ import annotations

import os

import torch
from train_tiny import TinyDataset, TinyModel, collate, make_cfg

from vidvlm.train.trainer import Trainer


class PidDataset(TinyDataset):
    """TinyDataset whose samples also say which process made them and the epoch it had."""

    def __getitem__(self, i: int) -> dict:
        return {**super().__getitem__(i), "pid": os.getpid(), "epoch": self.epoch}


def _collate(samples: list[dict]) -> dict:
    batch = collate(samples)
    batch.update(pid=[s["pid"] for s in samples], epoch=[s["epoch"] for s in samples])
    return batch


def _stage_batches(tmp_path, workers: int, count: int, batch: int = 0) -> tuple[Trainer, list[dict]]:
    cfg = make_cfg(tmp_path / f"w{workers}", [f"data.num_workers={workers}"])
    trainer = Trainer(cfg, model=TinyModel(), datasets={"a": PidDataset(24)}, collate_fn=_collate)
    trainer.state.batch = batch
    batches = trainer._batches(cfg.stages[0])
    got = [next(batches) for _ in range(count)]
    batches.close()
    return trainer, got


def test_workers_persist_across_epochs_and_see_each_epoch(tmp_path):
    # 24 samples / batch 4 = 6 batches per epoch: 15 batches cross two epoch boundaries.
    _, inline = _stage_batches(tmp_path, 0, 15)
    _, pooled = _stage_batches(tmp_path, 2, 15)
    assert [b["epoch"] for b in pooled] == [[e] * 4 for e in [0] * 6 + [1] * 6 + [2] * 3]
    for a, b in zip(inline, pooled, strict=True):
        assert torch.equal(a["index"], b["index"])
        torch.testing.assert_close(a["video"], b["video"], rtol=0, atol=0)  # same epoch noise in the workers
    pids = {p for b in pooled for p in b["pid"]}
    assert os.getpid() not in pids and len(pids) == 2  # the same two workers served all three epochs


def test_resumed_position_is_kept_by_the_persistent_loader(tmp_path):
    _, full = _stage_batches(tmp_path, 0, 10)
    _, resumed = _stage_batches(tmp_path / "r", 2, 6, batch=4)  # resume at batch 4 of epoch 0
    for a, b in zip(full[4:], resumed, strict=True):
        assert torch.equal(a["index"], b["index"])
        torch.testing.assert_close(a["video"], b["video"], rtol=0, atol=0)


def test_a_position_saved_at_the_end_of_an_epoch_resumes_at_the_next(tmp_path):
    # earlier versions saved (epoch 0, batch 6) after the epoch's last batch; that is epoch 1, batch 0
    _, full = _stage_batches(tmp_path, 0, 9)
    trainer, resumed = _stage_batches(tmp_path / "r", 2, 3, batch=6)
    assert [b["epoch"] for b in resumed] == [[1] * 4] * 3
    for a, b in zip(full[6:], resumed, strict=True):
        assert torch.equal(a["index"], b["index"])
        torch.testing.assert_close(a["video"], b["video"], rtol=0, atol=0)
    assert (trainer.state.epoch, trainer.state.batch) == (1, 3)
