"""The training loop: exact resume, non-finite handling, stages, accumulation, mixtures, metrics."""

from __future__ import annotations

import json

import pytest
import torch
from train_tiny import TinyDataset, TinyModel, collate, make_cfg

from vidvlm.train.checkpoint import list_checkpoints
from vidvlm.train.data import MixtureBatchSampler
from vidvlm.train.trainer import NonFiniteLossError, Trainer


def _trainer(out, overrides=None, model=None, datasets=None, **top):
    torch.manual_seed(0)
    cfg = make_cfg(out, overrides, **top)
    return Trainer(cfg, model=model or TinyModel(), datasets=datasets or {"a": TinyDataset(24)}, collate_fn=collate)


def _losses(history):
    return [(m["step"], m["loss"]) for m in history if "loss" in m and "grad_norm" in m]


@pytest.mark.parametrize("accum", [1, 2])
def test_resume_is_exact(tmp_path, accum):
    # 24 samples / batch 4 = 6 batches per epoch (3 steps with accum 2): the run crosses epochs and resumes mid-epoch.
    stages = ["stages=[{name: a, steps: 5}, {name: b, steps: 4, trainable: [head], lr: 0.01}]"]
    top = {"grad_accum": accum, "checkpoint_every": 2, "keep_checkpoints": 10}
    full = _trainer(tmp_path / "full", stages, **top).train()
    _trainer(tmp_path / "part", stages, **top).train()
    # interrupt: keep only checkpoint 4 (mid stage a) and 6 (stage b), resume from each
    for at in (4, 6):
        resumed = _trainer(tmp_path / "part", stages, **top).train(resume=tmp_path / "part" / f"checkpoint-{at:08d}")
        expected = [x for x in _losses(full) if x[0] > at]
        got = _losses(resumed)
        assert [s for s, _ in got] == [s for s, _ in expected]
        assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-6, abs=1e-7)
    a = TinyModel()
    b = TinyModel()
    from safetensors.torch import load_model

    load_model(a, str(tmp_path / "full" / "final" / "model.safetensors"))
    load_model(b, str(tmp_path / "part" / "final" / "model.safetensors"))
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=n)


def test_resume_auto_and_missing(tmp_path):
    t = _trainer(tmp_path, checkpoint_every=3)
    t.train()
    # 10 steps instead of 8 changes the schedule: a changed config is refused unless forced
    with pytest.raises(ValueError, match=r"stages\.0\.steps: 8 -> 10.*--force-resume"):
        _trainer(tmp_path, ["stages.0.steps=10"], checkpoint_every=3).train(resume="auto")
    resumed = _trainer(tmp_path, ["stages.0.steps=10"], checkpoint_every=3).train(resume="auto", force_resume=True)
    assert [m["step"] for m in resumed if "grad_norm" in m] == [7, 8, 9, 10]  # latest is checkpoint 6
    with pytest.raises(ValueError, match="no complete checkpoint"):
        _trainer(tmp_path / "empty").train(resume="auto")


def test_nonfinite_skip(tmp_path):
    # sample 5 makes the loss NaN: steps whose batch holds it are skipped, parameters stay finite
    t = _trainer(tmp_path, model=TinyModel(nan_at_step_index=5), nonfinite="skip")
    hist = t.train()
    skipped = [m for m in hist if m.get("skipped")]
    assert len(skipped) >= 1 and skipped[-1]["skipped_steps"] == len(skipped)
    assert all(torch.isfinite(p).all() for p in t.acc.unwrap_model(t.model).parameters())
    assert (tmp_path / "final" / "model.safetensors").is_file()


def test_nonfinite_stop_writes_checkpoint(tmp_path):
    t = _trainer(tmp_path, model=TinyModel(nan_at_step_index=5), nonfinite="stop")
    with pytest.raises(NonFiniteLossError, match="non-finite loss.*step") as e:
        t.train()
    ckpts = list_checkpoints(tmp_path)
    assert ckpts and str(ckpts[-1]) in str(e.value)
    for p in t.acc.unwrap_model(t.model).parameters():
        assert torch.isfinite(p).all()


