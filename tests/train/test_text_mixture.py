"""Text-only datasets in a mixture: homogeneous batches in the stated proportions, the text-only batch contract, the
refusal of families without the ability, and a llava run whose loss on text-only batches falls."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.train.train_tiny import TinyDataset, TinyModel, collate, make_cfg
from vidvlm.data.collate import collate_video_text
from vidvlm.data.text_corpus import TextCorpusDataset
from vidvlm.errors import ConfigError
from vidvlm.train.data import MixtureBatchSampler


def test_batches_keep_one_kind_in_the_stated_proportions():
    sizes, weights, kinds = [50, 30, 40], [1.0, 2.0, 1.0], ["text", "video", "video"]
    sampler = MixtureBatchSampler(sizes, weights, 4, seed=3, epoch=0, kinds=kinds)
    batches = [b for e in range(40) for b in MixtureBatchSampler(sizes, weights, 4, seed=3, epoch=e, kinds=kinds)]
    offsets = np.cumsum([0, *sizes])
    dataset = [[int(np.searchsorted(offsets, i, side="right") - 1) for i in b] for b in batches]
    assert all(len({kinds[d] for d in ds}) == 1 for ds in dataset)  # never a text sample beside a video
    text = sum(kinds[ds[0]] == "text" for ds in dataset) / len(dataset)
    assert abs(text - 0.25) < 0.04, text  # weight 1 of 4; 1200 batches: 3.5 standard deviations
    video = [d for ds in dataset if kinds[ds[0]] == "video" for d in ds]
    assert abs(video.count(1) / len(video) - 2 / 3) < 0.03  # within video batches, datasets by weight
    # the same (seed, epoch) gives the same batches; one kind keeps the plain draw of earlier runs
    assert list(sampler) == list(MixtureBatchSampler(sizes, weights, 4, seed=3, epoch=0, kinds=kinds))
    plain = MixtureBatchSampler(sizes[1:], weights[1:], 4, seed=3, epoch=0)
    assert list(plain) == list(MixtureBatchSampler(sizes[1:], weights[1:], 4, seed=3, epoch=0, kinds=kinds[1:]))


def test_text_corpus_batches_carry_no_video(tmp_path):
    path = tmp_path / "text.jsonl"
    conv = [{"role": "user", "content": "what is red?"}, {"role": "assistant", "content": "a colour"}]
    path.write_text(json.dumps({"text": "a red square"}) + "\n" + json.dumps({"text": "a blue circle"}) + "\n")
    data = TextCorpusDataset(path)
    batch = collate_video_text([data[0], data[1]])
    assert "video" not in batch and batch["text_only"] is True
    assert batch["text"] == ["a red square", "a blue circle"] and batch["conversation"] is None
    dialogues = tmp_path / "dialogues.jsonl"
    dialogues.write_text(json.dumps({"conversation": conv}) + "\n")
    assert collate_video_text([TextCorpusDataset(dialogues)[0]])["conversation"] == [conv]
    # one corpus, one kind: a conversation among sentences would be trained as a sentence, so it is refused
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(path.read_text() + json.dumps({"conversation": conv}) + "\n")
    with pytest.raises(ConfigError, match=r"mixed\.jsonl:3: a conversation row after sentence rows"):
        TextCorpusDataset(mixed)
    video = TinyDataset(4)[0]
    with pytest.raises(ValueError, match="1 text-only samples in a batch of videos"):
        collate_video_text([{**video, "captions": [], "timestamps": [0.0], "path": "v"}, data[0]])
    bad = tmp_path / "bad.jsonl"
    placeholder = {"conversation": [{**conv[0], "content": "<video>"}, conv[1]]}
    bad.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps(placeholder))
    with pytest.raises(ConfigError, match=r"bad\.jsonl:2: a text-only conversation cannot hold"):
        TextCorpusDataset(bad)


def test_a_family_without_the_ability_refuses_text_datasets(tmp_path):
    from vidvlm.train.trainer import Trainer

    (tmp_path / "t.jsonl").write_text('{"text": "a red square"}\n')
    cfg = make_cfg(tmp_path / "run", [f"data.datasets.words={{manifest: {tmp_path}/t.jsonl, kind: text}}"])
    with pytest.raises(ConfigError, match=r"^data\.datasets\.words: family 'tiny' cannot train on text-only batches"):
        Trainer(cfg, model=TinyModel(), datasets={"a": TinyDataset(8)}, collate_fn=collate)


def test_a_batch_that_reaches_no_trainable_parameter_is_named(tmp_path):
    from vidvlm.train.trainer import Trainer

    class Detached(TinyModel):
        def forward(self, batch: dict) -> dict:
            return {"ce_loss": super().forward(batch)["ce_loss"].detach()}

    cfg = make_cfg(tmp_path / "run", [])
    with pytest.raises(ConfigError, match=r"^stage 'all': the loss of a batch from \['a'\] reaches no trainable"):
        Trainer(cfg, model=Detached(), datasets={"a": TinyDataset(8)}, collate_fn=collate).train()


CONFIG = """
output_dir: {out}
seed: 0
model:
  family: llava
  front_end:
    num_frames: 4
    image_size: 32
    tower:
      name: native
      vision: {{image_size: 32, patch_size: 16, width: 32, depth: 1, num_heads: 2, num_tubelets: 4}}
    pooler: {{name: spatial2d, params: {{size: 1, num_prefix_tokens: 1}}}}
    connector: {{name: mlp}}
  lm: {{source: {lm}}}
  max_length: 64
