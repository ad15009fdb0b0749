"""Text-only data: a JSONL corpus of sentences or conversations with no video, for the language side of a mixture.

Each line is ``{"text": "..."}`` (a sentence the LM learns to continue) or ``{"conversation": [{"role", "content"},
...]}`` (turns with no ``<video>`` / ``<image>`` placeholder; the loss is on the answers); one corpus holds one
kind, so that every batch of it is trained the same way (mixing them is refused, naming the line). A sample has no
``video`` key; :func:`collate_text` batches such samples into a *text-only batch*:

    {"text": B strings (a conversation's joined answers), "conversation": B turn lists or None,
     "index": long [B], "path": B "file:line" names, "text_only": True}

and no ``video``, ``frame_mask`` or ``timestamps`` key. A family declares that it takes such batches with the
``text_only`` ability (:data:`vidvlm.models.base.TEXT_ONLY`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from vidvlm.data.conversations import PLACEHOLDERS, check_conversation
from vidvlm.data.datasets import iter_jsonl
from vidvlm.errors import ConfigError


def read_text_corpus(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a text corpus, each ``{"text": str}`` or ``{"conversation": [...]}`` plus ``line``.

    Raises:
        ConfigError: naming the file and line of a row that is neither, or that holds a visual placeholder.
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{file}: text corpus does not exist")
    rows = []
    for line, data in iter_jsonl(file):
        where = f"{file}:{line}"
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected an object with 'text' or 'conversation'")
        if isinstance(data.get("text"), str) and data["text"].strip():
            rows.append({"text": data["text"], "line": line})
        elif "conversation" in data:
            turns = check_conversation(data["conversation"], where)
            if any(p in t["content"] for t in turns for p in PLACEHOLDERS):
                raise ConfigError(f"{where}: a text-only conversation cannot hold a <video>/<image> placeholder")
            rows.append({"conversation": turns, "line": line})
        else:
            raise ConfigError(f"{where}: expected a non-empty 'text' string or a 'conversation' list of turns")
    if not rows:
        raise ConfigError(f"{file}: the text corpus has no rows")
    kinds = ["conversation" if "conversation" in r else "sentence" for r in rows]
    if len(set(kinds)) > 1:  # a batch is trained one way (every token, or the answers): one corpus, one kind
        i = next(i for i, k in enumerate(kinds) if k != kinds[0])
        raise ConfigError(
            f"{file}:{rows[i]['line']}: a {kinds[i]} row after {kinds[0]} rows; "
            "a text corpus holds sentences or conversations, not both (make two datasets of the mixture)"
        )
    return rows


class TextCorpusDataset(Dataset):
    """Samples ``{"text", "index", "path"}`` (and ``conversation`` for conversation rows) of a JSONL corpus.

    Args:
        path: the JSONL file (see the module docstring).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rows = read_text_corpus(self.path)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        sample: dict[str, Any] = {"index": index, "path": f"{self.path.name}:{row['line']}"}
        if "conversation" in row:
            answers = [t["content"] for t in row["conversation"] if t["role"] == "assistant"]
            sample.update(text=" ".join(answers), conversation=row["conversation"])
        else:
            sample["text"] = row["text"]
        return sample


def collate_text(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A text-only batch (see the module docstring) from :class:`TextCorpusDataset` samples."""
    if not samples:
        raise ValueError("collate_text: empty batch")
    convs = [s.get("conversation") for s in samples]
    return {
        "text": [s["text"] for s in samples],
        "conversation": convs if convs[0] is not None else None,  # one corpus, one kind (read_text_corpus)
        "index": torch.tensor([int(s["index"]) for s in samples], dtype=torch.long),
        "path": [s["path"] for s in samples],
        "text_only": True,
    }


__all__ = ["TextCorpusDataset", "collate_text", "read_text_corpus"]
