"""A training step does not make the host wait for the accelerator (contract, every registered family).

Each ``.item()``, ``bool(t)``, ``.tolist()`` or ``.cpu()`` of a tensor on a GPU makes the host wait until the GPU has
run everything queued before it; the GPU then idles while the host queues the next kernels. So does a blocking copy
of host data onto the GPU (``ids.to("cuda")``, ``torch.tensor(xs, device="cuda")``): torch synchronises the stream
for it. A few such waits per step cost little; one per visual token costs the step. The trainer reads once per step
(the skip decision and the gradient norm), and the families' forward and backward should add nothing to that: host
values go over with :func:`vidvlm.devices.to_device` (pinned memory, ``non_blocking=True``).

Measured without a GPU: the model and the batch go to the ``meta`` device, where tensors have shapes and no data.
:class:`~tests.models.device_reads.DeviceReads` counts every op that would read one back (and hands back a stand-in
so the step goes on) and every blocking copy onto it. ``benchmarks/meta_step.py`` does the same for every stage of a
training config.
"""

from __future__ import annotations

import dataclasses
import random
import warnings

import pytest
import torch

from tests.models.device_reads import META, DeviceReads
from tests.models.frontend_kinds import KINDS, make_sources, native_vision, tower_configs
from tests.models.test_registry import CAPTIONS, FAMILIES, FRONT_END_FAMILIES, make_batch, tiny_config, tiny_model
from vidvlm.devices import batch_to_device
from vidvlm.errors import ConfigError
from vidvlm.layers.pooling import PoolerConfig
from vidvlm.models.frontend import TokenDropConfig, TowerConfig
from vidvlm.models.registry import build_model


def _training_step(model, batch: dict) -> DeviceReads:
    """The counts of one forward and backward of ``model`` on ``batch``, moved to the device as the trainer does."""
    model.train().to(META)
    random.seed(0)
    counter = DeviceReads()
    with counter:
        out = model(batch_to_device(batch, META))
        sum(v for k, v in out.items() if k.endswith("_loss")).backward()
    return counter


def _training_step_reads(model, batch: dict) -> list[tuple[str, tuple[int, ...]]]:
    return _training_step(model, batch).reads


@pytest.mark.parametrize("family", FAMILIES)
def test_training_step_reads_nothing_back_from_the_device(family):
    """Every registered family (a new one too): see docs/adding_a_family.md. LLaVA with frame times reads the
    clips' timestamps, once per batch (the next test)."""
    model = tiny_model(family)
    batch = make_batch(model, num_frames=4, pad_last=False)  # captions of different lengths: padded text
    assert _training_step_reads(model, batch) == [], family


@pytest.mark.parametrize("pad_last", [False, True])
def test_early_fusion_with_caption_first_rows_reads_and_waits_for_nothing(pad_last):
    """The per-row layout choice (``text_first``) is drawn on the host and sent over, never read back."""
    import dataclasses

    from vidvlm.models.registry import build_model

    torch.manual_seed(0)
    model = build_model(dataclasses.replace(tiny_config("early_fusion"), text_first=0.5))
    model.prepare_for_training(CAPTIONS)
    step = _training_step(model, make_batch(model, num_frames=4, pad_last=pad_last))
    assert step.reads == [] and step.copies == []


@pytest.mark.parametrize("family", FAMILIES)
def test_training_step_copies_host_data_without_waiting(family):
    """Token ids, targets, positions and indices made on the host reach the device without a blocking copy."""
    model = tiny_model(family)
    batch = make_batch(model, num_frames=4, pad_last=False)
    assert _training_step(model, batch).copies == [], family


def test_llava_frame_times_read_nothing_and_at_most_once_per_batch():
    """The layout of a LLaVA sequence with frame times reads the timestamps on the host (the front-end makes the
    tokens' frame index there). The trainer leaves them there: no read. Timestamps a caller put on the device are
    read once per batch, not per visual token: 16 tokens a clip read no more than 1."""
    reads, moved_reads = {}, {}
    grid = PoolerConfig("spatial2d", {"size": 2, "num_prefix_tokens": 1})  # 4 tokens per frame
    for pooler, pool_input in [(PoolerConfig(), "embeddings"), (grid, "tokens")]:
        cfg = tiny_config("llava")
        front_end = dataclasses.replace(cfg.front_end, pooler=pooler, pool_input=pool_input)
        cfg = dataclasses.replace(cfg, front_end=front_end, frame_times=True)
        torch.manual_seed(0)
        model = build_model(cfg)
        model.prepare_for_training(["a red square moves left", "a blue circle"])
        batch = make_batch(model, num_frames=4, pad_last=False)
        tokens = model.front_end(batch["video"]).tokens.shape[1]
        counter = _training_step(model, batch)
        reads[tokens] = counter.reads + counter.copies
        on_device = {**batch_to_device(batch, META), "timestamps": batch["timestamps"].to(META)}
        with DeviceReads() as counter:
            model(on_device)
        moved_reads[tokens] = counter.reads
    assert max(reads) >= 16 and min(reads) <= 4, reads
    assert all(r == [] for r in reads.values()), reads
    assert all(r == [("copy to host", (2, 4))] for r in moved_reads.values()), moved_reads  # timestamps [B, T]


