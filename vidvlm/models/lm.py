"""Pretrained causal language models from local files: an HF directory or a GGUF file (transformers' loader).

Nothing is downloaded, nothing is unpickled (safetensors only) and no remote code runs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from vidvlm.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def load_causal_lm(source: str | Path, *, gguf_file: str | None = None, dtype: Any = torch.float32) -> tuple[Any, Any]:
    """Load a decoder-only causal LM and its tokenizer.

    Args:
        source: a local HF directory, or a ``.gguf`` file.
        gguf_file: the GGUF file's name inside ``source`` (a directory).
        dtype: parameter dtype (a GGUF is dequantised to it).

    Returns:
        ``(model, tokenizer)``; a tokenizer without a pad token pads with its EOS token.

    Raises:
        ConfigError: missing source, not a causal LM, only pickled weights, custom code, or no tokenizer.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(source)
    if path.suffix == ".gguf" and gguf_file is None:
        path, gguf_file = path.parent, path.name
    where = path / gguf_file if gguf_file else path
    if not where.exists():
        raise ConfigError(f"lm.source: {where} does not exist")
    kw: dict[str, Any] = {"trust_remote_code": False, "local_files_only": True}
    if gguf_file:
        kw["gguf_file"] = gguf_file
    else:
        if not (path / "config.json").is_file():
            raise ConfigError(f"lm.source: {path} has no config.json (expected an HF causal LM directory or a .gguf)")
        if not list(path.glob("*.safetensors")):
            raise ConfigError(f"lm.source: {path} has no .safetensors weights (pickled weights are not read)")
        kw["use_safetensors"] = True
    try:
        config = AutoConfig.from_pretrained(path, **{k: v for k, v in kw.items() if k != "use_safetensors"})
    except (OSError, ValueError) as e:
        raise ConfigError(f"lm.source: cannot read the config of {where}: {e}") from e
    if getattr(config, "auto_map", None):
        raise ConfigError(f"lm.source: {where} needs custom code (auto_map); trust_remote_code stays off")
    if getattr(config, "is_encoder_decoder", False) or type(config) not in AutoModelForCausalLM._model_mapping:
        raise ConfigError(
            f"lm.source: {where} is a {type(config).__name__} ({config.model_type}), not a decoder-only causal LM"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **{k: v for k, v in kw.items() if k != "use_safetensors"})
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"lm.source: {where} has no usable tokenizer: {e}") from e
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kw)
    return model, tokenizer


def weights_sha256(source: str | Path, gguf_file: str | None = None) -> str:
    """sha256 over an LM's weight files (its sorted ``*.safetensors``, or the GGUF file), read in chunks."""
    path = Path(source)
    if gguf_file:
        path = path / gguf_file
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"{path}: no weight files to hash")
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


__all__ = ["load_causal_lm", "weights_sha256", "DTYPES"]
