"""Hard negative captions (``hard_negatives``, :mod:`vidvlm.models.negatives`) in every family with a contrastive
objective: the drawn negatives are extra columns of that loss in training only, and nothing else changes."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from tests.models.test_registry import CAPTIONS, make_batch, tiny_config
from vidvlm.errors import ConfigError
from vidvlm.losses import clip_loss
from vidvlm.models.registry import build_model, get_family, list_families

# the loss each family's negatives enter; a new family with ``hard_negatives`` must be added here
LOSS_OF = {
    "contrastive": "contrastive_loss",
    "coca": "contrastive_loss",
    "prefix_lm": "contrastive_loss",
    "flava": "itc_loss",
    "xfm": "itc_loss",
}
NEGATIVES = [
    ["a red square moves right", "a red circle moves left", CAPTIONS[1]],  # the last is the other clip's caption
    ["a blue circle moves left", "a blue circle moves up"],
]


def _fields(family: str) -> set[str]:
    return {f.name for f in dataclasses.fields(get_family(family).config_class)}


def negatives_model(family: str, n: int = 2):
    """The family's tiny model with ``hard_negatives = n`` (and a contrastive loss where it is off by default)."""
    cfg = tiny_config(family)
    extra = {"contrastive_weight": 0.5} if getattr(cfg, "contrastive_weight", 1.0) == 0 else {}
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(cfg, hard_negatives=n, **extra))
    model.prepare_for_training(CAPTIONS + [t for negs in NEGATIVES for t in negs])
    return model


def _losses(model, batch: dict, seed: int = 3) -> dict[str, torch.Tensor]:
    random.seed(seed)
    torch.manual_seed(seed)  # the masking objectives draw their masks from torch's generator
    return model(batch)


def test_the_families_with_hard_negatives_are_the_ones_with_a_contrastive_loss():
    assert {f for f in list_families() if "hard_negatives" in _fields(f)} == set(LOSS_OF)


@pytest.mark.parametrize("family", sorted(LOSS_OF))
def test_negatives_enter_only_the_contrastive_loss_and_only_in_training(family: str) -> None:
    model = negatives_model(family).train()
    batch = make_batch(model)
    key = LOSS_OF[family]
    plain = _losses(model, batch)
    with_negs = _losses(model, {**batch, "negatives": NEGATIVES})
    assert with_negs[key] > plain[key] + 1e-4  # more columns in each clip's softmax: a larger loss at init
    for name in plain.keys() - {key}:  # every other objective is computed as before
        torch.testing.assert_close(with_negs[name], plain[name])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(_losses(model, {**batch, "negatives": NEGATIVES})[key], _losses(model, batch)[key])


@pytest.mark.parametrize("family", ["coca", "prefix_lm", "flava"])
def test_the_loss_is_clip_loss_over_the_captions_then_the_drawn_negatives(family: str) -> None:
    """The loss equals :func:`clip_loss` of the clips against their captions followed by the negatives the draw
    gives with the same seed (``text_to_video`` -1 for them); a negative equal to a caption is never drawn."""
    model = negatives_model(family).train()
    batch = {**make_batch(model), "negatives": NEGATIVES}
    random.seed(5)
    drawn = model.draw_negatives(batch, batch["text"], training=True)
    assert drawn and CAPTIONS[1] not in drawn and len(drawn) <= 4
    assert set(drawn) <= set(NEGATIVES[0] + NEGATIVES[1]) and any(t in NEGATIVES[1] for t in drawn)
    got = _losses(model, batch, seed=5)[LOSS_OF[family]]
    v = model.encode_video(batch["video"], batch["frame_mask"])
    t = model.encode_text(batch["text"] + drawn)
    t2v = torch.tensor([0, 1] + [-1] * len(drawn))
    weight = getattr(model.config, "contrastive_weight", None) or model.config.itc_weight
    ref = weight * clip_loss(v, t, model.logit_scale.exp().clamp(max=100), t2v)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_coca_draws_no_negatives_for_clips_given_an_explicit_question() -> None:
    """A clip whose ``text`` is an answer is not in the contrastive loss, so its negatives are not drawn either."""
    model = dataclasses.replace(tiny_config("coca"), hard_negatives=3, contrastive_with_questions=True)
    model = build_model(model)
    model.prepare_for_training(CAPTIONS + NEGATIVES[0] + NEGATIVES[1])
    model.train()
    video = make_batch(model)["video"]
    three = torch.cat([video, video[:1]])
    batch = {"video": three, "text": [CAPTIONS[0], "left", CAPTIONS[2]], "question": [None, "which way?", None],
             "negatives": [NEGATIVES[0], NEGATIVES[1], ["a green triangle spins"]]}  # fmt: skip
    random.seed(0)
    drawn = model.draw_negatives(batch, [CAPTIONS[0], CAPTIONS[2]], training=True, clips=[0, 2])
    assert not set(drawn) & set(NEGATIVES[1]) and "a green triangle spins" in drawn
    got = _losses(model, batch, seed=0)["contrastive_loss"]
    v = model.encode_video(three[[0, 2]])
    t = model.encode_text([CAPTIONS[0], CAPTIONS[2], *drawn])
    assert len(drawn) == 4  # all three of clip 0's (the third is no caption of this batch) and clip 2's one
    t2v = torch.tensor([0, 1, -1, -1, -1, -1])
    ref = model.config.contrastive_weight * clip_loss(v, t, model.logit_scale.exp(), t2v)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "family,overrides,message",
    [
        ("prefix_lm", {}, "hard_negatives: 2 needs a contrastive loss, but contrastive_weight is 0.0"),
        ("coca", {"contrastive_weight": 0.0}, "hard_negatives: 2 needs a contrastive loss, but contrastive_weight is"),
        ("flava", {"itc_weight": 0.0}, "hard_negatives: 2 needs a contrastive loss, but itc_weight is 0.0"),
        ("xfm", {"hard_negatives": -1}, "hard_negatives: expected an integer >= 0, got -1"),
        ("coca", {"hard_negatives": True}, "hard_negatives: expected an integer >= 0, got True"),
    ],
)
def test_bad_hard_negatives_are_refused(family: str, overrides: dict, message: str) -> None:
    cfg = tiny_config(family)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        dataclasses.replace(cfg, **{"hard_negatives": 2, **overrides})