data:
  synthetic:
    out_dir: {data}
    sets:
      clips: {{num: 8, seed: 0, split: train, frames: 4, size: 32}}
      words: {{num: 16, seed: 0, text: true}}
  datasets:
    shapes: {{manifest: {data}/clips/manifest.jsonl}}
    words: {{manifest: {data}/words/manifest.jsonl, kind: text}}
  mixture: {{shapes: 1, words: 1}}
  batch_size: 4
  sampler: {{name: uniform}}
optim: {{lr: 0.01, weight_decay: 0.0}}
stages:
  - {{name: all, steps: 30, trainable: ["front_end.connector.*", "lm.*"]}}
log_every: 1
trackers: []
eval: {{retrieval: false}}
"""


@pytest.mark.timeout(300)
def test_llava_trains_on_a_text_and_video_mixture(tmp_path):
    from tests.models.tiny_lm import make_tiny_lm
    from vidvlm.train.config import load_train_config
    from vidvlm.train.trainer import Trainer

    path = tmp_path / "mix.yaml"
    path.write_text(CONFIG.format(out=tmp_path / "run", lm=make_tiny_lm(tmp_path / "lms"), data=tmp_path / "data"))
    rows = [r for r in Trainer(load_train_config(path)).train() if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 31))
    kinds = [set(r["drawn"]) for r in rows]
    assert all(k in ({"shapes"}, {"words"}) for k in kinds)  # each step one kind
    text = [r["loss"] for r, k in zip(rows, kinds, strict=True) if k == {"words"}]
    assert 8 <= len(text) <= 22  # about half of 30 steps (seeded: the count is fixed)
    assert np.mean(text[-3:]) < 0.7 * np.mean(text[:3]), text


@pytest.mark.timeout(240)
def test_two_processes_train_on_a_text_and_video_mixture(tmp_path):
    """Under DDP a text-only step leaves the trainable connector without gradients: both ranks must go on."""
    from tests.models.tiny_lm import make_tiny_lm

    path = tmp_path / "mix.yaml"
    config = CONFIG.format(out=tmp_path / "run", lm=make_tiny_lm(tmp_path / "lms"), data=tmp_path / "data")
    path.write_text(config.replace("steps: 30", "steps: 8"))
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    train = Path(__file__).resolve().parents[2] / "tools" / "train.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(train)]
    proc = subprocess.run([*cmd, "--config", str(path)], env=env, capture_output=True, text=True, timeout=200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 9)) and {r["world_size"] for r in rows} == {2}
    kinds = [set(r["drawn"]) for r in rows]
    assert {"words"} in kinds and {"shapes"} in kinds  # text-only steps and video steps, one after the other
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
