"""VideoFrontEnd over every tower kind: shapes, padding, frame indices, frozen towers, T = 1 parity, bad configs."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from einops import rearrange

from tests.models.frontend_kinds import KINDS, make_sources, native_vision, tower_configs
from vidvlm.errors import CheckpointError, ConfigError
from vidvlm.layers.connectors import ConnectorConfig
from vidvlm.layers.pooling import PoolerConfig
from vidvlm.models.frontend import FrontEndConfig, TowerConfig, VideoFrontEnd, token_times

pytest.importorskip("timm")
# spatial2d at size 1: one token per time step, so the tokens of real frames can be compared one by one
PER_STEP = PoolerConfig("spatial2d", {"size": 1, "num_prefix_tokens": 1})


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    return tower_configs(make_sources(tmp_path_factory.mktemp("sources")))


def front_end(tower: TowerConfig, **overrides) -> VideoFrontEnd:
    torch.manual_seed(0)
    cfg = FrontEndConfig(tower=tower, pooler=PER_STEP, connector=ConnectorConfig(name="mlp"), num_frames=4)
    return VideoFrontEnd(dataclasses.replace(cfg, **overrides), out_dim=24).eval()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("frames", [1, 3])
def test_shapes_masks_and_padding(towers, kind, frames):
    fe = front_end(towers[kind])
    video = torch.randn(2, frames, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    padded = torch.cat([video, 7 * torch.randn(2, 2, 3, 32, 32)], dim=1)
    mask = torch.zeros(2, frames + 2, dtype=torch.bool)
    mask[:, :frames] = True
    with torch.no_grad():
        plain, pad = fe(video), fe(padded, mask)
    assert plain.tokens.shape == (2, frames, 24) and plain.mask is None
    assert plain.frame_index.tolist() == [list(range(frames))] * 2
    assert pad.tokens.shape == (2, frames + 2, 24) and pad.mask.tolist() == mask.tolist()
    # padding never changes the tokens of real frames
    torch.testing.assert_close(pad.tokens[:, :frames], plain.tokens, atol=1e-5, rtol=1e-5)


def test_frame_index_follows_tubelets_and_pooling(towers):
    tower = TowerConfig("native", native_vision(tubelet_size=2, num_tubelets=2, layout="joint"))
    fe = front_end(tower)
    out = fe(torch.randn(1, 4, 3, 32, 32))
    assert out.frame_index.tolist() == [[0, 2]]  # one token per 2-frame tubelet, at its first frame
    times = token_times(out.frame_index, torch.tensor([[0.0, 0.5, 1.0, 1.5]]))
    assert times.tolist() == [[0.0, 1.0]]
    mean = front_end(tower, pooler=PoolerConfig("meanP", {"token": "first"}))
    out = mean(torch.randn(1, 4, 3, 32, 32))
    assert out.frame_index.tolist() == [[-1]] and torch.isnan(token_times(out.frame_index, torch.zeros(1, 4))).all()


def test_frozen_tower_builds_no_graph_and_stays_in_eval(towers):
    fe = front_end(towers["native"], freeze_tower=True).train()
    assert fe.tower_frozen and not fe.tower.training and fe.connector.training
    out = fe(torch.randn(2, 3, 3, 32, 32))
    assert not out.vision.last_hidden_state.requires_grad  # no autograd graph through the tower
    out.tokens.sum().backward()
    assert all(p.grad is None for p in fe.tower.parameters())
    assert all(p.grad is not None for p in fe.connector.parameters())
    # a stage that unfreezes a block makes the tower train again, with a graph
    next(fe.tower.blocks[-1].parameters()).requires_grad_(True)
    assert not fe.tower_frozen and fe(torch.randn(1, 2, 3, 32, 32)).vision.last_hidden_state.requires_grad


def test_pretrained_front_end_is_the_image_model_at_t1(towers, tmp_path_factory):
    """At T = 1 the frame-pooled token of a converted CLIP equals transformers' CLIP pooler_output."""
    import transformers

    root = make_sources(tmp_path_factory.mktemp("parity"))
    clip = transformers.CLIPVisionModel.from_pretrained(root / "clip").eval()
    fe = front_end(
        towers["pretrained_hf"], pool_input="frame", pooler=PoolerConfig("meanP"), connector=ConnectorConfig("none")
    )
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = fe(image[:, None]).tokens[:, 0]
        torch.testing.assert_close(ours, clip(pixel_values=image).pooler_output, atol=1e-5, rtol=1e-5)


