"""Frame-wise adapter and tower ensemble against the models they wrap."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vidvlm.models.towers import FrameWiseTower, TowerEnsemble, load_vision_tower

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")


def test_framewise_hf_per_frame_and_padding(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = transformers.Dinov2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=16, patch_size=8
    )
    hf = transformers.Dinov2Model(cfg).eval()
    hf.save_pretrained(tmp_path / "dino")
    tower = FrameWiseTower.from_hf(tmp_path / "dino")
    assert not tower.model.use_kernels  # loaded without hub kernels (code fetched from the Hub)
    video = torch.randn(2, 3, 3, 16, 16)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    with torch.no_grad():
        out = tower(video, frame_mask=mask, output_hidden_states=True)
        for b, t in [(0, 0), (0, 1), (1, 2)]:
            ref = hf(pixel_values=video[b, t : t + 1])
            torch.testing.assert_close(out.last_hidden_state[b, t], ref.last_hidden_state[0], rtol=0, atol=1e-5)
            torch.testing.assert_close(out.pooler_output[b, t], ref.pooler_output[0], rtol=0, atol=1e-5)
    assert out.last_hidden_state[0, 2].abs().max() == 0
    assert len(out.hidden_states) == 2 and out.hidden_states[0].shape == (2, 3, 5, 16)
    assert tower.width == 16


@pytest.mark.parametrize("num_classes", [0, 7])
def test_framewise_timm(tmp_path: Path, num_classes: int) -> None:
    """A CNN per frame; the classifier size is read from the weights (none, or 7 classes instead of 1000)."""
    torch.manual_seed(0)
    ref = timm.create_model("resnet18", pretrained=False, num_classes=num_classes).eval()
    save_file(ref.state_dict(), tmp_path / "r18.safetensors")
    tower = FrameWiseTower.from_timm("resnet18", tmp_path / "r18.safetensors")
    video = torch.randn(1, 2, 3, 32, 32)
    with torch.no_grad():
        out = tower(video)
        feats = ref.forward_features(video[0])
    torch.testing.assert_close(out.pooler_output[0], ref.forward_head(feats, pre_logits=True), rtol=0, atol=1e-5)
    assert out.last_hidden_state.shape == (1, 2, 512, 1, 1)  # a CNN keeps its feature map layout
    assert tower.width == 512


def test_framewise_timm_non_vit_transformer_without_classifier(tmp_path: Path) -> None:
    """An EVA-02 (RoPE, SwiGLU: not convertible) saved without its classifier loads by name alone: the ViT
    arguments read from tensors are not forced on it, and its absent head is reset rather than reported missing."""
    torch.manual_seed(0)
    kw = dict(img_size=32, patch_size=8, depth=1)
    ref = timm.create_model("eva02_tiny_patch14_224", pretrained=False, num_classes=0, **kw).eval()
    save_file(ref.state_dict(), tmp_path / "eva.safetensors")
    tower = FrameWiseTower.from_timm("eva02_tiny_patch14_224", tmp_path / "eva.safetensors", **kw)
    video = torch.randn(2, 2, 3, 32, 32)
    with torch.no_grad():
        out = tower(video)
        for t in range(2):
            feats = ref.forward_features(video[:, t])
            torch.testing.assert_close(out.last_hidden_state[:, t], feats, rtol=0, atol=1e-5)
            torch.testing.assert_close(
                out.pooler_output[:, t], ref.forward_head(feats, pre_logits=True), rtol=0, atol=1e-5
            )


def test_ensemble_concatenates_features(tmp_path: Path) -> None:
    torch.manual_seed(0)
    clip_cfg = transformers.CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
    )
    transformers.CLIPVisionModel(clip_cfg).save_pretrained(tmp_path / "clip")
    clip = load_vision_tower(tmp_path / "clip", layout="frame", num_tubelets=2)
    dino_cfg = transformers.Dinov2Config(
        hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, image_size=32, patch_size=16
    )
    transformers.Dinov2Model(dino_cfg).save_pretrained(tmp_path / "dino")
    dino = FrameWiseTower.from_hf(tmp_path / "dino")
    ens = TowerEnsemble([clip, dino])
    video = torch.randn(2, 2, 3, 32, 32)
    with torch.no_grad():
        out, a, b = ens(video), clip(video), dino(video)
    assert ens.width == 24 and out.last_hidden_state.shape == (2, 2, 1 + 16, 24)
    torch.testing.assert_close(out.pooler_output, torch.cat([a.pooler_output, b.pooler_output], -1))
    torch.testing.assert_close(out.last_hidden_state[:, :, 1:, :16], a.last_hidden_state[:, :, 1:])
    # the 2x2 DINO grid is upsampled to CLIP's 4x4: the top-left output patch lies nearest DINO's first patch
    assert (out.last_hidden_state[:, :, 1, 16:] - b.last_hidden_state[:, :, 1]).abs().max() < 1e-5
    with pytest.raises(ValueError, match="two towers"):
        TowerEnsemble([clip])
