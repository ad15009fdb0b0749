"""Parity of converted HF CLIP / SigLIP vision towers and timm ViTs against the reference implementations."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vidvlm.errors import CheckpointError
from vidvlm.models.towers import load_vision_tower

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

ATOL = 1e-5
CLIP_CONFIGS = [
    dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8),
    dict(hidden_size=24, intermediate_size=40, num_hidden_layers=3, num_attention_heads=2, image_size=24, patch_size=6,
         hidden_act="gelu", layer_norm_eps=1e-6),
]  # fmt: skip
SIGLIP_CONFIGS = [
    dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=24, patch_size=4),
    dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8,
         vision_use_head=False, hidden_act="gelu", layer_norm_eps=1e-5),
]  # fmt: skip


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=ATOL)


def save_hf(model: torch.nn.Module, path: Path) -> Path:
    model.eval().save_pretrained(path)
    return path


@pytest.mark.parametrize("kw", CLIP_CONFIGS)
def test_clip_parity_t1_and_framewise(tmp_path: Path, kw: dict) -> None:
    torch.manual_seed(0)
    hf = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**kw)).eval()
    tower = load_vision_tower(save_hf(hf, tmp_path / "clip"), layout="frame", num_tubelets=4)
    s = kw["image_size"]
    video = torch.randn(2, 3, 3, s, s)
    with torch.no_grad():
        out = tower(video, output_hidden_states=True)
        for t in range(3):
            ref = hf(pixel_values=video[:, t], output_hidden_states=True)
            close(out.last_hidden_state[:, t], ref.last_hidden_state)
            close(out.pooler_output[:, t], ref.pooler_output)
            assert len(out.hidden_states) == len(ref.hidden_states)
            for mine, theirs in zip(out.hidden_states, ref.hidden_states, strict=True):
                close(mine[:, t], theirs)
        # a non-square input with interpolated position embeddings
        img = torch.randn(2, 1, 3, 2 * s, s - kw["patch_size"])
        ref = hf(pixel_values=img[:, 0], interpolate_pos_encoding=True)
        out = tower(img)
    close(out.last_hidden_state[:, 0], ref.last_hidden_state)
    close(out.pooler_output[:, 0], ref.pooler_output)


@pytest.mark.parametrize("layout", ["divided", "joint", "factorised"])
def test_clip_full_model_dir_every_layout_at_t1(tmp_path: Path, layout: str) -> None:
    """A full CLIPModel directory: only its vision tensors are read; every layout equals HF at T = 1."""
    torch.manual_seed(0)
    vision = CLIP_CONFIGS[0]
    text = dict(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    cfg = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)
    hf = transformers.CLIPModel(cfg).eval()
    tower = load_vision_tower(save_hf(hf, tmp_path / "clip"), layout=layout, num_tubelets=4, tubelet_size=1)
    img = torch.randn(2, 1, 3, 32, 32)
    with torch.no_grad():
        ref = hf.vision_model(pixel_values=img[:, 0])
        out = tower(img)
    close(out.last_hidden_state[:, 0], ref.last_hidden_state)
    close(out.pooler_output[:, 0], ref.pooler_output)


@pytest.mark.parametrize("kw", SIGLIP_CONFIGS)
def test_siglip_parity(tmp_path: Path, kw: dict) -> None:
    torch.manual_seed(0)
    hf = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**kw)).eval()
    tower = load_vision_tower(save_hf(hf, tmp_path / "siglip"), layout="divided", num_tubelets=2)
    assert tower.num_prefix_tokens == 0
    s = kw["image_size"]
    img = torch.randn(2, 1, 3, s, s)
    wide = torch.randn(1, 1, 3, s, 2 * s)
    with torch.no_grad():
        ref, out = hf(pixel_values=img[:, 0]), tower(img)
        ref_wide = hf(pixel_values=wide[:, 0], interpolate_pos_encoding=True)
        out_wide = tower(wide)
    close(out.last_hidden_state[:, 0], ref.last_hidden_state)
    close(out_wide.last_hidden_state[:, 0], ref_wide.last_hidden_state)
    if kw.get("vision_use_head", True):
        close(out.pooler_output[:, 0], ref.pooler_output)
        close(out_wide.pooler_output[:, 0], ref_wide.pooler_output)
    else:  # HF has no pooled output then; the tower averages the tokens
        close(out.pooler_output[:, 0], ref.last_hidden_state.mean(1))


TIMM = "vit_tiny_patch16_224"
TIMM_CASES = [
    (TIMM, dict()),
    (TIMM, dict(global_pool="avg")),
    (TIMM, dict(global_pool="map", class_token=False, depth=1)),
    (TIMM, dict(reg_tokens=2, no_embed_class=True, init_values=0.1)),
    (TIMM, dict(pre_norm=True, global_pool="avg", fc_norm=False, act_layer="quick_gelu")),
    (TIMM, dict(img_size=(32, 48), qkv_bias=False)),
    (TIMM, dict(qk_norm=True, global_pool="max", final_norm=False)),
    (TIMM, dict(global_pool="avgmax", in_chans=1)),
    ("deit_tiny_distilled_patch16_224", dict()),
    ("vit_small_patch14_reg4_dinov2", dict(embed_dim=32, num_heads=2)),
    ("vit_base_patch16_siglip_224", dict(embed_dim=32, num_heads=4, depth=1)),
]


@pytest.mark.parametrize(("name", "kw"), TIMM_CASES)
def test_timm_parity(tmp_path: Path, name: str, kw: dict) -> None:
    torch.manual_seed(0)
    args = {**dict(img_size=32, patch_size=8, depth=2, num_classes=5), **kw}
    ref_model = timm.create_model(name, pretrained=False, **args).eval()
    path = tmp_path / "vit.safetensors"
    save_file(ref_model.state_dict(), path)
    # only what cannot be read from the tensors (heads, pooling kind, activation, non-square size) is passed
    hints = {k: v for k, v in args.items() if k in ("num_heads", "global_pool", "fc_norm", "act_layer", "img_size")}
    tower = load_vision_tower(f"timm:{name}", weights=path, layout="joint", timm_kwargs=hints)
    h, w = ref_model.patch_embed.img_size
    video = torch.randn(2, 2, ref_model.patch_embed.proj.in_channels, h, w)
    tower_frame = load_vision_tower(f"timm:{name}", weights=path, layout="frame", timm_kwargs=hints)
    with torch.no_grad():
        out, out_frames = tower(video[:, :1]), tower_frame(video)
        for t in range(2):
            feats = ref_model.forward_features(video[:, t])
            pooled = ref_model.forward_head(feats, pre_logits=True)
            close(out_frames.last_hidden_state[:, t], feats)
            close(out_frames.pooler_output[:, t], pooled)
            if t == 0:
                close(out.last_hidden_state[:, 0], feats)
                close(out.pooler_output[:, 0], pooled)


@pytest.mark.parametrize("kw", [dict(), dict(reg_tokens=2, no_embed_class=True)])
def test_timm_other_resolutions_resample_like_timm(tmp_path: Path, kw: dict) -> None:
    """At sizes other than the training one the position table is resampled as timm's ``dynamic_img_size`` does
    (antialiased bicubic), up and down, square or not."""
    torch.manual_seed(0)
    args = dict(img_size=32, patch_size=8, depth=1, dynamic_img_size=True, **kw)
    ref_model = timm.create_model(TIMM, pretrained=False, **args).eval()
    save_file(ref_model.state_dict(), tmp_path / "vit.safetensors")
    tower = load_vision_tower(f"timm:{TIMM}", weights=tmp_path / "vit.safetensors", timm_kwargs=args)
    for hw in [(48, 48), (16, 24), (24, 40)]:
        img = torch.randn(1, 1, 3, *hw)
        with torch.no_grad():
            close(tower(img).last_hidden_state[:, 0], ref_model.forward_features(img[:, 0]))


def test_timm_architecture_arguments_as_keywords(tmp_path: Path) -> None:
    """timm arguments that share a name with a VisionConfig field (patch_size, depth, ...) go to timm, not to the
    video config; a pretrained tag in the name is accepted; a fresh factorised tower is the image model per frame."""
    torch.manual_seed(0)
    name, kw = "vit_base_patch16_clip_224.openai", dict(img_size=32, patch_size=8, depth=1, embed_dim=32, num_heads=2)
    ref_model = timm.create_model(name, pretrained=False, **kw).eval()
    save_file(ref_model.state_dict(), tmp_path / "clip.safetensors")
    tower = load_vision_tower(
        f"timm:{name}", weights=tmp_path / "clip.safetensors", layout="factorised", num_tubelets=3, **kw
    )
    video = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        out = tower(video)
        for t in range(3):
            feats = ref_model.forward_features(video[:, t])
            close(out.last_hidden_state[:, t], feats)
            close(out.pooler_output[:, t], ref_model.forward_head(feats, pre_logits=True))


def test_timm_pth_weights_only(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ref_model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1, num_classes=0)
    torch.save({"state_dict": ref_model.state_dict()}, tmp_path / "vit.pth")
    tower = load_vision_tower("timm:vit_tiny_patch16_224", weights=tmp_path / "vit.pth", img_size=32)  # a timm kwarg
    img = torch.randn(1, 1, 3, 32, 32)
    with torch.no_grad():
        close(tower(img).last_hidden_state[:, 0], ref_model.eval().forward_features(img[:, 0]))


def test_strict_mismatches_raise(tmp_path: Path) -> None:
    torch.manual_seed(0)
    hf = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**CLIP_CONFIGS[0]))
    path = save_hf(hf, tmp_path / "clip")
    tensors = load_file(path / "model.safetensors")
    save_file({**tensors, "encoder.layers.0.extra.weight": torch.zeros(2)}, path / "model.safetensors")
    with pytest.raises(CheckpointError, match="unused source keys.*extra"):
        load_vision_tower(path)
    del tensors["post_layernorm.bias"]
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(CheckpointError, match="missing source keys.*post_layernorm.bias"):
        load_vision_tower(path)
    with pytest.raises(CheckpointError, match="config.json"):
        load_vision_tower(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="weights="):
        load_vision_tower("timm:vit_tiny_patch16_224")
    with pytest.raises(CheckpointError, match="patch_size.*config.json"):
        load_vision_tower(path, patch_size=4)  # an HF tower's architecture is its config


@pytest.mark.parametrize(
    ("name", "kw", "match"),
    [
        ("vit_base_patch16_rpn_224", dict(embed_dim=32, num_heads=2), "ResPostBlock.*FrameWiseTower"),
        ("eva02_tiny_patch14_224", dict(), "only VisionTransformer.*FrameWiseTower"),
        ("vit_tiny_patch16_224", dict(pos_embed="none"), "no position embedding"),
    ],
)
def test_timm_unconvertible_models_name_the_reason(tmp_path: Path, name: str, kw: dict, match: str) -> None:
    kw = {**dict(img_size=32, patch_size=8, depth=1), **kw}
    save_file(timm.create_model(name, pretrained=False, **kw).state_dict(), tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match=match):
        load_vision_tower(f"timm:{name}", weights=tmp_path / "w.safetensors", timm_kwargs=kw)


def test_siglip2_is_refused_with_the_alternative(tmp_path: Path) -> None:
    cfg = transformers.Siglip2VisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, patch_size=8, num_patches=4
    )
    transformers.Siglip2VisionModel(cfg).save_pretrained(tmp_path / "siglip2")
    with pytest.raises(CheckpointError, match="siglip2.*FrameWiseTower.from_hf"):
        load_vision_tower(tmp_path / "siglip2")


def test_tubelet_inflation_from_pretrained(tmp_path: Path) -> None:
    """A static clip through an inflated tubelet tower gives the image result (both inflation modes); a keyframe
    step's 2D patches are the image model's, so at T = 1 with the ``frame`` layout it is HF's output too."""
    torch.manual_seed(0)
    hf = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**CLIP_CONFIGS[0])).eval()
    path = save_hf(hf, tmp_path / "clip")
    img = torch.randn(1, 1, 3, 32, 32)
    with torch.no_grad():
        ref = hf(pixel_values=img[:, 0])
        for mode in ("center", "average"):
            tower = load_vision_tower(path, layout="divided", num_tubelets=4, tubelet_size=2, tubelet_init=mode)
            out = tower(img.repeat(1, 4, 1, 1, 1))
            assert out.last_hidden_state.shape[1] == 2
            close(out.last_hidden_state[:, 1], ref.last_hidden_state)
            close(out.pooler_output[:, 0], ref.pooler_output)
        out = load_vision_tower(path, layout="frame", num_tubelets=4, tubelet_size=2, keyframe_stream=True)(img)
        assert out.last_hidden_state.shape[1] == 2  # one static tubelet, then the keyframe
        for step in (0, 1):
            close(out.last_hidden_state[:, step], ref.last_hidden_state)
            close(out.pooler_output[:, step], ref.pooler_output)
