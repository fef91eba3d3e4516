"""Small real tokenizers built in memory (no download): the two families the engine must handle.

* ``byte_level_bpe()``: GPT-2 / SmolLM style byte-level BPE; a multi-byte character may be split
  over several tokens, each decoding to raw bytes.
* ``byte_fallback_bpe()``: Llama / SentencePiece style BPE with '▁' for spaces and ``<0xNN>``
  byte-fallback tokens for characters outside the vocabulary.
"""

from __future__ import annotations

import functools
import json

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

CORPUS = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "Café, résumé, naïve, déjà vu: é è ê à ç ö ü ß.",
    "日本語のテキストです。東京と大阪は日本の都市です。",
    "Emoji: 😀 🎉 👍🏽 ❤️ and 🤖 robots.",
    "User: What is the capital of France?\n\nAssistant: Paris.\n\nUser: Thanks!",
    "def main():\n    print('hi')\n    return 0\n",
    "Numbers 0 1 2 3 4 5 6 7 8 9, 3.14159, 42%.",
]

BYTE_LEVEL_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
BYTE_FALLBACK_SPECIALS = ["<unk>", "<s>", "</s>"]


@functools.cache
def byte_level_bpe() -> PreTrainedTokenizerFast:
    """Byte-level BPE (ByteLevel pre-tokenizer and decoder), trained on ``CORPUS``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=BYTE_LEVEL_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 5, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        additional_special_tokens=BYTE_LEVEL_SPECIALS[1:],
        clean_up_tokenization_spaces=False,
    )


@functools.cache
def byte_fallback_bpe() -> PreTrainedTokenizerFast:
    """Llama-style BPE: '▁' spaces, ``<0xNN>`` byte fallback, decoder Replace/ByteFallback/Fuse/Strip.

    Trained with a small alphabet so that most CJK characters and emoji fall back to bytes.
    """
    normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    base = Tokenizer(models.BPE(unk_token="<unk>"))
    base.normalizer = normalizer
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=BYTE_FALLBACK_SPECIALS, limit_alphabet=50)
    base.train_from_iterator(CORPUS * 5, trainer)
    trained = json.loads(base.to_str())["model"]
    vocab: dict[str, int] = {token: i for i, token in enumerate(BYTE_FALLBACK_SPECIALS)}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for token in trained["vocab"]:
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizer
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens(BYTE_FALLBACK_SPECIALS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
    )


def byte_token_id(tokenizer: PreTrainedTokenizerFast, byte: int) -> int:
    """Id of the ``<0xNN>`` byte-fallback token."""
    return tokenizer.convert_tokens_to_ids(f"<0x{byte:02X}>")


class FakeTokenizer:
    """Maps each id to a fixed string, so tests control the text deltas exactly."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces

    def decode(self, ids: list[int], skip_special_tokens: bool = True, **_: object) -> str:
        return "".join(self.pieces[i] for i in ids)
