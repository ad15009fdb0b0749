"""The data of a run: datasets built from its config (generating the synthetic moving-shapes data when asked), the
mixture batch sampler whose order is a pure function of ``(seed, epoch)``, and the collate wrapper that counts
substituted (unreadable) samples per dataset."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import ConcatDataset, Dataset, Sampler

from vidvlm.config import from_dict
from vidvlm.errors import ConfigError
from vidvlm.train.config import DatasetSpec, TrainConfig

# Augmentation keywords of build_transform that an evaluation transform drops.
_TRAIN_ONLY = ("scale", "ratio", "hflip")


def ensure_synthetic(cfg: TrainConfig) -> list[Path]:
    """Write each ``data.synthetic.sets`` entry whose manifest is missing; returns the manifests written.

    ``sets`` maps a folder name under ``out_dir`` to ``vidvlm.data.synthetic.make_synthetic`` keywords
    (``num``, ``seed``, ``split``, ``frames``, ``size``, ``images``, ``fps``, ...); a set with ``text: true`` is a
    text-only corpus (``vidvlm.data.synthetic_qa.make_text_corpus``: ``num``, ``seed``, ``compositional``) written
    as ``manifest.jsonl``.
    """
    spec = cfg.data.synthetic
    if spec is None:
        return []
    from vidvlm.data.synthetic import make_synthetic
    from vidvlm.data.synthetic_qa import make_text_corpus

    written = []
    for name, options in spec.sets.items():
        out = Path(spec.out_dir) / name
        if (out / "manifest.jsonl").is_file():
            continue
        kwargs = dict(options)
        if "num" not in kwargs:
            raise ConfigError(f"data.synthetic.sets.{name}: missing 'num' (how many clips to make)")
        num, seed = kwargs.pop("num"), kwargs.pop("seed", cfg.seed)
        try:
            if kwargs.pop("text", False):
                written.append(make_text_corpus(out, num, seed, file_name="manifest.jsonl", **kwargs))
            else:
                written.append(make_synthetic(out, num, seed, **kwargs))
        except (ConfigError, KeyError, TypeError) as e:  # the generator names the option; say which set it is in
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


@dataclass(frozen=True)
class ModelInputs:
    """What the model owns about its input: frames per clip, input side and normalisation preset."""

    num_frames: int
    image_size: int
    normalize: str

    @classmethod
    def of(cls, model: Any) -> ModelInputs | None:
        """The inputs of a family with a video front-end (None for other models: the data config decides)."""
        from vidvlm.models.base import FRONT_END, VLMModel

        if not isinstance(model, VLMModel) or not model.can(FRONT_END):
            return None
        fe = model.front_end
        return cls(model.num_frames, fe.image_size, fe.cfg.normalize)


def inherit_inputs(cfg: TrainConfig, inputs: ModelInputs | None) -> TrainConfig:
    """``cfg`` with ``data.sampler.num_frames``, ``data.transform.size`` / ``preset`` (and the validation
    transform's) taken from the model; a value given in the data config that contradicts it is an error.

    Raises:
        ConfigError: naming both keys and both values.
    """
    if inputs is None:
        return cfg
    data = cfg.data

    def fill(options: dict[str, Any], pairs: list[tuple[str, Any, str]], where: str) -> dict[str, Any]:
        out = dict(options)
        for key, value, model_key in pairs:
            if key in out and out[key] != value:
                raise ConfigError(
                    f"{where}.{key}: {out[key]!r} contradicts model.front_end.{model_key}: {value!r} (the model owns "
                    f"it; drop {where}.{key})"
                )
            out[key] = value
        return out

    frames = [("num_frames", inputs.num_frames, "num_frames")]
    image = [("size", inputs.image_size, "image_size"), ("preset", inputs.normalize, "normalize")]
    sampler = fill(data.sampler, frames, "data.sampler")
    transform = fill(data.transform, image, "data.transform")
    val = None if data.val_transform is None else fill(data.val_transform, image, "data.val_transform")
    new = dataclasses.replace(data, sampler=sampler, transform=transform, val_transform=val)
    return dataclasses.replace(cfg, data=new)


def build_dataset(cfg: TrainConfig, spec: DatasetSpec, train: bool, where: str):
    """A ``VideoTextDataset`` for ``spec`` with the run's sampler and transform (``spec.sampler`` overrides, e.g.
    ``num_frames: 1`` for a dataset of images)."""
    from vidvlm.data.datasets import VideoTextDataset

    if spec.kind == "text":
        from vidvlm.data.text_corpus import TextCorpusDataset

        if not Path(spec.manifest).is_file():
            raise ConfigError(f"{where}.manifest: {spec.manifest} does not exist (add a data.synthetic set with "
                              "text: true or write the corpus)")  # fmt: skip
        return TextCorpusDataset(spec.manifest)
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
    except (TypeError, ConfigError) as e:
        raise ConfigError(f"{where}.options: {e}") from e


def check_text_only(cfg: TrainConfig, model: Any) -> None:
    """Refuse text-only datasets (``kind: text``) for a model that does not declare the ``text_only`` ability.

    Raises:
        ConfigError: naming the first such dataset and the family.
    """
    from vidvlm.models.base import TEXT_ONLY, VLMModel

    texts = [n for n, s in cfg.data.datasets.items() if s.kind == "text"]
    if texts and not (isinstance(model, VLMModel) and model.can(TEXT_ONLY)):
        family = cfg.model.get("family", type(model).__name__)
        raise ConfigError(
            f"data.datasets.{texts[0]}: family {family!r} cannot train on text-only batches (kind: text); "
            "remove the dataset or use a family with the text_only ability (llava)"
        )


def build_datasets(
    cfg: TrainConfig, is_main: bool, barrier: Callable[[], None], inputs: ModelInputs | None = None
) -> tuple[dict[str, Any], Any]:
    """Training datasets by name and the validation dataset (or None); the main process generates missing data.
    ``inputs`` (the model's frames, size and normalisation) fill the sampler and transforms (:func:`inherit_inputs`)."""
    cfg = inherit_inputs(cfg, inputs)
    if is_main:
        ensure_synthetic(cfg)
    barrier()
    train = {n: build_dataset(cfg, s, True, f"data.datasets.{n}") for n, s in cfg.data.datasets.items()}
    val = build_dataset(cfg, cfg.data.val, False, "data.val") if cfg.data.val is not None else None
    return train, val


# --- sampling and counting ---------------------------------------------------------------------------------------


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence hashes them well)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


