"""Sequences of the pretrained-backbone family: conversations and clips -> the LM's inputs.

A conversation is rendered by its chat template (:class:`~vidvlm.models.prompting.ChatLayout`) into text pieces and
``<video>`` / ``<image>`` placeholders; each placeholder becomes its clip's visual tokens (with optional per-frame
times and separators), text is tokenized, and the batch is padded (right for training, left for generation) with
labels only on the answers and an attention mask of the configured kind.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vidvlm.devices import to_device
from vidvlm.errors import ConfigError
from vidvlm.models.frontend import FrontEndOutput, token_times
from vidvlm.models.prompting import IGNORE, ChatLayout


class SequenceBuilder:
    """Turns conversations and front-end outputs into ``inputs_embeds``, masks, positions and labels.

    Args:
        config: the family's config (``visual_attention``, ``frame_times``, ``frame_separator``, ``max_length``,
            ``prompt_tokens``).
        tokenizer: the LM's HF tokenizer.
        chat: the chat layout (template) conversations are rendered with.
        embed: returns the LM's input embedding module (looked up at call time: LoRA may wrap the LM).
        context: the LM's context length (the longest prompt to generate from).
    """

    def __init__(self, config: Any, tokenizer: Any, chat: ChatLayout, embed: Callable[[], nn.Module], context: int):
        self.config, self.tokenizer, self.chat, self.embed, self.context = config, tokenizer, chat, embed, context
        self.mark = _placeholder_token(tokenizer) if config.prompt_tokens == "whole" else None

    def assemble(
        self,
        convs: list[list[dict[str, str]]],
        visual: FrontEndOutput,
        batch: dict[str, Any],
        generation: bool,
        positions: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Embeddings, masks, positions (and labels for training) of a batch of conversations.

        Returns:
            ``inputs_embeds [B, L, D]``, ``attention_mask`` (``[B, L]`` for causal attention, else additive
            ``[B, 1, L, L]``; None when training with causal attention, where it would change nothing),
            ``position_ids [B, L]``, ``labels [B, L]`` (training) and ``attention_mask_2d``
            (generation). Training pads on the right, generation on the left. With ``positions`` (training) also
            ``label_positions``, long ``[K]`` on the host (:func:`label_positions`): not an argument of the LM.
        """
        counts = list(batch.get("clips_per_sample") or [1] * len(convs))
        if sum(counts) != visual.tokens.shape[0] or len(counts) != len(convs):
            raise ConfigError(f"batch: {visual.tokens.shape[0]} clips for clips_per_sample {list(counts)}")
        # The layout is built on the host from the tokens' mask, frames and times: indexing them on a GPU token by
        # token would wait for it at every visual token. The front-end makes the frames there, and the mask too when
        # the frame mask came there (as the trainer gives it; else it is read back once per batch); the times are
        # read only when they are written into the prompt (the trainer leaves them on the host).
        mask = visual.host_mask if visual.host_mask is not None else visual.mask  # made on the host when it can be
        host = dataclasses.replace(
            visual,
            mask=None if mask is None else mask.cpu(),
            frame_index=visual.frame_index.cpu(),
        )
        times = batch.get("timestamps") if self.config.frame_times else None
        times = None if times is None else times.cpu()
        embed = self.embed()
        rows, start = [], 0
        for i, (conv, n) in enumerate(zip(convs, counts, strict=True)):
            clips = list(range(start, start + n))
            start += n
            rows.append(self.sequence(conv, clips, host, times, generation, sample_name(batch, i)))
        # The batch is laid out on the host and each tensor goes over once, without a synchronisation
        # (vidvlm.devices): a tensor per row made on the device would wait for it several times per sample.
        device = visual.tokens.device
        length = max(len(r[1]) for r in rows)
        b = len(rows)
        ids = torch.zeros(b, length, dtype=torch.long)  # 0 at visual positions: their embedding is replaced
        labels = torch.full((b, length), IGNORE, dtype=torch.long)  # on the host: see label_positions
        group = torch.full((b, length), -1, dtype=torch.long)
        real = torch.zeros(b, length, dtype=torch.bool)
        visual_at = []  # (row, position, clip, token): where each visual token goes and where it comes from
        for i, (parts, lab, grp) in enumerate(rows):
            first = length - len(lab) if generation else 0
            at = slice(first, first + len(lab))
            ids[i, at] = torch.tensor([max(p, 0) for p in parts.ids], dtype=torch.long)
            labels[i, at] = torch.tensor(lab, dtype=torch.long)
            group[i, at] = torch.tensor(grp, dtype=torch.long)
            real[i, at] = True
            visual_at.extend((i, first + p, c, m) for p, (c, m) in zip(parts.visual_pos, parts.visual_src, strict=True))
        real_on = to_device(real, device)
        embeds = embed(to_device(ids, device)).to(embed.weight.dtype).masked_fill(~real_on[..., None], 0.0)
        if visual_at:
            at = to_device(torch.tensor(visual_at, dtype=torch.long), device)  # [V, 4]
            tokens = visual.tokens[at[:, 2], at[:, 3]].to(embeds.dtype)
            embeds = embeds.index_put((at[:, 0], at[:, 1]), tokens)
        position_ids = to_device((real.long().cumsum(1) - 1).masked_fill(~real, 1), device)
        if generation or self.config.visual_attention != "causal":
            attention_mask = self.mask(real_on, to_device(group, device), embeds)
        else:
            # training pads on the right and attention is causal: no real token attends to a pad and no pad has a
            # label, so the mask changes no loss; without it transformers need not read one back from the device
            attention_mask = None
        out = {"inputs_embeds": embeds, "position_ids": position_ids, "attention_mask": attention_mask}
        if generation:
            out["attention_mask_2d"] = real_on.long()
        else:
            out["labels"] = to_device(labels, device)
            if positions:
                out["label_positions"] = label_positions(labels)
        return out

    def plain_text(self, texts: list[str], device: torch.device, positions: bool = False) -> dict[str, torch.Tensor]:
        """LM inputs for text-only sentences (no chat template, no visual tokens): each text with the tokenizer's
        own special tokens and EOS after it, cut to ``max_length``, right padded; the loss is on every real token.

        Returns:
            ``input_ids [B, L]``, ``attention_mask`` None (right padding and causal attention: a pad changes no
            labelled position) and ``labels [B, L]`` (-100 on padding); with ``positions`` also ``label_positions``
            as in :meth:`assemble`.
        """
        eos = self.tokenizer.eos_token_id
        rows = []
        for t in texts:
            ids = self.tokenizer(t)["input_ids"] + ([int(eos)] if eos is not None else [])
            rows.append(ids[: self.config.max_length])
        length = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(rows), length), int(pad), dtype=torch.long)
        real = torch.zeros(len(rows), length, dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)], real[i, : len(r)] = torch.tensor(r, dtype=torch.long), True
        labels = ids.masked_fill(~real, IGNORE)
        # right padding under the LM's causal attention, and no label on a pad: no mask is needed (see assemble)
        out = {"input_ids": to_device(ids, device), "attention_mask": None, "labels": to_device(labels, device)}
        if positions:
            out["label_positions"] = label_positions(labels)
        return out

    def sequence(
        self,
        conv: list[dict[str, str]],
        clips: list[int],
        visual: FrontEndOutput,
        times: torch.Tensor | None,
        generation: bool,
        name: str,
    ) -> tuple[_Parts, list[int], list[int]]:
        """One sample's token ids (-1 where a visual token goes), labels and visual group per position; whole turns
        are dropped from the end while it is longer than ``max_length``."""
        while True:
            pieces = self.chat.pieces(conv, generation=generation)
            holders = [p.clip for p in pieces if p.clip is not None]
            if len(holders) != len(clips):
                raise ConfigError(
                    f"sample {name}: the conversation has {len(holders)} <video>/<image> placeholders for "
                    f"{len(clips)} clips"
                )
            parts, labels, groups = self._expand(pieces, clips, visual, times)
            # training sequences fit max_length; a prompt to generate from fits the LM's context
            limit = self.context if generation else self.config.max_length
            if len(labels) <= limit:
                return parts, labels, groups
            droppable = not generation and len(conv) > 2 and "<video>" not in conv[-2]["content"]
            droppable = droppable and "<image>" not in conv[-2]["content"]
            if not droppable:
                raise ConfigError(
                    f"sample {name}: {len(labels)} tokens exceed {'the LM context' if generation else 'max_length'} "
                    f"{limit} and no whole turn can be dropped without cutting a clip's visual tokens"
                )
            conv = conv[:-2]

    def _expand(
        self, pieces: list, clips: list[int], visual: FrontEndOutput, times: torch.Tensor | None
    ) -> tuple[_Parts, list[int], list[int]]:
        """Ids, labels and groups of one sample's pieces; ``visual``'s ``mask`` and ``frame_index`` and ``times``
        are on the host."""
        parts = _Parts()
        labels: list[int] = []
        groups: list[int] = []

        def add(ids: list[int], target: bool = False) -> None:
            parts.ids.extend(ids)
            labels.extend(ids if target else [IGNORE] * len(ids))
            groups.extend([-1] * len(ids))

        def text(s: str, target: bool = False) -> None:
            add(self.tokenizer(s, add_special_tokens=False)["input_ids"], target)

        # prompt_tokens "whole": the ids come from one tokenization of the rendering (see _tokenize_whole)
        whole = None if self.mark is None else _tokenize_whole(self.tokenizer, pieces, self.mark)
        if whole is not None:
            add(whole[0])
            text_ids = iter(whole[1])
        for piece in pieces:
            if piece.clip is None:
                if whole is None:
                    text(piece.text, piece.target)
                else:
                    add(next(text_ids), piece.target)
                continue
            clip = clips[piece.clip]
            keep = torch.ones(visual.tokens.shape[1], dtype=torch.bool) if visual.mask is None else visual.mask[clip]
            frames = visual.frame_index[clip].tolist()
            stamps = None if times is None else token_times(visual.frame_index[clip][None], times[clip : clip + 1])[0]
            previous = None
            for m in torch.nonzero(keep).flatten().tolist():
                frame = frames[m]
                if frame != previous:
                    if previous is not None and self.config.frame_separator:
                        text(self.config.frame_separator)
                    if self.config.frame_times and frame >= 0 and stamps is not None:
                        text(f"Time {float(stamps[m]):.1f} s:")
                    previous = frame
                parts.visual_pos.append(len(parts.ids))
                parts.visual_src.append((clip, m))
                parts.ids.append(-1)
                labels.append(IGNORE)
                groups.append(clip)
            if previous is not None and self.config.frame_separator:
                text(self.config.frame_separator)
        if whole is not None:
            add(whole[2])
        return parts, labels, groups

    def mask(self, real: torch.Tensor, group: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` for causal attention, else an additive ``[B, 1, L, L]`` mask (see the module docstring)."""
        if self.config.visual_attention == "causal":
            return real.long()
        length = real.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=real.device).tril()
        gq, gk = group[:, :, None], group[:, None, :]
        same_clip = (gq == gk) & (gq >= 0)
        allowed = causal[None] | same_clip
        if self.config.visual_attention == "clip_causal":
            allowed = allowed & ~((gq >= 0) & (gk >= 0) & (gq != gk))
        allowed = allowed & real[:, None, :]
        allowed = allowed | torch.eye(length, dtype=torch.bool, device=real.device)[None]  # padded rows see one key
        zero = torch.zeros((), dtype=like.dtype, device=like.device)
        return torch.where(allowed, zero, torch.finfo(like.dtype).min)[:, None]


@dataclass
class _Parts:
    """A sample's token ids (-1 at visual positions) and where each visual token comes from."""

    ids: list[int] = field(default_factory=list)
    visual_pos: list[int] = field(default_factory=list)
    visual_src: list[tuple[int, int]] = field(default_factory=list)  # (clip, token)


def label_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions whose next token some row labels: ``labels [B, L]`` -> long ``[K]`` (where the LM head is needed).
    The builders take them from the labels while these are still on the host, so the loss does not read the labels
    back from an accelerator."""
    return (labels[:, 1:] != IGNORE).any(0).nonzero().squeeze(1)


def _placeholder_token(tokenizer: Any) -> str:
    """The placeholder that is one token of ``tokenizer`` (``prompt_tokens: whole`` writes every clip so)."""
    for mark in ("<video>", "<image>"):
        ids = tokenizer(mark, add_special_tokens=False)["input_ids"]
        if len(ids) == 1 and ids[0] != tokenizer.unk_token_id:
            return mark
    raise ConfigError("prompt_tokens: 'whole' needs <video> or <image> as one token of the LM tokenizer")


def _tokenize_whole(tokenizer: Any, pieces: list, mark: str) -> tuple[list[int], list[list[int]], list[int]]:
    """Tokenize a conversation's pieces in one call, each placeholder written as ``mark``.

    Returns:
        the ids the tokenizer adds before the text (BOS), the ids of each text piece in order (a token belongs to
        the piece holding its last character), and the ids it adds after the text.
    """
    text, ends = "", []
    for piece in pieces:
        text += mark if piece.clip is not None else piece.text
        ends.append(len(text))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    full = tokenizer(text)["input_ids"]
    at = next((k for k in range(len(full) - len(ids) + 1) if full[k : k + len(ids)] == ids), None)
    if at is None:
        raise ConfigError("prompt_tokens: 'whole' needs a tokenizer that only adds special tokens around the text")
    per_piece: list[list[int]] = [[] for _ in pieces]
    for tid, (a, b) in zip(ids, enc["offset_mapping"], strict=True):
        per_piece[min(bisect.bisect_right(ends, max(a, b - 1)), len(pieces) - 1)].append(tid)
    for piece, got in zip(pieces, per_piece, strict=True):
        if piece.clip is not None and len(got) != 1:
            raise ConfigError(f"prompt_tokens: the placeholder {mark} did not tokenize to one token in {text!r}")
    texts = [got for piece, got in zip(pieces, per_piece, strict=True) if piece.clip is None]
    return full[:at], texts, full[at + len(ids) :]


def sample_name(batch: dict[str, Any], i: int) -> str:
    paths = batch.get("path")
    return f"{i} ({paths[i]})" if paths and i < len(paths) and paths[i] else str(i)
