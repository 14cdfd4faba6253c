"""Checks that SpeechInstruct files are what training expects, with the line number of every problem.

A record that reaches training malformed fails far from its cause (a tokenizer that splits a control string, a
unit id past the vocabulary, a loss mask that covers the question), so builders check every record before they
write it (:func:`ensure_valid`) and ``speechgpt data validate`` checks whole files (:func:`validate_file`).

What a record must be (the released layout, :mod:`speechgpt.prompt_format`):

* a JSON object with the strings ``prefix`` and ``plain_text`` (and, optionally, an ``id`` string and a ``task``
  that names one of :data:`TASKS`);
* ``plain_text`` is ``[Human]: {question}<eoh>. [SpeechGPT]: {response}<eoa>``, each of these markers exactly once;
* speech is ``<sosp><N>...<eosp>``: spans balanced, never nested, holding only unit tokens ``<N>`` with
  ``N < num_units``; no unit token outside a span;
* a response is text, one speech span, or the chain-of-modality layout ``[transcript; ][ta] answer[; [ua] span]``;
* control strings (``<eoh>``, ``[SpeechGPT]``, ``[ta]``, ...) appear only where the layout puts them, never in the
  user-visible text, where a tokenizer would read them as control tokens;
* with a tokenizer and ``max_tokens``, ``prefix + plain_text`` fits the token budget.

Stage-1 files are plain text, one ``<sosp>...<eosp>`` per line and nothing else (:func:`check_unit_line`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speechgpt.constants import RELEASED_NUM_UNITS
from speechgpt.prompt_format import (
    EOA,
    EOH,
    EOSP,
    HUMAN,
    HUMAN_OPEN,
    RESPONSE_OPEN,
    SOSP,
    SPEECHGPT,
    TEXT_ANSWER_TAG,
    UNIT_ANSWER_TAG,
    Modality,
    neutralize_user_text,
)

logger = logging.getLogger(__name__)

DEFAULT_NUM_UNITS = RELEASED_NUM_UNITS
"""Unit vocabulary of the released speech tokenizer (k-means with 1000 clusters)."""
ASR_TASK = "asr"
TTS_TASK = "tts"


def com_task(input_modality: Modality | str, output_modality: Modality | str) -> str:
    """The ``task`` name of a chain-of-modality record, e.g. ``"com-speech2text"``."""
    return f"com-{Modality(input_modality).value}2{Modality(output_modality).value}"


COM_TASKS = tuple(com_task(i, o) for i in Modality for o in Modality)
"""Chain-of-modality tasks, one per (input, output) modality pair."""
TASKS = (ASR_TASK, TTS_TASK, *COM_TASKS)
"""Every ``task`` value a builder writes."""
STAGE_TASKS = {2: (ASR_TASK, TTS_TASK), 3: COM_TASKS}
"""Which tasks belong in a stage-2 (cross-modal) and a stage-3 (chain-of-modality) file."""
STAGE1_SUFFIXES = frozenset({".txt"})
JSONL_SUFFIXES = frozenset({".jsonl", ".json"})

_SPEECH_MARK = SOSP + EOSP  # stands for a well-formed speech span once its units have been checked
_SPAN_BOUNDARY = re.compile(f"{re.escape(SOSP)}|{re.escape(EOSP)}")
_UNIT_TOKEN = re.compile(r"<(0|[1-9][0-9]*)>")
_UNIT_LIKE = re.compile(r"<\d+>")
_TA_OPEN = f"{TEXT_ANSWER_TAG} "
_UA_OPEN = f"; {UNIT_ANSWER_TAG} "
_TRANSCRIPT_END = "; "
_SNIPPET = 40


@dataclass
class RecordProblem:
    """One problem in a file: the 1-based line (0 for the file as a whole), the field, and what is wrong."""

    line: int
    field: str
    message: str

    def format(self, path: str | os.PathLike | None = None) -> str:
        """``path:line: field: message``, the form editors and ``grep`` understand."""
        where = f"{path}:{self.line}" if path is not None else f"line {self.line}"
        return f"{where}: {self.field}: {self.message}"


class InvalidRecordError(ValueError):
    """A record that fails :func:`check_record`; ``problems`` lists every reason."""

    def __init__(self, problems: list[str], record_id: str | None = None) -> None:
        self.problems = list(problems)
        self.record_id = record_id
        name = f"record {record_id!r}" if record_id is not None else "record"
        super().__init__(f"{name} is invalid: " + "; ".join(self.problems))


@dataclass
class ValidationReport:
    """What :func:`validate_file` found.

    Attributes:
        path: The file checked.
        records: Records (stage 1: unit lines) read, valid or not.
        problems: The first ``max_problems`` problems, in file order.
        counts: Records per task (``"untagged"`` for records without a ``task``; ``"units"`` for stage-1 lines).
        stage: The stage the file was checked as (1, 2 or 3; ``None`` for JSONL whose stage is unclear).
        invalid_records: Records with at least one problem.
        num_problems: All problems found, including those past ``max_problems``.
    """

    path: Path
    records: int = 0
    problems: list[RecordProblem] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    stage: int | None = None
    invalid_records: int = 0
    num_problems: int = 0

    @property
    def ok(self) -> bool:
        return self.num_problems == 0

    @property
    def truncated(self) -> bool:
        """Whether problems were found beyond those kept in :attr:`problems`."""
        return self.num_problems > len(self.problems)

    def summary(self) -> str:
        """A status line, the records per task, then one ``path:line: field: message`` line per problem kept."""
        stage = f"stage {self.stage}" if self.stage is not None else "stage 2/3"
        status = "OK" if self.ok else f"{self.invalid_records} invalid, {self.num_problems} problems"
        lines = [f"{self.path}: {self.records} records ({stage}): {status}"]
        if self.counts:
            lines.append("  " + ", ".join(f"{task}: {n}" for task, n in sorted(self.counts.items())))
        lines.extend(problem.format(self.path) for problem in self.problems)
        if self.truncated:
            lines.append(f"... and {self.num_problems - len(self.problems)} more problems")
        return "\n".join(lines)


def _snippet(text: str) -> str:
    return repr(text if len(text) <= _SNIPPET else text[:_SNIPPET] + "...")


def _unit_id_problems(content: str, num_units: int, where: str) -> list[str]:
    """Problems of what sits between ``<sosp>`` and ``<eosp>``: only canonical ``<N>``, at least one, ``N`` in range."""
    if not content:
        return [f"{where} holds no unit"]
    leftover = _UNIT_TOKEN.sub("", content)
    if leftover:
        return [f"{where} holds something other than unit tokens <N>: {_snippet(leftover)}"]
    limit_digits = len(str(num_units))
    # Compare lengths first so a runaway id of thousands of digits never becomes a Python int.
    bad = [d for d in _UNIT_TOKEN.findall(content) if len(d) > limit_digits or int(d) >= num_units]
    if bad:
        worst = max(bad, key=lambda d: (len(d), d))
        return [f"{where} has {len(bad)} unit id(s) out of range, up to <{worst}> (ids must be below {num_units})"]
    return []


def _check_num_units(num_units: int) -> None:
    if not isinstance(num_units, int) or num_units < 1:
        raise ValueError(f"num_units must be a positive integer, got {num_units!r}")


def check_unit_string(units: str, *, num_units: int = DEFAULT_NUM_UNITS) -> list[str]:
    """Problems of one unit string, which must be exactly ``<sosp><N>...<eosp>`` (empty list: valid)."""
    _check_num_units(num_units)
    if not isinstance(units, str):
        return [f"expected a unit string, got {type(units).__name__}"]
    if not units.startswith(SOSP) or not units.endswith(EOSP) or len(units) < len(SOSP) + len(EOSP):
        return [f"must be one {SOSP}...{EOSP} span and nothing else, got {_snippet(units)}"]
    content = units[len(SOSP) : -len(EOSP)]
    if SOSP in content or EOSP in content:
        return [f"must hold exactly one {SOSP}...{EOSP} span, got {_snippet(units)}"]
    return _unit_id_problems(content, num_units, "speech span")


def check_unit_line(line: str, *, num_units: int = DEFAULT_NUM_UNITS) -> list[str]:
    """Problems of one line of a stage-1 file (empty list: valid); a trailing newline is allowed."""
    if isinstance(line, str):
        line = line.removesuffix("\n").removesuffix("\r")
        if not line:
            _check_num_units(num_units)
            return ["empty line (stage-1 lines are one <sosp>...<eosp> each)"]
    return check_unit_string(line, num_units=num_units)


def _scan_speech(text: str, num_units: int) -> tuple[str, list[str]]:
    """Check every speech span of ``text``; return the text with each well-formed span replaced by a mark.

    The scan owns ``<sosp>``, ``<eosp>`` and unit tokens: balance, nesting, contents, and unit tokens outside spans.
    """
    problems: list[str] = []
    pieces: list[str] = []
    position = 0  # start of the text not yet copied to pieces
    open_at: int | None = None
    for match in _SPAN_BOUNDARY.finditer(text):
        if match.group() == SOSP:
            if open_at is not None:
                problems.append(f"nested {SOSP} at char {match.start()} (the {SOSP} at char {open_at} is still open)")
            open_at = match.start()
            continue
        if open_at is None:
            problems.append(f"{EOSP} at char {match.start()} closes no {SOSP}")
            continue
        content = text[open_at + len(SOSP) : match.start()]
        span_problems = _unit_id_problems(content, num_units, f"speech span at char {open_at}")
        problems.extend(span_problems)
        if not span_problems:
            pieces.append(text[position:open_at])
            pieces.append(_SPEECH_MARK)
            position = match.end()
        open_at = None
    if open_at is not None:
        problems.append(f"{SOSP} at char {open_at} is never closed by {EOSP}")
    pieces.append(text[position:])
    outside = "".join(pieces)
    if not problems:
        stray = _UNIT_LIKE.findall(outside)
        if stray:
            problems.append(f"{len(stray)} unit token(s) outside a speech span, first {stray[0]}")
    return outside, problems


def _control_problem(text: str, where: str, *, speech_checked: bool = True) -> str | None:
    """A problem when ``text`` holds something a tokenizer would read as a control token.

    With ``speech_checked``, ``<sosp>``, ``<eosp>`` and unit tokens are left to the speech scan, which reports them.
    """
    if speech_checked:
        text = _UNIT_LIKE.sub("", text.replace(SOSP, "").replace(EOSP, ""))
    neutral = neutralize_user_text(text)
    if neutral == text:
        return None
    first = next(i for i, (a, b) in enumerate(zip(text, neutral, strict=True)) if a != b)
    return f"{where} holds a control string at {_snippet(text[first : first + 16])} (only the layout may use it)"


@dataclass(frozen=True)
class _Turn:
    """A response split into its parts (``None``: the part is absent)."""

    transcript: str | None
    answer: str | None
    text_tagged: bool
    speech_out: bool


def _layout_problems(outside: str) -> list[str]:
    problems = []
    if not outside.startswith(HUMAN_OPEN):
        problems.append(f"must start with {HUMAN_OPEN!r}, got {_snippet(outside[: len(HUMAN_OPEN) + 8])}")
    for marker in (HUMAN, EOH, SPEECHGPT, EOA):
        count = outside.count(marker)
        if count != 1:
            problems.append(f"{marker!r} must appear exactly once, found {count}")
    if not outside.endswith(EOA):
        problems.append(f"must end with {EOA!r}, ends with {_snippet(outside[-16:])}")
    if not problems and EOH + RESPONSE_OPEN not in outside:
        problems.append(f"{EOH!r} must be followed by {RESPONSE_OPEN!r}")
    return problems


def _parse_response(response: str) -> tuple[_Turn | None, list[str]]:
    """Split a response (spans marked) into transcript, text answer and spoken answer; ``None`` when malformed."""
    problems = []
    for tag in (TEXT_ANSWER_TAG, UNIT_ANSWER_TAG):
        if response.count(tag) > 1:
            problems.append(f"{tag!r} appears {response.count(tag)} times in the response")
    if problems:
        return None, problems
    if response == _SPEECH_MARK:
        return _Turn(transcript=None, answer=None, text_tagged=False, speech_out=True), []
    speech_out = False
    if UNIT_ANSWER_TAG in response:
        head, sep, tail = response.rpartition(_UA_OPEN)
        if not sep or tail != _SPEECH_MARK:
            return None, [f"{UNIT_ANSWER_TAG!r} must end the response as '{_UA_OPEN}{SOSP}...{EOSP}'"]
        response, speech_out = head, True
    if _SPEECH_MARK in response:
        return None, [f"a speech span in the response must be all of it or follow {UNIT_ANSWER_TAG!r}"]
    if TEXT_ANSWER_TAG not in response:
        if speech_out:
            return None, [f"{UNIT_ANSWER_TAG!r} needs a text answer before it, tagged {TEXT_ANSWER_TAG!r}"]
        if not response.strip():
            return None, ["the response is empty"]
        return _Turn(transcript=None, answer=response, text_tagged=False, speech_out=False), []
    before, sep, answer = response.partition(_TA_OPEN)
    if not sep:
        return None, [f"{TEXT_ANSWER_TAG!r} must be followed by a space and the answer"]
    transcript: str | None = None
    if before:
        if not before.endswith(_TRANSCRIPT_END):
            return None, [f"{TEXT_ANSWER_TAG!r} must start the response or follow {_TRANSCRIPT_END!r}"]
        transcript = before[: -len(_TRANSCRIPT_END)]
        if not transcript.strip():
            problems.append(f"the transcript before {TEXT_ANSWER_TAG!r} is empty")
    if not answer.strip():
        problems.append(f"the text answer after {TEXT_ANSWER_TAG!r} is empty")
    turn = _Turn(transcript=transcript, answer=answer, text_tagged=True, speech_out=speech_out)
    return turn, problems


def _task_problems(task: str, question_spans: int, turn: _Turn) -> list[str]:
    """Whether the record's shape is the one its ``task`` promises."""
    if task == ASR_TASK:
        ok = question_spans == 1 and not turn.text_tagged and not turn.speech_out and turn.answer is not None
        return [] if ok else ["task 'asr' expects one speech span in the question and a plain text response"]
    if task == TTS_TASK:
        ok = question_spans == 0 and turn.answer is None and turn.speech_out
        return [] if ok else ["task 'tts' expects a text question and a response that is one speech span"]
    problems = []
    speech_in = task.startswith(f"com-{Modality.SPEECH.value}2")
    speech_out = task.endswith(f"2{Modality.SPEECH.value}")
    if not turn.text_tagged:
        problems.append(f"task {task!r} expects a text answer tagged {TEXT_ANSWER_TAG!r}")
    if speech_in and (question_spans != 1 or turn.transcript is None):
        problems.append(f"task {task!r} expects a spoken question (one speech span) and its transcript")
    if not speech_in and (question_spans != 0 or turn.transcript is not None):
        problems.append(f"task {task!r} expects a text question without speech and no transcript")
    if speech_out != turn.speech_out:
        expected = f"a spoken answer after {UNIT_ANSWER_TAG!r}" if speech_out else f"no {UNIT_ANSWER_TAG!r} answer"
        problems.append(f"task {task!r} expects {expected}")
    return problems


