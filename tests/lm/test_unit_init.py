"""Unit embeddings started at the letters a CTC recogniser reads in each k-means centre: the math, the letters'
token ids, the rows left alone, and the inputs refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from speechgpt.eval.judge import VOCABULARY, JudgeASR, JudgeConfig
from speechgpt.lm import VocabularyError, expand_vocabulary
from speechgpt.lm.unit_init import init_units_from_letters, letter_token_ids, unit_letter_distributions
from speechgpt.units.encoder import RecognizerFeatures
from speechgpt.units.kmeans import KMeans
from speechgpt.units.light import LightFeatures
from speechgpt.units.tokenizer import SpeechTokenizer
from tests.lm.test_vocab import make_llama_tokenizer, make_text_tokenizer, make_wordlevel_tokenizer, tiny_model

NUM_UNITS = 5
HIDDEN = 8
"""Recurrent units per direction of the tiny recogniser: its states (and the k-means centres) are 16-wide."""


def recogniser_tokenizer(seed: int = 0, num_units: int = NUM_UNITS) -> SpeechTokenizer:
    torch.manual_seed(seed)
    recogniser = JudgeASR(JudgeConfig(conv_channels=16, hidden_size=HIDDEN, num_layers=1)).eval()
    centers = np.random.default_rng(seed).standard_normal((num_units, 2 * HIDDEN)).astype(np.float32)
    return SpeechTokenizer(RecognizerFeatures(recogniser), KMeans(centers))


def spelling_tokenizer(letters: str) -> SpeechTokenizer:
    """A tokenizer whose recogniser reads centre ``k`` as ``letters[k]`` with near certainty."""
    speech = recogniser_tokenizer(num_units=len(letters))
    head = speech.extractor.model.head
    centers = np.eye(len(letters), 2 * HIDDEN, dtype=np.float32)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        for k, char in enumerate(letters):
            head.weight[1 + VOCABULARY.index(char), k] = 40.0  # class 0 is the blank
        head.weight[0, :] = 100.0  # the blank would win everywhere: it must be left out
    return SpeechTokenizer(speech.extractor, KMeans(centers))


def reference_rows(distributions: torch.Tensor, weight: torch.Tensor, letters: list[int]) -> torch.Tensor:
    """Written from the module's description: letter mix, rescaled to the letters' mean norm."""
    letter_rows = weight[letters]
    mean_norm = sum(float(row.norm()) for row in letter_rows) / len(letters)
    rows = []
    for p in distributions:
        mixed = sum(float(p[j]) * letter_rows[j] for j in range(len(letters)))
        rows.append(mixed * (mean_norm / float(mixed.norm())))
    return torch.stack(rows)


def test_distributions_are_the_head_without_the_blank():
    speech = recogniser_tokenizer()
    distributions = unit_letter_distributions(speech)
    assert distributions.shape == (NUM_UNITS, len(VOCABULARY))
    head = speech.extractor.model.head
    with torch.no_grad():
        logits = head(torch.tensor(speech.kmeans.centers))
    expected = torch.exp(logits[:, 1:]) / torch.exp(logits[:, 1:]).sum(-1, keepdim=True)
    assert torch.allclose(distributions, expected, atol=1e-6)
    assert torch.allclose(distributions.sum(-1), torch.ones(NUM_UNITS), atol=1e-6)


@pytest.mark.parametrize(
    ("make", "space"), [(make_text_tokenizer, "Ġ"), (make_llama_tokenizer, "▁")], ids=["bpe", "llama"]
)
def test_letter_ids_follow_the_recogniser_vocabulary(make, space):
    tokenizer = make()
    ids = letter_token_ids(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens == [space if char == " " else char for char in VOCABULARY]


def test_a_tokenizer_without_single_letters_is_refused():
    with pytest.raises(VocabularyError, match="no single token for"):
        letter_token_ids(make_wordlevel_tokenizer())


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_unit_rows_are_the_letter_mix_and_nothing_else_moves(tie):
    tokenizer = make_text_tokenizer()
    model = tiny_model(len(tokenizer), tie=tie)
    vocab = expand_vocabulary(model, tokenizer, NUM_UNITS)
    before_in = model.get_input_embeddings().weight.detach().clone()
    before_out = model.get_output_embeddings().weight.detach().clone()
    speech = recogniser_tokenizer()
    distributions = init_units_from_letters(model, tokenizer, vocab, speech)
    units = slice(vocab.unit_offset, vocab.unit_offset + NUM_UNITS)
    letters = letter_token_ids(tokenizer)
    matrices = (model.get_input_embeddings().weight, model.get_output_embeddings().weight)
    for weight, before in zip(matrices, (before_in, before_out), strict=True):
        expected = reference_rows(distributions, before, letters)
        assert torch.allclose(weight[units], expected, atol=1e-5)
        # Text rows and the control tokens (<sosp> ... <eos>) keep their values exactly.
        assert torch.equal(weight[: vocab.unit_offset], before[: vocab.unit_offset])
        assert torch.equal(weight[units.stop :], before[units.stop :])
    if tie:
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_a_unit_heard_as_one_letter_starts_at_that_letter():
    tokenizer = make_text_tokenizer()
    model = tiny_model(len(tokenizer))
    vocab = expand_vocabulary(model, tokenizer, 3)
    letter_rows = model.get_input_embeddings().weight[letter_token_ids(tokenizer)].detach().clone()
    init_units_from_letters(model, tokenizer, vocab, spelling_tokenizer("k z"))
    weight = model.get_input_embeddings().weight.detach()
    for k, char in enumerate("k z"):
        row = weight[vocab.unit_offset + k]
        letter = letter_rows[VOCABULARY.index(char)]
        assert torch.nn.functional.cosine_similarity(row, letter, dim=0) > 0.999
        assert row.norm() == pytest.approx(float(letter_rows.norm(dim=-1).mean()), rel=1e-4)
    # Different letters give clearly different units (the mean init gives them all one row).
    assert torch.nn.functional.cosine_similarity(weight[vocab.unit_offset], weight[vocab.unit_offset + 2], dim=0) < 0.9


def test_mfcc_units_and_wrong_unit_counts_are_refused():
    tokenizer = make_text_tokenizer()
    model = tiny_model(len(tokenizer))
    vocab = expand_vocabulary(model, tokenizer, NUM_UNITS)
    mfcc = SpeechTokenizer(LightFeatures(), KMeans(np.zeros((NUM_UNITS, 39), np.float32)))
    with pytest.raises(ValueError, match="CTC recogniser"):
        init_units_from_letters(model, tokenizer, vocab, mfcc)
    with pytest.raises(ValueError, match="has 4 units but the vocabulary 5"):
        init_units_from_letters(model, tokenizer, vocab, recogniser_tokenizer(num_units=4))
