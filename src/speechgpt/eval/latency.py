"""Latency of one spoken turn: where the time goes, and how soon the user hears something.

:func:`measure_latency` asks the same spoken question several times, alternating the two ways of answering:

* **non-streaming** (:meth:`SpeechGPT.chat <speechgpt.infer.SpeechGPT.chat>`): the full reply, with the time of
  each stage from ``Reply.timings``: speech → units, prefill (the prompt's forward pass, which also yields the first
  token), decode (every later token), vocoder (one-shot synthesis), total;
* **streaming** (:meth:`~speechgpt.infer.SpeechGPT.chat_stream`): time to the first text and to the first audio
  sample, the numbers a listener feels, with the vocoder running on unit chunks while the LM still writes.

Each number is the median over the repeats, after ``warmup`` unmeasured turns (first calls pay one-off costs such
as memory allocation). Rates: decode tokens/s counts the tokens after the first (the first comes from prefill);
a real-time factor (RTF) is seconds of work per second of audio (below 1 is faster than real time): speech → units
against the question's duration, vocoder and whole reply against the answer's. The units cache of the pipeline is
switched off while measuring, so every turn really encodes the question.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from speechgpt.audio import AudioSource, load_audio
from speechgpt.constants import SAMPLE_RATE
from speechgpt.eval.asr import ProgressFn

if TYPE_CHECKING:
    from speechgpt.infer import GenerationOptions, Reply, SpeechGPT

logger = logging.getLogger(__name__)

__all__ = ["LATENCY_MAX_NEW_TOKENS", "STAGES", "LatencyResult", "LatencyRun", "measure_latency", "summarize_runs"]

LATENCY_MAX_NEW_TOKENS = 512
"""Default generation budget: a short spoken answer with its transcript and text."""
STAGES = ("speech_to_units", "prefill", "decode", "vocoder")
"""The stages of a non-streaming turn, in order (their sum is close to ``total``)."""


@dataclass(frozen=True)
class LatencyRun:
    """One measured turn.

    Attributes:
        streaming: Whether it was answered with ``chat_stream``.
        timings: The reply's ``timings`` (seconds; see :class:`~speechgpt.infer.Reply`).
        prompt_tokens: Tokens of the prompt.
        completion_tokens: Tokens generated.
        answer_seconds: Duration of the spoken answer (0 without one).
    """

    streaming: bool
    timings: dict[str, float]
    prompt_tokens: int
    completion_tokens: int
    answer_seconds: float

    @classmethod
    def from_reply(cls, reply: Reply, *, streaming: bool) -> LatencyRun:
        return cls(streaming, dict(reply.timings), reply.prompt_tokens, reply.completion_tokens, reply.duration)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def summarize_runs(runs: Sequence[LatencyRun], question_seconds: float) -> dict[str, float | None]:
    """Median per-turn numbers of measured runs (``None`` where a number cannot be computed, e.g. no audio).

    Non-streaming runs give the stage times, token rates and RTFs; streaming runs give ``first_text_s``,
    ``first_audio_s``, ``stream_total_s`` and ``stream_vocoder_rtf``. Every rate is computed per run, then the
    median is taken.
    """
    full = [run for run in runs if not run.streaming]
    streamed = [run for run in runs if run.streaming]

    def median_of(chosen: Sequence[LatencyRun], fn: Any) -> float | None:
        values = [v for v in (fn(run) for run in chosen) if v is not None]
        return _median(values)

    summary: dict[str, float | None] = {"question_seconds": question_seconds}
    for stage in STAGES:
        summary[f"{stage}_s"] = median_of(full, lambda r, s=stage: r.timings.get(s, 0.0))
    summary.update(
        {
            "speech_to_units_rtf": median_of(
                full, lambda r: _ratio(r.timings.get("speech_to_units", 0.0), question_seconds)
            ),
            "first_token_s": median_of(
                full, lambda r: r.timings.get("speech_to_units", 0.0) + r.timings.get("prefill", 0.0)
            ),
            "prompt_tokens": median_of(full, lambda r: float(r.prompt_tokens)),
            "prefill_tokens_per_s": median_of(full, lambda r: _ratio(r.prompt_tokens, r.timings.get("prefill", 0.0))),
            "completion_tokens": median_of(full, lambda r: float(r.completion_tokens)),
            "decode_tokens_per_s": median_of(
                full, lambda r: _ratio(r.completion_tokens - 1, r.timings.get("decode", 0.0))
            ),
            "answer_audio_s": median_of(full, lambda r: r.answer_seconds),
            "vocoder_rtf": median_of(full, lambda r: _ratio(r.timings.get("vocoder", 0.0), r.answer_seconds)),
            "full_reply_s": median_of(full, lambda r: r.timings.get("total")),
            "reply_rtf": median_of(full, lambda r: _ratio(r.timings.get("total", 0.0), r.answer_seconds)),
            "first_text_s": median_of(streamed, lambda r: r.timings.get("first_text")),
            "first_audio_s": median_of(streamed, lambda r: r.timings.get("first_audio")),
            "stream_total_s": median_of(streamed, lambda r: r.timings.get("total")),
            "stream_vocoder_rtf": median_of(
                streamed, lambda r: _ratio(r.timings.get("vocoder", 0.0), r.answer_seconds)
            ),
        }
    )
    return summary


@dataclass
class LatencyResult:
    """What :func:`measure_latency` measured: every run, and their medians in ``summary``."""

    question_seconds: float
    runs: list[LatencyRun]
    summary: dict[str, float | None] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def repeats(self) -> int:
        return sum(not run.streaming for run in self.runs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "latency",
            "question_seconds": self.question_seconds,
            "repeats": self.repeats,
            **{k: v for k, v in self.summary.items() if k != "question_seconds"},
            "options": self.options,
            "runs": [run.to_dict() for run in self.runs],
        }


def default_options(max_new_tokens: int = LATENCY_MAX_NEW_TOKENS) -> GenerationOptions:
    """Greedy decoding with a spoken answer, so every stage (vocoder included) runs."""
    from speechgpt.infer import GenerationOptions

    return GenerationOptions(temperature=0.0, max_new_tokens=max_new_tokens, output_modality="speech", seed=0)


def _streamed_reply(pipeline: SpeechGPT, messages: list[dict[str, Any]], options: GenerationOptions) -> Reply:
    from speechgpt.infer import Done

    for event in pipeline.chat_stream(messages, options):
        if isinstance(event, Done):
            return event.reply
    raise AssertionError("a streamed turn always ends with Done")  # pragma: no cover


def measure_latency(
    pipeline: SpeechGPT,
    question_audio: AudioSource,
    *,
    repeats: int = 3,
    warmup: int = 1,
    options: GenerationOptions | None = None,
    progress: ProgressFn | None = None,
) -> LatencyResult:
    """Time a spoken turn ``repeats`` times non-streaming and ``repeats`` times streaming.

    Args:
        pipeline: A loaded :class:`~speechgpt.infer.SpeechGPT`.
        question_audio: The spoken question (path, file bytes, or 16 kHz samples); read once, before timing.
        repeats: Measured turns per mode.
        warmup: Unmeasured turns first.
        options: Generation options; greedy with a spoken answer (:data:`LATENCY_MAX_NEW_TOKENS`) when None.
        progress: Called as ``progress(done, total)`` after each turn.

    Returns:
        A :class:`LatencyResult` (medians in ``summary``).

    Raises:
        ValueError: ``repeats`` < 1 or ``warmup`` < 0.
        AudioError: the question cannot be read.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    options = options or default_options()
    in_memory = isinstance(question_audio, np.ndarray | torch.Tensor)
    wave = load_audio(question_audio, sample_rate=SAMPLE_RATE if in_memory else None)
    question_seconds = wave.size / SAMPLE_RATE
    messages = [{"role": "user", "content": {"type": "audio", "audio": wave, "sample_rate": SAMPLE_RATE}}]
    cache_size = pipeline.units_cache_size
    pipeline.units_cache_size = 0  # every turn must really encode the question
    runs: list[LatencyRun] = []
    total = warmup + 2 * repeats
    try:
        for index in range(total):
            if index < warmup:
                pipeline.chat(messages, options)
            else:
                streaming = (index - warmup) % 2 == 1
                reply = _streamed_reply(pipeline, messages, options) if streaming else pipeline.chat(messages, options)
                runs.append(LatencyRun.from_reply(reply, streaming=streaming))
            if progress is not None:
                progress(index + 1, total)
    finally:
        pipeline.units_cache_size = cache_size
    if any(run.answer_seconds == 0 for run in runs):
        logger.warning("some replies held no speech; vocoder and reply RTFs leave them out")
    settings = {"max_new_tokens": options.max_new_tokens, "output_modality": str(options.output_modality.value)}
    settings.update(temperature=options.temperature, audio_chunk_units=options.audio_chunk_units)
    return LatencyResult(question_seconds, runs, summarize_runs(runs, question_seconds), settings)