def _plain_text_problems(text: str, task: str | None, num_units: int) -> list[str]:
    outside, problems = _scan_speech(text, num_units)
    layout = _layout_problems(outside)
    if layout:
        return problems + layout
    end_of_question = outside.index(EOH)
    question = outside[len(HUMAN_OPEN) : end_of_question]
    response = outside[end_of_question + len(EOH) + len(RESPONSE_OPEN) : -len(EOA)]
    if not question.replace(_SPEECH_MARK, "").strip() and _SPEECH_MARK not in question:
        problems.append("the question is empty")
    if problem := _control_problem(question, "the question"):
        problems.append(problem)
    turn, response_problems = _parse_response(response)
    problems.extend(response_problems)
    if turn is None:
        return problems
    for where, piece in (("the transcript", turn.transcript), ("the answer", turn.answer)):
        if piece is not None and (problem := _control_problem(piece, where)):
            problems.append(problem)
    if task in TASKS and not problems:
        problems.extend(_task_problems(task, question.count(_SPEECH_MARK), turn))
    return problems


def _token_count(tokenizer: Any, text: str) -> int:
    """Tokens of ``text`` for a tokenizer with ``encode`` (HF, ``tokenizers``) or one that is called directly."""
    encode = getattr(tokenizer, "encode", None)
    result = encode(text) if callable(encode) else tokenizer(text)
    if isinstance(result, Mapping) or hasattr(result, "keys"):
        result = result["input_ids"]
    result = getattr(result, "ids", result)  # tokenizers.Encoding
    return len(result)


