"""Generative family: CoCa-style captioner and prefix-LM captioner over video, with QA through the same decoder.

Two registered families share the video front-end (``vision`` ViT -> ``pooler`` -> ``connector``, giving ``M``
visual tokens ``[B, M, D]``) and a text decoder named ``decoder``:

* ``coca``: unimodal causal text blocks (``decoder.text_blocks``, with a class token appended at the end whose output
  is the text embedding), then multimodal blocks (``decoder.mm_blocks``) that cross-attend to the visual tokens.
  Loss: next-token captioning + ``contrastive_weight`` x the symmetric InfoNCE between the mean visual token and the
  text class token (``vidvlm.losses``), as CoCa trains both on the same towers.
* ``prefix_lm``: one stack of decoder blocks over ``[visual tokens; text]`` with the prefix-LM mask of
  ``layers/attention.py`` (``AttnMask(prefix_len=M)``): the visual prefix attends bidirectionally, text causally.

Question answering: when a batch holds ``question`` (list of str) the text is ``BOS question SEP answer EOS`` with
``text`` as the answer, and only answer tokens (and EOS) carry loss. Captioning is QA with no question.
Module-name prefixes for training stages: ``vision.``, ``pooler.``, ``connector.``, ``decoder.``.
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
from einops import rearrange, reduce
from torch import nn

from vidvlm.errors import CheckpointError, ConfigError
from vidvlm.layers.attention import AttnMask
from vidvlm.layers.connectors import build_connector
from vidvlm.layers.pooling import PoolerConfig, build_pooler
from vidvlm.layers.transformer import TransformerBlock
from vidvlm.losses import clip_loss
from vidvlm.models.base import ANSWER, EMBED_TEXT, EMBED_VIDEO, GENERATE, VISUAL_TOKENS, VLMModel
from vidvlm.models.decoding import DecodeConfig, generate
from vidvlm.models.registry import register_family
from vidvlm.models.tokenizer import TextTokenizer
from vidvlm.models.vision import VideoViT, VisionConfig

IGNORE = -100


@dataclass
class DecoderConfig:
    """Text decoder.

    Attributes:
        width: token width D (the connector maps visual tokens to it).
        num_heads: attention heads.
        text_depth: CoCa unimodal (causal, text-only) blocks; unused by ``prefix_lm``.
        depth: multimodal blocks (CoCa, with cross-attention) or prefix-LM blocks.
        mlp_ratio: MLP width / D.
        max_len: most text tokens (BOS, question, answer, EOS) a sequence may hold.
        vocab_size: filled from the tokenizer when it is trained (``prepare_for_training``).
    """

    width: int = 256
    num_heads: int = 4
    text_depth: int = 2
    depth: int = 2
    mlp_ratio: float = 4.0
    max_len: int = 32
    vocab_size: int = 0


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over positions whose target is not ``IGNORE``.

    Args:
        logits: ``[B, L, V]``, the prediction at each position for the token after it.
        targets: long ``[B, L]``, the next token or ``IGNORE`` (question tokens, padding).
    """
    return F.cross_entropy(rearrange(logits, "b l v -> (b l) v").float(), targets.flatten(), ignore_index=IGNORE)


