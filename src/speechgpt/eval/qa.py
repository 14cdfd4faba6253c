"""Spoken question answering: the chain of modality scored in all four input/output combinations.

Each question is asked four ways (``speech-speech``, ``speech-text``, ``text-speech``, ``text-text``: input
modality, then output modality), with the output cue the chain-of-modality data uses
(:data:`speechgpt.prompt_format.OUTPUT_MODALITY_CUES`, added by the pipeline when the modalities differ). For every
reply it measures:

* **text accuracy**: the reply's text answer (after ``[ta]``) against the gold answer, normalised with
  :func:`~speechgpt.eval.text_norm.normalize_text`, as an exact match and as a whole-word "contains" match;
* **speech accuracy** (speech output only): the judge ASR transcribes the reply's waveform, then the same matching;
* **parse rate**: the reply has every part its combination requires: a transcript of the question for speech
  input, a text answer always, units for speech output;
* **transcript WER** (speech input only): the model's transcript of the question against the question text.

The headline numbers (:attr:`QaResult.text_accuracy`, :attr:`QaResult.speech_accuracy`) are "contains" matches on
**spoken** questions: text answers over the speech-input combinations, spoken answers over ``speech-speech``.
:func:`load_world_questions` reads the spoken test questions of a speech world with their gold answers.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from speechgpt.audio import AudioError
from speechgpt.eval.asr import ProgressFn, sample_items
from speechgpt.eval.metrics import AccuracyReport, ErrorReport, answer_accuracy, error_rates
from speechgpt.eval.tts import Transcriber, judge_transcripts
from speechgpt.jsonl import read_jsonl
from speechgpt.prompt_format import Modality

if TYPE_CHECKING:
    from speechgpt.infer import GenerationOptions, Reply, SpeechGPT

logger = logging.getLogger(__name__)

__all__ = [
    "COMBOS",
    "QA_MAX_NEW_TOKENS",
    "Combo",
    "ComboResult",
    "QaItem",
    "QaResult",
    "QaRow",
    "evaluate_qa",
    "load_world_questions",
]

QA_MAX_NEW_TOKENS = 512
"""Default generation budget of one answer: transcript + text answer + a few seconds of units."""
SPLITS = ("train", "heldout")
VOICE_SPLITS = ("train", "heldout", "all")


@dataclass(frozen=True)
class Combo:
    """One input/output modality combination, named ``"{input}-{output}"`` (e.g. ``"speech-text"``)."""

    input: Modality
    output: Modality

    @property
    def name(self) -> str:
        return f"{self.input.value}-{self.output.value}"

    @classmethod
    def parse(cls, value: str | Combo | tuple[Modality | str, Modality | str]) -> Combo:
        """A combo from its name (``"speech-text"``), a ``(input, output)`` pair, or a combo.

        Raises:
            ValueError: an unknown name or modality, listing the valid names.
        """
        if isinstance(value, Combo):
            return value
        parts = value.split("-") if isinstance(value, str) else list(value)
        try:
            if len(parts) != 2:
                raise ValueError
            return cls(Modality(parts[0]), Modality(parts[1]))
        except ValueError:
            raise ValueError(f"unknown combination {value!r}; valid: {', '.join(COMBOS)}") from None


COMBOS: tuple[str, ...] = ("speech-speech", "speech-text", "text-speech", "text-text")
"""The four chain-of-modality combinations, the released one (speech in, speech out) first."""


@dataclass(frozen=True)
class QaItem:
    """One question with its gold answer; ``audio`` is the spoken question (None when it is only typed).

    Attributes:
        id: Unique name.
        question: The question text (what the typed combinations ask, and the reference of the transcript).
        answer: The gold answer.
        family: Question family (``capital``, ``arithmetic``, ...) for the breakdown.
        audio: Path of the spoken question, needed by the speech-input combinations.
        voice: Who speaks the question.
        extra: Anything else kept from the source (e.g. the QA record id).
    """

    id: str
    question: str
    answer: str
    family: str = ""
    audio: str | None = None
    voice: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def load_world_questions(
    world_dir: str | os.PathLike,
    *,
    split: str = "heldout",
    voices: str = "heldout",
    limit: int | None = None,
) -> list[QaItem]:
    """The spoken test questions of a speech world, each with the gold answer of its QA record.

    A spoken question is a ``speech_test.jsonl`` row of kind ``question``; its answer is the ``output`` of the
    ``qa/{split}.jsonl`` record whose ``instruction`` is the row's ``text`` (a question text belongs to exactly one
    record). The typed combinations ask the same questions as text, so all four combinations are paired.

    Args:
        world_dir: A finished world folder (``speechgpt data build-world``).
        split: ``"heldout"`` (questions never in training) or ``"train"``.
        voices: Which voices speak them: ``"heldout"``, ``"train"`` or ``"all"``.
        limit: Keep at most this many, a seeded random sample (see :func:`~speechgpt.eval.asr.sample_items`).

    Raises:
        WorldError: no finished world in ``world_dir``, or no matching spoken question in it.
        ValueError: unknown ``split`` or ``voices``.
    """
    from speechgpt.data.world_speech import QA_FILES, SPEECH_FILES, WorldError, load_world

    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if voices not in VOICE_SPLITS:
        raise ValueError(f"voices must be one of {list(VOICE_SPLITS)}, got {voices!r}")
    root = Path(world_dir)
    load_world(root)
    answers = {record.get("instruction"): record for record in read_jsonl(root / QA_FILES[split])}
    items: list[QaItem] = []
    unmatched = 0
    for row in read_jsonl(root / SPEECH_FILES["test"]):
        if row.get("kind") != "question" or row.get("item_split") != split:
            continue
        if voices != "all" and row.get("voice_split") != voices:
            continue
        record = answers.get(row.get("text"))
        if record is None:
            unmatched += 1
            continue
        items.append(
            QaItem(
                id=str(row["id"]),
                question=str(row["text"]),
                answer=str(record["output"]),
                family=str(record.get("family") or row.get("family") or ""),
                audio=str(root / row["audio"]),
                voice=str(row.get("voice", "")),
                extra={"qa_id": record.get("id"), "voice_split": row.get("voice_split"), "item_split": split},
            )
        )
    if unmatched:
        logger.warning("%d spoken question(s) in %s have no record in %s", unmatched, root, QA_FILES[split])
    if not items:
        raise WorldError(f"{root}: no spoken {split} questions by {voices} voices in {SPEECH_FILES['test']}")
    return sample_items(items, limit)


@dataclass(frozen=True)
class QaRow:
    """One reply: what was asked and answered, and how it scored (``None``: not applicable to the combination)."""

    id: str
    combo: str
    family: str
    question: str
    gold: str
    transcript: str
    text: str
    spoken: str | None
    units: int
    parsed: bool
    text_exact: bool
    text_contains: bool
    speech_exact: bool | None
    speech_contains: bool | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ComboResult:
    """Scores of one combination.

    Attributes:
        combo: Its name, e.g. ``"speech-text"``.
        text_exact: Text answers equal to the gold (per family in ``groups``).
        text_contains: Text answers containing the gold as whole words.
        speech_exact: Judge transcripts of spoken answers equal to the gold (speech output only).
        speech_contains: Judge transcripts containing the gold (speech output only).
        parsed: Replies with every part the combination requires.
        transcript: WER of the model's transcripts of the spoken questions (speech input only).
        rows: One :class:`QaRow` per scored question.
        failures: ``(item id, reason)`` of questions that could not be asked.
        truncated: Replies that hit ``max_new_tokens``.
        seconds: Wall time of this combination.
    """

    combo: str
    text_exact: AccuracyReport
    text_contains: AccuracyReport
    speech_exact: AccuracyReport | None
    speech_contains: AccuracyReport | None
    parsed: int
    transcript: ErrorReport | None
    rows: list[QaRow]
    failures: list[tuple[str, str]] = field(default_factory=list)
    truncated: int = 0
    seconds: float = 0.0

    @property
    def parse_rate(self) -> float:
        return self.parsed / max(len(self.rows), 1)

    def to_dict(self) -> dict[str, Any]:
        def accuracy(report: AccuracyReport | None) -> dict[str, Any] | None:
            return None if report is None else report.to_dict()

        return {
            "combo": self.combo,
            "questions": len(self.rows),
            "text_exact": accuracy(self.text_exact),
            "text_contains": accuracy(self.text_contains),
            "speech_exact": accuracy(self.speech_exact),
            "speech_contains": accuracy(self.speech_contains),
            "parse_rate": self.parse_rate,
            "parsed": self.parsed,
            "transcript": None if self.transcript is None else self.transcript.to_dict(),
            "truncated": self.truncated,
            "failures": [{"id": i, "error": e} for i, e in self.failures],
            "seconds": self.seconds,
            "rows": [row.to_dict() for row in self.rows],
        }


def _pooled(rows: Iterable[QaRow], key: str) -> float | None:
    values = [getattr(row, key) for row in rows if getattr(row, key) is not None]
    return sum(values) / len(values) if values else None


@dataclass
class QaResult:
    """What :func:`evaluate_qa` measured: one :class:`ComboResult` per combination, in the order asked."""

    combos: dict[str, ComboResult]
    seconds: float = 0.0

    def _headline_rows(self, speech_output: bool) -> list[QaRow]:
        chosen = [Combo.parse(name) for name in self.combos]
        if speech_output:
            chosen = [c for c in chosen if c.output == Modality.SPEECH]
        spoken_questions = [c for c in chosen if c.input == Modality.SPEECH]
        chosen = spoken_questions or chosen  # typed questions only when no spoken ones were asked
        return [row for c in chosen for row in self.combos[c.name].rows]

    @property
    def text_accuracy(self) -> float | None:
        """Share of text answers that contain the gold, over the spoken-question combinations (else all)."""
        return _pooled(self._headline_rows(False), "text_contains")

    @property
    def speech_accuracy(self) -> float | None:
        """Share of spoken answers whose judge transcript contains the gold, over ``speech-speech`` (else the
        other speech-output combination); None when no combination speaks."""
        return _pooled(self._headline_rows(True), "speech_contains")

    def families(self) -> dict[str, dict[str, float | None]]:
        """Per question family, the headline text and speech accuracies (same combinations as the headline)."""
        text_rows, speech_rows = self._headline_rows(False), self._headline_rows(True)
        names = list(dict.fromkeys(row.family for row in text_rows))
        return {
            family: {
                "text": _pooled([r for r in text_rows if r.family == family], "text_contains"),
                "speech": _pooled([r for r in speech_rows if r.family == family], "speech_contains"),
            }
            for family in names
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "qa",
            "text_accuracy": self.text_accuracy,
            "speech_accuracy": self.speech_accuracy,
            "families": self.families(),
            "seconds": self.seconds,
            "combos": {name: result.to_dict() for name, result in self.combos.items()},
        }


def _messages(item: QaItem, combo: Combo) -> list[dict[str, Any]]:
    if combo.input == Modality.SPEECH:
        return [{"role": "user", "content": {"type": "audio", "audio": Path(str(item.audio))}}]
    return [{"role": "user", "content": item.question}]


def _parsed(reply: Reply, combo: Combo) -> bool:
    ok = bool(reply.text.strip())
    if combo.input == Modality.SPEECH:
        ok = ok and bool(reply.transcript.strip())
    if combo.output == Modality.SPEECH:
        ok = ok and bool(reply.units) and reply.waveform is not None
    return ok


def _score_combo(
    combo: Combo,
    asked: list[tuple[QaItem, Reply]],
    judge: Transcriber | None,
    failures: list[tuple[str, str]],
    seconds: float,
) -> ComboResult:
    items = [item for item, _ in asked]
    replies = [reply for _, reply in asked]
    golds = [item.answer for item in items]
    families = [item.family for item in items]
    texts = [reply.text for reply in replies]
    text_exact = answer_accuracy(texts, golds, mode="exact", groups=families)
    text_contains = answer_accuracy(texts, golds, mode="contains", groups=families)
    spoken: list[str] | None = None
    speech_exact = speech_contains = None
    if combo.output == Modality.SPEECH:
        assert judge is not None  # checked by evaluate_qa
        waves: list[np.ndarray | None] = [reply.waveform if reply.units else None for reply in replies]
        spoken = judge_transcripts(judge, waves)
        speech_exact = answer_accuracy(spoken, golds, mode="exact", groups=families)
        speech_contains = answer_accuracy(spoken, golds, mode="contains", groups=families)
    transcript = None
    if combo.input == Modality.SPEECH:
        transcript = error_rates([item.question for item in items], [reply.transcript for reply in replies])
    rows = []
    for index, (item, reply) in enumerate(asked):
        rows.append(
            QaRow(
                id=item.id,
                combo=combo.name,
                family=item.family,
                question=item.question,
                gold=item.answer,
                transcript=reply.transcript,
                text=reply.text,
                spoken=None if spoken is None else spoken[index],
                units=len(reply.units),
                parsed=_parsed(reply, combo),
                text_exact=text_exact.matches[index],
                text_contains=text_contains.matches[index],
                speech_exact=None if speech_exact is None else speech_exact.matches[index],
                speech_contains=None if speech_contains is None else speech_contains.matches[index],
            )
        )
    return ComboResult(
        combo=combo.name,
        text_exact=text_exact,
        text_contains=text_contains,
        speech_exact=speech_exact,
        speech_contains=speech_contains,
        parsed=sum(row.parsed for row in rows),
        transcript=transcript,
        rows=rows,
        failures=failures,
        truncated=sum(reply.finish_reason == "length" for reply in replies),
        seconds=seconds,
    )


def default_options(max_new_tokens: int = QA_MAX_NEW_TOKENS) -> GenerationOptions:
    """Greedy decoding, so that accuracy does not depend on a sampler's luck."""
    from speechgpt.infer import GenerationOptions

    return GenerationOptions(temperature=0.0, max_new_tokens=max_new_tokens, seed=0)


