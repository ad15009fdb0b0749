"""Trainable-parameter selection, AdamW parameter groups and the warm-up + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from vidvlm.errors import ConfigError
from vidvlm.train.config import OptimConfig, StageConfig

# Parameter names containing one of these never get weight decay (CLIP/open_clip convention).
_NO_DECAY_WORDS = ("norm", "bias", "embed", "logit_scale", "logit_bias", "temperature", "cls_token", "pos_")


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix if prefix.endswith(".") else prefix + ".") or prefix == ""


def apply_stage_trainable(model: nn.Module, stage: StageConfig) -> list[str]:
    """Set ``requires_grad`` for a stage: ``trainable`` prefixes (empty: all), then ``frozen`` prefixes.

    Returns:
        the names of the trainable parameters.

    Raises:
        ConfigError: a prefix that matches no parameter (a typo would silently train the wrong thing).
    """
    names = [n for n, _ in model.named_parameters()]
    for kind, prefixes in (("trainable", stage.trainable), ("frozen", stage.frozen)):
        for p in prefixes:
            if not any(_matches(n, p) for n in names):
                raise ConfigError(f"stage {stage.name!r}: {kind} prefix {p!r} matches no parameter")
    out = []
    for name, param in model.named_parameters():
        train = not stage.trainable or any(_matches(name, p) for p in stage.trainable)
        if any(_matches(name, p) for p in stage.frozen):
            train = False
        param.requires_grad_(train)
        if train:
            out.append(name)
    if not out:
        raise ConfigError(f"stage {stage.name!r}: no parameter is trainable")
    return out


def _longest_match(name: str, mults: dict[str, float]) -> float:
    best, value = -1, 1.0
    for prefix, mult in mults.items():
        if _matches(name, prefix) and len(prefix) > best:
            best, value = len(prefix), mult
    return value


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Norm weights, biases, embeddings and temperatures are not decayed (1-D tensors are norms or biases)."""
    return param.ndim <= 1 or any(w in name.lower() for w in _NO_DECAY_WORDS)


def build_param_groups(model: nn.Module, optim: OptimConfig, stage: StageConfig) -> list[dict]:
    """AdamW parameter groups for the trainable parameters, one per (lr, wd) pair.

    The lr of a parameter is ``(stage.lr or optim.lr) * group lr_mult * stage lr_mult`` (longest prefix wins in
    each); its wd is ``optim.weight_decay * wd_mult`` or 0 for norms, biases, embeddings and temperatures.
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


def build_optimizer(model: nn.Module, optim: OptimConfig, stage: StageConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``model`` with the groups of :func:`build_param_groups`."""
    groups = build_param_groups(model, optim, stage)
    # "names" is metadata for logs and checkpoints; AdamW keeps unknown group keys untouched.
    return torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps)


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Multiplier of the peak lr at ``step`` (0-based) of a stage: linear warm-up, then cosine to ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, total: int, warmup: int, min_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` whose state is only ``last_epoch``, so it is saved as JSON."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup, min_ratio))
