"""The base class of every model family: checkpoint I/O and tower locking.

A checkpoint directory holds ``config.yaml`` (the family's config dataclass, with its ``family`` key),
``model.safetensors`` (every tensor of the state dict; tensors shared between modules are stored once) and the
tokenizer files. Nothing is pickled. Loading is strict: a missing or unexpected tensor, or a shape mismatch, is a
:class:`~vidvlm.errors.CheckpointError` that lists the keys.

A family subclasses :class:`VLMModel`, sets ``config_class``, declares its ``abilities`` and may override two hooks:
``_save_extra(dir)`` (write tokenizer or tower files) and the classmethod ``_build_for_restore(config, dir)`` (build
the architecture from a checkpoint without reading pretrained sources named in the config).

Abilities are declared on the class, never guessed from attribute or family names. Code that uses a model asks
``model.can(EMBED_VIDEO)`` or calls ``model.require(GENERATE, "caption videos")``, which raises a
:class:`~vidvlm.errors.ConfigError` naming the family and what it cannot do. The registry checks at registration
that a class implements what it declares.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, load_model, save_model
from torch import nn

from vidvlm.config import from_dict, read_mapping, save_config
from vidvlm.errors import CheckpointError, ConfigError
from vidvlm.models.tokenizer import TOKENIZER_FILES, TextTokenizer

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"

# What a family can do. Each ability names the methods a family that declares it implements.
EMBED_VIDEO = "embed_video"  # encode_video(video, frame_mask) -> [B, E]
EMBED_TEXT = "embed_text"  # encode_text(texts) -> [B, E]
# generate(video, frame_mask, questions=None, decode=None, clip_of=None) -> list[str]; clip_of (long [B]) says which
# of video's clips each of B outputs is about (several questions about one clip encode it once); default: one each
GENERATE = "generate"
ANSWER = "answer"  # generate(..., questions=[...]) answers questions about the video
CHAT = "chat"  # generate(..., conversations=[...], clips_per_sample=...) continues multi-turn conversations;
# with FRONT_END too, generate(None, ..., visual=front_end(video)) reuses one encoding of the clips over the turns;
# start_chat(video, timestamps) -> a session whose ask(question) -> str keeps the LM's key/value cache between turns
VISUAL_TOKENS = "visual_tokens"  # visual_tokens(video, frame_mask) -> ([B, M, D], mask [B, M] | None)
FRONT_END = "front_end"  # .front_end: the family's VideoFrontEnd (tower, pooler, connector)
MATCH = "match"  # match_video / match_text -> cached inputs of match_scores(...) -> [P] video-text matching log-odds
TEXT_ONLY = "text_only"  # forward(batch) trains on text-only batches (no "video" key; vidvlm.data.text_corpus)

ABILITIES: dict[str, tuple[str, tuple[str, ...]]] = {
    EMBED_VIDEO: ("embed video", ("encode_video",)),
    EMBED_TEXT: ("embed text", ("encode_text",)),
    GENERATE: ("generate text", ("generate",)),
    ANSWER: ("answer questions", ("generate",)),
    CHAT: ("hold a multi-turn conversation", ("generate", "start_chat")),
    VISUAL_TOKENS: ("expose visual tokens", ("visual_tokens",)),
    FRONT_END: ("expose its video front-end", ()),
    MATCH: ("score video-text pairs", ("match_video", "match_text", "match_scores")),
    TEXT_ONLY: ("train on text-only batches", ()),
}


class VLMModel(nn.Module):
    """Base of the model families (see the module docstring).

    Every family implements ``forward(batch) -> dict`` with losses named ``*_loss``, the ``transform`` property (the
    evaluation transform producing its input) and ``num_frames`` (frames per clip it expects, counted in frames,
    not tubelets), plus the methods of the abilities it declares (see ``ABILITIES``).

    Attributes:
        config_class: the family's config dataclass (it has a ``family`` field).
        abilities: what the family can do (names from ``ABILITIES``); checked at registration.
        family_name: set by :func:`vidvlm.models.registry.register_family` (the first name registered).
        family_names: every family name registered for this class (one class may serve several).
        config: the instance's config.
    """

    config_class: ClassVar[type]
    abilities: ClassVar[frozenset[str]] = frozenset()
    family_name: ClassVar[str] = ""
    family_names: ClassVar[tuple[str, ...]] = ()
    # state-dict prefixes renamed since older checkpoints were written: old prefix -> new prefix
    legacy_prefixes: ClassVar[dict[str, str]] = {}

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.tokenizer: TextTokenizer | None = None

    # -- abilities ---------------------------------------------------------------------------------------------
    @classmethod
    def can(cls, ability: str) -> bool:
        """Whether the family declares ``ability`` (one of ``ABILITIES``)."""
        if ability not in ABILITIES:
            raise ValueError(f"unknown ability {ability!r}; known: {sorted(ABILITIES)}")
        return ability in cls.abilities

    @classmethod
    def require(cls, ability: str, purpose: str = "") -> None:
        """Raise a :class:`ConfigError` naming the family when it cannot do ``ability`` (``purpose`` says why
        the caller needs it, e.g. ``"caption videos"``)."""
        if cls.can(ability):
            return
        name = cls.family_name or cls.__name__
        can = ", ".join(ABILITIES[a][0] for a in sorted(cls.abilities)) or "nothing declared"
        why = f" (needed to {purpose})" if purpose else ""
        raise ConfigError(f"family {name!r} cannot {ABILITIES[ability][0]}{why}; it can: {can}")

    def answers_questions(self) -> bool:
        """Whether this instance answers questions: the family's ``ANSWER`` ability, which a family may narrow per
        instance (a captioner trained on captions alone declares the ability but refuses questions)."""
        return self.can(ANSWER)

    # -- interface ---------------------------------------------------------------------------------------------
    def encode_video(self, video: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``video [B, T, 3, H, W]`` (float, after :attr:`transform`) -> ``[B, D]``."""
        raise NotImplementedError(f"{type(self).__name__} has no video embedding")

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """B strings -> ``[B, D]``."""
        raise NotImplementedError(f"{type(self).__name__} has no text embedding")

    @property
    def transform(self):
        """The evaluation transform: uint8 ``[T, 3, H, W]`` -> float ``[T, 3, H, W]`` as ``encode_video`` expects
        (a family with a front-end: the front-end's, at the model's size and normalisation)."""
        if self.can(FRONT_END):
            return self.front_end.transform()
        raise NotImplementedError(f"{type(self).__name__} has no video input")

    @property
    def num_frames(self) -> int:
        """Frames per clip the model is built for (frames, not tubelets); samplers draw this many (a family with a
        front-end: its ``front_end.num_frames``)."""
        if self.can(FRONT_END):
            return self.front_end.cfg.num_frames
        raise NotImplementedError(f"{type(self).__name__} has no video input")

    # -- tokenizer: one lifecycle for every family -------------------------------------------------------------
    # A family's constructor may load a tokenizer its config names; otherwise the trainer's call to
    # prepare_for_training trains one on the captions (families without text train nothing). It is saved with the
    # model, and a checkpoint always restores the saved one.
    def set_tokenizer(self, tokenizer: TextTokenizer) -> None:
        """Use ``tokenizer`` (the family checks that it fits its embeddings)."""
        self._check_tokenizer(tokenizer)
        self.tokenizer = tokenizer

    def _adopt_tokenizer(self, tokenizer: TextTokenizer | None, source: str | None) -> None:
        """At construction: use ``tokenizer``, else load the local directory ``source`` (None: leave it to
        ``prepare_for_training``)."""
        if tokenizer is None and source is not None:
            tokenizer = TextTokenizer.load(source)
        if tokenizer is not None:
            self.set_tokenizer(tokenizer)

    def _check_tokenizer(self, tokenizer: TextTokenizer) -> None:
        """Raise a :class:`ConfigError` when ``tokenizer`` does not fit the model (default: any fits)."""

    def _train_tokenizer(self, captions: list[str]) -> TextTokenizer | None:
        """A tokenizer trained on ``captions`` (default: the family has no text side, None)."""
        return None

    def export(self, directory: str | Path) -> Path:
        """A standalone copy that loads with nothing else present. A family that stores every weight is its own
        export; one that names frozen bases (llava) writes them inside."""
        self.save_pretrained(directory)
        return Path(directory)

    def prepare_for_training(self, captions: list[str]) -> None:
        """Called by the trainer before the first step with every training caption: a model without a tokenizer
        trains one on them."""
        if self.tokenizer is None:
            tokenizer = self._train_tokenizer(list(captions))
            if tokenizer is not None:
                self.set_tokenizer(tokenizer)

    def require_tokenizer(self) -> TextTokenizer:
        """The tokenizer, or a :class:`ConfigError` saying how to get one."""
        if self.tokenizer is None:
            raise ConfigError(
                f"family {self.family_name!r}: the model has no tokenizer yet; name one in the config or call "
                "prepare_for_training(captions) (the trainer does)"
            )
        return self.tokenizer

    # -- checkpoints -------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``config.yaml``, ``model.safetensors`` and the family's extra files into ``directory``."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        save_config(self.config_for_save(), path / CONFIG_FILE)
        save_model(self, str(path / WEIGHTS_FILE))
        self._save_extra(path)

    def config_for_save(self) -> Any:
        """The config written to ``config.yaml`` (families may replace pretrained sources by resolved configs)."""
        return self.config

    def _save_extra(self, directory: Path) -> None:
        """Write the tokenizer (and, in families that override this, tower files)."""
        if self.tokenizer is not None:
            self.tokenizer.save(directory)

    @classmethod
    def _build_for_restore(cls, config: Any, directory: Path) -> VLMModel:
        """Build the architecture for a checkpoint's weights, with the saved tokenizer (default: ``cls(config)``)."""
        return cls._restore_tokenizer(cls(config), directory)

    @staticmethod
    def _restore_tokenizer(model: VLMModel, directory: Path) -> VLMModel:
        if any((directory / f).is_file() for f in TOKENIZER_FILES):
            model.set_tokenizer(TextTokenizer.load(directory))
        return model

    @classmethod
    def migrate_config(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Rewrite a config mapping written by an older version into the current layout (default: unchanged)."""
        return data

    @classmethod
    def read_config(cls, directory: str | Path) -> Any:
        """Parse ``directory/config.yaml`` into ``cls.config_class`` (strict keys).

        Raises:
            CheckpointError: no config file, or it belongs to another family.
        """
        path = Path(directory) / CONFIG_FILE
        if not path.is_file():
            raise CheckpointError(f"{Path(directory)}: no {CONFIG_FILE} (not a vidvlm checkpoint directory)")
        data = read_mapping(path)
        family = data.get("family")
        if cls.family_names and family not in cls.family_names:
            raise CheckpointError(f"{path}: family is {family!r}, but {cls.__name__} loads {list(cls.family_names)}")
        try:
            return from_dict(cls.config_class, cls.migrate_config(data), where=str(path))
        except ConfigError as e:
            raise CheckpointError(str(e)) from e

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> VLMModel:
        """Restore a model saved with :meth:`save_pretrained` onto ``map_location``.

        The model is returned in training mode, like any new module: call ``.eval()`` for inference.

        Raises:
            CheckpointError: missing files, wrong family, missing/unexpected tensors or mismatched shapes.
        """
        path = Path(directory)
        config = cls.read_config(path)
        weights = path / WEIGHTS_FILE
        if not weights.is_file():
            raise CheckpointError(f"{path}: no {WEIGHTS_FILE}")
        model = cls._build_for_restore(config, path)
        model.load_saved_weights(path)
        return model.to(map_location)

    def load_saved_weights(self, directory: str | Path) -> None:
        """Load the tensors a checkpoint directory holds (strictly; older key names are renamed). Families whose
        checkpoints store only part of the model (frozen bases named by hash) override this."""
        load_weights(self, Path(directory) / WEIGHTS_FILE, rename=self.legacy_prefixes)

    # -- locking -----------------------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of every parameter with ``requires_grad``."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]


def load_weights(
    model: nn.Module, file: str | Path, map_location: str | torch.device = "cpu", rename: dict[str, str] | None = None
) -> None:
    """Strictly load ``file`` (safetensors) into ``model``.

    Args:
        rename: old key prefix -> new prefix, applied to a file whose keys use the old names (older checkpoints).

    Raises:
        CheckpointError: the file is unreadable, or keys are missing / unexpected, or shapes differ.
    """
    file = Path(file)
    try:
        if rename and _has_legacy_keys(file, rename):
            tensors = {_renamed(k, rename): v for k, v in load_file(str(file), device=str(map_location)).items()}
            missing, unexpected = model.load_state_dict(tensors, strict=False)
        else:
            missing, unexpected = load_model(model, str(file), strict=False, device=str(map_location))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{file}: cannot read safetensors: {e}") from e
    except RuntimeError as e:  # size mismatches from load_state_dict
        raise CheckpointError(f"{file}: tensors do not fit the model: {e}") from e
    if missing or unexpected:
        raise CheckpointError(
            f"{file}: checkpoint does not match the model; missing keys: {sorted(missing)}; "
            f"unexpected keys: {sorted(unexpected)}"
        )


def _has_legacy_keys(file: Path, rename: dict[str, str]) -> bool:
    with safe_open(str(file), framework="pt") as f:
        return any(k.startswith(old) for k in f.keys() for old in rename)  # noqa: SIM118 (safe_open is not iterable)


def _renamed(key: str, rename: dict[str, str]) -> str:
    for old, new in rename.items():
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def freeze(module: nn.Module) -> None:
    """Set ``requires_grad = False`` on every parameter of ``module``."""
    for p in module.parameters():
        p.requires_grad_(False)


def lock_tower(
    tower: nn.Module, layers: nn.ModuleList, unlocked_layers: int = 0, unlocked: Iterable[nn.Module] = ()
) -> None:
    """LiT-style locking: freeze ``tower`` except its last ``unlocked_layers`` blocks (and ``unlocked`` modules,
    e.g. the final norm, which are only unlocked when ``unlocked_layers > 0``).

    Args:
        tower: the whole tower.
        layers: its block list.
        unlocked_layers: how many of the last blocks stay trainable (0 = lock everything).
        unlocked: modules after the blocks that train along with the unlocked blocks.
    """
    if unlocked_layers < 0 or unlocked_layers > len(layers):
        raise ConfigError(f"unlocked layers: {unlocked_layers} is not in [0, {len(layers)}]")
    freeze(tower)
    if unlocked_layers == 0:
        return
    for mod in [*list(layers)[len(layers) - unlocked_layers :], *unlocked]:
        for p in mod.parameters():
            p.requires_grad_(True)


__all__ = [
    "ABILITIES",
    "EMBED_VIDEO",
    "MATCH",
    "EMBED_TEXT",
    "GENERATE",
    "ANSWER",
    "CHAT",
    "VISUAL_TOKENS",
    "FRONT_END",
    "TEXT_ONLY",
    "VLMModel",
    "load_weights",
    "freeze",
    "lock_tower",
    "CONFIG_FILE",
    "WEIGHTS_FILE",
]
