"""Text -> video retrieval re-ranked by a matching head (ALBEF / X-FM): the contrastive (ITC) similarity picks each
caption's top ``k`` clips, a model with the ``MATCH`` ability scores those ``k`` pairs with its fusion encoder, and
the ``k`` are re-ordered by that score; clips outside the top ``k`` keep their ITC order below them.

Ranks follow :mod:`vidvlm.eval.retrieval`: ``1 + (number of candidates scoring strictly higher)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from vidvlm.eval.retrieval import ranks_to_metrics, retrieval_ranks
from vidvlm.models.base import MATCH


def rerank_ranks(sim: Tensor, text_to_video: Tensor, k: int, pair_scores: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """1-based text -> video ranks after re-ranking each query's top ``k``.

    Args:
        sim: ``[Tx, V]`` ITC similarities (text rows, video columns).
        text_to_video: long ``[Tx]`` the correct video of each text.
        k: candidates re-ranked per text (at most V).
        pair_scores: ``(text_idx long [P], video_idx long [P]) -> [P]`` matching scores, higher = better match.

    Returns:
        long ``[Tx]``: the rank among the re-ordered top ``k`` when the correct video is in it, else its ITC rank.
    """
    tx, v = sim.shape
    k = max(1, min(k, v))
    target = text_to_video.to(sim.device).long()
    top = sim.topk(k, dim=1).indices  # [Tx, k]
    texts = torch.arange(tx, device=sim.device).repeat_interleave(k)
    scores = pair_scores(texts, top.flatten()).float().reshape(tx, k)
    hit = top == target[:, None]
    correct = scores.gather(1, hit.float().argmax(1, keepdim=True))  # [Tx, 1], any value where there is no hit
    itc = (sim > sim.gather(1, target[:, None])).sum(1) + 1
    return torch.where(hit.any(1), (scores > correct).sum(1) + 1, itc)


class VideoContexts:
    """Passes collated batches through unchanged while keeping each clip's matching context (``match_video``), so
    that one pass over the data serves both the ITC embeddings and the re-ranking.

    Args:
        model: a model with the ``MATCH`` ability.
        batches: collated batches (``video [B, T, 3, H, W]``, optional ``frame_mask [B, T]``).
    """

    def __init__(self, model: Any, batches: Iterable[dict[str, Any]]) -> None:
        model.require(MATCH, "re-rank retrieval")
        self.model, self.batches = model, batches
        self.tokens: list[Tensor] = []
        self.masks: list[Tensor] = []

    def __iter__(self) -> Iterator[dict[str, Any]]:
        device = next(self.model.parameters()).device
        for batch in self.batches:
            mask = batch.get("frame_mask")
            tokens, tmask = self.model.match_video(batch["video"].to(device), None if mask is None else mask.to(device))
            self.tokens.append(tokens)
            self.masks.append(tmask)
            yield batch

    def gathered(self) -> tuple[Tensor, Tensor]:
        """Every clip's context so far: tokens ``[V, M, Dv]`` and bool mask ``[V, M]``."""
        return torch.cat(self.tokens), torch.cat(self.masks)


@torch.no_grad()
def itm_rerank_metrics(
    model: Any,
    video_context: tuple[Tensor, Tensor],
    captions: Sequence[str],
    video: Tensor,
    text: Tensor,
    text_to_video: Tensor,
    k: int = 16,
    chunk: int = 256,
) -> dict[str, float]:
    """Text -> video recall with ITC alone and with the top ``k`` re-ranked by ``model.match_scores``.

    Args:
        model: a model with the ``MATCH`` ability.
        video_context: ``[V, M, Dv]`` tokens and ``[V, M]`` mask of every clip (:class:`VideoContexts`).
        captions: the Tx captions, in the order of ``text``.
        video: ``[V, E]`` ITC embeddings of the clips.
        text: ``[Tx, E]`` ITC embeddings of the captions.
        text_to_video: long ``[Tx]`` the clip of each caption.
        k: candidates re-ranked per caption.
        chunk: pairs scored per fusion call.

    Returns:
        ``t2v_R@{1,5,10}`` (ITC), ``t2v_itm_R@{1,5,10}`` (re-ranked), their median ranks and ``itm_k``.
    """
    model.require(MATCH, "re-rank retrieval")
    if len(captions) != text.shape[0]:
        raise ValueError(f"captions: {len(captions)} for {text.shape[0]} text embeddings")
    vt, vm = video_context
    tt, tm = model.match_text(list(captions))
    device = tt.device

    def pair_scores(ti: Tensor, vi: Tensor) -> Tensor:
        out = []
        for s in range(0, ti.shape[0], chunk):
            t, v = ti[s : s + chunk].to(device), vi[s : s + chunk].to(vt.device)
            out.append(model.match_scores(vt[v].to(device), vm[v].to(device), tt[t], tm[t]).cpu())
        return torch.cat(out)

    sim = text.float() @ video.float().T
    itc, _ = retrieval_ranks(video, text, text_to_video)
    reranked = rerank_ranks(sim.cpu(), text_to_video.cpu(), k, pair_scores)
    out = {k_: v_ for k_, v_ in ranks_to_metrics(itc, "t2v", (1, 5, 10)).items() if "mean" not in k_}
    out.update({k_: v_ for k_, v_ in ranks_to_metrics(reranked, "t2v_itm", (1, 5, 10)).items() if "mean" not in k_})
    out["itm_k"] = float(min(k, video.shape[0]))
    return out


__all__ = ["rerank_ranks", "VideoContexts", "itm_rerank_metrics"]
