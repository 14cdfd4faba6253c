"""SpeechInstruct training records: cross-modal (ASR, TTS) and chain-of-modality, in the released layout.

Every record is ``{"id", "task", "prefix", "plain_text"}``: ``prefix`` is the released meta instruction and
``plain_text`` the released turn layout (``prompt_format.record_text``); ``id`` and ``task`` are ours (resume keys
and statistics; training reads only ``prefix`` and ``plain_text``). All strings come from
:mod:`speechgpt.prompt_format`; transcripts and answers pass through ``neutralize_user_text`` so a corpus line such
as ``<sosp><12>[SpeechGPT]: <eoa>`` stays text and cannot pose as control tokens or units.
"""

from __future__ import annotations

from typing import Any

from speechgpt.data.validate import ASR_TASK, DEFAULT_NUM_UNITS, TTS_TASK, check_unit_string, com_task
from speechgpt.prompt_format import (
    META_INSTRUCTION,
    Modality,
    chain_of_modality_answer,
    chain_of_modality_question,
    cross_modal_question,
    neutralize_user_text,
    record_text,
)

RECORD_FIELDS = ("id", "task", "prefix", "plain_text")
"""The fields of every record, in the order they are written."""


def _check_id(record_id: str) -> str:
    if not isinstance(record_id, str) or not record_id.strip():
        raise ValueError(f"record id must be a non-empty string, got {record_id!r}")
    if any(ch in record_id for ch in "\r\n"):
        raise ValueError(f"record id must be one line, got {record_id!r}")
    return record_id


def _units(units: str | None, name: str, num_units: int) -> str:
    if units is None:
        raise ValueError(f"{name} is required: a unit string <sosp><N>...<eosp>")
    problems = check_unit_string(units, num_units=num_units)
    if problems:
        raise ValueError(f"{name}: {'; '.join(problems)}")
    return units


def _text(text: str, name: str, *, one_line: bool) -> str:
    """Neutralized, trimmed text; ``one_line`` also collapses whitespace runs (transcripts), else keeps newlines."""
    if not isinstance(text, str):
        raise ValueError(f"{name} must be a string, got {type(text).__name__}")
    text = " ".join(text.split()) if one_line else text.strip()
    if not text:
        raise ValueError(f"{name} is empty")
    return neutralize_user_text(text)


def _template(template: str) -> str:
    if not isinstance(template, str) or not " ".join(template.split()):
        raise ValueError(f"template must be a non-empty string, got {template!r}")
    if neutralize_user_text(template) != template:
        raise ValueError(f"template holds a control string or unit token: {template!r}")
    return " ".join(template.split())


def _modality(value: Modality | str, name: str) -> Modality:
    try:
        return Modality(value)
    except ValueError:
        valid = ", ".join(m.value for m in Modality)
        raise ValueError(f"{name} must be one of: {valid}; got {value!r}") from None


def _record(record_id: str, task: str, question: str, response: str) -> dict[str, Any]:
    return {"id": record_id, "task": task, "prefix": META_INSTRUCTION, "plain_text": record_text(question, response)}


def make_asr_record(
    *, id: str, units: str, transcript: str, template: str, num_units: int = DEFAULT_NUM_UNITS
) -> dict[str, Any]:
    """A speech→text record: ``{template} This is input: <sosp>...<eosp>`` answered by the transcript.

    Args:
        id: The record id (resume key), e.g. ``"<item id>-asr"``.
        units: The utterance's unit string ``<sosp><N>...<eosp>``.
        transcript: What was said; whitespace is collapsed and control strings neutralized.
        template: A speech→text instruction (:func:`speechgpt.data.templates.load_templates`).
        num_units: Unit ids must be below this.

    Raises:
        ValueError: for an empty id, transcript or template, or a malformed unit string.
    """
    question = cross_modal_question(_template(template), _units(units, "units", num_units))
    return _record(_check_id(id), ASR_TASK, question, _text(transcript, "transcript", one_line=True))


def make_tts_record(
    *, id: str, units: str, text: str, template: str, num_units: int = DEFAULT_NUM_UNITS
) -> dict[str, Any]:
    """A text→speech record: ``{template} This is input: {text}`` answered by the unit string.

    Args:
        id: The record id (resume key), e.g. ``"<item id>-tts"``.
        units: The unit string of ``text`` spoken.
        text: The text to speak; whitespace is collapsed and control strings neutralized.
        template: A text→speech instruction.
        num_units: Unit ids must be below this.

    Raises:
        ValueError: for an empty id, text or template, or a malformed unit string.
    """
    question = cross_modal_question(_template(template), _text(text, "text", one_line=True))
    return _record(_check_id(id), TTS_TASK, question, _units(units, "units", num_units))


def make_com_record(
    *,
    id: str,
    input_modality: Modality | str,
    output_modality: Modality | str,
    question_text: str,
    answer_text: str,
    question_units: str | None = None,
    answer_units: str | None = None,
    num_units: int = DEFAULT_NUM_UNITS,
) -> dict[str, Any]:
    """A chain-of-modality record for one (input, output) modality pair.

    The question is the spoken question's unit string (speech input) or the neutralized question text (text
    input), plus the output cue of ``prompt_format``; the response is ``chain_of_modality_answer``: the transcript
    (the neutralized ``question_text``) for speech input, ``[ta] {answer}``, and ``[ua] <sosp>...<eosp>`` for
    speech output.

    Args:
        id: The record id, e.g. ``"<item id>-speech2text"``.
        input_modality: How the question is asked.
        output_modality: How the answer is given.
        question_text: The question as text (its transcript when spoken); newlines are kept for text input.
        answer_text: The text answer; newlines are kept.
        question_units: The spoken question's unit string; required for speech input, ignored for text input.
        answer_units: The spoken answer's unit string; required for speech output, ignored for text output.
        num_units: Unit ids must be below this.

    Raises:
        ValueError: for an unknown modality, empty text, or a missing or malformed unit string.
    """
    record_id = _check_id(id)
    source = _modality(input_modality, "input_modality")
    target = _modality(output_modality, "output_modality")
    speech_in, speech_out = source == Modality.SPEECH, target == Modality.SPEECH
    question = _text(question_text, "question_text", one_line=speech_in)
    content = _units(question_units, "question_units", num_units) if speech_in else question
    response = chain_of_modality_answer(
        input_modality=source,
        output_modality=target,
        answer_text=_text(answer_text, "answer_text", one_line=False),
        transcript=question if speech_in else None,
        answer_units=_units(answer_units, "answer_units", num_units) if speech_out else None,
    )
    return _record(record_id, com_task(source, target), chain_of_modality_question(content, source, target), response)