class MixtureBatchSampler(Sampler[list[int]]):
    """Per-rank batches of indices into a concatenation of datasets, a pure function of ``(seed, epoch)``.

    Each global batch (``batch_size * world_size`` samples) draws every slot's dataset by ``weights`` and takes that
    dataset's next index from its per-epoch permutation (cycling). Rank ``r`` gets slots ``[r*B, (r+1)*B)``.
    An epoch has ``sum(sizes of weighted datasets) // global batch`` batches; ``start`` skips the first ones.

    ``kinds`` (one per dataset, e.g. ``"video"`` / ``"text"``) keeps each global batch to one kind when the
    weighted datasets have several: a batch draws its kind with probability proportional to the kind's summed
    weight, then its slots draw datasets of that kind by weight. With one kind the draw is the plain one above.
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
        kinds: Sequence[str] | None = None,
    ) -> None:
        self.sizes, self.batch_size, self.rank, self.world = list(sizes), batch_size, rank, world_size
        self.num_batches = self.batches_per_epoch(sizes, weights, batch_size, world_size)
        self.start = start
        rng = np.random.default_rng(mix_seed(seed, epoch))
        w = np.asarray(weights, dtype=np.float64)
        n = self.num_batches * batch_size * world_size
        kinds = list(kinds) if kinds is not None else ["video"] * len(sizes)
        present = sorted({k for k, x in zip(kinds, w, strict=True) if x > 0})
        if len(present) <= 1:
            choice = rng.choice(len(sizes), size=n, p=w / w.sum())
        else:
            choice = self._by_kind(rng, w, kinds, present, batch_size * world_size)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self.indices = np.empty(n, dtype=np.int64)
        for d, size in enumerate(sizes):
            slots = np.flatnonzero(choice == d)
            if len(slots) == 0:
                continue
            reps = -(-len(slots) // size)
            order = np.concatenate([rng.permutation(size) for _ in range(reps)])[: len(slots)]
            self.indices[slots] = order + offsets[d]

    @staticmethod
    def batches_per_epoch(sizes: Sequence[int], weights: Sequence[float], batch_size: int, world_size: int = 1) -> int:
        """Batches in every epoch: the weighted datasets' samples over the global batch.

        Raises:
            ConfigError: when they cannot fill one global batch.
        """
        total = sum(s for s, w in zip(sizes, weights, strict=True) if w > 0)
        if total < batch_size * world_size:
            raise ConfigError(
                f"data: {total} samples cannot fill one global batch of {batch_size} x {world_size} processes"
            )
        return total // (batch_size * world_size)

    def _by_kind(
        self, rng: np.random.Generator, w: np.ndarray, kinds: list[str], present: list[str], global_batch: int
    ) -> np.ndarray:
        """Each slot's dataset when every global batch holds one kind (see the class docstring)."""
        member = np.asarray([[k == kind for k in kinds] for kind in present])  # [kinds, datasets]
        kind_w = (member * w).sum(axis=1)
        batch_kind = rng.choice(len(present), size=self.num_batches, p=kind_w / kind_w.sum())
        slot_kind = np.repeat(batch_kind, global_batch)
        choice = np.empty(len(slot_kind), dtype=np.int64)
        for k in range(len(present)):
            slots = np.flatnonzero(slot_kind == k)
            p = member[k] * w
            choice[slots] = rng.choice(len(w), size=len(slots), p=p / p.sum())
        return choice

    def __len__(self) -> int:
        return self.num_batches - self.start

    def __iter__(self) -> Iterator[list[int]]:
        g = self.batch_size * self.world
        for b in range(self.start, self.num_batches):
            lo = b * g + self.rank * self.batch_size
            yield self.indices[lo : lo + self.batch_size].tolist()


