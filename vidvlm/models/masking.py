"""Masking family over video (FLAVA, X-FM): a video encoder, a text encoder and a fusion encoder, trained by
hiding part of the input and predicting it, plus contrastive and matching objectives.

    video [B,T,3,H,W] ──VideoFrontEnd──▶ tokens [B,M,Dv] ──mean──▶ video_proj ──L2──▶ video embedding [B,E]
    captions ──tokenizer──▶ ids [B,L] ──text encoder (bidirectional)──▶ tokens [B,L,Dt] ──text_proj──▶ [B,E]
    text tokens [B,L,Dt] (detached with ``stop_gradient``) ──fusion: self-attn + cross-attn to video──▶ [B,L,Dt]

Objectives (``vidvlm.losses``; each its own ``*_loss`` scaled by its ``*_weight``; weight 0 = not computed, its
head not built):

* ``itc_loss``: symmetric InfoNCE between the embeddings (:func:`~vidvlm.losses.clip_loss`); with
  ``hard_negatives`` each clip's hard negative captions are extra columns (:mod:`vidvlm.models.negatives`).
* ``itm_loss``: matched / not matched from the fusion encoder's first token; for every video one hard negative
  caption and for every caption one hard negative video, drawn from the in-batch ITC similarities
  (:func:`~vidvlm.losses.hard_negatives`; captions equal to the positive are never negatives).
* ``mlm_loss``: masked language modelling on the text encoder alone (``mlm_ratio``, 15 %).
* ``video_mlm_loss``: masked language modelling through the fusion encoder, the video as context
  (``video_mlm_ratio``: FLAVA 15 %, X-FM 50 %).
* ``mvm_loss``: masked video modelling (VideoMAE): a tube mask hides ``mvm_ratio`` of the patch positions in every
  time step, the video encoder encodes only the visible tokens (the video ViT's visible-token path), and a light
  decoder predicts the per-tubelet normalised pixels of the hidden tubelets. It needs a video-ViT tower.
* ``mmm_loss`` (FLAVA's masked multimodal modelling): a tube mask hides ``mmm_video_ratio`` of the video (encoded
  through the visible-token path, then pooled by the front-end) and ``mmm_text_ratio`` of the caption at the same
  time; the fusion encoder reads both masked inputs and predicts the hidden text tokens. The hidden tubelets'
  pixels are not predicted here (the fusion outputs only text tokens; ``tmim_loss`` is the text-conditioned pixel
  objective).
* ``tmim_loss`` (X-FM's text-guided masked image modelling, on video): as ``mvm_loss`` (``tmim_ratio``, its own
  decoder) but every decoder block also cross-attends to the caption's text-encoder tokens (detached with
  ``stop_gradient``), so the text can tell the decoder what is hidden. It reads the text encoder, never the fusion
  encoder: the fusion's text tokens have attended to the unmasked clip and would leak the hidden pixels.
* ``bbox_loss`` (X-FM's bounding-box prediction): from the fusion encoder's first token for a caption with its clip
  as context, a box head regresses the described shape's box ``cx, cy, w, h`` (normalised to the model's input
  frame) at the clip's middle sampled frame (real frame ``n // 2`` of ``n``), with L1 + generalised IoU
  (:func:`~vidvlm.losses.box_loss`). The batch must carry ``boxes`` float ``[B, T, 4]`` (the datasets deliver them
  when the manifest has boxes; NaN = no box, such clips are not scored).

``stop_gradient`` (X-FM): the fusion encoder (and the ``tmim`` decoder) reads a detached copy of the text encoder's
output, so the language encoder learns only from its own objectives (ITC, MLM) and stays a language model. FLAVA
(``flava``) trains through the fusion; X-FM (``xfm``, :class:`XFMConfig`) detaches and masks half of the text in
``video_mlm``. ``mmm``, ``tmim`` and ``bbox`` are off by default in both presets (weight 0); the tiny configs say
which objectives they use.

Retrieval uses the ITC embeddings (``encode_video`` / ``encode_text``); :meth:`MaskingModel.itm_scores` scores
(video, caption) pairs for re-ranking, and ``match_video`` / ``match_text`` / ``match_scores`` (the ``MATCH``
ability) score many pairs from cached encoder outputs (:mod:`vidvlm.eval.rerank`). The text encoder reserves its
last embedding row for the mask id.
Module-name prefixes for training stages: ``front_end.``, ``text.``, ``video_proj.``, ``text_proj.``,
``logit_scale``, ``fusion.``, ``itm_head.``, ``mlm_head.``, ``decoder.``, ``tmim_decoder.``, ``box_head.``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import repeat
from torch import nn

from vidvlm.devices import device_tensor, to_device
from vidvlm.errors import ConfigError
from vidvlm.layers.masking import gather_tokens, hidden_positions, make_keep, mask_text
from vidvlm.layers.pooling import masked_mean
from vidvlm.losses import box_loss, clip_loss, hard_negatives, itm_loss, masked_pixel_loss, mlm_loss
from vidvlm.models.base import EMBED_TEXT, EMBED_VIDEO, FRONT_END, MATCH, VLMModel
from vidvlm.models.frontend import VideoFrontEnd
from vidvlm.models.masking_config import MaskingConfig, XFMConfig
from vidvlm.models.masking_heads import BoxHead, FusionEncoder, MLMHead, PixelDecoder, tubelet_pixels
from vidvlm.models.negatives import NegativeDraw, negative_targets
from vidvlm.models.registry import register_family
from vidvlm.models.text import NativeTextEncoder, build_text_tower, save_text_tower_config, tokenizer_source
from vidvlm.models.tokenizer import TextTokenizer


@register_family("flava")
class MaskingModel(VLMModel):
    """FLAVA / X-FM over video (see the module docstring).

    Args:
        config: the :class:`MaskingConfig`.
        tokenizer: an already loaded tokenizer (else resolved from the config, or trained later).
    """

    config_class = MaskingConfig
    abilities = frozenset({EMBED_VIDEO, EMBED_TEXT, FRONT_END, MATCH})

    def __init__(self, config: MaskingConfig, tokenizer: TextTokenizer | None = None, *, _restore: Any = None):
        super().__init__(config)
        cfg = config
        self.front_end = VideoFrontEnd(cfg.front_end)
        width = self.front_end.width
        self.text = build_text_tower(cfg.text, checkpoint_dir=_restore)
        self.video_proj = nn.Linear(width, cfg.embed_dim, bias=False)
        self.text_proj = nn.Linear(self.text.width, cfg.embed_dim, bias=False)
        nn.init.normal_(self.video_proj.weight, std=width**-0.5)
        nn.init.normal_(self.text_proj.weight, std=self.text.width**-0.5)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.logit_scale_init)))
        self.draw_negatives = NegativeDraw(cfg.hard_negatives)
        # only the parts an objective uses exist: an unused parameter would break DDP
        fused = cfg.fuses
        self.fusion = FusionEncoder(self.text.width, cfg.fusion_depth, cfg.fusion_heads, width) if fused else None
        self.itm_head = nn.Linear(self.text.width, 2) if cfg.itm_weight > 0 else None
        self.mlm_head = MLMHead(self.text.width, self.text.vocab_rows) if cfg.masks_text else None
        if cfg.masks_text and not isinstance(self.text, NativeTextEncoder):
            raise ConfigError("text.kind: masked language modelling needs the native text encoder (its mask row)")
        self.decoder = self._build_decoder("mvm_weight") if cfg.mvm_weight > 0 else None
        self.tmim_decoder = self._build_decoder("tmim_weight", self.text.width) if cfg.tmim_weight > 0 else None
        if cfg.mmm_weight > 0:
            self._check_masked_tower("mmm_weight")
        self.box_head = BoxHead(self.text.width) if cfg.bbox_weight > 0 else None
        # a restored checkpoint brings its own saved tokenizer (_build_for_restore)
        self._adopt_tokenizer(tokenizer, None if _restore is not None else tokenizer_source(cfg.tokenizer, cfg.text))

    def _check_masked_tower(self, key: str) -> None:
        """An objective that masks the video needs a trainable video-ViT tower (its visible-token path)."""
        cfg, front = self.config, self.front_end
        if not front.can_drop_tokens:
            raise ConfigError(
                f"{key}: masked video modelling needs a video-ViT tower (native, pretrained, checkpoint), not "
                f"{cfg.front_end.tower.name!r}; set {key}: 0"
            )
        if cfg.front_end.freeze_tower:
            raise ConfigError(f"{key}: masked video modelling trains the tower; unset front_end.freeze_tower")
        if front.base_tower.cfg.keyframe_stream:
            raise ConfigError(f"{key}: masked video modelling has no pixel target for the keyframe stream")

    def _build_decoder(self, key: str = "mvm_weight", context_dim: int | None = None) -> PixelDecoder:
        self._check_masked_tower(key)
        cfg, vision = self.config, self.front_end.base_tower.cfg
        out_dim = vision.tubelet_size * vision.patch_size**2 * vision.in_chans
        return PixelDecoder(
            self.front_end.base_tower.width, cfg.decoder_width, cfg.decoder_depth, cfg.decoder_heads, vision.grid(),
            vision.num_tubelets, out_dim, context_dim,
        )  # fmt: skip

    # -- setup -------------------------------------------------------------------------------------------------
    @property
    def mask_id(self) -> int:
        """The id of a hidden text token: the text encoder's last embedding row, which no tokenizer id uses."""
        return self.text.vocab_rows - 1

    def _check_tokenizer(self, tokenizer: TextTokenizer) -> None:
        rows = self.text.vocab_rows - 1  # the last row is the mask id
        if tokenizer.vocab_size > rows:
            raise ConfigError(
                f"text.vocab_size: the tokenizer has {tokenizer.vocab_size} ids but the text encoder leaves {rows} "
                "(its last row is the mask id)"
            )

    def _train_tokenizer(self, captions: list[str]) -> TextTokenizer:
        return TextTokenizer.train(captions, vocab_size=self.text.vocab_rows - 1, kind=self.config.tokenizer_kind)

    @property
    def transform(self):
        """Eval transform: uint8 ``[T, 3, H, W]`` -> float ``[T, 3, S, S]``."""
        return self.front_end.transform()

    def train_transform(self, **kwargs: Any):
        """Training transform at the model's input size; ``kwargs`` go to ``build_transform``."""
        return self.front_end.transform(train=True, **kwargs)

    @property
    def num_frames(self) -> int:
        return self.front_end.cfg.num_frames

    # -- encoders ----------------------------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``input_ids`` long ``[B, L]`` and ``attention_mask`` bool ``[B, L]`` on the model's device."""
        ids, mask = self.require_tokenizer().encode(texts, self.config.text.context_length)
        device = self.text_proj.weight.device
        return to_device(ids, device), to_device(mask, device)

    def encode_video(self, video: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """L2-normalised ITC embeddings ``[B, E]`` of ``video [B, T, 3, H, W]`` (after :attr:`transform`)."""
        out = self.front_end(video, frame_mask)
        return F.normalize(self.video_proj(masked_mean(out.tokens, out.mask)), dim=-1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised ITC embeddings ``[B, E]`` of B strings."""
        _, pooled = self.text(*self.tokenize(texts))
        return F.normalize(self.text_proj(pooled), dim=-1)

    def _fuse(self, text: torch.Tensor, text_mask: torch.Tensor, video: torch.Tensor, video_mask: torch.Tensor | None):
        """Fusion of ``text [B, L, Dt]`` with ``video [B, M, Dv]`` -> ``[B, L, Dt]`` (detached text when
        ``stop_gradient``)."""
        if self.fusion is None:
            raise ConfigError("itm_weight/video_mlm_weight/mmm_weight/bbox_weight: no fusion encoder (all were 0)")
        if self.config.stop_gradient:
            text = text.detach()
        return self.fusion(text, text_mask, video, video_mask)

    @torch.no_grad()
    def itm_scores(self, video: torch.Tensor, frame_mask: torch.Tensor | None, texts: list[str]) -> torch.Tensor:
        """Log-odds that caption i matches clip i (for re-ranking retrieval): ``video [B, T, 3, H, W]`` -> ``[B]``."""
        return self.match_scores(*self.match_video(video, frame_mask), *self.match_text(texts))

    @torch.no_grad()
    def match_video(self, video: torch.Tensor, frame_mask: torch.Tensor | None = None):
        """The matching context of clips: ``video [B, T, 3, H, W]`` -> tokens ``[B, M, Dv]`` and bool mask
        ``[B, M]`` (every token real when the front-end gives none)."""
        vis = self.front_end(video, frame_mask)
        mask = vis.mask if vis.mask is not None else vis.tokens.new_ones(vis.tokens.shape[:2], dtype=torch.bool)
        return vis.tokens, mask

    @torch.no_grad()
    def match_text(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The text encoder's tokens ``[B, L, Dt]`` and bool mask ``[B, L]`` of B captions."""
        ids, mask = self.tokenize(texts)
        return self.text(ids, mask)[0], mask

    @torch.no_grad()
    def match_scores(
        self, video: torch.Tensor, video_mask: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor
    ) -> torch.Tensor:
        """ITM log-odds of P pairs: ``video [P, M, Dv]`` / ``video_mask [P, M]`` (from :meth:`match_video`) with
        ``text [P, L, Dt]`` / ``text_mask [P, L]`` (from :meth:`match_text`) -> ``[P]``."""
        if self.itm_head is None:
            raise ConfigError("itm_weight: this model has no matching head (itm_weight was 0)")
        logits = self.itm_head(self._fuse(text, text_mask, video, video_mask)[:, 0])
        return logits[:, 1] - logits[:, 0]

    # -- training ----------------------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The weighted objectives of a collated batch.

        Args:
            batch: ``video [B, T, 3, H, W]``, optional ``frame_mask`` bool ``[B, T]``, ``text`` (B strings), and
                for ``bbox_loss`` ``boxes`` float ``[B, T, 4]`` (normalised ``cx, cy, w, h`` per frame, NaN = none).

        Returns:
            each objective with a weight above 0 as ``<name>_loss`` (already weighted), and ``logit_scale``.
        """
        cfg = self.config
        texts = list(batch["text"])
        video, frame_mask = batch["video"], batch.get("frame_mask")
        if len(texts) != video.shape[0]:
            raise ValueError(f"batch: {len(texts)} texts for {video.shape[0]} videos")
        ids, amask = self.tokenize(texts)
        vis = self.front_end(video, frame_mask)
        tokens, pooled = self.text(ids, amask)
        v_emb = F.normalize(self.video_proj(masked_mean(vis.tokens, vis.mask)), dim=-1)
        t_emb = F.normalize(self.text_proj(pooled), dim=-1)
        scale = self.logit_scale.exp().clamp(max=100.0)
        out: dict[str, torch.Tensor] = {"logit_scale": scale.detach()}
        if cfg.itc_weight > 0:
            out["itc_loss"] = cfg.itc_weight * self._itc(batch, texts, v_emb, t_emb, scale)
        if cfg.itm_weight > 0:
            same = device_tensor([[a == b for b in texts] for a in texts], v_emb.device)
            out["itm_loss"] = cfg.itm_weight * self._itm(scale * v_emb @ t_emb.T, same, tokens, amask, vis)
        if cfg.mlm_weight > 0:
            masked, labels = self._mask_text(ids, amask, cfg.mlm_ratio)
            out["mlm_loss"] = cfg.mlm_weight * mlm_loss(self.mlm_head(self.text(masked, amask)[0]), labels)
        if cfg.video_mlm_weight > 0:
            masked, labels = self._mask_text(ids, amask, cfg.video_mlm_ratio)
            with torch.set_grad_enabled(torch.is_grad_enabled() and not cfg.stop_gradient):
                text_tokens, _ = self.text(masked, amask)
            fused = self._fuse(text_tokens, amask, vis.tokens, vis.mask)
            out["video_mlm_loss"] = cfg.video_mlm_weight * mlm_loss(self.mlm_head(fused), labels)
        if cfg.mvm_weight > 0:
            out["mvm_loss"] = cfg.mvm_weight * self.mvm_loss(video, frame_mask)
        if cfg.mmm_weight > 0:
            out["mmm_loss"] = cfg.mmm_weight * self.mmm_loss(video, frame_mask, ids, amask)
        if cfg.tmim_weight > 0:
            out["tmim_loss"] = cfg.tmim_weight * self.tmim_loss(video, frame_mask, tokens, amask)
        if cfg.bbox_weight > 0:
            if batch.get("boxes") is None:
                raise ConfigError(
                    "bbox_weight: the batch has no 'boxes' (the manifest rows need per-frame boxes: a top-level "
                    "'boxes' list or one entry in 'shapes'; make_synthetic writes them with shapes=1)"
                )
            fused = self._fuse(tokens, amask, vis.tokens, vis.mask)[:, 0]
            out["bbox_loss"] = cfg.bbox_weight * self.bbox_loss(fused, batch["boxes"], frame_mask)
        return out

    def _itc(
        self, batch: dict[str, Any], texts: list[str], v_emb: torch.Tensor, t_emb: torch.Tensor, scale: torch.Tensor
    ) -> torch.Tensor:
        """InfoNCE of ``v_emb [B, E]`` with ``t_emb [B, E]``, in training with each clip's drawn hard negatives as
        extra text columns (``hard_negatives``). -> scalar."""
        negatives = self.draw_negatives(batch, texts, self.training)
        if not negatives:
            return clip_loss(v_emb, t_emb, scale)
        t2v = negative_targets(torch.arange(len(texts)), len(negatives))
        return clip_loss(v_emb, torch.cat([t_emb, self.encode_text(negatives)]), scale, t2v)

    def _itm(self, sim: torch.Tensor, same: torch.Tensor, tokens: torch.Tensor, amask: torch.Tensor, vis: Any):
        """ITM over the B matched pairs, a hard negative caption per clip and a hard negative clip per caption.

        ``sim [B, B]`` video-by-text similarities, ``same`` bool ``[B, B]`` equal captions, ``tokens [B, L, Dt]``.
        """
        b = sim.shape[0]
        arange = torch.arange(b, device=sim.device)
        neg_text = hard_negatives(sim, same, sample=self.config.itm_sample)  # [B] a caption for each clip
        neg_video = hard_negatives(sim.T, same.T, sample=self.config.itm_sample)  # [B] a clip for each caption
        # 3B pairs always (the shapes never depend on the data: nothing is read back from a GPU); a clip or caption
        # without a negative (-1) pairs with index 0 and is left out of the loss
        video_idx = torch.cat([arange, arange, neg_video.clamp(min=0)])
        text_idx = torch.cat([arange, neg_text.clamp(min=0), arange])
        scored = torch.cat([torch.ones_like(arange, dtype=torch.bool), neg_text >= 0, neg_video >= 0])
        matched = torch.zeros(3 * b, dtype=torch.bool, device=sim.device)
        matched[:b] = True
        v_mask = None if vis.mask is None else vis.mask[video_idx]
        fused = self._fuse(tokens[text_idx], amask[text_idx], vis.tokens[video_idx], v_mask)
        return itm_loss(self.itm_head(fused[:, 0]), matched, scored)

    def _mask_text(self, ids: torch.Tensor, amask: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
        """BERT-masked ``ids`` long ``[B, L]`` and their labels (-100 where nothing is predicted)."""
        tok = self.require_tokenizer()
        special = tuple(int(i) for i in tok.hf.all_special_ids)
        return mask_text(ids, amask, ratio, self.mask_id, tok.vocab_size, special)

    def mvm_loss(self, video: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
        """Masked video modelling (unweighted): the tower encodes only the visible tube positions, the decoder
        predicts every hidden tubelet's pixels. ``video [B, T, 3, H, W]``, ``frame_mask`` bool ``[B, T]``."""
        if self.decoder is None:
            raise ConfigError("mvm_weight: this model was built without the masked video decoder (mvm_weight was 0)")
        return self._masked_pixels(self.decoder, video, frame_mask, self.config.mvm_ratio)

    def tmim_loss(
        self, video: torch.Tensor, frame_mask: torch.Tensor | None, text: torch.Tensor, text_mask: torch.Tensor
    ) -> torch.Tensor:
        """Text-guided masked video modelling (unweighted): as :meth:`mvm_loss`, the decoder also cross-attending
        to ``text [B, L, Dt]`` (the text encoder's tokens of the captions; bool ``text_mask [B, L]``)."""
        if self.tmim_decoder is None:
            raise ConfigError("tmim_weight: this model was built without the text-guided decoder (tmim_weight was 0)")
        if self.config.stop_gradient:
            text = text.detach()
        return self._masked_pixels(self.tmim_decoder, video, frame_mask, self.config.tmim_ratio, text, text_mask)

    def _masked_pixels(
        self,
        decoder: PixelDecoder,
        video: torch.Tensor,
        frame_mask: torch.Tensor | None,
        ratio: float,
        text: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hide ``ratio`` of ``video [B, T, 3, H, W]``'s patch positions, encode the rest, let ``decoder`` (reading
        ``text [B, L, Dt]`` when text-guided) predict the hidden tubelets; their pixel loss."""
        tower = self.front_end.base_tower
        vision = tower.cfg
        steps, n = self.front_end.token_grid(video)
        keep = make_keep(video.shape[0], steps, n, ratio, self.config.mvm_mask, device=video.device)
        enc = tower(video, frame_mask, keep=keep)
        grid = (video.shape[-2] // vision.patch_size, video.shape[-1] // vision.patch_size)
        visible = enc.last_hidden_state[:, :, tower.num_prefix_tokens :]
        hidden = hidden_positions(keep, n)  # [B, T', N - K]: only these go through the decoder's head
        pred = decoder(visible, keep, grid, enc.frame_mask, text, text_mask, predict=hidden)
        target, steps_real = tubelet_pixels(video, frame_mask, vision.patch_size, vision.tubelet_size)
        target = gather_tokens(target, hidden)
        scored = None if steps_real is None else repeat(steps_real, "b t -> b t h", h=hidden.shape[2])
        return masked_pixel_loss(pred, target, scored, norm_pix=self.config.mvm_norm_pix)

    def mmm_loss(
        self, video: torch.Tensor, frame_mask: torch.Tensor | None, ids: torch.Tensor, amask: torch.Tensor
    ) -> torch.Tensor:
        """Masked multimodal modelling (unweighted): the fusion encoder reads a tube-masked clip (only its visible
        tokens encoded) and a masked caption together and predicts the hidden text tokens.

        Args:
            video: ``[B, T, 3, H, W]``.
            frame_mask: bool ``[B, T]`` or None.
            ids: long ``[B, L]`` the captions' ids.
            amask: bool ``[B, L]`` their real tokens.
        """
        cfg = self.config
        steps, n = self.front_end.token_grid(video)
        keep = make_keep(video.shape[0], steps, n, cfg.mmm_video_ratio, cfg.mvm_mask, device=video.device)
        vis = self.front_end(video, frame_mask, keep=keep)
        masked, labels = self._mask_text(ids, amask, cfg.mmm_text_ratio)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not cfg.stop_gradient):
            text_tokens, _ = self.text(masked, amask)
        fused = self._fuse(text_tokens, amask, vis.tokens, vis.mask)
        return mlm_loss(self.mlm_head(fused), labels)

    def bbox_loss(self, fused: torch.Tensor, boxes: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
        """Box prediction (unweighted): L1 + GIoU between the box head's output on ``fused [B, Dt]`` (the fusion
        encoder's first token) and ``boxes [B, T, 4]`` at each clip's middle real frame (NaN rows are not scored)."""
        if self.box_head is None:
            raise ConfigError("bbox_weight: this model was built without the box head (bbox_weight was 0)")
        b, t = boxes.shape[:2]
        real = torch.full((b,), t, device=boxes.device) if frame_mask is None else frame_mask.sum(1)
        target = boxes[torch.arange(b, device=boxes.device), to_device(real // 2, boxes.device)].to(fused.dtype)
        l1, giou = box_loss(self.box_head(fused), target)
        return l1 + giou

    # -- checkpoints -------------------------------------------------------------------------------------------
    def config_for_save(self) -> MaskingConfig:
        """The config with the resolved front-end (no pretrained source, which the weights replace)."""
        return dataclasses.replace(self.config, front_end=self.front_end.resolved_config(), tokenizer=None)

    def _save_extra(self, directory: Path) -> None:
        super()._save_extra(directory)
        save_text_tower_config(self.text, directory)

    @classmethod
    def _build_for_restore(cls, config: MaskingConfig, directory: Path) -> MaskingModel:
        return cls._restore_tokenizer(cls(config, _restore=directory), directory)


@register_family("xfm")
class XFMModel(MaskingModel):
    """X-FM over video: :class:`MaskingModel` with :class:`XFMConfig` (stop-gradient fusion, 50 % video MLM)."""

    config_class = XFMConfig


__all__ = ["MaskingConfig", "XFMConfig", "MaskingModel", "XFMModel"]
