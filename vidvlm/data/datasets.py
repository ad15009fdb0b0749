"""Video-text data sets read from a manifest; an image row is a one-frame video through the same path.

A manifest is JSONL (one object per line) or CSV (a header row). Each row has:

- ``path``: the video or image, relative to the manifest's folder (see :func:`path_in_folder`: a path that leads
  out of that folder, by ``..`` or as an absolute path elsewhere, is refused);
- ``caption`` (a string) or ``captions`` (a non-empty list of strings; in CSV a JSON list);
- optional ``start`` / ``end`` (seconds): sample only inside this window of the video;
- optional ``label`` (int, -1 when absent) and ``attributes`` (a mapping, kept for evaluation).

Other keys are kept in :attr:`ManifestRow.extra`; a ``conversation`` (a list of ``{"role", "content"}`` turns, the
first user turn holding the clip's ``<video>`` / ``<image>`` placeholder) is passed on with the sample, and ``qa`` (a
list of ``{"question", "answer", ...}``, the ground truth that evaluation asks and ``qa_turns`` draws from) is kept,
and ``negatives`` (a list of strings: hard negative captions, texts that do not describe the clip, which the
contrastive family's ``hard_negatives`` adds to its loss) is passed on. All three are checked as the manifest is read
(:func:`~vidvlm.data.conversations.check_conversation`, :func:`~vidvlm.data.conversations.check_qa`: an error names
the file and line); in CSV they are JSON strings.

Boxes (for box prediction): a row's per-frame boxes of the shape its caption describes are a top-level ``boxes`` list,
or the ``boxes`` of the only entry of ``shapes`` (the synthetic scenes' layout; a row with several shapes has no box,
since its caption names them all). Each entry is ``[x0, y0, x1, y1]`` in the file's pixels (ends exclusive) or null
while the shape is hidden, one per frame of the file. The sample then carries ``boxes``: those of the sampled frames,
carried through the transform (:meth:`~vidvlm.data.transforms.ClipTransform.with_boxes`: scaled by a resize, cut by a
random or centre crop, NaN when cut away) and written as normalised ``cx, cy, w, h`` of the output frame. A transform
that is not a :class:`~vidvlm.data.transforms.ClipTransform` cannot map boxes: the sample then has none.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vidvlm.data.boxes import normalise_boxes, row_boxes, sampled_boxes
from vidvlm.data.conversations import check_conversation, check_qa, conversation_from_qa, placeholder_of
from vidvlm.data.reader import Clip, read_clips
from vidvlm.data.sampling import Sampler
from vidvlm.data.transforms import ClipTransform
from vidvlm.errors import ConfigError, VideoDecodeError

logger = logging.getLogger(__name__)

_KNOWN_KEYS = {"path", "caption", "captions", "start", "end", "label", "attributes"}
ON_ERROR = ("replace", "raise", "mark")


@dataclass(frozen=True)
class ManifestRow:
    """One parsed manifest row; ``line`` is its 1-based line in the manifest (for error messages)."""

    path: str
    captions: tuple[str, ...]
    start: float | None = None
    end: float | None = None
    label: int = -1
    attributes: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    line: int = 0


def path_in_folder(entry: str, folder: Path, where: str) -> str:
    """The path a data file names, checked to stay inside the data file's ``folder``.

    ``entry`` is relative to ``folder`` (or absolute and inside it). The check is lexical: ``..`` steps and absolute
    paths that lead out of the folder are refused, so a manifest from elsewhere cannot make a tool read (or report on)
    an arbitrary file; symbolic links inside the folder are followed, since only the user can have put them there.

    Returns:
        ``folder / entry`` for a relative entry, else ``entry``.

    Raises:
        ConfigError: ``WHERE: path '...' leads outside FOLDER ...``.
    """
    full = Path(entry) if os.path.isabs(entry) else folder / entry
    base = os.path.abspath(folder)
    if os.path.commonpath([base, os.path.abspath(full)]) != base:
        raise ConfigError(
            f"{where}: path {entry!r} leads outside {folder} (a data file may only name files under its own folder)"
        )
    return str(full)


def _number(value: Any, key: str, where: str, kind: type) -> Any:
    if value is None or value == "":
        return None
    try:
        if isinstance(value, bool) or (kind is int and isinstance(value, float) and not value.is_integer()):
            raise ValueError
        return kind(float(value)) if kind is int else kind(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{where}: {key!r} must be {'an integer' if kind is int else 'a number'}, got {value!r}"
        ) from None


def _csv_json(value: Any, key: str, where: str, expected: str) -> Any:
    """A CSV cell that holds JSON: a non-empty string parsed, ``""`` as None, anything else as it is."""
    if not isinstance(value, str):
        return value
    if not value:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where}: {key!r} must be {expected}: {e}") from e


def _check_negatives(value: Any, where: str) -> list[str]:
    """A row's hard negative captions: a list of non-empty strings (may be empty)."""
    if not isinstance(value, list) or not all(isinstance(t, str) and t for t in value):
        raise ConfigError(f"{where}: 'negatives' must be a list of non-empty strings, got {value!r}")
    return value


