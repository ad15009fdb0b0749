"""Named losses. Each returns a scalar tensor; a family returns them as ``{"<name>_loss": value}``.

Contrastive losses (:func:`clip_loss`, :func:`siglip_loss`) take L2-normalised embeddings and work the same in one
process and across processes:

* Across processes, features are gathered **with gradient** (``torch.distributed.nn.functional.all_gather``), so
  every rank's similarity matrix covers the global batch. The backward of that gather sums the gradients that all
  ranks send to a rank's local features; with ``local_loss=False`` every rank computes the same global loss, so the
  local gradient is ``world_size`` times the gradient of the global loss. DDP then averages parameter gradients over
  ranks, which divides that factor out: the update equals the single-process update on the global batch.
* ``local_loss=True`` (open_clip's ``--local-loss``): a rank only scores its own rows (its videos against all texts,
  its texts against all videos), which saves a ``world_size`` factor of logits. The mean of the ranks' losses is the
  global loss, and the gradients reach the same DDP-averaged result.

Several captions per video (multi-positive): ``text_to_video [Bt]`` maps every text to the index of its video in the
local batch (default ``arange(B)``, one caption each). Every caption of a video is its positive:

* text -> video is an ordinary softmax cross-entropy (each text has exactly one video);
* video -> text uses a target distribution spread evenly over the video's captions, i.e. the mean over its positives
  of ``-log softmax``; with one caption per video both directions reduce to CLIP's symmetric InfoNCE;
* SigLIP labels every (video, caption-of-that-video) pair +1 and every other pair -1.

Hard negative texts (NegCLIP): a text whose ``text_to_video`` entry is -1 describes no video of the batch (a caption
of one of them with a detail changed). It is a column of every video's video -> text softmax (and a -1 pair for
every video under SigLIP) but no row of text -> video, which has no target for it.

Processes may hold different numbers of videos and texts (a ragged last batch): the gather pads to the largest
and cuts the padding off. With ``local_loss`` and ragged batches the mean of the ranks' losses weights every rank
equally, so it differs slightly from the global loss.

The masking family's objectives (``vidvlm.models.masking``) are local to a process: :func:`hard_negatives` mines
ITM negatives from in-batch similarities, :func:`itm_loss` scores matched / not matched pairs, :func:`mlm_loss`
predicts hidden text tokens, :func:`masked_pixel_loss` hidden tubelets' (normalised) pixels and :func:`box_loss`
regresses a box (L1 + generalised IoU, as DETR and X-FM).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from vidvlm.devices import device_tensor, to_device
from vidvlm.errors import ConfigError


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _sizes(n: int, device: torch.device) -> list[int]:
    """The dim-0 size of every rank's tensor (ranks may hold ragged last batches)."""
    rank, world = _world()
    if world == 1:
        return [n]
    mine = device_tensor([n], device, torch.long)
    out = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(out, mine)
    return [int(x) for x in out]


def gather_with_grad(x: Tensor, sizes: list[int] | None = None) -> Tensor:
    """Concatenate ``x [N, ...]`` from every process along dim 0 (rank order), keeping the autograd graph.

    Ranks may hold different N (``sizes``, found with one extra collective when not given): tensors are padded to
    the largest for ``all_gather`` and the padding is cut off again. Returns ``x`` itself when not distributed.
    """
    rank, world = _world()
    if world == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    sizes = sizes if sizes is not None else _sizes(x.shape[0], x.device)
    top = max(sizes)
    if top != x.shape[0]:
        x = torch.cat([x, x.new_zeros(top - x.shape[0], *x.shape[1:])])
    parts = all_gather(x.contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)], dim=0)


def _gather_no_grad(x: Tensor, sizes: list[int]) -> Tensor:
    with torch.no_grad():
        return gather_with_grad(x, sizes)


def _check_text_to_video(text_to_video: Tensor, num_texts: int, num_videos: int) -> None:
    """Raise unless ``text_to_video`` is ``[num_texts]`` indices in ``[-1, num_videos)`` naming every video.

    -1 marks a hard negative text (positive for no video). Checked where the tensor lies, before it moves: the
    trainer's comes from the batch on the CPU, so the check costs an accelerator no synchronisation; one on an
    accelerator is read back once, not once per condition.
    """
    if text_to_video.shape != (num_texts,):
        raise ValueError(f"text_to_video: expected shape [{num_texts}], got {tuple(text_to_video.shape)}")
    t2v = text_to_video.long()
    in_range = (t2v >= -1).all() & (t2v < num_videos).all()
    if not bool(in_range):
        raise ValueError(f"text_to_video: indices must lie in [0, {num_videos}), or be -1 for a hard negative")
    if not bool((torch.bincount(t2v[t2v >= 0], minlength=num_videos) > 0).all()):
        raise ValueError("text_to_video: every video needs at least one caption in the batch")


