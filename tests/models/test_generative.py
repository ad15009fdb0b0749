"""Generative families: losses, prefix-LM mask, QA loss masking, mixed T, beam = greedy, save/load round trip."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import vidvlm.layers.attention as attention_mod
from vidvlm.errors import CheckpointError, ConfigError
from vidvlm.models.decoding import DecodeConfig
from vidvlm.models.frontend import TowerConfig
from vidvlm.models.generative import CoCaCaptioner, GenerativeConfig, PrefixLMCaptioner, PrefixLMConfig
from vidvlm.models.prompting import IGNORE, lm_loss
from vidvlm.models.registry import build_model, load
from vidvlm.models.vision import VisionConfig

# the third: CoCa over 2-frame tubelets plus a keyframe step (the default captioner's tower layout)
KEYFRAME_VISION = dict(image_size=32, patch_size=16, width=32, depth=1, num_heads=2, num_tubelets=2, layout="joint")
FAMILIES = [
    (CoCaCaptioner, GenerativeConfig, {}),
    (PrefixLMCaptioner, PrefixLMConfig, {}),
    (
        CoCaCaptioner,
        GenerativeConfig,
        {"tower": TowerConfig(vision=VisionConfig(**KEYFRAME_VISION, tubelet_size=2, keyframe_stream=True))},
    ),
]
CAPTIONS = ["a big red square moves left", "a small blue circle"]


def _batch(t: int = 4) -> dict:
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(2, t, dtype=torch.bool)
    mask[1, 1:] = False  # the second clip is an image (T = 1) padded to the batch's T
    return {"video": torch.randn(2, t, 3, 32, 32, generator=g), "frame_mask": mask, "text": list(CAPTIONS)}


@pytest.fixture(params=FAMILIES, ids=["coca", "prefix_lm", "coca_keyframe"])
def model(request):
    torch.manual_seed(0)
    cls, cfg_cls, overrides = request.param
    cfg = cfg_cls.tiny()
    if overrides:
        cfg = dataclasses.replace(cfg, front_end=dataclasses.replace(cfg.front_end, **overrides))
    m = cls(cfg)
    m.prepare_for_training([])  # a tokenizer of the synthetic vocabulary
    return m.eval()


def test_forward_losses_and_backward(model):
    out = model(_batch())
    expected = {"caption_loss", "contrastive_loss"} if model.family_name == "coca" else {"caption_loss"}
    assert set(out) == expected
    sum(out.values()).backward()
    for name in ("front_end.tower.patch_embed", "front_end.connector", "decoder.head"):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(name)]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), name


def test_registry_builds_and_checks_family():
    m = build_model({"family": "prefix_lm", **{k: v for k, v in _tiny_dict().items() if k != "family"}})
    assert isinstance(m, PrefixLMCaptioner)
    with pytest.raises(ConfigError, match="family"):
        CoCaCaptioner(PrefixLMConfig.tiny())


def _tiny_dict() -> dict:
    from vidvlm.config import to_dict

    return to_dict(PrefixLMConfig.tiny())


def test_padded_frames_do_not_change_outputs(model):
    b = _batch()
    ref = model.generate(b["video"][1:, :1], None)
    logits_a = _logits(model, b["video"][1:, :1], None)
    noisy = b["video"].clone()
    noisy[1, 1:] = 100.0  # padding content must be ignored
    logits_b = _logits(model, noisy[1:], b["frame_mask"][1:])
    torch.testing.assert_close(logits_a, logits_b, atol=1e-4, rtol=1e-4)
    assert model.generate(noisy[1:], b["frame_mask"][1:]) == ref


def _logits(model, video, mask):
    visual, vmask = model.visual_tokens(video, mask)
    ids, _, lengths = model.build_targets(["a red circle"])
    return model.logits(ids, visual, vmask, lengths)


def test_prefix_lm_uses_prefix_mask(monkeypatch):
    torch.manual_seed(0)
    m = PrefixLMCaptioner(PrefixLMConfig.tiny()).eval()
    m.prepare_for_training([])
    seen = []
    real = attention_mod.attention

    def spy(q, k, v, mask=None, **kw):
        seen.append(mask)
        return real(q, k, v, mask, **kw)

    monkeypatch.setattr("vidvlm.layers.transformer.attention", spy)
    b = _batch(t=1)
    visual, vmask = m.visual_tokens(b["video"][:1])
    seen.clear()
    ids, _, _ = m.build_targets(["a red circle"])
    logits = m.logits(ids, visual, vmask)
    prefix_masks = [x for x in seen if x is not None and x.prefix_len is not None]
    assert prefix_masks and all(int(x.prefix_len) == visual.shape[1] for x in prefix_masks)
    # behaviour: the visual prefix is bidirectional (changing the last visual token changes the first text
    # position's logits) and text is causal (changing a later text token leaves earlier logits unchanged)
    v2 = visual.clone()
    v2[:, -1] += torch.randn_like(v2[:, -1])  # not a constant: LayerNorm would remove that
    assert not torch.allclose(m.logits(ids, v2, vmask)[:, 0], logits[:, 0])
    ids2 = ids.clone()
    ids2[0, -1] = (ids2[0, -1] + 1) % m.config.decoder.vocab_size
    torch.testing.assert_close(m.logits(ids2, visual, vmask)[:, :-1], logits[:, :-1])


def test_qa_loss_only_on_answer_tokens(model):
    questions = ["what color is it", "which way does it move"]
    answers = ["red", "left"]
    ids, targets, lengths = model.build_targets(answers, questions)
    layout = model.layout
    prompts = layout.prompts(questions)
    answer_ids = model.tokenizer.hf(answers, add_special_tokens=False)["input_ids"]
    for row, (p, a) in enumerate(zip(prompts, answer_ids, strict=True)):
        real = targets[row][targets[row] != IGNORE].tolist()
        assert real == [*a, layout.eos_id]  # the answer and EOS, nothing of the question
        assert (targets[row, : len(p) - 1] == IGNORE).all()
    logits = torch.randn(*ids.shape, model.config.decoder.vocab_size)
    base = lm_loss(logits, targets)
    q_pos = targets == IGNORE
    # the mask is what keeps question positions out: made targets, they would change the loss
    altered = targets.clone()
    altered[q_pos] = 0
    assert lm_loss(logits, altered) != pytest.approx(base.item())
    logits_q = logits.clone()
    logits_q[q_pos] = torch.randn_like(logits_q[q_pos])  # predictions at question positions do not count
    assert lm_loss(logits_q, targets) == pytest.approx(base.item())
    a_pos = (targets != IGNORE).nonzero()[0]
    logits_a = logits.clone()
    logits_a[a_pos[0], a_pos[1]] += 5 * torch.randn(logits.shape[-1])
    assert lm_loss(logits_a, targets) != pytest.approx(base.item())
    # through the model: the gradient of the QA loss reaches no logit at a question position
    b = _batch()
    visual, vmask = model.visual_tokens(b["video"], b["frame_mask"])
    out = model.logits(ids, visual, vmask, lengths)
    out.retain_grad()
    lm_loss(out, targets).backward()
    assert out.grad[q_pos].abs().max() == 0
    assert out.grad[~q_pos].abs().max() > 0
    qa = model({**b, "text": answers, "question": questions})
    assert set(qa) == {"caption_loss"}


def test_beam_one_equals_greedy_and_beam_runs(model):
    b = _batch()
    greedy = model.generate(b["video"], b["frame_mask"], decode=DecodeConfig("greedy", max_new_tokens=8))
    beam1 = model.generate(b["video"], b["frame_mask"], decode=DecodeConfig("beam", num_beams=1, max_new_tokens=8))
    assert greedy == beam1
    beam3 = model.generate(b["video"], b["frame_mask"], decode=DecodeConfig("beam", num_beams=3, max_new_tokens=8))
    assert len(beam3) == 2 and all(isinstance(s, str) for s in beam3)
    with pytest.raises(ConfigError, match="trained on captions only"):
        model.generate(b["video"], b["frame_mask"], questions=["what color", "which way does it go"])
    model.train()
    model({**b, "text": ["red", "left"], "question": ["what color", "which way does it go"]})  # a QA batch
    model.eval()
    assert model.config.answers_questions
    answers = model.generate(b["video"], b["frame_mask"], questions=["what color", "which way does it go"])
    assert len(answers) == 2


def test_learns_to_caption_two_clips(model):
    """A few steps of training make the model generate the exact training captions (the decoder really decodes)."""
    torch.manual_seed(0)
    b = _batch()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):
        opt.zero_grad()
        sum(model(b).values()).backward()
        opt.step()
    model.eval()
    assert model.generate(b["video"], b["frame_mask"]) == CAPTIONS


def test_save_load_round_trip(model, tmp_path):
    model.prepare_for_training(["a tiny green cross spins", *CAPTIONS])
    model.save_pretrained(tmp_path / "ckpt")
    assert {"config.yaml", "model.safetensors", "tokenizer.json"} <= {p.name for p in (tmp_path / "ckpt").iterdir()}
    loaded = load(tmp_path / "ckpt")
    assert type(loaded) is type(model)
    b = _batch()
    cfg = DecodeConfig("beam", num_beams=2, max_new_tokens=8)
    assert loaded.generate(b["video"], b["frame_mask"], decode=cfg) == model.generate(
        b["video"], b["frame_mask"], decode=cfg
    )
    torch.testing.assert_close(loaded.encode_video(b["video"]), model.encode_video(b["video"]))
    (tmp_path / "ckpt" / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError):
        load(tmp_path / "ckpt")


def test_bad_config():
    from vidvlm.models.generative import DecoderConfig

    with pytest.raises(ConfigError, match="vocab_size"):
        CoCaCaptioner(GenerativeConfig.tiny(decoder=DecoderConfig(width=32, num_heads=2, vocab_size=4)))
