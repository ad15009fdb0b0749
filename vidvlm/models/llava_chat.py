"""A conversation with a pretrained-backbone model that keeps the LM's key/value cache between turns.

Each turn renders the whole conversation again (so the prompt is exactly what a stateless ``generate`` would see),
then computes only the positions after the longest prefix it shares with what the cache holds: the new question,
and any tokens of the previous answer that the template renders differently from how they were generated. The
answers are those of :meth:`LlavaModel.generate` on the same conversation; a turn of a long clip costs its own
tokens, not the clip's again.

    session = model.start_chat(video, timestamps)      # video [1, T, 3, H, W] after model.transform
    session.ask("what color is it?")                    # -> "red"
    session.ask("and which way does it move?")          # prefills only this turn's tokens

Beam search keeps no cache (one row per beam); its turns are computed whole.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from vidvlm.models.decoding import DecodeConfig

if TYPE_CHECKING:
    from vidvlm.models.frontend import FrontEndOutput
    from vidvlm.models.llava import LlavaModel


class ChatSession:
    """A multi-turn conversation about one clip (or none) with a :class:`~vidvlm.models.llava.LlavaModel`.

    Args:
        model: the model (in eval mode).
        video: ``[1, T, 3, H, W]`` after ``model.transform``, encoded once here (None: text only, or ``visual``).
        timestamps: ``[1, T]`` seconds of the sampled frames (for ``frame_times``).
        visual: ``model.front_end(video)`` computed by the caller.

    Attributes:
        conversation: the turns so far (``{"role", "content"}``); it may be edited between turns (the cache then
            keeps only what comes before the first change).
        computed: prompt positions each turn computed (the rest came from the cache).
    """

    def __init__(
        self,
        model: LlavaModel,
        video: torch.Tensor | None = None,
        timestamps: torch.Tensor | None = None,
        visual: FrontEndOutput | None = None,
    ) -> None:
        if visual is None and video is not None:
            with torch.no_grad():
                visual = model.front_end(video)
        self.model = model
        self.visual = visual
        self.timestamps = timestamps
        self.conversation: list[dict[str, str]] = []
        self.computed: list[int] = []
        self._cache: dict[str, Any] | None = None  # {"cache": ...} as generate() takes it
        self._held: torch.Tensor | None = None  # [1, C, D]: the inputs the cache holds, position by position

    @torch.no_grad()
    def ask(self, question: str, decode: DecodeConfig | None = None) -> str:
        """The model's answer to ``question`` after the turns so far (the clip comes with the first question)."""
        model = self.model
        first = not self.conversation and self.visual is not None
        turns = [*self.conversation, {"role": "user", "content": f"<video>\n{question}" if first else question}]
        inputs = model.prepare_inputs(
            [turns], None, timestamps=self.timestamps, clips_per_sample=[0 if self.visual is None else 1],
            generation=True, visual=self.visual,
        )  # fmt: skip
        cfg = decode or model.config.decode
        embeds = inputs["inputs_embeds"]  # [1, L, D]
        start = self._reusable(inputs) if cfg.strategy != "beam" else 0
        cache = None
        if start:
            cache = self._cache
            drop = self._held.shape[1] - start
            if drop:  # negative: tokens to remove (the one form every transformers version reads the same way)
                next(iter(cache.values())).crop(-drop)
        ids, self._cache = model.lm_generate(inputs, cfg, cache)
        self.computed.append(embeds.shape[1] - start)
        self._held = None
        if self._cache is not None:  # the prompt and every new token but the last, which was never fed back
            held = torch.cat([embeds, model.lm.get_input_embeddings()(ids[:, :-1])], dim=1)
            if next(iter(self._cache.values())).get_seq_length() == held.shape[1]:
                self._held = held
        answer = model.tokenizer.hf.decode(ids[0], skip_special_tokens=True).strip()
        self.conversation = [*turns, {"role": "assistant", "content": answer}]
        return answer

    def _reusable(self, inputs: dict[str, torch.Tensor]) -> int:
        """Positions of the new prompt the cache can keep: the longest prefix equal to what it holds, at most all
        but the last position, and none when a position after it must see a later one (a clip's tokens under
        bidirectional attention) or one before it must not."""
        if self._held is None:
            return 0
        embeds = inputs["inputs_embeds"][0]
        n = min(self._held.shape[1], embeds.shape[0] - 1)
        same = (self._held[0, :n] == embeds[:n]).all(dim=-1)
        start = n if bool(same.all()) else int((~same).nonzero()[0])
        mask = inputs.get("attention_mask")
        if mask is not None and mask.dim() == 4:  # additive [1, 1, L, L]: the tail must attend causally
            seen = mask[0, 0] == 0
            causal = torch.ones_like(seen).tril()
            if not torch.equal(seen[start:], causal[start:]):
                return 0
        return start