def test_padded_frames_are_read_where_they_lie():
    """A frame mask with padding stays a mask, on the host (checked there, then moved without waiting); one without
    becomes None."""
    model = tiny_model("contrastive")
    padded = make_batch(model, num_frames=4, pad_last=True)
    moved = batch_to_device(padded, META)
    assert moved["frame_mask"] is not None and moved["frame_mask"].device.type == "cpu"
    assert moved["video"].device == META
    assert batch_to_device(make_batch(model, num_frames=4, pad_last=False), META)["frame_mask"] is None
    video = padded["video"].to(META)
    model.to(META)
    counter = DeviceReads()
    with counter:
        model.encode_video(video, padded["frame_mask"])  # a host mask: checked there, no read of the device
    assert counter.reads == [] and counter.copies == []


@pytest.mark.parametrize("tubelet", [1, 2])
def test_a_padded_clip_longer_than_the_position_table_is_not_read_back(tubelet):
    """Clips longer than the temporal table (resampled per real length): the lengths come from the host mask."""
    from vidvlm.models.vision import VideoViT, VisionConfig

    cfg = VisionConfig(
        image_size=16, patch_size=8, width=16, depth=1, num_heads=2, num_tubelets=2, tubelet_size=tubelet
    )
    model = VideoViT(cfg).to(META)
    mask = torch.tensor([[True] * 6 + [False] * 4, [True] * 10])
    counter = DeviceReads()
    with counter:
        out = model(torch.randn(2, 10, 3, 16, 16, device=META), frame_mask=mask)
    assert out.last_hidden_state.shape[1] == 10 // tubelet
    assert counter.reads == [] and counter.copies == [], (counter.reads, counter.copies)


@pytest.mark.parametrize(
    "pooler",
    [
        PoolerConfig("adaptive3d", {"output_size": [2, 1, 1], "num_prefix_tokens": 1}),
        PoolerConfig("tome", {"r": 1, "scope": "video"}),
    ],
)
def test_poolers_that_list_real_frames_take_the_host_mask(pooler):
    """A pooler whose output depends on each clip's real frames lists them on the host: the front-end hands it the
    mask from there, so a padded batch costs no read."""
    cfg = tiny_config("contrastive")
    cfg = dataclasses.replace(cfg, front_end=dataclasses.replace(cfg.front_end, pooler=pooler, pool_input="tokens"))
    torch.manual_seed(0)
    model = build_model(cfg)
    model.prepare_for_training(["a red circle", "a blue square"])
    assert model.front_end.pooler.lists_frames
    counter = _training_step(model, make_batch(model, num_frames=4, pad_last=True))
    assert counter.reads == [] and counter.copies == [], (counter.reads, counter.copies)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_padded_batch_is_not_read_back(family):
    """Clips of different lengths (stills among clips, as image-video mixtures make): the step neither reads the
    device nor copies to it with a wait. LLaVA lays out its sequences with the token mask the front-end made on the
    host."""
    model = tiny_model(family)
    counter = _training_step(model, make_batch(model, num_frames=4, pad_last=True))
    assert counter.reads == [] and counter.copies == [], (family, counter.reads, counter.copies)


@pytest.mark.parametrize("family", ["contrastive", "coca"])
def test_a_padded_batch_of_tubelets_is_not_read_back(family):
    """Two-frame tubelets: padded frames are filled with the last real one on the device, without reading the mask
    (as the generative recipe's stills among clips)."""
    tower = tiny_config(family).front_end.tower
    tower = dataclasses.replace(tower, vision=dataclasses.replace(tower.vision, tubelet_size=2, num_tubelets=2))
    model = tiny_model(family, tower=tower)
    counter = _training_step(model, make_batch(model, num_frames=4, pad_last=True))
    assert counter.reads == [] and counter.copies == [], (family, counter.reads, counter.copies)


