"""Scores of recognised and generated text: word/character error rates and answer accuracy.

Both sides are normalised with :func:`~speechgpt.eval.text_norm.normalize_text` first. Error rates are
**corpus-level**: the edits of all utterances summed, divided by the reference words (characters) of all
utterances summed, so a one-word utterance does not weigh as much as a twenty-word one (a mean of per-utterance
rates would). Alignments come from ``jiwer``; CER counts the characters of the normalised text, the single
spaces between words included.

Empty references: an utterance whose normalised reference is empty adds no reference words, and every word of its
hypothesis counts as an insertion. When a whole corpus (or group) has no reference words at all, the rate is
``errors / 1`` (``jiwer``'s convention): 0.0 when the hypotheses are empty too, else the number of inserted words
(characters). The rate is never a division by zero, and a non-zero rate still tells that something was inserted.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import jiwer

from speechgpt.eval.text_norm import normalize_text

__all__ = ["AccuracyReport", "EditCounts", "ErrorReport", "answer_accuracy", "error_rates"]

AnswerMode = Literal["exact", "contains"]
ANSWER_MODES: tuple[str, ...] = ("exact", "contains")


@dataclass(frozen=True)
class EditCounts:
    """Alignment counts of hypotheses against references (words or characters).

    Attributes:
        hits: Tokens equal in both.
        substitutions: Reference tokens replaced by another token.
        deletions: Reference tokens missing from the hypothesis.
        insertions: Hypothesis tokens with no reference token.
    """

    hits: int = 0
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0

    @property
    def reference_length(self) -> int:
        """Tokens in the references (hits + substitutions + deletions)."""
        return self.hits + self.substitutions + self.deletions

    @property
    def errors(self) -> int:
        """Edits needed to turn the references into the hypotheses."""
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        """``errors / reference_length``; with no reference tokens, ``errors / 1`` (see the module docstring)."""
        return self.errors / max(self.reference_length, 1)

    def __add__(self, other: EditCounts) -> EditCounts:
        return EditCounts(
            self.hits + other.hits,
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
        )

    def to_dict(self) -> dict[str, int]:
        return {
            "hits": self.hits,
            "substitutions": self.substitutions,
            "deletions": self.deletions,
            "insertions": self.insertions,
            "reference_length": self.reference_length,
        }


@dataclass(frozen=True)
class ErrorReport:
    """Corpus-level word and character error rates, with the counts behind them and a per-group breakdown.

    Attributes:
        words: Word-level counts over all utterances.
        chars: Character-level counts over all utterances.
        utterances: Number of utterances scored.
        groups: One report per group label (e.g. per voice), in order of first appearance; empty without groups.
    """

    words: EditCounts
    chars: EditCounts
    utterances: int
    groups: dict[str, ErrorReport] = field(default_factory=dict)

    @property
    def wer(self) -> float:
        """Word error rate: word edits / reference words."""
        return self.words.rate

    @property
    def cer(self) -> float:
        """Character error rate: character edits / reference characters (spaces between words included)."""
        return self.chars.rate

    @property
    def substitutions(self) -> int:
        return self.words.substitutions

    @property
    def deletions(self) -> int:
        return self.words.deletions

    @property
    def insertions(self) -> int:
        return self.words.insertions

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready numbers: ``wer``, ``cer``, counts, and ``groups`` when there are any."""
        data: dict[str, Any] = {
            "wer": self.wer,
            "cer": self.cer,
            "utterances": self.utterances,
            "words": self.words.to_dict(),
            "chars": self.chars.to_dict(),
        }
        if self.groups:
            data["groups"] = {name: report.to_dict() for name, report in self.groups.items()}
        return data


@dataclass(frozen=True)
class AccuracyReport:
    """Share of predictions that match their gold answer, with a per-group breakdown.

    Attributes:
        correct: Predictions that matched.
        total: Predictions scored (at least 1).
        mode: ``"exact"`` or ``"contains"``.
        matches: Per item, whether it matched (in input order).
        groups: One report per group label, in order of first appearance; empty without groups.
    """

    correct: int
    total: int
    mode: str
    matches: tuple[bool, ...] = ()
    groups: dict[str, AccuracyReport] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"accuracy": self.accuracy, "correct": self.correct, "total": self.total}
        data["mode"] = self.mode
        if self.groups:
            data["groups"] = {name: report.to_dict() for name, report in self.groups.items()}
        return data


def _check_texts(values: Sequence[str], name: str) -> list[str]:
    if isinstance(values, str):
        raise TypeError(f"{name} must be a sequence of strings, not one string")
    values = list(values)
    for index, value in enumerate(values):
        if not isinstance(value, str):
            raise TypeError(f"{name}[{index}] must be a str, got {type(value).__name__}: {value!r:.60}")
    return values


def _check_groups(groups: Sequence[Hashable] | None, count: int) -> list[str] | None:
    if groups is None:
        return None
    if isinstance(groups, str):
        raise TypeError("groups must be a sequence with one label per item, not one string")
    labels = [str(label) for label in groups]
    if len(labels) != count:
        raise ValueError(f"groups has {len(labels)} labels but there are {count} items; give one label per item")
    return labels


