"""The training loop on accelerate: stages, mixtures, accumulation, non-finite handling, exact resume.

Exact resume rests on three things: the data order of an epoch is a function of ``(seed, stage, epoch)``
(:class:`~vidvlm.train.data.MixtureBatchSampler`) and the dataset is deterministic given ``(seed, epoch, index)``
(``set_epoch``); the already-consumed batches of the resumed epoch are skipped at the sampler (nothing is decoded);
stochastic ops (dropout) are reseeded from ``(seed, step, micro-batch, rank)`` before every forward, so they do not
depend on how many random numbers were drawn before the interruption. The output folder holds one run
(:mod:`vidvlm.train.rundir`).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from vidvlm.atomic import replace_dir
from vidvlm.data.conversations import strip_placeholders
from vidvlm.devices import batch_to_device
from vidvlm.environment import environment, numeric_differences
from vidvlm.errors import ConfigError, VideoDecodeError
from vidvlm.locks import FolderLock
from vidvlm.train import checkpoint as ckpt
from vidvlm.train import evaluation
from vidvlm.train.config import StageConfig, TrainConfig, save_train_config
from vidvlm.train.data import (
    CountingCollate,
    EpochBatches,
    EpochKeyed,
    MixtureBatchSampler,
    ModelInputs,
    TaggedDataset,
    bad_data_message,
    build_datasets,
    check_text_only,
    mix_seed,
)
from vidvlm.train.optim import (
    apply_stage_token_drop,
    apply_stage_trainable,
    build_optimizer,
    build_scheduler,
    check_patterns,
    own_trainable,
)
from vidvlm.train.rundir import METRICS_FILE, check_output_dir, finished_step, lock_run_dir, prepare_output_dir

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Training stopped on a non-finite loss or gradient (``nonfinite: stop``); a checkpoint was written first."""


@dataclass
class TrainState:
    """Where a run is; saved in ``trainer_state.json``. ``epoch``/``batch`` count within the current stage.

    ``drawn_by_dataset`` and ``replaced_by_dataset`` count, over every rank, the training samples drawn from each
    dataset and those substituted because their file was unreadable.
    """

    step: int = 0
    stage: int = 0
    stage_step: int = 0
    epoch: int = 0
    batch: int = 0
    skipped_steps: int = 0
    replaced_samples: int = 0
    drawn_by_dataset: dict[str, int] = field(default_factory=dict)
    replaced_by_dataset: dict[str, int] = field(default_factory=dict)
    last_eval_step: int = -1  # the step the latest evaluation ran at (the final one is not repeated on resume)
    metrics_rows: int = 0  # rows logged to metrics.jsonl so far (a resume keeps exactly these); -1: unknown


@dataclass
class StepResult:
    """What one optimiser step did on this rank (losses are this rank's means over the micro-batches)."""

    loss: torch.Tensor
    parts: dict[str, torch.Tensor]
    grad_norm: float
    skipped: bool
    lr: float
    drawn: list[int]
    replaced: list[int]


def _unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    from accelerate.optimizer import AcceleratedOptimizer

    return optimizer.optimizer if isinstance(optimizer, AcceleratedOptimizer) else optimizer


