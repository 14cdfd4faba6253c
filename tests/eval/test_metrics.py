"""Error rates and answer accuracy against cases counted by hand."""

import subprocess
import sys

import pytest

from speechgpt.eval.metrics import EditCounts, answer_accuracy, error_rates


def test_wer_and_cer_are_corpus_level_totals():
    # "the cat sat" -> "the cat sat down": 3 hits, 1 inserted word; 11 characters, 5 inserted (" down").
    # "a dog" -> "the dog": "a" substituted by "the"; characters: 1 substitution + 2 insertions.
    report = error_rates(["the cat sat", "a dog"], ["the cat sat down", "the dog"])
    assert report.words == EditCounts(hits=4, substitutions=1, deletions=0, insertions=1)
    assert report.wer == pytest.approx(2 / 5)  # a mean of per-utterance rates would be (1/3 + 1/2) / 2
    assert report.chars == EditCounts(hits=15, substitutions=1, deletions=0, insertions=7)
    assert report.cer == pytest.approx(8 / 16)
    assert (report.substitutions, report.deletions, report.insertions) == (1, 0, 1)
    assert report.utterances == 2


def test_deletions_are_counted():
    report = error_rates(["one two three four"], ["one three"])
    assert report.words == EditCounts(hits=2, substitutions=0, deletions=2, insertions=0)
    assert report.wer == pytest.approx(0.5)


def test_both_sides_are_normalised_before_scoring():
    report = error_rates(["Forty-two cats!", "It's 7 o'clock."], ["forty two cats", "it's seven o'clock"])
    assert report.wer == 0.0 and report.cer == 0.0


def test_normalisation_can_be_turned_off():
    assert error_rates(["Cats!"], ["cats"], normalize=False).wer == 1.0


def test_groups_get_their_own_corpus_level_rates():
    report = error_rates(
        ["the cat sat", "a dog", "one two"], ["the cat sat down", "the dog", "one two"], groups=["v1", "v2", "v1"]
    )
    assert list(report.groups) == ["v1", "v2"]
    assert report.groups["v1"].wer == pytest.approx(1 / 5)  # 1 insertion over 3 + 2 reference words
    assert report.groups["v1"].utterances == 2
    assert report.groups["v2"].wer == pytest.approx(1 / 2)
    assert report.groups["v2"].cer == pytest.approx(3 / 5)
    assert report.to_dict()["groups"]["v1"]["words"]["insertions"] == 1


def test_empty_reference_utterance_counts_its_words_as_insertions():
    report = error_rates(["?!", "hello world"], ["uh", "hello world"])
    assert report.words == EditCounts(hits=2, substitutions=0, deletions=0, insertions=1)
    assert report.wer == pytest.approx(1 / 2)
    assert report.cer == pytest.approx(2 / 11)


def test_a_corpus_without_reference_words_does_not_divide_by_zero():
    silent = error_rates([""], [""])
    assert silent.wer == 0.0 and silent.cer == 0.0
    babble = error_rates(["..."], ["a b"])
    assert babble.words.reference_length == 0
    assert babble.wer == 2.0  # errors / 1: two inserted words
    assert babble.cer == 3.0  # "a b": three inserted characters


def test_bad_input_is_rejected_with_the_reason():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        error_rates(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no utterances"):
        error_rates([], [])
    with pytest.raises(TypeError, match=r"hypotheses\[1\] must be a str, got NoneType"):
        error_rates(["a", "b"], ["a", None])
    with pytest.raises(TypeError, match="not one string"):
        error_rates("abc", "abd")
    with pytest.raises(ValueError, match="groups has 1 labels but there are 2 items"):
        error_rates(["a", "b"], ["a", "b"], groups=["x"])


PREDICTIONS = ["Paris.", "It is four", "fourteen", "London", "The answer is 4!"]
GOLDS = ["paris", "four", "four", ["berlin", "bonn"], "four"]


def test_exact_accuracy_after_normalisation():
    report = answer_accuracy(PREDICTIONS, GOLDS)
    assert report.matches == (True, False, False, False, False)
    assert (report.correct, report.total, report.accuracy) == (1, 5, 0.2)


def test_contains_accuracy_matches_whole_words_only():
    report = answer_accuracy(PREDICTIONS, GOLDS, mode="contains")
    # "four" is in "it is four" and in "the answer is four", not in "fourteen".
    assert report.matches == (True, True, False, False, True)
    assert report.accuracy == pytest.approx(3 / 5)


def test_any_of_several_gold_answers_counts():
    assert answer_accuracy(["Bonn"], [["berlin", "bonn"]]).accuracy == 1.0


def test_accuracy_groups():
    report = answer_accuracy(PREDICTIONS, GOLDS, mode="contains", groups=["a", "a", "b", "b", "b"])
    assert report.groups["a"].accuracy == 1.0
    assert report.groups["b"].correct == 1 and report.groups["b"].total == 3
    assert report.to_dict()["groups"]["b"]["accuracy"] == pytest.approx(1 / 3)


def test_accuracy_rejects_bad_input():
    with pytest.raises(ValueError, match="mode must be one of"):
        answer_accuracy(["a"], ["a"], mode="fuzzy")
    with pytest.raises(ValueError, match=r"golds\[0\] = '\?\?' is empty after normalisation"):
        answer_accuracy(["anything"], ["??"], mode="contains")
    with pytest.raises(ValueError, match="2 predictions but 1 gold"):
        answer_accuracy(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no answers"):
        answer_accuracy([], [])


def test_scoring_imports_no_torch():
    """Scoring a text file must not pay for torch; the judge (a torch model) is a separate import."""
    code = "import sys, speechgpt.eval; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
