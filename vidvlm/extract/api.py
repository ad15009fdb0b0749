"""Feature extraction over many videos and images: ``extract_features``, ``iter_features``, ``extract_to_dir``.

Decoding runs in DataLoader workers (``open_video`` -> sampler -> ``get_frames`` -> the model's eval transform);
the main process batches the decoded clips and runs the encoder. Clips are batched only with clips of the same
shape ``[T, 3, H, W]``, so no clip is ever padded: a feature depends on its source alone, never on the batch size,
the worker count or which other sources happen to share its batch (an image, ``T = 1``, is batched with images).

A source that cannot be read does not stop the run: its result carries ``error`` (the exception's type and message).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from vidvlm.data.reader import read_clips
from vidvlm.data.sampling import SamplerConfig, UniformSampler, build_sampler, equal_windows
from vidvlm.data.video import open_video
from vidvlm.errors import ConfigError
from vidvlm.extract.encoders import Encoder, resolve_model
from vidvlm.extract.result import LEVELS, FeatureResult
from vidvlm.extract.shards import ShardWriter
from vidvlm.extract.sources import list_sources
from vidvlm.extract.workers import loader_context, worker_init
from vidvlm.models.base import EMBED_TEXT, VLMModel

Sources = str | os.PathLike | Iterable[str | os.PathLike]


def _build_sampler(sampler: Any) -> Callable:
    # Extraction keeps short videos short ("fewer"): an image stays one frame instead of being repeated.
    if sampler is None:
        return UniformSampler(8, short_policy="fewer")
    if isinstance(sampler, int):
        return UniformSampler(sampler, short_policy="fewer")
    if isinstance(sampler, SamplerConfig):
        return build_sampler(sampler)
    if callable(sampler):
        return sampler
    raise ConfigError(f"sampler: expected None, a frame count, a SamplerConfig or a callable, got {sampler!r}")


class _DecodeSet(Dataset):
    """Decodes one source per item: a list of clips (float ``[T, 3, H, W]``) and their timestamps, or an error."""

    def __init__(self, sources: list[str], sampler: Callable, transform: Callable, size: Any, num_clips: int):
        self.sources = sources
        self.sampler = sampler
        self.transform = transform
        self.size = size
        self.num_clips = num_clips

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> dict[str, Any]:
        src = self.sources[i]
        start = time.perf_counter()
        try:
            with open_video(src, num_threads=1) as video:
                windows = equal_windows(video.metadata, self.num_clips)
                clips = read_clips(video, self.sampler, windows, size=self.size)
            decoded = time.perf_counter()
            frames = [self.transform(c.frames) for c in clips]
            seconds = {"decode": decoded - start, "transform": time.perf_counter() - decoded}
            return {"index": i, "source": src, "clips": frames, "timestamps": [c.timestamps for c in clips],
                    "error": None, "seconds": seconds}  # fmt: skip
        except Exception as e:  # noqa: BLE001 - a collection run records every unreadable file and goes on
            return {"index": i, "source": src, "clips": None, "timestamps": None, "error": f"{type(e).__name__}: {e}",
                    "seconds": {"decode": time.perf_counter() - start}}  # fmt: skip


def _refuse_custom_code(model: Any) -> None:
    """A ``--model`` HF directory whose config needs its own Python code is refused: nothing in a model directory
    is ever executed (``trust_remote_code`` stays off)."""
    if not isinstance(model, (str, os.PathLike)) or not (Path(model) / "config.json").is_file():
        return
    path = Path(model) / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the model config: {e}") from e
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: the model config must be a JSON object")
    from transformers import CONFIG_MAPPING

    model_type = cfg.get("model_type")
    if cfg.get("auto_map") or (model_type is not None and model_type not in CONFIG_MAPPING):
        what = "its auto_map names" if cfg.get("auto_map") else f"model_type {model_type!r} is not in transformers:"
        raise ConfigError(f"{path}: this model needs custom code ({what} Python files of the model directory); "
                          "vidvlm never runs code from a model directory (trust_remote_code stays off)")  # fmt: skip


def _identity(item: dict[str, Any]) -> dict[str, Any]:
    return item


def _batched(items: Iterable[Any], n: int) -> Iterator[list[Any]]:
    """Lists of ``n`` consecutive items, the last one shorter (``itertools.batched`` needs Python 3.12)."""
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def _add(timings: dict[str, float] | None, stage: str, seconds: float) -> None:
    if timings is not None:
        timings[stage] = timings.get(stage, 0.0) + seconds


def _stack(clips: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """``[B, T, 3, H, W]`` of equal-shape clips; in pinned memory when they go to a GPU (an asynchronous copy)."""
    if device.type != "cuda":
        return torch.stack(clips)
    out = torch.empty((len(clips), *clips[0].shape), dtype=clips[0].dtype, pin_memory=True)
    return torch.stack(clips, out=out)


def _encode_batch(
    encoder: Encoder, items: list[dict[str, Any]], batch_size: int, timings: dict[str, float] | None = None
) -> dict[int, list[torch.Tensor]]:
    """Run every clip of ``items`` through the encoder, batching only clips of equal shape; per item, per clip."""
    by_shape: dict[tuple[int, ...], list[tuple[int, int]]] = {}
    for pos, item in enumerate(items):
        for k, clip in enumerate(item["clips"] or []):
            by_shape.setdefault(tuple(clip.shape), []).append((pos, k))
    out: dict[int, list[torch.Tensor]] = {pos: [None] * len(it["clips"] or []) for pos, it in enumerate(items)}
    sync = timings is not None and encoder.device.type == "cuda"
    for units in by_shape.values():
        for s in range(0, len(units), batch_size):
            chunk = units[s : s + batch_size]
            start = time.perf_counter()
            video = _stack([items[p]["clips"][k] for p, k in chunk], encoder.device)
            video = video.to(encoder.device, non_blocking=True)
            if sync:  # only to attribute time to the copy; without timings the copy overlaps the host's work
                torch.cuda.synchronize(encoder.device)
            copied = time.perf_counter()
            feats = encoder(video)  # float32 CPU tensors: waits for the device
            _add(timings, "copy", copied - start)
            _add(timings, "forward", time.perf_counter() - copied)
            for (p, k), f in zip(chunk, feats, strict=True):
                out[p][k] = f
    return out


def _combine(clips: list[torch.Tensor], level: str) -> torch.Tensor:
    """Per-clip features -> one result: pooled averages the clips, other levels concatenate them in time."""
    if len(clips) == 1:
        return clips[0]
    if level == "pooled":
        return torch.stack(clips).mean(0)
    return torch.cat(clips, dim=1 if level == "layers" else 0)


def _check(level: str, layers: Sequence[int] | None, num_clips: int, batch_size: int, num_workers: int) -> None:
    if level not in LEVELS:
        raise ConfigError(f"level: {level!r} is not one of {list(LEVELS)}")
    if level == "layers" and not layers:
        raise ConfigError("layers: level 'layers' needs the list of layer indices to keep, e.g. layers=[-1, -4]")
    if num_clips < 1 or batch_size < 1 or num_workers < 0:
        raise ConfigError(f"num_clips, batch_size >= 1 and num_workers >= 0 required, got {num_clips}, "
                          f"{batch_size}, {num_workers}")  # fmt: skip


def _run(
    encoder: Encoder,
    todo: list[str],
    sampler: Any,
    size: Any,
    batch_size: int,
    num_workers: int,
    num_clips: int,
    worker_start: str | None = None,
    timings: dict[str, float] | None = None,
) -> Iterator[FeatureResult]:
    """Decode ``todo`` (already expanded paths) in workers and encode it, yielding results in order.

    With ``timings``, seconds are added per stage: ``startup`` (until the first batch arrives: worker start-up and
    its decoding), ``wait_for_data`` (the main process waiting for later batches), ``decode`` and ``transform``
    (summed over sources, in whichever process decoded them), ``copy`` (host to device), ``forward``.
    """
    data = _DecodeSet(todo, _build_sampler(sampler), encoder.transform, size, num_clips)
    # Workers decode one source at a time and the main process groups them into encoder batches: with a DataLoader
    # batch of `batch_size` sources, one worker decoded a whole batch while the others waited (8 long videos in a
    # batch of 8 kept one of two workers busy). Each worker may run two encoder batches ahead.
    loader = DataLoader(
        data,
        batch_size=None,
        num_workers=num_workers,
        collate_fn=_identity,
        worker_init_fn=functools.partial(worker_init, os.getpid()) if num_workers else None,
        pin_memory=False,  # batches are stacked into pinned memory by shape (_stack), after the workers
        multiprocessing_context=loader_context(worker_start, num_workers),
        persistent_workers=False,
        prefetch_factor=max(2, -(-2 * batch_size // num_workers)) if num_workers else None,
    )
    asked = time.perf_counter()
    batches = _batched(loader, batch_size)
    with torch.inference_mode():
        for n in itertools.count():
            items = next(batches, None)
            if items is None:
                break
            _add(timings, "wait_for_data" if n else "startup", time.perf_counter() - asked)
            for item in items:
                for stage, seconds in item["seconds"].items():
                    _add(timings, stage, seconds)
            feats = _encode_batch(encoder, items, batch_size, timings)
            for pos, item in enumerate(items):
                if item["error"] is not None:
                    yield FeatureResult(item["source"], None, None, item["error"])
                    continue
                yield FeatureResult(item["source"], _combine(feats[pos], encoder.level), torch.cat(item["timestamps"]))
            asked = time.perf_counter()


def iter_features(
    model: Any,
    sources: Sources,
    *,
    level: str = "pooled",
    sampler: Any = None,
    size: int | tuple[int, int] | None = None,
    batch_size: int = 8,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    num_clips: int = 1,
    layers: Sequence[int] | None = None,
    transform: Callable | None = None,
    weights: str | None = None,
    worker_start: str | None = None,
    timings: dict[str, float] | None = None,
) -> Iterator[FeatureResult]:
    """Stream features of a collection, one :class:`FeatureResult` per source, in source order.

    Takes the same arguments as :func:`extract_features`; use it when the results do not fit in memory.
    """
    _check(level, layers, num_clips, batch_size, num_workers)
    _refuse_custom_code(model)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    encoder = resolve_model(model, level, layers, device, weights, transform)
    yield from _run(encoder, list_sources(sources), sampler, size, batch_size, num_workers, num_clips, worker_start,
                    timings)  # fmt: skip


def extract_features(model: Any, sources: Sources, **kwargs: Any) -> list[FeatureResult]:
    """Extract features of videos and images (an image is a one-frame video).

    Args:
        model: a vidvlm checkpoint directory or model (a family with ``encode_video``), or a bare vision tower:
            an HF CLIP/SigLIP vision directory or ``"timm:<name>"`` (with ``weights=`` a local file).
        sources: paths, folders (recursive), ``.txt`` file lists, ``.jsonl``/``.csv`` manifests, mixed.
        level: ``"pooled"`` one ``[D]`` per source (the family's ``encode_video``; for a bare tower the mean over
            frames of the per-frame ``pooler_output``); ``"frames"`` ``[T, D]`` (the tower's per-frame
            ``pooler_output``); ``"tokens"`` ``[M, D]`` (the family's pooled spatiotemporal tokens; for a bare
            tower every last-layer token, ``M = T * N``); ``"layers"`` ``[L, T, N, D]`` (hidden states ``layers``).
        sampler: a frame count (uniform sampling), a :class:`~vidvlm.data.sampling.SamplerConfig`, any sampler
            callable, or None (8 uniform frames). Short videos keep fewer frames; an image is one frame.
        size: decode-time resize (short side, or ``(H, W)``) before the transform; None decodes at full size.
        batch_size: clips per encoder call.
        num_workers: DataLoader decoding workers (0 decodes in this process).
        device: where the encoder runs (default CUDA when available).
        num_clips: test-time clips: the video is cut into ``num_clips`` equal windows and each is sampled;
            ``pooled`` averages the clips' embeddings, other levels concatenate them in time.
        layers: hidden-state indices for ``level="layers"`` (0 = embeddings, -1 = last block; negatives allowed).
        transform: override the model's eval transform (uint8 ``[T,3,H,W]`` -> float ``[T,3,H,W]``).
        weights: weights file for a ``timm:<name>`` tower.
        worker_start: how DataLoader workers start: None means ``"forkserver"`` where available (clean workers,
            a few seconds to start: they import torch), or ``"fork"`` (instant, but a forked worker inherits the
            caller's threads; we saw workers SIGSEGV after a transformers ``load_video`` + CLIP loop had run in
            the same process), or ``"spawn"``. Except with fork, ``sampler`` and ``transform`` must be picklable.
        timings: a dict to which the seconds of each stage are added (``startup``, ``wait_for_data``, ``decode``,
            ``transform``, ``copy``, ``forward``; see ``benchmarks/bench_extract.py``), or None.

    Returns:
        One :class:`FeatureResult` per source, in order; unreadable sources have ``error`` set and no features.
        ``torch.stack([r.features for r in results if r.ok])`` gives the ``[V, D]`` matrix at level ``pooled``.
    """
    return list(iter_features(model, sources, **kwargs))


@torch.inference_mode()
def extract_text_features(model: Any, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """Text embeddings ``[len(texts), D]`` from a family's ``encode_text`` (for text-to-video retrieval)."""
    model = model.model if isinstance(model, Encoder) else model
    if isinstance(model, (str, os.PathLike)):
        import vidvlm.models.registry as registry

        model = registry.load(model)
    if not isinstance(model, VLMModel):
        raise ConfigError(f"model: {type(model).__name__} is not a vidvlm family; text features need one")
    model.require(EMBED_TEXT, "extract text features")
    model.eval()
    texts = list(texts)
    return torch.cat([model.encode_text(texts[i : i + batch_size]).float().cpu() for i in range(0, len(texts),
                                                                                             batch_size)])  # fmt: skip


