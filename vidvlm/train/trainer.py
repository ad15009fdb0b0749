"""The training loop on accelerate: stages, mixtures, accumulation, non-finite handling, exact resume.

Exact resume rests on three things: the data order of an epoch is a function of ``(seed, stage, epoch)``
(:class:`MixtureBatchSampler`) and the dataset is deterministic given ``(seed, epoch, index)`` (``set_epoch``);
the already-consumed batches of the resumed epoch are skipped at the sampler (nothing is decoded); stochastic ops
(dropout) are reseeded from ``(seed, step, micro-batch, rank)`` before every forward, so they do not depend on how
many random numbers were drawn before the interruption.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler

from vidvlm.errors import ConfigError
from vidvlm.train import checkpoint as ckpt
from vidvlm.train.config import StageConfig, TrainConfig, save_train_config
from vidvlm.train.optim import apply_stage_trainable, build_optimizer, build_scheduler


class NonFiniteLossError(FloatingPointError):
    """Training stopped on a non-finite loss or gradient (``nonfinite: stop``); a checkpoint was written first."""


@dataclass
class TrainState:
    """Where a run is; saved in ``trainer_state.json``. ``epoch``/``batch`` count within the current stage."""

    step: int = 0
    stage: int = 0
    stage_step: int = 0
    epoch: int = 0
    batch: int = 0
    skipped_steps: int = 0
    replaced_samples: int = 0


def _mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence hashes them well)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


class MixtureBatchSampler(Sampler[list[int]]):
    """Per-rank batches of indices into a concatenation of datasets, a pure function of ``(seed, epoch)``.

    Each global batch (``batch_size * world_size`` samples) draws every slot's dataset by ``weights`` and takes that
    dataset's next index from its per-epoch permutation (cycling). Rank ``r`` gets slots ``[r*B, (r+1)*B)``.
    An epoch has ``sum(sizes of weighted datasets) // global batch`` batches; ``start`` skips the first ones.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        weights: Sequence[float],
        batch_size: int,
        *,
        seed: int,
        epoch: int,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
    ) -> None:
        self.sizes, self.batch_size, self.rank, self.world = list(sizes), batch_size, rank, world_size
        total = sum(s for s, w in zip(sizes, weights, strict=True) if w > 0)
        self.num_batches = total // (batch_size * world_size)
        if self.num_batches == 0:
            raise ConfigError(
                f"data: {total} samples cannot fill one global batch of {batch_size} x {world_size} processes"
            )
        self.start = start
        rng = np.random.default_rng(_mix_seed(seed, epoch))
        w = np.asarray(weights, dtype=np.float64)
        n = self.num_batches * batch_size * world_size
        choice = rng.choice(len(sizes), size=n, p=w / w.sum())
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self.indices = np.empty(n, dtype=np.int64)
        for d, size in enumerate(sizes):
            slots = np.flatnonzero(choice == d)
            if len(slots) == 0:
                continue
            reps = -(-len(slots) // size)
            order = np.concatenate([rng.permutation(size) for _ in range(reps)])[: len(slots)]
            self.indices[slots] = order + offsets[d]

    def __len__(self) -> int:
        return self.num_batches - self.start

    def __iter__(self) -> Iterator[list[int]]:
        g = self.batch_size * self.world
        for b in range(self.start, self.num_batches):
            lo = b * g + self.rank * self.batch_size
            yield self.indices[lo : lo + self.batch_size].tolist()


class CountingCollate:
    """Wraps a collate function to count substituted (corrupt) samples before they are collated.

    The count travels with the batch as ``num_replaced`` so it is right with worker processes too.
    """

    def __init__(self, collate_fn: Callable[[list[dict]], dict]) -> None:
        self.collate_fn = collate_fn

    def __call__(self, samples: list[dict]) -> dict:
        replaced = sum(1 for s in samples if s.get("replaced_from") not in (None, -1))
        batch = self.collate_fn(samples)
        batch["num_replaced"] = replaced
        return batch


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _set_epoch(dataset: Dataset, epoch: int) -> None:
    for d in dataset.datasets if isinstance(dataset, ConcatDataset) else [dataset]:
        if hasattr(d, "set_epoch"):
            d.set_epoch(epoch)


class Trainer:
    """Trains any family whose ``forward(batch)`` returns ``*_loss`` tensors (summed into the objective).

    Args:
        cfg: the run config.
        model: the model (default: ``vidvlm.models.registry.build_model(cfg.model)``).
        datasets: name -> training dataset (default: built from ``cfg.data``).
        val_dataset: validation dataset (default: built from ``cfg.data.val``).
        collate_fn: batch collation (default: ``vidvlm.data.collate.collate_video_text``).
        accelerator: an ``accelerate.Accelerator`` (default: built from ``cfg``).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        model: nn.Module | None = None,
        datasets: dict[str, Dataset] | None = None,
        val_dataset: Dataset | None = None,
        collate_fn: Callable[[list[dict]], dict] | None = None,
        accelerator: Any = None,
    ) -> None:
        from accelerate import Accelerator  # late: keeps `import vidvlm.train` light

        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        trackers = [t for t in cfg.trackers if t != "tensorboard" or _has_tensorboard()]
        self.acc = accelerator or Accelerator(
            mixed_precision=cfg.mixed_precision,
            gradient_accumulation_steps=cfg.grad_accum,
            log_with=trackers or None,
            project_dir=str(self.out),
        )
        if datasets is None or (val_dataset is None and cfg.data.val is not None):
            from vidvlm.train.data import build_datasets  # late: the data layer decodes video

            built, built_val = build_datasets(cfg, self.acc.is_main_process, self.acc.wait_for_everyone)
            datasets = datasets if datasets is not None else built
            val_dataset = val_dataset if val_dataset is not None else built_val
        if model is None:
            from accelerate.utils import set_seed

            from vidvlm.models.registry import build_model

            set_seed(cfg.seed)  # the initial weights are a function of the config's seed (same on every rank)
            model = build_model(cfg.model)
            if hasattr(model, "prepare_for_training"):
                model.prepare_for_training(_captions(datasets.values()))
        if collate_fn is None:
            from vidvlm.data.collate import collate_video_text as collate_fn
        self.model = model
        self.names = list(datasets)
        self.train_data = ConcatDataset([datasets[n] for n in self.names])
        self.sizes = [len(datasets[n]) for n in self.names]
        self.val_data = val_dataset
        self.collate = CountingCollate(collate_fn)
        if cfg.grad_checkpointing:
            _enable_grad_checkpointing(model)
        self.compiled_blocks = 0  # transformer blocks under torch.compile (compiled on first use)
        if cfg.compile:
            from vidvlm.layers.transformer import compile_blocks

            self.compiled_blocks = compile_blocks(model)
        self.state = TrainState()
        self.history: list[dict] = []
        self._last_eval_step = -1

    # --- helpers ------------------------------------------------------------------------------------------------

    def _weights(self, stage: StageConfig) -> list[float]:
        mixture = stage.mixture if stage.mixture is not None else self.cfg.data.mixture
        return [float(mixture.get(n, 0.0)) if mixture else 1.0 for n in self.names]

    def _batches(self, stage: StageConfig) -> Iterator[dict]:
        """Training batches of this rank from the saved position on, advancing ``state.epoch``/``state.batch``."""
        weights = self._weights(stage)
        while True:
            sampler = MixtureBatchSampler(
                self.sizes,
                weights,
                self.cfg.data.batch_size,
                seed=_mix_seed(self.cfg.seed, self.state.stage),
                epoch=self.state.epoch,
                rank=self.acc.process_index,
                world_size=self.acc.num_processes,
                start=self.state.batch,
            )
            _set_epoch(self.train_data, self.state.epoch)
            loader = DataLoader(
                self.train_data,
                batch_sampler=sampler,
                collate_fn=self.collate,
                num_workers=self.cfg.data.num_workers,
                pin_memory=self.acc.device.type == "cuda",
            )
            for batch in loader:
                self.state.batch += 1
                yield batch
            self.state.epoch, self.state.batch = self.state.epoch + 1, 0

    def _any(self, flag: bool) -> bool:
        """True when ``flag`` is set on any rank (MAX all-reduce: every rank takes the same decision)."""
        t = torch.tensor([1.0 if flag else 0.0], device=self.acc.device)
        if self.acc.num_processes > 1:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item() > 0)

    def _mean(self, values: torch.Tensor) -> torch.Tensor:
        return self.acc.reduce(values.detach().to(self.acc.device), reduction="mean")

    def _log(self, metrics: dict[str, Any]) -> None:
        self.history.append(metrics)
        if self.acc.is_main_process:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
            numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            self.acc.log(numeric, step=metrics["step"])

    # --- checkpoints --------------------------------------------------------------------------------------------

    def save_checkpoint(self, optimizer: Any, scheduler: Any) -> Path:
        """Write ``checkpoint-{step}`` atomically (every rank calls this; rank files are written by each rank)."""
        acc, step = self.acc, self.state.step
        tmp = ckpt.tmp_dir_for(self.out, step)
        acc.wait_for_everyone()
        if acc.is_main_process:
            ckpt.begin(self.out, step)
            ckpt.save_model(acc.unwrap_model(self.model), tmp)
            save_train_config(self.cfg, tmp / "train_config.yaml")
            ckpt.save_optimizer(optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer, tmp)
        acc.wait_for_everyone()
        ckpt.save_rng(tmp, acc.process_index)
        acc.wait_for_everyone()
        final = self.out / ckpt.checkpoint_name(step)
        if acc.is_main_process:
            scaler = acc.scaler.state_dict() if acc.scaler is not None else None
            ckpt.write_json(
                tmp / ckpt.STATE_FILE,
                {
                    **asdict(self.state),
                    "scheduler": {"last_epoch": scheduler.last_epoch},
                    "scaler": scaler,
                    "world_size": acc.num_processes,
                    "seed": self.cfg.seed,
                },
            )
            final = ckpt.commit(tmp, step, self.cfg.keep_checkpoints)
        acc.wait_for_everyone()
        return final

    def _load_checkpoint(self, directory: Path, optimizer: Any, scheduler: Any) -> None:
        meta = ckpt.read_json(directory / ckpt.STATE_FILE)
        ckpt.load_optimizer(optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer, directory)
        scheduler.last_epoch = meta["scheduler"]["last_epoch"]
        scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
        if meta.get("scaler") and self.acc.scaler is not None:
            self.acc.scaler.load_state_dict(meta["scaler"])
        ckpt.load_rng(directory, self.acc.process_index)

    # --- the loop -----------------------------------------------------------------------------------------------

    def train(self, resume: str | Path | None = None) -> list[dict]:
        """Run every stage (from ``resume``'s position when given); returns the logged metrics of this call.

        Raises:
            NonFiniteLossError: with ``nonfinite: stop``, after writing a checkpoint.
            CheckpointError: ``resume`` is not a usable checkpoint.
        """
        from tqdm.auto import tqdm

        cfg, acc = self.cfg, self.acc
        resume_dir = None
        if resume is not None:
            resume_dir = ckpt.resolve_resume(str(resume), self.out)
            self.state = TrainState(
                **{
                    k: v
                    for k, v in ckpt.read_json(resume_dir / ckpt.STATE_FILE).items()
                    if k in TrainState.__dataclass_fields__
                }
            )
            ckpt.load_model_weights(self.model, resume_dir)
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            save_train_config(cfg, self.out / "train_config.yaml")
        acc.init_trackers("vidvlm", config={"output_dir": str(self.out), "seed": cfg.seed})
        bar = tqdm(total=cfg.total_steps, initial=self.state.step, disable=not acc.is_main_process, desc="train")
        try:
            for stage_idx in range(self.state.stage, len(cfg.stages)):
                if stage_idx != self.state.stage:
                    self.state.stage, self.state.stage_step, self.state.epoch, self.state.batch = stage_idx, 0, 0, 0
                self._run_stage(cfg.stages[stage_idx], resume_dir, bar)
                resume_dir = None
            self._save_final()
        finally:
            bar.close()
            acc.end_training()
        return self.history

    def _run_stage(self, stage: StageConfig, resume_dir: Path | None, bar: Any) -> None:
        cfg, acc = self.cfg, self.acc
        raw = acc.unwrap_model(self.model)
        apply_stage_trainable(raw, stage)
        optimizer = build_optimizer(raw, cfg.optim, stage)
        warmup = stage.warmup_steps if stage.warmup_steps is not None else cfg.schedule.warmup_steps
        scheduler = build_scheduler(optimizer, stage.steps, warmup, cfg.schedule.min_lr_ratio)
        # Re-wrapping per stage: DDP registers gradient hooks for the parameters trainable when it wraps. The previous
        # stage's optimizer is dropped from accelerate's list, or fp16 unscaling would visit it again.
        acc._optimizers.clear()
        acc._models.clear()
        self.model, optimizer = acc.prepare(raw, optimizer)
        if resume_dir is not None:
            self._load_checkpoint(resume_dir, optimizer, scheduler)
        batches = self._batches(stage)
        self.model.train()
        while self.state.stage_step < stage.steps:
            t0 = time.perf_counter()
            losses, parts, replaced, bad = [], {}, 0, False
            for micro in range(cfg.grad_accum):
                batch = next(batches)
                replaced += int(batch.pop("num_replaced", 0))
                batch = _to_device(batch, acc.device)
                seed = _mix_seed(cfg.seed, self.state.step, micro, acc.process_index)
                # dropout, caption choice etc. independent of the RNG history: exact resume
                torch.manual_seed(seed)
                random.seed(seed)
                np.random.seed(seed % 2**32)
                last = micro == cfg.grad_accum - 1
                with nullcontext() if last else acc.no_sync(self.model):
                    out = self.model(batch)
                    terms = {k: v for k, v in out.items() if k.endswith("_loss")}
                    if not terms:
                        raise ValueError(f"{type(raw).__name__}.forward returned no '*_loss' key: {sorted(out)}")
                    loss = sum(terms.values())
                    finite = bool(torch.isfinite(loss.detach()).item())
                    bad = bad or not finite
                    # Backward runs on every rank even for a bad loss (zeroed), so DDP's collectives stay matched.
                    acc.backward(loss if finite else loss * 0.0)
                losses.append(loss.detach().float())
                for k, v in terms.items():
                    parts.setdefault(k, []).append(v.detach().float())
            max_norm = cfg.max_grad_norm if cfg.max_grad_norm and cfg.max_grad_norm > 0 else float("inf")
            grad_norm = acc.clip_grad_norm_([p for p in raw.parameters() if p.requires_grad], max_norm)
            grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
            # fp16: the GradScaler already skips steps with inf/NaN gradients and lowers its scale.
            grad_bad = cfg.mixed_precision != "fp16" and not math.isfinite(grad_norm)
            skip = self._any(bad or grad_bad)
            if skip and cfg.nonfinite == "stop":
                optimizer.zero_grad(set_to_none=True)
                path = self.save_checkpoint(optimizer, scheduler)
                raise NonFiniteLossError(
                    f"non-finite loss or gradient at step {self.state.step} (stage {stage.name!r}); "
                    f"nonfinite=stop; the last good state is saved in {path}"
                )
            if not skip:
                optimizer.step()
            elif acc.scaler is not None:
                acc.scaler.update()  # clears the scaler's per-step "unscaled" record that step() would have cleared
            optimizer.zero_grad(set_to_none=True)
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            self.state.step += 1
            self.state.stage_step += 1
            self.state.skipped_steps += int(skip)
            replaced_t = torch.tensor([replaced], device=acc.device)
            self.state.replaced_samples += int(acc.reduce(replaced_t, reduction="sum").item())
            bar.update(1)
            if self.state.step % max(1, cfg.log_every) == 0 or self.state.stage_step == stage.steps or skip:
                metrics = {
                    "step": self.state.step,
                    "stage": stage.name,
                    "epoch": self.state.epoch,
                    "lr": lr,
                    "loss": float(self._mean(torch.stack(losses).mean()).item()),
                    **{k: float(self._mean(torch.stack(v).mean()).item()) for k, v in parts.items()},
                    "grad_norm": grad_norm,
                    "skipped": bool(skip),
                    "skipped_steps": self.state.skipped_steps,
                    "replaced_samples": self.state.replaced_samples,
                    "world_size": acc.num_processes,
                    "step_time_s": time.perf_counter() - t0,
                }
                self._log(metrics)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}")
            if cfg.eval_every and self.state.step % cfg.eval_every == 0:
                self.evaluate()
            if cfg.checkpoint_every and self.state.step % cfg.checkpoint_every == 0:
                self.save_checkpoint(optimizer, scheduler)

    def evaluate(self) -> dict[str, float]:
        """Validation loss over ``val_dataset`` (sharded over ranks) and, for contrastive models, retrieval."""
        from vidvlm.train.evaluation import evaluate

        if self.val_data is None:
            return {}
        metrics = evaluate(self, self.val_data)
        self._last_eval_step = self.state.step
        self._log({"step": self.state.step, **{f"val/{k}": v for k, v in metrics.items()}})
        self.model.train()
        return metrics

    def _save_final(self) -> None:
        acc = self.acc
        if self.val_data is not None and self._last_eval_step != self.state.step:
            self.evaluate()
        acc.wait_for_everyone()
        if acc.is_main_process:
            tmp, final = self.out / "tmp-final", self.out / "final"
            if tmp.exists():
                import shutil

                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
            ckpt.save_model(acc.unwrap_model(self.model), tmp)
            save_train_config(self.cfg, tmp / "train_config.yaml")
            if final.exists():
                import shutil

                shutil.rmtree(final)
            tmp.rename(final)
        acc.wait_for_everyone()


def _enable_grad_checkpointing(model: nn.Module) -> None:
    """The model's ``set_grad_checkpointing``, or else that of each top-most submodule having one (the towers)."""
    if hasattr(model, "set_grad_checkpointing"):
        model.set_grad_checkpointing(True)
        return
    for child in model.children():
        _enable_grad_checkpointing(child)


def _captions(datasets: Any) -> list[str]:
    """Every caption of the training manifests (for families that train their tokenizer first)."""
    out: list[str] = []
    for d in datasets:
        for row in getattr(d, "rows", []):
            out.extend(row.captions)
    return out


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True
