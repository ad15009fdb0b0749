"""The pretrained-backbone family end to end through tools/train.py: two stages (connector, then connector + LoRA) on
generated moving shapes with a tiny random LM, the loss falls, --resume is exact, the run stores only what it
trained, and the saved run answers a question through tools/caption_video.py."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from tests.models.tiny_lm import make_tiny_lm

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import caption_video as caption_cli  # noqa: E402  (tools/ is not a package)
import chat_video as chat_cli  # noqa: E402
import export_llava as export_cli  # noqa: E402
import train as train_cli  # noqa: E402

pytest.importorskip("peft")

CONFIG = """
output_dir: {out}
seed: 0
model:
  family: llava
  front_end:
    num_frames: 4
    image_size: 32
    freeze_tower: true
    tower:
      name: native
      vision: {{image_size: 32, patch_size: 16, width: 32, depth: 1, num_heads: 2, num_tubelets: 4}}
    pooler: {{name: spatial2d, params: {{size: 1, num_prefix_tokens: 1}}}}
    connector: {{name: mlp}}
  lm:
    source: {lm}
    lora: {{r: 4, alpha: 8, target_modules: [q_proj, v_proj]}}
  max_length: 64
  caption_prompt: describe the video.
data:
  synthetic:
    out_dir: {data}
    sets:
      train: {{num: 8, seed: 0, split: train, frames: 4, size: 32}}
  datasets:
    shapes: {{manifest: {data}/train/manifest.jsonl}}
  batch_size: 4
  sampler: {{name: uniform}}
  transform: {{scale: [1.0, 1.0], ratio: [1.0, 1.0]}}
optim: {{lr: 0.03, weight_decay: 0.0}}
stages:
  - {{name: align, steps: 4, trainable: ["front_end.connector.*"]}}
  - {{name: instruct, steps: 8, trainable: ["front_end.connector.*", "*.lora_*"]}}
