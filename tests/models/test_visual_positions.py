"""``decoder.visual_positions``: coca's cross-attention and the prefix-LM's prefix read visual tokens as a set unless
each token carries its index; with the option they can tell which time step (and cell) a token came from."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vidvlm.models.decoder import CausalDecoder, CrossAttentionDecoder, DecoderConfig, PrefixDecoder
from vidvlm.models.generative import CoCaCaptioner, GenerativeConfig
from vidvlm.models.registry import load

CFG = DecoderConfig(width=32, num_heads=4, text_depth=1, depth=2, max_len=12, vocab_size=40)
M = 8


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, CFG.vocab_size, (2, 5), generator=g), torch.randn(2, M, CFG.width, generator=g)


@pytest.mark.parametrize("cls", [CrossAttentionDecoder, PrefixDecoder], ids=["coca", "prefix_lm"])
@torch.no_grad()
def test_without_positions_the_visual_tokens_are_a_set_and_with_them_a_sequence(cls):
    ids, visual = _inputs()
    reverse = visual.flip(1)  # the same tokens, the time steps in the opposite order
    torch.manual_seed(0)
    plain = cls(CFG).eval()
    assert not hasattr(plain, "visual_pos_embed")
    torch.testing.assert_close(plain(ids, visual), plain(ids, reverse), atol=1e-5, rtol=1e-5)
    torch.manual_seed(0)
    placed = cls(dataclasses.replace(CFG, visual_positions=M)).eval()
    assert placed.visual_pos_embed.shape == (M, CFG.width)
    assert (placed(ids, visual) - placed(ids, reverse)).abs().max() > 1e-3


@torch.no_grad()
def test_more_visual_tokens_than_positions_and_an_early_fusion_decoder_are_refused():
    ids, visual = _inputs()
    dec = CrossAttentionDecoder(dataclasses.replace(CFG, visual_positions=M - 1))
    with pytest.raises(ValueError, match=r"8 visual tokens, more than decoder\.visual_positions \(7\)"):
        dec(ids, visual)
    with pytest.raises(ValueError, match=r"decoder\.visual_positions: the early-fusion decoder"):
        CausalDecoder(dataclasses.replace(CFG, visual_positions=M))


def test_a_model_with_visual_positions_trains_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    cfg = GenerativeConfig.tiny()
    cfg.decoder.visual_positions = 4  # the tiny front-end gives 4 tokens a clip (4 time steps of 1 cell)
    model = CoCaCaptioner(cfg)
    model.prepare_for_training(["a red square moves left", "a blue circle moves up"])
    video = torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    out = model({"video": video, "text": ["a red square moves left", "a blue circle moves up"]})
    out["caption_loss"].backward()
    assert model.decoder.visual_pos_embed.grad is not None and model.decoder.visual_pos_embed.grad.abs().sum() > 0
    model.save_pretrained(tmp_path / "m")
    again = load(tmp_path / "m").eval()
    assert again.config.decoder.visual_positions == 4
    torch.testing.assert_close(again.decoder.visual_pos_embed, model.decoder.visual_pos_embed)
    model.eval()
    assert again.generate(video) == model.generate(video)
