"""Hard negative captions (NegCLIP) for every family with a contrastive objective.

A manifest row may carry ``negatives``: texts that do not describe its clip, such as the caption with one direction
changed (``make_synthetic --negatives`` writes them from the ground truth). With ``hard_negatives = N > 0`` in a
family's config, each training batch adds up to N of every clip's negatives to the contrastive loss as text
columns that are positive for no clip (``text_to_video = -1`` in :mod:`vidvlm.losses`): a clip's video -> text
softmax must rank its caption above captions that differ from it by a detail; text -> video has no row for them.
Evaluation leaves them out, so a validation loss stays the plain objective.

Where they enter:

* ``contrastive``: its CLIP or SigLIP loss;
* ``coca`` / ``prefix_lm``: the contrastive loss (``contrastive_weight > 0``), over the clips it pairs with their
  captions (a clip given an explicit question brings no negatives);
* ``flava`` / ``xfm``: ``itc_loss`` (``itc_weight > 0``); ITM keeps drawing its negatives from the batch.

A drawn negative equal to one of the batch's captions is dropped (it is already a column, positive for its clip).
The draw uses Python's ``random``, which the trainer seeds per step and rank.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import Any

import torch

from vidvlm.errors import ConfigError

logger = logging.getLogger(__name__)


def check_hard_negatives(value: Any, *, weight: float | None = None, weight_key: str = "") -> None:
    """Refuse a ``hard_negatives`` that is not an integer >= 0, or one > 0 while the loss it feeds is off.

    Args:
        value: the config's ``hard_negatives``.
        weight: the weight of the contrastive objective that reads them (None: always on).
        weight_key: that weight's config key, for the message.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"hard_negatives: expected an integer >= 0, got {value!r}")
    if value > 0 and weight is not None and weight <= 0:
        raise ConfigError(f"hard_negatives: {value} needs a contrastive loss, but {weight_key} is {weight}")


class NegativeDraw:
    """Draws up to ``n`` of each clip's negatives in training; warns once when a training batch has none.

    Args:
        n: the config's ``hard_negatives`` (0: never draws).
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self._warned = False

    def __call__(
        self, batch: dict[str, Any], positives: Sequence[str], training: bool, clips: Sequence[int] | None = None
    ) -> list[str]:
        """The negatives of one batch, to be appended after its ``positives`` as columns for no clip.

        Args:
            batch: a collated batch; its ``negatives`` (B lists of strings) when any row has them.
            positives: the captions already in the loss (a negative equal to one is dropped).
            training: draw only in training (False: none).
            clips: the batch rows whose negatives are drawn (None: all B).

        Returns:
            the drawn texts, clip by clip (possibly empty).
        """
        if self.n == 0 or not training:
            return []
        lists = batch.get("negatives")
        if lists is None:
            if not self._warned:
                self._warned = True
                logger.warning("hard_negatives: %d, but a training batch has no 'negatives' (add them to the "
                               "manifest rows); training on without them", self.n)  # fmt: skip
            return []
        taken = set(positives)
        out = []
        for i in range(len(lists)) if clips is None else clips:
            negs = list(lists[i])
            out.extend(t for t in random.sample(negs, min(self.n, len(negs))) if t not in taken)
        return out


def negative_targets(text_to_video: torch.Tensor, count: int) -> torch.Tensor:
    """``text_to_video [Bt]`` extended by ``count`` hard negative columns (-1: positive for no clip) ->
    ``[Bt + count]``."""
    return torch.cat([text_to_video, torch.full((count,), -1, dtype=text_to_video.dtype)])


__all__ = ["NegativeDraw", "check_hard_negatives", "negative_targets"]
