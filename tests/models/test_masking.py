"""Masked encoding and token dropping: the video ViT's visible-token path and the front-end's ``token_drop``."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vidvlm.errors import ConfigError
from vidvlm.layers.masking import full_keep, make_keep
from vidvlm.models.frontend import FrontEndConfig, TokenDropConfig, TowerConfig, VideoFrontEnd
from vidvlm.models.vision import VideoViT, VisionConfig

LAYOUTS = ["frame", "divided", "joint", "factorised"]


def vit(layout: str, **kw) -> VideoViT:
    """A tiny tower whose temporal parts are not the identity (as after training)."""
    torch.manual_seed(0)
    base = dict(image_size=16, patch_size=4, width=16, depth=2, num_heads=2, num_tubelets=4, temporal_depth=1)
    model = VideoViT(VisionConfig(layout=layout, **{**base, **kw})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("temporal", "pos_embed.temporal")):
                p.add_(torch.randn_like(p) * 0.3)
    return model


def clips(t: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Two clips ``[2, t, 3, 16, 16]``, the second with its last frame padded (when t > 1)."""
    video = torch.randn(2, t, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, t, dtype=torch.bool)
    if t > 1:
        mask[1, -1] = False
        video[1, -1] = 0
    return video, mask


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("tubelet", [1, 2])
def test_zero_mask_equals_unmasked_encoder(layout, tubelet):
    model = vit(layout, tubelet_size=tubelet)
    video, mask = clips(4)
    steps, n = model.token_grid(4, 16, 16)
    assert (steps, n) == (4 // tubelet, 16)
    with torch.no_grad():
        ref = model(video, mask, output_hidden_states=True)
        out = model(video, mask, output_hidden_states=True, keep=full_keep(2, steps, n))
    assert torch.equal(out.last_hidden_state, ref.last_hidden_state)
    assert torch.equal(out.pooler_output, ref.pooler_output)
    assert all(torch.equal(a, b) for a, b in zip(out.hidden_states, ref.hidden_states, strict=True))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("t", [1, 4])
def test_hidden_tokens_never_reach_the_encoder(layout, t):
    """Output has P + K tokens per step, and changing the pixels of hidden tube positions changes nothing (they were
    never gathered, so no attention mask can leak them). T = 1 runs the same code."""
    model = vit(layout, pool="avg")
    video, mask = clips(t)
    keep = make_keep(2, t, 16, 0.75, "tube", generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(video, mask, keep=keep)
        hidden = torch.ones(2, 16, dtype=torch.bool).scatter(1, keep[:, 0], False)  # [B, N] hidden positions
        pix = hidden.view(2, 1, 1, 4, 1, 4, 1).expand(2, t, 3, 4, 4, 4, 4).reshape(2, t, 3, 16, 16)
        again = model(video + pix.float() * 5.0, mask, keep=keep)
    assert out.last_hidden_state.shape == (2, t, 1 + 4, 16)
    assert torch.isfinite(out.last_hidden_state).all()
    torch.testing.assert_close(again.last_hidden_state, out.last_hidden_state, rtol=0, atol=0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_masked_padding_is_honoured(layout):
    """A padded clip under a mask equals the same clip without the padded frame, under the same mask."""
    model = vit(layout)
    video, mask = clips(4)
    keep = make_keep(2, 4, 16, 0.5, "random", generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(video, mask, keep=keep)
        alone = model(video[1:, :3], keep=keep[1:, :3])
    torch.testing.assert_close(full.last_hidden_state[1, :3], alone.last_hidden_state[0], atol=1e-5, rtol=1e-5)
    assert bool((full.last_hidden_state[1, 3] == 0).all())


# -- token_drop on the front-end ---------------------------------------------------------------------------------


def front_end(ratio: float, kind: str = "random", **kw) -> VideoFrontEnd:
    torch.manual_seed(0)
    vision = VisionConfig(image_size=16, patch_size=4, width=16, depth=2, num_heads=2, num_tubelets=4, layout="joint")
    cfg = FrontEndConfig(tower=TowerConfig(vision=vision), num_frames=4, token_drop=TokenDropConfig(ratio, kind), **kw)
    return VideoFrontEnd(cfg)


@pytest.mark.parametrize("kind", ["random", "tube"])
def test_token_drop_trains_on_fewer_tokens_and_is_off_at_eval(kind):
    plain, drop = front_end(0.0), front_end(0.75, kind)
    drop.load_state_dict(plain.state_dict())
    video, mask = clips(4)
    plain.eval(), drop.eval()
    with torch.no_grad():
        a, b = plain(video, mask), drop(video, mask)
    torch.testing.assert_close(b.tokens, a.tokens, rtol=0, atol=0)
    assert b.vision.last_hidden_state.shape[2] == 1 + 16
    drop.train()
    out = drop(video, mask)
    assert out.vision.last_hidden_state.shape[2] == 1 + 4  # class token + 25 % of 16 patches, every step
    assert out.tokens.shape == a.tokens.shape and torch.isfinite(out.tokens).all()
    (out.tokens * torch.randn_like(out.tokens)).sum().backward()  # a plain sum of normed tokens has no gradient
    assert drop.tower.patch_embed.proj.weight.grad.abs().sum() > 0


def test_token_drop_refuses_what_cannot_drop():
    with pytest.raises(ConfigError, match="front_end.token_drop.ratio"):
        TokenDropConfig(1.0)
    with pytest.raises(ConfigError, match="front_end.token_drop.kind"):
        TokenDropConfig(0.5, "block")
    with pytest.raises(ConfigError, match="front_end.token_drop: pooler 'spatial2d'"):
        dataclasses.replace(FrontEndConfig(token_drop=TokenDropConfig(0.5)), pooler=_pooler("spatial2d"))
    cfg = FrontEndConfig(tower=TowerConfig("framewise", arch={"model_type": "x"}), token_drop=TokenDropConfig(0.5))
    with pytest.raises(ConfigError, match="front_end.token_drop: a 'framewise' tower"):
        VideoFrontEnd(cfg, tower=_NoKeepTower())


def _pooler(name: str):
    from vidvlm.layers.pooling import PoolerConfig

    return PoolerConfig(name)


class _NoKeepTower(torch.nn.Module):
    """A stand-in for a tower without a visible-token path (only its width is read)."""

    width = 16