def _parse_row(data: Any, root: Path, where: str, line: int, csv_row: bool) -> ManifestRow:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object, got {type(data).__name__}")
    path = data.get("path")
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{where}: missing the 'path' key (the video or image, relative to the manifest)")
    captions = data.get("captions")
    if csv_row:
        captions = _csv_json(captions, "captions", where, "a JSON list of strings")
    if captions is None:
        caption = data.get("caption")
        if not isinstance(caption, str) or not caption:
            raise ConfigError(f"{where}: missing a caption (a 'caption' string or a 'captions' list)")
        captions = [caption]
    if not isinstance(captions, list) or not captions or not all(isinstance(c, str) for c in captions):
        raise ConfigError(f"{where}: 'captions' must be a non-empty list of strings, got {captions!r}")
    start = _number(data.get("start"), "start", where, float)
    end = _number(data.get("end"), "end", where, float)
    if start is not None and end is not None and end <= start:
        raise ConfigError(f"{where}: 'end' ({end}) must be after 'start' ({start})")
    label = _number(data.get("label"), "label", where, int)
    attributes = data.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise ConfigError(f"{where}: 'attributes' must be a mapping, got {attributes!r}")
    full = path_in_folder(path, root, where)
    extra = {k: v for k, v in data.items() if k not in _KNOWN_KEYS}
    for key, check in (("conversation", check_conversation), ("qa", check_qa), ("negatives", _check_negatives)):
        # instruction data and its ground truth: checked here, so an error names the line (in CSV they are JSON)
        if csv_row and extra.get(key) == "":
            del extra[key]  # an empty cell: the row has none
        if key in extra:
            extra[key] = check(_csv_json(extra[key], key, where, "JSON") if csv_row else extra[key], where)
    return ManifestRow(full, tuple(captions), start, end, -1 if label is None else label, attributes, extra, line)


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` of each non-blank line of a JSONL file (1-based numbers).

    Raises:
        ConfigError: ``FILE:LINE: not valid JSON: reason`` for the first line that does not parse.
    """
    with path.open(encoding="utf-8") as f:
        for lineno, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                yield lineno, json.loads(text)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{lineno}: not valid JSON: {e.msg}") from e


def read_manifest(manifest: str | Path) -> list[ManifestRow]:
    """Parse a JSONL or CSV manifest.

    Raises:
        ConfigError: the file is missing or empty, has an unknown extension, or a row is malformed; the message
            names the file and the line.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise ConfigError(f"{manifest}: manifest file not found")
    root = manifest.parent
    rows: list[ManifestRow] = []
    suffix = manifest.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        for lineno, data in iter_jsonl(manifest):
            rows.append(_parse_row(data, root, f"{manifest}:{lineno}", lineno, csv_row=False))
    elif suffix in (".csv", ".tsv"):
        with manifest.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            if reader.fieldnames is None or "path" not in reader.fieldnames:
                raise ConfigError(f"{manifest}:1: the header must name a 'path' column, got {reader.fieldnames}")
            end_of_previous = reader.line_num
            for record in reader:
                lineno = end_of_previous + 1  # a quoted field may span lines: report where the row starts
                end_of_previous = reader.line_num
                where = f"{manifest}:{lineno}"
                if None in record:
                    raise ConfigError(f"{where}: more fields than the header has")
                rows.append(_parse_row(record, root, where, lineno, csv_row=True))
    else:
        raise ConfigError(f"{manifest}: unknown manifest format {suffix!r} (use .jsonl or .csv)")
    if not rows:
        raise ConfigError(f"{manifest}: the manifest has no rows")
    return rows


class VideoTextDataset(Dataset):
    """Samples of (frames, caption) from a manifest; decoders are opened inside ``__getitem__`` and closed there.

    Randomness (frame sampling, caption choice, transform) comes from ``numpy.random.default_rng([seed, epoch,
    index])``, so a sample is the same whenever it is drawn again with the same epoch: training can resume exactly.
    Call :meth:`set_epoch` at the start of each epoch (with DataLoader workers, before the iterator is created;
    ``persistent_workers=True`` would keep the workers' copies at their old epoch; the trainer's loader instead sends
    the epoch with each index: :class:`~vidvlm.train.data.EpochKeyed`).

    A sample whose file fails to decode (:class:`~vidvlm.errors.VideoDecodeError`) is logged once per file and
    counted; then ``on_error`` decides. ``"replace"`` (training): another row chosen from ``(seed, epoch, index,
    attempt)`` is loaded instead, and after ``max_retries`` failed replacements a ``VideoDecodeError`` is raised.
    ``"raise"``: the ``VideoDecodeError`` naming the file is raised at once. ``"mark"`` (evaluation, which must never
    substitute): a marked sample is returned, ``{"index", "path", "error", "video": None, ...}``, which
    :func:`~vidvlm.data.collate.collate_video_text` leaves out of the batch and lists under ``failed``. Counts in
    :meth:`stats` are per process: in DataLoader workers they stay in the workers, so each sample also carries
    ``replaced_from`` (the requested index, or -1) and ``error`` (None, or why it is marked) for the main process.

    Sample keys: ``video`` float ``[T,3,H,W]`` (uint8 when there is no transform), ``text`` (one caption: random
    in training, the first in evaluation), ``captions`` (all), ``label`` (int, -1 when absent), ``index`` (the row
    loaded), ``path``, ``timestamps`` float ``[T]`` (seconds in the file), ``replaced_from`` (int), ``error``
    (None, or the reason with ``on_error="mark"``), ``boxes`` float ``[T, 4]`` only when the row has boxes (see the
    module docstring), ``negatives`` (list of strings) only when the row has them, and ``conversation`` only when
    the row has one (instruction data) or ``qa_turns`` draws one.

    Args:
        manifest: a JSONL or CSV manifest.
        sampler: ``sampler(metadata, rng) -> indices`` (see :mod:`vidvlm.data.sampling`).
        transform: uint8 ``[T,3,H,W]`` -> float ``[T,3,H,W]``; a :class:`ClipTransform` receives a seeded
            ``torch.Generator``, another callable is called with the video only.
        train: random frames, captions and transforms; otherwise deterministic (sampler ``rng=None``).
        seed: base seed.
        decode_size: ``size`` passed to ``Video.get_frames`` (short side int or ``(H, W)``), or None.
        backend: ``open_video`` backend.
        num_threads: decoder threads per sample (keep 1 with many workers).
        max_retries: replacements tried after a failure before giving up.
        on_error: ``"replace"``, ``"raise"`` or ``"mark"`` (see above).
        qa_turns: in training, give a row that has a ``qa`` ground-truth list a conversation of this many of its
            question-answer pairs, drawn in a random order from the sample's generator
            (:func:`~vidvlm.data.conversations.conversation_from_qa`), instead of its fixed ``conversation``; None
            keeps the row's own. Evaluation always keeps the row's own.
    """

    def __init__(
        self,
        manifest: str | Path,
        sampler: Sampler,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        *,
        train: bool = False,
        seed: int = 0,
        decode_size: int | tuple[int, int] | None = None,
        backend: str = "auto",
        num_threads: int = 1,
        max_retries: int = 10,
        on_error: str = "replace",
        qa_turns: int | None = None,
    ) -> None:
        if on_error not in ON_ERROR:
            raise ConfigError(f"on_error: {on_error!r} is not one of {list(ON_ERROR)}")
        if qa_turns is not None and (isinstance(qa_turns, bool) or not isinstance(qa_turns, int) or qa_turns < 1):
            raise ConfigError(f"qa_turns: expected a positive integer or null, got {qa_turns!r}")
        self.manifest = Path(manifest)
        self.rows = read_manifest(self.manifest)
        self.sampler = sampler
        self.transform = transform
        self.train = train
        self.seed = seed
        self.decode_size = decode_size
        self.backend = backend
        self.num_threads = num_threads
        self.max_retries = max_retries
        self.on_error = on_error
        self.qa_turns = qa_turns
        self.epoch = 0
        self._failures = 0
        self._replacements = 0
        self._failed_paths: set[str] = set()

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        """Select the random stream of ``epoch`` (samples of one epoch are reproducible)."""
        self.epoch = int(epoch)

    def stats(self) -> dict[str, Any]:
        """Decode failures seen by this process: ``failures``, ``replacements``, ``failed_paths``."""
        return {
            "failures": self._failures,
            "replacements": self._replacements,
            "failed_paths": sorted(self._failed_paths),
        }

    def rng(self, index: int, attempt: int = 0) -> np.random.Generator:
        """The generator of sample ``index`` in the current epoch (``attempt`` > 0 for replacements)."""
        key = [self.seed, self.epoch, index] + ([attempt] if attempt else [])
        return np.random.default_rng(key)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.rows):
            raise IndexError(f"index {index} out of range for {len(self.rows)} rows of {self.manifest}")
        candidate, errors = index, []
        for attempt in range(self.max_retries + 1):
            rng = self.rng(index, attempt)
            if attempt:
                offset = int(rng.integers(len(self.rows) - 1)) + 1 if len(self.rows) > 1 else 0
                candidate = (index + offset) % len(self.rows)
                self._replacements += 1
            try:
                sample = self.load(candidate, rng)
            except VideoDecodeError as e:
                self._record_failure(self.rows[candidate], e)
                if self.on_error == "raise":
                    raise
                if self.on_error == "mark":
                    return self._marked(index, str(e))
                errors.append(f"{self.rows[candidate].path}: {e}")
                continue
            sample["replaced_from"] = index if attempt else -1
            sample["error"] = None
            return sample
        raise VideoDecodeError(
            f"{self.manifest}: sample {index} and {self.max_retries} replacements all failed to decode; "
            f"the manifest may point at missing or corrupt files. Last errors: {errors[-3:]}"
        )

    def _marked(self, index: int, error: str) -> dict[str, Any]:
        row = self.rows[index]
        return {"video": None, "text": row.captions[0], "captions": list(row.captions), "label": row.label,
                "index": index, "path": row.path, "timestamps": None, "replaced_from": -1, "error": error}  # fmt: skip

    def _record_failure(self, row: ManifestRow, error: Exception) -> None:
        self._failures += 1
        if row.path not in self._failed_paths:
            self._failed_paths.add(row.path)
            action = {"replace": "replacing the sample", "raise": "stopping", "mark": "leaving it out"}[self.on_error]
            logger.warning("%s:%d: cannot decode %s, %s: %s", self.manifest, row.line, row.path, action, error)

    def load(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        """Decode row ``index`` with the given generator, without replacement on failure."""
        row = self.rows[index]
        windows = None if row.start is None and row.end is None else [(row.start, row.end)]
        (clip,) = read_clips(row.path, self.sampler, windows, size=self.decode_size, rng=rng if self.train else None,
                             backend=self.backend, num_threads=self.num_threads)  # fmt: skip
        timestamps = clip.timestamps.to(torch.float32)
        frames, boxes = self._frames_and_boxes(row, clip, rng)
        text = row.captions[int(rng.integers(len(row.captions)))] if self.train else row.captions[0]
        sample = {
            "video": frames,
            "text": text,
            "captions": list(row.captions),
            "label": row.label,
            "index": index,
            "path": row.path,
            "timestamps": timestamps,
        }
        if boxes is not None:
            sample["boxes"] = boxes
        if "negatives" in row.extra:
            sample["negatives"] = list(row.extra["negatives"])
        if self.train and self.qa_turns and row.extra.get("qa"):  # a fresh conversation from the ground truth
            tag = placeholder_of(row.extra.get("conversation"), int(frames.shape[0]))
            sample["conversation"] = conversation_from_qa(row.extra["qa"], self.qa_turns, rng, tag)  # checked when read
        elif "conversation" in row.extra:  # instruction data: turns with a <video>/<image> placeholder
            sample["conversation"] = row.extra["conversation"]
        return sample

    def _frames_and_boxes(self, row: ManifestRow, clip: Clip, rng: np.random.Generator):
        """The clip's frames after the transform and, when the row has boxes, their normalised boxes ``[T, 4]``."""
        frames = clip.frames
        raw = row_boxes(row)
        boxes = None
        if raw is not None and (self.transform is None or isinstance(self.transform, ClipTransform)):
            boxes = sampled_boxes(raw, clip, f"{self.manifest}:{row.line}")
        if self.transform is None:
            return frames, None if boxes is None else normalise_boxes(boxes, frames.shape[-2:])
        if not isinstance(self.transform, ClipTransform):
            return self.transform(frames), None
        generator = None
        if self.train:
            generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        if boxes is None:
            return self.transform(frames, generator=generator), None
        frames, boxes = self.transform.with_boxes(frames, boxes, generator=generator)
        return frames, normalise_boxes(boxes, frames.shape[-2:])
