"""Autoregressive decoding, generic over the model: greedy, beam search and nucleus sampling.

A model hands the decoder either

* a step function ``step_fn(tokens [B', L], rows [B']) -> logits [B', V]``: the next-token logits after each whole
  sequence, run again at every step. ``rows`` maps every sequence to its batch row, so a model can pick that row's
  video tokens when beam search widens the batch to ``B * K``; or
* a :class:`Stepper`, which keeps a key/value cache: :meth:`Stepper.start` reads the prompts, and
  :meth:`Stepper.extend` only the token each sequence just got (after keeping the sequences beam search chose).

Both give the same ids (``tests/models/test_kv_cache.py``); a step function is wrapped in :class:`Recompute`, so
every strategy has one loop. Every strategy is batched; a row that has emitted EOS is padded and ignored while the
others go on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from einops import rearrange
from torch import Tensor

from vidvlm.devices import device_tensor
from vidvlm.errors import ConfigError

StepFn = Callable[[Tensor, Tensor], Tensor]


class Stepper:
    """Incremental decoding: the model side of a decode loop that keeps state (a key/value cache) between steps.

    A decode loop calls :meth:`start` once, then :meth:`extend` once per generated token.
    """

    def start(self, prompt: Tensor, rows: Tensor) -> Tensor:
        """Read the prompts ``[B', L0]`` of rows ``rows [B']`` (and forget any earlier decode); return the logits of
        the token after each ``[B', V]``."""
        raise NotImplementedError

    def extend(self, last: Tensor, parents: Tensor | None) -> Tensor:
        """Append ``last [B']`` to the sequences ``parents [B']`` (indices into the previous step's sequences,
        repeats allowed; None = the same sequences in the same order); return the next logits ``[B', V]``."""
        raise NotImplementedError


class Recompute(Stepper):
    """A :class:`Stepper` over a plain step function: it keeps the token ids and runs every whole sequence again."""

    def __init__(self, step_fn: StepFn) -> None:
        self.step_fn = step_fn

    def start(self, prompt: Tensor, rows: Tensor) -> Tensor:
        self.tokens, self.rows = prompt, rows
        return self.step_fn(prompt, rows)

    def extend(self, last: Tensor, parents: Tensor | None) -> Tensor:
        tokens = self.tokens if parents is None else self.tokens[parents]
        self.tokens = torch.cat([tokens, rearrange(last, "n -> n 1")], dim=1)
        return self.step_fn(self.tokens, self.rows)


class Cached(Stepper):
    """A :class:`Stepper` over a model that keeps a :class:`~vidvlm.layers.kv_cache.KVCache`.

    Args:
        new_cache: makes an empty cache; called at every :meth:`start`.
        first: ``(prompt [B', L0], rows [B'], cache) -> logits [B', V]`` after each prompt; fills the cache.
        then: ``(last [B', 1], cache) -> logits [B', V]`` after the appended tokens; extends the cache.
    """

    def __init__(
        self,
        new_cache: Callable[[], Any],
        first: Callable[[Tensor, Tensor, Any], Tensor],
        then: Callable[[Tensor, Any], Tensor],
    ) -> None:
        self.new_cache, self.first, self.then = new_cache, first, then

    def start(self, prompt: Tensor, rows: Tensor) -> Tensor:
        self.cache = self.new_cache()
        return self.first(prompt, rows, self.cache)

    def extend(self, last: Tensor, parents: Tensor | None) -> Tensor:
        if parents is not None:
            self.cache.reorder(parents)
        return self.then(rearrange(last, "n -> n 1"), self.cache)


class _Rows(Stepper):
    """Maps a group's local rows to the caller's rows (``generate`` decodes prompts of one length at a time)."""

    def __init__(self, inner: Stepper, index: Tensor) -> None:
        self.inner, self.index = inner, index

    def start(self, prompt: Tensor, rows: Tensor) -> Tensor:
        return self.inner.start(prompt, self.index[rows])

    def extend(self, last: Tensor, parents: Tensor | None) -> Tensor:
        return self.inner.extend(last, parents)


def _stepper(step: StepFn | Stepper) -> Stepper:
    return step if isinstance(step, Stepper) else Recompute(step)


@dataclass
class DecodeConfig:
    """How to decode.

    Attributes:
        strategy: ``greedy``, ``beam`` or ``sample`` (nucleus sampling).
        max_new_tokens: most tokens generated after the prompt (EOS included).
        num_beams: beam width K for ``beam`` (K = 1 is greedy).
        length_penalty: beam hypotheses are ranked by ``sum log p / length ** length_penalty``.
        temperature: softmax temperature for ``sample``.
        top_p: nucleus mass for ``sample`` (1.0 = plain sampling).
        seed: seed of the sampling generator (None = torch's global RNG).
        use_cache: keep a key/value cache between steps (families with their own decoder); False runs the whole
            sequence again at every step. Both give the same ids; the second exists to check and to measure that.
    """

    strategy: Literal["greedy", "beam", "sample"] = "greedy"
    max_new_tokens: int = 32
    num_beams: int = 4
    length_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 0.9
    seed: int | None = None
    use_cache: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"decode.max_new_tokens: must be >= 1, got {self.max_new_tokens}")
        if self.num_beams < 1:
            raise ConfigError(f"decode.num_beams: must be >= 1, got {self.num_beams}")
        if self.temperature <= 0:
            raise ConfigError(f"decode.temperature: must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"decode.top_p: must be in (0, 1], got {self.top_p}")


def _strip(seq: list[int], eos_id: int) -> list[int]:
    return seq[: seq.index(eos_id)] if eos_id in seq else seq


@torch.no_grad()
def greedy_or_sample(
    step: StepFn | Stepper, prompt: Tensor, eos_id: int, pad_id: int, cfg: DecodeConfig
) -> list[list[int]]:
    """Greedy decoding (``cfg.strategy == "greedy"``) or nucleus sampling (``"sample"``).

    Args:
        step: a step function or a :class:`Stepper` (see the module docstring).
        prompt: long ``[B, L0]``, the tokens every row starts from (BOS, or BOS + question).
        eos_id: end-of-sequence id; generation of a row stops after it.
        pad_id: id appended to finished rows.
        cfg: decoding options.

    Returns:
        B lists of generated ids, without the prompt and without EOS.
    """
    gen = None
    if cfg.strategy == "sample" and cfg.seed is not None:
        gen = torch.Generator(device=prompt.device).manual_seed(cfg.seed)
    stepper = _stepper(step)
    logits = stepper.start(prompt, torch.arange(prompt.shape[0], device=prompt.device))
    done = torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)
    picked = []
    for i in range(cfg.max_new_tokens):
        logits = logits.float()
        nxt = _nucleus(logits / cfg.temperature, cfg.top_p, gen) if cfg.strategy == "sample" else logits.argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        picked.append(nxt)
        done |= nxt == eos_id
        if i == cfg.max_new_tokens - 1 or bool(done.all()):
            break
        logits = stepper.extend(nxt, None)
    out = torch.stack(picked, dim=1).tolist()
    return [_strip(s, eos_id) for s in out]


