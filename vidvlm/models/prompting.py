"""Prompt and target layout of the generating families: where the answer starts and which tokens carry loss.

Two layouts, one rule: only what the assistant says (and its end-of-turn token) is a target (``IGNORE``
elsewhere), so a model learns to answer, never to repeat the prompt.

* :class:`PromptLayout`, the native captioners' (``coca``, ``prefix_lm``): ``BOS [question {q} answer] answer EOS``;
  a caption is an answer to no question. The two words join every tokenizer the project trains.
* :class:`ChatLayout`, for pretrained language models: a conversation of turns rendered by a Jinja chat template
  (the LM tokenizer's own, or :data:`PLAIN_TEMPLATE` for base LMs), with ``<video>`` / ``<image>`` placeholders
  that the family replaces by each clip's visual tokens. The template is saved with the model, so inference always
  renders what training rendered.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange

from vidvlm.data.conversations import ROLES
from vidvlm.errors import ConfigError
from vidvlm.models.tokenizer import TextTokenizer

IGNORE = -100
QA_PROMPT = "question {} answer"


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over positions whose target is not ``IGNORE``.

    Args:
        logits: ``[B, L, V]``, the prediction at each position for the token after it.
        targets: long ``[B, L]``, the next token or ``IGNORE`` (prompt tokens, padding).
    """
    return F.cross_entropy(rearrange(logits, "b l v -> (b l) v").float(), targets.flatten(), ignore_index=IGNORE)


