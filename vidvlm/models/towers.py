"""Pretrained vision towers for video: converted HF / timm ViTs, a frame-wise adapter, and a two-tower ensemble.

``load_vision_tower`` turns a local HF CLIP / SigLIP vision directory or a timm ViT weights file into a native
:class:`VideoViT` (strict conversion, any space-time layout). Towers that cannot be converted run unchanged per frame
through :class:`FrameWiseTower`. :class:`TowerEnsemble` concatenates two towers' features along D.
All three take ``[B, T, 3, H, W]`` (+ optional ``frame_mask [B, T]``) and return a
:class:`~vidvlm.models.vision.VisionOutput`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import einsum, rearrange, repeat
from torch import nn

from vidvlm.data.transforms import Resize
from vidvlm.devices import to_device
from vidvlm.errors import CheckpointError, ConfigError
from vidvlm.models.convert import (
    convert_hf_vision,
    convert_timm_vit,
    hf_vision_config,
    load_converted,
    timm_vision_config,
)
from vidvlm.models.hf_loading import NO_REMOTE_CODE
from vidvlm.models.vision import VIDEO_FIELDS, VideoViT, VisionOutput


def load_vision_tower(
    source: str | Path,
    layout: str = "frame",
    num_tubelets: int = 8,
    weights: str | Path | None = None,
    **kwargs: Any,
) -> VideoViT:
    """Load a pretrained image ViT as a video tower.

    Args:
        source: an HF directory (``config.json`` + ``model.safetensors``) of a CLIP / SigLIP vision model or of the
            full CLIP / SigLIP model (then only its ``vision_model.*`` tensors are read), or ``timm:<model_name>``.
        layout: ``frame``, ``divided``, ``joint`` or ``factorised``.
        num_tubelets: temporal position table length (output time steps: tubelets, or frames for 2D patches).
        weights: for ``timm:`` sources, a local ``.safetensors`` (preferred) or ``.pth`` file.
        **kwargs: other video fields of :class:`VisionConfig` (``VIDEO_FIELDS``: ``tubelet_size``,
            ``tubelet_init``, ``keyframe_stream``, ``temporal_depth``, ``grad_checkpointing``, ``attn_backend``) and,
            for timm, ``timm_kwargs`` (a dict passed to ``timm.create_model``; every other keyword argument, such as
            ``img_size``, ``patch_size``, ``depth`` or ``num_heads``, joins it). An HF source takes video fields only:
            its architecture is its ``config.json``. For timm, what the arguments leave out is inferred from the
            weights: image size (square), input channels, patch size, depth, width, MLP ratio, class/register/
            distillation tokens, qkv bias, qk-norm, pre-norm, final norm, layer scale, ``map`` pooling and
            ``fc_norm`` (taken to mean ``avg`` pooling). The number of heads, the pooling kind of a model without
            ``fc_norm`` and the activation cannot be read from tensors: they come from the model name's defaults
            unless given (pass the ``timm.create_model`` arguments the weights were made with).

    Returns:
        A :class:`VideoViT` whose ``last_hidden_state`` at ``T = 1`` is the source's token output (HF
        ``last_hidden_state``; timm ``forward_features``) and ``pooler_output`` its pooled output (HF
        ``pooler_output``; timm ``forward_head(pre_logits=True)``).
    """
    timm_kwargs = dict(kwargs.pop("timm_kwargs", None) or {})
    video = dict(layout=layout, num_tubelets=num_tubelets)
    video.update({k: kwargs.pop(k) for k in list(kwargs) if k in VIDEO_FIELDS})
    src = str(source)
    if src.startswith("timm:"):
        timm_kwargs.update(kwargs)  # architecture arguments, e.g. img_size=..., num_heads=...
        model, tensors, _ = _timm_model(src[5:], weights, timm_kwargs)
        cfg = timm_vision_config(model, **video)
        converted = convert_timm_vit(tensors, cfg, f"{weights}")
    else:
        if weights is not None:
            raise CheckpointError(f"{src}: weights= is only for timm sources; HF directories hold their weights")
        if kwargs or timm_kwargs:
            raise CheckpointError(
                f"{src}: {sorted({**kwargs, **timm_kwargs})} are not video fields {list(VIDEO_FIELDS)}; "
                "an HF tower's architecture comes from its config.json"
            )
        hf_cfg = _hf_vision_config(Path(src))
        cfg = hf_vision_config(hf_cfg, **video)
        converted = convert_hf_vision(_read_hf_tensors(Path(src)), hf_cfg, src)
    return load_converted(VideoViT(cfg), converted, src).eval()


def _hf_vision_config(path: Path) -> Any:
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: no config.json (expected an HF model directory or 'timm:<name>')")
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(path, trust_remote_code=False)
    return getattr(cfg, "vision_config", cfg)


def _read_hf_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read the vision tensors from ``model.safetensors`` or its sharded index, without the ``vision_model.`` prefix.

    A vision-only save holds only vision tensors (every one must then be used); a full dual-encoder save holds them
    under ``vision_model.``, and its other tensors (text tower, projections, logit scale) are not read.
    """
    from safetensors import safe_open

    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise CheckpointError(f"{path}: no model.safetensors (pickled .bin checkpoints are not read for safety)")
    out = {}
    for name in files:
        with safe_open(str(path / name), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                out[key] = f.get_tensor(key)
    prefix = "vision_model."
    if any(k.startswith(prefix) for k in out):
        out = {k[len(prefix) :]: v for k, v in out.items() if k.startswith(prefix)}
    return out


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a user-named weights file: safetensors, or a ``.pth`` through ``torch.load(weights_only=True)``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refused or corrupt file
        raise CheckpointError(f"{path}: cannot read as a tensors-only checkpoint ({err})") from err
    for key in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{path}: expected a mapping of tensor names to tensors")
    return data


def _timm_kwargs_from_weights(t: dict[str, torch.Tensor], img_size: Any = None) -> dict[str, Any]:
    """Infer ``timm.create_model`` arguments of a VisionTransformer from its tensors."""
    kw: dict[str, Any] = {}
    if "patch_embed.proj.weight" not in t or "pos_embed" not in t:
        return kw
    patch = t["patch_embed.proj.weight"].shape[-1]
    kw["patch_size"] = patch
    kw["embed_dim"] = t["patch_embed.proj.weight"].shape[0]
    kw["in_chans"] = t["patch_embed.proj.weight"].shape[1]
    kw["depth"] = len({k.split(".")[1] for k in t if k.startswith("blocks.")})
    if "blocks.0.mlp.fc1.weight" in t:
        kw["mlp_ratio"] = t["blocks.0.mlp.fc1.weight"].shape[0] / kw["embed_dim"]
    kw["qkv_bias"] = "blocks.0.attn.qkv.bias" in t
    kw["class_token"] = "cls_token" in t
    kw["reg_tokens"] = t["reg_token"].shape[1] if "reg_token" in t else 0
    n_prefix = int(kw["class_token"]) + kw["reg_tokens"] + int("dist_token" in t)
    n_pos = t["pos_embed"].shape[1]
    if img_size is not None:  # a given (possibly non-square) size fixes the patch count
        h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
        kw["no_embed_class"] = n_pos == (h // patch) * (w // patch)
    else:  # otherwise the grid is square: the class token has a row if the rest is a square number
        for no_embed_class, n in ((False, n_pos - n_prefix), (True, n_pos)):
            side = math.isqrt(n)
            if side * side == n:
                kw["no_embed_class"], kw["img_size"] = no_embed_class, side * patch
                break
    kw["num_classes"] = t["head.weight"].shape[0] if "head.weight" in t else 0
    kw["pre_norm"] = "norm_pre.weight" in t
    if "blocks.0.attn.q_norm.weight" in t:
        kw["qk_norm"] = True
    if "norm.weight" not in t and "fc_norm.weight" not in t:
        kw["final_norm"] = False
    if "blocks.0.ls1.gamma" in t:
        kw["init_values"] = 1.0  # any value: the gammas are loaded
    if "attn_pool.latent" in t:
        kw["global_pool"] = "map"
    elif "fc_norm.weight" in t:
        kw["global_pool"], kw["fc_norm"] = "avg", True
    return kw


def _timm_model(
    name: str, weights: str | Path | None, kwargs: dict[str, Any]
) -> tuple[nn.Module, dict, dict[str, Any]]:
    """Build ``timm:<name>`` and load ``weights`` strictly.

    For a ``VisionTransformer`` the architecture arguments the caller did not give are read from the tensors (see
    :func:`load_vision_tower`); other models are built from ``kwargs`` alone. A checkpoint saved without its
    classifier (``num_classes=0``) or with another number of classes loads into a model whose classifier is reset
    to match, whatever the name's default.
    """
    from timm.models.vision_transformer import VisionTransformer

    if weights is None:
        raise CheckpointError(f"timm:{name}: pass weights=<local .safetensors or .pth file>; nothing is downloaded")
    tensors = read_weights_file(weights)
    kw = dict(kwargs)
    if isinstance(_build_timm(name, kwargs, probe=True), VisionTransformer):
        kw = {**_timm_kwargs_from_weights(tensors, kwargs.get("img_size")), **kwargs}
    model = _build_timm(name, kw)
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(classifier, nn.Module) and "num_classes" not in kwargs:
        prefix = next(n for n, m in model.named_modules() if m is classifier)
        weight = tensors.get(f"{prefix}.weight")
        if any(f"{prefix}.{k}" not in tensors for k in classifier.state_dict()):
            model.reset_classifier(0)
        elif weight is not None and weight.shape != classifier.state_dict()["weight"].shape:
            model.reset_classifier(weight.shape[0])
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{weights}: does not match timm:{name} ({err})") from err
    used = dict(kw)
    if isinstance(classifier, nn.Module):
        used["num_classes"] = int(model.num_classes)
    return model.eval(), tensors, used


def _build_timm(name: str, kwargs: dict[str, Any], probe: bool = False) -> nn.Module:
    """``timm.create_model(name, pretrained=False, **kwargs)``; a probe (to learn the class) is built without memory
    on the meta device when the model allows it."""
    import timm

    try:
        if probe:
            try:
                with torch.device("meta"):
                    return timm.create_model(name, pretrained=False, **kwargs)
            except Exception:  # some constructors compute on their tensors; build a real one below
                pass
        return timm.create_model(name, pretrained=False, **kwargs)
    except Exception as err:
        raise CheckpointError(f"timm:{name}: cannot build the model with {kwargs} ({err})") from err


class FrameWiseTower(nn.Module):
    """Run any HF vision model or timm model per frame (B·T folded into the batch); padded frames are skipped.

    Args:
        model: an HF vision model (called with ``pixel_values``, returning ``last_hidden_state`` and optionally
            ``pooler_output``) or a timm model (``forward_features`` + ``forward_head(pre_logits=True)``).
        num_prefix_tokens: class/register tokens at the start of the model's token output.
        arch: how to rebuild the model without its weights (``{"kind": "hf", "config": ..., "vision_model": bool}``
            or ``{"kind": "timm", "name": ..., "kwargs": ...}``); set by :meth:`from_hf` / :meth:`from_timm`.

    When the model gives no pooled output, ``pooler_output`` is the mean of its non-prefix tokens.
    """

    tubelet_size = 1

    def __init__(self, model: nn.Module, num_prefix_tokens: int | None = None, arch: dict | None = None) -> None:
        super().__init__()
        self.model = model
        self.arch = arch
        self.is_timm = hasattr(model, "forward_features") and hasattr(model, "forward_head")
        if num_prefix_tokens is None:
            num_prefix_tokens = getattr(model, "num_prefix_tokens", 0 if self.is_timm else 1)
        self.num_prefix_tokens = int(num_prefix_tokens)
        cfg = getattr(model, "config", None)
        self.width = int(getattr(model, "num_features", 0) or getattr(cfg, "hidden_size", 0))
        if self.is_timm:
            # a ViT built with img_size=... knows its size on its patch embedding; its pretrained_cfg keeps the default
            patch = getattr(model, "patch_embed", None)
            size = getattr(patch, "img_size", None) or model.pretrained_cfg.get("input_size", (3, 224, 224))[-2:]
            self.image_size = tuple(size)
        else:
            self.image_size = getattr(cfg, "image_size", None)

    @classmethod
    def from_hf(cls, path: str | Path, num_prefix_tokens: int | None = None) -> FrameWiseTower:
        """Load an HF vision directory with ``AutoModel`` (a full dual-encoder yields its ``vision_model``)."""
        from transformers import AutoModel

        path = Path(path)
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path}: no config.json (expected an HF model directory)")
        model = AutoModel.from_pretrained(path, use_safetensors=True, **NO_REMOTE_CODE)
        vision = getattr(model, "vision_model", None)
        config = json.loads(model.config.to_json_string())  # JSON-safe, as the checkpoint's config stores it
        arch = {"kind": "hf", "config": config, "vision_model": vision is not None}
        return cls((vision if vision is not None else model).eval(), num_prefix_tokens, arch)

    @classmethod
    def from_timm(cls, name: str, weights: str | Path, **kwargs: Any) -> FrameWiseTower:
        """Build ``timm:<name>`` and load a local weights file into it strictly."""
        model, _, used = _timm_model(name, weights, kwargs)
        return cls(model, arch={"kind": "timm", "name": name, "kwargs": used})

    @classmethod
    def build(
        cls, source: str | None, weights: str | None, timm_kwargs: dict[str, Any], arch: dict | None = None
    ) -> FrameWiseTower:
        """From a source (``timm:<name>`` with ``weights``, or an HF directory), or, when ``arch`` is given, the
        architecture alone (its weights then come from a vidvlm checkpoint)."""
        if arch is None:
            if source is not None and source.startswith("timm:"):
                return cls.from_timm(source[5:], weights, **timm_kwargs)
            return cls.from_hf(source)
        if arch.get("kind") == "timm":
            return cls(_build_timm(arch["name"], arch["kwargs"]).eval(), arch=arch)
        if arch.get("kind") != "hf":
            raise CheckpointError(f"tower.arch: unknown kind {arch.get('kind')!r} (expected 'hf' or 'timm')")
        from transformers import AutoConfig, AutoModel

        model = AutoModel.from_config(AutoConfig.for_model(**arch["config"]))
        model = model.vision_model if arch.get("vision_model") else model
        return cls(model.eval(), arch=arch)

    def arch_config(self) -> dict[str, Any]:
        """What :meth:`build` needs to rebuild this tower without its source."""
        if self.arch is None:
            raise CheckpointError("FrameWiseTower: built from a bare module, so it cannot be saved as a config")
        return self.arch

    def forward(
        self, video: torch.Tensor, frame_mask: torch.Tensor | None = None, output_hidden_states: bool = False
    ) -> VisionOutput:
        """``video [B, T, C, H, W]`` -> tokens ``[B, T, N, D]`` and pooled ``[B, T, D]`` (padded frames zero)."""
        b, t = video.shape[:2]
        frames = rearrange(video, "b t c h w -> (b t) c h w")
        rows = None  # every frame real
        if frame_mask is not None:
            frame_mask = frame_mask.bool()
            # the real frames' rows, found where the mask lies (on the host: the device is not read)
            rows = to_device(rearrange(frame_mask, "b t -> (b t)").nonzero().squeeze(1), video.device)
            frames = frames.index_select(0, rows)  # only real frames: [F, C, H, W]
        hidden = None
        if self.is_timm:
            if output_hidden_states:
                raise ValueError("FrameWiseTower: output_hidden_states is not available for timm models")
            tokens = self.model.forward_features(frames)
            pooled = self.model.forward_head(tokens, pre_logits=True)
        else:
            out = self.model(pixel_values=frames, output_hidden_states=bool(output_hidden_states))
            tokens, pooled = out.last_hidden_state, getattr(out, "pooler_output", None)
            if pooled is None:
                pooled = tokens[:, self.num_prefix_tokens :].mean(1)
            if output_hidden_states:
                hidden = tuple(_unfold(h, b, t, rows) for h in out.hidden_states)
        return VisionOutput(
            _unfold(tokens, b, t, rows), _unfold(pooled, b, t, rows), hidden, *_step_masks(frame_mask, video.device)
        )


def _step_masks(frame_mask: torch.Tensor | None, device: torch.device) -> tuple[torch.Tensor | None, ...]:
    """A tower with one time step per frame: its ``frame_mask`` (with the tokens, on ``device``) and
    ``host_frame_mask`` (the mask itself when it came on the host, else None) for :class:`VisionOutput`."""
    if frame_mask is None:
        return None, None
    frame_mask = frame_mask.bool()
    return to_device(frame_mask, device), frame_mask if frame_mask.device.type == "cpu" else None


def _unfold(x: torch.Tensor, b: int, t: int, rows: torch.Tensor | None) -> torch.Tensor:
    """Per-real-frame rows ``x [F, ...]`` back to ``[B, T, ...]``: row ``i`` goes to flat frame ``rows[i]`` (long
    ``[F]``; None = every frame, in order), zeros at padded frames."""
    if rows is not None:
        x = x.new_zeros(b * t, *x.shape[1:]).index_copy(0, rows, x)
    return rearrange(x, "(b t) ... -> b t ...", b=b, t=t)


class TowerEnsemble(nn.Module):
    """Two (or more) towers whose features are concatenated (or added) along D.

    Token counts usually differ (patch sizes, class/register tokens), so the output tokens are rebuilt as one
    summary token (each tower's pooled vector, concatenated) followed by the patch tokens of every tower resampled
    bilinearly to the first tower's patch grid. ``pooler_output`` is the concatenation of the poolers (see
    :meth:`summary` for multi-level members).
    Each tower's patch grid is recovered from its patch-token count and the input aspect ratio.

    A member may read its own input (``inputs``): every ``stride``-th frame, resized to ``size`` on the short side
    (bicubic, antialiased; normalisation is affine per channel, so resizing normalised frames equals normalising
    resized ones), and, with ``per_frame``, each of those frames encoded alone as a one-frame clip (one time step
    per frame; a video tower sees a static tubelet). The first member's time steps are the common ones (see
    :meth:`align_steps`): a coarser member gives each of the first member's steps its step that covers the step's
    first input frame (with nesting strides and tubelets, ``k`` times fewer steps are each repeated ``k`` times: e.g.
    16 frames as 8 two-frame tubelets beside 8 frames as 2 four-frame tubelets, or 3 frames one by one beside the
    same 3 as 2 two-frame tubelets: steps 0, 0, 1); a finer member's steps are averaged per first-member step (e.g.
    8 frames one by one beside 2 four-frame tubelets: the mean of frames 0-3, then of 4-7), which keeps the token
    count of the first member.

    Args:
        towers: modules returning :class:`VisionOutput` with ``width`` and ``num_prefix_tokens`` attributes.
        combine: ``concat`` (width = the sum) or ``add`` (equal widths; width unchanged).
        inputs: per tower ``(size, stride)`` or ``(size, stride, per_frame)``: its input side (None: as given), frame
            stride and whether it encodes frames one by one; None = all as given.
    """

    def __init__(
        self,
        towers: list[nn.Module],
        combine: str = "concat",
        inputs: list[tuple[int | None, int] | tuple[int | None, int, bool]] | None = None,
    ) -> None:
        super().__init__()
        if len(towers) < 2:
            raise ValueError("TowerEnsemble needs at least two towers")
        if combine not in ("concat", "add"):
            raise ConfigError(f"tower.combine: {combine!r} is not 'concat' or 'add'")
        widths = [int(t.width) for t in towers]
        if combine == "add" and len(set(widths)) != 1:
            raise ConfigError(f"tower.combine: 'add' needs towers of equal width, got {widths} (use 'concat')")
        given = list(inputs) if inputs is not None else [(None, 1)] * len(towers)
        self.inputs = [(*spec, False) if len(spec) == 2 else tuple(spec) for spec in given]
        if len(self.inputs) != len(towers):
            raise ValueError(f"TowerEnsemble: {len(self.inputs)} inputs for {len(towers)} towers")
        self.towers = nn.ModuleList(towers)
        self.combine = combine
        self.width = sum(widths) if combine == "concat" else widths[0]
        self.num_prefix_tokens = 1
        first_size = self.inputs[0][0]
        self.image_size = towers[0].image_size if first_size is None else first_size
        self.frames_per_step = [  # input frames per time step of each member
            (1 if per_frame else tower.tubelet_size) * stride
            for tower, (_, stride, per_frame) in zip(towers, self.inputs, strict=True)
        ]
        self.tubelet_size = self.frames_per_step[0]

    @staticmethod
    def member_input(
        video: torch.Tensor, frame_mask: torch.Tensor | None, size: int | None, stride: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``video [B, T, C, H, W]`` -> ``[B, ceil(T / stride), C, h, w]`` with the short side ``size`` (or as given),
        and the frame mask of the frames kept."""
        if stride > 1:
            video = video[:, ::stride]
            frame_mask = None if frame_mask is None else frame_mask[:, ::stride]
        if size is not None and min(video.shape[-2:]) != size:
            flat = Resize(size)(rearrange(video, "b t c h w -> (b t) c h w"))  # the transforms' own resize
            video = rearrange(flat, "(b t) c h w -> b t c h w", b=video.shape[0])
        return video, frame_mask

    def align_steps(
        self, xs: list[torch.Tensor], steps: int, frames_per_step: int, step_mask: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """A member's features per time step, each ``x [B, T_m, ...]`` (steps of ``frames_per_step`` input frames),
        on the first member's ``steps`` time steps -> each ``[B, steps, ...]``.

        A member as coarse in time as the first one or coarser gives each first-member step its step that covers
        the step's first input frame (the last step for frames past its end). A finer member's steps are averaged
        into the first-member step that holds their first input frame, over its real steps only (``step_mask
        [B, T_m]``, None = all real); a step with no real one is zero. At T = 1 either way is the identity."""
        x = xs[0]
        first, member_steps = self.frames_per_step[0], x.shape[1]
        if frames_per_step >= first:
            step = to_device((torch.arange(steps) * first // frames_per_step).clamp(max=member_steps - 1), x.device)
            return [feat[:, step] for feat in xs]
        group = (torch.arange(member_steps) * frames_per_step // first).clamp(max=steps - 1)
        weight = repeat(to_device(F.one_hot(group, steps), x.device, x.dtype), "m s -> b s m", b=x.shape[0])
        if step_mask is not None:
            weight = weight * to_device(step_mask, x.device, x.dtype)[:, None, :]
        weight = weight / weight.sum(dim=-1, keepdim=True).clamp(min=1)
        return [einsum(weight, feat, "b s m, b m ... -> b s ...") for feat in xs]

    @staticmethod
    def encode_frames(
        tower: nn.Module, video: torch.Tensor, frame_mask: torch.Tensor | None, output_hidden_states: Any = False
    ) -> VisionOutput:
        """``tower`` on each frame of ``video [B, T, C, H, W]`` alone (a clip of one frame) -> tokens
        ``[B, T, N', D]``, pooled ``[B, T, D]`` (and the tower's hidden states so, when asked): one time step per
        frame. Padded frames are encoded like real ones (every one-frame clip is whole), then their tokens and
        pooled vectors are zeroed as a video tower zeroes padded steps; ``frame_mask [B, T]`` becomes the steps'
        mask."""
        b = video.shape[0]
        out = tower(rearrange(video, "b t c h w -> (b t) 1 c h w"), output_hidden_states=output_hidden_states)
        if out.last_hidden_state.shape[1] != 1:
            raise ConfigError(
                f"tower.per_frame: the member gives {out.last_hidden_state.shape[1]} time steps for a one-frame clip "
                "(a keyframe stream?); per_frame needs one"
            )
        tokens = rearrange(out.last_hidden_state, "(b t) 1 n d -> b t n d", b=b)
        pooled = rearrange(out.pooler_output, "(b t) 1 d -> b t d", b=b)
        if frame_mask is not None:
            real = to_device(frame_mask, tokens.device, tokens.dtype)  # the mask may lie on the host
            tokens, pooled = tokens * real[:, :, None, None], pooled * real[:, :, None]
        hidden = None
        if out.hidden_states is not None:
            hidden = tuple(rearrange(h, "(b t) 1 n d -> b t n d", b=b) for h in out.hidden_states)
        return VisionOutput(tokens, pooled, hidden, *_step_masks(frame_mask, tokens.device))

    @staticmethod
    def summary(tower: nn.Module, out: VisionOutput) -> torch.Tensor:
        """A member's vector per time step ``[B, T', D]``, as wide as its tokens: its ``pooler_output``; for a
        multi-level member (tokens wider than the pooled vector) its first prefix token (the chosen layers' class
        tokens, concatenated), or the mean of its patch tokens when it has no prefix token."""
        tokens = out.last_hidden_state
        if out.pooler_output.shape[-1] == tokens.shape[-1]:
            return out.pooler_output
        if tower.num_prefix_tokens:
            return tokens[:, :, 0]
        return tokens.mean(dim=2)

    def forward(
        self, video: torch.Tensor, frame_mask: torch.Tensor | None = None, output_hidden_states: bool = False
    ) -> VisionOutput:
        """``video [B, T, C, H, W]`` -> tokens ``[B, T', 1 + gh*gw, D]``, pooled ``[B, T', D]`` (``T'``, ``gh x gw``:
        the first member's)."""
        if output_hidden_states:
            raise ConfigError("TowerEnsemble: hidden states differ per tower; give each member its own `layers`")
        outs, shapes = [], []
        for tower, (size, stride, per_frame) in zip(self.towers, self.inputs, strict=True):
            clip, mask = self.member_input(video, frame_mask, size, stride)
            outs.append(self.encode_frames(tower, clip, mask) if per_frame else tower(clip, mask))
            shapes.append(clip.shape[-2:])
        steps = outs[0].last_hidden_state.shape[1]
        patches, pooled, grid = [], [], None
        for tower, out, (h, w), frames_per_step in zip(self.towers, outs, shapes, self.frames_per_step, strict=True):
            tok = out.last_hidden_state[:, :, tower.num_prefix_tokens :]
            n = tok.shape[2]
            gh = max(1, round(math.sqrt(n * h / w)))
            if n % gh:
                raise ValueError(f"TowerEnsemble: cannot recover a patch grid from {n} tokens at {h}x{w}")
            b = tok.shape[0]
            img = rearrange(tok, "b t (gh gw) d -> (b t) d gh gw", gh=gh)
            grid = grid or (gh, n // gh)
            if (gh, n // gh) != grid:
                img = F.interpolate(img, size=grid, mode="bilinear", align_corners=False)
            tok = rearrange(img, "(b t) d gh gw -> b t (gh gw) d", b=b)
            vec = self.summary(tower, out)
            if frames_per_step != self.frames_per_step[0]:
                tok, vec = self.align_steps([tok, vec], steps, frames_per_step, out.frame_mask)
            patches.append(tok)
            pooled.append(vec)
        if self.combine == "concat":
            pooled_all = torch.cat(pooled, dim=-1)
            patch = torch.cat(patches, dim=-1)
        else:
            pooled_all = torch.stack(pooled).sum(0)
            patch = torch.stack(patches).sum(0)
        tokens = torch.cat([pooled_all[:, :, None], patch], dim=2)
        first = outs[0]  # the first member sets the time steps
        return VisionOutput(tokens, pooled_all, frame_mask=first.frame_mask, host_frame_mask=first.host_frame_mask)
