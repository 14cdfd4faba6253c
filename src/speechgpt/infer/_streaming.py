"""Streaming one answer: the events a turn yields, and the helpers that produce them while the LM still writes.

:meth:`SpeechGPT.chat_stream <speechgpt.infer.SpeechGPT.chat_stream>` and :meth:`~speechgpt.infer.SpeechGPT.chat`
run the same token loop; these helpers are what the streaming mode adds to it, each fed one step at a time:
:class:`UnitSpan` reads the spoken answer's units by token id, :class:`AudioStream` hands them to the vocoder in
growing chunks, and :class:`AnswerText` turns the growing raw response into append-only text deltas that always
agree with :func:`speechgpt.prompt_format.parse_response` (a tail that may still become a control tag is held back).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import torch

from speechgpt.constants import SAMPLE_RATE
from speechgpt.prompt_format import CONTROL_STRINGS, EOA, EOS, EOSP, SOSP, TEXT_ANSWER_TAG, parse_response

if TYPE_CHECKING:
    from speechgpt.infer.pipeline import Reply
    from speechgpt.lm import SpeechVocab
    from speechgpt.vocoder.base import Vocoder

logger = logging.getLogger(__name__)

__all__ = [
    "AnswerText",
    "AudioChunk",
    "AudioStream",
    "Done",
    "Event",
    "TextDelta",
    "Transcript",
    "UnitSpan",
    "stable_text",
    "to_numpy",
]


@dataclass(frozen=True)
class TextDelta:
    """More of the answer's text; the deltas of a turn joined equal ``Reply.text``."""

    text: str


@dataclass(frozen=True)
class Transcript:
    """What the model heard in the user's speech, once it is complete (speech questions only)."""

    text: str


@dataclass(frozen=True)
class AudioChunk:
    """The next piece of the spoken answer; the chunks joined equal ``Reply.waveform``."""

    samples: np.ndarray
    sample_rate: int = SAMPLE_RATE


@dataclass(frozen=True)
class Done:
    """The turn is over; ``reply`` holds everything, as :meth:`SpeechGPT.chat` returns it."""

    reply: Reply


Event: TypeAlias = TextDelta | Transcript | AudioChunk | Done


def to_numpy(wave: torch.Tensor) -> np.ndarray:
    """A vocoder's output as flat float32 samples on the CPU, the form events and replies carry."""
    return wave.detach().to("cpu", torch.float32).numpy().reshape(-1)


class UnitSpan:
    """Reads the first ``<sosp>`` … ``<eosp>`` span by token id, as the tokens arrive (unterminated spans count)."""

    def __init__(self, vocab: SpeechVocab) -> None:
        self.vocab = vocab
        self.units: list[int] = []
        self.inside = False
        self.closed = False

    def add(self, token: int) -> list[int]:
        """Feed one token; return the units it adds (none or one)."""
        if self.closed:
            return []
        if not self.inside:
            self.inside = token == self.vocab.sosp_id
            return []
        if token == self.vocab.eosp_id:
            self.inside, self.closed = False, True
            return []
        if self.vocab.is_unit(token):
            unit = token - self.vocab.unit_offset
            self.units.append(unit)
            return [unit]
        return []  # a stray control token inside the span is skipped, as parse_response skips it


