"""Trainable-parameter selection, AdamW parameter groups and the warm-up + cosine schedule.

Every selector (a stage's ``trainable``, ``frozen`` and ``lr_mult`` keys, ``optim.groups[].prefix``) is a pattern on
parameter names: a plain module-name prefix (``head`` selects ``head.weight`` and ``head.bias``, not
``header.weight``) or a glob (:mod:`fnmatch`: ``*.lora_*``, ``front_end.connector.*``, ``blocks.1?.*``), which selects
a parameter when it matches the whole name or a module prefix of it. A pattern that selects nothing is an error.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence
from fnmatch import fnmatchcase

import torch
from torch import nn

from vidvlm.errors import ConfigError
from vidvlm.train.config import OptimConfig, ParamGroupSpec, StageConfig

# Parameter names containing one of these never get weight decay (CLIP/open_clip convention).
_NO_DECAY_WORDS = ("norm", "bias", "embed", "logit_scale", "logit_bias", "temperature", "cls_token", "pos_")


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def matches(name: str, pattern: str) -> bool:
    """Whether the parameter ``name`` is selected by ``pattern`` (a module-name prefix or a glob; see the module)."""
    if pattern == "":
        return True
    if _is_glob(pattern):
        return fnmatchcase(name, pattern) or fnmatchcase(name, pattern.rstrip(".") + ".*")
    return name == pattern or name.startswith(pattern if pattern.endswith(".") else pattern + ".")


def unmatched_patterns(names: Iterable[str], stage: StageConfig, groups: Sequence[ParamGroupSpec] = ()) -> list[str]:
    """The selectors of ``stage`` (and ``optim.groups``) that select none of ``names``, as ``"kind 'pattern'"``."""
    names = list(names)
    selectors = [("trainable", p) for p in stage.trainable] + [("frozen", p) for p in stage.frozen]
    selectors += [("lr_mult", p) for p in stage.lr_mult] + [("optim.groups", g.prefix) for g in groups]
    return [f"{kind} {p!r}" for kind, p in selectors if not any(matches(n, p) for n in names)]


def check_patterns(model: nn.Module, stages: Sequence[StageConfig], groups: Sequence[ParamGroupSpec] = ()) -> None:
    """Check every selector of every stage against the model's parameter names, before anything is trained.

    Raises:
        ConfigError: listing every pattern that selects no parameter, by stage.
    """
    names = [n for n, _ in model.named_parameters()]
    problems = []
    for i, stage in enumerate(stages):
        bad = unmatched_patterns(names, stage, groups if i == 0 else ())  # optim.groups reported once
        if bad:
            problems.append(f"stage {stage.name!r}: {', '.join(bad)}")
    if problems:
        raise ConfigError(f"patterns that match no parameter: {'; '.join(problems)}")


def own_trainable(model: nn.Module) -> frozenset[str]:
    """Names of the parameters ``model`` leaves trainable as built: not those it froze itself (a ``freeze_tower``
    tower, a LiT-locked tower, a pretrained LM under LoRA). A stage whose ``trainable`` is empty trains these."""
    return frozenset(n for n, p in model.named_parameters() if p.requires_grad)


def apply_stage_trainable(
    model: nn.Module,
    stage: StageConfig,
    groups: Sequence[ParamGroupSpec] = (),
    default: Collection[str] | None = None,
) -> list[str]:
    """Set ``requires_grad`` for a stage: ``trainable`` patterns, then ``frozen`` patterns.

    An empty ``trainable`` trains what the model leaves trainable (``default``), so the model's own freezing holds;
    a pattern may name a frozen part to train it.

    Args:
        model: the model whose parameters are selected.
        stage: the stage (its ``trainable``, ``frozen`` and ``lr_mult`` patterns are checked).
        groups: ``optim.groups``, whose prefixes are checked too.
        default: what an empty ``trainable`` trains: :func:`own_trainable` of the model as built (the trainer takes
            it before its first stage). None: the parameters that require grad now, which is the same for a model
            no stage has touched yet.

    Returns:
        the names of the trainable parameters.

    Raises:
        ConfigError: listing every pattern that matches no parameter (a typo would silently train the wrong thing),
            or when no parameter is left trainable.
    """
    bad = unmatched_patterns((n for n, _ in model.named_parameters()), stage, groups)
    if bad:
        raise ConfigError(f"stage {stage.name!r}: patterns that match no parameter: {', '.join(bad)}")
    if default is None:
        default = own_trainable(model)
    out = []
    for name, param in model.named_parameters():
        train = any(matches(name, p) for p in stage.trainable) if stage.trainable else name in default
        if any(matches(name, p) for p in stage.frozen):
            train = False
        param.requires_grad_(train)
        if train:
            out.append(name)
    if not out:
        raise ConfigError(f"stage {stage.name!r}: no parameter is trainable")
    return out


def _longest_match(name: str, mults: dict[str, float]) -> float:
    """The multiplier of the longest pattern selecting ``name`` (1 when none does)."""
    best, value = -1, 1.0
    for pattern, mult in mults.items():
        if matches(name, pattern) and len(pattern) > best:
            best, value = len(pattern), mult
    return value


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Norm weights, biases, embeddings and temperatures are not decayed (1-D tensors are norms or biases)."""
    return param.ndim <= 1 or any(w in name.lower() for w in _NO_DECAY_WORDS)