checkpoint_every: 6
keep_checkpoints: 3
log_every: 1
trackers: []
eval: {{retrieval: false}}
"""


def _losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "grad_norm" in r}


@pytest.mark.timeout(300)
def test_llava_trains_resumes_and_answers(tmp_path, capsys):
    lm = make_tiny_lm(tmp_path / "lms")
    data, full = tmp_path / "shapes", tmp_path / "full"
    config = tmp_path / "llava.yaml"
    config.write_text(CONFIG.format(out=full, lm=lm, data=data))
    assert train_cli.main(["--config", str(config)]) == 0
    losses = _losses(full)
    assert sorted(losses) == list(range(1, 13))
    first, last = sum(losses[s] for s in (1, 2, 3)) / 3, sum(losses[s] for s in (10, 11, 12)) / 3
    assert last < 0.8 * first, losses

    # only what trained is stored: the connector and the LoRA adapters, no base LM or frozen tower weight
    with safe_open(str(full / "final" / "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())  # noqa: SIM118 (safe_open is not iterable)
    assert any(".lora_" in k for k in keys) and any(k.startswith("front_end.connector.") for k in keys)
    assert not any(k.startswith("lm.") and ".lora_" not in k for k in keys)

    # resume from the step-6 checkpoint (inside the second stage) in a fresh folder: the same losses after it
    part = tmp_path / "part"
    part.mkdir()
    shutil.copytree(full / "checkpoint-00000006", part / "checkpoint-00000006")
    config_part = tmp_path / "part.yaml"
    config_part.write_text(CONFIG.format(out=part, lm=lm, data=data))
    assert train_cli.main(["--config", str(config_part), "--resume"]) == 0
    resumed = _losses(part)
    assert sorted(resumed) == list(range(7, 13))
    assert [resumed[s] for s in resumed] == pytest.approx([losses[s] for s in resumed], rel=1e-5)

    capsys.readouterr()
    clip = data / "train" / "train_00000.mp4"
    args = [str(clip), "--model", str(full / "final"), "--question", "what color is it?", "--format", "json"]
    assert caption_cli.main([*args, "--no-progress"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    answer = row["segments"][0]["text"]
    assert answer.strip()

    # a multi-turn chat: two questions, two answers
    # (the clip goes through the tower once for both turns)
    from vidvlm.models.frontend import VideoFrontEnd

    passes, forward = [], VideoFrontEnd.forward
    counting = lambda self, *a, **k: passes.append(1) or forward(self, *a, **k)  # noqa: E731
    chat = [str(clip), "--model", str(full / "final"), "--question", "what color is it?", "--question", "and its size?"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(VideoFrontEnd, "forward", counting)
        assert chat_cli.main(chat) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Q: what color is it?\nA: {answer}\nQ: and its size?\nA: ")
    assert len(passes) == 1

    # export: LoRA merged, the LM inside; it answers the same with the base LM gone
    assert export_cli.main([str(full / "final"), "--out", str(tmp_path / "standalone")]) == 0
    assert export_cli.main([str(full / "final"), "--out", str(tmp_path / "standalone")]) == 2  # exists
    shutil.move(lm, tmp_path / "elsewhere")
    capsys.readouterr()
    assert caption_cli.main([*args[:2], str(tmp_path / "standalone"), *args[3:], "--no-progress"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["segments"][0]["text"] == answer
    # the run itself names its base LM, now missing: a one-line error
    assert caption_cli.main([*args, "--no-progress"]) == 2
    assert "lm.source" in capsys.readouterr().err


def test_chat_refuses_a_family_that_cannot_chat(tmp_path, capsys):
    from vidvlm.data.synthetic import make_synthetic

    make_synthetic(tmp_path, 1, seed=3, frames=4, size=32)
    assert chat_cli.main([str(tmp_path / "train_00000.mp4"), "--model", "vidvlm/assets/default_captioner",
                          "--question", "what?"]) == 2  # fmt: skip
    assert "family 'coca' cannot hold a multi-turn conversation" in capsys.readouterr().err


def test_instruction_manifests_reach_the_family(tmp_path):
    """A manifest with conversations (make_synthetic(conversations=True)) gives the llava family its turns."""
    import torch

    from vidvlm.data.collate import collate_video_text
    from vidvlm.data.datasets import VideoTextDataset
    from vidvlm.data.sampling import SamplerConfig, build_sampler
    from vidvlm.data.synthetic import make_synthetic
    from vidvlm.models.llava import LanguageModelConfig, LlavaConfig, LlavaModel
    from vidvlm.models.prompting import IGNORE

    manifest = make_synthetic(tmp_path / "qa", 2, seed=0, frames=4, size=32, conversations=True)
    torch.manual_seed(0)
    model = LlavaModel(LlavaConfig.tiny(lm=LanguageModelConfig(source=str(make_tiny_lm(tmp_path / "lms"))))).eval()
    dataset = VideoTextDataset(manifest, build_sampler(SamplerConfig(num_frames=4)), model.transform)
    batch = collate_video_text([dataset[0], dataset[1]])
    assert batch["conversation"] == [dataset.rows[i].extra["conversation"] for i in range(2)]
    inputs = model.prepare_inputs(batch["conversation"], batch["video"], batch["frame_mask"])
    answers = [[t["content"] for t in conv if t["role"] == "assistant"] for conv in batch["conversation"]]
    tok = model.tokenizer.hf
    for row, texts in zip(inputs["labels"], answers, strict=True):
        expected = [i for a in texts for i in tok(a + "<|im_end|>", add_special_tokens=False)["input_ids"]]
        assert row[row != IGNORE].tolist() == expected


def test_a_batch_of_captions_and_conversations_trains_both(tmp_path):
    """Caption-only and instruction samples in one batch: each keeps its own turns (a caption becomes the answer to
    the caption prompt), so a mixture of the two kinds of manifest trains on both."""
    import torch

    from vidvlm.data.collate import collate_video_text
    from vidvlm.data.datasets import VideoTextDataset
    from vidvlm.data.sampling import SamplerConfig, build_sampler
    from vidvlm.data.synthetic import make_synthetic
    from vidvlm.models.llava import LanguageModelConfig, LlavaConfig, LlavaModel

    torch.manual_seed(0)
    model = LlavaModel(LlavaConfig.tiny(lm=LanguageModelConfig(source=str(make_tiny_lm(tmp_path / "lms")))))
    sampler = build_sampler(SamplerConfig(num_frames=4))
    qa = VideoTextDataset(make_synthetic(tmp_path / "qa", 1, seed=0, frames=4, size=32, conversations=True), sampler,
                          model.transform)  # fmt: skip
    caps = VideoTextDataset(make_synthetic(tmp_path / "caps", 1, seed=1, frames=4, size=32), sampler, model.transform)
    batch = collate_video_text([qa[0], caps[0]])
    assert batch["conversation"] == [qa.rows[0].extra["conversation"], None]
    turns = model._conversations(batch)
    assert turns[0] == qa.rows[0].extra["conversation"]
    assert turns[1] == [{"role": "user", "content": "<video>\n" + model.config.caption_prompt},
                        {"role": "assistant", "content": caps.rows[0].captions[0]}]  # fmt: skip
    assert torch.isfinite(model(batch)["lm_loss"])
