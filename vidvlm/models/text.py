"""Text towers for the embedding families: a native transformer encoder, and an adapter over a local HF model.

Both map ``input_ids [B, L]`` + ``attention_mask [B, L]`` to ``(tokens [B, L, D], pooled [B, D])`` and expose
``layers`` (their ``nn.ModuleList`` of blocks, for LiT-style partial locking) and ``width`` (D).

Pooling (``TextConfig.pooling``): ``eos`` takes the last real token (CLIP: with causal attention it is the only token
that has read the whole caption), ``cls`` the first token (BERT), ``mean`` the average over real tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from einops import repeat
from torch import Tensor, nn

from vidvlm.errors import CheckpointError, ConfigError
from vidvlm.layers.attention import AttnMask
from vidvlm.layers.transformer import TransformerBlock
from vidvlm.models.hf_loading import NO_REMOTE_CODE
from vidvlm.models.tokenizer import last_token_index

HF_CONFIG_FILE = "text_tower_config.json"
CAUSAL_HF_TEXT = frozenset({"clip_text_model"})  # transformers text models whose self-attention is causal


@dataclass
class TextConfig:
    """A text tower.

    Attributes:
        kind: ``"native"`` (a :class:`NativeTextEncoder`) or ``"hf"`` (a local transformers model, see ``source``).
        source: for ``hf``: a local directory with ``config.json`` + weights, read by ``AutoModel.from_pretrained``.
        vocab_size: native embedding rows; a trained or loaded tokenizer must fit in it.
        context_length: the longest token sequence (positions of the native tower; truncation length for both).
        width: native width D.
        depth: native number of blocks.
        num_heads: native attention heads.
        mlp_ratio: native MLP hidden width / D.
        causal: native causal attention (CLIP) or bidirectional (BERT-like).
        act: native MLP activation.
        pooling: ``"eos"``, ``"cls"`` or ``"mean"``.
    """

    kind: Literal["native", "hf"] = "native"
    source: str | None = None
    vocab_size: int = 49408
    context_length: int = 77
    width: int = 512
    depth: int = 12
    num_heads: int = 8
    mlp_ratio: float = 4.0
    causal: bool = True
    act: str = "gelu"
    pooling: Literal["eos", "cls", "mean"] = "eos"


def pool_tokens(tokens: Tensor, attention_mask: Tensor, how: str) -> Tensor:
    """Pool ``tokens [B, L, D]`` over real tokens (``attention_mask`` bool ``[B, L]``) -> ``[B, D]``."""
    if how == "eos":
        idx = repeat(last_token_index(attention_mask), "b -> b 1 d", d=tokens.shape[-1])
        return tokens.gather(1, idx)[:, 0]
    if how == "cls":
        return tokens[:, 0]
    if how == "mean":
        m = attention_mask.to(tokens.dtype)[..., None]
        return (tokens * m).sum(1) / m.sum(1).clamp(min=1)
    raise ConfigError(f"text.pooling: {how!r} is not one of eos, cls, mean")


class NativeTextEncoder(nn.Module):
    """Token + learned position embeddings, pre-norm :class:`TransformerBlock` s and a final LayerNorm.

    Args:
        cfg: the tower's :class:`TextConfig` (``kind == "native"``).
    """

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.width = cfg.width
        self.token_embed = nn.Embedding(cfg.vocab_size, cfg.width)
        self.pos_embed = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.layers = nn.ModuleList(
            TransformerBlock(cfg.width, cfg.num_heads, cfg.mlp_ratio, act=cfg.act, norm_eps=1e-5)
            for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.width, eps=1e-5)
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)

    @property
    def vocab_rows(self) -> int:
        """Rows of the token embedding (the most ids a tokenizer may emit)."""
        return int(self.token_embed.num_embeddings)

    @property
    def final_modules(self) -> list[nn.Module]:
        """Modules after the blocks that train along with unlocked blocks (LiT)."""
        return [self.norm]

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Encode ``input_ids`` long ``[B, L]`` with ``attention_mask`` bool ``[B, L]``.

        Returns:
            tokens ``[B, L, D]`` and pooled ``[B, D]``.
        """
        length = input_ids.shape[1]
        if length > self.cfg.context_length:
            raise ValueError(f"text: {length} tokens exceed text.context_length={self.cfg.context_length}")
        x = self.token_embed(input_ids) + self.pos_embed[:length]
        # right padding: with causal attention real tokens never see pads, so the mask is left out (and never read
        # back from an accelerator); bidirectional towers need it
        mask = AttnMask(causal=self.cfg.causal, key_padding=None if self.cfg.causal else attention_mask)
        for blk in self.layers:
            x = blk(x, mask)
        x = self.norm(x)
        return x, pool_tokens(x, attention_mask, self.cfg.pooling)


