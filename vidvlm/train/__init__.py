"""Training on accelerate: multi-stage recipes, parameter groups, atomic pickle-free checkpoints, exact resume.

``Trainer`` (``vidvlm.train.trainer``) runs a :class:`~vidvlm.train.config.TrainConfig`; ``tools/train.py`` is its
command line. ``evaluate(model, dataset)`` (``vidvlm.train.evaluation``) measures a model without a trainer.
Imports are lazy so that ``import vidvlm.train`` does not import accelerate.
"""

from __future__ import annotations

from vidvlm._lazy import lazy_attributes

_LAZY = {
    "Trainer": "vidvlm.train.trainer",
    "NonFiniteLossError": "vidvlm.train.trainer",
    "TrainConfig": "vidvlm.train.config",
    "StageConfig": "vidvlm.train.config",
    "load_train_config": "vidvlm.train.config",
    "evaluate": "vidvlm.train.evaluation",
}

__all__ = list(_LAZY)
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
