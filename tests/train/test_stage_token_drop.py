"""A stage's own ``token_drop`` (FLIP: train on a fraction of the tokens, then a short unmasked stage)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from train_tiny import make_cfg

from vidvlm.errors import ConfigError
from vidvlm.layers.pooling import PoolerConfig
from vidvlm.models.frontend import FrontEndConfig, TokenDropConfig, TowerConfig, VideoFrontEnd
from vidvlm.models.vision import VisionConfig
from vidvlm.train.trainer import Trainer


class DropModel(nn.Module):
    """A real front-end (16 patches per tubelet) and a linear head; records the visible patches of each step."""

    def __init__(self, ratio: float = 0.0, pooler: str = "video_chatgpt") -> None:
        super().__init__()
        vision = VisionConfig(image_size=8, patch_size=2, width=16, depth=1, num_heads=2, num_tubelets=1)
        cfg = FrontEndConfig(
            tower=TowerConfig(vision=vision),
            num_frames=1,
            pooler=PoolerConfig(pooler, {"num_prefix_tokens": 1}),
            token_drop=TokenDropConfig(ratio),
        )
        self.front_end = VideoFrontEnd(cfg)
        self.head = nn.Linear(16, 4)
        self.visible: list[int] = []

    def forward(self, batch: dict) -> dict:
        out = self.front_end(batch["video"])
        self.visible.append(out.vision.last_hidden_state.shape[2] - 1)  # minus the class token
        logits = self.head(out.tokens.mean(1))
        return {"ce_loss": nn.functional.cross_entropy(logits, batch["label"]), "logits": logits}


class Clips(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        return {"video": torch.randn(1, 3, 8, 8, generator=g), "label": i % 4}


def _collate(samples: list[dict]) -> dict:
    return {"video": torch.stack([s["video"] for s in samples]), "label": torch.tensor([s["label"] for s in samples])}


def _train(tmp_path, stages: str, model: DropModel) -> Trainer:
    torch.manual_seed(0)
    trainer = Trainer(make_cfg(tmp_path, [stages]), model=model, datasets={"a": Clips()}, collate_fn=_collate)
    trainer.train()
    return trainer


def test_each_stage_drops_its_own_share_and_the_model_keeps_its_config(tmp_path):
    model = DropModel(ratio=0.0)
    stages = (
        "stages=[{name: flip, steps: 3, token_drop: {ratio: 0.75}}, {name: half, steps: 2, token_drop: "
        "{ratio: 0.5, kind: tube}}, {name: unmasked, steps: 2, token_drop: {ratio: 0.0}}, {name: own, steps: 1}]"
    )
    _train(tmp_path, stages, model)
    train_steps = model.visible[:8]  # evaluation forwards (if any) come after the training steps
    assert train_steps == [4, 4, 4, 8, 8, 16, 16, 16]
    assert model.front_end.cfg.token_drop == TokenDropConfig(0.0)  # the saved config is the model's, not a stage's


def test_a_stage_without_token_drop_uses_the_models(tmp_path):
    model = DropModel(ratio=0.5)
    _train(tmp_path, "stages=[{name: a, steps: 2, token_drop: {ratio: 0}}, {name: b, steps: 2}]", model)
    assert model.visible[:4] == [16, 16, 8, 8]


@pytest.mark.parametrize(
    ("drop", "pooler", "message"),
    [
        ("{ratio: 1.5}", "video_chatgpt", r"stage 'a': token_drop.ratio: must lie in \[0, 1\)"),
        ("{ratio: 0.5, kind: blocks}", "video_chatgpt", "stage 'a': token_drop.kind"),
        ("{ratio: 0.5, size: 2}", "video_chatgpt", "stage 'a': token_drop: unknown key 'size'"),
        ("{ratio: 0.5}", "spatial2d", "stage 'a': token_drop: pooler 'spatial2d' reads the full patch grid"),
        ("{ratio: 0.5, kind: content, at_eval: true}", "video_chatgpt", "stage 'a': token_drop: at_eval belongs"),
    ],
)
def test_a_bad_stage_token_drop_is_refused_before_training(tmp_path, drop, pooler, message):
    model = DropModel(pooler=pooler)
    stages = f"stages=[{{name: b, steps: 1}}, {{name: a, steps: 1, token_drop: {drop}}}]"
    with pytest.raises(ConfigError, match=message):
        _train(tmp_path, stages, model)
    assert model.visible == []  # refused before the first stage ran
