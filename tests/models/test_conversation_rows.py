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
    assert model.config.answers_questions and model.answers_questions()  # training on questions marks it so
    clips = torch.tensor([c for c, _, _ in ROWS])
    explicit = {
        "video": video[clips],
        "frame_mask": mask[clips],
        "text": [a for _, _, a in ROWS],
        "question": [q for _, q, _ in ROWS],
    }
    ref = model(explicit)
    torch.testing.assert_close(got["caption_loss"], ref["caption_loss"])
    captions_only = model({"video": video, "frame_mask": mask, "text": CAPTIONS})
    if cls is CoCaCaptioner:
        # the contrastive loss reads every clip with its row's caption, conversations or not; the explicit batch has
        # one caption row (clip 1), so no negatives and no contrastive loss there
        assert set(got) == {"caption_loss", "contrastive_loss"} and set(ref) == {"caption_loss"}
        torch.testing.assert_close(got["contrastive_loss"], captions_only["contrastive_loss"])
    else:
        assert set(got) == set(ref)
    if cls is EarlyFusion:
        # each clip's visual ids are predicted once, not once per question: the captions-only loss of the 3 clips
        torch.testing.assert_close(got["visual_loss"], captions_only["visual_loss"])
        torch.testing.assert_close(got["recon_loss"], captions_only["recon_loss"])
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
    assert not model.config.answers_questions and not model.answers_questions()


def test_contrastive_loss_leaves_out_clips_given_explicit_questions():
    """Clips asked an explicit question carry an answer in ``text``, not a caption: the contrastive loss reads the
    others, exactly as a batch of those alone, and none is computed with fewer than two."""
    model = _model(CoCaCaptioner, GenerativeConfig.tiny())
    video = torch.randn(4, 4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    texts = [CAPTIONS[0], "red", CAPTIONS[2], "left"]
    mixed = model({"video": video, "text": texts, "question": [None, "what colour?", None, "which way?"]})
    alone = model({"video": video[[0, 2]], "text": [CAPTIONS[0], CAPTIONS[2]]})
    torch.testing.assert_close(mixed["contrastive_loss"], alone["contrastive_loss"])
    one = model({"video": video, "text": texts, "question": [None, "what colour?", "how many?", "which way?"]})
    assert "contrastive_loss" not in one


def test_a_malformed_conversation_in_a_batch_names_its_file():
    model = _model(CoCaCaptioner, GenerativeConfig.tiny())
    video = torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    turns = [{"role": "assistant", "content": "red"}, {"role": "user", "content": "what?"}]
    batch = {"video": video, "text": CAPTIONS[:2], "conversation": [None, turns], "path": ["a.mp4", "clips/b.mp4"]}
    with pytest.raises(VidVLMError, match=r"^clips/b\.mp4: conversation: turn 0: expected a user turn"):
        model(batch)


def test_contrastive_loss_can_be_kept_to_caption_only_batches():
    """``contrastive_with_questions: false``: a batch with instruction rows trains the answers alone, one with
    captions alone both losses, as before the option existed."""
    model = _model(CoCaCaptioner, GenerativeConfig.tiny(contrastive_with_questions=False))
    video = torch.randn(3, 4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    assert set(model({"video": video, "text": CAPTIONS, "conversation": CONVERSATIONS})) == {"caption_loss"}
    assert set(model({"video": video, "text": CAPTIONS})) == {"caption_loss", "contrastive_loss"}
