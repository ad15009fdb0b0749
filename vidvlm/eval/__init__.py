"""Evaluation: retrieval and zero-shot classification from embeddings, caption metrics, VQA accuracy.

Names are imported lazily so that ``import vidvlm.eval`` does not load every metric's dependencies.
"""

from __future__ import annotations

import importlib

# public name -> module that defines it
_LAZY = {
    "DEFAULT_TEMPLATES": "vidvlm.eval.retrieval",
    "retrieval_ranks": "vidvlm.eval.retrieval",
    "retrieval_metrics": "vidvlm.eval.retrieval",
    "zero_shot_classifier": "vidvlm.eval.retrieval",
    "zero_shot_accuracy": "vidvlm.eval.retrieval",
    "embed_dataset": "vidvlm.eval.retrieval",
    "caption_metrics": "vidvlm.eval.captions",
    "vqa_accuracy": "vidvlm.eval.vqa",
    "normalize_answer": "vidvlm.eval.vqa",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vidvlm.eval' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
