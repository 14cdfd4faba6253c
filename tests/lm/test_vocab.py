"""Speech vocabulary: released order and ids, idempotence, refusal of partial/out-of-order vocabularies, and
embedding resizing that keeps old rows bit-identical and starts new rows at the mean."""

from __future__ import annotations

import string

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaTokenizer, PreTrainedTokenizerFast

from speechgpt.lm import (
    SpeechVocab,
    VocabularyError,
    create_model,
    expand_vocabulary,
    speech_tokens,
    tiny_llama_config,
    train_text_tokenizer,
)
from speechgpt.prompt_format import META_INSTRUCTION

CORPUS = [
    "the cat sat on the mat.",
    "what is the capital of france? the capital of france is paris.",
    "hello world, this is speech gpt speaking.",
    "how many legs does a spider have? a spider has eight legs.",
    "the opposite of hot is cold; the opposite of up is down.",
    META_INSTRUCTION,
] * 4
"""Text for the tiny tokenizers the lm tests train (no downloads)."""


def make_text_tokenizer(vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """Our byte-level BPE tokenizer, trained on :data:`CORPUS`."""
    return train_text_tokenizer(CORPUS, vocab_size=vocab_size)


def make_llama_tokenizer() -> LlamaTokenizer:
    """A real (sentencepiece-free) ``LlamaTokenizer``: Metaspace prefix space, byte fallback, a few merges."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    pieces = ["▁", *string.ascii_letters, *string.digits, *".,:;?!'-", "▁t", "th", "▁th", "he", "▁the", "in", "▁a"]
    for piece in pieces:
        vocab.setdefault(piece, len(vocab))
    merges = [("▁", "t"), ("t", "h"), ("▁t", "h"), ("h", "e"), ("▁th", "e"), ("i", "n"), ("▁", "a")]
    return LlamaTokenizer(vocab=vocab, merges=merges)


def make_wordlevel_tokenizer() -> PreTrainedTokenizerFast:
    """A plain ``PreTrainedTokenizerFast`` over a word-level model, with a single-token ``<eoa>``."""
    words = ["<unk>", "<s>", "</s>", "<pad>", "hello", "world", "cat", "<eoa>", "[", "]", "<", ">", ":", ".", ";"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


TOKENIZER_FACTORIES = {
    "bpe": make_text_tokenizer,
    "llama": make_llama_tokenizer,
    "wordlevel": make_wordlevel_tokenizer,
}


def tiny_model(vocab_size: int, *, tie: bool = True, seed: int = 0) -> torch.nn.Module:
    """A 2-layer, 32-wide Llama for fast tests."""
    config = tiny_llama_config(
        vocab_size, hidden_size=32, num_layers=2, num_heads=2, max_position_embeddings=512, tie_word_embeddings=tie
    )
    return create_model(config, seed=seed)


def test_speech_tokens_released_order() -> None:
    tokens = speech_tokens(1000)
    assert len(tokens) == 1006
    assert tokens[:3] == ["<0>", "<1>", "<2>"]
    assert tokens[999] == "<999>"
    assert tokens[1000:] == ["<sosp>", "<eosp>", "[Human]", "[SpeechGPT]", "<eoh>", "<eos>"]
    assert speech_tokens() == tokens
    with pytest.raises(ValueError, match="num_units"):
        speech_tokens(0)


@pytest.mark.parametrize("kind", sorted(TOKENIZER_FACTORIES))
@pytest.mark.parametrize("num_units", [1, 7, 1000])
def test_expanded_ids_are_the_released_ids(kind: str, num_units: int) -> None:
    tokenizer = TOKENIZER_FACTORIES[kind]()
    size = len(tokenizer)
    vocab = expand_vocabulary(None, tokenizer, num_units)
    n = num_units
    assert len(tokenizer) == size + n + 6
    ids = tokenizer.convert_tokens_to_ids(speech_tokens(n))
    assert ids == list(range(size, size + n + 6))
    assert tokenizer.convert_tokens_to_ids(f"<{n - 1}>") == size + n - 1
    expected = {"<sosp>": 0, "<eosp>": 1, "[Human]": 2, "[SpeechGPT]": 3, "<eoh>": 4, "<eos>": 5}
    for token, k in expected.items():
        assert tokenizer.convert_tokens_to_ids(token) == size + n + k
    assert vocab == SpeechVocab(size, n, size + n, size + n + 1, size + n + 2, size + n + 3, size + n + 4, size + n + 5)
    assert SpeechVocab.from_tokenizer(tokenizer) == vocab
    # The tokenizer itself recognises the new tokens in text.
    encoded = tokenizer("<sosp><0><eosp>", add_special_tokens=False).input_ids
    assert encoded == [vocab.sosp_id, size, vocab.eosp_id]


def test_second_expansion_changes_nothing() -> None:
    tokenizer = make_text_tokenizer()
    model = tiny_model(len(tokenizer), tie=False)
    first = expand_vocabulary(model, tokenizer, 20)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    size = len(tokenizer)
    second = expand_vocabulary(model, tokenizer, 20)
    assert second == first
    assert len(tokenizer) == size
    after = model.state_dict()
    assert state.keys() == after.keys()
    assert all(torch.equal(state[k], after[k]) for k in state)


def test_partial_out_of_order_and_mismatched_vocabularies_are_refused() -> None:
    partial = make_text_tokenizer()
    partial.add_tokens(speech_tokens(5)[:3], special_tokens=True)
    with pytest.raises(VocabularyError, match="partial"):
        expand_vocabulary(None, partial, 5)

    controls_first = make_text_tokenizer()
    tokens = speech_tokens(5)
    controls_first.add_tokens(tokens[5:] + tokens[:5], special_tokens=True)
    with pytest.raises(VocabularyError, match="released order"):
        expand_vocabulary(None, controls_first, 5)
    with pytest.raises(VocabularyError, match="released order"):
        SpeechVocab.from_tokenizer(controls_first)

    swapped = make_text_tokenizer()
    swapped.add_tokens([*tokens[:5], "<eosp>", "<sosp>", *tokens[7:]], special_tokens=True)
    with pytest.raises(VocabularyError, match="'<sosp>' is at id"):
        expand_vocabulary(None, swapped, 5)

    expanded = make_text_tokenizer()
    expand_vocabulary(None, expanded, 5)
    with pytest.raises(VocabularyError, match="5 consecutive unit tokens"):
        expand_vocabulary(None, expanded, 6)
    with pytest.raises(VocabularyError, match="expected 4"):
        SpeechVocab.from_tokenizer(expanded, num_units=4)


def test_unexpanded_tokenizer_has_no_speech_vocab() -> None:
    with pytest.raises(VocabularyError, match="call expand_vocabulary first"):
        SpeechVocab.from_tokenizer(make_text_tokenizer())
    with pytest.raises(ValueError, match="init must be one of"):
        expand_vocabulary(None, make_text_tokenizer(), 5, init="zeros")


def test_unit_id_mapping() -> None:
    vocab = SpeechVocab.at(100, 10)
    assert vocab.control_ids == (110, 111, 112, 113, 114, 115)
    assert vocab.unit_ids([0, 3, 9]) == [100, 103, 109]
    assert vocab.units_from_ids([1, 100, 110, 105, 109, 115]) == [0, 5, 9]
    assert [vocab.is_unit(i) for i in (99, 100, 109, 110)] == [False, True, True, False]
    assert vocab.is_speech_token(115) and not vocab.is_speech_token(116)
    with pytest.raises(ValueError, match=r"unit 10 at position 1 is not an integer in \[0, 10\)"):
        vocab.unit_ids([1, 10])
    for bad in ([-1], [2.5], ["x"], [None]):
        with pytest.raises(ValueError, match="position 0"):
            vocab.unit_ids(bad)
    assert vocab.unit_ids(torch.tensor([2, 4])) == [102, 104]
    with pytest.raises(ValueError, match="released order"):
        SpeechVocab(100, 10, 110, 111, 112, 114, 113, 115)


def test_untied_resize_keeps_old_rows_and_starts_new_rows_at_the_mean() -> None:
    tokenizer = make_text_tokenizer()
    size = len(tokenizer)
    model = tiny_model(size, tie=False)
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    text = torch.tensor([tokenizer("the cat sat on the mat.").input_ids])
    with torch.no_grad():
        old_logits = model(text).logits
    rng_before = torch.get_rng_state()

    vocab = expand_vocabulary(model, tokenizer, 12)

    assert torch.equal(torch.get_rng_state(), rng_before)
    new_in = model.get_input_embeddings().weight.detach()
    new_out = model.get_output_embeddings().weight.detach()
    assert new_in.shape == (size + 18, 32) and new_out.shape == (size + 18, 32)
    assert model.config.vocab_size == vocab.end == size + 18
    assert torch.equal(new_in[:size], old_in)
    assert torch.equal(new_out[:size], old_out)
    assert torch.equal(new_in[size:], old_in.mean(0).expand(18, -1))
    assert torch.equal(new_out[size:], old_out.mean(0).expand(18, -1))
    assert not torch.allclose(old_in.mean(0), old_out.mean(0))
    with torch.no_grad():
        new_logits = model(text).logits
    # The network is untouched, so the old tokens' logits are too; every new token gets the same logit.
    assert torch.equal(new_logits[..., :size], old_logits)
    assert torch.allclose(new_logits[..., size:], new_logits[..., size : size + 1].expand(-1, -1, 18))


def test_tied_resize_stays_tied() -> None:
    tokenizer = make_llama_tokenizer()
    size = len(tokenizer)
    model = tiny_model(size, tie=True)
    old = model.get_input_embeddings().weight.detach().clone()
    vocab = expand_vocabulary(model, tokenizer, 9)
    weight = model.get_input_embeddings().weight
    assert model.get_output_embeddings().weight is weight
    assert torch.equal(weight[:size].detach(), old)
    assert torch.equal(weight[size:].detach(), old.mean(0).expand(15, -1))
    with torch.no_grad():
        weight[vocab.sosp_id, 0] = 7.0
    assert model.get_output_embeddings().weight[vocab.sosp_id, 0].item() == 7.0
    logits = model(torch.tensor([[1, vocab.sosp_id, vocab.unit_offset]])).logits
    assert logits.shape == (1, 3, vocab.end)


def test_mean_noise_init_is_small_seeded_and_leaves_global_rng_alone() -> None:
    def expand(seed: int) -> torch.Tensor:
        tokenizer = make_text_tokenizer()
        model = tiny_model(len(tokenizer))
        expand_vocabulary(model, tokenizer, 6, init="mean_noise", seed=seed)
        return model.get_input_embeddings().weight.detach().clone(), len(tokenizer) - 12

    rng_before = torch.get_rng_state()
    a, size = expand(3)
    assert torch.equal(torch.get_rng_state(), rng_before)
    b, _ = expand(3)
    c, _ = expand(4)
    assert torch.equal(a, b)
    assert not torch.equal(a[size:], c[size:])
    assert torch.equal(a[:size], c[:size])
    mean = a[:size].mean(0)
    spread = (a[size:] - mean).abs().max().item()
    assert 0 < spread < 0.01 * a[:size].std(0).max().item()
    assert len({tuple(row.tolist()) for row in a[size:]}) == 12
