"""Periodic evaluation during training: validation loss on every rank, retrieval on the main process."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

if TYPE_CHECKING:  # pragma: no cover
    from vidvlm.train.trainer import Trainer


def _loader(trainer: Trainer, dataset: Dataset) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=trainer.cfg.data.batch_size,
        shuffle=False,
        collate_fn=trainer.collate,
        num_workers=trainer.cfg.data.num_workers,
    )


def _limit(trainer: Trainer, dataset: Dataset) -> Dataset:
    cap = trainer.cfg.eval_batches * trainer.cfg.data.batch_size * trainer.acc.num_processes
    return Subset(dataset, range(min(cap, len(dataset)))) if cap else dataset


@torch.no_grad()
def validation_loss(trainer: Trainer, dataset: Dataset) -> dict[str, float]:
    """Mean of each ``*_loss`` over the validation set, each rank taking every ``world``-th sample.

    The unwrapped model is used, so ranks with one batch more or less never wait on each other; one all-reduce
    at the end combines the sums.
    """
    acc = trainer.acc
    model = acc.unwrap_model(trainer.model)
    model.eval()
    dataset = _limit(trainer, dataset)
    shard = Subset(dataset, range(acc.process_index, len(dataset), acc.num_processes))
    sums: dict[str, float] = {}
    count = 0
    for batch in _loader(trainer, shard):
        batch.pop("num_replaced", None)
        batch = {k: v.to(acc.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        with acc.autocast():
            out = model(batch)
        n = len(batch["index"]) if "index" in batch else 1
        for k, v in out.items():
            if k.endswith("_loss"):
                sums[k] = sums.get(k, 0.0) + float(v.float()) * n
        count += n
    keys = sorted(sums)
    totals = torch.tensor([count] + [sums[k] for k in keys], dtype=torch.float64, device=acc.device)
    totals = acc.reduce(totals, reduction="sum")
    if totals[0] == 0:
        return {}
    out = {k: float(totals[i + 1] / totals[0]) for i, k in enumerate(keys)}
    out["loss"] = sum(out.values())
    return out


@torch.no_grad()
def embedding_metrics(
    model: Any, dataset: Dataset, batch_size: int, retrieval: bool = True, variant_words: list[str] | None = None
) -> dict[str, float]:
    """Retrieval recall (percent, ``t2v_R@1`` ...) and caption-variant accuracy of an embedding model.

    Args:
        model: has ``encode_video(video [B,T,3,H,W], frame_mask) -> [B,D]`` and ``encode_text(list[str]) -> [B,D]``.
        dataset: evaluation samples (deterministic).
        batch_size: evaluation batch size.
        retrieval: compute text<->video recall over the whole dataset.
        variant_words: see :class:`~vidvlm.train.config.EvalConfig`; adds ``variant_acc`` (percent).
    """
    from vidvlm.eval.retrieval import embed_dataset, retrieval_metrics

    emb = embed_dataset(model, dataset, batch_size=batch_size)
    out: dict[str, float] = {}
    captions = [list(dataset[i]["captions"]) for i in range(len(dataset))]
    if retrieval:
        out.update(retrieval_metrics(emb["video"], emb["text"], emb["text_to_video"]))
        out.update(caption_recall(emb["video"], emb["text"], captions))
    if variant_words:
        out.update(variant_accuracy(model, emb["video"], [c[0] for c in captions], variant_words))
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


def evaluate(trainer: Trainer, dataset: Dataset) -> dict[str, Any]:
    """Validation loss, plus retrieval for contrastive models; every rank calls this."""
    metrics = validation_loss(trainer, dataset)
    model = trainer.acc.unwrap_model(trainer.model)
    family = getattr(getattr(model, "config", None), "family", None)
    ecfg = trainer.cfg.eval
    if family == "contrastive" and (ecfg.retrieval or ecfg.variant_words):
        if trainer.acc.is_main_process:
            metrics.update(
                embedding_metrics(
                    model, _limit(trainer, dataset), trainer.cfg.data.batch_size, ecfg.retrieval, ecfg.variant_words
                )
            )
        trainer.acc.wait_for_everyone()
    return metrics
