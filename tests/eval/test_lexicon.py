"""Lexicon-constrained CTC decoding: the lexicon file, the beam search on hand-made emissions, the judge with it."""

import math

import pytest
import torch

from speechgpt.eval.judge import VOCABULARY, JudgeASR, JudgeConfig, ctc_greedy_decode
from speechgpt.eval.lexicon import LEXICON_NAME, Lexicon, LexiconCTCDecoder, LexiconDecoderOptions

BLANK_ID = 0


def _id(char: str) -> int:
    return VOCABULARY.index(char) + 1


def _emissions(frames: list[dict[str, float]]) -> torch.Tensor:
    """``[T, C]`` log-probabilities: each frame gives the listed characters (``"_"``: blank) those probabilities and
    shares what is left among all other classes."""
    classes = len(VOCABULARY) + 1
    rows = []
    for frame in frames:
        probs = torch.full((classes,), (1.0 - sum(frame.values())) / (classes - len(frame)))
        for char, p in frame.items():
            probs[BLANK_ID if char == "_" else _id(char)] = p
        rows.append(probs.log())
    return torch.stack(rows)


def _spelled(text: str, p: float = 0.9) -> list[dict[str, float]]:
    """Frames spelling ``text`` one character each, a blank frame after each (spaces included)."""
    frames = []
    for char in text:
        frames += [{char: p}, {"_": p}]
    return frames


def test_counts_follow_the_texts_and_a_word_list_adds_one():
    lexicon = Lexicon.from_texts(["The cat sat.", "the CAT!", "cat\ndog"])
    assert lexicon.counts == {"cat": 3, "dog": 1, "sat": 1, "the": 2}
    assert lexicon.words == ["cat", "dog", "sat", "the"]
    assert sum(math.exp(p) for p in lexicon.log_probabilities()) == pytest.approx(1.0)
    assert lexicon.log_probabilities()[0] == pytest.approx(math.log(3 / 7))
    # Numbers are written as words, as the judge writes them.
    assert Lexicon.from_texts(["add 2 and 3"]).counts == {"add": 1, "and": 1, "three": 1, "two": 1}


def test_save_and_load_round_trip_and_bad_files_are_named(tmp_path):
    lexicon = Lexicon.from_texts(["a big dog", "a cat"])
    path = lexicon.save(tmp_path / LEXICON_NAME)
    assert path.read_text() == "a\t2\nbig\t1\ncat\t1\ndog\t1\n"
    assert Lexicon.load(path) == lexicon
    bad = tmp_path / "bad.txt"
    bad.write_text("a\t2\nbig one\n")
    with pytest.raises(ValueError, match=r"bad\.txt:2: expected 'word<TAB>count'"):
        Lexicon.load(bad)
    bad.write_text("a\t0\n")
    with pytest.raises(ValueError, match="count 0"):
        Lexicon.load(bad)
    with pytest.raises(FileNotFoundError, match="no such lexicon file"):
        Lexicon.load(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="no word"):
        Lexicon.from_texts(["", "  ?! "])
    with pytest.raises(FileNotFoundError, match=r"missing\.txt"):
        Lexicon.from_files([tmp_path / "missing.txt"])


def test_words_the_recogniser_cannot_spell_are_rejected():
    with pytest.raises(ValueError, match=r"'café' has characters the recogniser cannot write: \['é'\]"):
        LexiconCTCDecoder(Lexicon({"café": 1}), VOCABULARY)
    with pytest.raises(ValueError, match="no space"):
        LexiconCTCDecoder(Lexicon({"ab": 1}), "ab")
    with pytest.raises(ValueError, match="lm_weight"):
        LexiconDecoderOptions(lm_weight=-1.0)


def test_a_slip_of_one_character_is_spelled_as_the_word_it_sounds_like():
    frames = [*_spelled("the c"), {"s": 0.5, "a": 0.4}, {"_": 0.9}, *_spelled("t")]
    emissions = _emissions(frames)
    assert ctc_greedy_decode(emissions[None]) == ["the cst"]
    decoder = LexiconCTCDecoder(Lexicon.from_texts(["the cat", "the dog", "a cot"]), VOCABULARY)
    assert decoder.decode(emissions) == "the cat"
    # Clear speech of lexicon words decodes exactly; no frame decodes to nothing.
    assert decoder.decode(_emissions(_spelled("a dog the cot"))) == "a dog the cot"
    assert decoder.decode(torch.zeros(0, len(VOCABULARY) + 1)) == ""
    with pytest.raises(ValueError, match=r"log_probs must be \[T, 29\]"):
        decoder.decode(torch.zeros(3, 5))


def test_an_even_choice_goes_to_the_more_frequent_word_only_with_the_prior():
    # "c?t": 'a' and 'o' equally likely. The corpus says "cat" nine times and "cot" once.
    emissions = _emissions([*_spelled("c"), {"a": 0.45, "o": 0.45}, {"_": 0.9}, *_spelled("t")])
    lexicon = Lexicon({"cat": 9, "cot": 1})
    assert LexiconCTCDecoder(lexicon, VOCABULARY).decode(emissions) == "cat"
    assert LexiconCTCDecoder(Lexicon({"cat": 1, "cot": 9}), VOCABULARY).decode(emissions) == "cot"
    # The prior never overrides clear acoustics: a clearly spoken rare word stays itself.
    assert LexiconCTCDecoder(lexicon, VOCABULARY).decode(_emissions(_spelled("cot"))) == "cot"


def test_a_judge_keeps_its_lexicon_and_decodes_either_way(tmp_path):
    torch.manual_seed(0)
    judge = JudgeASR(JudgeConfig(conv_channels=16, hidden_size=16, num_layers=1)).eval()
    wave = torch.randn(8000).numpy() * 0.1
    assert judge.decoding == "greedy" and judge.lexicon is None
    assert judge.describe_decoding() == "greedy CTC (no lexicon)"
    with pytest.raises(ValueError, match="has no lexicon"):
        judge.transcribe([wave], decoding="lexicon")
    lexicon = Lexicon.from_texts(["yes no maybe"])
    judge.lexicon = lexicon
    assert judge.decoding == "lexicon"
    assert judge.describe_decoding() == "lexicon beam search (3 words, unigram weight 0.6, beam 50)"
    heard = judge.transcribe([wave])[0]
    assert set(heard.split()) <= {"yes", "no", "maybe"}  # an untrained judge still writes only lexicon words
    greedy = judge.transcribe([wave], decoding="greedy")
    with pytest.raises(ValueError, match="'greedy' or 'lexicon'"):
        judge.transcribe([wave], decoding="beam")

    judge.save_pretrained(tmp_path / "judge")
    assert (tmp_path / "judge" / LEXICON_NAME).read_text() == "maybe\t1\nno\t1\nyes\t1\n"
    loaded = JudgeASR.from_pretrained(tmp_path / "judge", device="cpu")
    assert loaded.lexicon == lexicon
    assert loaded.transcribe([wave]) == [heard] and loaded.transcribe([wave], decoding="greedy") == greedy
    # Saving a judge without a lexicon over the folder removes the stale file.
    loaded.lexicon = None
    loaded.save_pretrained(tmp_path / "judge")
    assert not (tmp_path / "judge" / LEXICON_NAME).exists()
    assert JudgeASR.from_pretrained(tmp_path / "judge").decoding == "greedy"