def _find_layers(model: nn.Module) -> nn.ModuleList:
    """The block list of a transformers encoder (BERT/MiniLM ``encoder.layer``, DistilBERT ``transformer.layer``,
    CLIP/SigLIP text ``encoder.layers``, others ``layers``)."""
    for path in ("encoder.layer", "encoder.layers", "transformer.layer", "text_model.encoder.layers", "layers"):
        mod: Any = model
        for part in path.split("."):
            mod = getattr(mod, part, None)
            if mod is None:
                break
        if isinstance(mod, nn.ModuleList):
            return mod
    raise ConfigError(f"text.source: cannot find the block list of {type(model).__name__} for layer locking")


class HFTextEncoder(nn.Module):
    """A transformers text model (BERT, MiniLM, RoBERTa, ...) from a local directory, pooled by ``cfg.pooling``.

    Args:
        cfg: the tower's :class:`TextConfig` (``kind == "hf"``, ``source`` a local directory).
        hf_config: restore the architecture from this ``config.to_dict()`` without reading ``source`` (used when
            loading a vidvlm checkpoint, whose weights replace the random ones).
    """

    def __init__(self, cfg: TextConfig, hf_config: dict[str, Any] | None = None) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel

        self.cfg = cfg
        if hf_config is not None:
            conf = AutoConfig.for_model(**hf_config)
            self.model = AutoModel.from_config(conf)
        else:
            if cfg.source is None or not Path(cfg.source).is_dir():
                raise ConfigError(f"text.source: {cfg.source!r} is not a local model directory")
            try:
                # safetensors only: a pytorch_model.bin would be unpickled
                self.model = AutoModel.from_pretrained(
                    cfg.source, local_files_only=True, use_safetensors=True, **NO_REMOTE_CODE
                )
            except (OSError, ValueError) as e:
                raise ConfigError(f"text.source: cannot load {cfg.source}: {e}") from e
        self.width = int(self.model.config.hidden_size)
        self.layers = _find_layers(self.model)
        self.causal = self.model.config.model_type in CAUSAL_HF_TEXT

    @property
    def vocab_rows(self) -> int:
        """Rows of the wrapped model's input embeddings."""
        return int(self.model.get_input_embeddings().num_embeddings)

    @property
    def final_modules(self) -> list[nn.Module]:
        """The wrapped model keeps any final norm inside its blocks or pooler: nothing extra to unlock."""
        return []

    def hf_config(self) -> dict[str, Any]:
        """The wrapped model's config as a JSON-safe dict (saved beside the vidvlm checkpoint)."""
        return json.loads(self.model.config.to_json_string())

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Encode ``input_ids`` long ``[B, L]`` with ``attention_mask`` bool ``[B, L]``.

        Returns:
            tokens ``[B, L, D]`` and pooled ``[B, D]``.
        """
        # a causal model (CLIP's text tower) on right-padded ids: no real token attends to a pad, so the padding
        # mask changes no real token's output. Leaving it out spares transformers a read of it on the device (a
        # host-device synchronisation every step) and lets attention take its causal kernels.
        padding = None if self.causal else attention_mask.long()
        out = self.model(input_ids=input_ids, attention_mask=padding)
        tokens = out.last_hidden_state
        return tokens, pool_tokens(tokens, attention_mask, self.cfg.pooling)


def tokenizer_source(tokenizer: str | None, text: TextConfig) -> str | None:
    """Where a text family's tokenizer comes from: the named directory, else an ``hf`` tower's own source, else
    nowhere (it is trained on the training captions)."""
    return tokenizer or (text.source if text.kind == "hf" else None)


def build_text_tower(cfg: TextConfig, checkpoint_dir: str | Path | None = None) -> nn.Module:
    """Build the tower of ``cfg``; with ``checkpoint_dir`` an ``hf`` tower takes its architecture from the
    checkpoint's ``text_tower_config.json`` instead of ``cfg.source``."""
    if cfg.kind == "native":
        return NativeTextEncoder(cfg)
    if cfg.kind == "hf":
        if checkpoint_dir is None:
            return HFTextEncoder(cfg)
        path = Path(checkpoint_dir) / HF_CONFIG_FILE
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (the checkpoint has an hf text tower)")
        return HFTextEncoder(cfg, hf_config=json.loads(path.read_text()))
    raise ConfigError(f"text.kind: {cfg.kind!r} is not one of native, hf")


def save_text_tower_config(tower: nn.Module, directory: str | Path) -> None:
    """Write what :func:`build_text_tower` needs to rebuild an ``hf`` tower from a checkpoint (nothing for native)."""
    if isinstance(tower, HFTextEncoder):
        (Path(directory) / HF_CONFIG_FILE).write_text(json.dumps(tower.hf_config(), indent=1))


__all__ = [
    "TextConfig",
    "NativeTextEncoder",
    "HFTextEncoder",
    "build_text_tower",
    "save_text_tower_config",
    "pool_tokens",
    "tokenizer_source",
]