def _counts(output: jiwer.WordOutput | jiwer.CharacterOutput) -> list[EditCounts]:
    """Per-utterance counts from jiwer's alignment chunks."""
    result = []
    for chunks in output.alignments:
        tally = {"equal": 0, "substitute": 0, "delete": 0, "insert": 0}
        for chunk in chunks:
            span = chunk.hyp_end_idx - chunk.hyp_start_idx if chunk.type == "insert" else None
            tally[chunk.type] += span if span is not None else chunk.ref_end_idx - chunk.ref_start_idx
        result.append(EditCounts(tally["equal"], tally["substitute"], tally["delete"], tally["insert"]))
    return result


def _total(counts: Sequence[EditCounts]) -> EditCounts:
    total = EditCounts()
    for item in counts:
        total = total + item
    return total


def _by_group(labels: list[str]) -> dict[str, list[int]]:
    members: dict[str, list[int]] = {}
    for index, label in enumerate(labels):
        members.setdefault(label, []).append(index)
    return members


def error_rates(
    references: Sequence[str],
    hypotheses: Sequence[str],
    *,
    groups: Sequence[Hashable] | None = None,
    normalize: bool = True,
) -> ErrorReport:
    """Corpus-level WER and CER of ``hypotheses`` against ``references``, overall and per group.

    Args:
        references: The true transcripts.
        hypotheses: What the system produced, one per reference.
        groups: Optional label per utterance (voice, speaker, question family); labels are turned into strings.
        normalize: Apply :func:`normalize_text` to both sides first (turn off only for pre-normalised text).

    Returns:
        An :class:`ErrorReport`; ``report.groups[label]`` holds each group's own corpus-level rates.

    Raises:
        TypeError: an item is not a string, or a single string was passed instead of a sequence.
        ValueError: no utterances, or the sequences (and ``groups``) differ in length.
    """
    references = _check_texts(references, "references")
    hypotheses = _check_texts(hypotheses, "hypotheses")
    if len(references) != len(hypotheses):
        raise ValueError(f"got {len(references)} references but {len(hypotheses)} hypotheses; they must pair up")
    if not references:
        raise ValueError("no utterances to score (references is empty)")
    labels = _check_groups(groups, len(references))
    if normalize:
        references = [normalize_text(text) for text in references]
        hypotheses = [normalize_text(text) for text in hypotheses]
    # jiwer's default transforms split on whitespace and drop empty strings, which is what normalised text needs.
    words = _counts(jiwer.process_words(references, hypotheses))
    chars = _counts(jiwer.process_characters(references, hypotheses))
    group_reports = {}
    if labels is not None:
        for label, members in _by_group(labels).items():
            group_reports[label] = ErrorReport(
                words=_total([words[i] for i in members]),
                chars=_total([chars[i] for i in members]),
                utterances=len(members),
            )
    return ErrorReport(words=_total(words), chars=_total(chars), utterances=len(references), groups=group_reports)


def _answer_matches(prediction: str, golds: list[str], mode: str) -> bool:
    if mode == "exact":
        return prediction in golds
    padded = f" {prediction} "
    return any(f" {gold} " in padded for gold in golds)


def answer_accuracy(
    predictions: Sequence[str],
    golds: Sequence[str | Sequence[str]],
    *,
    mode: AnswerMode = "exact",
    groups: Sequence[Hashable] | None = None,
) -> AccuracyReport:
    """Share of predictions that give their gold answer, after :func:`normalize_text` on both.

    Args:
        predictions: The answers produced.
        golds: Per prediction, the right answer, or a sequence of acceptable answers (any one counts).
        mode: ``"exact"``: the normalised prediction equals a normalised gold. ``"contains"``: a normalised gold
            occurs in the normalised prediction as whole words (``"four"`` is in ``"it is four"``, but not in
            ``"fourteen"``).
        groups: Optional label per item (e.g. question family) for a per-group breakdown.

    Returns:
        An :class:`AccuracyReport`.

    Raises:
        TypeError: an item is not a string (or a sequence of strings for golds).
        ValueError: unknown ``mode``, no items, mismatched lengths, or a gold answer that is empty after
            normalisation (it would match everything in ``"contains"`` mode), naming its index.
    """
    if mode not in ANSWER_MODES:
        raise ValueError(f"mode must be one of {list(ANSWER_MODES)}, got {mode!r}")
    predictions = _check_texts(predictions, "predictions")
    if isinstance(golds, str):
        raise TypeError("golds must be a sequence with one gold answer per prediction, not one string")
    golds = list(golds)
    if len(predictions) != len(golds):
        raise ValueError(f"got {len(predictions)} predictions but {len(golds)} gold answers; they must pair up")
    if not predictions:
        raise ValueError("no answers to score (predictions is empty)")
    labels = _check_groups(groups, len(predictions))
    matches = []
    for index, (prediction, gold) in enumerate(zip(predictions, golds, strict=True)):
        options = [gold] if isinstance(gold, str) else _check_texts(gold, f"golds[{index}]")
        normalised = [normalize_text(option) for option in options]
        if not normalised or not all(normalised):
            raise ValueError(f"golds[{index}] = {gold!r:.60} is empty after normalisation; every gold needs a word")
        matches.append(_answer_matches(normalize_text(prediction), normalised, mode))
    group_reports = {}
    if labels is not None:
        for label, members in _by_group(labels).items():
            hits = tuple(matches[i] for i in members)
            group_reports[label] = AccuracyReport(sum(hits), len(hits), mode, hits)
    return AccuracyReport(sum(matches), len(matches), mode, tuple(matches), group_reports)