class Trainer:
    """Trains any family whose ``forward(batch)`` returns ``*_loss`` tensors (summed into the objective).

    Args:
        cfg: the run config.
        model: the model (default: ``vidvlm.models.registry.build_model(cfg.model)``); any ``nn.Module`` works.
        datasets: name -> training dataset (default: built from ``cfg.data``).
        val_dataset: validation dataset (default: built from ``cfg.data.val``).
        collate_fn: batch collation (default: ``vidvlm.data.collate.collate_video_text``).
        accelerator: an ``accelerate.Accelerator`` (default: built from ``cfg``); each stage resets what it has
            prepared (``free_memory``) and prepares the model and the stage's optimizer.
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
        handlers = []
        if any(spec.kind == "text" for spec in cfg.data.datasets.values()):
            from accelerate.utils import DistributedDataParallelKwargs

            # A text-only batch leaves the trainable vision parts (the connector) without gradients; DDP must then
            # skip them in its all-reduce instead of waiting for them (the next step would fail).
            handlers.append(DistributedDataParallelKwargs(find_unused_parameters=True))
        self.acc = accelerator or Accelerator(
            mixed_precision=cfg.mixed_precision,
            gradient_accumulation_steps=cfg.grad_accum,
            log_with=trackers or None,
            project_dir=str(self.out),
            kwargs_handlers=handlers,
        )
        fresh = model is None
        if fresh:
            from accelerate.utils import set_seed

            from vidvlm.models.registry import build_model

            set_seed(cfg.seed)  # the initial weights are a function of the config's seed (same on every rank)
            model = build_model(cfg.model)
        check_text_only(cfg, model)
        if datasets is None or (val_dataset is None and cfg.data.val is not None):
            # the model owns frames per clip, input size and normalisation: the data inherits them
            inputs = ModelInputs.of(model)
            built, built_val = build_datasets(cfg, self.acc.is_main_process, self.acc.wait_for_everyone, inputs)
            datasets = datasets if datasets is not None else built
            val_dataset = val_dataset if val_dataset is not None else built_val
        if fresh:
            model.prepare_for_training(_captions(datasets.values()))
        self.own_trainable = own_trainable(model)  # what a stage with no `trainable` trains: the model's freezing holds
        self.trainable_params = 0  # elements the current stage trains (set by each stage)
        if collate_fn is None:
            from vidvlm.data.collate import collate_video_text as collate_fn
        self.model = model
        self.names = list(datasets)
        specs = cfg.data.datasets
        self.kinds = [specs[n].kind if n in specs else "video" for n in self.names]
        self.train_data = ConcatDataset([TaggedDataset(datasets[n], k) for k, n in enumerate(self.names)])
        self.sizes = [len(datasets[n]) for n in self.names]
        self.val_data = val_dataset
        if cfg.eval.generation and val_dataset is not None:
            evaluation.generation_rows(model, val_dataset)  # refused now, not at the first evaluation
        self.collate = CountingCollate(collate_fn, len(self.names))
        if cfg.grad_checkpointing:
            _enable_grad_checkpointing(model)
        self.compiled_blocks = 0  # transformer blocks under torch.compile (compiled on first use)
        if cfg.compile:
            from vidvlm.layers.transformer import compile_blocks

            self.compiled_blocks = compile_blocks(model)
        self.state = TrainState()
        self.environment: dict[str, Any] = {}  # where the run computes (vidvlm.environment), set when training starts
        self.history: list[dict] = []

    # --- helpers ------------------------------------------------------------------------------------------------

    def _weights(self, stage: StageConfig) -> list[float]:
        mixture = stage.mixture if stage.mixture is not None else self.cfg.data.mixture
        return [float(mixture.get(n, 0.0)) if mixture else 1.0 for n in self.names]

    def _batches(self, stage: StageConfig) -> Iterator[dict]:
        """Training batches of this rank from the saved position on, advancing ``state.epoch``/``state.batch``.

        One DataLoader iterator serves the whole stage (:class:`~vidvlm.train.data.EpochBatches`): its workers
        (``data.num_workers``) start once and prefetch across epoch boundaries; each index carries its epoch, so a
        sample is the same function of ``(seed, epoch, index)`` as in the main process. Closing the generator stops
        the workers.
        """
        weights = self._weights(stage)

        def epoch_batches(epoch: int, start: int) -> MixtureBatchSampler:
            return MixtureBatchSampler(
                self.sizes,
                weights,
                self.cfg.data.batch_size,
                seed=mix_seed(self.cfg.seed, self.state.stage),
                epoch=epoch,
                rank=self.acc.process_index,
                world_size=self.acc.num_processes,
                start=start,
                kinds=self.kinds,
            )

        per_epoch = MixtureBatchSampler.batches_per_epoch(
            self.sizes, weights, self.cfg.data.batch_size, self.acc.num_processes
        )
        if self.state.batch >= per_epoch:  # saved just after an epoch's last batch (as earlier versions did)
            self.state.epoch, self.state.batch = self.state.epoch + 1, 0
        loader = DataLoader(
            EpochKeyed(self.train_data),
            batch_sampler=EpochBatches(epoch_batches, self.state.epoch, self.state.batch),
            collate_fn=self.collate,
            num_workers=self.cfg.data.num_workers,
            pin_memory=self.acc.device.type == "cuda",
        )
        batches = iter(loader)
        try:
            for batch in batches:
                self.state.batch += 1
                if self.state.batch == per_epoch:
                    self.state.epoch, self.state.batch = self.state.epoch + 1, 0
                yield batch
        finally:
            shutdown = getattr(batches, "_shutdown_workers", None)  # multi-process iterators; the GC would too
            if shutdown is not None:
                shutdown()

    def _decide(self, bad: torch.Tensor, grad_norm: torch.Tensor) -> tuple[bool, float]:
        """Whether any rank had a bad step (a MAX all-reduce: every rank takes the same decision), and the gradient
        norm (the same on every rank), from 0-d ``bad`` and ``grad_norm``: the step's one read of the device."""
        flag = bad.float().reshape(1).to(self.acc.device)
        if self.acc.num_processes > 1:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        any_bad, norm = torch.cat([flag, grad_norm.reshape(1).to(flag.device)]).tolist()
        return any_bad > 0, norm

    def _mean(self, values: torch.Tensor) -> torch.Tensor:
        return self.acc.reduce(values.detach().to(self.acc.device), reduction="mean")

    def _log(self, metrics: dict[str, Any]) -> None:
        self.history.append(metrics)
        self.state.metrics_rows += 1  # on every rank, so the count is in the checkpoint whichever rank writes it
        if self.acc.is_main_process:
            with open(self.out / METRICS_FILE, "a") as f:
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
            ckpt.save_optimizer(_unwrap_optimizer(optimizer), tmp)
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
                    "environment": self.environment,
                },
            )
            final = ckpt.commit(tmp, step, self.cfg.keep_checkpoints)
        acc.wait_for_everyone()
        return final

    def _load_checkpoint(self, directory: Path, optimizer: Any) -> None:
        """Optimizer, scaler and RNG states of ``directory`` (the scheduler is rebuilt at ``state.stage_step``)."""
        meta = ckpt.read_json(directory / ckpt.STATE_FILE)
        ckpt.load_optimizer(_unwrap_optimizer(optimizer), directory)
        if meta.get("scaler") and self.acc.scaler is not None:
            self.acc.scaler.load_state_dict(meta["scaler"])
        ckpt.load_rng(directory, self.acc.process_index)

    # --- the loop -----------------------------------------------------------------------------------------------

    def train(
        self, resume: str | Path | None = None, *, overwrite: bool = False, force_resume: bool = False
    ) -> list[dict]:
        """Run every stage (from ``resume``'s position when given); returns the logged metrics of this call.

        Args:
            resume: a checkpoint directory, ``"auto"`` (the newest of ``output_dir``), ``"if-any"`` (the newest,
                or a fresh run when there is none yet) or None for a fresh run.
            overwrite: replace the run that ``output_dir`` holds (its checkpoints, ``final/``, metrics, config).
            force_resume: resume even though keys that change training differ from the checkpoint's config.

        Raises:
            ConfigError: another live run is writing into ``output_dir`` (``train.lock``), ``output_dir`` holds
                another run, the config changed since the checkpoint, or a stage selector matches no parameter.
            NonFiniteLossError: with ``nonfinite: stop``, after writing a checkpoint.
            CheckpointError: ``resume`` is not a usable checkpoint.
            VideoDecodeError: more than ``data.max_bad_fraction`` of a dataset's samples were unreadable.
        """
        lock = self._lock_output_dir()
        try:
            return self._train(resume, overwrite=overwrite, force_resume=force_resume)
        finally:
            if lock is not None:
                lock.release()

    def _lock_output_dir(self) -> FolderLock | None:
        """The main process holds ``output_dir``'s ``train.lock`` for the whole call (:func:`lock_run_dir`); every
        rank learns whether it could, so that all raise together instead of waiting for a main process that left."""
        lock, error = None, None
        if self.acc.is_main_process:
            try:
                lock = lock_run_dir(self.out)
            except ConfigError as e:
                error = str(e)
        if self.acc.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            error = broadcast_object_list([error])[0]
        if error is not None:
            raise ConfigError(error)
        return lock

    def _train(self, resume: str | Path | None, *, overwrite: bool, force_resume: bool) -> list[dict]:
        from tqdm.auto import tqdm

        cfg, acc = self.cfg, self.acc
        if resume in ("auto", "if-any") and not overwrite and (done := finished_step(cfg)) is not None:
            logger.warning("%s: the run finished already (final/ at step %d); nothing to do", self.out, done)
            return []
        resume_dir = ckpt.resolve_resume(str(resume), self.out) if resume is not None else None
        forced = check_output_dir(cfg, resume_dir, overwrite=overwrite, force_resume=force_resume)
        check_patterns(acc.unwrap_model(self.model), cfg.stages, cfg.optim.groups)
        for stage in cfg.stages:  # every stage's token_drop is checked before anything is trained
            apply_stage_token_drop(acc.unwrap_model(self.model), stage)
        self.environment = environment(acc.device)
        if resume_dir is not None:
            self.state = self._read_state(resume_dir)
            ckpt.load_model_weights(self.model, resume_dir)
        acc.wait_for_everyone()  # every rank checked the folder before the main process changes it
        if acc.is_main_process:
            if forced:
                logger.warning("resuming %s with a changed config (forced): %s", resume_dir, "; ".join(forced))
            prepare_output_dir(self.out, resume_dir, overwrite=overwrite)
            save_train_config(cfg, self.out / "train_config.yaml")
        acc.wait_for_everyone()
        if self.state.metrics_rows < 0:
            self.state.metrics_rows = _count_lines(self.out / METRICS_FILE)
        acc.init_trackers("vidvlm", config={"output_dir": str(self.out), "seed": cfg.seed})
        bar = tqdm(total=cfg.num_steps, initial=self.state.step, disable=not acc.is_main_process, desc="train")
        try:
            for stage_idx in range(self.state.stage, len(cfg.stages)):
                if stage_idx != self.state.stage:
                    self.state.stage, self.state.stage_step, self.state.epoch, self.state.batch = stage_idx, 0, 0, 0
                if cfg.stage_steps[stage_idx] == 0:
                    continue  # a fractional stage that resolved to no step (e.g. "introduce video at 100 %")
                self._run_stage(cfg.stages[stage_idx], resume_dir, bar)
                resume_dir = None
            self._save_final()
        finally:
            bar.close()
            acc.end_training()
        return self.history

    def _read_state(self, directory: Path) -> TrainState:
        """The checkpoint's position; warns when it was computed elsewhere (``self.environment`` is set first)."""
        meta = ckpt.read_json(directory / ckpt.STATE_FILE)
        if self.acc.is_main_process and (moved := numeric_differences(meta.get("environment"), self.environment)):
            logger.warning(
                "resuming %s, computed in another environment (%s): the continuation is not bit-exact",
                directory,
                "; ".join(moved),
            )
        meta.setdefault("metrics_rows", -1)  # a checkpoint from before the count: counted after the rewind
        return TrainState(**{k: v for k, v in meta.items() if k in TrainState.__dataclass_fields__})

    def _prepare_stage(self, stage: StageConfig, resume_dir: Path | None) -> tuple[Any, Any]:
        """Select the stage's parameters, build its optimizer and schedule, and wrap the model for it."""
        cfg, acc = self.cfg, self.acc
        raw = acc.unwrap_model(self.model)
        apply_stage_trainable(raw, stage, cfg.optim.groups, default=self.own_trainable)
        self.trainable_params = sum(p.numel() for p in raw.parameters() if p.requires_grad)
        apply_stage_token_drop(raw, stage)
        optimizer = build_optimizer(raw, cfg.optim, stage)
        warmup = stage.warmup_steps if stage.warmup_steps is not None else cfg.schedule.warmup_steps
        scheduler = build_scheduler(
            optimizer, cfg.stage_steps[self.state.stage], warmup, cfg.schedule.min_lr_ratio, start=self.state.stage_step
        )
        # Each stage is wrapped afresh: DDP registers gradient hooks for the parameters trainable when it wraps.
        # free_memory() is accelerate's reset between trainings with other models/optimizers: it forgets the previous
        # stage's optimizer, which fp16 unscaling and clipping would otherwise visit again (the GradScaler is kept).
        acc.free_memory()
        self.model, optimizer = acc.prepare(raw, optimizer)
        if resume_dir is not None:
            self._load_checkpoint(resume_dir, optimizer)
        return optimizer, scheduler

    def _run_stage(self, stage: StageConfig, resume_dir: Path | None, bar: Any) -> None:
        cfg = self.cfg
        optimizer, scheduler = self._prepare_stage(stage, resume_dir)
        batches = self._batches(stage)
        steps = cfg.stage_steps[self.state.stage]  # a fractional stage resolved against total_steps
        self.model.train()
        while self.state.stage_step < steps:
            t0 = time.perf_counter()
            result = self._train_step(stage, batches, optimizer, scheduler)
            self.state.step += 1
            self.state.stage_step += 1
            self.state.skipped_steps += int(result.skipped)
            self._count_samples(result)
            bar.update(1)
            last = self.state.stage_step == steps
            if self.state.step % max(1, cfg.log_every) == 0 or last or result.skipped:
                metrics = self._step_metrics(stage, result, time.perf_counter() - t0)
                self._log(metrics)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}")
            self._check_bad_data()
            if cfg.eval_every and self.state.step % cfg.eval_every == 0:
                self.evaluate()
            if cfg.checkpoint_every and self.state.step % cfg.checkpoint_every == 0:
                self.save_checkpoint(optimizer, scheduler)
        batches.close()  # stops the stage's loader workers before the next stage starts its own

    def _train_step(self, stage: StageConfig, batches: Iterator[dict], optimizer: Any, scheduler: Any) -> StepResult:
        """One optimiser step: ``grad_accum`` micro-batches forward and backward, clipping, then step or skip.

        Raises:
            NonFiniteLossError: a non-finite loss or gradient with ``nonfinite: stop`` (a checkpoint is written).
        """
        cfg, acc = self.cfg, self.acc
        losses, parts, finite = [], {}, []
        drawn, replaced = [0] * len(self.names), [0] * len(self.names)
        for micro in range(cfg.grad_accum):
            batch = next(batches)
            drawn = [a + b for a, b in zip(drawn, batch.pop("drawn_per_source"), strict=True)]
            replaced = [a + b for a, b in zip(replaced, batch.pop("replaced_per_source"), strict=True)]
            batch = batch_to_device(batch, acc.device)
            seed = mix_seed(cfg.seed, self.state.step, micro, acc.process_index)
            # dropout, caption choice etc. independent of the RNG history: exact resume
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            last = micro == cfg.grad_accum - 1
            with nullcontext() if last else acc.no_sync(self.model):
                out = self.model(batch)
                terms = {k: v for k, v in out.items() if k.endswith("_loss")}
                if not terms:
                    name = type(acc.unwrap_model(self.model)).__name__
                    raise ValueError(f"{name}.forward returned no '*_loss' key: {sorted(out)}")
                loss = sum(terms.values())
                if not loss.requires_grad:  # e.g. a text-only batch in a stage that trains only the connector
                    sources = [n for n, c in zip(self.names, drawn, strict=True) if c]
                    raise ConfigError(
                        f"stage {stage.name!r}: the loss of a batch from {sources} reaches no trainable parameter "
                        "(train a part that this data passes through, or drop the dataset from the stage's mixture)"
                    )
                # Not read here (a read waits for the accelerator): the step is skipped below if any loss is bad.
                # Backward runs on every rank even for a bad loss, so DDP's collectives stay matched.
                finite.append(torch.isfinite(loss.detach()))
                acc.backward(loss)
            losses.append(loss.detach().float())
            for k, v in terms.items():
                parts.setdefault(k, []).append(v.detach().float())
        params = [p for p in acc.unwrap_model(self.model).parameters() if p.requires_grad]
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm and cfg.max_grad_norm > 0 else float("inf")
        norm = acc.clip_grad_norm_(params, max_norm)
        norm = torch.as_tensor(float("nan") if norm is None else norm).detach().float()
        bad = ~torch.stack(finite).all().to(norm.device)
        if cfg.mixed_precision != "fp16":  # fp16: the GradScaler skips steps with inf/NaN gradients itself
            bad = bad | ~torch.isfinite(norm)
        skip, grad_norm = self._decide(bad, norm)
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
        return StepResult(
            loss=torch.stack(losses).mean(),
            parts={k: torch.stack(v).mean() for k, v in parts.items()},
            grad_norm=grad_norm,
            skipped=skip,
            lr=lr,
            drawn=drawn,
            replaced=replaced,
        )

    def _count_samples(self, result: StepResult) -> None:
        """Add the samples drawn and replaced by every rank in this step to the per-dataset counts."""
        n = len(self.names)
        counts = result.drawn + result.replaced
        if self.acc.num_processes > 1:  # one process: the counts are already on the host
            counts = torch.tensor(counts, dtype=torch.int64, device=self.acc.device)
            counts = self.acc.reduce(counts, reduction="sum").tolist()
        state = self.state
        for k, name in enumerate(self.names):
            state.drawn_by_dataset[name] = state.drawn_by_dataset.get(name, 0) + int(counts[k])
            state.replaced_by_dataset[name] = state.replaced_by_dataset.get(name, 0) + int(counts[n + k])
        state.replaced_samples += int(sum(counts[n:]))

    def _check_bad_data(self) -> None:
        """Stop when a dataset's share of unreadable (replaced) samples passes ``data.max_bad_fraction``.

        The counts are summed over ranks, so every rank takes the same decision.
        """
        datasets = self.cfg.data.datasets
        manifests = {n: datasets[n].manifest if n in datasets else n for n in self.names}
        message = bad_data_message(
            dict(zip(self.names, self.sizes, strict=True)),
            self.state.drawn_by_dataset,
            self.state.replaced_by_dataset,
            self.cfg.data.max_bad_fraction,
            manifests,
        )
        if message:
            raise VideoDecodeError(message)

    def _step_metrics(self, stage: StageConfig, result: StepResult, seconds: float) -> dict[str, Any]:
        names = ["loss", *result.parts]  # the rank means of the loss and its parts, read in one go
        losses = dict(zip(names, self._mean(torch.stack([result.loss, *result.parts.values()])).tolist(), strict=True))
        return {
            "step": self.state.step,
            "stage": stage.name,
            "epoch": self.state.epoch,
            "lr": result.lr,
            **losses,
            "grad_norm": result.grad_norm,
            "trainable_params": self.trainable_params,  # what this stage trains (a frozen tower is not counted)
            # this rank's samples of the step per dataset (a text-only step shows only text datasets)
            "drawn": {n: c for n, c in zip(self.names, result.drawn, strict=True) if c},
            "skipped": bool(result.skipped),
            "skipped_steps": self.state.skipped_steps,
            "replaced_samples": self.state.replaced_samples,
            "world_size": self.acc.num_processes,
            "step_time_s": seconds,
        }

    def evaluate(self) -> dict[str, float]:
        """Validation loss over ``val_dataset`` (sharded over ranks), retrieval for models that embed video and
        text and, with ``eval.generation``, captions and answers (:func:`vidvlm.train.evaluation.evaluate`);
        logged as ``val/*``. Every rank calls this."""
        if self.val_data is None:
            return {}
        cfg = self.cfg
        metrics = evaluation.evaluate(
            self.model,
            self.val_data,
            batch_size=cfg.data.batch_size,
            collate_fn=self.collate.collate_fn,
            num_workers=cfg.data.num_workers,
            max_batches=cfg.eval_batches,
            retrieval=cfg.eval.retrieval,
            variant_words=cfg.eval.variant_words,
            generation=cfg.eval.generation,
            accelerator=self.acc,
        )
        self.state.last_eval_step = self.state.step
        self._log({"step": self.state.step, **{f"val/{k}": v for k, v in metrics.items()}})
        self.model.train()
        return metrics

    def _save_final(self) -> None:
        """Write ``final/`` (model + run config); an existing one is swapped out atomically, never deleted first."""
        acc = self.acc
        if self.val_data is not None and self.state.last_eval_step != self.state.step:
            self.evaluate()
        acc.wait_for_everyone()
        if acc.is_main_process:
            tmp = ckpt.begin_dir(self.out / "tmp-final")
            ckpt.save_model(acc.unwrap_model(self.model), tmp)
            save_train_config(self.cfg, tmp / "train_config.yaml")
            # marks the run finished at this step, and says where it was computed
            ckpt.write_json(tmp / ckpt.STATE_FILE, {**asdict(self.state), "environment": self.environment})
            replace_dir(tmp, self.out / "final")
        acc.wait_for_everyone()


def _count_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def _enable_grad_checkpointing(model: nn.Module) -> None:
    """The model's ``set_grad_checkpointing``, or else that of each top-most submodule having one (the towers)."""
    if hasattr(model, "set_grad_checkpointing"):
        model.set_grad_checkpointing(True)
        return
    for child in model.children():
        _enable_grad_checkpointing(child)


def _captions(datasets: Any) -> list[str]:
    """Every caption of the training manifests, and every turn of their conversations and ``qa`` lists without the
    media placeholders (for families that train their tokenizer first)."""
    out: list[str] = []
    for d in datasets:
        for row in getattr(d, "rows", []):
            out.extend(getattr(row, "captions", ()))  # a text corpus has none
            extra = getattr(row, "extra", None) or {}
            turns = [str(t.get("content", "")) for t in extra.get("conversation") or [] if isinstance(t, dict)]
            qa = [q for q in extra.get("qa") or [] if isinstance(q, dict)]
            turns += [str(q.get(k, "")) for q in qa for k in ("question", "answer")]
            out.extend(strip_placeholders(text) for text in turns)
    return out


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True