@dataclasses.dataclass
class ExtractSummary:
    """What :func:`extract_to_dir` did: sources ``done`` now, ``skipped`` (done before), ``failed``, seconds."""

    done: int
    skipped: int
    failed: int
    seconds: float

    @property
    def videos_per_second(self) -> float:
        return (self.done + self.failed) / self.seconds if self.seconds > 0 else 0.0


def extract_to_dir(
    model: Any,
    sources: Sources,
    out_dir: str | os.PathLike,
    *,
    shard_size: int = 1000,
    retry_failed: bool = False,
    progress: bool = False,
    on_shard: Callable[[int], None] | None = None,
    settings: dict[str, Any] | None = None,
    **kwargs: Any,
) -> ExtractSummary:
    """Extract features into resumable safetensors shards under ``out_dir`` (see :mod:`vidvlm.extract.shards`).

    Args:
        model, sources, kwargs: as for :func:`extract_features`.
        out_dir: output directory; a rerun skips every source already in its index.
        shard_size: sources per shard (an interruption loses at most one shard's work).
        retry_failed: recompute sources whose earlier attempt failed.
        progress: show a progress bar (tqdm, videos/s).
        on_shard: called with the number of shards committed so far, after each commit (shards are written in a
            background thread; the call comes in this thread when the commit is collected: at the next shard or at
            the end).
        settings: extra identifying settings stored in ``extract.json`` (e.g. the model path as typed).
    """
    opts = {"level": "pooled", "sampler": None, "size": None, "batch_size": 8, "num_workers": 0, "device": None,
            "num_clips": 1, "layers": None, "transform": None, "weights": None, "worker_start": None,
            "timings": None}  # fmt: skip
    unknown = set(kwargs) - set(opts)
    if unknown:
        raise TypeError(f"extract_to_dir() got unexpected keyword arguments {sorted(unknown)}")
    opts.update(kwargs)
    _check(opts["level"], opts["layers"], opts["num_clips"], opts["batch_size"], opts["num_workers"])
    _refuse_custom_code(model)
    if Path(out_dir).exists() and not Path(out_dir).is_dir():  # before loading the model
        raise ConfigError(f"{out_dir}: the output must be a directory, and this is an existing file")
    device = torch.device(opts["device"] or ("cuda" if torch.cuda.is_available() else "cpu"))
    encoder = resolve_model(model, opts["level"], opts["layers"], device, opts["weights"], opts["transform"])
    ident = {k: opts[k] for k in ("level", "size", "num_clips", "layers")}
    ident["sampler"] = repr(_build_sampler(opts["sampler"]))
    ident["model"] = str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__
    ident.update(settings or {})
    from tqdm import tqdm

    failed = 0
    start = time.perf_counter()
    # Shards are committed in a writer thread: the encoder does not wait for serialisation and fsync.
    with ShardWriter(out_dir, ident, shard_size=shard_size, retry_failed=retry_failed, background=True,
                     on_commit=on_shard) as writer:  # fmt: skip
        all_sources = list_sources(sources)
        skipped = sum(s in writer.done for s in all_sources)
        todo = [s for s in all_sources if s not in writer.done]
        results = _run(encoder, todo, opts["sampler"], opts["size"], opts["batch_size"], opts["num_workers"],
                       opts["num_clips"], opts["worker_start"], opts["timings"])  # fmt: skip
        with tqdm(total=len(todo), unit="video", desc="extract", disable=not progress, dynamic_ncols=True) as bar:
            for result in results:
                writer.add(result)
                failed += not result.ok
                bar.update(1)
                bar.set_postfix(failed=failed, refresh=False)
    _add(opts["timings"], "write_shards", writer.seconds_writing)
    _add(opts["timings"], "wait_for_writer", writer.seconds_waiting)
    return ExtractSummary(writer.written, skipped, writer.failed, time.perf_counter() - start)