def test_stage_switch_changes_trainable(tmp_path):
    stages = ["stages=[{name: connector, steps: 2, trainable: [head]}, {name: all, steps: 2, frozen: [norm]}]"]
    t = _trainer(tmp_path, stages)
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    seen = []
    orig = Trainer._run_stage

    def spy(self, stage, resume_dir, bar):
        orig(self, stage, resume_dir, bar)
        raw = self.acc.unwrap_model(self.model)
        seen.append(sorted(n for n, p in raw.named_parameters() if p.requires_grad))
        if len(seen) == 1:  # after stage 1 only the head has moved
            now = {k: v.cpu() for k, v in raw.state_dict().items()}
            assert torch.equal(now["encoder.weight"], before["encoder.weight"])
            assert not torch.equal(now["head.weight"], before["head.weight"])

    Trainer._run_stage = spy
    try:
        t.train()
    finally:
        Trainer._run_stage = orig
    assert seen == [["head.bias", "head.weight"], ["encoder.bias", "encoder.weight", "head.bias", "head.weight"]]
    after = {k: v.cpu() for k, v in t.acc.unwrap_model(t.model).state_dict().items()}
    assert torch.equal(after["norm.weight"], before["norm.weight"])
    assert not torch.equal(after["encoder.weight"], before["encoder.weight"])


def test_bad_stage_patterns_are_all_listed_before_training(tmp_path):
    stages = [
        "stages=[{name: x, steps: 1, trainable: [hed, 'enc*']}, {name: y, steps: 1, frozen: ['*.lora_*'],"
        " lr_mult: {nrm: 2.0}}]"
    ]
    with pytest.raises(ValueError, match="match no parameter") as e:
        _trainer(tmp_path, stages).train()
    message = str(e.value)
    for wrong in ("trainable 'hed'", "frozen '*.lora_*'", "lr_mult 'nrm'"):
        assert wrong in message
    assert "'enc*'" not in message  # a glob that selects encoder.* is fine
    assert "stage 'x'" in message and "stage 'y'" in message
    assert not (tmp_path / "train_config.yaml").exists()  # refused before anything was written


def test_train_step_is_one_optimiser_step(tmp_path):
    t = _trainer(tmp_path, grad_accum=2)
    calls = []
    orig = Trainer._train_step

    def spy(self, *args):
        result = orig(self, *args)
        calls.append((self.state.step, result.drawn, result.replaced, result.skipped))
        return result

    Trainer._train_step = spy
    try:
        t.train()
    finally:
        Trainer._train_step = orig
    # 8 steps, each 2 micro-batches of 4 samples of dataset "a", counted before the step counter moves
    assert calls == [(s, [8], [0], False) for s in range(8)]
    assert t.state.drawn_by_dataset == {"a": 64} and t.state.replaced_by_dataset == {"a": 0}


def test_no_private_library_attributes():
    # accelerate's and torch's private state (acc._optimizers, scheduler._last_lr) is not part of their contract
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "vidvlm" / "train"
    pattern = re.compile(r"\b(acc|accelerator|self\.acc|scheduler|optimizer)\._[a-z]\w*")
    found = [f"{p.name}: {m.group(0)}" for p in sorted(root.glob("*.py")) for m in pattern.finditer(p.read_text())]
    assert found == []


def test_metrics_jsonl_and_grad_checkpointing(tmp_path):
    model = TinyModel()
    t = _trainer(tmp_path, model=model, log_every=2, grad_checkpointing=True)
    t.train()
    assert model.grad_ckpt
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6, 8]
    assert {"loss", "ce_loss", "aux_loss", "lr", "grad_norm", "replaced_samples", "world_size"} <= set(rows[0])
    assert rows[0]["loss"] == pytest.approx(rows[0]["ce_loss"] + rows[0]["aux_loss"], rel=1e-5)
    # warm-up of 2 steps then cosine to 0.1 * lr: the lr peaks at step 2 and decays
    lrs = [r["lr"] for r in rows]
    assert lrs[0] == pytest.approx(0.05) and lrs == sorted(lrs, reverse=True)


def test_replaced_samples_are_counted(tmp_path):
    class Flaky(TinyDataset):
        def __getitem__(self, i):
            s = super().__getitem__(i)
            if i % 4 == 0:  # as the data layer marks a substituted (corrupt) sample
                s["replaced_from"] = i
            return s

    hist = _trainer(tmp_path, ["data.max_bad_fraction=1.0"], datasets={"a": Flaky(24)}).train()
    # 8 steps of 4 = 32 draws over 24 samples (6 of them flagged per epoch): 6 in epoch 0 + 2..? computed exactly:
    expected = 0
    for epoch in range(2):
        s = MixtureBatchSampler([24], [1.0], 4, seed=_stage_seed(0), epoch=epoch)
        idx = [i for b in s for i in b][: 32 - 24 * epoch]
        expected += sum(1 for i in idx if i % 4 == 0)
    assert hist[-1]["replaced_samples"] == expected > 0


