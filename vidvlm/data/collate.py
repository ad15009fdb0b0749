"""Batching samples of different lengths (images with T = 1 beside videos) with a frame mask."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import default_collate


def collate_video_text(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples from :class:`~vidvlm.data.datasets.VideoTextDataset`, zero-padding time to the longest clip.

    Args:
        samples: dicts with ``video`` ``[T_i,3,H,W]`` (one ``H, W`` for the batch), ``text``, ``captions``,
            ``label``, ``index``, ``path``, ``timestamps`` ``[T_i]`` and optionally ``replaced_from`` and ``error``.
            A sample whose ``error`` is set (a dataset with ``on_error="mark"``) is left out of the batch.

    Returns:
        ``video`` ``[B,Tmax,3,H,W]`` (zeros past each clip's end), ``frame_mask`` bool ``[B,Tmax]`` (True = real
        frame), ``text`` list[str], ``captions`` list[list[str]], ``label`` long ``[B]``, ``index`` long ``[B]``,
        ``path`` list[str], ``timestamps`` float ``[B,Tmax]`` (0 past the end), ``replaced_from`` long ``[B]``
        (-1 where the sample was not a replacement), ``failed`` list of ``{"index", "path", "error"}`` (the samples
        left out), ``conversation`` (when any sample has turns: each sample's, None for one without; else None),
        only when a sample has ``boxes`` ``[T_i, 4]``: ``boxes`` float ``[B,Tmax,4]`` (NaN past each clip's end
        and for samples without boxes), and only when a sample has ``negatives``: ``negatives`` list[list[str]]
        (each sample's hard negative captions, empty for one without). When every sample failed,
        ``video``, ``frame_mask`` and ``timestamps`` are None and the lists are empty. Samples with no ``video`` key
        (a text corpus) make a text-only batch (:func:`vidvlm.data.text_corpus.collate_text`); a batch never mixes
        the two kinds.
    """
    if not samples:
        raise ValueError("collate_video_text: empty batch")
    with_video = sum("video" in s for s in samples)
    if with_video == 0:
        from vidvlm.data.text_corpus import collate_text

        return collate_text(samples)
    if with_video != len(samples):
        raise ValueError(f"collate_video_text: {len(samples) - with_video} text-only samples in a batch of videos")
    failed = [{"index": int(s["index"]), "path": s["path"], "error": s["error"]} for s in samples if s.get("error")]
    samples = [s for s in samples if not s.get("error")]
    if not samples:
        empty = torch.zeros(0, dtype=torch.long)
        return {"video": None, "frame_mask": None, "text": [], "captions": [], "label": empty, "index": empty,
                "path": [], "timestamps": None, "replaced_from": empty, "failed": failed}  # fmt: skip
    videos = [s["video"] for s in samples]
    frame_shape = videos[0].shape[1:]
    for s, v in zip(samples, videos, strict=True):
        if v.ndim != 4 or v.shape[1:] != frame_shape:
            raise ValueError(
                f"collate_video_text: {s.get('path')} has frames {tuple(v.shape[1:])}, expected {tuple(frame_shape)}"
                " (resize or crop to one size before batching)"
            )
    lengths = torch.tensor([v.shape[0] for v in videos])
    t_max = int(lengths.max())
    batch = len(samples)
    # default_collate stacks into shared memory inside a DataLoader worker, so the batch reaches the main process
    # without another copy; clips shorter than the longest are zero-padded first
    video = default_collate([v if v.shape[0] == t_max else F.pad(v, (0, 0, 0, 0, 0, 0, 0, t_max - v.shape[0]))
                             for v in videos])  # fmt: skip
    timestamps = torch.zeros(batch, t_max, dtype=torch.float32)
    for b, (s, v) in enumerate(zip(samples, videos, strict=True)):
        timestamps[b, : v.shape[0]] = torch.as_tensor(s["timestamps"], dtype=torch.float32)
    frame_mask = torch.arange(t_max)[None, :] < lengths[:, None]
    extra = {}
    if any(s.get("boxes") is not None for s in samples):
        boxes = torch.full((batch, t_max, 4), float("nan"))
        for b, s in enumerate(samples):
            if s.get("boxes") is not None:
                boxes[b, : s["boxes"].shape[0]] = s["boxes"]
        extra["boxes"] = boxes
    if any("negatives" in s for s in samples):
        extra["negatives"] = [list(s.get("negatives", ())) for s in samples]
    return {
        "video": video,
        "frame_mask": frame_mask,
        "text": [s["text"] for s in samples],
        "captions": [list(s["captions"]) for s in samples],
        "label": torch.tensor([int(s["label"]) for s in samples], dtype=torch.long),
        "index": torch.tensor([int(s["index"]) for s in samples], dtype=torch.long),
        "path": [s["path"] for s in samples],
        "timestamps": timestamps,
        "replaced_from": torch.tensor([int(s.get("replaced_from", -1)) for s in samples], dtype=torch.long),
        "failed": failed,
        # instruction data: each sample's conversation (None for a caption-only sample), or None when none has one
        "conversation": [s.get("conversation") for s in samples] if any("conversation" in s for s in samples) else None,
        **extra,
    }
