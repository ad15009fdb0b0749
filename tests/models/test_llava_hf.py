"""Import of a transformers LLaVA-NeXT-Video directory as the ``llava`` family, against transformers' own model and
processor on a tiny random model the test builds and saves: the same prompt ids, visual tokens, logits (1e-4, fp32)
and greedy tokens; a strict mapping (a missing or an unknown tensor is named); settings that cannot be reproduced
are refused by key."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import string
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import vidvlm
from vidvlm.errors import CheckpointError
from vidvlm.models.llava import LlavaModel
from vidvlm.models.llava_hf import import_llava_next_video

QUESTION = "what color is it?"
# A Vicuna-style processor template over typed contents, as LLaVA-NeXT-Video's processors have.
TEMPLATE = (
    "{% for m in messages %}{% if m['role'] != 'system' %}{{ m['role'].upper() + ': ' }}{% endif %}"
    "{% for c in m['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for c in m['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>\n' }}{% endfor %}"
    "{% for c in m['content'] | selectattr('type', 'equalto', 'text') %}{{ c['text'] + ' ' }}{% endfor %}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def llama_tokenizer():
    """A Llama-style BPE tokenizer (Metaspace, BOS added) with ``<video>`` / ``<image>`` tokens: text after a
    placeholder tokenizes differently from text at the start of a string, as with the real LLaVA tokenizers."""
    from transformers import LlamaTokenizer

    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", *"▁" + string.ascii_letters + ".,?!:'\n0123456789"])}
    merges = []
    for word in ("▁what", "▁color", "▁is", "▁it", "USER", "▁ASSISTANT", "▁red", "▁blue", "▁the"):
        for i in range(2, len(word) + 1):
            merges.append((word[: i - 1], word[i - 1]))
            vocab.setdefault(word[:i], len(vocab))
    tok = LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True)
    tok.add_special_tokens({"additional_special_tokens": ["<video>", "<image>"]})
    return tok


def make_hf_dir(path, layer=-2, pool="average", tower="clip"):
    """Save a tiny random LlavaNextVideoForConditionalGeneration with its processor under ``path`` (a CLIP tower with
    the ``default`` feature strategy, or a SigLIP tower, which has no class token, with ``full``)."""
    import transformers as tf
    from transformers.models.llava_next_video.video_processing_llava_next_video import LlavaNextVideoVideoProcessor

    tok = llama_tokenizer()
    side = {"shortest_edge": 32}, {"height": 32, "width": 32}
    strategy = "default" if tower == "clip" else "full"
    norm = {} if tower == "clip" else {"image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    processor = tf.LlavaNextVideoProcessor(
        video_processor=LlavaNextVideoVideoProcessor(size=side[0], crop_size=side[1], **norm),
        image_processor=tf.LlavaNextImageProcessor(size=side[0], crop_size=side[1], image_grid_pinpoints=[[32, 32]]),
        tokenizer=tok, chat_template=TEMPLATE, patch_size=8, vision_feature_select_strategy=strategy,
    )  # fmt: skip
    kinds = {"clip": tf.CLIPVisionConfig, "siglip": tf.SiglipVisionConfig}
    vision = kinds[tower](
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4
    )
    text = tf.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=len(tok), max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        initializer_range=0.2,
    )  # fmt: skip
    cfg = tf.LlavaNextVideoConfig(
        vision_config=vision, text_config=text, video_token_index=tok.convert_tokens_to_ids("<video>"),
        image_token_index=tok.convert_tokens_to_ids("<image>"), image_grid_pinpoints=[[32, 32]],
        vision_feature_layer=layer, vision_feature_select_strategy=strategy, spatial_pool_mode=pool,
        video_seq_length=4, image_seq_length=16,
    )  # fmt: skip
    torch.manual_seed(0)
    model = tf.LlavaNextVideoForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # a projector at the LM's scale, so the visual tokens change what it says
        for p in model.model.multi_modal_projector.parameters():
            p.normal_(std=0.5)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return make_hf_dir(tmp_path_factory.mktemp("hf") / "llava_next_video")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDVLM_CACHE", str(tmp_path / "cache"))


def frames(t: int = 3) -> torch.Tensor:
    """uint8 ``[T, 3, 32, 32]`` frames at the model's size (so both pipelines only rescale and normalise)."""
    return torch.randint(0, 256, (t, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))


def reference(directory, video, question=QUESTION):
    """transformers' model and processor: ``(inputs, model, processor)`` for one video and question."""
    from transformers import AutoProcessor, LlavaNextVideoForConditionalGeneration

    processor = AutoProcessor.from_pretrained(directory)
    model = LlavaNextVideoForConditionalGeneration.from_pretrained(directory).eval()
    conv = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(conv, add_generation_prompt=True)
    inputs = processor(text=prompt, videos=[video.permute(0, 2, 3, 1).numpy()], return_tensors="pt")
    return inputs, model, processor