def evaluate_qa(
    pipeline: SpeechGPT,
    questions: Sequence[QaItem],
    judge: Transcriber | None,
    *,
    combos: Sequence[str | Combo] = COMBOS,
    options: GenerationOptions | None = None,
    progress: ProgressFn | None = None,
) -> QaResult:
    """Ask every question in every combination and score the answers.

    Args:
        pipeline: A loaded :class:`~speechgpt.infer.SpeechGPT` (with a speech tokenizer and a vocoder for the
            speech combinations).
        questions: Questions with gold answers (see :func:`load_world_questions`); those asked by speech need audio.
        judge: Transcribes spoken answers; may be None only when no combination has speech output.
        combos: Which combinations, by name (:data:`COMBOS`) or :class:`Combo`.
        options: Generation options (greedy, :data:`QA_MAX_NEW_TOKENS`, when None); ``output_modality`` is set
            per combination.
        progress: Called as ``progress(done, total)`` after each reply (``total`` = questions × combinations).

    Returns:
        A :class:`QaResult`.

    Raises:
        ValueError: no questions or combinations, an unknown or repeated combination, a question without audio in
            a speech-input combination, a missing judge, or a combination where no question could be asked.
    """
    if isinstance(questions, str) or not isinstance(questions, Sequence):
        raise TypeError(f"questions must be a sequence of QaItem, got {type(questions).__name__}")
    if not questions:
        raise ValueError("no questions to evaluate (questions is empty)")
    chosen = [Combo.parse(c) for c in ([combos] if isinstance(combos, str) else combos)]
    if not chosen:
        raise ValueError(f"no combinations to evaluate; choose from {', '.join(COMBOS)}")
    names = [c.name for c in chosen]
    if len(set(names)) != len(names):
        raise ValueError(f"combinations repeat: {names}")
    if judge is None and any(c.output == Modality.SPEECH for c in chosen):
        raise ValueError("a judge ASR is needed to score spoken answers (combinations with speech output)")
    if any(c.input == Modality.SPEECH for c in chosen):
        missing = [item.id for item in questions if not item.audio]
        if missing:
            raise ValueError(f"question(s) {missing[:5]} have no audio, so they cannot be asked by speech")
    base = options or default_options()
    started = time.perf_counter()
    results: dict[str, ComboResult] = {}
    done, total = 0, len(questions) * len(chosen)
    for combo in chosen:
        combo_started = time.perf_counter()
        combo_options = replace(base, output_modality=combo.output.value)
        asked: list[tuple[QaItem, Reply]] = []
        failures: list[tuple[str, str]] = []
        for item in questions:
            try:
                asked.append((item, pipeline.chat(_messages(item, combo), combo_options)))
            except (AudioError, ValueError) as e:
                logger.warning("QA item %s (%s) skipped: %s", item.id, combo.name, e)
                failures.append((item.id, str(e)))
            done += 1
            if progress is not None:
                progress(done, total)
        if not asked:
            raise ValueError(f"{combo.name}: none of the {len(questions)} question(s) could be asked: {failures[0][1]}")
        results[combo.name] = _score_combo(combo, asked, judge, failures, time.perf_counter() - combo_started)
    return QaResult(combos=results, seconds=time.perf_counter() - started)
