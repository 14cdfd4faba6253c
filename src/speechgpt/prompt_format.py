"""The text layout of SpeechGPT conversations: control strings, the released templates, and the four
chain-of-modality layouts.

One module holds these strings so that the data builders (which write them into JSONL), the language-model code
(which turns them into token ids without trusting user text) and the evaluation (which parses replies) cannot
drift apart. Released facts (``../shared/DESIGN.md``): records are ``{"prefix": META_INSTRUCTION, "plain_text":
"[Human]: ...<eoh>. [SpeechGPT]: ...<eoa>"}`` (the released chain-of-modality and inference layout); the
response is what follows ``[SpeechGPT]: ``.

Nothing here tokenizes; nothing here imports torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

SOSP = "<sosp>"
EOSP = "<eosp>"
HUMAN = "[Human]"
SPEECHGPT = "[SpeechGPT]"
EOH = "<eoh>"
EOS = "<eos>"
EOA = "<eoa>"
"""End of answer: written by the data, not added to the vocabulary (the release tokenizes it as plain text)."""
TEXT_QUESTION_TAG = "[tq]"
TEXT_ANSWER_TAG = "[ta]"
UNIT_ANSWER_TAG = "[ua]"

ADDED_CONTROL_TOKENS = (SOSP, EOSP, HUMAN, SPEECHGPT, EOH, EOS)
"""Control tokens added after the unit tokens, in the released order."""

META_INSTRUCTION = (
    "You are an AI assistant whose name is SpeechGPT.\n"
    "- SpeechGPT is a intrinsic cross-modal conversational language model that is developed by Fudan University.  "
    "SpeechGPT can understand and communicate fluently with human through speech or text chosen by the user.\n"
    "- It can perceive cross-modal inputs and generate cross-modal outputs.\n"
)
"""The released meta instruction, verbatim (the grammar and the two spaces are part of the contract)."""

HUMAN_OPEN = f"{HUMAN}: "
RESPONSE_OPEN = f". {SPEECHGPT}: "
"""What separates the human turn (ending in ``<eoh>``) from the response in training records."""
CROSS_MODAL_INPUT = " This is input: "
"""Joins a cross-modal instruction template to its input, as in the released cross-modal data."""

CONTROL_STRINGS = (*ADDED_CONTROL_TOKENS, EOA, TEXT_QUESTION_TAG, TEXT_ANSWER_TAG, UNIT_ANSWER_TAG)
_CONTROL_PATTERN = re.compile(
    "|".join(re.escape(s) for s in CONTROL_STRINGS) + r"|<\d+>",
    flags=re.IGNORECASE,
)


class Modality(str, Enum):
    """What a turn is made of."""

    TEXT = "text"
    SPEECH = "speech"


OUTPUT_MODALITY_CUES = {
    Modality.TEXT: " Answer in text.",
    Modality.SPEECH: " Answer in speech.",
}
"""Appended to a chain-of-modality question whose output modality differs from the released default.

The released chain-of-modality data is speech in, speech out with no cue; the other three combinations need one
so the model knows what to produce. Speech→speech and text→text take no cue (each modality answers in kind).
"""


def neutralize_user_text(text: str) -> str:
    """Make typed text unable to pose as control tokens or unit ids.

    ``<sosp>``, ``<12>``, ``[SpeechGPT]`` and the like are rewritten with their brackets swapped for look-alike
    characters (``‹sosp›``, ``⁅SpeechGPT⁆``), so the text still reads the same to a person but no tokenizer
    matches it as a control token. Used by the data builders on transcripts and answers, and by the prompt builder
    on anything a user typed.
    """

    def _swap(match: re.Match[str]) -> str:
        return match.group(0).replace("<", "‹").replace(">", "›").replace("[", "⁅").replace("]", "⁆")

    return _CONTROL_PATTERN.sub(_swap, text)


def human_turn(content: str) -> str:
    """``[Human]: {content}<eoh>`` — content is used as given (neutralize user text first)."""
    return f"{HUMAN_OPEN}{content}{EOH}"


def record_text(question: str, response: str) -> str:
    """The ``plain_text`` of a training record: the human turn, then the response ended by ``<eoa>``."""
    return f"{human_turn(question)}{RESPONSE_OPEN}{response}{EOA}"


def cross_modal_question(template: str, content: str) -> str:
    """A cross-modal instruction: ``{template} This is input: {content}``."""
    return f"{template.rstrip()}{CROSS_MODAL_INPUT}{content}"


def chain_of_modality_question(question: str, input_modality: Modality, output_modality: Modality) -> str:
    """The human side of a chain-of-modality turn: the question (text, or a unit string) plus an output cue."""
    cue = "" if input_modality == output_modality else OUTPUT_MODALITY_CUES[output_modality]
    return f"{question}{cue}"


def chain_of_modality_answer(
    *,
    input_modality: Modality,
    output_modality: Modality,
    answer_text: str,
    transcript: str | None = None,
    answer_units: str | None = None,
) -> str:
    """The response of a chain-of-modality turn, without the closing ``<eoa>``.

    Speech input starts with the transcript of the question (``{transcript}; ``); the text answer follows as
    ``[ta] {answer}``; speech output adds ``; [ua] <sosp>...<eosp>``. Speech→speech is the released layout
    ``{transcript}; [ta] {answer}; [ua] <sosp>...<eosp>``.
    """
    parts: list[str] = []
    if input_modality == Modality.SPEECH:
        if transcript is None:
            raise ValueError("a speech question needs its transcript")
        parts.append(transcript)
    parts.append(f"{TEXT_ANSWER_TAG} {answer_text}")
    if output_modality == Modality.SPEECH:
        if answer_units is None:
            raise ValueError("a spoken answer needs its unit string")
        parts.append(f"{UNIT_ANSWER_TAG} {answer_units}")
    return "; ".join(parts)


@dataclass(frozen=True)
class ParsedResponse:
    """What a model said, split into its parts. Fields a response lacks are empty strings."""

    transcript: str = ""
    text: str = ""
    units: str = ""
    """The first complete ``<sosp>...<eosp>`` span, or the unterminated tail after ``<sosp>`` (empty if none)."""


_UNIT_SPAN = re.compile(re.escape(SOSP) + r"(.*?)(?:" + re.escape(EOSP) + r"|$)", flags=re.DOTALL)


def _strip_control(text: str) -> str:
    return re.sub(r"\s+", " ", _CONTROL_PATTERN.sub(" ", text)).strip(" ;.\n") if text else ""


def parse_response(response: str) -> ParsedResponse:
    """Split a generated response into transcript, text answer and units; never raises.

    Tolerates what a small or confused model writes: a missing ``[ta]`` (the whole text is the answer), a missing
    ``[ua]`` (units taken from any ``<sosp>`` span), an unbalanced ``<sosp>``, stray tags. Returned text never
    contains control strings.
    """
    for end in (EOA, EOS):
        response = response.split(end, 1)[0]
    span = _UNIT_SPAN.search(response)
    units = ""
    if span:
        units = SOSP + "".join(re.findall(r"<\d+>", span.group(1))) + EOSP
        response = response[: span.start()] + response[span.end() :]
    head, sep, tail = response.partition(TEXT_ANSWER_TAG)
    if sep:
        transcript = head.replace(TEXT_QUESTION_TAG, " ")
        text = tail.split(UNIT_ANSWER_TAG, 1)[0]
    else:
        transcript, text = "", head.split(UNIT_ANSWER_TAG, 1)[0]
    return ParsedResponse(transcript=_strip_control(transcript), text=_strip_control(text), units=units)
