"""A tiny causal LM to train from scratch on the moving-shapes world: random Llama weights and a word-level
tokenizer whose vocabulary is every word the world's generators write (captions, questions, answers, the text
corpus), saved as a local HF directory that the llava family loads like any pretrained LM.

    python tools/prepare_lm.py tiny-shapes --out lms/tiny_shapes

The vocabulary is drawn from the generators with a fixed seed, so the same call writes the same directory; a word
outside it becomes ``<unk>``. Numbers are split into digits, so every time ("at 1.375 seconds") is spelled out.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidvlm.errors import ConfigError

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ("<pad>", "<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>")


@dataclass
class ScratchLMConfig:
    """Size of the from-scratch LM (a Llama: RMSNorm, rotary positions, SwiGLU)."""

    width: int = 128
    depth: int = 4
    heads: int = 4
    kv_heads: int = 2
    mlp: int = 384
    context: int = 512
    seed: int = 0


def _pre_tokenizer():
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(), pre_tokenizers.Digits(individual_digits=True)]
    )


def shapes_texts(num_scenes: int = 400, num_sentences: int = 3000, seed: int = 0) -> list[str]:
    """Texts the world's generators write: captions of every single-shape clip and still, the conversations of
    random scenes, clips and stills (every question type and phrasing), and text-corpus sentences."""
    from vidvlm.data.synthetic import all_captions, allowed_pairs, sample_clip
    from vidvlm.data.synthetic_qa import conversation, make_text_corpus, scene_qa
    from vidvlm.data.synthetic_scenes import sample_scene, scene_of_clip

    texts = all_captions() + all_captions(images=True) + ["Time 0.5 s:"]
    rng = np.random.default_rng([seed, 7])
    pairs = allowed_pairs("train", False)
    for i in range(num_scenes):
        if i % 4 == 0:
            scene = scene_of_clip(sample_clip(rng, 8, 64, still=i % 8 == 0), 64, 8)
        else:
            scene = sample_scene(rng, 1 if i % 8 == 1 else 16, 64, 8, count=(1, 3), events=i % 8 != 1, pairs=pairs)
        turns = conversation(scene, scene_qa(scene, rng), rng)
        texts += [scene.caption, *(t["content"] for t in turns)]
        texts += [q["question"] + " " + q["answer"] for q in scene_qa(scene, rng)]
    with tempfile.TemporaryDirectory() as tmp:
        corpus = make_text_corpus(tmp, num_sentences, seed)
        texts += [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    return texts


def shapes_vocabulary(texts: list[str] | None = None) -> list[str]:
    """Sorted lower-case words (after the pre-tokenizer) of ``texts`` (default :func:`shapes_texts`)."""
    pre = _pre_tokenizer()
    words = {w for t in texts or shapes_texts() for w, _ in pre.pre_tokenize_str(t.lower())}
    return sorted(words | set("0123456789") | {"\n", "user", "assistant", "system"})


def make_scratch_lm(out: str | Path, config: ScratchLMConfig | None = None, texts: list[str] | None = None) -> Path:
    """Write a random Llama and its word-level tokenizer (ChatML template) to ``out`` (created; must not hold one).

    Returns:
        ``out``.
    """
    import torch
    import transformers
    from tokenizers import Tokenizer, models, normalizers

    cfg = config or ScratchLMConfig()
    path = Path(out)
    if (path / "config.json").exists():
        raise ConfigError(f"{path}: already holds a model (remove it first)")
    vocab = {w: i for i, w in enumerate([*SPECIALS, *shapes_vocabulary(texts)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = _pre_tokenizer()
    hf_tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )  # fmt: skip
    hf_tok.chat_template = CHATML
    lm_cfg = transformers.LlamaConfig(
        hidden_size=cfg.width, intermediate_size=cfg.mlp, num_hidden_layers=cfg.depth, num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads, vocab_size=len(vocab), max_position_embeddings=cfg.context,
        pad_token_id=0, bos_token_id=2, eos_token_id=3, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(cfg.seed)
    model = transformers.AutoModelForCausalLM.from_config(lm_cfg).eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    hf_tok.save_pretrained(path)
    return path


__all__ = ["ScratchLMConfig", "make_scratch_lm", "shapes_texts", "shapes_vocabulary"]