def _stage_seed(stage):
    from vidvlm.train.data import mix_seed as _mix_seed

    return _mix_seed(0, stage)


def test_mixture_sampler():
    a = MixtureBatchSampler([10, 30], [1.0, 0.0], 2, seed=1, epoch=0)
    assert len(a) == 5 and all(i < 10 for b in a for i in b)
    assert sorted(i for b in a for i in b) == list(range(10))  # a permutation of the weighted dataset
    mix = MixtureBatchSampler([10, 30], [3.0, 1.0], 4, seed=1, epoch=0, rank=1, world_size=2)
    idx = [i for b in mix for i in b]
    assert len(idx) == 5 * 4 and sum(i < 10 for i in idx) > sum(i >= 10 for i in idx)
    r0 = [i for b in MixtureBatchSampler([40], [1.0], 4, seed=1, epoch=0, rank=0, world_size=2) for i in b]
    r1 = [i for b in MixtureBatchSampler([40], [1.0], 4, seed=1, epoch=0, rank=1, world_size=2) for i in b]
    assert not set(r0) & set(r1) and len(r0 + r1) == 40
    e1 = [i for b in MixtureBatchSampler([40], [1.0], 4, seed=1, epoch=1) for i in b]
    assert e1 != [i for b in MixtureBatchSampler([40], [1.0], 4, seed=1, epoch=0) for i in b]
    skip = MixtureBatchSampler([40], [1.0], 4, seed=1, epoch=1, start=3)
    assert [i for b in skip for i in b] == e1[12:]


def test_stage_mixture_selects_datasets(tmp_path):
    stages = ["stages=[{name: s, steps: 3, mixture: {b: 1.0}}]", "data.datasets.b={manifest: x.jsonl}"]
    seen = []
    t = _trainer(tmp_path, stages, datasets={"a": TinyDataset(24), "b": TinyDataset(24, offset=100)})
    orig = t.collate.collate_fn
    t.collate.collate_fn = lambda s: (seen.extend(x["index"] for x in s), orig(s))[1]
    t.train()
    assert len(seen) == 12 and all(i >= 100 for i in seen)


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_mixed_precision_runs_the_training_forward_under_autocast(tmp_path, precision):
    """``mixed_precision: bf16`` trains under bf16 autocast on the CPU too (2x faster steps on CPUs with AMX:
    BENCHMARKS.md), with float32 weights; ``no`` is plain float32."""
    model = TinyModel()
    seen = []
    model.encoder.register_forward_hook(lambda m, i, out: seen.append((out.dtype, model.training)))
    hist = _trainer(tmp_path, model=model, mixed_precision=precision).train()
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in hist if "loss" in m)
    assert not any(m.get("skipped") for m in hist)
    trained = {dtype for dtype, training in seen if training}
    assert trained == {torch.bfloat16 if precision == "bf16" else torch.float32}
    assert model.encoder.weight.dtype == torch.float32


