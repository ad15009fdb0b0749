"""Text <-> video retrieval and zero-shot classification from embeddings.

Metrics are computed from normalised embeddings so that any family with ``encode_video`` / ``encode_text`` can be
evaluated; :func:`embed_dataset` produces them from a model and a dataset.

Rank convention: the rank of the correct item is ``1 + (number of candidates scoring strictly higher)``, so ties
count in the model's favour and the result does not depend on sort stability. With several captions per video:

* text -> video: each caption is a query; its target is its video.
* video -> text: each video is a query; its rank is the best rank among its captions (the usual MSR-VTT / COCO
  convention: a video is retrieved at K when any of its captions is in the top K).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a video of {}.",
    "a video of a {}.",
    "a clip showing {}.",
    "a photo of {}.",
)


def ranks_to_metrics(ranks: Tensor, prefix: str, ks: Sequence[int]) -> dict[str, float]:
    """``{prefix}_R@K`` (percent), ``{prefix}_median_rank`` and ``{prefix}_mean_rank`` of 1-based ``ranks [N]``."""
    ranks = ranks.double()
    out = {f"{prefix}_R@{k}": float((ranks <= k).double().mean() * 100) for k in ks}
    out[f"{prefix}_median_rank"] = float(ranks.median())  # torch.median takes the lower middle value
    out[f"{prefix}_mean_rank"] = float(ranks.mean())
    return out


def retrieval_ranks(video: Tensor, text: Tensor, text_to_video: Tensor) -> tuple[Tensor, Tensor]:
    """1-based ranks of the correct items in both directions.

    Args:
        video: ``[V, D]`` embeddings (normalised, or any scores via the dot product).
        text: ``[Tx, D]`` embeddings.
        text_to_video: long ``[Tx]``, the video index of each text; every video needs at least one text.

    Returns:
        ``t2v [Tx]`` rank of each caption's video among the V videos, ``v2t [V]`` best rank of a video's captions
        among the Tx texts.
    """
    text_to_video = text_to_video.to(device=video.device, dtype=torch.long)
    v = video.shape[0]
    if text_to_video.shape != (text.shape[0],):
        raise ValueError(f"text_to_video: expected shape [{text.shape[0]}], got {tuple(text_to_video.shape)}")
    if text.shape[0] and (int(text_to_video.min()) < 0 or int(text_to_video.max()) >= v):
        raise ValueError(f"text_to_video: indices must lie in [0, {v})")
    if bool((torch.bincount(text_to_video, minlength=v) == 0).any()):
        raise ValueError("text_to_video: every video needs at least one caption")
    sim = text.float() @ video.float().T  # [Tx, V]
    correct = sim.gather(1, text_to_video[:, None])  # [Tx, 1]
    t2v = (sim > correct).sum(1) + 1
    sim_vt = sim.T  # [V, Tx]
    pos = torch.zeros_like(sim_vt, dtype=torch.bool)
    pos[text_to_video, torch.arange(text.shape[0], device=video.device)] = True
    best_pos = sim_vt.masked_fill(~pos, float("-inf")).amax(1, keepdim=True)  # [V, 1]
    # a video's rank: how many texts beat its best caption (its other captions never score higher than the best)
    v2t = (sim_vt > best_pos).sum(1) + 1
    return t2v, v2t


def retrieval_metrics(
    video: Tensor, text: Tensor, text_to_video: Tensor | None = None, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@K (in percent), median and mean rank for text->video (``t2v_*``) and video->text (``v2t_*``).

    Args:
        video: ``[V, D]`` video embeddings.
        text: ``[Tx, D]`` text embeddings.
        text_to_video: long ``[Tx]`` video index of each text (None: one caption per video, ``Tx == V``).
        ks: the K of Recall@K.

    Returns:
        e.g. ``{"t2v_R@1": 42.0, ..., "t2v_median_rank": 2.0, "t2v_mean_rank": 7.3, "v2t_R@1": ...}``.
    """
    if text_to_video is None:
        if text.shape[0] != video.shape[0]:
            raise ValueError(f"retrieval: {text.shape[0]} texts for {video.shape[0]} videos needs text_to_video")
        text_to_video = torch.arange(video.shape[0])
    t2v, v2t = retrieval_ranks(video, text, text_to_video)
    return {**ranks_to_metrics(t2v, "t2v", ks), **ranks_to_metrics(v2t, "v2t", ks)}


@torch.no_grad()
def zero_shot_classifier(
    model: Any, class_names: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES
) -> Tensor:
    """Class embeddings ``[K, D]``: each class's prompts (``template.format(name)``) are embedded with
    ``model.encode_text``, averaged, and re-normalised."""
    if not class_names or not templates:
        raise ValueError("zero_shot_classifier: needs at least one class name and one template")
    prompts = [tpl.format(name) for name in class_names for tpl in templates]
    emb = model.encode_text(prompts).float()
    emb = emb.reshape(len(class_names), len(templates), -1).mean(1)
    return torch.nn.functional.normalize(emb, dim=-1)


