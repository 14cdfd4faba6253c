"""A stand-in for ``speechgpt.infer.SpeechGPT`` with the same interface, for testing the HTTP layer alone.

It behaves like the real pipeline where the server can tell: typed text is neutralised before it becomes part of
the "generation", the generation is a SpeechGPT-style response string parsed by ``prompt_format.parse_response``
(so a forged ``<sosp>...<eosp>`` in user text would turn into units if the neutralising were skipped), speech comes
out as a 16 kHz waveform, and ``chat_stream`` yields text deltas, audio chunks while "generating", then ``Done``.
Everything is a deterministic function of the input, so tests compute the expected answer with :meth:`answer_for`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from speechgpt.constants import HOP_LENGTH, SAMPLE_RATE
from speechgpt.infer import AudioChunk, Done, GenerationOptions, Reply, TextDelta
from speechgpt.prompt_format import EOA, Modality, chain_of_modality_answer, neutralize_user_text, parse_response
from speechgpt.units import parse_units, units_to_string

NUM_UNITS = 50
FRAMES_PER_UNIT = 2
"""Every fake unit lasts two 20 ms frames."""
CHUNK_UNITS = 4
"""Units per streamed audio chunk."""
MAX_UNITS = 40
MODEL_NAME = "fake-speechgpt"


@dataclass
class Call:
    """One request as the pipeline received it."""

    messages: list[dict[str, Any]]
    options: GenerationOptions | None
    stream: bool


def unit_wave(units: list[int]) -> np.ndarray:
    """The fake vocoder: a tone per unit (200 Hz + 20 Hz per id), ``FRAMES_PER_UNIT`` frames each."""
    t = np.arange(FRAMES_PER_UNIT * HOP_LENGTH) / SAMPLE_RATE
    pieces = [0.3 * np.sin(2 * np.pi * (200.0 + 20.0 * u) * t) for u in units]
    return np.concatenate(pieces).astype(np.float32) if pieces else np.zeros(0, np.float32)


def describe_audio(samples: np.ndarray) -> str:
    """The fake recogniser: what it "hears" in a recording is its length."""
    return f"{len(samples) / SAMPLE_RATE:.2f} seconds of audio"


class FakePipeline:
    """Deterministic pipeline double; records every call and can be slowed, blocked or made to fail."""

    def __init__(
        self,
        *,
        model_name: str | None = MODEL_NAME,
        delay_s: float = 0.0,
        event_delay_s: float = 0.0,
        gate: threading.Event | None = None,
        error: BaseException | None = None,
    ) -> None:
        self.model_name = model_name
        self.delay_s = delay_s
        self.event_delay_s = event_delay_s
        self.gate = gate
        self.error = error
        self.calls: list[Call] = []
        self.streams_closed_early = 0
        self._lock = threading.Lock()

    # -- what a test needs to predict the answer ---------------------------------------------------------------

    @staticmethod
    def answer_for(content: Any, output_modality: str = "text") -> Reply:
        """The reply the fake gives to a final user turn with this content (str, audio part, or parts list)."""
        if isinstance(content, str):
            question, transcript, modality = neutralize_user_text(content), None, Modality.TEXT
            answer = f"you said: {question}"
        elif isinstance(content, dict) and content.get("type") == "audio":
            transcript, modality = describe_audio(np.asarray(content["audio"])), Modality.SPEECH
            answer = f"you said: {transcript}"
        elif isinstance(content, list):  # a cross-modal instruction: text + audio → its transcript (ASR)
            audio = next(part["audio"] for part in content if part.get("type") == "audio")
            raw = describe_audio(np.asarray(audio)) + EOA
            return FakePipeline._reply(raw, len(content))
        else:
            raise ValueError(f"fake pipeline: unsupported user content {type(content).__name__}")
        out = Modality.SPEECH if output_modality == "speech" else Modality.TEXT
        units = [ord(c) % NUM_UNITS for c in answer][:MAX_UNITS] if out == Modality.SPEECH else None
        raw = chain_of_modality_answer(
            input_modality=modality,
            output_modality=out,
            answer_text=answer,
            transcript=transcript,
            answer_units=units_to_string(units) if units else None,
        )
        return FakePipeline._reply(raw + EOA, len(answer))

    @staticmethod
    def _reply(raw: str, prompt_tokens: int) -> Reply:
        parsed = parse_response(raw)
        units = parse_units(parsed.units) if parsed.units else []
        return Reply(
            transcript=parsed.transcript,
            text=parsed.text,
            units=units,
            waveform=unit_wave(units) if units else None,
            sample_rate=SAMPLE_RATE,
            raw=raw,
            finish_reason="stop",
            prompt_tokens=prompt_tokens,
            completion_tokens=len(raw.split()),
        )

    # -- the pipeline interface --------------------------------------------------------------------------------

    def chat(self, messages: list[dict[str, Any]], options: GenerationOptions | None = None) -> Reply:
        self._begin(messages, options, stream=False)
        return self.answer_for(messages[-1]["content"], options.output_modality if options else "text")

    def chat_stream(self, messages: list[dict[str, Any]], options: GenerationOptions | None = None) -> Iterator[Any]:
        self._begin(messages, options, stream=True)
        reply = self.answer_for(messages[-1]["content"], options.output_modality if options else "text")
        finished = False
        try:
            words = reply.text.split(" ")
            for i, word in enumerate(words):
                self._pause()
                yield TextDelta(word if i == 0 else " " + word)
            for start in range(0, len(reply.units), CHUNK_UNITS):
                self._pause()
                yield AudioChunk(unit_wave(reply.units[start : start + CHUNK_UNITS]), SAMPLE_RATE)
            yield Done(reply)
            finished = True
        finally:
            if not finished:
                with self._lock:
                    self.streams_closed_early += 1

    def _begin(self, messages: list[dict[str, Any]], options: GenerationOptions | None, *, stream: bool) -> None:
        with self._lock:
            self.calls.append(Call(messages, options, stream))
        if self.gate is not None and not self.gate.wait(timeout=30):
            raise RuntimeError("fake pipeline: the test never opened the gate")
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.error is not None:
            raise self.error

    def _pause(self) -> None:
        if self.event_delay_s:
            time.sleep(self.event_delay_s)
