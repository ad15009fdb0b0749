"""Turn what a user points at (files, folders, file lists, manifests) into an ordered list of media paths.

This is the one source lister of every tool (``extract_features.py``, ``caption_video.py``):

- a folder contributes its media files, recursively, in sorted order: files whose extension is a video, GIF or
  image extension (:data:`MEDIA_SUFFIXES`, any case); other files (a ``manifest.jsonl`` beside the clips, notes)
  and hidden files are not sources;
- a ``.txt`` file list, a ``.jsonl`` or a ``.csv`` manifest named directly is the list of its entries, relative to
  its folder; an entry that leads out of that folder (``..``, an absolute path elsewhere) is refused, as in every
  data file (:func:`~vidvlm.data.datasets.path_in_folder`);
- any other file named directly is a source whatever its extension, and a path that does not exist is kept, so
  that the tool reports it as a failure with the reason.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from pathlib import Path

from vidvlm.data.datasets import iter_jsonl, path_in_folder
from vidvlm.errors import ConfigError

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mkv", ".webm", ".mov", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".flv",
                  ".wmv", ".3gp", ".ogv", ".gif")  # fmt: skip
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
MEDIA_SUFFIXES = VIDEO_SUFFIXES + IMAGE_SUFFIXES
LIST_SUFFIXES = (".txt", ".jsonl", ".csv")
# Keys a manifest row may use for the media path, in order of preference.
PATH_KEYS = ("path", "video", "source", "file", "image")


def is_media(path: str | os.PathLike) -> bool:
    """Whether ``path`` has a video, GIF or image extension (case-insensitive)."""
    return os.fspath(path).lower().endswith(MEDIA_SUFFIXES)


def _manifest_paths(path: Path) -> list[str]:
    """Paths from a ``.txt`` (one per line), ``.jsonl`` or ``.csv`` manifest, relative to the manifest's folder and
    inside it (:func:`~vidvlm.data.datasets.path_in_folder`)."""
    base = path.parent
    suffix = path.suffix.lower()
    if suffix == ".txt":
        lines = enumerate((ln.strip() for ln in path.read_text().splitlines()), 1)
        return [os.path.abspath(path_in_folder(ln, base, f"{path}:{i}")) for i, ln in lines
                if ln and not ln.startswith("#")]  # fmt: skip
    if suffix == ".jsonl":
        rows = list(iter_jsonl(path))
    else:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            rows = [(reader.line_num, row) for row in reader]
    out = []
    for line, row in rows:
        key = next((k for k in PATH_KEYS if isinstance(row, dict) and row.get(k)), None)
        if key is None:
            raise ConfigError(f"{path}:{line}: the row has none of the path keys {list(PATH_KEYS)}")
        out.append(os.path.abspath(path_in_folder(str(row[key]), base, f"{path}:{line}")))
    return out


def list_sources(sources: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """Expand ``sources`` into absolute media paths, in a stable order, without duplicates.

    Args:
        sources: one path or several (see the module docstring). A manifest's paths are relative to the manifest
            and stay inside its folder; a ``.jsonl``/``.csv`` row names its media under ``path``, ``video``,
            ``source``, ``file`` or ``image``.

    Returns:
        The absolute paths, first occurrence order.

    Raises:
        ConfigError: a manifest cannot be parsed, or names a path outside its folder (the message names the file
            and the line).
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    out: list[str] = []
    for src in sources:
        p = Path(src).expanduser()
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                out.extend(os.path.abspath(os.path.join(root, f)) for f in sorted(files)
                           if not f.startswith(".") and is_media(f))  # fmt: skip
        elif p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
            out.extend(_manifest_paths(p))
        else:
            out.append(os.path.abspath(p))
    return list(dict.fromkeys(out))
