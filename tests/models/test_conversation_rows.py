"""Families with their own decoder (coca, prefix_lm, early_fusion) train on instruction data: a sample's conversation
becomes one row per question-answer turn, each reading its clip's tokens, with the same losses as the same rows given
as explicit questions over repeated clips."""

from __future__ import annotations

import pytest
import torch

from vidvlm.data.conversations import question_answer_pairs
from vidvlm.errors import VidVLMError
from vidvlm.models.early_fusion import EarlyFusion, EarlyFusionConfig
from vidvlm.models.generative import CoCaCaptioner, GenerativeConfig, PrefixLMCaptioner, PrefixLMConfig

CAPTIONS = ["a big red square moves left", "a small blue circle moves up", "a small green cross moves down"]
CONVERSATIONS = [
    [
        {"role": "user", "content": "<video>\nwhat colour is the square?"},
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": "which way does it move?"},
        {"role": "assistant", "content": "left"},
    ],
    None,  # a caption sample in the same batch
    [{"role": "user", "content": "<video>\nhow many shapes are there?"}, {"role": "assistant", "content": "1"}],
]
ROWS = [  # (clip, question, answer) the conversations above stand for
    (0, "what colour is the square?", "red"),
    (0, "which way does it move?", "left"),
    (1, None, CAPTIONS[1]),
    (2, "how many shapes are there?", "1"),
]


def test_pairs_drop_the_placeholder_and_a_system_turn():
    turns = [{"role": "system", "content": "be brief"}, *CONVERSATIONS[0]]
    assert question_answer_pairs(turns) == [("what colour is the square?", "red"), ("which way does it move?", "left")]


@pytest.mark.parametrize(
    "turns",
    [
        [{"role": "user", "content": "<video>\nwhat?"}],  # no answer
        [{"role": "assistant", "content": "red"}, {"role": "user", "content": "what?"}],  # wrong order
    ],
)
def test_malformed_conversations_are_refused_naming_the_turn(turns):
    with pytest.raises(VidVLMError, match="conversation: turn 0"):
        question_answer_pairs(turns)


def _model(cls, cfg):
    torch.manual_seed(0)
    m = cls(cfg)
    words = [*CAPTIONS, *(q for _, q, _ in ROWS if q), "red left 1"]
    m.prepare_for_training(words)
    return m.train()


FAMILIES = [
    (CoCaCaptioner, GenerativeConfig.tiny),
    (PrefixLMCaptioner, PrefixLMConfig.tiny),
    (EarlyFusion, EarlyFusionConfig.tiny),
]


@pytest.mark.parametrize("cls, tiny", FAMILIES, ids=["coca", "prefix_lm", "early_fusion"])
def test_conversation_rows_equal_explicit_questions_over_repeated_clips(cls, tiny):
    model = _model(cls, tiny())
    g = torch.Generator().manual_seed(3)
    video = torch.randn(3, 4, 3, 32, 32, generator=g)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[2, 2:] = False  # a shorter clip: its padding must follow it into every row
    got = model({"video": video, "frame_mask": mask, "text": CAPTIONS, "conversation": CONVERSATIONS})
    assert model.config.answers_questions  # training on questions marks the model as one that answers
    clips = torch.tensor([c for c, _, _ in ROWS])
    explicit = {
        "video": video[clips],
        "frame_mask": mask[clips],
        "text": [a for _, _, a in ROWS],
        "question": [q for _, q, _ in ROWS],
    }
    ref = model(explicit)
    assert set(got) == set(ref)
    torch.testing.assert_close(got["caption_loss"], ref["caption_loss"])
    if cls is EarlyFusion:
        # each clip's visual ids are predicted once, not once per question: the captions-only loss of the 3 clips
        once = model({"video": video, "frame_mask": mask, "text": CAPTIONS})
        torch.testing.assert_close(got["visual_loss"], once["visual_loss"])
        torch.testing.assert_close(got["recon_loss"], once["recon_loss"])
        assert not torch.allclose(got["visual_loss"], ref["visual_loss"])  # clip 0 would count twice
    got["caption_loss"].backward()
    assert model.decoder.head.weight.grad is not None


def test_a_batch_without_conversations_is_read_as_before():
    model = _model(CoCaCaptioner, GenerativeConfig.tiny())
    video = torch.randn(3, 4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    plain = model({"video": video, "text": CAPTIONS})
    nones = model({"video": video, "text": CAPTIONS, "conversation": [None, None, None]})
    assert set(plain) == set(nones) == {"caption_loss", "contrastive_loss"}
    torch.testing.assert_close(plain["caption_loss"], nones["caption_loss"])
    assert not model.config.answers_questions
