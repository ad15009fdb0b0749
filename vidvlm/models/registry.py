"""Family name -> model class: ``@register_family``, :func:`build_model`, :func:`load`.

The registry is one dict. A config names its family explicitly (``family: contrastive``); nothing is inferred from
which keys a config has. Family modules register themselves when imported; :func:`import_families` imports the
built-in ones listed in ``FAMILY_MODULES`` (those that exist), so ``load(dir)`` works without the caller importing
anything.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path
from typing import Any

from vidvlm.config import from_dict, read_mapping
from vidvlm.errors import CheckpointError, ConfigError
from vidvlm.models.base import ABILITIES, CONFIG_FILE, VLMModel

# Modules that define built-in families (a module not present in this install is skipped).
FAMILY_MODULES: tuple[str, ...] = (
    "vidvlm.models.contrastive",
    "vidvlm.models.generative",
    "vidvlm.models.masking",
    "vidvlm.models.llava",
    "vidvlm.models.early_fusion",
)

# HF model_type -> module whose ``load_hf(directory, map_location)`` imports such a transformers directory.
HF_IMPORTERS: dict[str, str] = {"llava_next_video": "vidvlm.models.llava_hf"}

_FAMILIES: dict[str, type[VLMModel]] = {}


def register_family(name: str):
    """Class decorator: register a :class:`VLMModel` subclass as family ``name``.

    The class needs a ``config_class`` dataclass whose ``family`` field defaults to ``name``.
    """

    def deco(cls: type[VLMModel]) -> type[VLMModel]:
        if name in _FAMILIES and _FAMILIES[name] is not cls:
            raise ValueError(f"family {name!r} is already registered by {_FAMILIES[name].__qualname__}")
        if not issubclass(cls, VLMModel):
            raise TypeError(f"{cls.__qualname__} must subclass VLMModel to be a family")
        _check_abilities(cls)
        # read the class's own attributes, not ones inherited from a registered parent family
        if not cls.__dict__.get("family_name"):
            cls.family_name = name  # the first name registered is the class's default family
        cls.family_names = (*cls.__dict__.get("family_names", ()), name)
        _FAMILIES[name] = cls
        return cls

    return deco


def _check_abilities(cls: type[VLMModel]) -> None:
    """A family declares only known abilities, and overrides the methods each needs."""
    unknown = sorted(set(cls.abilities) - set(ABILITIES))
    if unknown:
        raise TypeError(f"{cls.__qualname__}: unknown abilities {unknown}; known: {sorted(ABILITIES)}")
    for ability in cls.abilities:
        for method in ABILITIES[ability][1]:
            if getattr(cls, method, None) is getattr(VLMModel, method, None):
                raise TypeError(f"{cls.__qualname__} declares {ability!r} but does not implement {method}()")


def import_families() -> None:
    """Import the built-in family modules that exist (errors inside an existing module propagate)."""
    for module in FAMILY_MODULES:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)


def list_families() -> list[str]:
    """Names of every registered family (built-ins imported first)."""
    import_families()
    return sorted(_FAMILIES)


def get_family(name: str) -> type[VLMModel]:
    """The model class of family ``name``.

    Raises:
        ConfigError: unknown family.
    """
    if name not in _FAMILIES:
        import_families()
    if name not in _FAMILIES:
        raise ConfigError(f"family: unknown model family {name!r}; registered: {sorted(_FAMILIES)}")
    return _FAMILIES[name]


def build_model(cfg: Any, where: str = "model") -> VLMModel:
    """Build a fresh model from a family config dataclass or a mapping with a ``family`` key.

    Raises:
        ConfigError: no or unknown ``family``, or an invalid config.
    """
    if isinstance(cfg, dict):
        family = cfg.get("family")
        if not isinstance(family, str):
            raise ConfigError(f"{where}.family: required key is missing (e.g. family: contrastive)")
        cls = get_family(family)
        cfg = from_dict(cls.config_class, cfg, where=where)
    else:
        family = getattr(cfg, "family", None)
        if not isinstance(family, str):
            raise ConfigError(f"{where}: {type(cfg).__name__} has no 'family' field")
        cls = get_family(family)
        if not isinstance(cfg, cls.config_class):
            raise ConfigError(f"{where}: family {family!r} needs a {cls.config_class.__name__}")
    return cls(cfg)


def load(directory: str | Path, map_location: str = "cpu") -> VLMModel:
    """Restore any family's checkpoint directory (``config.yaml`` names the family), or import a transformers
    directory whose ``config.json`` has a ``model_type`` in ``HF_IMPORTERS``.

    Raises:
        CheckpointError: not a checkpoint directory, unknown family, or weights that do not match.
    """
    path = Path(directory)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such directory")
    if not (path / CONFIG_FILE).is_file():
        importer = HF_IMPORTERS.get(_hf_model_type(path))
        if importer is not None:
            return importlib.import_module(importer).load_hf(path, map_location=map_location)
        raise CheckpointError(f"{path}: no {CONFIG_FILE} (not a vidvlm checkpoint directory)")
    family = read_mapping(path / CONFIG_FILE).get("family")
    if not isinstance(family, str):
        raise CheckpointError(f"{path / CONFIG_FILE}: no 'family' key")
    try:
        cls = get_family(family)
    except ConfigError as e:
        raise CheckpointError(f"{path / CONFIG_FILE}: {e}") from e
    return cls.from_pretrained(path, map_location=map_location)


def _hf_model_type(path: Path) -> str | None:
    """The ``model_type`` of an HF directory's ``config.json`` (None: no such file or key)."""
    try:
        value = json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


__all__ = ["register_family", "build_model", "load", "get_family", "list_families", "import_families"]
