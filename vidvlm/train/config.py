"""Typed configuration of a training run: data, optimiser, schedule and a list of stages.

A run is one flat YAML file read strictly by :func:`load_train_config`: an unknown key is a
:class:`~vidvlm.errors.ConfigError` naming the key and the file. The ``model`` section is a plain mapping here
because each family validates it with its own config class (through ``vidvlm.models.registry``).

Multi-stage recipes ("align the connector, then unfreeze everything") are configuration: each
:class:`StageConfig` names its trainable and frozen module-name prefixes, its steps, learning-rate overrides and
data mixture.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vidvlm.config import apply_overrides, from_dict, read_mapping, save_config, to_dict
from vidvlm.errors import ConfigError


@dataclass
class DatasetSpec:
    """One dataset of the mixture.

    Attributes:
        manifest: path of a JSONL or CSV manifest (media paths in it are relative to the manifest's folder), or of
            a JSONL text corpus for ``kind: text``.
        kind: ``video`` (videos and images with text) or ``text`` (sentences or conversations with no video,
            :mod:`vidvlm.data.text_corpus`): its batches are text-only, and only families with the ``text_only``
            ability take them.
        sampler: frame sampler of this dataset (e.g. ``num_frames: 1`` for images); None uses ``data.sampler``.
        options: extra keyword arguments of ``vidvlm.data.datasets.VideoTextDataset`` (``decode_size``, ...).
    """

    manifest: str
    kind: Literal["video", "text"] = "video"
    sampler: dict[str, Any] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind == "text" and (self.sampler is not None or self.options):
            raise ConfigError(f"{self.manifest}: a text dataset (kind: text) takes no sampler or options")


@dataclass
class SyntheticSpec:
    """How to generate the moving-shapes data when a manifest is missing (see ``tools/make_synthetic.py``).

    Attributes:
        out_dir: the base directory; set ``name`` is written to ``{out_dir}/{name}/manifest.jsonl``.
        sets: name -> keywords of ``vidvlm.data.synthetic.make_synthetic`` (``num``, ``seed``, ``split``,
            ``frames``, ``size``, ``images``, ``fps``). Only sets whose manifest is missing are generated.
    """

    out_dir: str
    sets: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class DataConfig:
    """Training and validation data.

    Attributes:
        datasets: name -> dataset; images are one-frame samples of the same dataset class.
        mixture: name -> sampling weight for the default mixture (a stage may override it); empty means all equal.
        val: validation dataset (val loss and, for contrastive models, retrieval); None to skip.
        batch_size: samples per process per micro-batch.
        num_workers: data-loader worker processes per rank.
        sampler: frame sampler config (``vidvlm.data.sampling.SamplerConfig`` fields), checked when built.
        transform: training transform options (``vidvlm.data.transforms.build_transform`` keywords).
        val_transform: evaluation transform options; None uses ``transform`` without augmentation.
        synthetic: when set, generate the synthetic data if a manifest is missing.
        max_bad_fraction: training stops (naming the manifest) once more than this fraction of the samples drawn
            from a dataset were unreadable files replaced by others; judged once 100 samples (or the whole dataset,
            when smaller) were drawn from it. 1 never stops.
    """

    datasets: dict[str, DatasetSpec]
    mixture: dict[str, float] = field(default_factory=dict)
    val: DatasetSpec | None = None
    batch_size: int = 8
    num_workers: int = 0
    sampler: dict[str, Any] = field(default_factory=dict)
    transform: dict[str, Any] = field(default_factory=dict)
    val_transform: dict[str, Any] | None = None
    synthetic: SyntheticSpec | None = None
    max_bad_fraction: float = 0.05

    def __post_init__(self) -> None:
        if not self.datasets:
            raise ConfigError("data.datasets: at least one dataset is needed")
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size: must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers: must be >= 0, got {self.num_workers}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ConfigError(f"data.max_bad_fraction: must be in [0, 1], got {self.max_bad_fraction}")
        _check_size(self.transform, "data.transform")
        _check_size(self.val_transform or {}, "data.val_transform")
        _check_mixture(self.mixture, self.datasets, "data.mixture")


def _check_size(transform: dict[str, Any], where: str) -> None:
    """``size`` of a transform: a positive int or a list of positive ints (H, W)."""
    if "size" not in transform or transform["size"] is None:
        return
    size = transform["size"]
    values = size if isinstance(size, (list, tuple)) else [size]
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise ConfigError(f"{where}.size: must be a positive integer or [height, width] of them, got {size!r}")


def _check_lr(lr: float, where: str) -> None:
    if not math.isfinite(lr) or lr < 0:
        raise ConfigError(f"{where}: the learning rate must be a finite number >= 0, got {lr}")


@dataclass
class ParamGroupSpec:
    """Learning-rate and weight-decay multipliers for the parameters selected by ``prefix``.

    ``prefix`` is a module-name prefix or a glob on parameter names (see :mod:`vidvlm.train.optim`). The longest
    matching pattern wins; parameters matching none use the base values.
    """

    prefix: str
    lr_mult: float = 1.0
    wd_mult: float = 1.0


@dataclass
class OptimConfig:
    """AdamW settings. Norms, biases, embeddings and temperatures never get weight decay.

    ``fused``: torch's fused AdamW (one kernel updates every parameter; CUDA and CPU); None leaves torch's default
    (a loop of multi-tensor kernels on CUDA, a per-parameter loop on the CPU). The update is the same up to rounding.
    """

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    weight_decay: float = 0.05
    groups: list[ParamGroupSpec] = field(default_factory=list)
    fused: bool | None = None

    def __post_init__(self) -> None:
        _check_lr(self.lr, "optim.lr")


@dataclass
class ScheduleConfig:
    """Linear warm-up then cosine decay to ``min_lr_ratio * lr``, restarted at each stage."""

    warmup_steps: int = 0
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.warmup_steps < 0:
            raise ConfigError(f"schedule.warmup_steps: must be >= 0, got {self.warmup_steps}")


@dataclass
class StageConfig:
    """One stage of a recipe.

    Attributes:
        name: a label used in logs.
        steps: optimiser steps in this stage: an integer >= 1, or a float in [0, 1], the stage's share of the
            steps that the integer stages leave of ``total_steps`` (the floats of a recipe sum to 1; ``1`` is one
            step, ``1.0`` the whole share). A share may round to 0 steps: the stage is then skipped.
        trainable: parameter-name patterns to train (module prefixes such as ``head`` or globs such as
            ``*.lora_*``; see :mod:`vidvlm.train.optim`); empty means every parameter the model leaves trainable
            (a ``freeze_tower`` or LiT-locked tower and an LM's frozen base stay frozen; a pattern may name them).
        frozen: patterns to freeze (applied after ``trainable``).
        lr: the stage's base learning rate (default: ``optim.lr``).
        lr_mult: pattern -> multiplier, on top of ``optim.groups`` (the longest matching pattern wins).
        mixture: dataset name -> weight for this stage (default: ``data.mixture``).
        warmup_steps: warm-up of this stage (default: ``schedule.warmup_steps``).
        token_drop: the video front-end's token dropping in this stage (``{ratio, kind, random_share}``, as
            ``front_end.token_drop``; default: the model's own). ``{ratio: 0}`` in a last stage is FLIP's short
            unmasked tuning.
    """

    name: str
    steps: int | float
    trainable: list[str] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)
    lr: float | None = None
    lr_mult: dict[str, float] = field(default_factory=dict)
    mixture: dict[str, float] | None = None
    warmup_steps: int | None = None
    token_drop: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.steps, float):
            if not 0.0 <= self.steps <= 1.0:
                raise ConfigError(f"stage {self.name!r}: steps as a fraction must be in [0, 1], got {self.steps}")
        elif self.steps < 1:
            raise ConfigError(f"stage {self.name!r}: steps must be >= 1, got {self.steps}")
        if self.lr is not None:
            _check_lr(self.lr, f"stage {self.name!r}: lr")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ConfigError(f"stage {self.name!r}: warmup_steps must be >= 0, got {self.warmup_steps}")


@dataclass
class EvalConfig:
    """What periodic evaluation measures besides the validation loss.

    Attributes:
        retrieval: text<->video recall over the validation set (families with ``encode_video``/``encode_text``).
        variant_words: words of which one appears in each caption (e.g. the four directions); for each clip the
            caption is rewritten with every word and the model must rank the true one first (``variant_acc``,
            chance = 1/len; a caption holding several of the words has only its last one swapped). Measures what
            single frames cannot tell, such as motion direction.
        generation: caption every validation clip and answer its manifest row's ``qa`` questions, scored as
            ``tools/eval.py`` scores them (``caption_cider``, ``caption_exact_match``, ``qa_accuracy``,
            ``qa_{type}_accuracy``; families that generate; questions once the model answers them), with the
            model's own decoding (``decode``; greedy by default, which draws no random numbers: the training run
            is then the same with it on or off).
    """

    retrieval: bool = True
    variant_words: list[str] = field(default_factory=list)
    generation: bool = False


@dataclass
class TrainConfig:
    """A whole training run.

    Attributes:
        output_dir: checkpoints, ``metrics.jsonl``, ``train_config.yaml`` and ``final/`` go here.
        model: the family config as a mapping (``family: contrastive`` and the family's own keys).
        data: see :class:`DataConfig`.
        stages: the recipe; one stage for a plain run.
        total_steps: the steps of the whole recipe; needed when a stage gives its ``steps`` as a fraction, and
            then the stages must cover it exactly (:attr:`stage_steps`). None: the sum of the stages' steps.
        seed: base seed of data order, augmentation and dropout.
        mixed_precision: ``"no"`` (fp32), ``"bf16"`` or ``"fp16"``.
        grad_accum: micro-batches per optimiser step.
        max_grad_norm: gradient clipping (None or <= 0: off).
        grad_checkpointing: call the model's ``set_grad_checkpointing(True)``.
        compile: compile every transformer block with ``torch.compile`` (:func:`vidvlm.layers.transformer.
            compile_blocks`); weights and checkpoints are unchanged, the first steps pay the compile time.
        checkpoint_every: save every N optimiser steps (0: only at the end).
        keep_checkpoints: how many ``checkpoint-*`` directories to keep.
        log_every: write metrics every N steps.
        eval_every: evaluate every N steps (0: only at the end).
        eval_batches: cap on validation batches per evaluation (0: the whole set).
        nonfinite: on a non-finite loss or gradient, ``"skip"`` the step or ``"stop"`` (with a checkpoint).
        trackers: accelerate trackers (``"tensorboard"`` when installed); empty for none.
        eval: what periodic evaluation measures besides the validation loss.
    """

    output_dir: str
    model: dict[str, Any]
    data: DataConfig
    stages: list[StageConfig]
    total_steps: int | None = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    seed: int = 0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    grad_checkpointing: bool = False
    compile: bool = False
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    log_every: int = 10
    eval_every: int = 0
    eval_batches: int = 0
    nonfinite: Literal["skip", "stop"] = "skip"
    trackers: list[str] = field(default_factory=list)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if not self.stages:
            raise ConfigError("stages: at least one stage is needed")
        if "family" not in self.model:
            raise ConfigError("model.family: required key is missing")
        if self.grad_accum < 1:
            raise ConfigError(f"grad_accum: must be >= 1, got {self.grad_accum}")
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every: must be >= 0 (0: only at the end), got {self.checkpoint_every}")
        if self.keep_checkpoints < 1:
            raise ConfigError(f"keep_checkpoints: must be >= 1, got {self.keep_checkpoints}")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ConfigError(f"stages: names must be unique, got {names}")
        for i, stage in enumerate(self.stages):
            if stage.mixture is not None:
                _check_mixture(stage.mixture, self.data.datasets, f"stages[{i}].mixture")
        resolve_stage_steps([s.steps for s in self.stages], self.total_steps)  # validates

    @property
    def stage_steps(self) -> list[int]:
        """Optimiser steps of each stage, fractions resolved (:func:`resolve_stage_steps`)."""
        return resolve_stage_steps([s.steps for s in self.stages], self.total_steps)

    @property
    def num_steps(self) -> int:
        """Optimiser steps of the whole recipe."""
        return sum(self.stage_steps)


def resolve_stage_steps(steps: list[int | float], total: int | None) -> list[int]:
    """Stage lengths in steps: integers as they are; floats share what the integers leave of ``total``.

    Fractions are resolved at their cumulative boundaries (``round(cumulative share * remainder)``), so they always
    sum to the remainder and a boundary such as "80 % of pre-training" is where one expects it.

    Raises:
        ConfigError: naming ``total_steps`` or ``stages``: a fraction without ``total_steps``, fractions that do
            not sum to 1, integers that exceed ``total_steps`` or, without fractions, do not sum to it.
    """
    fractions = [s for s in steps if isinstance(s, float)]
    counted = sum(s for s in steps if not isinstance(s, float))
    if total is None:
        if fractions:
            raise ConfigError("total_steps: required when a stage gives its steps as a fraction (e.g. steps: 0.8)")
        return list(steps)
    if total < 1:
        raise ConfigError(f"total_steps: must be >= 1, got {total}")
    if not fractions:
        if counted != total:
            raise ConfigError(f"total_steps: {total}, but the stages' steps sum to {counted}")
        return list(steps)
    if not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ConfigError(f"stages: the fractional steps {fractions} sum to {sum(fractions):g}; they must sum to 1")
    rest = total - counted
    if rest < 0:
        raise ConfigError(f"total_steps: {total} is less than the integer stages' {counted} steps")
    out, share, done = [], 0.0, 0
    for s in steps:
        if isinstance(s, float):
            share += s
            end = round(min(share, 1.0) * rest)
            out.append(end - done)
            done = end
        else:
            out.append(s)
    return out


def _check_mixture(mixture: dict[str, float], datasets: dict[str, Any], where: str) -> None:
    for name, weight in mixture.items():
        if name not in datasets:
            raise ConfigError(f"{where}.{name}: no such dataset; known: {sorted(datasets)}")
        if weight < 0:
            raise ConfigError(f"{where}.{name}: weight must be >= 0, got {weight}")
    if mixture and sum(mixture.values()) <= 0:
        raise ConfigError(f"{where}: weights sum to zero")


def load_train_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a run config strictly, after applying ``key.sub=value`` overrides.

    Raises:
        ConfigError: naming the file and the key, on an unknown key or bad value; the model section is checked by
            the family's own config class when :func:`validate_model_config` is called.
    """
    data = apply_overrides(read_mapping(path), overrides or [])
    return from_dict(TrainConfig, data, where=str(path))


def validate_model_config(cfg: TrainConfig, where: str = "config") -> Any:
    """Check ``cfg.model`` with the family's own config class; returns that dataclass.

    Raises:
        ConfigError: unknown family, or a bad key in the family's config (the message names ``where``).
    """
    from vidvlm.models.registry import get_family  # late: the model layer is heavy

    family = cfg.model.get("family")
    try:
        model_cls = get_family(family)
    except ConfigError as e:
        raise ConfigError(f"{where}: model.family: {e}") from e
    config_cls = model_cls.config_class
    return from_dict(config_cls, dict(cfg.model), where=f"{where}.model")


def save_train_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved run config as YAML."""
    save_config(cfg, path)


def replace(cfg: TrainConfig, **changes: Any) -> TrainConfig:
    """A copy of ``cfg`` with top-level fields changed (tests and tools)."""
    return dataclasses.replace(cfg, **changes)


# Keys that may change between a checkpoint and a resumed run: cadence, logging, evaluation, paths and speed knobs
# that leave the trained weights unchanged. Every other key (model, data, optimiser, schedule, stages, seed,
# precision, accumulation, clipping, and any key added later) must match unless the resume is forced.
RESUME_FREE_KEYS = (
    "output_dir",
    "log_every",
    "eval_every",
    "eval_batches",
    "eval",
    "checkpoint_every",
    "keep_checkpoints",
    "trackers",
    "nonfinite",
    "compile",
    "grad_checkpointing",
    "data.num_workers",
    "data.val",
    "data.val_transform",
    "data.synthetic",
    "data.max_bad_fraction",
)


def _flatten(value: Any, key: str, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flatten(v, f"{key}.{k}" if key else str(k), out)
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for i, v in enumerate(value):
            _flatten(v, f"{key}.{i}", out)
    else:
        out[key] = value
    return out


def resume_changes(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """The keys that matter for a resume and differ between a checkpoint's saved run config and ``cfg``.

    Args:
        saved: the checkpoint's ``train_config.yaml`` as a mapping.
        cfg: the config of the run that resumes.

    Returns:
        ``"key: old -> new"`` for each differing key (sorted); keys in :data:`RESUME_FREE_KEYS` are not compared.
    """
    import yaml  # late: the saved side went through YAML, so the new side does too (tuples become lists)

    # the saved config with today's defaults filled in (a key added since, at its default, is no change); one that
    # no longer reads is compared as written
    with contextlib.suppress(ConfigError):
        saved = yaml.safe_load(yaml.safe_dump(to_dict(from_dict(TrainConfig, dict(saved), where="checkpoint"))))
    old = _flatten(saved, "", {})
    new = _flatten(yaml.safe_load(yaml.safe_dump(to_dict(cfg))), "", {})
    missing = object()

    def free(key: str) -> bool:
        return any(key == k or key.startswith(k + ".") for k in RESUME_FREE_KEYS)

    def show(value: Any) -> str:
        return "(absent)" if value is missing else repr(value)

    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, missing), new.get(key, missing)
        if not free(key) and a != b:
            changes.append(f"{key}: {show(a)} -> {show(b)}")
    return changes
