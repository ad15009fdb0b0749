"""Caption videos (or answer a question about them) with a generative checkpoint: ``vidvlm.caption(...)``.

(The module is ``captioning`` so that it does not shadow the function ``vidvlm.caption``.)

With no model the embedded default in ``vidvlm/assets/default_captioner/`` is used. That model is tiny and was
trained on synthetic moving shapes only ("a big red square moves left"); it knows nothing about real video.
Rebuild it with ``python tools/train.py --config configs/generative_tiny_8f_shapesmix.yaml`` and copy the run's
``final/`` directory there (see the README).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vidvlm.data.reader import transform_short_side
from vidvlm.data.sampling import segment_windows
from vidvlm.errors import CheckpointError, ConfigError
from vidvlm.models.base import ANSWER, GENERATE, VLMModel

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


def load_captioner(model_or_dir: Any = None, device: str | torch.device = "cpu") -> VLMModel:
    """A model that generates text: an instance, a checkpoint directory, or None for the embedded default.

    Raises:
        CheckpointError: the directory is missing or is not a checkpoint. ConfigError: the family cannot generate.
    """
    if isinstance(model_or_dir, torch.nn.Module):
        model = model_or_dir
    else:
        from vidvlm.models.registry import load

        path = Path(model_or_dir) if model_or_dir is not None else DEFAULT_MODEL_DIR
        if not path.is_dir():
            raise CheckpointError(f"{path}: model directory not found")
        model = load(path)
    if not isinstance(model, VLMModel):
        raise ConfigError(f"model: {type(model).__name__} is not a vidvlm model family (cannot caption videos)")
    model.require(GENERATE, "caption videos")
    return model.to(device).eval()


class Captioner:
    """Samples frames, runs the model and decodes, for many files with one loaded model.

    Frames are decoded near the model's input size (the short side its eval transform resizes to, never upscaled),
    and the windows of a long video are captioned ``batch_size`` at a time as they are decoded, so memory does not
    grow with the length of the video (:meth:`iter_segments`).

    Args:
        model_or_dir: a generative model, a checkpoint directory, or None for the embedded default.
        num_frames: frames per caption (default: the model's ``num_frames``); the most frames for ``fps``.
        sampler: ``uniform``, ``fps`` or ``all``.
        fps: frames per second for the ``fps`` sampler.
        beam: beam width (1 = greedy).
        device: ``cpu`` or ``cuda``.
        max_new_tokens: the longest caption in tokens.
        batch_size: windows captioned per model call.
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
        batch_size: int = 8,
    ) -> None:
        from vidvlm.data.sampling import SamplerConfig, build_sampler
        from vidvlm.models.decoding import DecodeConfig

        if sampler not in SAMPLERS:
            raise ConfigError(f"sampler: {sampler!r} is not one of {list(SAMPLERS)}")
        if beam < 1:
            raise ConfigError(f"beam: must be >= 1, got {beam}")
        if num_frames is not None and num_frames < 1:
            raise ConfigError(f"num_frames: must be >= 1, got {num_frames}")
        if batch_size < 1:
            raise ConfigError(f"batch_size: must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.model = load_captioner(model_or_dir, self.device)
        n = num_frames or self.model.num_frames
        # "fewer": an image stays one frame (T = 1) and a short clip is not padded with repeats, as in training
        self.sampler = build_sampler(
            SamplerConfig(name=sampler, num_frames=n, fps=fps, max_frames=n, short_policy="fewer")
        )
        self.transform = self.model.transform
        self.shrink_to = transform_short_side(self.transform)
        self.batch_size = batch_size
        base = self.model.config.decode
        self.decode = DecodeConfig(
            strategy="beam" if beam > 1 else "greedy",
            num_beams=beam,
            max_new_tokens=max_new_tokens or base.max_new_tokens,
            length_penalty=base.length_penalty,
        )

    def windows(self, duration: float, segment: float | None) -> list[tuple[float | None, float | None]]:
        """The ``[start, end)`` windows of a video of ``duration`` seconds (one window when ``segment`` is None)."""
        return segment_windows(duration, segment)

    @torch.no_grad()
    def caption_clips(self, clips: Sequence[torch.Tensor], question: str | None = None) -> list[str]:
        """Caption uint8 ``[T, 3, H, W]`` clips (frame counts may differ) in one batch."""
        from vidvlm.data.collate import collate_video_text

        if question:
            self.model.require(ANSWER, "answer questions about videos")
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

    def iter_segments(
        self, path: str | os.PathLike, question: str | None = None, segment: float | None = None
    ) -> Iterator[tuple[Segment, torch.Tensor]]:
        """Caption one file window by window, yielding each segment as soon as its batch is done.

        Args:
            path: a video, GIF or image.
            question: a question to answer instead of captioning.
            segment: window length in seconds (None: one window, the whole video).

        Yields:
            ``(segment, frames)``: the captioned :class:`Segment` and its sampled uint8 frames ``[T, 3, H, W]`` at
            the decode size. At most ``batch_size`` windows of frames are held at a time.

        Raises:
            VideoDecodeError: the file cannot be decoded (segments yielded before the error stand).
        """
        from vidvlm.data.reader import iter_clips
        from vidvlm.data.video import open_video

        if question:
            self.model.require(ANSWER, "answer questions about videos")
        with open_video(path) as video:
            meta = video.metadata
            pending: list[tuple[Segment, torch.Tensor]] = []
            clips = iter_clips(video, self.sampler, segment_windows(meta.duration, segment), shrink_to=self.shrink_to)
            for clip in clips:
                start, end = clip.window
                ts = clip.timestamps.tolist()
                e = (meta.duration or (ts[-1] if ts else 0.0)) if end is None else end
                pending.append((Segment(0.0 if start is None else start, e, "", ts), clip.frames))
                if len(pending) == self.batch_size:
                    yield from self._caption_pending(pending, question)
                    pending = []
            yield from self._caption_pending(pending, question)

    def _caption_pending(
        self, pending: list[tuple[Segment, torch.Tensor]], question: str | None
    ) -> Iterator[tuple[Segment, torch.Tensor]]:
        if not pending:
            return
        texts = self.caption_clips([frames for _, frames in pending], question)
        for (seg, frames), text in zip(pending, texts, strict=True):
            seg.text = text
            yield seg, frames

    def caption_file(
        self, path: str | os.PathLike, question: str | None = None, segment: float | None = None
    ) -> tuple[list[Segment], list[torch.Tensor]]:
        """Caption one file: its segments (one when ``segment`` is None) and the sampled uint8 frames of each.

        Holds every window's frames: for long videos prefer :meth:`iter_segments`.
        """
        done = list(self.iter_segments(path, question, segment))
        return [seg for seg, _ in done], [frames for _, frames in done]


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
        VideoDecodeError: the file cannot be decoded. CheckpointError: the model cannot be loaded. ConfigError: the
            family cannot generate text (or answer questions).
    """
    cap = Captioner(model_or_dir, num_frames=num_frames, sampler=sampler, fps=fps, beam=beam, device=device)
    return cap.caption_file(video, question=question, segment=segment)[0]


__all__ = ["caption", "Captioner", "Segment", "load_captioner", "DEFAULT_MODEL_DIR", "DEFAULT_MODEL_NOTE"]