@pytest.mark.parametrize(
    ("layer", "pool", "tower"), [(-2, "average", "clip"), ([-3, -1], "max", "clip"), (-2, "average", "siglip")]
)
def test_same_ids_logits_and_greedy_tokens_as_transformers(tmp_path, layer, pool, tower):
    directory = make_hf_dir(tmp_path / "hf", layer=layer, pool=pool, tower=tower)
    video = frames()
    inputs, ref, processor = reference(directory, video)
    model = vidvlm.load(directory).eval()
    assert isinstance(model, LlavaModel) and model.config.prompt_tokens == "whole"

    # the same pixels from the same frames
    ours_pixels = model.transform(video)
    torch.testing.assert_close(ours_pixels, inputs["pixel_values_videos"][0], atol=1e-6, rtol=0)

    # the same prompt ids, the visual tokens where the processor put its <video> tokens
    conv = [{"role": "user", "content": "<video>\n" + QUESTION}]
    ours = model.prepare_inputs([conv], ours_pixels[None], generation=True)
    parts, _, _ = model.sequences.sequence(conv, [0], model.front_end(ours_pixels[None]), None, True, "0")
    video_id = ref.config.video_token_id
    assert [video_id if i < 0 else i for i in parts.ids] == inputs["input_ids"][0].tolist()
    after = parts.ids[parts.visual_pos[-1] + 1 :]  # tokenized on its own, the text would start with a space mark
    assert after != model.tokenizer.hf("\n" + QUESTION + " ASSISTANT:", add_special_tokens=False)["input_ids"]

    # logits within 1e-4 in fp32
    with torch.no_grad():
        want = ref(**inputs).logits
        got = model.lm(inputs_embeds=ours["inputs_embeds"], attention_mask=ours["attention_mask"]).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)

    # the same greedy tokens, and the same answer text
    new = 8
    with torch.no_grad():
        want_ids = ref.generate(**inputs, do_sample=False, max_new_tokens=new)[0, inputs["input_ids"].shape[1] :]
        got_ids = model.lm.generate(
            inputs_embeds=ours["inputs_embeds"], attention_mask=ours["attention_mask_2d"], do_sample=False,
            max_new_tokens=new, eos_token_id=model.stop_ids, pad_token_id=model.tokenizer.pad_id,
        )[0]  # fmt: skip
    assert got_ids.tolist() == want_ids.tolist()
    text = processor.tokenizer.decode(want_ids, skip_special_tokens=True).strip()
    decode = dataclasses.replace(model.config.decode, max_new_tokens=new)
    assert model.generate(ours_pixels[None], questions=[QUESTION], decode=decode) == [text]


def test_batched_generation_answers_each_clip_as_transformers_does_alone(hf_dir):
    model = vidvlm.load(hf_dir).eval()
    videos = [frames(3), torch.flip(frames(3), dims=[0, 3])]
    questions = [QUESTION, "is it red?"]
    want = []
    for video, question in zip(videos, questions, strict=True):
        inputs, ref, processor = reference(hf_dir, video, question)
        with torch.no_grad():
            ids = ref.generate(**inputs, do_sample=False, max_new_tokens=6)[0, inputs["input_ids"].shape[1] :]
        want.append(processor.tokenizer.decode(ids, skip_special_tokens=True).strip())
    clips = torch.stack([model.transform(v) for v in videos])
    decode = dataclasses.replace(model.config.decode, max_new_tokens=6)
    assert model.generate(clips, questions=questions, decode=decode) == want


def test_training_labels_are_the_answer_tokens_as_the_processor_tokenizes_them(hf_dir):
    from transformers import AutoProcessor

    model = vidvlm.load(hf_dir).eval()
    processor = AutoProcessor.from_pretrained(hf_dir)
    conv = [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
    ]
    ids = processor(text=processor.apply_chat_template(conv), videos=[frames(1).permute(0, 2, 3, 1).numpy()])
    ours = [{"role": "user", "content": "<video>\n" + QUESTION}, {"role": "assistant", "content": "red"}]
    inputs = model.prepare_inputs([ours], model.transform(frames(1))[None])
    assert inputs["labels"].shape[1] == len(ids["input_ids"][0])
    targets = [t for t in inputs["labels"][0].tolist() if t >= 0]
    tok = processor.tokenizer
    assert tok.decode(targets) == tok.decode(ids["input_ids"][0][-len(targets) :].tolist())
    assert targets[-1] == tok.eos_token_id and "red" in tok.decode(targets)


