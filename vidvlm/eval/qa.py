"""Question answering by type and captioning, scored against a manifest's ground truth.

A manifest row with ``qa`` (``{"question", "answer", "type", "value"}``, as ``make_synthetic(conversations=True)``
writes) is asked each question; the model also captions each clip. Scoring per question type:

- ``when``: correct when the first number of the prediction is within :data:`WHEN_TOLERANCE_S` seconds of ``value``
  (seconds); "at 1.5 seconds" and "1.4" both match 1.5;
- every other type (colour, shape, size, direction, count, after): exact match after
  :func:`~vidvlm.eval.vqa.normalize_answer` (lower case, no punctuation or articles, number words as digits).

Captions: exact match after the same normalisation against any reference, and the COCO metrics of
:func:`~vidvlm.eval.captions.caption_metrics` (BLEU, ROUGE-L, CIDEr-D).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from vidvlm.errors import VidVLMError
from vidvlm.eval.vqa import normalize_answer
from vidvlm.models.base import ANSWER, CHAT, GENERATE

WHEN_TOLERANCE_S = 0.5
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
_SPACED = re.compile(r"(?<=[\d.])\s+(?=[\d.])")  # "1 . 3 7 5": a word-level tokenizer decodes digits apart


def parse_seconds(text: str) -> float | None:
    """The first number in ``text`` (``"at 1.5 seconds"`` and ``"at 1 . 5 seconds"`` -> 1.5), or None."""
    found = _NUMBER.search(_SPACED.sub("", text))
    return float(found.group()) if found else None


def answer_is_correct(kind: str, prediction: str, answer: str, value: Any = None) -> bool:
    """Whether ``prediction`` answers a question of type ``kind`` (see the module docstring)."""
    if kind == "when":
        got = parse_seconds(prediction)
        return got is not None and value is not None and abs(got - float(value)) <= WHEN_TOLERANCE_S + 1e-9
    return normalize_answer(prediction) == normalize_answer(answer)


def qa_accuracy(items: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Accuracy per question type and over all questions.

    Args:
        items: ``{"type", "answer", "value", "prediction"}`` per question.

    Returns:
        ``qa_accuracy`` and ``qa_num``, and for each type present ``qa_{type}_accuracy`` and ``qa_{type}_num``.
    """
    per: dict[str, list[bool]] = {}
    for item in items:
        ok = answer_is_correct(item["type"], item["prediction"], item["answer"], item.get("value"))
        per.setdefault(item["type"], []).append(ok)
    if not per:
        raise VidVLMError("qa_accuracy: no questions to score")
    every = [ok for oks in per.values() for ok in oks]
    out = {"qa_accuracy": sum(every) / len(every), "qa_num": float(len(every))}
    for kind in sorted(per):
        out[f"qa_{kind}_accuracy"] = sum(per[kind]) / len(per[kind])
        out[f"qa_{kind}_num"] = float(len(per[kind]))
    return out


def caption_exact_match(references: Sequence[Sequence[str]], predictions: Sequence[str]) -> float:
    """Share of predictions equal (normalised) to one of their references."""
    hits = [normalize_answer(p) in {normalize_answer(r) for r in refs} for refs, p in zip(references, predictions,
            strict=True)]  # fmt: skip
    return sum(hits) / max(1, len(hits))


@torch.no_grad()
def generate_answers(model: Any, batches: Iterable[dict[str, Any]], rows: Sequence[Any], batch_size: int,
                     device: torch.device | str = "cpu", questions: bool = True) -> dict[str, Any]:  # fmt: skip
    """Caption every clip and answer every ``qa`` question of its manifest row.

    Args:
        model: a family that generates (and answers, when rows have questions).
        batches: collated batches (``video [B, T, 3, H, W]``, ``frame_mask [B, T]`` or None, ``timestamps [B, T]``,
            ``index [B]``).
        rows: the dataset's manifest rows (``extra["qa"]`` holds the questions).
        batch_size: clips per ``generate`` call.
        device: where the model is.
        questions: ask the rows' questions (False: captions only, e.g. for a model not yet trained to answer).

    Returns:
        ``{"captions": [{"index", "path", "prediction", "references"}], "qa": [{"index", "path", "question", "type",
        "answer", "value", "prediction"}]}``.
    """
    model.require(GENERATE, "caption videos")
    out: dict[str, list] = {"captions": [], "qa": []}
    for batch in batches:
        video, mask = batch["video"].to(device), batch.get("frame_mask")
        mask = None if mask is None else mask.to(device)  # None: every frame real
        times = batch["timestamps"].to(device)
        indices = batch["index"].tolist()
        jobs = [(k, None, None) for k in range(len(indices))]
        for k, i in enumerate(indices):
            jobs += [(k, q["question"], q) for q in rows[i].extra.get("qa", [])] if questions else []
        if any(q is not None for _, q, _ in jobs):
            model.require(ANSWER, "answer questions about videos")
        for lo in range(0, len(jobs), batch_size):
            part = jobs[lo : lo + batch_size]
            # the part's clips once each (a clip's caption and questions share one front-end pass), and which is whose
            pick, clip_of = torch.unique(
                torch.tensor([k for k, _, _ in part], device=video.device), return_inverse=True
            )
            kwargs = {"timestamps": times[pick]} if model.can(CHAT) else {}  # families that chat place frame times
            picked = None if mask is None else mask[pick]
            answers = model.generate(video[pick], picked, questions=[q for _, q, _ in part], clip_of=clip_of,
                                     **kwargs)  # fmt: skip
            for (k, question, truth), text in zip(part, answers, strict=True):
                row = rows[indices[k]]
                if truth is None:
                    out["captions"].append({"index": indices[k], "path": row.path, "prediction": text,
                                            "references": list(row.captions)})  # fmt: skip
                else:
                    out["qa"].append({"index": indices[k], "path": row.path, "question": question,
                                      "type": truth["type"], "answer": truth["answer"], "value": truth.get("value"),
                                      "prediction": text})  # fmt: skip
    return out


def generation_metrics(results: dict[str, Any]) -> dict[str, float]:
    """Per-type QA accuracy (when there are questions), caption exact match and caption metrics (CIDEr-D, ...)."""
    from vidvlm.eval.captions import caption_metrics

    caps = results["captions"]
    refs = {str(c["index"]): c["references"] for c in caps}
    metrics = {f"caption_{k}": v for k, v in caption_metrics(refs, {str(c["index"]): c["prediction"] for c in caps})
               .items()}  # fmt: skip
    metrics["caption_exact_match"] = caption_exact_match([c["references"] for c in caps],
                                                         [c["prediction"] for c in caps])  # fmt: skip
    if results["qa"]:
        metrics.update(qa_accuracy(results["qa"]))
    return metrics


__all__ = [
    "WHEN_TOLERANCE_S",
    "answer_is_correct",
    "caption_exact_match",
    "generate_answers",
    "generation_metrics",
    "parse_seconds",
    "qa_accuracy",
]
