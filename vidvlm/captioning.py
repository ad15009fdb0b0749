"""Caption videos (or answer a question about them) with a generative checkpoint: ``vidvlm.caption(...)``.

(The module is ``captioning`` so that it does not shadow the function ``vidvlm.caption``.)

With no model the embedded default in ``vidvlm/assets/default_captioner/`` is used. That model is tiny and was
trained on synthetic moving shapes only ("a big red square moves left"); it knows nothing about real video.
Rebuild it with ``python tools/train.py --config configs/generative_tiny_8f_shapes.yaml`` and copy the run's
``final/`` directory there (see the README).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vidvlm.errors import CheckpointError, VidVLMError

DEFAULT_MODEL_DIR = Path(__file__).parent / "assets" / "default_captioner"
DEFAULT_MODEL_NOTE = (
    "note: using the embedded default captioner, a tiny model trained on synthetic moving shapes only; "
    "its captions are meaningless on real video (pass --model DIR for a real checkpoint)"
)
SAMPLERS = ("uniform", "fps", "all")


@dataclass
class Segment:
    """One caption of a time window of a video.

    Attributes:
        start: window start in seconds.
        end: window end in seconds.
        text: the caption (or answer).
        timestamps: the sampled frames' times in seconds.
    """

    start: float
    end: float
    text: str
    timestamps: list[float] = field(default_factory=list)


def load_captioner(model_or_dir: Any = None, device: str | torch.device = "cpu"):
    """A generative model: an instance, a checkpoint directory, or None for the embedded default."""
    if isinstance(model_or_dir, torch.nn.Module):
        model = model_or_dir
    else:
        from vidvlm.models.registry import load

        path = Path(model_or_dir) if model_or_dir is not None else DEFAULT_MODEL_DIR
        if not path.is_dir():
            raise CheckpointError(f"{path}: model directory not found")
        model = load(path)
    if not hasattr(model, "generate"):
        raise CheckpointError(f"{type(model).__name__} cannot generate text (not a generative family)")
    return model.to(device).eval()


class Captioner:
    """Samples frames, runs the model and decodes, for many files with one loaded model.

    Args:
        model_or_dir: a generative model, a checkpoint directory, or None for the embedded default.
        num_frames: frames per caption (default: the model's ``num_frames``); the most frames for ``fps``.
        sampler: ``uniform``, ``fps`` or ``all``.
        fps: frames per second for the ``fps`` sampler.
        beam: beam width (1 = greedy).
        device: ``cpu`` or ``cuda``.
        max_new_tokens: the longest caption in tokens.
    """

    def __init__(
        self,
        model_or_dir: Any = None,
        num_frames: int | None = None,
        sampler: str = "uniform",
        fps: float = 2.0,
        beam: int = 1,
        device: str | torch.device = "cpu",
        max_new_tokens: int | None = None,
    ) -> None:
        from vidvlm.data.sampling import SamplerConfig, build_sampler
        from vidvlm.models.decoding import DecodeConfig

        if sampler not in SAMPLERS:
            raise VidVLMError(f"sampler: {sampler!r} is not one of {list(SAMPLERS)}")
        if beam < 1:
            raise VidVLMError(f"beam: must be >= 1, got {beam}")
        self.device = torch.device(device)
        self.model = load_captioner(model_or_dir, self.device)
        cfg = self.model.config
        n = num_frames or self.model.num_frames
        if n < 1:
            raise VidVLMError(f"num_frames: must be >= 1, got {n}")
        # "fewer": an image stays one frame (T = 1) and a short clip is not padded with repeats, as in training
        self.sampler = build_sampler(
            SamplerConfig(name=sampler, num_frames=n, fps=fps, max_frames=n, short_policy="fewer")
        )
        self.transform = self.model.transform
        base = cfg.decode
        self.decode = DecodeConfig(
            strategy="beam" if beam > 1 else "greedy",
            num_beams=beam,
            max_new_tokens=max_new_tokens or base.max_new_tokens,
            length_penalty=base.length_penalty,
        )

    def windows(self, duration: float, segment: float | None) -> list[tuple[float | None, float | None]]:
        """The ``[start, end)`` windows of a video of ``duration`` seconds (one window when ``segment`` is None)."""
        if segment is None:
            return [(None, None)]
        if segment <= 0:
            raise VidVLMError(f"segment: must be > 0 seconds, got {segment}")
        starts = np.arange(0.0, max(duration, 1e-9), segment)
        return [(float(s), float(min(s + segment, duration))) for s in starts]

    def frames(self, path: str | os.PathLike, segment: float | None = None) -> tuple[list[torch.Tensor], list[Segment]]:
        """Decode the sampled frames of each window: uint8 ``[T, 3, H, W]`` per window, and empty segments."""
        from vidvlm.data.sampling import window_metadata
        from vidvlm.data.video import open_video

        clips, segs = [], []
        with open_video(path) as video:
            meta = video.metadata
            for start, end in self.windows(meta.duration, segment):
                sub, offset = window_metadata(meta, start, end)
                idx = np.asarray(self.sampler(sub, None), dtype=np.int64) + offset
                clips.append(video.get_frames(idx.tolist()))
                ts = [float(meta.timestamps[i]) for i in idx]
                s = 0.0 if start is None else start
                e = (meta.duration or (ts[-1] if ts else 0.0)) if end is None else end
                segs.append(Segment(start=s, end=e, text="", timestamps=ts))
        return clips, segs

    @torch.no_grad()
    def caption_clips(self, clips: Sequence[torch.Tensor], question: str | None = None) -> list[str]:
        """Caption uint8 ``[T, 3, H, W]`` clips (frame counts may differ) in one batch."""
        from vidvlm.data.collate import collate_video_text

        samples = [
            {"video": self.transform(c), "text": "", "captions": [], "label": -1, "index": i, "path": "",
             "timestamps": torch.zeros(c.shape[0])}
            for i, c in enumerate(clips)
        ]  # fmt: skip
        batch = collate_video_text(samples)
        video = batch["video"].to(self.device)
        mask = batch["frame_mask"].to(self.device)
        questions = [question] * len(clips) if question else None
        return self.model.generate(video, mask, questions=questions, decode=self.decode)

    def caption_file(
        self, path: str | os.PathLike, question: str | None = None, segment: float | None = None
    ) -> tuple[list[Segment], list[torch.Tensor]]:
        """Caption one file: its segments (one when ``segment`` is None) and the sampled uint8 frames of each."""
        clips, segs = self.frames(path, segment)
        for seg, text in zip(segs, self.caption_clips(clips, question), strict=True):
            seg.text = text
        return segs, clips


def caption(
    model_or_dir: Any,
    video: str | os.PathLike,
    *,
    num_frames: int | None = None,
    sampler: str = "uniform",
    fps: float = 2.0,
    beam: int = 1,
    question: str | None = None,
    segment: float | None = None,
    device: str = "cpu",
) -> list[Segment]:
    """Caption a video file (or answer ``question`` about it).

    Args:
        model_or_dir: a generative model, a checkpoint directory, or None for the embedded default (trained on
            synthetic moving shapes only).
        video: a video, GIF or image file.
        num_frames: frames per caption (default: the model's).
        sampler: ``uniform``, ``fps`` or ``all``.
        fps: rate of the ``fps`` sampler.
        beam: beam width (1 = greedy).
        question: a question to answer instead of captioning.
        segment: caption consecutive windows of this many seconds.
        device: ``cpu`` or ``cuda``.

    Returns:
        One :class:`Segment` per window (one covering the whole video when ``segment`` is None).

    Raises:
        VideoDecodeError: the file cannot be decoded. CheckpointError: the model cannot be loaded.
    """
    cap = Captioner(model_or_dir, num_frames=num_frames, sampler=sampler, fps=fps, beam=beam, device=device)
    return cap.caption_file(video, question=question, segment=segment)[0]


__all__ = ["caption", "Captioner", "Segment", "load_captioner", "DEFAULT_MODEL_DIR", "DEFAULT_MODEL_NOTE"]
