"""Pretrained-backbone family (Frozen, LLaVA): a video front-end, a connector and a pretrained causal LM.

    clips [N,T,3,H,W] ──VideoFrontEnd (frozen tower ▶ pooler ▶ connector)──▶ visual tokens [N,M,D_lm]
    conversation ──chat template──▶ text pieces + <video>/<image> placeholders
        ──each placeholder replaced by its clip's M tokens (optionally "Time 1.5 s:" before each frame's tokens)──▶
        inputs_embeds [B,L,D_lm] ──causal LM (HF AutoModelForCausalLM, LoRA optional)──▶ loss on the answers only

Attention over visual tokens (``visual_attention``): ``causal`` (LLaVA), ``bidirectional`` (the tokens of one clip
see each other; text stays causal) or ``clip_causal`` (bidirectional within a clip, and a clip's tokens do not see
earlier clips). The non-causal kinds reach the LM as a 4-D additive mask. With no visual tokens the logits are the
plain LM's.

A batch is the usual collated one (``video``, ``frame_mask``, ``timestamps``, ``text``, optional ``question``), or
carries ``conversation`` (B lists of turns) and ``clips_per_sample`` (B counts; ``video`` then holds every clip of
the batch in order). A caption is the answer to ``caption_prompt``. A text-only batch (no ``video``, ``text_only``
set; :mod:`vidvlm.data.text_corpus`) trains the LM without visual tokens: its conversations on their answers, its
sentences on every token.

Checkpoints store only what was trained — the connector, the pooler, LoRA adapters, any tower or LM weight that
received a gradient — and name each frozen base (the LM, a pretrained tower) by path and sha256; loading against a
different base is a :class:`~vidvlm.errors.CheckpointError`. :meth:`LlavaModel.export` writes a standalone directory
(LoRA merged, bases inside) that loads with no base present.

Module-name prefixes for training stages: ``front_end.tower.``, ``front_end.pooler.``, ``front_end.connector.``,
``lm.`` (LoRA parameters match ``*lora_*``).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from safetensors.torch import load_file, save_file
from torch import nn

from vidvlm.config import save_config
from vidvlm.devices import to_device
from vidvlm.errors import CheckpointError, ConfigError
from vidvlm.layers.connectors import ConnectorConfig
from vidvlm.models.base import (
    ANSWER,
    CHAT,
    CONFIG_FILE,
    FRONT_END,
    GENERATE,
    TEXT_ONLY,
    VISUAL_TOKENS,
    WEIGHTS_FILE,
    VLMModel,
)
from vidvlm.models.decoding import DecodeConfig
from vidvlm.models.frontend import (
    FrontEndConfig,
    FrontEndOutput,
    TowerConfig,
    VideoFrontEnd,
    pretrained_prefixes,
    select_clips,
    with_source_hashes,
)
from vidvlm.models.llava_chat import ChatSession
from vidvlm.models.llava_sequence import SequenceBuilder, label_positions
from vidvlm.models.lm import DTYPES, load_causal_lm, weights_sha256
from vidvlm.models.prompting import IGNORE, PLAIN_TEMPLATE, ChatLayout
from vidvlm.models.registry import register_family
from vidvlm.models.tokenizer import TextTokenizer
from vidvlm.models.vision import VisionConfig


@dataclass
class LoraSpec:
    """LoRA adapters on the LM (``peft``): rank, scale, dropout and the module names they wrap."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class LanguageModelConfig:
    """The pretrained causal LM.

    Attributes:
        source: a local HF causal-LM directory or a ``.gguf`` file (relative paths in a saved checkpoint resolve
            against the checkpoint directory).
        gguf_file: the GGUF's name when ``source`` is its directory.
        sha256: content hash of the base weights, written when saved and checked when loaded.
        dtype: ``float32`` or ``bfloat16``.
        lora: LoRA adapters (None: no adapters).
        grad_checkpointing: recompute the LM's layers in the backward pass.
        attn_implementation: the LM's attention kernel, as transformers names it: ``sdpa`` (PyTorch's fused
            attention) or ``eager`` (matmul, softmax, matmul). Under bf16 autocast on a CPU, SDPA's backward runs
            about 3x slower than eager at these lengths (BENCHMARKS.md, "Pretrained-backbone training"); float32 and
            GPUs favour ``sdpa``.
    """

    source: str = ""
    gguf_file: str | None = None
    sha256: str | None = None
    dtype: Literal["float32", "bfloat16"] = "float32"
    lora: LoraSpec | None = None
    grad_checkpointing: bool = False
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"


