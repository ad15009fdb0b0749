"""A training step does not read the accelerator back on the host (contract, every registered family).

Each ``.item()``, ``bool(t)``, ``.tolist()`` or ``.cpu()`` of a tensor on a GPU makes the host wait until the GPU has
run everything queued before it; the GPU then idles while the host queues the next kernels. A few such reads per
step cost little; one per visual token costs the step. The trainer reads once per step (the skip decision and the
gradient norm), and the families' forward and backward should add nothing to that.

Measured without a GPU: the model and the batch go to the ``meta`` device, where tensors have shapes and no data.
:class:`~tests.models.device_reads.DeviceReads` counts every op that would read one back and hands back a stand-in
so the step goes on. ``benchmarks/meta_step.py`` does the same for every stage of a training config.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from tests.models.device_reads import META, DeviceReads
from tests.models.test_registry import FAMILIES, make_batch, tiny_config, tiny_model
from vidvlm.layers.pooling import PoolerConfig
from vidvlm.models.registry import build_model
from vidvlm.train.trainer import _to_device


def _training_step_reads(model, batch: dict) -> list[tuple[str, tuple[int, ...]]]:
    """The reads of one forward and backward of ``model`` on ``batch``, moved to the device as the trainer does."""
    model.train().to(META)
    random.seed(0)
    counter = DeviceReads()
    with counter:
        out = model(_to_device(batch, META))
        sum(v for k, v in out.items() if k.endswith("_loss")).backward()
    return counter.reads


@pytest.mark.parametrize("family", FAMILIES)
def test_training_step_reads_nothing_back_from_the_device(family):
    """Every registered family (a new one too): see docs/adding_a_family.md. LLaVA with frame times reads the
    clips' timestamps, once per batch (the next test)."""
    model = tiny_model(family)
    batch = make_batch(model, num_frames=4, pad_last=False)  # captions of different lengths: padded text
    assert _training_step_reads(model, batch) == [], family


def test_llava_reads_per_batch_not_per_visual_token():
    """The layout of a LLaVA sequence with frame times reads the timestamps once per batch (the front-end makes the
    tokens' frame index on the host): 16 visual tokens a clip read no more than 1."""
    counts = {}
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
        counts[tokens] = len(_training_step_reads(model, batch))
    assert max(counts) >= 16 and min(counts) <= 4, counts
    assert set(counts.values()) == {1}, counts  # the timestamps, [B, T]


def test_padded_frames_are_read_where_they_lie():
    """A frame mask with padding stays a mask (checked on the host, then moved); one without becomes None."""
    model = tiny_model("contrastive")
    padded = make_batch(model, num_frames=4, pad_last=True)
    assert _to_device(padded, META)["frame_mask"] is not None
    assert _to_device(make_batch(model, num_frames=4, pad_last=False), META)["frame_mask"] is None
    video = padded["video"].to(META)
    model.to(META)
    counter = DeviceReads()
    with counter:
        model.encode_video(video, padded["frame_mask"])  # a host mask: checked there, no read of the device
    assert counter.reads == []