class TextDecoder(nn.Module):
    """Token + position embeddings, optional unimodal blocks, multimodal blocks, LM head.

    Args:
        cfg: decoder settings.
        cross_attention: CoCa (True: unimodal then cross-attending blocks) or prefix-LM (False).
    """

    def __init__(self, cfg: DecoderConfig, cross_attention: bool) -> None:
        super().__init__()
        d = cfg.width
        self.cfg = cfg
        self.cross_attention = cross_attention
        self.token_embed = nn.Embedding(cfg.vocab_size, d)
        self.pos_embed = nn.Parameter(torch.randn(cfg.max_len + 1, d) * 0.02)
        if cross_attention:
            self.cls_token = nn.Parameter(torch.randn(d) * 0.02)
            self.text_blocks = nn.ModuleList(
                TransformerBlock(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.text_depth)
            )
            self.cls_norm = nn.LayerNorm(d, eps=1e-6)
        else:
            self.prefix_embed = nn.Parameter(torch.zeros(d))  # marks visual tokens as such
        self.mm_blocks = nn.ModuleList(
            TransformerBlock(d, cfg.num_heads, cfg.mlp_ratio, cross_attention=cross_attention) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.head = nn.Linear(d, cfg.vocab_size)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids [B, L] -> [B, L, D]`` with positions."""
        return self.token_embed(ids) + self.pos_embed[: ids.shape[1]]

    def text_features(self, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CoCa unimodal pass: ``ids [B, L]`` (right padded, ``lengths [B]``) -> text tokens ``[B, L, D]`` and the
        class-token embedding ``[B, D]``. The class token sits after the padding; padded keys are hidden."""
        b, n = ids.shape
        x = torch.cat([self.embed(ids), (self.cls_token + self.pos_embed[n]).expand(b, 1, -1)], dim=1)
        real = torch.arange(n + 1, device=ids.device)[None] < lengths[:, None]
        real[:, n] = True
        mask = AttnMask(causal=True, key_padding=real)
        for blk in self.text_blocks:
            x = blk(x, mask)
        return x[:, :n], self.cls_norm(x[:, n])

    def forward(
        self,
        ids: torch.Tensor,
        visual: torch.Tensor,
        lengths: torch.Tensor | None = None,
        visual_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-token logits.

        Args:
            ids: long ``[B, L]`` text (right padded; padding after the real tokens never reaches them causally).
            visual: ``[B, M, D]`` visual tokens (context for CoCa, prefix for prefix-LM).
            lengths: real tokens per row (CoCa's class token needs it; default: all real).
            visual_mask: bool ``[B, M]``, True for real visual tokens (padded frames give False); None = all real.

        Returns:
            ``[B, L, V]`` logits for the token after each text position.
        """
        if self.cross_attention:
            if lengths is None:
                lengths = torch.full((ids.shape[0],), ids.shape[1], device=ids.device)
            x, _ = self.text_features(ids, lengths)
            ctx_mask = None if visual_mask is None else AttnMask(key_padding=visual_mask)
            for blk in self.mm_blocks:
                x = blk(x, AttnMask(causal=True), context=visual, context_mask=ctx_mask)
        else:
            m = visual.shape[1]
            x = torch.cat([visual + self.prefix_embed, self.embed(ids)], dim=1)
            keys = None
            if visual_mask is not None:
                keys = torch.cat([visual_mask, visual_mask.new_ones(ids.shape)], dim=1)
            mask = AttnMask(prefix_len=m, key_padding=keys)  # visual prefix bidirectional, text causal
            for blk in self.mm_blocks:
                x = blk(x, mask)
            x = x[:, m:]
        return self.head(self.norm(x))


@dataclass
class GenerativeConfig:
    """A generative captioner: video front-end + text decoder + tokenizer settings.

    Attributes:
        family: ``coca`` or ``prefix_lm`` (the same config serves both).
        vision: the video ViT.
        pooler: the pooler turning ``[B, T, N, D]`` into ``[B, M, D]``.
        connector: ``linear`` or ``mlp`` (visual width -> decoder width).
        decoder: the text decoder (``vocab_size`` is the embedding size; the tokenizer must fit in it).
        tokenizer_kind: ``word``, ``bpe`` or ``wordpiece``, trained on the captions by ``prepare_for_training``.
        image_size: input side of the evaluation transform.
        norm_preset: normalisation of the evaluation transform.
        num_frames: frames sampled per video at inference (uniform sampler).
        embed_dim: width of the contrastive embeddings.
        contrastive_weight: weight of the contrastive loss (0 disables it; the default for ``prefix_lm``).
        caption_weight: weight of the captioning / answer loss.
        decode: default decoding options.
    """

    family: Literal["coca", "prefix_lm"] = "coca"
    vision: VisionConfig = field(default_factory=lambda: VisionConfig(image_size=64, width=128, depth=4, num_heads=4))
    pooler: PoolerConfig = field(default_factory=lambda: PoolerConfig("spatial2d", {"size": 2, "num_prefix_tokens": 1}))
    connector: Literal["linear", "mlp"] = "mlp"
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    tokenizer_kind: Literal["word", "bpe", "wordpiece"] = "word"
    image_size: int = 64
    norm_preset: str = "clip"
    num_frames: int = 8
    embed_dim: int = 128
    contrastive_weight: float = 0.1
    caption_weight: float = 1.0
    decode: DecodeConfig = field(default_factory=lambda: DecodeConfig(strategy="greedy", max_new_tokens=24))

    @classmethod
    def tiny(cls, **overrides: Any) -> GenerativeConfig:
        """A minute model for tests (tens of thousands of parameters)."""
        family = overrides.get("family", cls.family)
        base: dict[str, Any] = dict(
            vision=VisionConfig(image_size=32, patch_size=16, width=32, depth=1, num_heads=2, num_frames=4),
            pooler=PoolerConfig("spatial2d", {"size": 1, "num_prefix_tokens": 1}),
            decoder=DecoderConfig(width=32, num_heads=2, text_depth=1, depth=1, max_len=24, vocab_size=64),
            image_size=32,
            num_frames=4,
            embed_dim=16,
            contrastive_weight=0.1 if family == "coca" else 0.0,
        )
        base.update(overrides)
        return cls(**base)


@dataclass
class PrefixLMConfig(GenerativeConfig):
    """:class:`GenerativeConfig` with the ``prefix_lm`` defaults (no contrastive loss)."""

    family: Literal["coca", "prefix_lm"] = "prefix_lm"
    contrastive_weight: float = 0.0


QA_PROMPT = "question {} answer"  # the words "question" / "answer" join every tokenizer's training corpus


def _default_corpus() -> list[str]:
    """The captions a fresh model's tokenizer covers: the synthetic data's vocabulary (videos and stills)."""
    from vidvlm.data.synthetic import all_captions

    return [*all_captions(), *all_captions(images=True), QA_PROMPT.format("what")]


class _Captioner(VLMModel):
    """Shared front-end, losses and decoding of the two generative families (see the module docstring)."""

    config_class = GenerativeConfig
    abilities = frozenset({EMBED_VIDEO, EMBED_TEXT, GENERATE, ANSWER, VISUAL_TOKENS})
    cross_attention: bool = True

    def __init__(self, config: GenerativeConfig, tokenizer: TextTokenizer | None = None) -> None:
        super().__init__(config)
        if config.family != self.family_name:
            raise ConfigError(f"family: {type(self).__name__} builds {self.family_name!r}, got {config.family!r}")
        if config.decoder.vocab_size < 8:
            raise ConfigError(f"decoder.vocab_size: must be >= 8, got {config.decoder.vocab_size}")
        self.vision = VideoViT(config.vision)
        # trained from scratch, so no image model needs preserving: a random (not zero) temporal table lets joint
        # attention tell frames apart from the first step, which motion direction depends on
        nn.init.normal_(self.vision.pos_embed.temporal, std=0.02)
        self.pooler = build_pooler(config.pooler, self.vision.width)
        self.connector = build_connector(config.connector, self.vision.width, config.decoder.width)
        self.decoder = TextDecoder(config.decoder, cross_attention=self.cross_attention)
        d = config.decoder.width
        self.video_proj = nn.Linear(d, config.embed_dim, bias=False)
        self.text_proj = nn.Linear(d, config.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.tokenizer = tokenizer if tokenizer is not None else self._train_tokenizer(_default_corpus())

    # -- tokenizer ---------------------------------------------------------------------------------------------
    def _train_tokenizer(self, captions: Sequence[str]) -> TextTokenizer:
        tok = TextTokenizer.train(
            [*captions, QA_PROMPT.format("")], self.config.decoder.vocab_size, kind=self.config.tokenizer_kind
        )
        self._check_tokenizer(tok)
        return tok

    def _check_tokenizer(self, tok: TextTokenizer) -> None:
        if tok.vocab_size > self.config.decoder.vocab_size:
            raise ConfigError(
                f"decoder.vocab_size: the tokenizer has {tok.vocab_size} ids, "
                f"more than {self.config.decoder.vocab_size}"
            )
        if tok.hf.eos_token_id is None:
            raise CheckpointError("tokenizer: an end-of-sequence token is required for generation")

    def prepare_for_training(self, captions: Sequence[str]) -> None:
        """Train the tokenizer on the training captions (called by the trainer before the first step)."""
        if captions:
            self.tokenizer = self._train_tokenizer(captions)

    def _save_extra(self, directory: Path) -> None:
        self.tokenizer.save(directory)

    @classmethod
    def _build_for_restore(cls, config: GenerativeConfig, directory: Path) -> _Captioner:
        return cls(config, tokenizer=TextTokenizer.load(directory))

    @property
    def transform(self):
        from vidvlm.data.transforms import build_transform

        return build_transform(self.config.image_size, preset=self.config.norm_preset)

    @property
    def num_frames(self) -> int:
        return self.config.num_frames

    # -- text layout -------------------------------------------------------------------------------------------
    @property
    def bos_id(self) -> int:
        hf = self.tokenizer.hf
        return int(hf.bos_token_id if hf.bos_token_id is not None else hf.eos_token_id)

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.hf.eos_token_id)

    def _ids(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tokenizer.hf(list(texts), add_special_tokens=False)["input_ids"]

    def prompts(self, questions: Sequence[str | None]) -> list[list[int]]:
        """Token prompts: ``[BOS]`` for a caption, ``[BOS] question ...`` for a question."""
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
        max_len = self.config.decoder.max_len
        seqs, starts = [], []
        for p, a in zip(prompts, self._ids(answers), strict=True):
            seq = (p + a)[: max_len - 1] + [self.eos_id]
            seqs.append(seq)
            starts.append(min(len(p), len(seq) - 1))
        length = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_id
        ids = torch.full((len(seqs), length), pad, dtype=torch.long)
        targets = torch.full((len(seqs), length), IGNORE, dtype=torch.long)
        for i, (seq, start) in enumerate(zip(seqs, starts, strict=True)):
            ids[i, : len(seq)] = torch.tensor(seq)
            # position j predicts token j+1; only answer tokens (from index `start`) and EOS are targets
            targets[i, start - 1 : len(seq) - 1] = torch.tensor(seq[start:])
        lengths = torch.tensor([len(s) for s in seqs])
        return ids, targets, lengths

    # -- towers ------------------------------------------------------------------------------------------------
    def visual_tokens(
        self, video: torch.Tensor, frame_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``video [B, T, 3, H, W]`` -> decoder-width visual tokens ``[B, M, D]`` and their mask ``[B, M]`` or None."""
        out = self.vision(video, frame_mask)
        tokens, tmask = out.last_hidden_state, out.frame_mask  # [B, T', N', D], [B, T'] or None
        pooled = self.pooler(tokens, tmask)
        mask = None if tmask is None else self.pooler.output_mask(tmask, tokens.shape[2]).to(video.device)
        return self.connector(pooled), mask

    def _video_embedding(self, visual: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if mask is None:
            mean = reduce(visual, "b m d -> b d", "mean")
        else:
            w = mask.to(visual.dtype)[..., None]
            mean = (visual * w).sum(1) / w.sum(1).clamp(min=1)
        return F.normalize(self.video_proj(mean), dim=-1)

    def encode_video(self, video: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``video [B, T, 3, H, W]`` -> normalised ``[B, embed_dim]`` (mean visual token, projected)."""
        return self._video_embedding(*self.visual_tokens(video, frame_mask))

    def _text_embedding(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """B captions -> normalised ``[B, embed_dim]``."""
        ids, _, lengths = self.build_targets(texts)
        dev = self.logit_scale.device
        return self._text_embedding(ids.to(dev), lengths.to(dev))

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
                ``question`` is given), ``question`` (optional, B strings).

        Returns:
            ``{"caption_loss": ..., "contrastive_loss": ...}`` (the second only when ``contrastive_weight > 0`` and
            there are no questions), each already weighted.
        """
        video = batch["video"]
        visual, mask = self.visual_tokens(video, batch.get("frame_mask"))
        questions = batch.get("question")
        ids, targets, lengths = (t.to(video.device) for t in self.build_targets(batch["text"], questions))
        out = {"caption_loss": self.config.caption_weight * lm_loss(self.logits(ids, visual, mask, lengths), targets)}
        if self.config.contrastive_weight > 0 and questions is None:
            v = self._video_embedding(visual, mask)
            t = self._text_embedding(ids, lengths)
            scale = self.logit_scale.exp().clamp(max=100)
            out["contrastive_loss"] = self.config.contrastive_weight * clip_loss(v, t, scale)
        return out

    # -- generation --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        video: torch.Tensor,
        frame_mask: torch.Tensor | None = None,
        questions: Sequence[str | None] | None = None,
        decode: DecodeConfig | None = None,
    ) -> list[str]:
        """Caption (or answer a question about) each clip.

        Args:
            video: ``[B, T, 3, H, W]`` after :attr:`transform`.
            frame_mask: bool ``[B, T]`` (None = all real).
            questions: B questions (None, or None entries, for captions).
            decode: decoding options (default: ``config.decode``).

        Returns:
            B strings.
        """
        cfg = decode or self.config.decode
        visual, mask = self.visual_tokens(video, frame_mask)
        prompts = self.prompts(questions if questions is not None else [None] * video.shape[0])
        limit = self.config.decoder.max_len - max(len(p) for p in prompts)
        if limit < 1:
            raise ConfigError(f"question: too long for the decoder's max_len {self.config.decoder.max_len}")
        cfg = dataclasses.replace(cfg, max_new_tokens=min(cfg.max_new_tokens, limit))

        def step(tokens: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            return self.logits(tokens, visual[rows], None if mask is None else mask[rows])[:, -1]

        ids = generate(step, prompts, self.eos_id, self.tokenizer.pad_id, cfg, device=video.device)
        return [self.tokenizer.hf.decode(s, skip_special_tokens=True).strip() for s in ids]


@register_family("coca")
class CoCaCaptioner(_Captioner):
    """CoCa over video: unimodal text blocks, then cross-attending multimodal blocks; caption + contrastive loss."""

    cross_attention = True

    def _text_embedding(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        _, cls = self.decoder.text_features(ids, lengths)
        return F.normalize(self.text_proj(cls), dim=-1)


@register_family("prefix_lm")
class PrefixLMCaptioner(_Captioner):
    """Prefix-LM captioner: projected visual tokens are a bidirectional prefix of a causal text decoder."""

    config_class = PrefixLMConfig
    cross_attention = False

    def _text_embedding(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # text alone through the decoder (causal); the last real token has read the whole caption
        x = self.decoder.embed(ids)
        for blk in self.decoder.mm_blocks:
            x = blk(x, AttnMask(causal=True))
        last = x[torch.arange(ids.shape[0], device=ids.device), lengths - 1]
        return F.normalize(self.text_proj(self.decoder.norm(last)), dim=-1)


__all__ = [
    "GenerativeConfig",
    "PrefixLMConfig",
    "DecoderConfig",
    "CoCaCaptioner",
    "PrefixLMCaptioner",
    "TextDecoder",
    "lm_loss",
    "IGNORE",
]