@dataclass
class LlavaConfig:
    """A pretrained-backbone model (see the module docstring).

    Attributes:
        family: ``llava``.
        front_end: the video front-end; its connector maps to the LM's width (the tower is frozen by default).
        lm: the language model.
        chat_template: the Jinja chat template (None: the LM tokenizer's own, else the plain-words template); the
            resolved template is saved, so inference renders what training rendered.
        visual_attention: ``causal``, ``bidirectional`` or ``clip_causal``.
        frame_times: write ``Time {t} s:`` (the decoder's real timestamp) before each frame's visual tokens.
        frame_separator: text after each frame's tokens (None: nothing).
        max_length: the longest training sequence; whole turns are dropped from the end to fit, never visual tokens
            (a prompt to generate from may fill the LM's context).
        prompt_tokens: how the rendered conversation becomes token ids: ``pieces`` tokenizes each run of text
            between placeholders and answers on its own; ``whole`` tokenizes the whole rendering at once with the
            tokenizer's own special tokens (BOS) added, each placeholder written as one ``<video>`` (or ``<image>``)
            token of the tokenizer, as transformers' LLaVA processors do (the text after a placeholder is then not
            tokenized as the start of a string). ``whole`` needs that token and no ``frame_times`` or
            ``frame_separator``.
        caption_prompt: the user turn of a caption-only sample.
        decode: default generation options.
    """

    family: str = "llava"
    front_end: FrontEndConfig = field(
        default_factory=lambda: FrontEndConfig(connector=ConnectorConfig(name="mlp"), freeze_tower=True)
    )
    lm: LanguageModelConfig = field(default_factory=LanguageModelConfig)
    chat_template: str | None = None
    visual_attention: Literal["causal", "bidirectional", "clip_causal"] = "causal"
    frame_times: bool = False
    frame_separator: str | None = None
    max_length: int = 512
    prompt_tokens: Literal["pieces", "whole"] = "pieces"
    caption_prompt: str = "Describe the video."
    decode: DecodeConfig = field(default_factory=lambda: DecodeConfig(strategy="greedy", max_new_tokens=32))

    def __post_init__(self) -> None:
        if self.family != "llava":
            raise ConfigError(f"family: LlavaConfig is for 'llava', got {self.family!r}")
        if self.front_end.connector.name == "none":
            raise ConfigError("front_end.connector: the LM needs a connector to its width (linear or mlp)")
        if self.max_length < 8:
            raise ConfigError(f"max_length: must be >= 8, got {self.max_length}")
        if self.prompt_tokens == "whole" and (self.frame_times or self.frame_separator):
            raise ConfigError(
                "prompt_tokens: 'whole' allows no text between a clip's tokens (frame_times, frame_separator)"
            )

    @classmethod
    def tiny(cls, **overrides: Any) -> LlavaConfig:
        """A minute model for tests; ``lm.source`` must name a tiny LM (the tests build one)."""
        vision = VisionConfig(image_size=32, patch_size=16, width=32, depth=1, num_heads=2, num_tubelets=4)
        front_end = FrontEndConfig(
            tower=TowerConfig(vision=vision), connector=ConnectorConfig(name="mlp"), freeze_tower=True, num_frames=4
        )
        return cls(**{"front_end": front_end, "max_length": 96, **overrides})