class AudioStream:
    """Feeds unit chunks to the vocoder's streaming synthesizer as they arrive; one-shot for other vocoders.

    Chunks start at ``chunk_units`` and double up to ``max_chunk_units`` (``GenerationOptions.audio_chunk_units``
    and ``max_audio_chunk_units``); vocoder seconds are added to ``timings["vocoder"]``.
    """

    def __init__(self, vocoder: Vocoder, chunk_units: int, max_chunk_units: int, timings: dict[str, float]) -> None:
        from speechgpt.vocoder.streaming import StreamingSynthesizer

        self.vocoder = vocoder
        self.chunk_units = chunk_units
        self.max_chunk_units = max_chunk_units
        self.timings = timings
        self.pending: list[int] = []
        self.all_units: list[int] = []
        self.pieces: list[np.ndarray] = []
        streamable = all(hasattr(vocoder, a) for a in ("render_frames", "log_durations", "frame_context", "duration"))
        self.synth = StreamingSynthesizer(vocoder) if streamable else None  # type: ignore[arg-type]

    def _timed(self, fn: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
        start = time.perf_counter()
        with torch.inference_mode():
            out = fn(*args)
        self.timings["vocoder"] += time.perf_counter() - start
        return out

    def _emit(self, wave: torch.Tensor) -> list[np.ndarray]:
        if wave.numel() == 0:
            return []
        samples = to_numpy(wave)
        self.pieces.append(samples)
        return [samples]

    def push(self, units: list[int]) -> list[np.ndarray]:
        """Take newly generated units; return the audio of a chunk once enough have come (else nothing)."""
        units = [u for u in units if u < self.vocoder.num_units]
        self.pending.extend(units)
        self.all_units.extend(units)
        if self.synth is None or len(self.pending) < self.chunk_units:
            return []
        chunk, self.pending = self.pending, []
        self.chunk_units = min(2 * self.chunk_units, self.max_chunk_units)
        return self._emit(self._timed(self.synth.push, chunk))

    def finish(self) -> list[np.ndarray]:
        """The rest of the audio, once the LM has stopped."""
        if not self.all_units:
            return []
        if self.synth is None:
            return self._emit(self._timed(self.vocoder.synthesize, self.all_units))
        out = []
        if self.pending:
            out += self._emit(self._timed(self.synth.push, self.pending))
            self.pending = []
        return out + self._emit(self._timed(self.synth.finish))

    def waveform(self) -> np.ndarray | None:
        """All the audio emitted so far, joined (None when there was none)."""
        return np.concatenate(self.pieces).astype(np.float32, copy=False) if self.pieces else None


# The first unit span as parse_response sees it (to the first <eosp>, or to the end when left open).
_FIRST_UNIT_SPAN = re.compile(re.escape(SOSP) + r".*?(?:" + re.escape(EOSP) + r"|$)", flags=re.DOTALL)
_LONGEST_CONTROL = max(len(s) for s in CONTROL_STRINGS)
_CONTROL_PREFIXES = frozenset(s.lower()[:n] for s in CONTROL_STRINGS for n in range(1, len(s) + 1))
_PARTIAL_UNIT = re.compile(r"<\d*")


def stable_text(text: str) -> str:
    """``text`` without a tail that may still change meaning: an unfinished control tag or a partial character."""
    text = text.rstrip("\ufffd")  # a multi-byte character split across tokens decodes as U+FFFD for now
    for start in range(max(0, len(text) - _LONGEST_CONTROL), len(text)):
        if text[start] in "<[":
            tail = text[start:].lower()
            if tail in _CONTROL_PREFIXES or _PARTIAL_UNIT.fullmatch(tail):
                return text[:start]
    return text


class AnswerText:
    """Turns the growing raw response into append-only answer deltas that agree with ``parse_response``.

    The answer starts after ``[ta]`` (before it comes the transcript, in the released layout), so nothing is sent
    until ``[ta]`` appears; a tail that may still become a control tag is held back. If the model never writes
    ``[ta]``, the whole text is the answer and comes at the end.
    """

    def __init__(self, speech_input: bool) -> None:
        self.speech_input = speech_input
        self.sent = ""
        self.transcript_sent = False

    def update(self, raw: str) -> list[Event]:
        """Events for the response so far."""
        ended = False
        for end in (EOA, EOS):
            if end in raw:
                raw, ended = raw.split(end, 1)[0], True
        text = raw if ended else stable_text(raw)
        if TEXT_ANSWER_TAG not in _FIRST_UNIT_SPAN.sub("", text, count=1):
            return []
        parsed = parse_response(text)
        events: list[Event] = []
        if not self.transcript_sent:
            self.transcript_sent = True
            if self.speech_input and parsed.transcript:
                events.append(Transcript(parsed.transcript))
        events += self._delta(parsed.text)
        return events

    def _delta(self, text: str) -> list[Event]:
        if not text.startswith(self.sent) or len(text) == len(self.sent):
            return []
        delta, self.sent = text[len(self.sent) :], text
        return [TextDelta(delta)]

    def flush(self, transcript: str, final_text: str) -> list[Event]:
        """The rest of the answer, once the final reply is known."""
        events: list[Event] = []
        if not self.transcript_sent and self.speech_input and transcript:
            events.append(Transcript(transcript))
        self.transcript_sent = True
        if not final_text.startswith(self.sent):
            logger.warning("streamed text %r is not a prefix of the final answer %r", self.sent, final_text)
            return events
        return events + self._delta(final_text)
