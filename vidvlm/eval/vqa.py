"""VQA accuracy: exact match after normalisation.

Normalisation follows the spirit of the VQA v2 evaluation: lower case, punctuation removed, articles (a, an, the)
dropped, number words mapped to digits and white space collapsed. With several reference answers a prediction scores
``min(1, matches / 3)`` when ``soft=True`` (the VQA v2 rule, without its 10-choose-9 averaging) and otherwise 1 if it
matches any reference.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from vidvlm.errors import VidVLMError

_PUNCT = re.compile(r"[^\w\s]")
_ARTICLES = {"a", "an", "the"}
_NUMBERS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip


def normalize_answer(answer: str) -> str:
    """Lower case, strip punctuation and articles, map number words to digits, collapse spaces."""
    words = _PUNCT.sub(" ", answer.lower()).split()
    return " ".join(_NUMBERS.get(w, w) for w in words if w not in _ARTICLES)


def vqa_accuracy(
    references: Mapping[str, str | Sequence[str]], predictions: Mapping[str, str], soft: bool = False
) -> dict[str, float]:
    """Mean accuracy of predicted answers.

    Args:
        references: question id -> the answer, or a list of annotators' answers.
        predictions: question id -> the predicted answer (same ids as ``references``).
        soft: VQA v2 rule ``min(1, #matching annotators / 3)`` instead of "matches any".

    Returns:
        ``{"accuracy": float, "num": float}``.
    """
    if set(references) != set(predictions):
        raise VidVLMError("vqa_accuracy: references and predictions cover different question ids")
    if not references:
        raise VidVLMError("vqa_accuracy: no predictions to score")
    total = 0.0
    for qid, ref in references.items():
        refs = [ref] if isinstance(ref, str) else list(ref)
        pred = normalize_answer(predictions[qid])
        matches = sum(normalize_answer(r) == pred for r in refs)
        total += min(1.0, matches / 3) if soft else float(matches > 0)
    return {"accuracy": total / len(references), "num": float(len(references))}


__all__ = ["normalize_answer", "vqa_accuracy"]
