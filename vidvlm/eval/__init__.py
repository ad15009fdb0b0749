"""Evaluation: retrieval and zero-shot classification from embeddings, caption metrics, VQA accuracy, and a
permutation test that compares two settings over seeds.

Names are imported lazily so that ``import vidvlm.eval`` does not load every metric's dependencies.
"""

from __future__ import annotations

from vidvlm._lazy import lazy_attributes

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
    "permutation_p": "vidvlm.eval.seeds",
}

__all__ = list(_LAZY)
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
