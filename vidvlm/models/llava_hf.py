"""Open a transformers LLaVA-NeXT-Video directory (``LlavaNextVideoForConditionalGeneration.save_pretrained``) as the
``llava`` family, with the same visual tokens, prompt ids and logits as transformers' model and processor.

    HF directory (config.json, safetensors, tokenizer, processor) ──one strict mapping (HF_PARTS)──▶
        vision tower      ──convert_hf_vision──▶ the native VideoViT, ``frame`` layout (each frame alone, as HF)
        projector         ──────────────────▶ the ``mlp`` connector (the same parameter names)
        language model    ──────────────────▶ ``lm/``: a causal-LM directory that ``load_causal_lm`` opens
        ``image_newline``  dropped: HF uses it only on its any-resolution image path; here an image is a 1-frame video

How HF's video path (``get_video_features``) maps onto the front-end:

* the tower runs per frame and ``hidden_states[vision_feature_layer]`` is read (a list is concatenated along D):
  ``tower.layers = [vision_feature_layer]`` (the multi-level tower; index 0 is the embeddings after
  ``pre_layrnorm``, -2 the output of the second-to-last block, before any final norm, as in HF);
* ``vision_feature_select_strategy``: ``default`` drops the first token (CLIP's class token), ``full`` keeps all
  (SigLIP has none): the pooler's ``num_prefix_tokens`` is 1 or 0; a strategy that leaves a non-square grid (CLIP
  with ``full``, SigLIP with ``default``) is refused, as HF's video pooler cannot run it either;
* ``vision_resampler`` (``LlavaNextVideoPooler``, ``average`` / ``max`` with ``spatial_pool_stride`` s), applied
  per frame before the projector: the ``spatial2d`` pooler to a ``grid / s`` side (the same windows as
  ``AvgPool2d(s, s)`` when s divides the grid, else refused; ``conv`` is refused);
* the projector: the ``mlp`` connector with ``projector_hidden_act`` (``multimodal_projector_bias: false`` is
  refused);
* the prompt: the processor's chat template renders typed contents (``{"type": "video"}``); it is wrapped so that
  a vidvlm turn ``"<video>\\nquestion"`` renders as the processor renders ``[video, text "question"]``, and
  ``prompt_tokens: whole`` tokenizes the rendering as the processor does (BOS added, ``<video>`` one token).

Where the result goes: :func:`import_llava_next_video` writes a standalone vidvlm checkpoint (the layout of
``LlavaModel.export``: ``config.yaml``, ``model.safetensors`` with the front-end, tokenizer files, and ``lm/``).
``vidvlm.load(DIR)`` writes it once into the cache, ``$VIDVLM_CACHE/llava_hf/<fingerprint>`` (default
``~/.cache/vidvlm``; the fingerprint covers DIR's path and its files' names, sizes and times), and loads it from
there, so a fine-tuned run names its base (the cached ``lm/``) by path and sha256 like any other. The LM is copied
once (its size again on disk); the source is never modified.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vidvlm.atomic import staging_dir
from vidvlm.config import save_config
from vidvlm.data.transforms import NORMALIZE_PRESETS
from vidvlm.errors import CheckpointError
from vidvlm.layers.connectors import ConnectorConfig
from vidvlm.layers.pooling import PoolerConfig
from vidvlm.models.base import CONFIG_FILE, WEIGHTS_FILE
from vidvlm.models.convert import convert_hf_vision, hf_vision_config, load_converted
from vidvlm.models.decoding import DecodeConfig
from vidvlm.models.frontend import FrontEndConfig, TowerConfig, VideoFrontEnd
from vidvlm.models.llava import LanguageModelConfig, LlavaConfig, LlavaModel
from vidvlm.models.lm import weights_sha256

MODEL_TYPE = "llava_next_video"
VERSION = 1  # of the conversion; part of the cache fingerprint

# HF tensor-name prefix -> (part, prefix in that part), for every naming transformers has used: what save_pretrained
# writes (``vision_tower.*``, ``language_model.model.*``), the 4.x checkpoints on the Hub
# (``vision_tower.vision_model.*``) and the module names since 4.52 (``model.vision_tower.*``,
# ``model.language_model.*``, ``lm_head.*``). The first prefix that matches wins, so longer ones come first.
HF_PARTS: tuple[tuple[str, str, str], ...] = (
    ("model.vision_tower.vision_model.", "vision", ""),
    ("vision_tower.vision_model.", "vision", ""),
    ("model.vision_tower.", "vision", ""),
    ("vision_tower.", "vision", ""),
    ("model.multi_modal_projector.", "projector", ""),
    ("multi_modal_projector.", "projector", ""),
    ("model.language_model.", "lm", "model."),
    ("language_model.model.", "lm", "model."),
    ("language_model.lm_head.", "lm", "lm_head."),
    ("lm_head.", "lm", "lm_head."),
)
# Used only by HF's any-resolution image path (a newline embedding after each row of image tiles).
DROPPED = ("model.image_newline", "image_newline")
_ACTS = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "quick_gelu": "quick_gelu", "relu": "relu", "silu": "silu"}
_FINGERPRINT_FILES = ("*.json", "*.safetensors", "*.jinja", "*.model", "*.txt")

# Turns vidvlm's string contents ("<video>\nquestion") into the typed parts a processor template reads
# ([{"type": "video"}, {"type": "text", "text": "question"}]); typed contents pass through.
STRING_TURNS = (
    "{%- set ns = namespace(messages=[]) -%}"
    "{%- for m in messages -%}"
    "{%- if m['content'] is string -%}"
    "{%- set c = m['content'] -%}"
    "{%- set text = c.replace('<image>\\n', '').replace('<image>', '').replace('<video>\\n', '')"
    ".replace('<video>', '') | trim -%}"
    "{%- set parts = [{'type': 'image'}] * c.count('<image>') + [{'type': 'video'}] * c.count('<video>') -%}"
    "{%- set parts = parts + ([{'type': 'text', 'text': text}] if text else []) -%}"
    "{%- set ns.messages = ns.messages + [{'role': m['role'], 'content': parts}] -%}"
    "{%- else -%}{%- set ns.messages = ns.messages + [m] -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- set messages = ns.messages %}"
)


def load_hf(source: str | Path, map_location: str | torch.device = "cpu") -> LlavaModel:
    """``vidvlm.load`` of an HF LLaVA-NeXT-Video directory: import it once into the cache, then load that.

    Raises:
        CheckpointError: the directory does not convert (see :func:`import_llava_next_video`).
    """
    src = Path(source)
    out = cache_root() / "llava_hf" / fingerprint(src)
    if not (out / CONFIG_FILE).is_file():
        import_llava_next_video(src, out)
    return LlavaModel.from_pretrained(out, map_location=map_location)


def cache_root() -> Path:
    """``$VIDVLM_CACHE``, else ``~/.cache/vidvlm``."""
    return Path(os.environ.get("VIDVLM_CACHE") or Path.home() / ".cache" / "vidvlm")


def fingerprint(source: Path) -> str:
    """A cheap name for a directory's state: its absolute path and its files' names, sizes and modification times."""
    root = source.resolve()
    rows = [f"{VERSION} {root}"]
    files = sorted({p for pattern in _FINGERPRINT_FILES for p in root.glob(pattern)})
    for p in files:
        st = p.stat()
        rows.append(f"{p.name} {st.st_size} {st.st_mtime_ns}")
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:24]


def import_llava_next_video(source: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write an HF LLaVA-NeXT-Video directory as a standalone vidvlm ``llava`` checkpoint (see the module docstring).

    The directory is written beside ``out_dir`` and renamed into place; an existing complete one is kept unless
    ``overwrite``.

    Raises:
        CheckpointError: no config or safetensors, a tensor the mapping does not know or one it needs that is
            missing (each named), or a setting the ``llava`` family cannot reproduce exactly (named by its key).
    """
    src, out = Path(source), Path(out_dir)
    if (out / CONFIG_FILE).is_file() and not overwrite:
        return out
    hf_cfg = _hf_config(src)
    parts = split_tensors(_read_tensors(src), src)
    tokenizer = _tokenizer(src)
    cfg = llava_config(hf_cfg, src, tokenizer)
    tmp = staging_dir(out)
    try:
        _write_lm(parts, hf_cfg, src, tmp / "lm")
        tokenizer.save_pretrained(tmp / "lm")
        cfg = dataclasses.replace(cfg, lm=dataclasses.replace(cfg.lm, sha256=weights_sha256(tmp / "lm")))
        front_end = _front_end(cfg.front_end, hf_cfg, parts, src)
        tensors = {f"front_end.{k}": v.detach().contiguous() for k, v in front_end.state_dict().items()}
        save_file(tensors, str(tmp / WEIGHTS_FILE))
        save_config(cfg, tmp / CONFIG_FILE)
        tokenizer.save_pretrained(tmp)
        provenance = {"source": str(src.resolve()), "source_weights_sha256": weights_sha256(src), "version": VERSION}
        (tmp / "vidvlm_source.json").write_text(json.dumps(provenance, indent=2) + "\n")
        if out.exists() and overwrite:
            shutil.rmtree(out)
        try:
            tmp.rename(out)
        except OSError:
            if not (out / CONFIG_FILE).is_file():  # not another process that finished the same import first
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