def _check_budget(tokenizer: Any, max_tokens: int | None) -> None:
    if max_tokens is None:
        return
    if tokenizer is None:
        raise ValueError("max_tokens needs a tokenizer to count tokens with")
    if not callable(getattr(tokenizer, "encode", None)) and not callable(tokenizer):
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no encode() and cannot be called")
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive integer, got {max_tokens!r}")


def _record_problems(record: Any, *, num_units: int, tokenizer: Any, max_tokens: int | None) -> list[tuple[str, str]]:
    if not isinstance(record, dict):
        return [("record", f"expected a JSON object, got {type(record).__name__}")]
    problems: list[tuple[str, str]] = []
    if "id" in record and (not isinstance(record["id"], str) or not record["id"].strip()):
        problems.append(("id", f"must be a non-empty string, got {record['id']!r}"))
    task = record.get("task")
    if "task" in record and task not in TASKS:
        problems.append(("task", f"unknown task {task!r}; expected one of: {', '.join(TASKS)}"))
    strings: dict[str, str] = {}
    for name in ("prefix", "plain_text"):
        value = record.get(name)
        if name not in record:
            problems.append((name, "missing"))
        elif not isinstance(value, str):
            problems.append((name, f"must be a string, got {type(value).__name__}"))
        else:
            strings[name] = value
    if "prefix" in strings and (problem := _control_problem(strings["prefix"], "the prefix", speech_checked=False)):
        problems.append(("prefix", problem))
    if "plain_text" in strings:
        known_task = task if isinstance(task, str) else None
        problems.extend(("plain_text", p) for p in _plain_text_problems(strings["plain_text"], known_task, num_units))
    if max_tokens is not None and len(strings) == 2:
        count = _token_count(tokenizer, strings["prefix"] + strings["plain_text"])
        if count > max_tokens:
            problems.append(("tokens", f"prefix + plain_text is {count} tokens, more than max_tokens={max_tokens}"))
    return problems


