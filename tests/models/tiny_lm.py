"""Tiny random causal LMs (Llama, Qwen2) with a word-level tokenizer, saved as local HF directories by the tests."""

from __future__ import annotations

from pathlib import Path

import torch

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WORDS = (
    "a big small red green blue yellow square circle triangle cross moves left right up down what color shape size "
    "is it which way does go describe the video question answer time s how many shapes are there one two three"
)


def make_tiny_lm(root: Path, arch: str = "llama", template: str | None = CHATML) -> Path:
    """Save a tiny random ``arch`` LM with a word-level tokenizer (ChatML template unless None) under ``root``."""
    import transformers
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    path = root / f"{arch}_{'chatml' if template else 'base'}"
    if (path / "config.json").is_file():
        return path
    specials = ["<pad>", "<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    vocab = {w: i for i, w in enumerate([*specials, *dict.fromkeys(WORDS.split()), *".,?:\n0123456789", "user",
                                          "assistant", "system"])}  # fmt: skip
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    hf_tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )  # fmt: skip
    if template:
        hf_tok.chat_template = template
    torch.manual_seed(0)
    kw = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=len(vocab), max_position_embeddings=256, pad_token_id=0, bos_token_id=2, eos_token_id=3,
        initializer_range=0.2,  # larger than the default 0.02: LoRA on a random LM then learns within a few steps
    )  # fmt: skip
    cfg = transformers.Qwen2Config(**kw) if arch == "qwen2" else transformers.LlamaConfig(**kw)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    model.save_pretrained(path, safe_serialization=True)
    hf_tok.save_pretrained(path)
    return path