@pytest.mark.gpu
@pytest.mark.parametrize("pad_last", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_a_cuda_training_step_does_not_synchronise(family, pad_last):
    """What the counts on ``meta`` stand for, where it matters: torch's sync debug mode warns at every call that
    makes the host wait for the GPU (reads, blocking copies, and waits in ops' own host code, which ``meta`` cannot
    see: its ops have their own shape functions). One step after a warm-up one, the batch in pinned memory as
    the trainer's loader makes it on CUDA: none."""
    model = tiny_model(family).cuda().train()
    batch = make_batch(model, num_frames=4, pad_last=pad_last)
    batch = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def step():
        random.seed(0)
        out = model(batch_to_device(batch, torch.device("cuda")))
        sum(v for k, v in out.items() if k.endswith("_loss")).backward()

    step()  # first calls: lazy initialisation (libraries, kernels) is not the step's doing
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)]
    assert syncs == [], (family, syncs)


@pytest.fixture(scope="module")
def tower_kinds(tmp_path_factory):
    return tower_configs(make_sources(tmp_path_factory.mktemp("sources")))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FRONT_END_FAMILIES)
def test_every_tower_kind_takes_a_padded_mask_from_the_host(family, kind, tower_kinds):
    """Each family on each kind of front-end tower (native, pretrained, frame-wise, ensembles, multi-level), on a
    padded batch as the trainer hands it over (the mask on the host, the clips on the device): no device mixed,
    nothing waited for; content token dropping too, which fills tubelets from the host mask."""
    for drop in (None, {"ratio": 0.5, "kind": "content"}):
        model = tiny_model(family, tower=tower_kinds[kind])
        if drop is not None:
            if not model.front_end.can_drop_tokens:
                continue  # dropping needs a tower that encodes chosen tokens (a video ViT)
            try:
                model.front_end.set_token_drop(TokenDropConfig(**drop))
            except ConfigError:
                continue  # the family's pooler reads the whole patch grid (coca, prefix_lm): no dropping there
        counter = _training_step(model, make_batch(model, num_frames=4, pad_last=True))
        assert counter.reads == [] and counter.copies == [], (kind, drop, counter.reads, counter.copies)


@pytest.mark.parametrize("family", ["flava", "xfm"])
def test_masked_modelling_objectives_take_a_padded_mask_from_the_host(family):
    """The objectives the tiny configs leave off (masked video, multimodal and text-guided video modelling; the box
    of the described shape) on a padded batch with the mask on the host: nothing mixed, nothing waited for."""
    cfg = dataclasses.replace(tiny_config(family), mvm_weight=1.0, mmm_weight=1.0, tmim_weight=1.0, bbox_weight=1.0)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.prepare_for_training(["a red square moves left", "a blue circle moves right", "a green triangle bounces"])
    batch = make_batch(model, num_frames=4, pad_last=True)
    batch["boxes"] = torch.rand(2, 4, 4).sort(-1).values  # [B, T, 4] boxes (x0 <= y0 <= x1 <= y1 suffices here)
    counter = _training_step(model, batch)
    assert counter.reads == [] and counter.copies == [], (family, counter.reads, counter.copies)


@pytest.mark.parametrize("kind", [*KINDS, "native_tubelets", "native_keyframe"])
def test_the_masks_made_on_the_host_are_the_towers_own(kind, tower_kinds):
    """A padded mask given on the host: the tower's step mask and the front-end's token mask are also made there
    (the layout LLaVA reads), and they equal what the tower and the pooler compute from the mask it moved over, for
    every tower kind (tubelets and a keyframe step too) and each family's pooler. On the CPU both are values."""
    if kind.startswith("native_"):
        extra = {"tubelet_size": 2, "num_tubelets": 2, "keyframe_stream": kind == "native_keyframe"}
        tower = TowerConfig("native", native_vision(**extra))
    else:
        tower = tower_kinds[kind]
    for family in FRONT_END_FAMILIES:
        model = tiny_model(family, tower=tower).eval()
        batch = make_batch(model, num_frames=4, pad_last=True)
        batch["frame_mask"][0, 1:] = False  # a still and a clip one frame short
        with torch.no_grad():
            out = model.front_end(batch["video"], batch["frame_mask"])
        vision = out.vision
        assert vision.host_frame_mask is not None and out.host_mask is not None, (kind, family)
        assert torch.equal(vision.host_frame_mask, vision.frame_mask), (kind, family)
        num_tokens = 1 if model.front_end.cfg.pool_input == "frame" else vision.last_hidden_state.shape[2]
        assert torch.equal(out.host_mask, model.front_end.pooler.output_mask(vision.frame_mask, num_tokens))
        assert not bool(vision.host_frame_mask.all()), (kind, family)  # the still's padding shows