def check_record(
    record: Any,
    *,
    num_units: int = DEFAULT_NUM_UNITS,
    tokenizer: Any = None,
    max_tokens: int | None = None,
) -> list[str]:
    """Every problem of one stage-2/3 record, as ``"field: message"`` strings (empty list: valid).

    Args:
        record: The parsed JSON value of one line.
        num_units: Unit ids must be below this (the speech tokenizer's cluster count).
        tokenizer: Anything with ``encode(text)`` returning ids (a Hugging Face tokenizer) or a callable returning
            ids or ``{"input_ids": ...}``; used only with ``max_tokens``.
        max_tokens: Token budget for ``prefix + plain_text`` (the training stage's max length).

    Raises:
        ValueError: for a bad ``num_units``, or ``max_tokens`` without a usable tokenizer.
    """
    _check_num_units(num_units)
    _check_budget(tokenizer, max_tokens)
    problems = _record_problems(record, num_units=num_units, tokenizer=tokenizer, max_tokens=max_tokens)
    return [f"{name}: {message}" for name, message in problems]


def ensure_valid(record: Any, **kwargs: Any) -> None:
    """Raise :class:`InvalidRecordError` unless :func:`check_record` finds nothing; builders call it before writing.

    Keyword arguments go to :func:`check_record`.
    """
    problems = check_record(record, **kwargs)
    if problems:
        record_id = record.get("id") if isinstance(record, dict) and isinstance(record.get("id"), str) else None
        raise InvalidRecordError(problems, record_id)