def test_too_small_dataset_is_a_config_error(tmp_path):
    with pytest.raises(ValueError, match="cannot fill one global batch"):
        _trainer(tmp_path, datasets={"a": TinyDataset(3)}).train()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_mixed_precision_resume(tmp_path, precision):
    # fp16 goes through accelerate's GradScaler (its state is checkpointed as JSON); resume stays exact on the GPU
    top = {"mixed_precision": precision, "checkpoint_every": 4, "keep_checkpoints": 5}
    full = _trainer(tmp_path / "full", **top).train()
    t = _trainer(tmp_path / "full", **top)
    assert t.acc.device.type == "cuda"
    resumed = t.train(resume=tmp_path / "full" / "checkpoint-00000004")
    expected = [x for x in _losses(full) if x[0] > 4]
    got = _losses(resumed)
    assert [s for s, _ in got] == [s for s, _ in expected] == [5, 6, 7, 8]
    assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-5)
    skipping = _trainer(tmp_path / "nan", model=TinyModel(nan_at_step_index=5), **top).train()
    assert any(m.get("skipped") for m in skipping) and skipping[-1]["step"] == 8
    if precision == "fp16":
        state = json.loads((tmp_path / "full" / "checkpoint-00000008" / "trainer_state.json").read_text())
        assert state["scaler"] and state["scaler"]["scale"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp16_stage_switch_and_resume(tmp_path):
    # each stage is prepared afresh after accelerator.free_memory(): the GradScaler carries over, the previous
    # stage's optimizer is no longer unscaled or clipped, and resume across the switch stays exact
    stages = ["stages=[{name: a, steps: 4}, {name: b, steps: 4, trainable: [head]}]"]
    top = {"mixed_precision": "fp16", "checkpoint_every": 2, "keep_checkpoints": 5}
    full = _trainer(tmp_path / "full", stages, **top).train()
    assert [m["step"] for m in full if "grad_norm" in m] == list(range(1, 9))
    resumed = _trainer(tmp_path / "full", stages, **top).train(resume=tmp_path / "full" / "checkpoint-00000002")
    expected = [x for x in _losses(full) if x[0] > 2]
    got = _losses(resumed)
    assert [s for s, _ in got] == [s for s, _ in expected]
    assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-5)
    state = json.loads((tmp_path / "full" / "checkpoint-00000008" / "trainer_state.json").read_text())
    assert state["scaler"] and state["scaler"]["scale"] > 0


class BlockModel(TinyModel):
    """TinyModel with a transformer block between encoder and head (something for ``compile: true`` to compile)."""

    def __init__(self) -> None:
        super().__init__()
        from vidvlm.layers.transformer import TransformerBlock

        self.encoder = torch.nn.Linear(12, 3 * 16)
        self.block = TransformerBlock(16, 2)

    def forward(self, batch: dict) -> dict:
        tokens = self.block(self.encoder(batch["video"].flatten(1)).unflatten(1, (3, 16)))
        logits = self.head(self.norm(tokens.mean(1)))
        return {"ce_loss": torch.nn.functional.cross_entropy(logits, batch["label"])}


def test_compile_trains_like_eager_and_saves_the_same_keys(tmp_path):
    pytest.importorskip("torch._inductor")
    runs = {}
    for compile_ in (False, True):
        torch.manual_seed(0)
        t = _trainer(tmp_path / str(compile_), model=BlockModel(), compile=compile_)
        assert t.compiled_blocks == int(compile_)
        runs[compile_] = (_losses(t.train()), tmp_path / str(compile_) / "final" / "model.safetensors")
    (eager, eager_file), (compiled, compiled_file) = runs[False], runs[True]
    assert [s for s, _ in compiled] == [s for s, _ in eager] and len(eager) >= 3
    assert [v for _, v in compiled] == pytest.approx([v for _, v in eager], rel=1e-4)
    from safetensors.torch import load_file

    assert load_file(compiled_file).keys() == load_file(eager_file).keys()


def test_grad_checkpointing_reaches_towers():
    from vidvlm.train.trainer import _enable_grad_checkpointing

    outer = torch.nn.Module()
    outer.vision, outer.text = TinyModel(), torch.nn.Linear(2, 2)
    _enable_grad_checkpointing(outer)
    assert outer.vision.grad_ckpt


def test_model_init_follows_config_seed(tmp_path):
    # a model built from the config starts from the same weights for the same seed, and other weights for another
    from pathlib import Path
    from types import SimpleNamespace

    from vidvlm.config import load_config
    from vidvlm.train.config import TrainConfig

    config = Path(__file__).resolve().parents[2] / "configs" / "contrastive_tiny_1f_shapes.yaml"

    def initial(seed: int, before: int) -> dict[str, torch.Tensor]:
        cfg = load_config(TrainConfig, config, [f"output_dir={tmp_path / str(seed)}", f"seed={seed}", "data.val=null"])
        torch.manual_seed(before)  # the global RNG state before the trainer must not matter
        data = TinyDataset(8)
        data.rows = [SimpleNamespace(captions=["a big red square moves left", "a small blue circle moves up"])]
        t = Trainer(cfg, datasets={"a": data}, collate_fn=collate)  # the captions train the model's tokenizer
        return {k: v.clone() for k, v in t.model.state_dict().items()}

    a, b, c = initial(0, before=1), initial(0, before=2), initial(1, before=1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
