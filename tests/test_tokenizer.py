"""The domain tokenizer must be a real CLIP tokenizer: loadable by transformers, compact on report words,
and never mapping an unseen character to the unknown token."""
from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer
from transformers import CLIPTokenizer

from xcounter.errors import XCounterError
from xcounter.generators.tokenizer import BASE_SIZE, EOS, build_clip_tokenizer, bytes_to_unicode

REPORTS = [
    "Small left pleural effusion.",
    "Cardiomegaly with mild pulmonary edema.",
    "No pleural effusion or pneumothorax.",
    "Right chest tube in place, no pneumothorax.",
    "Pacemaker leads project over the heart.",
    "Large right pleural effusion with consolidation.",
] * 3


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    build_clip_tokenizer(REPORTS, out, vocab_size=800)
    return out


def test_files_in_clip_format(tokenizer_dir):
    names = {p.name for p in tokenizer_dir.iterdir()}
    assert {"vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"} <= names
    vocab = json.loads((tokenizer_dir / "vocab.json").read_text(encoding="utf-8"))
    for char in bytes_to_unicode().values():
        assert char in vocab and char + "</w>" in vocab
    assert sorted(vocab.values()) == list(range(len(vocab)))
    merges = (tokenizer_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0].startswith("#version")
    for line in merges[1:]:
        left, right = line.split(" ")
        assert left in vocab and right in vocab and left + right in vocab


def test_report_words_round_trip_to_few_tokens(tokenizer_dir):
    tok = CLIPTokenizer.from_pretrained(tokenizer_dir)
    assert tok.model_max_length == 77
    text = "Small left pleural effusion"
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert len(ids) == 2 + 4  # one token per in-vocabulary word
    assert tok.decode(ids, skip_special_tokens=True) == text.lower()


def test_unseen_characters_are_not_unknown(tokenizer_dir):
    tok = CLIPTokenizer.from_pretrained(tokenizer_dir)
    text = "zebra ü € 7"
    ids = tok(text).input_ids[1:-1]
    assert tok.unk_token_id == tok.convert_tokens_to_ids(EOS)
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == text


def test_padding_to_77_like_stable_diffusion(tokenizer_dir):
    tok = CLIPTokenizer.from_pretrained(tokenizer_dir)
    batch = tok(["", "pleural effusion " * 60], padding="max_length", max_length=tok.model_max_length,
                truncation=True, return_tensors="pt")
    assert tuple(batch.input_ids.shape) == (2, 77)
    assert batch.input_ids[1, -1].item() == tok.eos_token_id


def test_vocab_files_alone_give_the_same_ids(tokenizer_dir):
    """transformers 4 users load vocab.json + merges.txt, transformers 5 tokenizer.json: same ids."""
    vocab = json.loads((tokenizer_dir / "vocab.json").read_text(encoding="utf-8"))
    merges = (tokenizer_dir / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    from_vocab = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges])
    from_json = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    text = "Right chest tube, small pneumothorax; 3 cm nodule?"
    assert from_vocab(text).input_ids == from_json.encode(text).ids


def test_vocab_size_is_respected(tmp_path):
    tok = build_clip_tokenizer(REPORTS, tmp_path, vocab_size=BASE_SIZE + 10)
    assert len(tok) == BASE_SIZE + 10


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(XCounterError, match="vocab_size"):
        build_clip_tokenizer(REPORTS, tmp_path, vocab_size=100)
    with pytest.raises(XCounterError, match="no non-empty"):
        build_clip_tokenizer(["", "  "], tmp_path)
