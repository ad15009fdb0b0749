"""Training conversations drawn afresh from a manifest row's question-answer ground truth, and conversations read
as question-answer pairs (for the families whose decoders answer one question at a time).

A synthetic instruction row carries a fixed ``conversation`` (one to four turns chosen when the data was written) and
the full ``qa`` list (one question of each type, with its answer). With ``qa_turns`` set, a training sample's
conversation is instead drawn from ``qa`` each time the row is read: ``qa_turns`` questions (or all, when the row has
fewer) in a random order, so every question of the ground truth is trained on and the order varies across epochs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vidvlm.errors import VidVLMError

PLACEHOLDERS = ("<video>", "<image>")


def placeholder_of(conversation: list[dict[str, str]] | None, num_frames: int) -> str:
    """The media placeholder a row's own conversation uses, else ``<image>`` for one frame and ``<video>`` above."""
    for turn in conversation or []:
        for tag in PLACEHOLDERS:
            if tag in turn.get("content", ""):
                return tag
    return "<image>" if num_frames == 1 else "<video>"


def conversation_from_qa(
    qa: list[dict[str, Any]], turns: int, rng: np.random.Generator, placeholder: str = "<video>"
) -> list[dict[str, str]]:
    """``min(turns, len(qa))`` question-answer pairs of ``qa`` in a random order, as chat turns.

    Args:
        qa: ``[{"question": str, "answer": str, ...}]`` (a row's ground truth).
        turns: how many pairs to draw (at least 1).
        rng: the sample's generator (the same sample of the same epoch draws the same turns).
        placeholder: written before the first question, followed by a newline.

    Returns:
        ``[{"role": "user", "content": ...}, {"role": "assistant", "content": ...}, ...]``.
    """
    if turns < 1:
        raise ValueError(f"qa_turns must be at least 1, got {turns}")
    if not qa:
        raise ValueError("the row has an empty qa list")
    order = rng.permutation(len(qa))[: min(turns, len(qa))]
    out: list[dict[str, str]] = []
    for i, k in enumerate(order):
        pair = qa[int(k)]
        question = f"{placeholder}\n{pair['question']}" if i == 0 else str(pair["question"])
        out += [{"role": "user", "content": question}, {"role": "assistant", "content": str(pair["answer"])}]
    return out


def strip_placeholders(text: str) -> str:
    """``text`` without its ``<video>`` / ``<image>`` placeholders, whitespace runs made single spaces."""
    for tag in PLACEHOLDERS:
        text = text.replace(tag, " ")
    return " ".join(text.split())


def question_answer_pairs(turns: list[dict[str, str]]) -> list[tuple[str, str]]:
    """A conversation as ``(question, answer)`` pairs: each user turn and the assistant turn after it, with the media
    placeholder and the whitespace around it removed. A system turn first is skipped.

    Raises:
        VidVLMError: the turns do not alternate user, assistant (one line naming the turn).
    """
    if turns and turns[0].get("role") == "system":
        turns = turns[1:]
    pairs: list[tuple[str, str]] = []
    for i in range(0, len(turns), 2):
        user, answer = turns[i], turns[i + 1] if i + 1 < len(turns) else None
        if user.get("role") != "user" or answer is None or answer.get("role") != "assistant":
            raise VidVLMError(f"conversation: turn {i}: expected a user turn followed by an assistant turn")
        pairs.append((strip_placeholders(str(user.get("content", ""))), str(answer.get("content", ""))))
    return pairs