@register_family("llava")
class LlavaModel(VLMModel):
    """A frozen video front-end, a connector and a pretrained causal LM (see the module docstring).

    Args:
        config: the :class:`LlavaConfig`.
        checkpoint_dir: the directory a checkpoint is restored from (relative base paths resolve against it).
    """

    config_class = LlavaConfig
    abilities = frozenset({GENERATE, ANSWER, CHAT, VISUAL_TOKENS, FRONT_END, TEXT_ONLY})

    def __init__(self, config: LlavaConfig, checkpoint_dir: Path | None = None) -> None:
        super().__init__(config)
        cfg = config
        self._checkpoint_dir = checkpoint_dir
        lm_path = _resolve(cfg.lm.source, checkpoint_dir)
        if not lm_path.exists():
            hint = ""
            if cfg.lm.sha256 is not None:
                hint = " (a checkpoint names its base LM by path and sha256; tools/export_llava.py writes a copy "
                hint += "that holds it)"
            raise ConfigError(f"lm.source: {lm_path} does not exist{hint}")
        if cfg.lm.sha256 is not None:
            _check_hash("lm.source", lm_path, cfg.lm.gguf_file, cfg.lm.sha256)
        lm, hf_tokenizer = load_causal_lm(
            lm_path,
            gguf_file=cfg.lm.gguf_file,
            dtype=DTYPES[cfg.lm.dtype],
            attn_implementation=cfg.lm.attn_implementation,
        )
        self._keeps_logits = "logits_to_keep" in inspect.signature(type(lm).forward).parameters
        for p in lm.parameters():
            p.requires_grad_(False)
        if cfg.lm.grad_checkpointing:
            enable = getattr(lm, "activation_checkpointing_enable", None)  # newer transformers; the old name goes in v6
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.lm = _with_lora(lm, cfg.lm.lora) if cfg.lm.lora is not None else lm
        front_end = cfg.front_end
        if checkpoint_dir is not None:
            front_end = dataclasses.replace(front_end, tower=_relocated(front_end.tower, checkpoint_dir))
        self.front_end = VideoFrontEnd(front_end, out_dim=int(lm.config.hidden_size))
        self.set_tokenizer(TextTokenizer(hf_tokenizer))
        self.template = cfg.chat_template or hf_tokenizer.chat_template or PLAIN_TEMPLATE
        self.chat = ChatLayout(hf_tokenizer, self.template)
        self.stop_ids = _stop_ids(self.chat, hf_tokenizer)
        context = int(getattr(lm.config, "max_position_embeddings", None) or cfg.max_length)
        self.sequences = SequenceBuilder(cfg, hf_tokenizer, self.chat, self.lm.get_input_embeddings, context)
        self._lm_hash = cfg.lm.sha256
        self._tower_bases = tuple(pretrained_prefixes(cfg.front_end.tower, "front_end.tower."))
        # base parameters that trained in some stage are saved with the run: a training forward records them
        self._base_params = [(n, p) for n, p in self.named_parameters() if self._is_base(n)]
        self._trained: set[str] = set()

    # -- the family's contract ---------------------------------------------------------------------------------

    def visual_tokens(
        self, video: torch.Tensor, frame_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``video [N, T, 3, H, W]`` -> LM-width visual tokens ``[N, M, D]`` and their mask ``[N, M]`` or None."""
        out = self.front_end(video, frame_mask)
        return out.tokens, out.mask

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``{"lm_loss": ...}``: next-token loss on the assistant's answers (and their end-of-turn tokens) only."""
        if self.training and torch.is_grad_enabled():
            self._trained.update(n for n, p in self._base_params if p.requires_grad)
        if batch.get("video") is None and batch.get("text_only"):
            return {"lm_loss": self._lm_loss(self._text_only_inputs(batch))}
        inputs = self.prepare_inputs(
            self._conversations(batch),
            batch["video"],
            batch.get("frame_mask"),
            batch.get("timestamps"),
            batch.get("clips_per_sample"),
            paths=batch.get("path"),
            positions=True,
        )
        return {"lm_loss": self._lm_loss(inputs)}

    def _lm_loss(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean next-token cross-entropy over the labelled positions of ``inputs`` (``labels [B, L]``, IGNORE where
        nothing is predicted): the value of ``self.lm(**inputs).loss``, with the LM head applied only at positions
        that some sample of the batch labels (``logits_to_keep``). Answers are a few percent of a conversation's
        tokens, and the head over a 49k-word vocabulary is otherwise the largest matmul of the step."""
        keep = inputs.get("label_positions")
        inputs = {k: v for k, v in inputs.items() if k != "label_positions"}
        if not self._keeps_logits:
            return self.lm(**inputs).loss
        labels = inputs.pop("labels")
        targets = labels[:, 1:]  # position p predicts token p + 1
        if keep is None:  # inputs built without positions: found on the labels where they lie
            keep = label_positions(labels)
        keep = to_device(keep, labels.device)  # [K] positions, shared by the batch
        logits = self.lm(**inputs, logits_to_keep=keep).logits  # [B, K, V]
        return F.cross_entropy(
            rearrange(logits.float(), "b k v -> (b k) v"),
            rearrange(targets[:, keep], "b k -> (b k)"),
            ignore_index=IGNORE,
        )

    def prepare_inputs(
        self,
        conversations: Sequence[list[dict[str, str]]],
        video: torch.Tensor | None = None,
        frame_mask: torch.Tensor | None = None,
        timestamps: torch.Tensor | None = None,
        clips_per_sample: Sequence[int] | None = None,
        generation: bool = False,
        paths: Sequence[str] | None = None,
        clip_of: torch.Tensor | None = None,
        visual: FrontEndOutput | None = None,
        positions: bool = False,
    ) -> dict[str, torch.Tensor]:
        """The LM's keyword arguments for B conversations and their clips (see :meth:`SequenceBuilder.assemble`).

        Args:
            conversations: B lists of turns; for generation each ends with a user turn.
            video: ``[N, T, 3, H, W]``, every clip of the batch in order (None: no clips).
            frame_mask: bool ``[N, T]``.
            timestamps: ``[N, T]`` seconds of the sampled frames.
            clips_per_sample: clips of each conversation (default: one each, or none without ``video``).
            generation: left padding and no labels.
            paths: sample names for error messages.
            clip_of: long ``[K]``: the conversations' clips are ``video[clip_of]`` (see :meth:`generate`).
            visual: the front-end's output for ``video`` when the caller already has it (a conversation about one
                clip over several turns); ``video`` is then not read.
            positions: also ``label_positions`` (training; for the loss, not an argument of the LM).
        """
        if visual is None and video is not None:
            visual = self.front_end(video, frame_mask)
        if visual is None:
            width = self.front_end.width
            empty = torch.zeros(0, 0, width, device=self.lm.get_input_embeddings().weight.device)
            visual = FrontEndOutput(empty, None, torch.zeros(0, 0, dtype=torch.long), None)
            clips_per_sample = clips_per_sample or [0] * len(conversations)
        elif clip_of is not None:
            visual = select_clips(visual, clip_of)
            timestamps = None if timestamps is None else timestamps[clip_of]
        batch = {"timestamps": timestamps, "clips_per_sample": clips_per_sample, "path": paths}
        return self.sequences.assemble(list(conversations), visual, batch, generation=generation, positions=positions)

    @torch.no_grad()
    def generate(
        self,
        video: torch.Tensor | None,
        frame_mask: torch.Tensor | None = None,
        questions: Sequence[str | None] | None = None,
        decode: DecodeConfig | None = None,
        timestamps: torch.Tensor | None = None,
        conversations: Sequence[list[dict[str, str]]] | None = None,
        clips_per_sample: Sequence[int] | None = None,
        clip_of: torch.Tensor | None = None,
        visual: FrontEndOutput | None = None,
    ) -> list[str]:
        """Answer (or caption) each sample with the LM's ``generate`` (KV cache, left padding).

        Args:
            video: ``[N, T, 3, H, W]`` after :attr:`transform` (every clip of the batch).
            frame_mask: bool ``[N, T]`` (None = all real).
            questions: one per clip (None entries caption), when ``conversations`` is not given.
            decode: greedy / beam / sampling options (default: ``config.decode``).
            timestamps: ``[N, T]`` seconds of the sampled frames (for ``frame_times``).
            conversations: B conversations ending with a user turn (several clips each: ``clips_per_sample``).
            clips_per_sample: clips of each conversation (default: one each).
            clip_of: long ``[K]``: the conversations' clips are ``video[clip_of]`` (each of the N clips is encoded
                once however often it recurs; ``timestamps`` stay ``[N, T]``); None: the clips are ``video``.
            visual: ``self.front_end(video, frame_mask)`` computed once by the caller and reused (``video`` may then
                be None; ``tools/chat_video.py`` encodes its clip once for every turn).

        Returns:
            B answers.
        """
        cfg = decode or self.config.decode
        if conversations is None:
            count = len(clip_of) if clip_of is not None else (visual.tokens if video is None else video).shape[0]
            qs = list(questions) if questions is not None else [None] * count
            conversations = [[{"role": "user", "content": self._user_turn(q)}] for q in qs]
        inputs = self.prepare_inputs(
            conversations, video, frame_mask, timestamps, clips_per_sample, generation=True, clip_of=clip_of,
            visual=visual,
        )  # fmt: skip
        out, _ = self.lm_generate(inputs, cfg)
        return [t.strip() for t in self.tokenizer.hf.batch_decode(out, skip_special_tokens=True)]

    def start_chat(
        self,
        video: torch.Tensor | None = None,
        timestamps: torch.Tensor | None = None,
        visual: FrontEndOutput | None = None,
    ) -> ChatSession:
        """A conversation about one clip (``video [1, T, 3, H, W]`` after :attr:`transform`, or its ``visual``
        encoding; neither: text only) that keeps the LM's key/value cache between turns (:class:`ChatSession`)."""
        return ChatSession(self, video, timestamps, visual)

    def lm_generate(
        self, inputs: dict[str, torch.Tensor], cfg: DecodeConfig, cache: dict[str, Any] | None = None
    ) -> tuple[torch.Tensor, dict[str, Any] | None]:
        """The LM's ``generate`` after ``inputs`` (:meth:`prepare_inputs` with ``generation=True``).

        Args:
            inputs: the prompt, ``[B, L]`` positions.
            cfg: greedy / beam / sampling options.
            cache: the key/value cache of a prefix of this prompt computed before, under the name ``generate()``
                takes it (``{"cache": ...}``); the positions after it are computed with causal attention.

        Returns:
            The new token ids ``[B, n]``, and for greedy or sampled decoding the cache after them (the prompt and
            every new token but the last; None for beam search, whose cache holds one row per beam).
        """
        kwargs: dict[str, Any] = dict(
            max_new_tokens=cfg.max_new_tokens,
            eos_token_id=self.stop_ids,
            pad_token_id=self.tokenizer.pad_id,
            num_beams=cfg.num_beams if cfg.strategy == "beam" else 1,
            do_sample=cfg.strategy == "sample",
        )
        if cfg.strategy == "sample":
            kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p)
        embeds, mask2d = inputs["inputs_embeds"], inputs["attention_mask_2d"]
        if cache is not None:
            kwargs.update(cache)
        elif self.config.visual_attention != "causal":
            # the prompt's visual tokens need the custom 4-D mask: prefill all but the last position with it (once
            # per beam: generate() repeats each row num_beams times), then generate() continues from that cache
            beams = kwargs["num_beams"]
            prefill = self.lm(
                inputs_embeds=embeds[:, :-1].repeat_interleave(beams, 0),
                attention_mask=inputs["attention_mask"][:, :, :-1, :-1].repeat_interleave(beams, 0),
                position_ids=inputs["position_ids"][:, :-1].repeat_interleave(beams, 0),
                use_cache=True,
            )
            kwargs.update(_cache_kwarg(prefill))
        keep = kwargs["num_beams"] == 1
        out = self.lm.generate(inputs_embeds=embeds, attention_mask=mask2d, return_dict_in_generate=keep, **kwargs)
        return (out.sequences, _cache_kwarg(out)) if keep else (out, None)

    # -- sequences ---------------------------------------------------------------------------------------------
    def _text_only_inputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """A text-only batch (``vidvlm.data.text_corpus``): conversations through the chat template with the loss
        on the answers, plain sentences as language modelling on every token; no visual tokens either way."""
        if batch.get("conversation") is not None:
            return self.prepare_inputs(batch["conversation"], None, paths=batch.get("path"), positions=True)
        device = self.lm.get_input_embeddings().weight.device
        return self.sequences.plain_text(list(batch["text"]), device, positions=True)

    def _user_turn(self, question: str | None) -> str:
        return "<video>\n" + (question or self.config.caption_prompt)

    def _conversations(self, batch: dict[str, Any]) -> list[list[dict[str, str]]]:
        """The batch's conversations; caption / question samples (no conversation) as one-turn conversations."""
        convs = batch.get("conversation")
        if convs is not None and all(c is not None for c in convs):
            return list(convs)
        convs = convs or [None] * len(batch["text"])
        questions = batch.get("question") or [None] * len(batch["text"])
        caption = [
            [{"role": "user", "content": self._user_turn(q)}, {"role": "assistant", "content": a}]
            for q, a in zip(questions, batch["text"], strict=True)
        ]
        return [c if c is not None else d for c, d in zip(convs, caption, strict=True)]

    # -- checkpoints -------------------------------------------------------------------------------------------
    def _is_base(self, name: str) -> bool:
        """A weight of a frozen pretrained base (the LM's own weights, a pretrained tower's), not stored unless
        trained. LoRA adapters, the connector and the pooler are the run's own."""
        if name.startswith("lm."):
            return "lora_" not in name
        return name.startswith(self._tower_bases)

    def _lm_sha256(self) -> str:
        if self._lm_hash is None:
            path = _resolve(self.config.lm.source, self._checkpoint_dir)
            self._lm_hash = weights_sha256(path, gguf_file=self.config.lm.gguf_file)
        return self._lm_hash

    def config_for_save(self) -> LlavaConfig:
        # bases are named by absolute path (a relative one in a checkpoint means "inside it", as export writes)
        tower = _absolute(with_source_hashes(self.config.front_end.tower))
        source = str(_resolve(self.config.lm.source, self._checkpoint_dir).resolve())
        lm = dataclasses.replace(self.config.lm, source=source, sha256=self._lm_sha256())
        front_end = dataclasses.replace(self.config.front_end, tower=tower)
        return dataclasses.replace(self.config, lm=lm, front_end=front_end, chat_template=self.template)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the config (bases named by path and sha256), the trained tensors and the tokenizer."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        save_config(self.config_for_save(), path / CONFIG_FILE)
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        keep = {
            n: t.detach().contiguous()
            for n, t in self.state_dict().items()
            if not self._is_base(n) or n in self._trained or n in trainable
        }
        save_file(keep, str(path / WEIGHTS_FILE))
        self.tokenizer.save(path)

    @classmethod
    def _build_for_restore(cls, config: LlavaConfig, directory: Path) -> LlavaModel:
        return cls(config, checkpoint_dir=directory)

    def load_saved_weights(self, directory: str | Path) -> None:
        """Load a checkpoint's tensors: every tensor must fit; only base weights may be absent (they come from the
        bases, already checked by hash)."""
        file = Path(directory) / WEIGHTS_FILE
        try:
            tensors = load_file(str(file))
        except Exception as e:  # safetensors raises several kinds
            raise CheckpointError(f"{file}: cannot read safetensors: {e}") from e
        missing, unexpected = self.load_state_dict(tensors, strict=False)
        missing = [k for k in missing if not self._is_base(k)]
        if missing or unexpected:
            raise CheckpointError(
                f"{file}: checkpoint does not match the model; missing keys: {sorted(missing)}; "
                f"unexpected keys: {sorted(unexpected)}"
            )
        self._trained.update(k for k in tensors if self._is_base(k))

    def export(self, directory: str | Path) -> Path:
        """A standalone directory: LoRA merged into the LM, the LM saved inside (``lm/``), the tower resolved and
        stored, so ``vidvlm.load`` needs no base."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        lm = copy.deepcopy(self.lm)
        if self.config.lm.lora is not None:
            lm = lm.merge_and_unload()
        lm.save_pretrained(path / "lm", safe_serialization=True)
        self.tokenizer.save(path / "lm")
        lm_cfg = LanguageModelConfig(source="lm", dtype=self.config.lm.dtype, sha256=weights_sha256(path / "lm"))
        front_end = self.front_end.resolved_config()
        cfg = dataclasses.replace(self.config, lm=lm_cfg, front_end=front_end, chat_template=self.template)
        save_config(cfg, path / CONFIG_FILE)
        tensors = {n: t.detach().contiguous() for n, t in self.state_dict().items() if not n.startswith("lm.")}
        save_file(tensors, str(path / WEIGHTS_FILE))
        self.tokenizer.save(path)
        return path


def _cache_kwarg(output: Any) -> dict[str, Any]:
    """The key/value cache of an LM forward, under the name ``generate()`` takes it: ``cache`` in recent
    transformers, ``past_key_values`` before that rename (both are supported)."""
    if getattr(output, "cache", None) is not None:
        return {"cache": output.cache}
    return {"past_key_values": output.past_key_values}


def _with_lora(lm: nn.Module, spec: LoraSpec) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=spec.target_modules)
    try:
        return get_peft_model(lm, config)
    except ValueError as e:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in lm.named_modules() if isinstance(m, nn.Linear)})
        raise ConfigError(
            f"lm.lora.target_modules: {spec.target_modules} match no module of the LM; its linear layers: {names}"
        ) from e


def _stop_ids(chat: ChatLayout, tokenizer: Any) -> list[int]:
    """EOS and the template's end-of-turn token (what follows an answer, e.g. ChatML's ``<|im_end|>``)."""
    ids = [int(tokenizer.eos_token_id)] if tokenizer.eos_token_id is not None else []
    mark = "\u2063answer\u2063"
    rendered = chat.render([{"role": "user", "content": "q"}, {"role": "assistant", "content": mark}])
    tail = rendered.split(mark, 1)[1].strip() if mark in rendered else ""
    if tail:
        tail_ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
        if tail_ids and tail_ids[0] not in ids:
            ids.append(int(tail_ids[0]))
    return ids


def _resolve(source: str, checkpoint_dir: Path | None) -> Path:
    if not source:
        raise ConfigError("lm.source: required (a local causal-LM directory or a .gguf file)")
    path = Path(source)
    return checkpoint_dir / path if checkpoint_dir is not None and not path.is_absolute() else path


def _absolute(tower: TowerConfig) -> TowerConfig:
    """The tower config with its local sources as absolute paths."""

    def absolute(p: str | None) -> str | None:
        return p if p is None or p.startswith("timm:") else str(Path(p).resolve())

    members = [_absolute(m) for m in tower.members]
    return dataclasses.replace(tower, source=absolute(tower.source), weights=absolute(tower.weights), members=members)


def _relocated(tower: TowerConfig, checkpoint_dir: Path) -> TowerConfig:
    """A tower config whose relative sources resolve against a standalone checkpoint's directory."""

    def move(p: str | None) -> str | None:
        return p if p is None or p.startswith("timm:") or Path(p).is_absolute() else str(checkpoint_dir / p)

    members = [_relocated(m, checkpoint_dir) for m in tower.members]
    return dataclasses.replace(tower, source=move(tower.source), weights=move(tower.weights), members=members)


def _check_hash(key: str, path: Path, gguf_file: str | None, expected: str) -> None:
    got = weights_sha256(path, gguf_file=gguf_file)
    if got != expected:
        raise CheckpointError(
            f"{key}: {path} has weights sha256 {got[:16]}..., but this checkpoint was trained on {expected[:16]}... "
            "(a different base model)"
        )


__all__ = ["LlavaConfig", "LlavaModel", "LanguageModelConfig", "LoraSpec"]