@dataclass
class HFParts:
    """The HF tensors by part, renamed within the part (see ``HF_PARTS``).

    Attributes:
        tensors: ``vision`` (keys relative to the vision model), ``projector`` (``linear_1.weight``, ...) and ``lm``
            (causal-LM keys: ``model.*``, ``lm_head.*``).
        layout: ``(part, prefix in the part) -> HF prefix`` as this directory names them (for error messages).
    """

    tensors: dict[str, dict[str, torch.Tensor]]
    layout: dict[tuple[str, str], str]

    def hf_name(self, part: str, key: str) -> str:
        """The name a part's tensor has (or would have) in the HF directory."""
        for (p, new), old in sorted(self.layout.items(), key=lambda kv: -len(kv[0][1])):
            if p == part and key.startswith(new):
                return old + key[len(new) :]
        return key


def split_tensors(tensors: dict[str, torch.Tensor], source: Path) -> HFParts:
    """Split HF tensors by part with the one mapping, ``HF_PARTS``.

    Raises:
        CheckpointError: a tensor no prefix claims (named).
    """
    parts: dict[str, dict[str, torch.Tensor]] = {"vision": {}, "projector": {}, "lm": {}}
    # what transformers' save_pretrained writes, unless the directory shows another layout
    layout = {(part, new): old for old, part, new in reversed(HF_PARTS) if not old.startswith("model.")}
    seen: dict[tuple[str, str], str] = {}
    unknown = []
    for key, value in tensors.items():
        hit = next(((old, part, new) for old, part, new in HF_PARTS if key.startswith(old)), None)
        if hit is None:
            if key not in DROPPED:
                unknown.append(key)
            continue
        old, part, new = hit
        parts[part][new + key[len(old) :]] = value
        seen.setdefault((part, new), old)
    if unknown:
        raise CheckpointError(f"{source}: unexpected tensors {sorted(unknown)} (not part of LLaVA-NeXT-Video)")
    return HFParts(parts, {**layout, **seen})