def _nucleus(logits: Tensor, top_p: float, gen: torch.Generator | None) -> Tensor:
    """Sample one id per row from the smallest set of tokens whose probability reaches ``top_p``; ``[B, V] -> [B]``."""
    probs = logits.softmax(-1)
    sorted_p, order = probs.sort(-1, descending=True)
    # keep a token if the mass before it is below top_p (the most likely token is always kept)
    keep = (sorted_p.cumsum(-1) - sorted_p) < top_p
    sorted_p = sorted_p * keep
    pick = torch.multinomial(sorted_p / sorted_p.sum(-1, keepdim=True), 1, generator=gen)
    return order.gather(-1, pick).squeeze(-1)


@torch.no_grad()
def beam_search(step: StepFn | Stepper, prompt: Tensor, eos_id: int, pad_id: int, cfg: DecodeConfig) -> list[list[int]]:
    """Batched beam search with a length penalty.

    Each row keeps ``K = cfg.num_beams`` live beams. At each step the 2K best extensions are ranked; those ending in
    EOS become finished hypotheses (scored ``log p / length ** length_penalty``, the length counting EOS), the best K
    others stay live. A row stops once it holds K finished hypotheses; at ``max_new_tokens`` its live beams are
    finished as they are. With K = 1 this is exactly greedy decoding.

    Args:
        step: a step function or a :class:`Stepper` (see the module docstring).
        prompt: long ``[B, L0]``.
        eos_id: end-of-sequence id.
        pad_id: unused (kept for the same signature as :func:`greedy_or_sample`).
        cfg: decoding options.

    Returns:
        B lists of generated ids of the best hypothesis per row, without prompt and EOS.
    """
    del pad_id
    b, k = prompt.shape[0], cfg.num_beams
    dev = prompt.device
    stepper = _stepper(step)
    logits = stepper.start(prompt.repeat_interleave(k, dim=0), torch.arange(b, device=dev).repeat_interleave(k))
    scores = torch.full((b, k), float("-inf"), device=dev)
    scores[:, 0] = 0.0  # one live beam at the start, so the K beams do not duplicate each other
    # The bookkeeping lives on the host: each step reads its top extensions back once, and the generated ids of
    # every beam are mirrored here, so that finishing a hypothesis reads nothing more.
    generated: list[list[int]] = [[] for _ in range(b * k)]
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(b)]
    active = [True] * b
    live = [[0.0] + [float("-inf")] * (k - 1) for _ in range(b)]
    for n in range(cfg.max_new_tokens):
        logp = logits.float().log_softmax(-1)  # [B*K, V]
        vocab = logp.shape[-1]
        cand = rearrange(rearrange(scores, "b k -> (b k) 1") + logp, "(b k) v -> b (k v)", b=b)
        top_s, top_i = cand.topk(min(2 * k, k * vocab), dim=-1)  # [B, 2K]
        # one read per step: both as float64, exact for the scores (float32) and for indices below 2**53
        top_s, top_i = torch.stack([top_s.double(), top_i.double()]).tolist()
        top_i = [[int(i) for i in row] for row in top_i]
        sources, appended, live = [], [], []
        length = n + 1
        for r in range(b):
            kept: list[tuple[float, int, int]] = []  # (score, source beam, token)
            for s, i in zip(top_s[r], top_i[r], strict=True):
                beam, tok = divmod(i, vocab)
                if not active[r] or s == float("-inf"):
                    break
                if tok == eos_id:
                    if len(kept) < k:  # an EOS ranked below K live extensions cannot beat them (HF convention)
                        finished[r].append((s / length**cfg.length_penalty, list(generated[r * k + beam])))
                else:
                    kept.append((s, r * k + beam, tok))
                if len(kept) == k:
                    break
            if active[r] and len(finished[r]) >= k:
                active[r] = False
            kept += [(float("-inf"), r * k, eos_id)] * (k - len(kept))  # rows done (or short) carry dead beams
            sources += [src for _, src, _ in kept]
            appended += [tok for _, _, tok in kept]
            live.append([s for s, _, _ in kept])
        generated = [generated[src] + [tok] for src, tok in zip(sources, appended, strict=True)]
        scores = device_tensor(live, dev)
        if not any(active) or n == cfg.max_new_tokens - 1:
            break
        src_t, tok_t = device_tensor([sources, appended], dev).unbind(0)
        logits = stepper.extend(tok_t, src_t)
    for r in range(b):
        if active[r]:  # out of length: the live beams count as finished
            for j in range(k):
                if live[r][j] > float("-inf"):
                    score = live[r][j] / cfg.max_new_tokens**cfg.length_penalty
                    finished[r].append((score, generated[r * k + j]))
    return [max(f, key=lambda x: x[0])[1] if f else [] for f in finished]


