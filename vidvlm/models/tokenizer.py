"""Text tokenizers: loaded from a model directory, or trained on captions and saved beside the model.

Every tokenizer is a ``transformers`` fast tokenizer, so one code path loads them all (``AutoTokenizer`` on a local
directory, ``trust_remote_code=False``, nothing fetched). A trained tokenizer is a ``tokenizers`` BPE, WordPiece or
word-level model wrapped in ``PreTrainedTokenizerFast`` with ``<bos> ... <eos>`` added around every caption, so that
a causal text tower can pool the ``<eos>`` token. It is saved as ``tokenizer.json`` + ``tokenizer_config.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from torch import Tensor

from vidvlm.errors import CheckpointError, ConfigError

TokenizerKind = Literal["bpe", "wordpiece", "word"]
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model")
SPECIAL = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<bos>", "eos_token": "<eos>"}


class TextTokenizer:
    """A fast tokenizer with one batch call: :meth:`encode` ``(texts, max_len) -> input_ids, attention_mask``.

    Args:
        hf_tokenizer: a ``transformers`` ``PreTrainedTokenizerFast``.
    """

    def __init__(self, hf_tokenizer) -> None:
        self.hf = hf_tokenizer
        if self.hf.pad_token_id is None:
            # GPT-2-like tokenizers have no pad token; padding positions are masked out anyway
            self.hf.pad_token = self.hf.eos_token or self.hf.unk_token

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can emit (added tokens included)."""
        return len(self.hf)

    @property
    def pad_id(self) -> int:
        return int(self.hf.pad_token_id)

    def encode(self, texts: Sequence[str], max_len: int) -> tuple[Tensor, Tensor]:
        """Tokenize a batch, truncated to ``max_len`` (special tokens kept) and right-padded to the longest.

        Args:
            texts: B strings.
            max_len: the longest sequence (the text tower's context length).

        Returns:
            ``input_ids`` long ``[B, L]`` and ``attention_mask`` bool ``[B, L]`` (True = real token), ``L <= max_len``.
        """
        if isinstance(texts, str):
            raise TypeError("encode: expected a list of strings, got one string")
        if not texts:
            raise ValueError("encode: expected at least one text")
        # right padding whatever the tokenizer's default: causal text towers leave the padding mask out
        enc = self.hf(list(texts), padding="longest", padding_side="right", truncation=True, max_length=max_len,
                      return_tensors="pt")  # fmt: skip
        return enc["input_ids"].long(), enc["attention_mask"].bool()

    def save(self, directory: str | Path) -> None:
        """Write the tokenizer files into ``directory``."""
        self.hf.save_pretrained(str(directory))

    @classmethod
    def load(cls, directory: str | Path) -> TextTokenizer:
        """Load the tokenizer saved in a local model directory (never fetched, no remote code).

        Raises:
            CheckpointError: the directory holds no tokenizer.
        """
        from transformers import AutoTokenizer

        path = Path(directory)
        if not path.is_dir():
            raise CheckpointError(f"{path}: tokenizer directory not found")
        if not any((path / f).is_file() for f in TOKENIZER_FILES):
            raise CheckpointError(f"{path}: no tokenizer files (tokenizer.json, vocab.txt, vocab.json, ...)")
        try:
            tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False, local_files_only=True)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path}: cannot load the tokenizer: {e}") from e
        if not getattr(tok, "is_fast", False):
            raise CheckpointError(f"{path}: only fast (tokenizers-backed) tokenizers are supported")
        return cls(tok)

    @classmethod
    def train(cls, texts: Sequence[str], vocab_size: int = 1000, kind: TokenizerKind = "bpe") -> TextTokenizer:
        """Train a lower-cased tokenizer on ``texts`` with the ``tokenizers`` library.

        Args:
            texts: training captions.
            vocab_size: the largest vocabulary (special tokens included); small corpora give fewer ids.
            kind: ``"bpe"`` (byte-level BPE), ``"wordpiece"`` or ``"word"`` (one id per whitespace/punctuation word).
        """
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
        from transformers import PreTrainedTokenizerFast

        if not texts:
            raise ValueError("train: needs at least one caption")
        specials = list(SPECIAL.values())
        if vocab_size <= len(specials):
            raise ConfigError(f"tokenizer_vocab_size: {vocab_size} leaves no room beside {len(specials)} specials")
        if kind == "bpe":
            tok = Tokenizer(models.BPE(unk_token=None))
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
            tok.decoder = decoders.ByteLevel()
            trainer = trainers.BpeTrainer(
                vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
            )
        elif kind == "wordpiece":
            tok = Tokenizer(models.WordPiece(unk_token=SPECIAL["unk_token"]))
            tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
            tok.decoder = decoders.WordPiece()
            trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials)
        elif kind == "word":
            tok = Tokenizer(models.WordLevel(unk_token=SPECIAL["unk_token"]))
            tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
            trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=specials)
        else:
            raise ConfigError(f"tokenizer_kind: {kind!r} is not one of bpe, wordpiece, word")
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tok.train_from_iterator(list(texts), trainer=trainer)
        bos, eos = SPECIAL["bos_token"], SPECIAL["eos_token"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A {eos}",
            special_tokens=[(bos, tok.token_to_id(bos)), (eos, tok.token_to_id(eos))],
        )
        return cls(PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL))


def last_token_index(attention_mask: Tensor) -> Tensor:
    """Index of the last real token of each right-padded row: bool ``[B, L]`` -> long ``[B]``."""
    return (attention_mask.long().sum(1) - 1).clamp(min=0)


__all__ = ["TextTokenizer", "TokenizerKind", "TOKENIZER_FILES", "last_token_index"]
