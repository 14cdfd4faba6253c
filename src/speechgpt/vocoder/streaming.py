"""Streaming synthesis: audio for units while the LM is still writing them, equal to one-shot synthesis.

One :class:`StreamingSynthesizer` serves every vocoder that follows the small :class:`StreamableVocoder` protocol
(the unit HiFi-GAN and :class:`~speechgpt.vocoder.fast.FastVocoder`): the unit, frame and duration bookkeeping is
the same, only "log durations of units" and "samples of a window of frames" differ per model.

Two things limit how early a sample can be final (the unit HiFi-GAN's numbers; the fast vocoder's are its
:attr:`~speechgpt.vocoder.fast.FastVocoder.frame_context`):

* A unit's duration depends on its neighbours (two kernel-3 convolutions: two units on each side), so the
  last :attr:`DurationPredictor.context` units wait for their right neighbours or the end of the stream.
* The generator's receptive field is finite. :func:`generator_context` computes it exactly from the
  configuration (layer by layer, backwards from one frame's samples): for the released vocoder one frame's
  320 samples depend on the frames from 21 before it to 21 after it. Synthesizing a window of frames with at
  least that much true context on each side and keeping its middle gives the same samples as synthesizing
  everything at once, because every convolution in the kept part then sees the same inputs (and where the
  window meets the true start or end of the utterance, the same zero padding).

:class:`StreamingSynthesizer` keeps only the context it needs, so memory stays bounded however long the stream.
Smaller contexts than :func:`generator_context` trade exactness for latency; the error then grows as the
context shrinks (measured in ``tests/vocoder/test_streaming.py`` and ``benchmarks/vocoder.py``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from typing import Protocol

import torch

from speechgpt.vocoder.base import UnitsLike, as_unit_ids, check_speaker, durations_from_log
from speechgpt.vocoder.config import VocoderConfig
from speechgpt.vocoder.hifigan import PRE_POST_KERNEL

__all__ = ["StreamableVocoder", "StreamingSynthesizer", "generator_context", "synthesize_stream"]


def _conv_inputs(lo: int, hi: int, kernel: int, dilation: int, padding: int) -> tuple[int, int]:
    """Input positions that outputs ``lo..hi`` of a stride-1 convolution read: ``t - padding + j * dilation``."""
    return lo - padding, hi - padding + (kernel - 1) * dilation


def _transposed_inputs(lo: int, hi: int, kernel: int, stride: int, padding: int) -> tuple[int, int]:
    """Input positions that outputs ``lo..hi`` of a transposed convolution read: ``0 <= t + p - s*u < k``."""
    return -((kernel - 1 - lo - padding) // stride), (hi + padding) // stride  # ceil((lo+p-k+1)/u), floor((hi+p)/u)


def generator_context(config: VocoderConfig) -> tuple[int, int]:
    """Frames ``(left, right)`` of context that the samples of one frame depend on (the receptive field).

    Walks the generator backwards from the ``hop_length`` samples of frame 0 to the range of input frames
    they read. Released configuration: ``(21, 21)``.
    """
    lo, hi = _conv_inputs(0, config.hop_length - 1, PRE_POST_KERNEL, 1, PRE_POST_KERNEL // 2)  # conv_post
    for stage in reversed(range(config.num_stages)):
        ranges = []
        for kernel, dilations in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes, strict=True):
            a, b = lo, hi
            for dilation in reversed(dilations):
                a, b = _conv_inputs(a, b, kernel, 1, (kernel - 1) // 2)  # convs2
                a, b = _conv_inputs(a, b, kernel, dilation, (kernel * dilation - dilation) // 2)  # convs1
            ranges.append((a, b))
        lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
        rate, kernel = config.upsample_rates[stage], config.upsample_kernel_sizes[stage]
        lo, hi = _transposed_inputs(lo, hi, kernel, rate, (kernel - rate) // 2)
    lo, hi = _conv_inputs(lo, hi, PRE_POST_KERNEL, 1, PRE_POST_KERNEL // 2)  # conv_pre
    return -lo, hi


class _DurationPredictor(Protocol):
    @property
    def context(self) -> int:
        """Units on each side that one duration prediction depends on."""
        ...


class StreamableVocoder(Protocol):
    """What :class:`StreamingSynthesizer` needs from a vocoder (``UnitHiFiGAN`` and ``FastVocoder`` provide it).

    Windows of frames are rendered with ``frame_context`` frames of true context on each side; the samples of the
    window's middle then equal one-shot synthesis.
    """

    duration: _DurationPredictor

    @property
    def num_units(self) -> int:
        """Valid unit ids are ``0 … num_units-1``."""
        ...

    @property
    def num_speakers(self) -> int:
        """0 for a single-speaker vocoder."""
        ...

    @property
    def device(self) -> torch.device:
        """Where the model's tensors live."""
        ...

    @property
    def hop_length(self) -> int:
        """Samples per frame."""
        ...

    @property
    def frame_context(self) -> tuple[int, int]:
        """Frames ``(left, right)`` that one frame's samples depend on: the exact streaming contexts."""
        ...

    def log_durations(self, units: torch.Tensor) -> torch.Tensor:
        """Predicted ``log(1 + frames)`` ``[1, T]`` for unit ids ``[1, T]`` on :attr:`device`."""
        ...

    def render_frames(self, frame_ids: torch.Tensor, first_frame: int = 0, speaker: int | None = None) -> torch.Tensor:
        """Samples ``[F * hop_length]`` of frame-level ids ``[F]``, the first being frame ``first_frame``."""
        ...