def test_the_import_is_cached_and_saves_and_reloads_as_a_vidvlm_checkpoint(hf_dir, tmp_path):
    model = vidvlm.load(hf_dir).eval()
    cached = list((tmp_path / "cache" / "llava_hf").iterdir())
    assert len(cached) == 1 and (cached[0] / "lm" / "model.safetensors").is_file()
    assert vidvlm.load(hf_dir).config == model.config  # the second load reads the cache
    assert list((tmp_path / "cache" / "llava_hf").iterdir()) == cached
    model.save_pretrained(tmp_path / "run")
    again = vidvlm.load(tmp_path / "run").eval()
    video = model.transform(frames())[None]
    with torch.no_grad():
        a = model.lm(**model.prepare_inputs([QA], video)).loss
        b = again.lm(**again.prepare_inputs([QA], video)).loss
    torch.testing.assert_close(a, b)


QA = [{"role": "user", "content": "<video>\n" + QUESTION}, {"role": "assistant", "content": "red"}]


LAYOUTS = {  # from what save_pretrained writes today to the other names transformers has used
    "hub-4.x": {"vision_tower.": "vision_tower.vision_model."},
    "in-memory": {
        "vision_tower.": "model.vision_tower.vision_model.", "language_model.model.": "model.language_model.",
        "language_model.lm_head.": "lm_head.", "multi_modal_projector.": "model.multi_modal_projector.",
        "image_newline": "model.image_newline",
    },
}  # fmt: skip


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_key_layout_imports_the_same_tensors(hf_dir, tmp_path, layout):
    def rename(tensors):
        for key in list(tensors):
            old = next((o for o in LAYOUTS[layout] if key.startswith(o)), None)
            if old is not None:
                tensors[LAYOUTS[layout][old] + key[len(old) :]] = tensors.pop(key)

    a = import_llava_next_video(hf_dir, tmp_path / "a")
    b = import_llava_next_video(_rewrite(hf_dir, tmp_path / "renamed", rename), tmp_path / "b")
    for name in ("model.safetensors", "lm/model.safetensors"):
        want, got = load_file(str(a / name)), load_file(str(b / name))
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def _rewrite(src, dst, edit):
    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda t: t.pop("multi_modal_projector.linear_2.bias"), "multi_modal_projector.linear_2.bias"),
        (lambda t: t.pop("language_model.model.layers.1.mlp.up_proj.weight"), "language_model.model.layers.1.mlp.up_"),
        (lambda t: t.pop("vision_tower.encoder.layers.2.mlp.fc1.bias"), "encoder.layers.2.mlp.fc1.bias"),
        (lambda t: t.update({"extra.weight": torch.zeros(2)}), "extra.weight"),
        (
            lambda t: t.update({"multi_modal_projector.linear_3.weight": torch.zeros(2)}),
            "multi_modal_projector.linear_3",
        ),
        (
            lambda t: t.update({"language_model.model.layers.9.foo": torch.zeros(2)}),
            "language_model.model.layers.9.foo",
        ),
    ],
    ids=["missing-projector", "missing-lm", "missing-vision", "unknown", "extra-projector", "extra-lm"],
)
def test_a_missing_or_extra_tensor_is_named(hf_dir, tmp_path, edit, named):
    bad = _rewrite(hf_dir, tmp_path / "bad", edit)
    with pytest.raises(CheckpointError, match=named.replace(".", r"\.")):
        vidvlm.load(bad)
    assert not (tmp_path / "cache" / "llava_hf").exists() or not any((tmp_path / "cache" / "llava_hf").iterdir())


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("vision_feature_select_strategy", "full"),
        ("spatial_pool_mode", "conv"),
        ("spatial_pool_stride", 3),
        ("multimodal_projector_bias", False),
    ],
)
def test_settings_the_family_cannot_reproduce_are_refused_by_key(hf_dir, tmp_path, key, value):
    bad = tmp_path / "bad"
    shutil.copytree(hf_dir, bad)
    raw = json.loads((bad / "config.json").read_text())
    raw[key] = value
    (bad / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=key):
        import_llava_next_video(bad, tmp_path / "out")


def test_a_directory_that_is_neither_is_still_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="config.yaml"):
        vidvlm.load(tmp_path)


def test_caption_video_answers_from_the_hf_directory_as_transformers_does(hf_dir, tmp_path, capsys):
    """The real entry point on an image (a one-frame video; PNG keeps the pixels exact)."""
    from PIL import Image

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("caption_video", root / "tools" / "caption_video.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    image = frames(1)
    Image.fromarray(image[0].permute(1, 2, 0).numpy()).save(tmp_path / "still.png")
    inputs, ref, processor = reference(hf_dir, image)
    new = vidvlm.load(hf_dir).config.decode.max_new_tokens
    with torch.no_grad():
        ids = ref.generate(**inputs, do_sample=False, max_new_tokens=new)[0, inputs["input_ids"].shape[1] :]
    want = processor.tokenizer.decode(ids, skip_special_tokens=True).strip()
    argv = [str(tmp_path / "still.png"), "--model", str(hf_dir), "--question", QUESTION, "--format", "json"]
    assert cli.main([*argv, "--no-progress"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert want and row["segments"][0]["text"] == want
