"""Generative family: CoCa-style captioner and prefix-LM captioner over video, with QA through the same decoder.

Two registered families share the video front-end (:class:`~vidvlm.models.frontend.VideoFrontEnd`: tower -> pooler
-> connector, giving ``M`` visual tokens ``[B, M, D]``) and a text decoder named ``decoder``
(``vidvlm.models.decoder``, one class per architecture; prompts and targets in ``vidvlm.models.prompting``):

* ``coca``: unimodal causal text blocks (``decoder.text_blocks``, with a class token appended at the end whose output
  is the text embedding), then multimodal blocks (``decoder.mm_blocks``) that cross-attend to the visual tokens.
  Loss: next-token captioning + ``contrastive_weight`` x the symmetric InfoNCE between the mean visual token and the
  text class token (``vidvlm.losses``), as CoCa trains both on the same towers. It reads every clip of a batch with
  its caption, instruction samples included (their rows' ``text`` is the caption), so a stage that mixes captions
  and questions keeps it (``contrastive_with_questions``, default true); clips given an explicit ``question`` (their
  ``text`` is an answer) are left out. ``hard_negatives`` adds the clips' hard negative captions to it
  (:mod:`vidvlm.models.negatives`).
* ``prefix_lm``: one stack of decoder blocks over ``[visual tokens; text]`` with the prefix-LM mask of
  ``layers/attention.py`` (``AttnMask(prefix_len=M)``): the visual prefix attends bidirectionally, text causally.

Question answering: when a batch holds ``question`` (list of str) the text is ``BOS question SEP answer EOS`` with
``text`` as the answer, and only answer tokens (and EOS) carry loss. Captioning is QA with no question.
Module-name prefixes for training stages: ``front_end.tower.``, ``front_end.pooler.``, ``front_end.connector.``,
``decoder.``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from vidvlm.data.conversations import question_answer_pairs
from vidvlm.devices import to_device
from vidvlm.errors import CheckpointError, ConfigError, VidVLMError
from vidvlm.layers.attention import AttnMask
from vidvlm.layers.connectors import ConnectorConfig
from vidvlm.layers.kv_cache import KVCache
from vidvlm.layers.pooling import PoolerConfig, masked_mean
from vidvlm.losses import clip_loss
from vidvlm.models.base import ANSWER, EMBED_TEXT, EMBED_VIDEO, FRONT_END, GENERATE, VISUAL_TOKENS, VLMModel
from vidvlm.models.decoder import CrossAttentionDecoder, DecoderConfig, PrefixDecoder, TextDecoder
from vidvlm.models.decoding import Cached, DecodeConfig, generate
from vidvlm.models.frontend import FrontEndConfig, TowerConfig, VideoFrontEnd
from vidvlm.models.negatives import NegativeDraw, check_hard_negatives, negative_targets
from vidvlm.models.prompting import QA_PROMPT, PromptLayout, lm_loss
from vidvlm.models.registry import register_family
from vidvlm.models.tokenizer import TextTokenizer
from vidvlm.models.vision import VisionConfig, migrate_vision


@dataclass
class TextGeneratorConfig:
    """What the config of every family with its own text decoder and tokenizer holds (:class:`TextGenerator`:
    ``coca``, ``prefix_lm``, ``early_fusion``); each family's config adds its own fields and defaults.

    Attributes:
        family: the registered family name.
        front_end: the video front-end (tower, pooler, connector to the decoder's input, frames, input size).
        decoder: the text decoder (``vocab_size`` is the embedding size; the tokenizer must fit in it).
        tokenizer_kind: ``word``, ``bpe`` or ``wordpiece``, trained on the captions by ``prepare_for_training``.
        caption_weight: weight of the captioning / answer loss.
        decode: default decoding options.
        answers_questions: set when the model trains on question-answer data; a model trained on captions alone
            refuses questions with a clear error instead of "answering" with a caption or nothing.
    """

    family: str = ""
    front_end: FrontEndConfig = field(default_factory=FrontEndConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    tokenizer_kind: Literal["word", "bpe", "wordpiece"] = "word"
    caption_weight: float = 1.0
    decode: DecodeConfig = field(default_factory=lambda: DecodeConfig(strategy="greedy", max_new_tokens=24))
    answers_questions: bool = False


@dataclass
class GenerativeConfig(TextGeneratorConfig):
    """A generative captioner: :class:`TextGeneratorConfig` with a contrastive head for ``coca``.

    Attributes:
        family: ``coca`` or ``prefix_lm`` (the same config serves both).
        embed_dim: width of the contrastive embeddings.
        contrastive_weight: weight of the contrastive loss (0 disables it; the default for ``prefix_lm``).
        contrastive_with_questions: the contrastive loss also in a batch that holds questions (instruction rows),
            over each clip and its caption; false keeps it to caption-only batches. On the moving-shapes QA recipe
            (BENCHMARKS.md, "Where is the motion?") true keeps retrieval (text-to-video R@1 0.55-0.58 against
            0.11-0.13) at a cost in answers (all 0.575-0.600 against 0.621-0.629, shape 0.44-0.54 against 0.72).
        hard_negatives: up to N of each clip's hard negative captions (the batch's ``negatives``) as extra text
            columns of the contrastive loss in training (0: none; needs ``contrastive_weight > 0``).
    """

    family: Literal["coca", "prefix_lm"] = "coca"
    front_end: FrontEndConfig = field(
        default_factory=lambda: FrontEndConfig(
            tower=TowerConfig(vision=VisionConfig(image_size=64, width=128, depth=4, num_heads=4)),
            pooler=PoolerConfig("spatial2d", {"size": 2, "num_prefix_tokens": 1}),
            connector=ConnectorConfig(name="mlp"),
            num_frames=8,
        )
    )
    embed_dim: int = 128
    contrastive_weight: float = 0.1
    contrastive_with_questions: bool = True
    hard_negatives: int = 0

    def __post_init__(self) -> None:
        check_hard_negatives(self.hard_negatives, weight=self.contrastive_weight, weight_key="contrastive_weight")
        if self.front_end.connector.name == "none":
            raise ConfigError("front_end.connector: the decoder needs a connector to its width (linear or mlp)")

    @classmethod
    def tiny(cls, **overrides: Any) -> GenerativeConfig:
        """A minute model for tests (tens of thousands of parameters)."""
        vision = VisionConfig(image_size=32, patch_size=16, width=32, depth=1, num_heads=2, num_tubelets=4)
        base: dict[str, Any] = dict(
            front_end=FrontEndConfig(
                tower=TowerConfig(vision=vision),
                pooler=PoolerConfig("spatial2d", {"size": 1, "num_prefix_tokens": 1}),
                connector=ConnectorConfig(name="mlp"),
                num_frames=4,
            ),
            decoder=DecoderConfig(width=32, num_heads=2, text_depth=1, depth=1, max_len=24, vocab_size=64),
            embed_dim=16,
        )
        base.update(overrides)
        return cls(**base)


@dataclass
class PrefixLMConfig(GenerativeConfig):
    """:class:`GenerativeConfig` with the ``prefix_lm`` defaults (no contrastive loss)."""

    family: Literal["coca", "prefix_lm"] = "prefix_lm"
    contrastive_weight: float = 0.0


def _default_corpus() -> list[str]:
    """The captions a fresh model's tokenizer covers: the synthetic data's vocabulary (videos and stills)."""
    from vidvlm.data.synthetic import all_captions

    return [*all_captions(), *all_captions(images=True), QA_PROMPT.format("what")]


class TextGenerator(VLMModel):
    """What every family with its own text decoder and tokenizer shares (``coca``, ``prefix_lm``,
    ``early_fusion``): the tokenizer's lifecycle, the prompt layout and the saved config.

    The family's config is a :class:`TextGeneratorConfig`.
    """

    # -- tokenizer ---------------------------------------------------------------------------------------------
    def _train_tokenizer(self, captions: list[str]) -> TextTokenizer:
        """Trained on the training captions (the synthetic vocabulary when there are none) and the QA words."""
        corpus = captions or _default_corpus()
        return TextTokenizer.train(
            [*corpus, QA_PROMPT.format("")], self.config.decoder.vocab_size, kind=self.config.tokenizer_kind
        )

    def _check_tokenizer(self, tok: TextTokenizer) -> None:
        if tok.vocab_size > self.config.decoder.vocab_size:
            raise ConfigError(
                f"decoder.vocab_size: the tokenizer has {tok.vocab_size} ids, "
                f"more than {self.config.decoder.vocab_size}"
            )
        if tok.hf.eos_token_id is None:
            raise CheckpointError("tokenizer: an end-of-sequence token is required for generation")

    @classmethod
    def _build_for_restore(cls, config: Any, directory: Path) -> TextGenerator:
        return cls(config, tokenizer=TextTokenizer.load(directory))  # it cannot work without its tokenizer

    @property
    def layout(self) -> PromptLayout:
        """Prompt and target layout of the model's tokenizer."""
        return PromptLayout(self.require_tokenizer(), self.config.decoder.max_len)

    def config_for_save(self) -> Any:
        """The config with the resolved front-end (no pretrained source, which the weights replace)."""
        return dataclasses.replace(self.config, front_end=self.front_end.resolved_config())

    def build_targets(
        self, answers: Sequence[str], questions: Sequence[str | None] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """See :meth:`vidvlm.models.prompting.PromptLayout.build_targets`."""
        return self.layout.build_targets(answers, questions)

    def _text_rows(self, batch: dict[str, Any]) -> tuple[list[str], list[str | None] | None, torch.Tensor | None]:
        """The batch's text as training rows: B captions (with ``question`` when given), or, when samples carry a
        ``conversation`` (instruction data), one row per question-answer turn of each, whose clip ``clip_of`` names.

        Returns:
            texts (R targets), questions (R, None entries for captions; None when there are none) and ``clip_of``
            long ``[R]`` on the host (None when the rows are the B samples).
        """
        conversations = batch.get("conversation")
        if conversations is None or not any(conversations):
            return list(batch["text"]), batch.get("question"), None
        texts: list[str] = []
        questions: list[str | None] = []
        clip_of: list[int] = []
        paths = batch.get("path")
        for i, (caption, turns) in enumerate(zip(batch["text"], conversations, strict=True)):
            try:
                pairs = question_answer_pairs(turns) if turns else [(None, caption)]
            except VidVLMError as e:  # name the sample, when the batch says which file it is
                raise VidVLMError(f"{paths[i]}: {e}" if paths else str(e)) from e
            for question, answer in pairs:
                texts.append(answer)
                questions.append(question)
                clip_of.append(i)
        return texts, questions, torch.tensor(clip_of)

    def _note_questions(self, questions: Sequence[str | None] | None) -> None:
        """In training, a batch with questions marks the model as one that answers (saved with it)."""
        if questions is not None and self.training:
            self.config.answers_questions = True

    def _prompts(
        self, layout: PromptLayout, questions: Sequence[str | None] | None, n: int, cfg: DecodeConfig
    ) -> tuple[list[list[int]], DecodeConfig]:
        """The ``n`` prompts to continue (a caption's where ``questions`` is None) and ``cfg`` with
        ``max_new_tokens`` cut to what the decoder's ``max_len`` leaves after the longest prompt."""
        prompts = layout.prompts(questions if questions is not None else [None] * n)
        limit = self.config.decoder.max_len - max(len(p) for p in prompts)
        if limit < 1:
            raise ConfigError(f"question: too long for the decoder's max_len {self.config.decoder.max_len}")
        return prompts, dataclasses.replace(cfg, max_new_tokens=min(cfg.max_new_tokens, limit))

    def answers_questions(self) -> bool:
        """Only once trained on question-answer data (``config.answers_questions``, set by training and saved)."""
        return super().answers_questions() and self.config.answers_questions

    def _check_can_answer(self, questions: Sequence[str | None] | None) -> None:
        """A model trained on captions alone refuses questions instead of "answering" with a caption."""
        if questions is not None and any(questions) and not self.answers_questions():
            raise ConfigError(
                f"question: this {self.family_name} model was trained on captions only, so it cannot answer "
                "questions (train it on question-answer data, or caption without --question)"
            )


class _Captioner(TextGenerator):
    """Shared front-end, losses and decoding of the two generative families (see the module docstring)."""

    config_class = GenerativeConfig
    abilities = frozenset({EMBED_VIDEO, EMBED_TEXT, GENERATE, ANSWER, VISUAL_TOKENS, FRONT_END})
    legacy_prefixes = {
        "vision.": "front_end.tower.",
        "pooler.": "front_end.pooler.",
        "connector.": "front_end.connector.",
    }
    decoder_class: type[TextDecoder] = CrossAttentionDecoder

    def __init__(self, config: GenerativeConfig, tokenizer: TextTokenizer | None = None) -> None:
        super().__init__(config)
        if config.family != self.family_name:
            raise ConfigError(f"family: {type(self).__name__} builds {self.family_name!r}, got {config.family!r}")
        if config.decoder.vocab_size < 8:
            raise ConfigError(f"decoder.vocab_size: must be >= 8, got {config.decoder.vocab_size}")
        self.front_end = VideoFrontEnd(config.front_end, config.decoder.width)
        if config.front_end.tower.name == "native":
            # trained from scratch, so no image model needs preserving: a random (not zero) temporal table lets
            # joint attention tell frames apart from the first step, which motion direction depends on
            nn.init.normal_(self.front_end.base_tower.pos_embed.temporal, std=0.02)
        self.decoder = self.decoder_class(config.decoder)
        d = config.decoder.width
        self.video_proj = nn.Linear(d, config.embed_dim, bias=False)
        self.text_proj = nn.Linear(d, config.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.draw_negatives = NegativeDraw(config.hard_negatives)
        if tokenizer is not None:
            self.set_tokenizer(tokenizer)

    @classmethod
    def migrate_config(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Configs written before the front-end: ``vision``/``pooler``/``connector``/``image_size``/``norm_preset``/
        ``num_frames`` become ``front_end``."""
        if "front_end" in data or "vision" not in data:
            return data
        data = dict(data)
        data["front_end"] = {
            "tower": {"name": "native", "vision": migrate_vision(data.pop("vision"))},
            "pooler": data.pop("pooler", {"name": "spatial2d", "params": {"size": 2, "num_prefix_tokens": 1}}),
            "connector": {"name": data.pop("connector", "mlp")},
            "num_frames": data.pop("num_frames", 8),
            "image_size": data.pop("image_size", 64),
            "normalize": data.pop("norm_preset", "clip"),
        }
        return data

    # -- towers ------------------------------------------------------------------------------------------------
    def visual_tokens(
        self, video: torch.Tensor, frame_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``video [B, T, 3, H, W]`` -> decoder-width visual tokens ``[B, M, D]`` and their mask ``[B, M]`` or None."""
        out = self.front_end(video, frame_mask)
        return out.tokens, out.mask

    def _video_embedding(self, visual: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return F.normalize(self.video_proj(masked_mean(visual, mask)), dim=-1)

    def encode_video(self, video: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``video [B, T, 3, H, W]`` -> normalised ``[B, embed_dim]`` (mean visual token, projected)."""
        return self._video_embedding(*self.visual_tokens(video, frame_mask))

    def _text_embedding(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """B captions -> normalised ``[B, embed_dim]``."""
        ids, _, lengths = (to_device(t, self.logit_scale.device) for t in self.build_targets(texts))
        return self._text_embedding(ids, lengths)

    def logits(
        self, ids: torch.Tensor, visual: torch.Tensor, mask: torch.Tensor | None, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``ids [B, L]`` + visual tokens ``[B, M, D]`` (mask ``[B, M]``) -> next-token logits ``[B, L, V]``."""
        return self.decoder(ids, visual, lengths, visual_mask=mask)

    # -- training ----------------------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Losses on a collated batch.

        Args:
            batch: ``video [B, T, 3, H, W]``, ``frame_mask [B, T]`` (optional), ``text`` (B captions, or answers when
                ``question`` is given), ``question`` (optional, B strings), ``conversation`` (optional, B lists of
                turns or None: a sample with one trains on each of its question-answer turns instead of its caption).

        Returns:
            ``{"caption_loss": ..., "contrastive_loss": ...}``, each already weighted; the second when
            ``contrastive_weight > 0``, over the clips whose caption the batch holds (:meth:`_caption_pairs`: all of
            them, also in a batch with conversations, but not those given an explicit ``question``), when at least
            two, and in a batch with questions only with ``contrastive_with_questions``.
        """
        video = batch["video"]
        clip_visual, clip_mask = self.visual_tokens(video, batch.get("frame_mask"))
        visual, mask = clip_visual, clip_mask
        texts, questions, clip_of = self._text_rows(batch)
        self._note_questions(questions)
        if clip_of is not None:  # instruction data: one row per question, each reading its clip's tokens
            clip_of = to_device(clip_of, video.device)
            visual, mask = visual[clip_of], None if mask is None else mask[clip_of]
        ids, targets, lengths = (to_device(t, video.device) for t in self.build_targets(texts, questions))
        out = {"caption_loss": self.config.caption_weight * lm_loss(self.logits(ids, visual, mask, lengths), targets)}
        if self.config.contrastive_weight > 0 and (questions is None or self.config.contrastive_with_questions):
            rows = None if clip_of is not None else (ids, lengths)  # rows that are the B samples' texts
            asked = None if clip_of is not None else questions  # conversation samples hold their captions
            pairs = self._caption_pairs(batch["text"], asked, clip_visual, clip_mask, rows)
            if pairs is not None:
                out["contrastive_loss"] = self.config.contrastive_weight * self._contrastive_loss(batch, *pairs)
        return out

    def _contrastive_loss(
        self,
        batch: dict[str, Any],
        visual: torch.Tensor,
        mask: torch.Tensor | None,
        ids: torch.Tensor,
        lengths: torch.Tensor,
        keep: list[int],
    ) -> torch.Tensor:
        """InfoNCE of K clips (``visual [K, M, D]``, ``mask [K, M]``) with their captions (``ids [K, L]``,
        ``lengths [K]``), rows ``keep`` of the batch; in training with ``hard_negatives`` each kept clip's drawn
        negatives are extra columns positive for no clip. -> scalar."""
        v = self._video_embedding(visual, mask)
        t = self._text_embedding(ids, lengths)
        t2v = torch.arange(len(keep))
        negatives = self.draw_negatives(batch, [batch["text"][i] for i in keep], self.training, keep)
        if negatives:
            t, t2v = torch.cat([t, self.encode_text(negatives)]), negative_targets(t2v, len(negatives))
        return clip_loss(v, t, self.logit_scale.exp().clamp(max=100), t2v)

    def _caption_pairs(
        self,
        texts: Sequence[str],
        asked: Sequence[str | None] | None,
        visual: torch.Tensor,
        mask: torch.Tensor | None,
        rows: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor] | None:
        """The clips the contrastive loss reads, with their captions: every clip of the batch (a sample with a
        conversation still has its row's caption in ``text``), except those given an explicit ``question``, whose
        ``text`` is an answer. None under two clips (no negatives).

        Args:
            texts: the batch's B ``text`` entries.
            asked: the B explicit questions (None entries for captions), or None when there are none.
            visual, mask: the clips' tokens ``[B, M, D]`` and mask ``[B, M]`` (or None).
            rows: the decoder rows' ``(ids [B, L], lengths [B])`` when they are the B samples' texts (reused when
                every clip is kept), else None.

        Returns:
            ``(visual [K, M, D], mask [K, M] or None, ids [K, L'], lengths [K], keep)`` (``keep``: the K batch rows)
            or None.
        """
        keep = [i for i, q in enumerate(asked if asked is not None else [None] * len(texts)) if q is None]
        if len(keep) < 2:
            return None
        if rows is not None and len(keep) == len(texts):
            return visual, mask, *rows, keep
        index = torch.tensor(keep, device=visual.device)
        ids, _, lengths = (to_device(t, visual.device) for t in self.build_targets([texts[i] for i in keep]))
        return visual[index], None if mask is None else mask[index], ids, lengths, keep

    # -- generation --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        video: torch.Tensor,
        frame_mask: torch.Tensor | None = None,
        questions: Sequence[str | None] | None = None,
        decode: DecodeConfig | None = None,
        clip_of: torch.Tensor | None = None,
    ) -> list[str]:
        """Caption (or answer a question about) each clip.

        Args:
            video: ``[N, T, 3, H, W]`` after :attr:`transform`.
            frame_mask: bool ``[N, T]`` (None = all real).
            questions: B questions (None, or None entries, for captions).
            decode: decoding options (default: ``config.decode``).
            clip_of: long ``[B]``, the clip each output is about (each clip is encoded once); None: ``B = N``, one
                output per clip.

        Returns:
            B strings.
        """
        cfg = decode or self.config.decode
        self._check_can_answer(questions)
        visual, mask = self.visual_tokens(video, frame_mask)
        if clip_of is not None:
            visual, mask = visual[clip_of], None if mask is None else mask[clip_of]
        layout = self.layout
        prompts, cfg = self._prompts(layout, questions, visual.shape[0], cfg)

        def rows_of(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
            return visual[rows], None if mask is None else mask[rows]

        def recompute(tokens: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            return self.logits(tokens, *rows_of(rows))[:, -1]

        def first(prompt: torch.Tensor, rows: torch.Tensor, cache: KVCache) -> torch.Tensor:
            v, m = rows_of(rows)
            return self.decoder(prompt, v, visual_mask=m, cache=cache)[:, -1]

        def then(last: torch.Tensor, cache: KVCache) -> torch.Tensor:
            return self.decoder(last, None, cache=cache)[:, -1]

        step = Cached(self.decoder.new_cache, first, then) if cfg.use_cache else recompute
        ids = generate(step, prompts, layout.eos_id, layout.pad_id, cfg, device=video.device)
        return layout.decode(ids)


@register_family("coca")
class CoCaCaptioner(_Captioner):
    """CoCa over video: unimodal text blocks, then cross-attending multimodal blocks; caption + contrastive loss."""

    decoder_class = CrossAttentionDecoder

    def _text_embedding(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        _, cls = self.decoder.text_features(ids, lengths)
        return F.normalize(self.text_proj(cls), dim=-1)


@register_family("prefix_lm")
class PrefixLMCaptioner(_Captioner):
    """Prefix-LM captioner: projected visual tokens are a bidirectional prefix of a causal text decoder."""

    config_class = PrefixLMConfig
    decoder_class = PrefixDecoder

    def _text_embedding(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # text alone through the decoder (causal); the last real token has read the whole caption
        x = self.decoder.hidden(self.decoder.embed(ids), AttnMask(causal=True))
        last = x[torch.arange(ids.shape[0], device=ids.device), lengths - 1]
        return F.normalize(self.text_proj(self.decoder.norm(last)), dim=-1)


__all__ = ["GenerativeConfig", "PrefixLMConfig", "CoCaCaptioner", "PrefixLMCaptioner"]