def test_multilevel_concatenates_hidden_states(towers):
    fe = front_end(towers["multilevel"], connector=ConnectorConfig("none"), pooler=PoolerConfig("meanP"))
    assert fe.width == 64  # two levels of a width-32 tower
    video = torch.randn(1, 2, 3, 32, 32)
    with torch.no_grad():
        out = fe.encode(video)
        hidden = fe.tower.tower(video, output_hidden_states=[-2, -1]).hidden_states
    torch.testing.assert_close(out.last_hidden_state, torch.cat(hidden, dim=-1))


def test_transform_follows_the_model(towers):
    fe = front_end(towers["native"], normalize="siglip")
    out = fe.transform()(torch.full((2, 3, 40, 50), 255, dtype=torch.uint8))
    assert out.shape == (2, 3, 32, 32)  # the tower's resolution
    torch.testing.assert_close(out, torch.ones_like(out))  # siglip: (1 - 0.5) / 0.5


def test_bad_configs_name_the_key():
    with pytest.raises(ConfigError, match="tower.source"):
        TowerConfig("pretrained")
    with pytest.raises(ConfigError, match="tower.members"):
        TowerConfig("ensemble", members=[TowerConfig()])
    with pytest.raises(ConfigError, match="tower.name"):
        TowerConfig("clip")
    with pytest.raises(ConfigError, match="tower.layers"):
        TowerConfig(layers=[])
    with pytest.raises(ConfigError, match="front_end.num_frames"):
        FrontEndConfig(num_frames=0)
    with pytest.raises(ConfigError, match="front_end.pool_input"):
        FrontEndConfig(tower=TowerConfig(layers=[-1]), pool_input="frame")
    with pytest.raises(ConfigError, match="front_end.normalize"):
        FrontEndConfig(normalize="sepia")
    unequal = TowerConfig(
        "ensemble", members=[TowerConfig(vision=native_vision()), TowerConfig(vision=native_vision(width=16))]
    )
    with pytest.raises(ConfigError, match="equal width"):
        VideoFrontEnd(FrontEndConfig(tower=dataclasses.replace(unequal, combine="add")))


def test_a_checkpoint_tower_that_is_not_there_names_the_key(tmp_path):
    """The usual cause is a run not trained yet: the error names ``tower.source``, the path and what is wrong."""
    missing = tmp_path / "runs" / "contrastive" / "final"
    with pytest.raises(CheckpointError, match=f"^tower.source: {missing}: no such directory"):
        VideoFrontEnd(FrontEndConfig(tower=TowerConfig("checkpoint", source=str(missing))))
    with pytest.raises(CheckpointError, match=f"^tower.source: {tmp_path}: no config.yaml"):
        VideoFrontEnd(FrontEndConfig(tower=TowerConfig("checkpoint", source=str(tmp_path))))


