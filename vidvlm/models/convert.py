"""Strict converters from HF CLIP / SigLIP vision towers and timm ViTs to :class:`~vidvlm.models.vision.VideoViT`.

Each converter reads the source architecture from its config (HF) or model instance (timm), builds a
:class:`VisionConfig`, and renames the state dict. Loading is strict both ways: every source tensor must be used and
every image parameter of the target filled, with matching shapes, or a :class:`CheckpointError` lists the keys.
The only parameters a converter never fills are the video ones (``pos_embed.temporal``, ``temporal_attn.*``,
``temporal_blocks.*``), which keep their zero initialisation so that the video model starts as the image model.
Deliberately dropped source tensors are named here: HF ``position_ids`` buffers and timm classifier heads (``head``,
DeiT's ``head_dist``; the tower returns pre-logits features).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from vidvlm.errors import CheckpointError
from vidvlm.layers.embeddings import inflate_patch_weight
from vidvlm.models.vision import VideoViT, VisionConfig

VIDEO_ONLY_PREFIXES = ("pos_embed.temporal", "temporal_attn.", "temporal_blocks.", "keyframe_time")

_HF_ACTS = {"gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}


class _Source:
    """A source state dict that records which keys were read, so that unused ones can be reported."""

    def __init__(self, tensors: dict[str, torch.Tensor], name: str) -> None:
        self.tensors = tensors
        self.name = name
        self.used: set[str] = set()
        self.missing: list[str] = []

    def has(self, key: str) -> bool:
        return key in self.tensors

    def take(self, key: str) -> torch.Tensor:
        if key not in self.tensors:
            self.missing.append(key)
            return torch.empty(0)
        self.used.add(key)
        return self.tensors[key]

    def check(self, ignore: Callable[[str], bool] = lambda k: False) -> None:
        unused = sorted(k for k in self.tensors if k not in self.used and not ignore(k))
        if self.missing or unused:
            raise CheckpointError(
                f"{self.name}: state dict does not match the architecture; "
                f"missing source keys {self.missing}, unused source keys {unused}"
            )


def hf_vision_config(hf_cfg: object, **video: object) -> VisionConfig:
    """Build a :class:`VisionConfig` from an HF ``CLIPVisionConfig`` or ``SiglipVisionConfig``.

    Args:
        hf_cfg: the HF vision config (its ``model_type`` picks CLIP or SigLIP semantics).
        **video: video fields of :class:`VisionConfig` (``layout``, ``num_tubelets``, ``tubelet_size``, ...).
    """
    kind = _hf_kind(hf_cfg)
    act = _HF_ACTS.get(hf_cfg.hidden_act)
    if act is None:
        raise CheckpointError(
            f"config.json: hidden_act {hf_cfg.hidden_act!r} is not supported (known: {list(_HF_ACTS)})"
        )
    size = hf_cfg.image_size
    common = dict(
        image_size=size if isinstance(size, int) else tuple(size),
        patch_size=hf_cfg.patch_size,
        in_chans=hf_cfg.num_channels,
        width=hf_cfg.hidden_size,
        depth=hf_cfg.num_hidden_layers,
        num_heads=hf_cfg.num_attention_heads,
        mlp_dim=hf_cfg.intermediate_size,
        act=act,
        norm_eps=hf_cfg.layer_norm_eps,
    )
    if kind == "clip":
        # HF CLIP: last_hidden_state is the raw encoder output; pooler_output = post_layernorm(class token).
        arch = dict(patch_bias=False, class_token=True, pre_norm=True, final_norm=False, pool="token", fc_norm=True)
    else:
        # SigLIP: no class token; post_layernorm on all tokens; attention-pooling head with a probe.
        use_head = getattr(hf_cfg, "vision_use_head", True)
        arch = dict(class_token=False, pos_embed_prefix=False, final_norm=True, pool="map" if use_head else "avg")
    return VisionConfig(**common, **arch, **video)


def _hf_kind(hf_cfg: object) -> str:
    model_type = getattr(hf_cfg, "model_type", "")
    if model_type.startswith("clip"):
        return "clip"
    if model_type.startswith("siglip") and not model_type.startswith("siglip2"):
        return "siglip"
    raise CheckpointError(
        f"config.json: model_type {model_type!r} does not convert (CLIP and SigLIP vision models do; SigLIP 2's "
        "NaFlex patches do not); run it per frame with FrameWiseTower.from_hf"
    )


def convert_hf_vision(tensors: dict[str, torch.Tensor], hf_cfg: object, source: str) -> dict[str, torch.Tensor]:
    """Rename an HF CLIP/SigLIP vision state dict (keys relative to the ``vision_model``) to :class:`VideoViT` names."""
    kind = _hf_kind(hf_cfg)
    src = _Source(tensors, source)

    out: dict[str, torch.Tensor] = {}
    out["patch_embed.proj.weight"] = src.take("embeddings.patch_embedding.weight")
    if kind == "siglip":
        out["patch_embed.proj.bias"] = src.take("embeddings.patch_embedding.bias")
    else:
        out["cls_token"] = src.take("embeddings.class_embedding").reshape(1, -1)
        out["norm_pre.weight"] = src.take("pre_layrnorm.weight")
        out["norm_pre.bias"] = src.take("pre_layrnorm.bias")
    out["pos_embed.spatial"] = src.take("embeddings.position_embedding.weight")
    for i in range(hf_cfg.num_hidden_layers):
        s, t = f"encoder.layers.{i}.", f"blocks.{i}."
        for name in ("weight", "bias"):
            out[t + f"attn.qkv.{name}"] = torch.cat([src.take(s + f"self_attn.{x}_proj.{name}") for x in "qkv"])
            for a, b in (("self_attn.out_proj", "attn.proj"), ("layer_norm1", "norm1"), ("layer_norm2", "norm2")):
                out[t + f"{b}.{name}"] = src.take(s + f"{a}.{name}")
            for fc in ("fc1", "fc2"):
                out[t + f"mlp.{fc}.{name}"] = src.take(s + f"mlp.{fc}.{name}")
    post = "fc_norm" if kind == "clip" else "norm"
    out[f"{post}.weight"] = src.take("post_layernorm.weight")
    out[f"{post}.bias"] = src.take("post_layernorm.bias")
    if kind == "siglip" and getattr(hf_cfg, "vision_use_head", True):
        h, d = "head.", hf_cfg.hidden_size
        out["attn_pool.probe"] = src.take(h + "probe")
        w, bias = src.take(h + "attention.in_proj_weight"), src.take(h + "attention.in_proj_bias")
        out["attn_pool.attn.q.weight"], out["attn_pool.attn.kv.weight"] = w[:d], w[d:]
        out["attn_pool.attn.q.bias"], out["attn_pool.attn.kv.bias"] = bias[:d], bias[d:]
        for a, b in (
            ("attention.out_proj", "attn.proj"),
            ("layernorm", "norm"),
            ("mlp.fc1", "mlp.fc1"),
            ("mlp.fc2", "mlp.fc2"),
        ):
            for name in ("weight", "bias"):
                out[f"attn_pool.{b}.{name}"] = src.take(f"{h}{a}.{name}")
    src.check(ignore=lambda k: k.endswith("position_ids"))
    return out


def timm_vision_config(model: torch.nn.Module, **video: object) -> VisionConfig:
    """Build a :class:`VisionConfig` from a timm ``VisionTransformer`` instance (reading its modules, not its name).

    Raises:
        CheckpointError: for timm features the native model lacks (qk-norm, SwiGLU MLPs, no position table, ...).
    """
    from timm.layers import Attention as TimmAttention
    from timm.layers import LayerScale as TimmLayerScale
    from timm.layers import Mlp as TimmMlp
    from timm.models.vision_transformer import Block as TimmBlock
    from timm.models.vision_transformer import VisionTransformer

    name = getattr(model, "default_cfg", {}).get("architecture", type(model).__name__)
    if not isinstance(model, VisionTransformer):
        raise CheckpointError(f"timm:{name}: only VisionTransformer models convert; use FrameWiseTower for others")
    blk = model.blocks[0]
    if type(blk) is not TimmBlock or type(blk.attn) is not TimmAttention:
        raise CheckpointError(
            f"timm:{name}: blocks of type {type(blk).__name__} with {type(blk.attn).__name__} do not convert "
            "(only the pre-norm Block with Attention does); use FrameWiseTower"
        )
    unsupported = []
    qk_norm = not isinstance(blk.attn.q_norm, torch.nn.Identity)
    if qk_norm and not (isinstance(blk.attn.q_norm, torch.nn.LayerNorm) and blk.attn.q_norm.eps == blk.norm1.eps):
        unsupported.append(f"qk_norm with {blk.attn.q_norm}")
    if not isinstance(getattr(blk.attn, "norm", torch.nn.Identity()), torch.nn.Identity):
        unsupported.append("attention scale_norm")
    if type(blk.mlp) is not TimmMlp or not isinstance(getattr(blk.mlp, "norm", torch.nn.Identity()), torch.nn.Identity):
        unsupported.append(f"MLP {type(blk.mlp).__name__}")
    if model.pos_embed is None:
        unsupported.append("no position embedding")
    distilled = getattr(model, "dist_token", None) is not None  # DeiT: its forward_head averages cls and dist
    if distilled and (model.reg_token is not None or not isinstance(model.fc_norm, torch.nn.Identity)):
        unsupported.append("distillation token with register tokens or fc_norm")
    if model.global_pool not in ("token", "avg", "max", "avgmax", "map"):
        unsupported.append(f"global_pool={model.global_pool!r}")
    if model.attn_pool is not None and (model.attn_pool.latent_len != 1 or model.attn_pool.pos_embed is not None):
        unsupported.append("attention pool with several latents or a position table")
    if getattr(model, "dynamic_img_pad", False):
        unsupported.append("dynamic_img_pad")
    if unsupported:
        raise CheckpointError(f"timm:{name}: unsupported features {unsupported}")
    act = blk.mlp.act
    if isinstance(act, torch.nn.GELU):
        act_name = "gelu_tanh" if act.approximate == "tanh" else "gelu"
    elif type(act).__name__ == "QuickGELU":
        act_name = "quick_gelu"
    else:
        raise CheckpointError(f"timm:{name}: unsupported MLP activation {type(act).__name__}")
    pe = model.patch_embed
    if pe.patch_size[0] != pe.patch_size[1]:
        raise CheckpointError(f"timm:{name}: non-square patches {pe.patch_size} are not supported")
    ls = blk.ls1.gamma.detach().flatten()[0].item() if isinstance(blk.ls1, TimmLayerScale) else None
    return VisionConfig(
        image_size=tuple(pe.img_size),
        patch_size=pe.patch_size[0],
        in_chans=pe.proj.in_channels,
        width=model.embed_dim,
        depth=len(model.blocks),
        num_heads=blk.attn.num_heads,
        mlp_dim=blk.mlp.fc1.out_features,
        qkv_bias=blk.attn.qkv.bias is not None,
        qk_norm=qk_norm,
        patch_bias=pe.proj.bias is not None,
        act=act_name,
        norm_eps=blk.norm1.eps,
        layer_scale=ls,
        class_token=model.cls_token is not None,
        num_reg_tokens=model.reg_token.shape[1] if model.reg_token is not None else int(distilled),
        pos_embed_prefix=not model.no_embed_class,
        pos_resize_antialias=True,  # timm resamples the table with antialiased bicubic
        pre_norm=not isinstance(model.norm_pre, torch.nn.Identity),
        final_norm=not isinstance(model.norm, torch.nn.Identity),
        pool="cls_dist" if distilled else model.global_pool,
        fc_norm=not isinstance(model.fc_norm, torch.nn.Identity),
        pool_mlp_dim=model.attn_pool.mlp.fc1.out_features if model.attn_pool is not None else None,
        **video,
    )


def convert_timm_vit(tensors: dict[str, torch.Tensor], cfg: VisionConfig, source: str) -> dict[str, torch.Tensor]:
    """Rename a timm ``VisionTransformer`` state dict to :class:`VideoViT` names (the classifier heads are dropped;
    a DeiT distillation token becomes the one register token)."""
    src = _Source(tensors, source)
    out: dict[str, torch.Tensor] = {}
    names = ["patch_embed.proj.weight", "patch_embed.proj.bias"] if cfg.patch_bias else ["patch_embed.proj.weight"]
    for prefix in ("norm_pre", "norm", "fc_norm"):
        if src.has(f"{prefix}.weight"):
            names += [f"{prefix}.weight", f"{prefix}.bias"]
    if cfg.class_token:
        out["cls_token"] = src.take("cls_token").reshape(1, -1)
    if cfg.num_reg_tokens:
        key = "dist_token" if cfg.pool == "cls_dist" else "reg_token"
        out["reg_token"] = src.take(key).reshape(cfg.num_reg_tokens, -1)
    out["pos_embed.spatial"] = src.take("pos_embed").reshape(-1, cfg.width)
    for i in range(cfg.depth):
        b = f"blocks.{i}."
        names += [
            b + k for k in ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.proj.weight", "attn.proj.bias")
        ]
        names += [b + k for k in ("norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight")]
        names += [b + "mlp.fc2.bias"] + ([b + "attn.qkv.bias"] if cfg.qkv_bias else [])
        names += [b + "ls1.gamma", b + "ls2.gamma"] if cfg.layer_scale is not None else []
        names += [b + f"attn.{n}.{p}" for n in ("q_norm", "k_norm") for p in ("weight", "bias")] if cfg.qk_norm else []
    for k in names:
        out[k] = src.take(k)
    if cfg.pool == "map":
        out["attn_pool.probe"] = src.take("attn_pool.latent")
        for sub in ("q", "kv", "proj", "norm", "mlp.fc1", "mlp.fc2"):
            dst = sub if sub.startswith(("norm", "mlp")) else f"attn.{sub}"
            for name in ("weight", "bias"):
                out[f"attn_pool.{dst}.{name}"] = src.take(f"attn_pool.{sub}.{name}")
    src.check(ignore=lambda k: k.startswith(("head.", "head_dist.")))
    return out


def load_converted(model: VideoViT, tensors: dict[str, torch.Tensor], source: str) -> VideoViT:
    """Copy converted image weights into ``model`` strictly, inflating the patch kernel for tubelets.

    Raises:
        CheckpointError: naming missing, unexpected or mis-shaped keys.
    """
    tensors = dict(tensors)
    cfg = model.cfg
    if cfg.keyframe_stream:  # the keyframe's 2D patches are the image model's patches
        for name in ("weight", "bias"):
            if f"patch_embed.proj.{name}" in tensors:
                tensors[f"keyframe_embed.proj.{name}"] = tensors[f"patch_embed.proj.{name}"]
    if cfg.tubelet_size > 1 and "patch_embed.proj.weight" in tensors:
        w = tensors["patch_embed.proj.weight"]
        tensors["patch_embed.proj.weight"] = inflate_patch_weight(w, cfg.tubelet_size, cfg.tubelet_init)
    own = model.state_dict()
    expected = {k for k in own if not k.startswith(VIDEO_ONLY_PREFIXES)}
    missing = sorted(expected - tensors.keys())
    unexpected = sorted(tensors.keys() - expected)
    shapes = [
        f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in tensors.items()
        if k in own and v.shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{source}: converted weights do not fit the vision tower; missing {missing}, unexpected {unexpected}, "
            f"shape mismatches {shapes}"
        )
    model.load_state_dict(tensors, strict=False)
    return model
