"""Datasets of a run built from its config, generating the synthetic moving-shapes data when asked."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from vidvlm.config import from_dict
from vidvlm.errors import ConfigError
from vidvlm.train.config import DatasetSpec, TrainConfig

# Augmentation keywords of build_transform that an evaluation transform drops.
_TRAIN_ONLY = ("scale", "ratio", "hflip")


def ensure_synthetic(cfg: TrainConfig) -> list[Path]:
    """Write each ``data.synthetic.sets`` entry whose manifest is missing; returns the manifests written.

    ``sets`` maps a folder name under ``out_dir`` to ``vidvlm.data.synthetic.make_synthetic`` keywords
    (``num``, ``seed``, ``split``, ``frames``, ``size``, ``images``, ``fps``).
    """
    spec = cfg.data.synthetic
    if spec is None:
        return []
    from vidvlm.data.synthetic import make_synthetic

    written = []
    for name, options in spec.sets.items():
        out = Path(spec.out_dir) / name
        if (out / "manifest.jsonl").is_file():
            continue
        kwargs = dict(options)
        try:
            num, seed = kwargs.pop("num"), kwargs.pop("seed", cfg.seed)
            written.append(make_synthetic(out, num, seed, **kwargs))
        except (KeyError, TypeError) as e:
            raise ConfigError(f"data.synthetic.sets.{name}: {e}") from e
    return written


def _sampler(options: dict[str, Any], where: str):
    from vidvlm.data.sampling import SamplerConfig, build_sampler

    return build_sampler(from_dict(SamplerConfig, dict(options), where=where))


def _transform(options: dict[str, Any], train: bool, where: str):
    if not options:
        return None
    from vidvlm.data.transforms import build_transform

    try:
        return build_transform(**options, train=train)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from e


def build_dataset(cfg: TrainConfig, spec: DatasetSpec, train: bool, where: str):
    """A ``VideoTextDataset`` for ``spec`` with the run's sampler and transform (``spec.sampler`` overrides)."""
    from vidvlm.data.datasets import VideoTextDataset

    data = cfg.data
    sampler = _sampler(spec.sampler if spec.sampler is not None else data.sampler, f"{where}.sampler")
    if train:
        transform = _transform(data.transform, True, "data.transform")
    else:
        options = data.val_transform
        if options is None:
            options = {k: v for k, v in data.transform.items() if k not in _TRAIN_ONLY}
        transform = _transform(options, False, "data.val_transform")
    if not Path(spec.manifest).is_file():
        raise ConfigError(f"{where}.manifest: {spec.manifest} does not exist (add a data.synthetic section or make it)")
    try:
        return VideoTextDataset(spec.manifest, sampler, transform, train=train, seed=cfg.seed, **spec.options)
    except TypeError as e:
        raise ConfigError(f"{where}.options: {e}") from e


def build_datasets(cfg: TrainConfig, is_main: bool, barrier: Callable[[], None]) -> tuple[dict[str, Any], Any]:
    """Training datasets by name and the validation dataset (or None); the main process generates missing data."""
    if is_main:
        ensure_synthetic(cfg)
    barrier()
    train = {n: build_dataset(cfg, s, True, f"data.datasets.{n}") for n, s in cfg.data.datasets.items()}
    val = build_dataset(cfg, cfg.data.val, False, "data.val") if cfg.data.val is not None else None
    return train, val