def llava_config(hf_cfg: Any, source: Path, tokenizer: Any = None) -> LlavaConfig:
    """The :class:`LlavaConfig` equivalent to an HF ``LlavaNextVideoConfig`` (see the module docstring).

    Args:
        hf_cfg: the directory's ``LlavaNextVideoConfig``.
        source: the directory (its processor settings and chat template are read).
        tokenizer: its tokenizer (default: loaded from ``source``).
    """
    where = source / "config.json"
    vision = hf_cfg.vision_config
    layer = hf_cfg.vision_feature_layer
    video = _video_processor(source)
    num_frames = int(video.get("num_frames") or 8)
    vision_cfg = hf_vision_config(vision, layout="frame", num_tubelets=num_frames)
    # transformers' video pooler reads a square patch grid: "default" drops one token, "full" none
    strategy = hf_cfg.vision_feature_select_strategy
    prefix = int(vision_cfg.class_token) + vision_cfg.num_reg_tokens
    if {"default": 1, "full": 0}.get(strategy) != prefix:
        raise CheckpointError(
            f"{where}: vision_feature_select_strategy {strategy!r} with a {vision.model_type} tower of {prefix} class "
            f"token(s) leaves no square patch grid for the video pooler ('default' drops 1 token, 'full' none)"
        )
    mode = {"average": "avg", "max": "max"}.get(hf_cfg.spatial_pool_mode)
    if mode is None:
        raise CheckpointError(
            f"{where}: spatial_pool_mode {hf_cfg.spatial_pool_mode!r} is not supported (average, max)"
        )
    size = vision.image_size if isinstance(vision.image_size, int) else vision.image_size[0]
    grid, stride = size // vision.patch_size, int(hf_cfg.spatial_pool_stride)
    if grid % stride:
        raise CheckpointError(f"{where}: spatial_pool_stride {stride} does not divide the {grid}x{grid} patch grid")
    if not hf_cfg.multimodal_projector_bias:
        raise CheckpointError(
            f"{where}: multimodal_projector_bias false is not supported (the mlp connector has biases)"
        )
    act = _ACTS.get(hf_cfg.projector_hidden_act)
    if act is None:
        raise CheckpointError(
            f"{where}: projector_hidden_act {hf_cfg.projector_hidden_act!r} is not one of {list(_ACTS)}"
        )
    tower = TowerConfig(
        name="native",
        vision=vision_cfg,
        layers=[int(layer)] if isinstance(layer, int) else [int(i) for i in layer],
    )
    front_end = FrontEndConfig(
        tower=tower,
        pooler=PoolerConfig("spatial2d", {"size": grid // stride, "mode": mode, "num_prefix_tokens": prefix}),
        connector=ConnectorConfig(name="mlp", depth=2, act=act),
        freeze_tower=True,
        num_frames=num_frames,
        image_size=size,
        normalize=_normalize(video, vision, source),
    )
    return LlavaConfig(
        front_end=front_end,
        lm=LanguageModelConfig(source="lm"),
        chat_template=_chat_template(source, tokenizer or _tokenizer(source)),
        max_length=int(getattr(hf_cfg.text_config, "max_position_embeddings", 4096) or 4096),
        prompt_tokens="whole",
        decode=DecodeConfig(strategy="greedy", max_new_tokens=32),
    )


# -- parts ------------------------------------------------------------------------------------------------------
def _front_end(cfg: FrontEndConfig, hf_cfg: Any, parts: HFParts, source: Path) -> VideoFrontEnd:
    """The front-end with the converted tower and the projector loaded strictly."""
    front_end = VideoFrontEnd(cfg, out_dim=int(hf_cfg.text_config.hidden_size))
    name = f"{source} (tensors under {parts.hf_name('vision', '')!r})"
    converted = convert_hf_vision(parts.tensors["vision"], hf_cfg.vision_config, name)
    load_converted(front_end.base_tower, converted, name)
    projector, own = parts.tensors["projector"], front_end.connector.state_dict()
    missing = sorted(parts.hf_name("projector", k) for k in own.keys() - projector.keys())
    unexpected = sorted(parts.hf_name("projector", k) for k in projector.keys() - own.keys())
    shapes = [
        parts.hf_name("projector", k) for k in own.keys() & projector.keys() if own[k].shape != projector[k].shape
    ]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{source}: projector tensors do not match; missing {missing}, unexpected {unexpected}, mis-shaped {shapes}"
        )
    front_end.connector.load_state_dict(projector)
    return front_end


def _write_lm(parts: HFParts, hf_cfg: Any, source: Path, out: Path) -> None:
    """Write the language model as a causal-LM directory, after checking its tensors against the architecture."""
    from transformers import AutoModelForCausalLM, GenerationConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    tensors, hf_name = parts.tensors["lm"], parts.hf_name
    text_cfg = hf_cfg.text_config
    names = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(text_cfg.model_type)
    if not names:
        raise CheckpointError(
            f"{source / 'config.json'}: text_config model_type {text_cfg.model_type!r} is not a causal LM"
        )
    text_cfg.architectures = [names if isinstance(names, str) else names[0]]
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in AutoModelForCausalLM.from_config(text_cfg).state_dict().items()}
    tied = bool(getattr(text_cfg, "tie_word_embeddings", False) or getattr(hf_cfg, "tie_word_embeddings", False))
    text_cfg.tie_word_embeddings = tied  # the LM alone ties as the whole model did
    required = shapes.keys() - ({"lm_head.weight"} if tied else set())
    missing = sorted(hf_name("lm", k) for k in required - tensors.keys())
    unexpected = sorted(hf_name("lm", k) for k in tensors.keys() - shapes.keys())
    wrong = [hf_name("lm", k) for k in tensors.keys() & shapes.keys() if tensors[k].shape != shapes[k]]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{source}: language-model tensors do not match {text_cfg.architectures[0]}; missing {missing}, "
            f"unexpected {unexpected}, mis-shaped {wrong}"
        )
    out.mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"), metadata={"format": "pt"}
    )
    text_cfg.save_pretrained(out)
    if (source / "generation_config.json").is_file():
        GenerationConfig.from_pretrained(source, local_files_only=True).save_pretrained(out)


