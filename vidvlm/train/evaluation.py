"""Evaluation of a model on a dataset: validation loss (sharded over ranks), retrieval for embedding models and,
on request, captions and answers for generating models (the metrics ``tools/eval.py`` reports).

Nothing here knows the trainer: :func:`evaluate` takes a model, a dataset and, under distributed training, the
``accelerate.Accelerator`` whose ranks share the work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from vidvlm.devices import batch_to_device
from vidvlm.errors import ConfigError
from vidvlm.models.base import EMBED_TEXT, EMBED_VIDEO, GENERATE, VLMModel
from vidvlm.train.data import CountingCollate

# What a training collate adds to a batch that is not model input.
_COUNT_KEYS = CountingCollate.KEYS


def limit(dataset: Dataset, max_batches: int, batch_size: int, world_size: int = 1) -> Dataset:
    """The first ``max_batches`` global batches of ``dataset`` (all of it when ``max_batches`` is 0)."""
    cap = max_batches * batch_size * world_size
    return Subset(dataset, range(min(cap, len(dataset)))) if cap else dataset


def _default_collate() -> Callable[[list[dict]], dict]:
    from vidvlm.data.collate import collate_video_text  # late: the data layer decodes video

    return collate_video_text


@torch.no_grad()
def validation_loss(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 8,
    collate_fn: Callable[[list[dict]], dict] | None = None,
    num_workers: int = 0,
    accelerator: Any = None,
) -> dict[str, float]:
    """Mean of each ``*_loss`` of ``model(batch)`` over ``dataset``, plus their sum as ``loss``.

    With an ``accelerator``, rank ``r`` takes every ``world``-th sample from ``r`` and one all-reduce combines the
    sums, so ranks with a batch more or less never wait on each other (pass the unwrapped model: no DDP hooks);
    every rank must call this. Without one, the model runs on its own device.
    """
    sums, count, _, _ = _shard_pass(model, dataset, batch_size, collate_fn, num_workers, accelerator, embed=False)
    return _mean_losses(sums, count, model, accelerator)


@torch.no_grad()
def _shard_pass(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int,
    collate_fn: Callable[[list[dict]], dict] | None,
    num_workers: int,
    accelerator: Any,
    embed: bool,
    rows: Sequence[Any] | None = None,
) -> tuple[dict[str, float], int, list[dict[str, Any]], dict[str, list]]:
    """One pass over this rank's shard (every ``world``-th sample from ``rank``): each batch is decoded once and
    gives its losses, with ``embed`` its embeddings (:func:`vidvlm.eval.retrieval.embed_batch`) and, given the
    dataset's manifest ``rows``, its captions and answers (:func:`vidvlm.eval.qa.generate_answers`; questions only
    when the model answers them).

    Returns:
        (sum of each ``*_loss`` weighted by batch size, samples seen, the embedding parts in shard order, the
        generated ``{"captions": [...], "qa": [...]}``).
    """
    from vidvlm.eval.qa import generate_answers  # late: keeps the trainer's import light
    from vidvlm.eval.retrieval import embed_batch

    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    device = accelerator.device if accelerator is not None else _device(model)
    model.eval()
    shard = Subset(dataset, range(rank, len(dataset), world))
    loader = DataLoader(
        shard,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collate_fn or _default_collate(),
        num_workers=num_workers,
    )
    sums: dict[str, float] = {}
    count = 0
    parts: list[dict[str, Any]] = []
    generated: dict[str, list] = {"captions": [], "qa": []}
    ask = rows is not None and model.answers_questions()
    for batch in loader:
        batch = batch_to_device({k: v for k, v in batch.items() if k not in _COUNT_KEYS}, device)  # as in training
        with accelerator.autocast() if accelerator is not None else nullcontext():
            out = model(batch)
            if rows is not None:
                for k, v in generate_answers(model, [batch], rows, batch_size, device, questions=ask).items():
                    generated[k].extend(v)
        n = len(batch["index"]) if "index" in batch else 1
        for k, v in out.items():
            if k.endswith("_loss"):
                sums[k] = sums.get(k, 0.0) + float(v.float()) * n
        count += n
        if embed:
            parts.append(embed_batch(model, batch, device))
    return sums, count, parts, generated


def _mean_losses(sums: dict[str, float], count: int, model: nn.Module, accelerator: Any) -> dict[str, float]:
    """The per-sample means of the summed losses over every rank (one all-reduce), plus their sum as ``loss``."""
    device = accelerator.device if accelerator is not None else _device(model)
    keys = sorted(sums)
    totals = torch.tensor([count] + [sums[k] for k in keys], dtype=torch.float64, device=device)
    if accelerator is not None:
        totals = accelerator.reduce(totals, reduction="sum")
    if totals[0] == 0:
        return {}
    out = {k: float(totals[i + 1] / totals[0]) for i, k in enumerate(keys)}
    out["loss"] = sum(out.values())
    return out


def can_embed(model: nn.Module) -> bool:
    """Whether ``model`` declares both video and text embedding (retrieval needs both)."""
    return isinstance(model, VLMModel) and model.can(EMBED_VIDEO) and model.can(EMBED_TEXT)


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 8,
    collate_fn: Callable[[list[dict]], dict] | None = None,
    num_workers: int = 0,
    max_batches: int = 0,
    retrieval: bool = True,
    variant_words: Sequence[str] = (),
    generation: bool = False,
    accelerator: Any = None,
) -> dict[str, float]:
    """Validation loss of ``model`` on ``dataset`` and, when it embeds video and text, retrieval metrics; with
    ``generation``, its captions and answers scored as ``tools/eval.py`` scores them.

    Every sample is read (decoded) once: each rank takes its shard of the dataset in one pass that computes the
    losses, for embedding models the embeddings and, with ``generation``, the captions and answers of each batch;
    the main process gathers them and computes retrieval and the generation metrics over the whole set.

    Args:
        model: any module with ``forward(batch) -> {"*_loss": ...}`` (a wrapped model is unwrapped by
            ``accelerator``); retrieval runs when it declares ``EMBED_VIDEO`` and ``EMBED_TEXT``.
        dataset: evaluation samples (deterministic).
        batch_size: samples per process per batch.
        collate_fn: batch collation (default: ``vidvlm.data.collate.collate_video_text``).
        num_workers: loader workers.
        max_batches: cap on global batches (0: the whole dataset).
        retrieval: text<->video recall (embedding models).
        variant_words: see :class:`~vidvlm.train.config.EvalConfig` (embedding models).
        generation: caption every clip and, once the model answers questions (``answers_questions()``), answer
            its manifest row's ``qa`` (families that generate; ``dataset`` must have manifest ``rows``).
        accelerator: shares the work over its ranks (every rank calls this).

    Returns:
        ``loss``, each ``*_loss``, for embedding models ``t2v_R@1`` ... (percent) and ``variant_acc``, and with
        ``generation`` (on the main process) :func:`vidvlm.eval.qa.generation_metrics`' ``caption_cider``,
        ``caption_exact_match``, ``qa_accuracy``, ``qa_{type}_accuracy`` ...
    """
    if accelerator is not None:
        model = accelerator.unwrap_model(model)
    world = accelerator.num_processes if accelerator is not None else 1
    rows = generation_rows(model, dataset) if generation else None
    dataset = limit(dataset, max_batches, batch_size, world)
    embed = can_embed(model) and (retrieval or bool(variant_words))
    sums, count, parts, generated = _shard_pass(model, dataset, batch_size, collate_fn, num_workers, accelerator,
                                                embed, rows)  # fmt: skip
    metrics = _mean_losses(sums, count, model, accelerator)
    if rows is not None:
        generated = _gather_generated(generated, accelerator)
        if generated is not None and generated["captions"]:
            from vidvlm.eval.qa import generation_metrics

            metrics.update(generation_metrics(generated))
    if embed:
        parts = _gather_in_order(parts, accelerator)
        if parts:  # None on the other ranks; empty when the dataset is
            from vidvlm.eval.retrieval import join_embeddings

            metrics.update(embedding_metrics(model, join_embeddings(parts), retrieval, list(variant_words)))
        if accelerator is not None:
            accelerator.wait_for_everyone()
    return metrics


def generation_rows(model: nn.Module, dataset: Dataset) -> Sequence[Any]:
    """The manifest rows that ``generate_answers`` reads (references, questions) of ``dataset``; refuses a model
    that cannot generate or a dataset without rows, naming the ``eval.generation`` key."""
    if not isinstance(model, VLMModel):
        raise ConfigError(f"eval.generation: {type(model).__name__} is not a vidvlm model and cannot generate text")
    try:
        model.require(GENERATE, "caption the validation clips")
    except ConfigError as e:
        raise ConfigError(f"eval.generation: {e}") from e
    rows = getattr(dataset, "rows", None)
    if rows is None:
        raise ConfigError(f"eval.generation: the validation dataset ({type(dataset).__name__}) has no manifest rows")
    return rows


def _gather_generated(generated: dict[str, list], accelerator: Any) -> dict[str, list] | None:
    """Every rank's captions and answers on the main process (None elsewhere); the metrics do not depend on
    their order."""
    if accelerator is None or accelerator.num_processes == 1:
        return generated
    from accelerate.utils import gather_object

    per_rank = gather_object([generated])
    if not accelerator.is_main_process:
        return None
    return {k: [item for part in per_rank for item in part[k]] for k in ("captions", "qa")}


def _gather_in_order(parts: list[dict[str, Any]], accelerator: Any) -> list[dict[str, Any]] | None:
    """Every rank's embedding parts on the main process, one part per sample in dataset order (None elsewhere).

    Rank ``r`` of ``w`` holds samples ``r, r + w, r + 2w, ...`` (:func:`_shard_pass`), so sample ``i`` is item
    ``i // w`` of rank ``i % w``.
    """
    if accelerator is None or accelerator.num_processes == 1:
        return parts
    from accelerate.utils import gather_object

    samples = [_split_part(p) for p in parts]
    per_rank = gather_object([[s for part in samples for s in part]])  # one list per rank, on every rank
    if not accelerator.is_main_process:
        return None
    world, total = len(per_rank), sum(len(r) for r in per_rank)
    return [per_rank[i % world][i // world] for i in range(total)]


def _split_part(part: dict[str, Any]) -> list[dict[str, Any]]:
    """One :func:`~vidvlm.eval.retrieval.embed_batch` result as one result per clip."""
    out, start = [], 0
    for i, caps in enumerate(part["captions"]):
        out.append(
            {
                "video": part["video"][i : i + 1],
                "text": part["text"][start : start + len(caps)],
                "captions": [caps],
                "labels": part["labels"][i : i + 1],
                "negatives": part["negatives"][i : i + 1],
            }
        )
        start += len(caps)
    return out


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def embedding_metrics(
    model: Any, emb: dict[str, Any], retrieval: bool = True, variant_words: list[str] | None = None
) -> dict[str, float]:
    """Retrieval recall (percent, ``t2v_R@1`` ...) and caption-variant accuracy of an embedding model.

    Args:
        model: has ``encode_text(list[str]) -> [B,D]`` (for the variants).
        emb: the embeddings of a dataset (:func:`vidvlm.eval.retrieval.embed_dataset`'s result: ``video``,
            ``text``, ``text_to_video``, ``captions``, ``negatives``).
        retrieval: compute text<->video recall over the whole dataset.
        variant_words: see :class:`~vidvlm.train.config.EvalConfig`; adds ``variant_acc`` (percent).

    When some clip has hard negatives, :func:`negative_accuracy`'s metrics are added.
    """
    from vidvlm.eval.retrieval import retrieval_metrics

    out: dict[str, float] = {}
    captions = emb["captions"]
    if retrieval:
        out.update(retrieval_metrics(emb["video"], emb["text"], emb["text_to_video"]))
        out.update(caption_recall(emb["video"], emb["text"], captions))
    if variant_words:
        out.update(variant_accuracy(model, emb["video"], [c[0] for c in captions], variant_words))
    out.update(negative_accuracy(model, emb["video"], [c[0] for c in captions], emb["negatives"]))  # {} when none
    return out


def caption_recall(video: torch.Tensor, text: torch.Tensor, captions: list[list[str]]) -> dict[str, float]:
    """Text->video R@1 (percent) where any clip carrying the query caption counts as a hit (``t2v_caption_R@1``).

    Synthetic and templated data repeat captions across clips; plain R@1 cannot tell which of the equally described
    clips is "the" target, so its ceiling is below 100.

    Args:
        video: ``[V, D]`` clip embeddings.
        text: ``[Tx, D]`` embeddings of every caption of every clip, in order (as ``embed_dataset`` returns them).
        captions: the V clips' captions.
    """
    flat = [c for caps in captions for c in caps]
    if len(flat) != text.shape[0]:  # the embedder used other captions: the metric is undefined
        return {}
    sim = torch.nn.functional.normalize(text.float(), dim=-1) @ torch.nn.functional.normalize(video.float(), dim=-1).T
    top = sim.argmax(1).tolist()
    hits = sum(flat[q] in captions[v] for q, v in enumerate(top))
    return {"t2v_caption_R@1": 100.0 * hits / len(top)}


@torch.no_grad()
def variant_accuracy(model: Any, video: torch.Tensor, captions: list[str], words: list[str]) -> dict[str, float]:
    """How often a clip's own caption outscores the same caption with its variant word swapped for each other word.

    Only one word is swapped: the last of ``words`` in the caption. In a caption of several shapes the others keep
    their true word, so the metric asks about the last-named shape only (the per-kind ``negatives_pair_acc`` of
    :func:`negative_accuracy` is the fuller test for scenes).

    Args:
        video: ``[V, D]`` clip embeddings.
        captions: V captions (clips whose caption holds none of ``words`` are left out).
        words: the alternatives, e.g. ``["left", "right", "up", "down"]``.

    Returns:
        ``variant_acc`` (percent; chance is ``100 / len(words)``) and ``variant_n`` (clips scored).
    """
    correct, total = 0, 0
    for v, caption in zip(video, captions, strict=True):
        tokens = caption.split()
        hits = [i for i, t in enumerate(tokens) if t in words]
        if not hits:
            continue
        pos = hits[-1]
        variants = [" ".join(tokens[:pos] + [w] + tokens[pos + 1 :]) for w in words]
        text = torch.nn.functional.normalize(model.encode_text(variants).float().cpu(), dim=-1)
        scores = text @ torch.nn.functional.normalize(v.float(), dim=-1)
        true = words.index(tokens[pos])
        correct += int((scores > scores[true]).sum() == 0)
        total += 1
    return {"variant_acc": 100.0 * correct / max(1, total), "variant_n": float(total)}


@torch.no_grad()
def negative_accuracy(
    model: Any, video: torch.Tensor, captions: list[str], negatives: list[list[str]], batch_size: int = 256
) -> dict[str, float]:
    """How often a clip's caption outscores its hard negatives (the manifest's ``negatives``; ARO / SugarCrepe style).

    Args:
        model: has ``encode_text(list[str]) -> [B, D]``.
        video: ``[V, D]`` clip embeddings.
        captions: V captions (each clip's first).
        negatives: V lists of negative captions (clips with none are left out).
        batch_size: texts encoded per call.

    Returns:
        ``negatives_acc`` (percent of clips whose caption outscores every one of its negatives),
        ``negatives_pair_acc`` (percent of caption-negative pairs the caption wins; ties lose) and ``negatives_n``
        (clips scored); empty when no clip has negatives.
    """
    scored = [i for i, negs in enumerate(negatives) if negs]
    if not scored:
        return {}
    texts = [t for i in scored for t in (captions[i], *negatives[i])]
    emb = torch.cat(
        [model.encode_text(texts[k : k + batch_size]).float().cpu() for k in range(0, len(texts), batch_size)]
    )
    emb = torch.nn.functional.normalize(emb, dim=-1)
    clips = torch.nn.functional.normalize(video.float().cpu(), dim=-1)
    wins_all, wins, pairs, start = 0, 0, 0, 0
    for i in scored:
        n = len(negatives[i])
        scores = emb[start : start + n + 1] @ clips[i]  # [1 + n]: the caption, then its negatives
        won = scores[1:] < scores[0]
        wins_all += int(won.all())
        wins += int(won.sum())
        pairs += n
        start += n + 1
    return {
        "negatives_acc": 100.0 * wins_all / len(scored),
        "negatives_pair_acc": 100.0 * wins / pairs,
        "negatives_n": float(len(scored)),
    }