_SOURCE = "_source"  # the sample key TaggedDataset adds and CountingCollate removes


class TaggedDataset(Dataset):
    """``dataset`` whose samples also carry the number ``source`` of their dataset in the mixture."""

    def __init__(self, dataset: Dataset, source: int) -> None:
        self.dataset, self.source = dataset, source

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {**self.dataset[index], _SOURCE: self.source}


def set_epoch(dataset: Dataset, epoch: int) -> None:
    """``set_epoch(epoch)`` on every dataset of a (tagged) concatenation that has it."""
    for d in dataset.datasets if isinstance(dataset, ConcatDataset) else [dataset]:
        d = d.dataset if isinstance(d, TaggedDataset) else d
        if hasattr(d, "set_epoch"):  # datasets without per-epoch randomness need none
            d.set_epoch(epoch)


class EpochBatches(Sampler[list[tuple[int, int]]]):
    """Endless batches of ``(epoch, index)`` keys from ``(epoch, start)`` on: epoch ``e``'s batches come from
    ``make(e, start)`` (then ``make(e + 1, 0)``, ...), each index tagged with its epoch.

    With :class:`EpochKeyed`, one DataLoader iterator serves every epoch of a stage: its workers start once, keep
    what they hold between samples (the in-process frame index of every file they opened), and go on prefetching
    across an epoch boundary instead of draining at it. The epoch travels with each index instead of being set on
    the main process's copy of the dataset, which the workers would never see.
    """

    def __init__(self, make: Callable[[int, int], Sampler[list[int]]], epoch: int = 0, start: int = 0) -> None:
        self.make, self.epoch, self.start = make, epoch, start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, start = self.epoch, self.start
        while True:
            for batch in self.make(epoch, start):
                yield [(epoch, index) for index in batch]
            epoch, start = epoch + 1, 0


class EpochKeyed(Dataset):
    """``dataset`` read by ``(epoch, index)`` keys; calls :func:`set_epoch` on its copy when the epoch changes."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset, self.epoch = dataset, None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        if epoch != self.epoch:
            set_epoch(self.dataset, epoch)
            self.epoch = epoch
        return self.dataset[index]


class CountingCollate:
    """Wraps a collate function to count, per dataset, the samples drawn and the substituted (unreadable) ones.

    The counts travel with the batch (``drawn_per_source``, ``replaced_per_source``: lists over the mixture's
    datasets) so they are right with worker processes too; the trainer removes them.
    """

    KEYS = ("drawn_per_source", "replaced_per_source")

    def __init__(self, collate_fn: Callable[[list[dict]], dict], num_sources: int = 1) -> None:
        self.collate_fn = collate_fn
        self.num_sources = num_sources

    def __call__(self, samples: list[dict]) -> dict:
        drawn, replaced = [0] * self.num_sources, [0] * self.num_sources
        clean = []
        for s in samples:
            source = s.get(_SOURCE, 0)
            drawn[source] += 1
            replaced[source] += int(s.get("replaced_from") not in (None, -1))
            clean.append({k: v for k, v in s.items() if k != _SOURCE})
        batch = self.collate_fn(clean)
        batch.update(drawn_per_source=drawn, replaced_per_source=replaced)
        return batch


# A dataset's share of unreadable files is judged once this many samples (or all of it, if smaller) were drawn.
MIN_DRAWN_FOR_BAD_FRACTION = 100


def bad_data_message(
    sizes: dict[str, int],
    drawn: dict[str, int],
    replaced: dict[str, int],
    max_fraction: float,
    manifests: dict[str, str],
) -> str | None:
    """Why training must stop for unreadable files, or None.

    Args:
        sizes: dataset name -> number of samples.
        drawn: name -> samples drawn so far (every rank).
        replaced: name -> of those, samples substituted because their file was unreadable.
        max_fraction: ``data.max_bad_fraction``.
        manifests: name -> manifest path (named in the message).
    """
    for name, size in sizes.items():
        n, bad = drawn.get(name, 0), replaced.get(name, 0)
        if n and n >= min(size, MIN_DRAWN_FOR_BAD_FRACTION) and bad > max_fraction * n:
            return (
                f"{manifests.get(name, name)}: {bad} of {n} samples drawn from data.datasets.{name} ({bad / n:.1%}) "
                f"were unreadable files replaced by others, more than data.max_bad_fraction={max_fraction}; fix or "
                "remove the files the warnings name, or raise data.max_bad_fraction"
            )
    return None