def _sniff_stage(path: Path) -> int | None:
    """1 for a stage-1 unit-text file, ``None`` for JSONL, from the suffix or else the first non-blank byte."""
    suffix = path.suffix.lower()
    if suffix in STAGE1_SUFFIXES:
        return 1
    if suffix in JSONL_SUFFIXES:
        return None
    with path.open("rb") as f:
        for raw in f:
            stripped = raw.strip()
            if stripped:
                return 1 if stripped.startswith(SOSP.encode()) else None
    return None


class _Collector:
    """Keeps the first ``max_problems`` problems of a file and counts the rest."""

    def __init__(self, report: ValidationReport, max_problems: int) -> None:
        self.report = report
        self.max_problems = max_problems

    def add(self, line: int, problems: list[tuple[str, str]]) -> None:
        if not problems:
            return
        if line > 0:
            self.report.invalid_records += 1
        for name, message in problems:
            self.report.num_problems += 1
            if len(self.report.problems) < self.max_problems:
                self.report.problems.append(RecordProblem(line, name, message))


def _decode(raw: bytes) -> tuple[str | None, list[tuple[str, str]]]:
    try:
        return raw.decode("utf-8"), []
    except UnicodeDecodeError as e:
        return None, [("encoding", f"not UTF-8 ({e.reason} at byte {e.start})")]