def build_param_groups(model: nn.Module, optim: OptimConfig, stage: StageConfig) -> list[dict]:
    """AdamW parameter groups for the trainable parameters, one per (lr, wd) pair.

    The lr of a parameter is ``(stage.lr or optim.lr) * group lr_mult * stage lr_mult`` (the longest selecting
    pattern wins in each); its wd is ``optim.weight_decay * wd_mult`` or 0 for norms, biases, embeddings and
    temperatures.
    Each group records ``initial_lr`` (the peak, scaled by the schedule) and the parameter ``names``.
    """
    base_lr = stage.lr if stage.lr is not None else optim.lr
    group_lr = {g.prefix: g.lr_mult for g in optim.groups}
    group_wd = {g.prefix: g.wd_mult for g in optim.groups}
    buckets: dict[tuple[float, float], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr = base_lr * _longest_match(name, group_lr) * _longest_match(name, stage.lr_mult)
        wd = 0.0 if no_weight_decay(name, param) else optim.weight_decay * _longest_match(name, group_wd)
        group = buckets.setdefault(
            (lr, wd), {"params": [], "names": [], "lr": lr, "initial_lr": lr, "weight_decay": wd}
        )
        group["params"].append(param)
        group["names"].append(name)
    return list(buckets.values())


def apply_stage_token_drop(model: nn.Module, stage: StageConfig) -> None:
    """Set the video front-end's token dropping for ``stage`` (its ``token_drop``, else the model's own).

    Raises:
        ConfigError: naming ``stage <name>: token_drop`` when the value is invalid or the model has no front-end that
            can drop tokens.
    """
    from vidvlm.config import from_dict  # late: keeps this module free of the model layer at import
    from vidvlm.models.frontend import TokenDropConfig

    where = f"stage {stage.name!r}: token_drop"
    front_end = getattr(model, "front_end", None)
    if not hasattr(front_end, "set_token_drop"):
        if stage.token_drop is None:
            return
        raise ConfigError(f"{where}: the model has no video front-end to drop tokens in")
    if stage.token_drop is None:
        front_end.set_token_drop(None)
        return
    try:
        drop = from_dict(TokenDropConfig, stage.token_drop, where)
    except ConfigError as e:
        raise ConfigError(str(e).replace("front_end.token_drop", where)) from None
    front_end.set_token_drop(drop, where)


def build_optimizer(model: nn.Module, optim: OptimConfig, stage: StageConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``model`` with the groups of :func:`build_param_groups`."""
    groups = build_param_groups(model, optim, stage)
    # "names" is metadata for logs and checkpoints; AdamW keeps unknown group keys untouched.
    return torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, fused=optim.fused)


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Multiplier of the peak lr at ``step`` (0-based) of a stage: linear warm-up, then cosine to ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, total: int, warmup: int, min_ratio: float, start: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` whose state is only ``last_epoch``, so it is saved as JSON.

    Args:
        optimizer: its groups carry ``initial_lr`` (the peak lr, see :func:`build_param_groups`).
        total: steps of the stage.
        warmup: warm-up steps.
        min_ratio: the final lr as a fraction of the peak.
        start: steps of the stage already taken (a resumed stage): the groups' lr is set for step ``start``.
    """
    # last_epoch=start-1: the constructor's own first step() moves it to `start` and sets the lr of that step.
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, warmup, min_ratio), last_epoch=start - 1
    )