class StreamingSynthesizer:
    """Push unit chunks as they arrive, get the audio that is final so far; :meth:`finish` flushes the rest.

    Args:
        model: The vocoder (eval mode), any :class:`StreamableVocoder`.
        dur_prediction: Predict durations (else one frame per unit).
        left_context: Frames of already-emitted audio's input kept before each window; default (None) the exact
            context, the model's ``frame_context`` (for the unit HiFi-GAN, :func:`generator_context`).
        right_context: Frames held back at the end until more arrive; default the exact receptive field.
            Smaller values cut latency at the price of a small mismatch with one-shot synthesis.
        speaker: Speaker id for a multi-speaker vocoder.
    """

    def __init__(
        self,
        model: StreamableVocoder,
        *,
        dur_prediction: bool = True,
        left_context: int | None = None,
        right_context: int | None = None,
        speaker: int | None = None,
    ) -> None:
        check_speaker(speaker, model.num_speakers)
        exact_left, exact_right = model.frame_context
        self.left_context = exact_left if left_context is None else left_context
        self.right_context = exact_right if right_context is None else right_context
        for name, value in (("left_context", self.left_context), ("right_context", self.right_context)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an int >= 0 (frames), got {value!r}")
        self.model = model
        self.dur_prediction = dur_prediction
        self.unit_context = model.duration.context if dur_prediction else 0
        self.speaker = speaker
        self._units = torch.empty(0, dtype=torch.long, device=model.device)  # units from _units_start on
        self._units_start = 0
        self._units_received = 0
        self._units_final = 0  # units whose duration is known
        self._frames = torch.empty(0, dtype=torch.long, device=model.device)  # frame ids from _frames_start on
        self._frames_start = 0
        self._frames_final = 0
        self._frames_emitted = 0
        self._unit_ends: deque[int] = deque()  # frame end of each final unit not yet fully emitted
        self._units_emitted = 0
        self._chunks = 0
        self.finished = False

    @property
    def units_received(self) -> int:
        """Units (ids >= 0) pushed so far."""
        return self._units_received

    @property
    def units_pending(self) -> int:
        """Units received whose audio is not fully out yet (the latency, in units)."""
        return self._units_received - self._units_emitted

    @property
    def frames_ready(self) -> int:
        """Frames whose units have final durations (audio is out up to ``frames_ready - right_context``)."""
        return self._frames_final

    @property
    def frames_emitted(self) -> int:
        """Frames whose samples have been returned."""
        return self._frames_emitted

    @torch.inference_mode()
    def push(self, units: UnitsLike) -> torch.Tensor:
        """Add units; return the samples that became final (possibly none: a ``[0]`` tensor).

        Raises:
            ValueError: bad ids (named by chunk number), or the stream is finished.
        """
        if self.finished:
            raise ValueError("the stream is finished; start a new one")
        ids, _ = as_unit_ids(units, self.model.num_units, f"unit chunk {self._chunks}", allow_empty=True)
        self._chunks += 1
        if ids.numel():
            self._units = torch.cat([self._units, ids.to(self.model.device)])
            self._units_received += ids.numel()
            self._finalize_durations(self._units_received - self.unit_context)
        return self._emit(self._frames_final - self.right_context)

    @torch.inference_mode()
    def finish(self) -> torch.Tensor:
        """End the stream and return the remaining samples.

        Raises:
            ValueError: no units arrived at all, or the stream is already finished.
        """
        if self.finished:
            raise ValueError("the stream is already finished")
        self.finished = True
        if self._units_received == 0:
            raise ValueError("the unit stream held no units (no ids >= 0) to synthesize")
        self._finalize_durations(self._units_received)
        return self._emit(self._frames_final)

    def feed(self, unit_chunks: Iterable[UnitsLike]) -> Iterator[torch.Tensor]:
        """Push every chunk, then finish; yield the pieces that are not empty."""
        for chunk in unit_chunks:
            piece = self.push(chunk)
            if piece.numel():
                yield piece
        piece = self.finish()
        if piece.numel():
            yield piece

    def _finalize_durations(self, upto: int) -> None:
        """Fix the durations of units ``[_units_final, upto)`` and append their frames."""
        if upto <= self._units_final:
            return
        first = self._units_final - self._units_start  # index in the buffer
        if self.dur_prediction:
            # The buffer holds unit_context units before the first new one and everything received after it, so
            # each new unit sees the neighbours it sees in one-shot prediction.
            log_durations = self.model.log_durations(self._units[None])[0]
            durations = durations_from_log(log_durations[first : upto - self._units_start])
        else:
            durations = torch.ones(upto - self._units_final, dtype=torch.long, device=self._units.device)
        new_units = self._units[first : upto - self._units_start]
        self._frames = torch.cat([self._frames, torch.repeat_interleave(new_units, durations)])
        for end in torch.cumsum(durations, 0).tolist():
            self._unit_ends.append(self._frames_final + end)
        self._frames_final += int(durations.sum())
        self._units_final = upto
        keep_from = max(0, self._units_final - self.unit_context)  # left context of the next prediction
        self._units = self._units[keep_from - self._units_start :]
        self._units_start = keep_from

    def _emit(self, target: int) -> torch.Tensor:
        """Synthesize frames ``[_frames_emitted, target)`` from a window with context, return their samples."""
        hop = self.model.hop_length
        if target <= self._frames_emitted:
            return torch.empty(0, device=self.model.device)
        start = max(0, self._frames_emitted - self.left_context)
        end = min(self._frames_final, target + self.right_context)
        window = self._frames[start - self._frames_start : end - self._frames_start]
        wave = self.model.render_frames(window, first_frame=start, speaker=self.speaker)
        out = wave[(self._frames_emitted - start) * hop : (target - start) * hop]
        self._frames_emitted = target
        while self._unit_ends and self._unit_ends[0] <= target:
            self._unit_ends.popleft()
            self._units_emitted += 1
        keep_from = max(0, target - self.left_context)
        self._frames = self._frames[keep_from - self._frames_start :]
        self._frames_start = keep_from
        return out


def synthesize_stream(
    model: StreamableVocoder,
    unit_chunks: Iterable[UnitsLike],
    *,
    dur_prediction: bool = True,
    left_context: int | None = None,
    right_context: int | None = None,
    speaker: int | None = None,
) -> Iterator[torch.Tensor]:
    """Yield waveform pieces as unit chunks arrive; their concatenation equals ``model.synthesize(all units)``.

    Nothing is checked before the first piece is asked for. Empty pieces are not yielded. The last
    ``right_context`` frames (and, with duration prediction, the last two units) are held back until more units
    arrive or the chunks run out.

    Raises:
        ValueError: bad ids in a chunk, or no units at all.
    """
    stream = StreamingSynthesizer(
        model,
        dur_prediction=dur_prediction,
        left_context=left_context,
        right_context=right_context,
        speaker=speaker,
    )
    yield from stream.feed(unit_chunks)