def validate_file(
    path: str | os.PathLike,
    *,
    stage: int | None = None,
    num_units: int = DEFAULT_NUM_UNITS,
    tokenizer: Any = None,
    max_tokens: int | None = None,
    max_problems: int = 100,
) -> ValidationReport:
    """Check every line of a SpeechInstruct file, streaming it; malformed lines never stop the check.

    Args:
        path: A stage-1 unit text file or a stage-2/3 JSONL file.
        stage: 1, 2 or 3; ``None`` infers it (``.txt`` or lines starting with ``<sosp>``: stage 1; JSONL: 2 or
            3). Given 2 or 3, records whose ``task`` belongs to the other stage are problems.
        num_units: Unit ids must be below this.
        tokenizer: Counts tokens for ``max_tokens`` (see :func:`check_record`).
        max_tokens: Token budget per record (stage 2/3).
        max_problems: Problems kept in the report; later ones are only counted.

    Raises:
        FileNotFoundError: when ``path`` is not a file.
        ValueError: for a bad ``stage``, ``num_units``, ``max_problems``, or ``max_tokens`` without a tokenizer.
    """
    path = Path(path)
    if stage not in (None, 1, 2, 3):
        raise ValueError(f"stage must be 1, 2 or 3, got {stage!r}")
    if not isinstance(max_problems, int) or max_problems < 0:
        raise ValueError(f"max_problems must be a non-negative integer, got {max_problems!r}")
    _check_num_units(num_units)
    _check_budget(tokenizer, max_tokens)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if stage is None:
        stage = _sniff_stage(path)
    report = ValidationReport(path=path, stage=stage)
    collector = _Collector(report, max_problems)
    counts: Counter[str] = Counter()
    first_seen: dict[str, int] = {}
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            line, problems = _decode(raw)
            if line is None:
                report.records += 1
                collector.add(number, problems)
                continue
            if stage == 1:
                report.records += 1
                counts["units"] += 1
                collector.add(number, [("units", p) for p in check_unit_line(line, num_units=num_units)])
                continue
            if not line.strip():
                continue
            report.records += 1
            try:
                record = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                collector.add(number, [("json", f"not valid JSON ({e.msg} at column {e.pos + 1})")])
                continue
            problems = _record_problems(record, num_units=num_units, tokenizer=tokenizer, max_tokens=max_tokens)
            if isinstance(record, dict):
                task = record.get("task")
                counts[task if isinstance(task, str) else "untagged"] += 1
                if stage in STAGE_TASKS and task in TASKS and task not in STAGE_TASKS[stage]:
                    problems.append(("task", f"task {task!r} does not belong in a stage-{stage} file"))
                record_id = record.get("id")
                if isinstance(record_id, str):
                    if record_id in first_seen:
                        problems.append(("id", f"duplicate id {record_id!r} (first on line {first_seen[record_id]})"))
                    else:
                        first_seen[record_id] = number
            collector.add(number, problems)
    report.counts = dict(counts)
    if report.stage is None:
        if any(task in COM_TASKS for task in counts):
            report.stage = 3
        elif any(task in STAGE_TASKS[2] for task in counts):
            report.stage = 2
    if report.records == 0:
        collector.add(0, [("file", "no records")])
    logger.debug("validated %s: %d records, %d problems", path, report.records, report.num_problems)
    return report
