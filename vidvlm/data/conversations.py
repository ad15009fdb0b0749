"""Training conversations drawn afresh from a manifest row's question-answer ground truth, and conversations read
as question-answer pairs (for the families whose decoders answer one question at a time).

A synthetic instruction row carries a fixed ``conversation`` (one to four turns chosen when the data was written) and
the full ``qa`` list (one question of each type, with its answer). With ``qa_turns`` set, a training sample's
conversation is instead drawn from ``qa`` each time the row is read: ``qa_turns`` questions (or all, when the row has
fewer) in a random order, so every question of the ground truth is trained on and the order varies across epochs.

Both are checked when a manifest or corpus is read (:func:`check_conversation`, :func:`check_qa`), so a malformed row
is named by its file and line before training starts, not by a batch mid-run.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vidvlm.errors import ConfigError, VidVLMError

PLACEHOLDERS = ("<video>", "<image>")
ROLES = ("system", "user", "assistant")


def check_conversation(value: Any, where: str) -> list[dict[str, str]]:
    """A row's ``conversation`` as read: a non-empty list of ``{"role", "content"}`` turns (role ``system``,
    ``user`` or ``assistant``; content a string), with at least one assistant turn to learn from.

    Returns:
        the turns with only ``role`` and ``content``.

    Raises:
        ConfigError: one line, ``{where}: conversation: ...``, naming the first bad turn.
    """
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: conversation: expected a non-empty list of turns, got {value!r:.80}")
    turns = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict) or turn.get("role") not in ROLES or not isinstance(turn.get("content"), str):
            raise ConfigError(
                f"{where}: conversation: turn {i}: expected {{'role': one of {list(ROLES)}, 'content': a string}}, "
                f"got {turn!r:.80}"
            )
        turns.append({"role": turn["role"], "content": turn["content"]})
    if not any(t["role"] == "assistant" for t in turns):
        raise ConfigError(f"{where}: conversation: no assistant turn, so nothing to learn")
    return turns


def check_qa(value: Any, where: str) -> list[dict[str, Any]]:
    """A row's ``qa`` ground truth as read: a non-empty list of objects with a ``question`` string and an
    ``answer`` (string or number); other keys (``type``, ``value``, ...) are kept.

    Raises:
        ConfigError: one line, ``{where}: qa: ...``, naming the first bad entry.
    """
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: qa: expected a non-empty list of question-answer objects, got {value!r:.80}")
    for i, pair in enumerate(value):
        ok = isinstance(pair, dict) and isinstance(pair.get("question"), str) and pair["question"].strip()
        if not ok or isinstance(pair.get("answer"), bool) or not isinstance(pair.get("answer"), (str, int, float)):
            raise ConfigError(
                f"{where}: qa: entry {i}: expected {{'question': a string, 'answer': a string or number}}, "
                f"got {pair!r:.80}"
            )
    return value


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