class PromptLayout:
    """Token layout of prompts and targets for one tokenizer.

    Args:
        tokenizer: the family's tokenizer (needs an EOS token).
        max_len: the longest text sequence (prompt, answer and EOS).
    """

    def __init__(self, tokenizer: TextTokenizer, max_len: int) -> None:
        self.tokenizer, self.max_len = tokenizer, max_len
        hf = tokenizer.hf
        self.eos_id = int(hf.eos_token_id)
        self.bos_id = int(hf.bos_token_id if hf.bos_token_id is not None else hf.eos_token_id)
        self.pad_id = tokenizer.pad_id

    def _ids(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tokenizer.hf(list(texts), add_special_tokens=False)["input_ids"]

    def prompts(self, questions: Sequence[str | None]) -> list[list[int]]:
        """Token prompts: ``[BOS]`` for a caption, ``[BOS] question ... answer`` for a question."""
        qs = [QA_PROMPT.format(q) if q else "" for q in questions]
        return [[self.bos_id, *ids] for ids in self._ids(qs)]

    def build_targets(
        self, answers: Sequence[str], questions: Sequence[str | None] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decoder inputs and targets: ``prompt answer EOS``, loss on answer tokens and EOS only.

        Returns:
            ``ids`` long ``[B, L]`` (right padded), ``targets`` long ``[B, L]`` (next token, ``IGNORE`` on the prompt
            and padding), ``lengths`` long ``[B]``.
        """
        prompts = self.prompts(questions if questions is not None else [None] * len(answers))
        seqs, starts = [], []
        for p, a in zip(prompts, self._ids(answers), strict=True):
            seq = (p + a)[: self.max_len - 1] + [self.eos_id]
            seqs.append(seq)
            starts.append(min(len(p), len(seq) - 1))
        length = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), length), self.pad_id, dtype=torch.long)
        targets = torch.full((len(seqs), length), IGNORE, dtype=torch.long)
        for i, (seq, start) in enumerate(zip(seqs, starts, strict=True)):
            ids[i, : len(seq)] = torch.tensor(seq)
            # position j predicts token j+1; only answer tokens (from index `start`) and EOS are targets
            targets[i, start - 1 : len(seq) - 1] = torch.tensor(seq[start:])
        lengths = torch.tensor([len(s) for s in seqs])
        return ids, targets, lengths

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """Generated token ids -> text (special tokens dropped)."""
        return [self.tokenizer.hf.decode(s, skip_special_tokens=True).strip() for s in ids]


# A plain-words template for base LMs without a chat template. Each assistant turn ends with the EOS token.
PLAIN_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n"
    "{% elif m['role'] == 'user' %}Question: {{ m['content'] }}\nAnswer:"
    "{% else %} {{ m['content'] }}{{ eos_token }}\n{% endif %}"
    "{% endfor %}"
)
PLACEHOLDER = re.compile(r"<video>|<image>")


@dataclass
class Piece:
    """A run of a rendered conversation: text (a ``target`` when the assistant says it), or a clip's placeholder.

    Attributes:
        text: the text, or None for a placeholder.
        clip: the placeholder's clip number within the sample (0, 1, ...), else None.
        target: whether the text's tokens are training targets.
    """

    text: str | None = None
    clip: int | None = None
    target: bool = False


class ChatLayout:
    """Render conversations with a chat template and find the assistant's spans.

    Args:
        tokenizer: an HF tokenizer (its special tokens appear in the rendered text).
        template: a Jinja chat template.

    A conversation is a list of ``{"role": "system" | "user" | "assistant", "content": str}``; user contents hold one
    placeholder per clip. The template must render incrementally (the rendering of the first k turns, with the
    generation prompt, is a prefix of the whole), which is how every chat template we know behaves; one that does
    not is refused.
    """

    def __init__(self, tokenizer: Any, template: str) -> None:
        self.tokenizer, self.template = tokenizer, template

    def render(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(
            list(messages), chat_template=self.template, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def pieces(self, messages: Sequence[dict[str, str]], generation: bool = False) -> list[Piece]:
        """The conversation as pieces, in order.

        Args:
            messages: the turns; for ``generation`` the last one is the user's, and the rendering ends with the
                template's generation prompt.
            generation: render for generation (no targets) instead of training.

        Raises:
            ConfigError: a bad role, no assistant turn to learn from, or a template that is not incremental.
        """
        if not messages or any(m.get("role") not in ROLES for m in messages):
            raise ConfigError(f"conversation: turns need role system, user or assistant, got {list(messages)}")
        if generation:
            return _split(self.render(messages, add_generation_prompt=True), [])
        full = self.render(messages)
        spans = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            prefix = self.render(messages[:i], add_generation_prompt=True)
            upto = self.render(messages[: i + 1])
            if not (full.startswith(upto) and upto.startswith(prefix)):
                raise ConfigError("chat template: it does not render turn by turn, so answers cannot be located")
            # the answer and its end-of-turn token; the template's trailing newline is not a target
            spans.append((len(prefix), len(prefix) + len(upto[len(prefix) :].rstrip())))
        if not spans:
            raise ConfigError("conversation: no assistant turn, so nothing to learn")
        return _split(full, spans)


def _split(text: str, spans: list[tuple[int, int]]) -> list[Piece]:
    """Cut ``text`` into target spans and the rest, and the rest at placeholders (numbered in order)."""
    pieces: list[Piece] = []
    clip = 0
    pos = 0
    for start, end in [*spans, (len(text), len(text))]:
        chunk = text[pos:start]
        last = 0
        for match in PLACEHOLDER.finditer(chunk):
            if match.start() > last:
                pieces.append(Piece(chunk[last : match.start()]))
            pieces.append(Piece(clip=clip))
            clip += 1
            last = match.end()
        if last < len(chunk):
            pieces.append(Piece(chunk[last:]))
        if end > start:
            if PLACEHOLDER.search(text[start:end]):
                raise ConfigError("conversation: an assistant turn holds a <video>/<image> placeholder")
            pieces.append(Piece(text[start:end], target=True))
        pos = end
    return pieces


__all__ = ["IGNORE", "QA_PROMPT", "PLAIN_TEMPLATE", "PromptLayout", "ChatLayout", "Piece", "lm_loss"]