# -- reading the directory --------------------------------------------------------------------------------------
def _hf_config(source: Path) -> Any:
    config = source / "config.json"
    if not config.is_file():
        raise CheckpointError(f"{source}: no config.json (not an HF model directory)")
    raw = json.loads(config.read_text())
    if raw.get("model_type") != MODEL_TYPE:
        raise CheckpointError(f"{config}: model_type {raw.get('model_type')!r} is not {MODEL_TYPE!r}")
    if "auto_map" in raw:
        raise CheckpointError(f"{config}: auto_map needs custom code (trust_remote_code), which vidvlm never runs")
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(source, trust_remote_code=False, local_files_only=True)


def _read_tensors(source: Path) -> dict[str, torch.Tensor]:
    index = source / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (source / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise CheckpointError(f"{source}: no model.safetensors (pickled .bin checkpoints are not read for safety)")
    out: dict[str, torch.Tensor] = {}
    for name in files:
        with safe_open(str(source / name), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                out[key] = f.get_tensor(key)
    return out


def _tokenizer(source: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=False, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{source}: transformers cannot build its tokenizer ({' '.join(str(e).split())})") from e


def _processor_config(source: Path) -> dict[str, Any]:
    path = source / "processor_config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _video_processor(source: Path) -> dict[str, Any]:
    """The video processor's settings (inside ``processor_config.json``, or its own file)."""
    for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
        path = source / name
        if path.is_file():
            data = json.loads(path.read_text())
            if "video_processor_type" in data or name.startswith("video"):
                return data
    return dict(_processor_config(source).get("video_processor") or {})


def _normalize(video: dict[str, Any], vision: Any, source: Path) -> str:
    """The normalisation preset equal to the video processor's mean and std (else the tower family's)."""
    if "image_mean" not in video:
        return "siglip" if vision.model_type.startswith("siglip") else "clip"
    given = [float(x) for x in (*video["image_mean"], *video.get("image_std", ()))]
    for name, (mean, std) in NORMALIZE_PRESETS.items():
        if len(given) == 6 and all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip((*mean, *std), given, strict=True)):
            return name
    raise CheckpointError(
        f"{source}: the video processor's image_mean + image_std {given} match no normalisation preset "
        f"{sorted(NORMALIZE_PRESETS)}"
    )


def _chat_template(source: Path, tokenizer: Any) -> str | None:
    """The processor's chat template, wrapped for string turns (``STRING_TURNS``) when it reads typed contents; None
    when the directory has none (the tokenizer's own is used)."""
    if (source / "chat_template.jinja").is_file():
        template = (source / "chat_template.jinja").read_text()
    elif (source / "chat_template.json").is_file():
        template = json.loads((source / "chat_template.json").read_text()).get("chat_template")
    else:
        template = _processor_config(source).get("chat_template")
    if not template:
        return None

    def render(content: Any, chat_template: str) -> str:
        turn = [{"role": "user", "content": content}]
        return tokenizer.apply_chat_template(
            turn, chat_template=chat_template, tokenize=False, add_generation_prompt=True
        )

    typed = render([{"type": "video"}, {"type": "text", "text": "q"}], template)
    if "<video>" not in typed:
        return template  # a template of string contents, used as it is
    wrapped = STRING_TURNS + template
    if render("<video>\nq", wrapped) != typed:
        raise CheckpointError(
            f"{source}: the processor's chat template does not render a string turn '<video>\\nq' as the typed one "
            f"({typed!r}), so vidvlm's conversations cannot use it"
        )
    return wrapped


__all__ = ["import_llava_next_video", "load_hf", "llava_config", "split_tensors", "HFParts", "HF_PARTS"]
