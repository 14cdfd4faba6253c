"""The embedded world's byte-level BPE tokenizer: exact round trips, determinism, Llama-like special tokens."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from speechgpt.lm import train_text_tokenizer
from tests.lm.test_vocab import CORPUS


@pytest.mark.parametrize(
    "text",
    [
        "the cat sat on the mat.",
        "  leading and trailing spaces  ",
        "Mixed CASE, digits 12345 and punctuation!?;:",
        "tabs\tand\nnewlines\r\n",
        "unicode: héllo wörld, 日本語, emoji 🙂, ‹sosp› ⁅Human⁆",
        "never seen before: zyxwvq",
        "",
    ],
)
def test_decode_inverts_encode(text: str) -> None:
    tokenizer = train_text_tokenizer(CORPUS, vocab_size=320)
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text


def test_same_lines_same_tokenizer() -> None:
    a = train_text_tokenizer(CORPUS, vocab_size=300)
    b = train_text_tokenizer(iter(CORPUS), vocab_size=300)
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    assert a.get_vocab() == b.get_vocab()


def test_special_tokens_follow_llama() -> None:
    tokenizer = train_text_tokenizer(CORPUS, vocab_size=300)
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (
        0,
        1,
        2,
        3,
    )
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3]) == ["<unk>", "<s>", "</s>", "<pad>"]
    with_special = tokenizer("the cat").input_ids
    without = tokenizer("the cat", add_special_tokens=False).input_ids
    assert with_special == [1, *without]
    assert tokenizer.decode(with_special, skip_special_tokens=True) == "the cat"


def test_vocab_size_and_merges() -> None:
    tokenizer = train_text_tokenizer(CORPUS, vocab_size=300)
    assert 260 < len(tokenizer) <= 300
    # " the" is frequent enough to be merged into one token.
    assert len(tokenizer(" the", add_special_tokens=False).input_ids) == 1
    bytes_only = train_text_tokenizer(CORPUS, vocab_size=300, min_frequency=10_000)
    assert len(bytes_only) == 260
    assert len(bytes_only(" the", add_special_tokens=False).input_ids) == 4


def test_save_and_load_round_trip(tmp_path) -> None:
    tokenizer = train_text_tokenizer(CORPUS, vocab_size=300)
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    text = "what is the capital of france?"
    assert loaded(text).input_ids == tokenizer(text).input_ids
    assert loaded.pad_token_id == 3 and loaded.bos_token_id == 1 and loaded.eos_token_id == 2


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="vocab_size must be an integer >= 260"):
        train_text_tokenizer(CORPUS, vocab_size=259)
    with pytest.raises(ValueError, match="min_frequency"):
        train_text_tokenizer(CORPUS, min_frequency=0)
    with pytest.raises(ValueError, match="no text"):
        train_text_tokenizer(["", "   ", "\n"])
    with pytest.raises(TypeError, match="not one string"):
        train_text_tokenizer("just one string")
    with pytest.raises(TypeError, match="line 1 is int"):
        train_text_tokenizer(["fine", 3])