def zero_shot_accuracy(
    video: Tensor, classifier: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Top-K accuracy (percent) of ``argmax(video @ classifier.T)``.

    Args:
        video: ``[V, D]`` video embeddings.
        classifier: ``[K, D]`` class embeddings from :func:`zero_shot_classifier`.
        labels: long ``[V]`` true class of each video.
        ks: the K of top-K; a K above the number of classes counts every video as correct.

    Returns:
        ``{"top1": ..., "top5": ...}``. A prediction is in the top K when fewer than K classes score strictly higher
        than the true class (ties count in the model's favour, as in :func:`retrieval_ranks`).
    """
    labels = labels.to(device=video.device, dtype=torch.long)
    if labels.shape != (video.shape[0],):
        raise ValueError(f"labels: expected shape [{video.shape[0]}], got {tuple(labels.shape)}")
    if bool((labels < 0).any()) or bool((labels >= classifier.shape[0]).any()):
        raise ValueError(f"labels: every label must lie in [0, {classifier.shape[0]})")
    scores = video.float() @ classifier.float().T
    rank = (scores > scores.gather(1, labels[:, None])).sum(1) + 1
    return {f"top{k}": float((rank <= k).double().mean() * 100) for k in ks}


def batch_captions(batch: dict[str, Any]) -> list[list[str]]:
    """Each clip's captions in a collated batch; a clip without any falls back to its ``text`` (every video needs a
    positive)."""
    return [list(c) or [batch["text"][i]] for i, c in enumerate(batch.get("captions") or [[t] for t in batch["text"]])]


@torch.no_grad()
def embed_batch(model: Any, batch: dict[str, Any], device: str | torch.device) -> dict[str, Any]:
    """Embeddings of one collated batch's B clips and of all their captions.

    Returns:
        ``video [B, D]``, ``text [Tx, D]`` (float32, on the CPU; the captions of clip 0, then clip 1, ...),
        ``captions`` (B lists, as :func:`batch_captions`), ``labels`` long ``[B]`` (-1 where the batch has none) and
        ``negatives`` (B lists of the batch's hard negative captions, not embedded; empty where it has none).
    """
    video = model.encode_video(batch["video"].to(device), batch.get("frame_mask"))  # a mask wherever it lies
    caps = batch_captions(batch)
    text = model.encode_text([c for per_video in caps for c in per_video])
    labels = torch.as_tensor(batch.get("label", torch.full((video.shape[0],), -1))).long().cpu()
    negatives = batch.get("negatives") or [[] for _ in caps]
    return {"video": video.float().cpu(), "text": text.float().cpu(), "captions": caps, "labels": labels,
            "negatives": [list(n) for n in negatives]}  # fmt: skip


def join_embeddings(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One result of :func:`embed_batch` from several (in order), with ``text_to_video`` long ``[Tx]``.

    Raises:
        ValueError: when there are no clips.
    """
    if not parts:
        raise ValueError("embed_dataset: the dataset is empty")
    captions = [c for part in parts for c in part["captions"]]
    return {
        "video": torch.cat([p["video"] for p in parts]),
        "text": torch.cat([p["text"] for p in parts]),
        "text_to_video": torch.tensor([v for v, caps in enumerate(captions) for _ in caps], dtype=torch.long),
        "labels": torch.cat([p["labels"] for p in parts]),
        "captions": captions,
        "negatives": [n for part in parts for n in part["negatives"]],
    }


@torch.no_grad()
def embed_dataset(
    model: Any,
    data: Iterable[dict[str, Any]],
    *,
    batch_size: int = 8,
    num_workers: int = 0,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Embed every video and every caption of a dataset (or an iterable of collated batches).

    Args:
        model: a family with ``encode_video(video, frame_mask)`` and ``encode_text(list[str])``.
        data: a ``torch.utils.data.Dataset`` of samples (the ``vidvlm.data.datasets`` contract; batched here with
            ``collate_video_text``) or any other iterable of already collated batches (e.g. a DataLoader).
        batch_size: batch size when ``data`` is a dataset.
        num_workers: loader workers when ``data`` is a dataset.
        device: where to run (default: the model's device).

    Returns:
        ``video [V, D]``, ``text [Tx, D]``, ``text_to_video`` long ``[Tx]``, ``labels`` long ``[V]`` (on the CPU),
        ``captions`` (V lists of strings: the texts embedded for each clip, in the order of ``text``) and
        ``negatives`` (V lists: each clip's hard negative captions, empty where the data has none).
    """
    if isinstance(data, torch.utils.data.Dataset):
        from vidvlm.data.collate import collate_video_text

        data = torch.utils.data.DataLoader(
            data, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_video_text
        )
    if device is None:
        device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        parts = [embed_batch(model, batch, device) for batch in data]
    finally:
        model.train(was_training)
    return join_embeddings(parts)


__all__ = [
    "batch_captions",
    "embed_batch",
    "join_embeddings",
    "DEFAULT_TEMPLATES",
    "retrieval_ranks",
    "retrieval_metrics",
    "ranks_to_metrics",
    "zero_shot_classifier",
    "zero_shot_accuracy",
    "embed_dataset",
]
