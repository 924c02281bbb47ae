"""Train a small domain tokenizer in CLIP's exact format (vocab.json + merges.txt).

Why: the phantom generators train their own text encoder on a report vocabulary, and any
Stable Diffusion tooling (diffusers pipelines, transformers 4 and 5 `CLIPTokenizer`) must load
the result without custom code. CLIP's tokenizer is byte-level BPE with the suffix `</w>` marking a
word end, lower-cased, split on letters / single digits / punctuation runs. Every one of the 256
byte characters is in the vocabulary both with and without `</w>`, so no input text ever falls
back to the unknown token (`<|endoftext|>`).
"""
from __future__ import annotations

import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

from xcounter.errors import XCounterError
from xcounter.utils.atomic import write_text_atomic

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
SUFFIX = "</w>"
MAX_LENGTH = 77
# CLIP's pre-tokenisation pattern (openai/CLIP simple_tokenizer.py, transformers' CLIPTokenizer).
CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
BASE_SIZE = 2 * 256 + 2  # byte characters, byte characters + </w>, two special tokens


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode character table (same order as CLIP)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def _clip_pipeline(tokenizer: Tokenizer) -> Tokenizer:
    """Give a tokenizers object CLIP's normalizer and pre-tokenizer (the ones CLIPTokenizer uses)."""
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    return tokenizer


def train_clip_bpe(texts: Iterable[str], vocab_size: int = 1024,
                   min_frequency: int = 1) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Learn BPE merges over `texts`; return CLIP-ordered (vocab, merges).

    `vocab_size` counts everything (512 byte tokens + merges + 2 special tokens), so it must be at
    least 514; the merges are the first `vocab_size - 514` the trainer learned (most frequent first).
    """
    if vocab_size < BASE_SIZE:
        raise XCounterError(f"vocab_size must be at least {BASE_SIZE} (CLIP's byte alphabet), got {vocab_size}")
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise XCounterError("cannot train a tokenizer: no non-empty training texts were given")
    tokenizer = _clip_pipeline(Tokenizer(BPE(unk_token=EOS, end_of_word_suffix=SUFFIX,
                                             continuing_subword_prefix="")))
    trainer = BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                         special_tokens=[BOS, EOS], end_of_word_suffix=SUFFIX,
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer)
    learned = json.loads(tokenizer.to_str())["model"]["merges"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in learned]

    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + SUFFIX for c in byte_chars]
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(tokens)}
    kept: list[tuple[str, str]] = []
    for left, right in merges:
        if len(vocab) >= vocab_size - 2:
            break
        if left not in vocab or right not in vocab:  # cannot happen for a valid BPE; stay safe
            continue
        kept.append((left, right))
        vocab.setdefault(left + right, len(vocab))
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    return vocab, kept


def build_clip_tokenizer(texts: Iterable[str], out_dir: str | os.PathLike, vocab_size: int = 1024,
                         min_frequency: int = 1):
    """Train a CLIP-format BPE tokenizer over `texts`, save it to `out_dir` and return it loaded.

    `out_dir` then holds vocab.json + merges.txt (CLIP's files, for transformers 4 and other tools)
    and tokenizer.json + tokenizer_config.json (transformers 5), all loadable with
    `CLIPTokenizer.from_pretrained(out_dir)`; `model_max_length` is 77 as in Stable Diffusion.
    """
    from transformers import CLIPTokenizer

    vocab, merges = train_clip_bpe(texts, vocab_size=vocab_size, min_frequency=min_frequency)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    merges_text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    with tempfile.TemporaryDirectory(prefix=".tokenizer.", dir=out_dir) as staging:
        write_text_atomic(Path(staging) / "vocab.json", json.dumps(vocab, ensure_ascii=False, indent=1))
        write_text_atomic(Path(staging) / "merges.txt", merges_text)
        tokenizer = CLIPTokenizer.from_pretrained(staging, model_max_length=MAX_LENGTH)
        tokenizer.save_pretrained(staging)
        for path in Path(staging).iterdir():
            if path.is_file():
                os.replace(path, out_dir / path.name)
    # save_pretrained may or may not rewrite vocab.json/merges.txt; make sure CLIP's files are ours.
    write_text_atomic(out_dir / "vocab.json", json.dumps(vocab, ensure_ascii=False, indent=1))
    write_text_atomic(out_dir / "merges.txt", merges_text)
    return CLIPTokenizer.from_pretrained(out_dir, model_max_length=MAX_LENGTH)
