"""Prompt and target layout of the generating families: where the answer starts and which tokens carry loss.

A caption is an answer to no question. A training sequence is ``BOS [prompt] answer EOS``; only the answer's tokens
and the EOS are targets (``IGNORE`` elsewhere), so a model learns to answer, never to repeat the prompt. The native
template is plain words, ``question {q} answer``, whose two words join every tokenizer the project trains.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange

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


__all__ = ["IGNORE", "QA_PROMPT", "PromptLayout", "lm_loss"]
