"""Turn what a user points at (files, folders, file lists, manifests) into an ordered list of media paths.

Folders are listed recursively in sorted order and every regular file is kept, whatever its extension: a file that
is not a video or an image is reported by the extractor as a failed source with the reason, not silently dropped.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable
from pathlib import Path

from vidvlm.errors import ConfigError

# Keys a manifest row may use for the media path, in order of preference.
PATH_KEYS = ("path", "video", "source", "file", "image")


def _resolve(entry: str, base: Path) -> str:
    p = Path(entry).expanduser()
    return os.path.abspath(p if p.is_absolute() else base / p)


def _manifest_paths(path: Path) -> list[str]:
    """Paths from a ``.txt`` (one per line), ``.jsonl`` or ``.csv`` manifest, relative to the manifest's folder."""
    base = path.parent
    if path.suffix == ".txt":
        lines = [ln.strip() for ln in path.read_text().splitlines()]
        return [_resolve(ln, base) for ln in lines if ln and not ln.startswith("#")]
    if path.suffix == ".jsonl":
        rows = []
        for i, ln in enumerate(path.read_text().splitlines(), 1):
            if not ln.strip():
                continue
            try:
                rows.append(json.loads(ln))
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{i}: not valid JSON: {e}") from e
    else:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    out = []
    for i, row in enumerate(rows, 1):
        key = next((k for k in PATH_KEYS if isinstance(row, dict) and row.get(k)), None)
        if key is None:
            raise ConfigError(f"{path}: row {i} has none of the path keys {list(PATH_KEYS)}")
        out.append(_resolve(str(row[key]), base))
    return out


def list_sources(sources: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """Expand ``sources`` into absolute media paths, in a stable order, without duplicates.

    Args:
        sources: one path or several. A folder contributes every file below it (sorted, hidden files skipped);
            a ``.txt`` file list, ``.jsonl`` or ``.csv`` manifest contributes its entries (column ``path``,
            ``video``, ``source``, ``file`` or ``image``; relative paths are relative to the manifest); any other
            path is a media file. A path that does not exist is kept, so that it is reported as a failure.

    Returns:
        The absolute paths, first occurrence order.

    Raises:
        ConfigError: a manifest cannot be parsed.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    out: list[str] = []
    for src in sources:
        p = Path(src).expanduser()
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                out.extend(os.path.abspath(os.path.join(root, f)) for f in sorted(files) if not f.startswith("."))
        elif p.is_file() and p.suffix in (".txt", ".jsonl", ".csv"):
            out.extend(_manifest_paths(p))
        else:
            out.append(os.path.abspath(p))
    return list(dict.fromkeys(out))
