"""VideoViT: T = 1 exactness for every layout, zero-initialised temporal parts, padding, checkpointing, keyframes."""

from __future__ import annotations

import pytest
import torch

from vidvlm.errors import ConfigError
from vidvlm.models.convert import VIDEO_ONLY_PREFIXES, load_converted
from vidvlm.models.vision import VideoViT, VisionConfig, VisionOutput

LAYOUTS = ["frame", "divided", "joint", "factorised"]


def tiny(**kw) -> VisionConfig:
    base = dict(image_size=16, patch_size=8, width=16, depth=2, num_heads=2, num_tubelets=4, temporal_depth=1)
    return VisionConfig(**{**base, **kw})


def image_weights(model: VideoViT) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith(VIDEO_ONLY_PREFIXES)}


def video_model(cfg: VisionConfig, image: VideoViT) -> VideoViT:
    """A video model that shares the image model's weights (video-only parameters keep their init), loaded the way
    pretrained image towers are: tubelet kernels inflated, keyframe patches copied, every other key strict."""
    return load_converted(VideoViT(cfg).eval(), image_weights(image), "image model")


def randomise_temporal(model: VideoViT) -> None:
    """Give the zero-initialised video parameters non-zero values, as after training."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(VIDEO_ONLY_PREFIXES):
                p.add_(torch.randn(p.shape, generator=gen) * 0.3)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    "arch",
    [
        dict(),
        dict(class_token=False, pool="map", pos_embed_prefix=False),
        dict(qk_norm=True, num_reg_tokens=1, pool="cls_dist"),
        dict(class_token=False, pool="avgmax", layer_scale=0.5),
    ],
)
def test_t1_equals_image_vit(layout: str, arch: dict) -> None:
    torch.manual_seed(0)
    image = VideoViT(tiny(layout="frame", **arch)).eval()
    model = video_model(tiny(layout=layout, **arch), image)
    x = torch.randn(2, 1, 3, 16, 16)
    with torch.no_grad():
        ref, out = image(x), model(x)
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.pooler_output, ref.pooler_output, rtol=0, atol=1e-6)
    assert out.last_hidden_state.shape == (
        2,
        1,
        4 + int(arch.get("class_token", True)) + arch.get("num_reg_tokens", 0),
        16,
    )


@pytest.mark.parametrize("layout", ["divided", "factorised"])
def test_fresh_temporal_parts_are_identity(layout: str) -> None:
    """Zero-initialised temporal residuals: at init the video model is the image model on every frame."""
    torch.manual_seed(0)
    image = VideoViT(tiny(layout="frame")).eval()
    model = video_model(tiny(layout=layout), image)
    x = torch.randn(2, 3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x).last_hidden_state, image(x).last_hidden_state, rtol=0, atol=1e-6)
        randomise_temporal(model)  # the test can fail: trained temporal parameters do mix frames
        assert (model(x).last_hidden_state - image(x).last_hidden_state).abs().max() > 1e-3


@pytest.mark.parametrize("mode", ["center", "average"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_tubelet_static_clip_equals_image(mode: str, layout: str) -> None:
    torch.manual_seed(0)
    image = VideoViT(tiny(layout="frame")).eval()
    model = video_model(tiny(layout=layout, tubelet_size=2, tubelet_init=mode), image)
    frame = torch.randn(2, 1, 3, 16, 16)
    with torch.no_grad():
        ref = image(frame)
        static = model(frame.repeat(1, 2, 1, 1, 1))
        single = model(frame)  # T = 1 is completed to a static tubelet
    for out in (static, single):
        assert out.last_hidden_state.shape[1] == 1
        torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, rtol=0, atol=1e-5)
        torch.testing.assert_close(out.pooler_output, ref.pooler_output, rtol=0, atol=1e-5)


def padded_and_alone(model: VideoViT) -> tuple[VisionOutput, VisionOutput, VisionOutput]:
    """The model on a batch of a 3-frame clip padded to 6 (padding filled with 7.0) and a 6-frame clip, and on each
    clip alone."""
    short, long = torch.randn(1, 3, 3, 16, 16), torch.randn(1, 6, 3, 16, 16)
    padded = torch.cat([torch.cat([short, torch.full_like(long[:, :3], 7.0)], 1), long])
    mask = torch.tensor([[True] * 3 + [False] * 3, [True] * 6])
    with torch.no_grad():
        return model(padded, frame_mask=mask), model(short), model(long)


@pytest.mark.parametrize("tubelet", [1, 2])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_padded_frames_never_change_real_frames(layout: str, tubelet: int) -> None:
    torch.manual_seed(0)
    model = VideoViT(tiny(layout=layout, tubelet_size=tubelet)).eval()
    randomise_temporal(model)
    batch, alone_short, alone_long = padded_and_alone(model)
    t_short = alone_short.last_hidden_state.shape[1]
    torch.testing.assert_close(batch.last_hidden_state[:1, :t_short], alone_short.last_hidden_state, atol=1e-5, rtol=0)
    torch.testing.assert_close(batch.pooler_output[:1, :t_short], alone_short.pooler_output, atol=1e-5, rtol=0)
    torch.testing.assert_close(batch.last_hidden_state[1:], alone_long.last_hidden_state, atol=1e-5, rtol=0)
    assert batch.last_hidden_state[0, t_short:].abs().max() == 0  # padded frames come out as zeros


def test_keyframe_step_is_the_image_vit_on_the_middle_real_frame() -> None:
    """With the ``frame`` layout (no mixing over time) the keyframe step is exactly the image ViT on the middle real
    frame; the tubelet steps come first and are unchanged by the keyframe."""
    torch.manual_seed(0)
    image = VideoViT(tiny(layout="frame")).eval()
    model = video_model(tiny(layout="frame", tubelet_size=2, keyframe_stream=True), image)
    plain = video_model(tiny(layout="frame", tubelet_size=2), image)
    video = torch.randn(2, 6, 3, 16, 16)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    with torch.no_grad():
        out, ref = model(video, frame_mask=mask), plain(video, frame_mask=mask)
        middle = image(torch.stack([video[0, 2], video[1, 1]])[:, None])  # (6-1)//2 = 2 and (4-1)//2 = 1
    assert out.last_hidden_state.shape == (2, 4, 5, 16)
    assert out.frame_mask.tolist() == [[True, True, True, True], [True, True, False, True]]
    torch.testing.assert_close(out.last_hidden_state[:, 3:], middle.last_hidden_state, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.pooler_output[:, 3:], middle.pooler_output, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.last_hidden_state[:, :3], ref.last_hidden_state, rtol=0, atol=1e-6)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_keyframe_stream_ignores_padding(layout: str) -> None:
    """A padded clip gives the same tubelet and keyframe steps as the clip alone (the keyframe step is last)."""
    torch.manual_seed(0)
    model = VideoViT(tiny(layout=layout, tubelet_size=2, keyframe_stream=True)).eval()
    randomise_temporal(model)
    batch, alone_short, alone_long = padded_and_alone(model)
    assert alone_short.last_hidden_state.shape[1] == 3 and batch.last_hidden_state.shape[1] == 4
    assert alone_short.frame_mask is None and batch.frame_mask[0].tolist() == [True, True, False, True]
    for got, want in (
        (batch.last_hidden_state, alone_short.last_hidden_state),
        (batch.pooler_output, alone_short.pooler_output),
    ):
        torch.testing.assert_close(got[:1, :2], want[:, :2], atol=1e-5, rtol=0)
        torch.testing.assert_close(got[:1, 3], want[:, 2], atol=1e-5, rtol=0)
    torch.testing.assert_close(batch.last_hidden_state[1:], alone_long.last_hidden_state, atol=1e-5, rtol=0)
    assert batch.last_hidden_state[0, 2].abs().max() == 0


@pytest.mark.parametrize("layout", LAYOUTS)
def test_grad_checkpointing_same_outputs_and_grads(layout: str) -> None:
    torch.manual_seed(0)
    model = VideoViT(tiny(layout=layout))
    randomise_temporal(model)
    x = torch.randn(2, 2, 3, 16, 16)
    mask = torch.tensor([[True, True], [True, False]])
    results = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        out = model(x, frame_mask=mask)
        (out.last_hidden_state.square().mean() + out.pooler_output.sum()).backward()
        results.append((out.last_hidden_state.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[0][0], results[1][0])
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, msg=name)


def test_hidden_states_and_selection() -> None:
    model = VideoViT(tiny(layout="factorised")).eval()
    x = torch.randn(1, 2, 3, 16, 16)
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
        picked = model(x, output_hidden_states=[1, -1])
    assert len(out.hidden_states) == 1 + 2 + 1  # embeddings, 2 spatial blocks, 1 temporal block
    assert all(h.shape == (1, 2, 5, 16) for h in out.hidden_states)
    torch.testing.assert_close(picked.hidden_states[0], out.hidden_states[1])
    torch.testing.assert_close(picked.hidden_states[1], out.hidden_states[-1])
    assert model(x).hidden_states is None


def test_other_resolutions_and_frame_counts() -> None:
    torch.manual_seed(0)
    model = VideoViT(tiny(layout="joint", num_tubelets=2)).eval()
    randomise_temporal(model)
    with torch.no_grad():
        out = model(torch.randn(1, 5, 3, 24, 40))  # 5 > num_tubelets: temporal table is resampled
        table = model.pos_embed.temporal_table(5)
    assert out.last_hidden_state.shape == (1, 5, 1 + 3 * 5, 16)
    torch.testing.assert_close(table[0], model.pos_embed.temporal[0] * 0.7 + model.pos_embed.temporal[0] * 0.3)
    torch.testing.assert_close(model.pos_embed.temporal_table(1), model.pos_embed.temporal[:1])


def test_bad_configs_raise() -> None:
    with pytest.raises(ConfigError, match="layout"):
        VideoViT(tiny(layout="spacetime"))
    with pytest.raises(ConfigError, match="class_token"):
        VideoViT(tiny(class_token=False, pool="token"))
    with pytest.raises(ConfigError, match="distillation token"):
        VideoViT(tiny(pool="cls_dist"))
    with pytest.raises(ConfigError, match="pool: expected"):
        VideoViT(tiny(pool="median"))
    with pytest.raises(ConfigError, match="keyframe_stream"):
        VideoViT(tiny(keyframe_stream=True))  # per-frame patches: every frame is already a keyframe
    with pytest.raises(ConfigError, match="num_heads"):
        VideoViT(tiny(num_heads=3))
    with pytest.raises(ValueError, match="frame_mask"):
        VideoViT(tiny()).eval()(torch.randn(1, 2, 3, 16, 16), frame_mask=torch.tensor([[False, False]]))


def test_single_key_shortcut_matches_attention() -> None:
    """SelfAttention on one token skips q/k; it must equal the full attention() path."""
    from vidvlm.layers.attention import AttnMask, attention
    from vidvlm.layers.transformer import SelfAttention

    torch.manual_seed(0)
    attn = SelfAttention(16, 2)
    x = torch.randn(3, 1, 16)
    q, k, v = attn.qkv(x).chunk(3, dim=-1)
    split = [t.reshape(3, 1, 2, 8).transpose(1, 2) for t in (q, k, v)]
    for mask in (None, AttnMask(key_padding=torch.tensor([[True], [False], [True]]))):
        ref = attn.proj(attention(*split, mask, backend="math").transpose(1, 2).reshape(3, 1, 16))
        torch.testing.assert_close(attn(x, mask), ref)


def test_cross_attention_block_masks_context_and_checks_arguments() -> None:
    from vidvlm.layers.attention import AttnMask
    from vidvlm.layers.transformer import TransformerBlock

    torch.manual_seed(0)
    blk = TransformerBlock(16, 2, cross_attention=True, ls_init=0.5).eval()
    x, ctx = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    keep = AttnMask(key_padding=torch.tensor([[True] * 3 + [False] * 2] * 2))
    changed = ctx.clone()
    changed[:, 3:] = 100.0  # masked context keys must not matter
    with torch.no_grad():
        torch.testing.assert_close(blk(x, context=ctx, context_mask=keep), blk(x, context=changed, context_mask=keep))
        assert (blk(x, context=ctx) - blk(x, context=changed)).abs().max() > 1e-3
        blk.zero_init_residual()
        torch.testing.assert_close(blk(x, context=ctx), x)
    with pytest.raises(ValueError, match="context"):
        blk(x)
    with pytest.raises(ValueError, match="context"):
        TransformerBlock(16, 2)(x, context=ctx)
