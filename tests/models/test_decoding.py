"""Decoding strategies on toy step functions: beam K=1 is greedy, beam search beats greedy where it should."""

from __future__ import annotations

import math

import pytest
import torch

from vidvlm.errors import ConfigError
from vidvlm.models.decoding import DecodeConfig, generate

V, EOS, PAD = 7, 1, 0


def _toy(seed: int, rows: int):
    """Logits depend on the batch row, the last token and the length: a small random Markov chain."""
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(rows, V, V, 12, generator=g) * 2.0
    table[..., EOS, :] += torch.linspace(-3, 3, 12)  # EOS grows likelier with length, so sequences end

    def step(tokens, rows_):
        return table[rows_, tokens[:, -1], :, tokens.shape[1] - 1]

    return step


@pytest.mark.parametrize("seed", range(5))
def test_beam_k1_equals_greedy(seed):
    step = _toy(seed, 6)
    prompts = [[2], [3], [2, 4], [5], [6, 6, 2], [4]]
    greedy = generate(step, prompts, EOS, PAD, DecodeConfig("greedy", max_new_tokens=10))
    beam = generate(step, prompts, EOS, PAD, DecodeConfig("beam", max_new_tokens=10, num_beams=1))
    assert greedy == beam
    assert any(len(s) > 0 for s in greedy)


def test_beam_finds_better_sequence_than_greedy():
    # from the prompt: token 2 (p=0.6) then a flat distribution; token 3 (p=0.4) then EOS with p~1
    def step(tokens, rows):
        out = torch.full((tokens.shape[0], V), -30.0)
        for i, seq in enumerate(tokens.tolist()):
            if len(seq) == 1:
                out[i, 2], out[i, 3] = math.log(0.6), math.log(0.4)
            elif seq[-1] == 3:
                out[i, EOS] = 0.0
            else:
                out[i, 2:] = 0.0
        return out

    cfg = DecodeConfig("beam", max_new_tokens=4, num_beams=3, length_penalty=0.0)
    assert generate(step, [[5]], EOS, PAD, DecodeConfig("greedy", max_new_tokens=4))[0][0] == 2
    assert generate(step, [[5]], EOS, PAD, cfg) == [[3]]


def test_sampling_nucleus_and_seed():
    step = _toy(0, 12)
    prompts = [[2], [3], [4]]
    tiny_p = generate(step, prompts, EOS, PAD, DecodeConfig("sample", max_new_tokens=8, top_p=1e-6, seed=0))
    assert tiny_p == generate(step, prompts, EOS, PAD, DecodeConfig("greedy", max_new_tokens=8))
    a = generate(step, prompts * 4, EOS, PAD, DecodeConfig("sample", max_new_tokens=8, top_p=1.0, seed=3))
    b = generate(step, prompts * 4, EOS, PAD, DecodeConfig("sample", max_new_tokens=8, top_p=1.0, seed=3))
    assert a == b
    hot = generate(step, prompts * 4, EOS, PAD, DecodeConfig("sample", max_new_tokens=8, temperature=5.0, seed=1))
    assert len({tuple(s) for s in hot}) > 3  # a high temperature gives varied samples


def test_max_length_and_eos_stop():
    def never_eos(tokens, rows):
        out = torch.zeros(tokens.shape[0], V)
        out[:, 4] = 5.0
        return out

    for cfg in (DecodeConfig("greedy", max_new_tokens=5), DecodeConfig("beam", max_new_tokens=5, num_beams=2)):
        assert generate(never_eos, [[2], [3]], EOS, PAD, cfg) == [[4] * 5, [4] * 5]


def test_bad_config():
    with pytest.raises(ConfigError, match="num_beams"):
        DecodeConfig(num_beams=0)
    with pytest.raises(ConfigError, match="top_p"):
        DecodeConfig(top_p=0.0)


def test_beam_search_reads_the_device_once_per_step():
    """The beam bookkeeping lives on the host: on the ``meta`` device (shapes, no data) each step reads its top
    extensions back once and copies its new tokens and scores without a wait."""
    from tests.models.device_reads import META, DeviceReads

    logits = torch.zeros(1, V, device=META)

    def step(tokens, rows):
        return logits.expand(tokens.shape[0], V)

    steps = 5
    with DeviceReads() as counter:
        generate(step, [[2], [3]], EOS, PAD, DecodeConfig("beam", max_new_tokens=steps, num_beams=3), device=META)
    assert counter.copies == []
    assert len(counter.reads) == steps  # the stand-in ids never end a beam: every step runs
