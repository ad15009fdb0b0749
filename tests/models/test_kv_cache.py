"""Key/value caches of vidvlm's own decoders: cached decoding computes what running the whole sequence computes.

Decoder level: the logits of a prompt read at once and then one token (or a few) at a time equal those of the whole
sequence, with padded visual tokens, and after beam search reorders the rows. Model level: every family with its own
decoder gives the same ids with the cache and without, for greedy, beam and sampling, captions and questions, and
the cached path really runs one token per step.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.models.test_registry import CAPTIONS
from vidvlm.layers.kv_cache import KVCache
from vidvlm.models.decoder import CausalDecoder, CrossAttentionDecoder, DecoderConfig, PrefixDecoder
from vidvlm.models.decoding import DecodeConfig
from vidvlm.models.early_fusion import EarlyFusion, EarlyFusionConfig
from vidvlm.models.generative import CoCaCaptioner, GenerativeConfig, PrefixLMCaptioner, PrefixLMConfig

CFG = DecoderConfig(width=32, num_heads=4, text_depth=2, depth=2, max_len=40, vocab_size=50)
M = 6  # visual tokens


def _decoder(cls, visual_positions: int = 0):
    torch.manual_seed(0)
    return cls(dataclasses.replace(CFG, visual_positions=visual_positions)).eval()


def _inputs(b: int = 3, n: int = 9):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, CFG.vocab_size, (b, n), generator=g)
    visual = torch.randn(b, M, CFG.width, generator=g)
    vmask = torch.ones(b, M, dtype=torch.bool)
    vmask[1, 3:] = False  # a clip with fewer real tokens
    return ids, visual, vmask


def _full(dec, ids, visual, vmask):
    if isinstance(dec, CausalDecoder):
        keys = torch.cat([vmask, torch.ones_like(ids, dtype=torch.bool)], dim=1)
        return dec(torch.cat([visual.argmax(-1) % CFG.vocab_size, ids], dim=1), keys)[:, M:]
    return dec(ids, visual, visual_mask=vmask)


def _first(dec, ids, visual, vmask, cache):
    if isinstance(dec, CausalDecoder):
        keys = torch.cat([vmask, torch.ones_like(ids, dtype=torch.bool)], dim=1)
        return dec(torch.cat([visual.argmax(-1) % CFG.vocab_size, ids], dim=1), keys, cache)[:, M:]
    return dec(ids, visual, visual_mask=vmask, cache=cache)


def _then(dec, ids, cache):
    if isinstance(dec, CausalDecoder):
        return dec(ids, None, cache)
    return dec(ids, None, cache=cache)


DECODERS = [CrossAttentionDecoder, PrefixDecoder, CausalDecoder]


@pytest.mark.parametrize(
    "cls, positions",
    [*((c, 0) for c in DECODERS), (CrossAttentionDecoder, M + 2), (PrefixDecoder, M + 2)],
    ids=["coca", "prefix_lm", "early_fusion", "coca-visual-positions", "prefix_lm-visual-positions"],
)
@torch.no_grad()
def test_cached_logits_equal_the_whole_sequence_run_again(cls, positions):
    dec = _decoder(cls, positions)
    ids, visual, vmask = _inputs()
    ref = _full(dec, ids, visual, vmask)
    cache = dec.new_cache()
    parts = [_first(dec, ids[:, :3], visual, vmask, cache)]
    parts += [_then(dec, ids[:, i : i + 1], cache) for i in range(3, 6)]
    parts.append(_then(dec, ids[:, 6:], cache))  # several new tokens at once: causal among themselves
    got = torch.cat(parts, dim=1)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    extra = M if cls is not CrossAttentionDecoder else 0
    assert cache.length == ids.shape[1] + extra
    assert all(layer.k.shape[2] == cache.length for layer in cache.layers)


@pytest.mark.parametrize("cls", DECODERS, ids=["coca", "prefix_lm", "early_fusion"])
@torch.no_grad()
def test_reordered_cache_continues_the_chosen_rows(cls):
    """Beam search keeps some sequences twice and drops others: the cache must follow, masks included."""
    dec = _decoder(cls)
    ids, visual, vmask = _inputs()
    order = torch.tensor([1, 1, 0])
    cache = dec.new_cache()
    _first(dec, ids[:, :5], visual, vmask, cache)
    cache.reorder(order)
    got = _then(dec, ids[order, 5:7], cache)
    ref = _full(dec, ids[order, :7], visual[order], vmask[order])[:, 5:7]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_positions_beyond_the_embeddings_are_refused():
    dec = _decoder(PrefixDecoder)
    ids, visual, vmask = _inputs(n=CFG.max_len + 2)  # the table has max_len + 1 rows (CoCa's class token)
    cache = dec.new_cache()
    dec(ids[:, :-1], visual, visual_mask=vmask, cache=cache)
    with pytest.raises(ValueError, match="positions"):
        dec(ids[:, -1:], None, cache=cache)


def test_key_padding_of_cached_positions_is_kept():
    cache = KVCache.empty(1)
    assert cache.extend_padding(None, 2, 3, torch.device("cpu")) is None
    pad = cache.extend_padding(torch.tensor([[True, False], [True, True]]), 2, 2, torch.device("cpu"))
    assert pad.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    assert cache.extend_padding(None, 2, 1, torch.device("cpu")).shape == (2, 6)
    cache.reorder(torch.tensor([0, 0]))
    assert cache.key_padding[:, 4].tolist() == [False, False]


# -- model level ------------------------------------------------------------------------------------------------
def _coca():
    return CoCaCaptioner(GenerativeConfig.tiny(answers_questions=True))


def _prefix():
    return PrefixLMCaptioner(PrefixLMConfig.tiny(answers_questions=True))


def _fusion():
    return EarlyFusion(EarlyFusionConfig.tiny(answers_questions=True))


@pytest.fixture(params=[_coca, _prefix, _fusion], ids=["coca", "prefix_lm", "early_fusion"])
def model(request):
    torch.manual_seed(0)
    m = request.param()
    m.prepare_for_training(CAPTIONS + ["what colour is it", "red", "how many shapes are there", "two"])
    return m.eval()


def _video():
    g = torch.Generator().manual_seed(2)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[1, 1:] = False  # a still among clips: padded frames, so padded visual tokens
    return torch.randn(3, 4, 3, 32, 32, generator=g), mask


@pytest.mark.parametrize("strategy", ["greedy", "beam", "sample"])
def test_cached_generation_gives_the_same_ids(model, strategy, monkeypatch):
    video, mask = _video()
    questions = [None, "what colour is it", "how many shapes are there"]  # prompts of two lengths
    base = dataclasses.replace(model.config.decode, strategy=strategy, num_beams=3, max_new_tokens=10, seed=5)
    lengths: list[int] = []
    with_cache: list[bool] = []
    forward = type(model.decoder).forward

    def spy(self, ids, *args, **kwargs):
        lengths.append(ids.shape[1])
        with_cache.append(any(isinstance(a, KVCache) for a in (*args, *kwargs.values())))
        return forward(self, ids, *args, **kwargs)

    monkeypatch.setattr(type(model.decoder), "forward", spy)
    reordered: list[bool] = []
    reorder = KVCache.reorder

    def spy_reorder(self, index):
        reordered.append(bool((index != torch.arange(len(index))).any()))
        return reorder(self, index)

    monkeypatch.setattr(KVCache, "reorder", spy_reorder)
    slow = model.generate(video, mask, questions=questions, decode=dataclasses.replace(base, use_cache=False))
    assert not any(with_cache)
    lengths.clear()
    with_cache.clear()
    fast = model.generate(video, mask, questions=questions, decode=base)
    assert fast == slow
    assert all(with_cache)
    assert any(len(s.split()) > 1 for s in fast)  # several steps were decoded
    # one prompt read per group of equal prompt lengths (at most 3 here), then one id a step
    assert len(lengths) - lengths.count(1) <= 3
    if strategy == "beam":
        assert any(reordered)  # beams were dropped and duplicated on the way


def test_cached_video_generation_gives_the_same_clip():
    torch.manual_seed(0)
    model = EarlyFusion(EarlyFusionConfig.tiny(text_first=0.5))
    model.prepare_for_training(CAPTIONS)
    model.eval()
    slow = model.generate_video(CAPTIONS[:2], decode=DecodeConfig(strategy="greedy", use_cache=False))
    fast = model.generate_video(CAPTIONS[:2], decode=DecodeConfig(strategy="greedy"))
    assert torch.equal(fast[1], slow[1])
    torch.testing.assert_close(fast[0], slow[0])