def _pairs(
    video: Tensor, text: Tensor, text_to_video: Tensor | None, local_loss: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Rows and columns of the similarity matrices, and the positives.

    Returns:
        ``rows_v [Rv, D]``, ``cols_t [Ct, D]``, ``pos_vt`` bool ``[Rv, Ct]``, ``rows_t [Rt, D]``, ``cols_v [Cv, D]``
        and ``target_tv`` long ``[Rt]`` (the column of each text row's video, -1 for a hard negative text).
    """
    if video.ndim != 2 or text.ndim != 2 or video.shape[1] != text.shape[1]:
        raise ValueError(f"contrastive loss: expected video [B, D] and text [Bt, D], got {video.shape}, {text.shape}")
    bv = video.shape[0]
    if text_to_video is None:  # pairs on the diagonal: valid by construction
        if text.shape[0] != bv:
            raise ValueError(f"contrastive loss: {text.shape[0]} texts for {bv} videos needs text_to_video")
        text_to_video = torch.arange(bv, device=video.device)
    else:
        _check_text_to_video(text_to_video, text.shape[0], bv)
        text_to_video = to_device(text_to_video, video.device, torch.long)
    rank, world = _world()
    v_sizes, t_sizes = _sizes(bv, video.device), _sizes(text.shape[0], video.device)
    offset = sum(v_sizes[:rank])  # global index of this rank's first video
    all_v, all_t = gather_with_grad(video, v_sizes), gather_with_grad(text, t_sizes)
    local_t2v = torch.where(text_to_video >= 0, text_to_video + offset, -1)  # global video index; -1 stays -1
    all_t2v = _gather_no_grad(local_t2v, t_sizes) if world > 1 else local_t2v
    if local_loss:
        rows_v, rows_vid = video, torch.arange(bv, device=video.device) + offset
        rows_t, target_tv = text, local_t2v
    else:
        rows_v, rows_vid = all_v, torch.arange(all_v.shape[0], device=video.device)
        rows_t, target_tv = all_t, all_t2v
    pos_vt = rows_vid[:, None] == all_t2v[None, :]
    return rows_v, all_t, pos_vt, rows_t, all_v, target_tv


def clip_loss(
    video: Tensor,
    text: Tensor,
    logit_scale: Tensor,
    text_to_video: Tensor | None = None,
    *,
    local_loss: bool = False,
) -> Tensor:
    """Symmetric InfoNCE (CLIP), multi-positive and distributed-aware (see the module docstring).

    Args:
        video: normalised video embeddings ``[B, D]`` (this process's).
        text: normalised text embeddings ``[Bt, D]``.
        logit_scale: the temperature's inverse, already exponentiated (a scalar tensor, e.g. ``1 / 0.07``).
        text_to_video: long ``[Bt]``, the local video index of each text, -1 for a hard negative (None: ``Bt == B``,
            pairs on the diagonal).
        local_loss: score only this process's rows against the gathered columns.

    Returns:
        scalar loss: ``(video->text + text->video) / 2``.
    """
    rows_v, cols_t, pos_vt, rows_t, cols_v, target_tv = _pairs(video, text, text_to_video, local_loss)
    logits_vt = logit_scale * rows_v @ cols_t.T
    logp_vt = F.log_softmax(logits_vt, dim=1)
    pos = pos_vt.to(logp_vt.dtype)
    loss_v2t = -((logp_vt * pos).sum(1) / pos.sum(1)).mean()
    logits_tv = logit_scale * rows_t @ cols_v.T
    loss_t2v = F.cross_entropy(logits_tv, target_tv, ignore_index=-1)  # a hard negative text has no video
    return (loss_v2t + loss_t2v) / 2


def siglip_loss(
    video: Tensor,
    text: Tensor,
    logit_scale: Tensor,
    logit_bias: Tensor,
    text_to_video: Tensor | None = None,
    *,
    local_loss: bool = False,
) -> Tensor:
    """Pairwise sigmoid loss (SigLIP), multi-positive and distributed-aware.

    ``loss = -1/Bv_global * sum_ij log sigmoid(z_ij * (scale * v_i . t_j + bias))`` with ``z_ij = +1`` when text j
    describes video i, else -1 (the SigLIP paper normalises by the number of images).

    Args:
        video: normalised video embeddings ``[B, D]``.
        text: normalised text embeddings ``[Bt, D]``.
        logit_scale: exponentiated scale (scalar tensor, SigLIP starts at 10).
        logit_bias: scalar bias (SigLIP starts at -10).
        text_to_video: long ``[Bt]`` local video index of each text, -1 for a hard negative (None: pairs on the
            diagonal).
        local_loss: score only this process's videos against all gathered texts.

    Returns:
        scalar loss.
    """
    rows_v, cols_t, pos_vt, _, _, _ = _pairs(video, text, text_to_video, local_loss)
    logits = logit_scale * rows_v @ cols_t.T + logit_bias
    labels = pos_vt.to(logits.dtype) * 2 - 1
    return -F.logsigmoid(labels * logits).sum() / rows_v.shape[0]


def hard_negatives(
    similarity: Tensor, positive: Tensor, *, sample: bool = True, generator: torch.Generator | None = None
) -> Tensor:
    """One hard negative column per row, mined from in-batch similarities (ALBEF / X-FM ITM).

    Args:
        similarity: ``[R, C]`` scores (e.g. the ITC logits); higher = more similar.
        positive: bool ``[R, C]``, True where column j is a positive of row i (never chosen).
        sample: draw the negative with probability ``softmax(similarity)`` over the negatives (ALBEF); False takes
            the most similar negative.
        generator: random generator for ``sample`` (None: the global one).

    Returns:
        long ``[R]``, the chosen column of each row, or -1 where a row has no negative.
    """
    scores = similarity.detach().float().masked_fill(positive, float("-inf"))
    has = ~positive.all(1)
    if sample:
        probs = torch.softmax(scores.masked_fill(~has[:, None], 0.0), dim=1)
        # The exponential race: with E ~ Exp(1), argmax_j p_j / E_j is column j with probability p_j. It is what
        # torch.multinomial does for one draw, after checking the probabilities: with two reads of the device in
        # some torch releases, asynchronous asserts in newer ones. Here nothing is checked, so nothing is read.
        race = torch.empty_like(probs).exponential_(generator=generator).clamp_(min=torch.finfo(probs.dtype).tiny)
        choice = (probs / race).argmax(1)
    else:
        choice = scores.argmax(1)
    return torch.where(has, choice, torch.full_like(choice, -1))


def itm_loss(logits: Tensor, matched: Tensor, scored: Tensor | None = None) -> Tensor:
    """Image/video-text matching: cross-entropy of ``logits [N, 2]`` (column 1 = matched) against bool ``[N]``,
    averaged over the rows that bool ``scored [N]`` keeps (None: every row; 0 with gradient when it keeps none).
    Rows are weighted, not selected: the shapes never depend on the data, so nothing is read back from a GPU."""
    ce = F.cross_entropy(logits, to_device(matched, logits.device, torch.long), reduction="none")
    if scored is None:
        return ce.mean()
    w = scored.to(ce.dtype)
    return (ce * w).sum() / w.sum().clamp(min=1)


def mlm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Masked language modelling: cross-entropy of ``logits [B, L, V]`` at the positions where ``labels`` long
    ``[B, L]`` is not -100 (the hidden tokens' ids), averaged over them; 0 (with gradient) when nothing is hidden.
    The other positions are ignored, not selected away, so nothing is read back from a GPU."""
    total = F.cross_entropy(rearrange(logits, "b l v -> (b l) v"), rearrange(labels, "b l -> (b l)"),
                            ignore_index=-100, reduction="sum")  # fmt: skip
    return total / (labels != -100).sum().clamp(min=1)


def masked_pixel_loss(
    pred: Tensor, target: Tensor, scored: Tensor | None = None, *, norm_pix: bool = True, eps: float = 1e-6
) -> Tensor:
    """Masked video modelling (VideoMAE): mean squared error on the scored (hidden) tubelets.

    Args:
        pred: ``[B, T', H, K]`` predicted pixels of H tubelets per time step (K = tubelet frames x P x P x C): the
            hidden ones, or every one with ``scored`` marking the hidden.
        target: ``[B, T', H, K]`` those tubelets' pixels.
        scored: bool ``[B, T', H]``, True for the tubelets scored (hidden from the encoder, in real time steps), or
            None when every one is.
        norm_pix: normalise each target tubelet by its own mean and variance (VideoMAE's ``normlize_target``).
        eps: variance floor of that normalisation.

    Returns:
        scalar: the mean over scored tubelets of the per-tubelet mean squared error (0 when none is scored).
    """
    if pred.numel() == 0:  # nothing hidden (a 0 % mask)
        return pred.sum()
    with torch.no_grad():  # the target is data: no graph through its normalisation
        target = target.to(pred.dtype)
        if norm_pix:
            if target.shape[-1] > 1:
                var, mean = torch.var_mean(target, -1, keepdim=True, correction=1)
                target = (target - mean).mul_(torch.rsqrt(var + eps))
            else:
                target = torch.zeros_like(target)
    if scored is None:  # every tubelet counts the same K pixels: the plain mean is the mean of per-tubelet means
        return F.mse_loss(pred, target)
    err = F.mse_loss(pred, target, reduction="none").mean(-1)
    w = scored.to(err.dtype)
    return (err * w).sum() / w.sum().clamp(min=1)


def box_cxcywh_to_xyxy(box: Tensor) -> Tensor:
    """``[..., 4]`` centre, width, height -> ``[..., 4]`` corners ``x0, y0, x1, y1``."""
    cx, cy, w, h = box.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def giou_loss(a: Tensor, b: Tensor, eps: float = 1e-7) -> Tensor:
    """``1 - GIoU`` of corner boxes ``a, b [N, 4]`` (``x0, y0, x1, y1``) -> ``[N]``: torchvision's
    ``generalized_box_iou_loss`` values and gradients, with the intersection from clamped sides instead of a
    bool-mask assignment (a data-dependent shape, which reads the boxes back from a GPU)."""
    x0, y0, x1, y1 = a.unbind(-1)
    u0, v0, u1, v1 = b.unbind(-1)
    inter = (torch.min(x1, u1) - torch.max(x0, u0)).clamp(min=0) * (torch.min(y1, v1) - torch.max(y0, v0)).clamp(min=0)
    union = (x1 - x0) * (y1 - y0) + (u1 - u0) * (v1 - v0) - inter
    hull = (torch.max(x1, u1) - torch.min(x0, u0)) * (torch.max(y1, v1) - torch.min(y0, v0))
    return 1 - (inter / (union + eps) - (hull - union) / (hull + eps))


def box_loss(pred: Tensor, target: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Box regression (X-FM's bounding-box prediction): L1 and generalised IoU, each averaged over the valid boxes.

    Args:
        pred: ``[N, 4]`` predicted boxes, normalised ``cx, cy, w, h``.
        target: ``[N, 4]`` true boxes, the same layout; rows with a NaN have no box.
        valid: bool ``[N]`` boxes scored (None: every row without a NaN).

    Returns:
        ``(l1, giou)`` scalars: the mean absolute error per coordinate and the mean of ``1 - GIoU``; both 0 (with
        gradient) when no box is valid.
    """
    finite = ~torch.isnan(target).any(-1)
    valid = finite if valid is None else valid & finite
    # Rows without a box are weighted 0, not selected away (no data-dependent shape, so no read of a GPU): both
    # sides get the same placeholder box there, which scores 0 and passes no gradient to the prediction.
    keep = valid[:, None]
    placeholder = torch.full_like(pred, 0.5, dtype=torch.float32)
    p = torch.where(keep, pred.float(), placeholder)
    t = torch.where(keep, to_device(target, p.device, torch.float32), placeholder)
    w = valid.to(p.dtype)
    n = w.sum().clamp(min=1)
    l1 = ((p - t).abs().mean(-1) * w).sum() / n
    giou = (giou_loss(box_cxcywh_to_xyxy(p), box_cxcywh_to_xyxy(t)) * w).sum() / n
    return l1, giou


LOSSES: dict[str, Callable[..., Tensor]] = {"clip": clip_loss, "siglip": siglip_loss}


def get_loss(name: str) -> Callable[..., Tensor]:
    """The loss function registered as ``name`` (``"clip"`` or ``"siglip"``)."""
    if name not in LOSSES:
        raise ConfigError(f"loss: unknown loss {name!r}; expected one of {sorted(LOSSES)}")
    return LOSSES[name]


__all__ = [
    "clip_loss",
    "siglip_loss",
    "hard_negatives",
    "itm_loss",
    "mlm_loss",
    "masked_pixel_loss",
    "box_loss",
    "box_cxcywh_to_xyxy",
    "gather_with_grad",
    "get_loss",
    "LOSSES",
]