def test_ensemble_members_read_their_own_frames_and_size():
    """A 16-px, 2-frame-tubelet member on every other frame beside a 32-px one: its input is the strided, resized
    clip, its time steps are repeated to the first member's, and frame indices follow the first member."""
    fine = TowerConfig(vision=native_vision(num_tubelets=4, tubelet_size=2, layout="joint"))
    coarse = TowerConfig(vision=native_vision(image_size=16, patch_size=8, tubelet_size=2, num_tubelets=2, width=16),
                         input_size=16, frame_stride=2)  # fmt: skip
    fe = front_end(TowerConfig("ensemble", members=[fine, coarse]), num_frames=8)
    video = torch.randn(2, 8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    first, second = fe.tower.towers
    with torch.no_grad():
        out = fe.encode(video)
        a = first(video)
        small = torch.nn.functional.interpolate(video[:, ::2].flatten(0, 1), size=(16, 16), mode="bicubic",
                                                antialias=True).unflatten(0, (2, 4))  # fmt: skip
        b = second(small)
    assert a.last_hidden_state.shape[1] == 4 and b.last_hidden_state.shape[1] == 2
    assert out.last_hidden_state.shape == (2, 4, 1 + 4, 32 + 16)
    torch.testing.assert_close(out.last_hidden_state[:, :, 1:, :32], a.last_hidden_state[:, :, 1:])
    repeated = b.pooler_output.repeat_interleave(2, dim=1)  # steps 0,1 of the coarse member -> 0,0,1,1
    torch.testing.assert_close(out.pooler_output[..., 32:], repeated)
    # the coarse member's 2x2 grid upsampled to the fine 2x2 grid is itself
    torch.testing.assert_close(
        out.last_hidden_state[:, :, 1:, 32:], b.last_hidden_state[:, :, 1:].repeat_interleave(2, 1)
    )
    assert fe.tower.tubelet_size == 2 and fe.image_size == 32
    fe_out = fe(video)
    assert fe_out.frame_index[0].tolist() == [0, 2, 4, 6]  # PER_STEP: one token per step of two frames
    with pytest.raises(ConfigError, match="ensemble members"):
        FrontEndConfig(tower=TowerConfig(vision=native_vision(), input_size=16))
    with pytest.raises(ConfigError, match="tower.frame_stride"):
        TowerConfig(frame_stride=0)
    coarse_first = front_end(TowerConfig("ensemble", members=[coarse, fine]), num_frames=8)
    coarse_first.tower.towers[0].load_state_dict(second.state_dict())
    coarse_first.tower.towers[1].load_state_dict(first.state_dict())
    with torch.no_grad():
        out = coarse_first.encode(video)  # 2 steps first: the fine member's 4 steps averaged in pairs
    assert out.last_hidden_state.shape == (2, 2, 1 + 4, 16 + 32)
    torch.testing.assert_close(out.pooler_output[..., :16], b.pooler_output)
    pairs = rearrange(a.last_hidden_state[:, :, 1:], "b (s k) n d -> b s k n d", k=2).mean(dim=2)
    torch.testing.assert_close(out.last_hidden_state[:, :, 1:, 16:], pairs)
    torch.testing.assert_close(
        out.pooler_output[..., 16:], rearrange(a.pooler_output, "b (s k) d -> b s k d", k=2).mean(2)
    )
    assert coarse_first.tower.tubelet_size == 4 and coarse_first(video).frame_index[0].tolist() == [0, 4]


def test_per_frame_member_encodes_each_frame_alone():
    """A per-frame member is the tower on each frame as a one-frame clip: one step per frame, a changed frame changes
    its own step only, padded frames are zero; the tubelet member beside it covers frames 0-1, 2-3, 4 (3 steps for
    5 frames) and is aligned to steps 0, 0, 1, 1, 2; frame indices count single frames."""
    vision = native_vision(tubelet_size=2, num_tubelets=4, layout="joint")
    per_frame = TowerConfig(vision=vision, per_frame=True)
    fe = front_end(TowerConfig("ensemble", members=[per_frame, TowerConfig(vision=vision)]), num_frames=5)
    fast, slow = fe.tower.towers
    video = torch.randn(2, 5, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = fe.encode(video)
        alone = [fast(video[:, t : t + 1]) for t in range(5)]
        clip = slow(video)
        changed = video.clone()
        changed[:, 3] += 1.0
        out_changed = fe.encode(changed)
    assert out.last_hidden_state.shape == (2, 5, 1 + 4, 64)
    for t, o in enumerate(alone):
        torch.testing.assert_close(out.last_hidden_state[:, t, 1:, :32], o.last_hidden_state[:, 0, 1:])
        torch.testing.assert_close(out.pooler_output[:, t, :32], o.pooler_output[:, 0])
    torch.testing.assert_close(out.pooler_output[..., 32:], clip.pooler_output[:, [0, 0, 1, 1, 2]])
    moved = (out_changed.last_hidden_state[..., :32] - out.last_hidden_state[..., :32]).abs().amax(dim=(0, 2, 3))
    assert moved[3] > 0 and torch.all(moved[[0, 1, 2, 4]] == 0)
    assert fe.tower.tubelet_size == 1
    assert fe(video).frame_index[0].tolist() == [0, 1, 2, 3, 4]  # PER_STEP: one token per step of one frame
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    with torch.no_grad():
        padded = fe.encode(video, mask)
    assert torch.equal(padded.frame_mask, mask)
    assert torch.all(padded.last_hidden_state[1, 3:, :, :32] == 0)
    torch.testing.assert_close(padded.last_hidden_state[1, :3, 1:, :32], out.last_hidden_state[1, :3, 1:, :32])
    with pytest.raises(ConfigError, match="per_frame belong to ensemble members"):
        FrontEndConfig(tower=TowerConfig(vision=vision, per_frame=True))
    keyframe = native_vision(tubelet_size=2, num_tubelets=4, keyframe_stream=True)
    two_steps = TowerConfig("ensemble", members=[TowerConfig(vision=keyframe, per_frame=True), per_frame])
    with pytest.raises(ConfigError, match="tower.per_frame"), torch.no_grad():
        front_end(two_steps, num_frames=4).encode(video[:, :4])


def test_finer_member_is_averaged_per_step_of_the_first_over_real_frames():
    """Stills beside the tubelets they cover, tubelets first: each of the 3 steps of 5 frames (0-1, 2-3, 4) gets the
    mean of its frames' stills, padded frames left out of the mean (frame 2 alone for step 1), a step with no real
    frame zero; the token count is the tubelet member's. At T = 1 both members see the one frame."""
    vision = native_vision(tubelet_size=2, num_tubelets=4, layout="joint")
    fe = front_end(
        TowerConfig("ensemble", members=[TowerConfig(vision=vision), TowerConfig(vision=vision, per_frame=True)]),
        num_frames=5,
    )
    slow, fast = fe.tower.towers
    video = torch.randn(2, 5, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    with torch.no_grad():
        out = fe.encode(video, mask)
        stills = torch.cat([fast(video[:, t : t + 1]).last_hidden_state for t in range(5)], dim=1)
        image = fe.encode(video[:, :1])
        image_still = fast(video[:, :1]).last_hidden_state
    assert out.last_hidden_state.shape == (2, 3, 1 + 4, 64) and fe.tower.tubelet_size == 2
    assert torch.equal(out.frame_mask, torch.tensor([[True] * 3, [True, True, False]]))
    got = out.last_hidden_state[:, :, 1:, 32:]
    torch.testing.assert_close(got[0, 0], stills[0, :2, 1:].mean(0))
    torch.testing.assert_close(got[0, 1], stills[0, 2:4, 1:].mean(0))
    torch.testing.assert_close(got[0, 2], stills[0, 4, 1:])
    torch.testing.assert_close(got[1, 1], stills[1, 2, 1:])  # frame 3 is padding: not in the mean
    assert torch.all(got[1, 2] == 0)
    torch.testing.assert_close(image.last_hidden_state[:, :, 1:, 32:], image_still[:, :, 1:])


def test_ensemble_of_multilevel_members_keeps_one_width():
    """Multi-level members: the summary token is each member's class tokens of the chosen layers, as wide as its
    patch tokens, so the ensemble's tokens have one width."""
    a = TowerConfig(vision=native_vision(layout="joint"), layers=[-2, -1])
    b = TowerConfig(vision=native_vision(layout="joint", width=16), layers=[-1])
    fe = front_end(TowerConfig("ensemble", members=[a, b]))
    video = torch.randn(1, 4, 3, 32, 32)
    with torch.no_grad():
        out = fe.encode(video)
        ref = fe.tower.towers[0](video).last_hidden_state
    assert fe.tower.width == 2 * 32 + 16 and out.last_hidden_state.shape[-1] == 80
    torch.testing.assert_close(out.pooler_output[..., :64], ref[:, :, 0])  # the two layers' class tokens