def generate(
    step: StepFn | Stepper, prompts: Sequence[Sequence[int]], eos_id: int, pad_id: int, cfg: DecodeConfig, device=None
) -> list[list[int]]:
    """Decode every prompt; prompts of different lengths are decoded in groups of equal length (no padding needed).

    Args:
        step: a step function ``(tokens [B', L], rows [B']) -> logits [B', V]`` or a :class:`Stepper`; ``rows``
            index ``prompts``.
        prompts: one list of ids per batch row.
        eos_id: end-of-sequence id.
        pad_id: padding id for finished rows.
        cfg: decoding options.
        device: where the token tensors live.

    Returns:
        One list of generated ids per prompt (no prompt, no EOS).
    """
    out: list[list[int]] = [[] for _ in prompts]
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(len(p), []).append(i)
    decode = beam_search if cfg.strategy == "beam" else greedy_or_sample
    for idx in groups.values():
        index = device_tensor(idx, device or "cpu", torch.long)
        prompt = device_tensor([list(prompts[i]) for i in idx], device or "cpu", torch.long)
        res = decode(_Rows(_stepper(step), index), prompt, eos_id, pad_id, cfg)
        for i, seq in zip(idx, res, strict=True):
            out[i] = seq
    return out


__all__ = ["DecodeConfig", "generate", "beam_search", "greedy_or_sample", "StepFn", "Stepper", "Recompute", "Cached"]
