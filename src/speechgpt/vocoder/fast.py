"""A fast unit vocoder that is fitted in about a minute on a CPU: the embedded demo's default voice.

The unit HiFi-GAN needs GPU-days of adversarial training. The embedded demo needs a voice fitted in minutes on
2 CPU cores, so this vocoder is a classic source-filter synthesizer whose few learned parts are tables and two
tiny convolution stacks:

1. **Durations.** Each unit has a table entry, its mean ``log(1 + frames)`` in the training data; a two-layer
   convolution over unit context (:class:`UnitDurationPredictor`) corrects it, and frames are
   ``clamp(round(exp(d) - 1), min=1)``, the unit HiFi-GAN's rule.
2. **Spectral frames.** Each 20 ms unit frame is described by a smoothed log-power spectrum (the first
   ``cepstrum_order + 1`` real-cepstrum coefficients) and a voicing degree in [0, 1]. A table holds each unit's
   mean frame; a small dilated convolution stack over frame-level unit context (:class:`FrameRefiner`) adds a
   correction, which gives coarticulation and movement inside long units.
3. **Waveform.** An excitation, a pulse train at a fixed ``f0`` mixed with noise by the voicing degree, is
   filtered frame by frame by the minimum-phase filter of the spectral envelope (in the STFT domain: ``n_fft``
   Hann windows every ``synthesis_hop`` samples, envelopes interpolated between unit frames) and overlap-added.
   No iterations, no phase estimation: rendering runs hundreds of times faster than real time on one core.
   (Minimum phase rather than zero phase: peaks 20% lower, and the unit metrics of the benchmark slightly better.)

The excitation depends only on the absolute sample index (pulses every ``round(sample_rate / f0)`` samples, noise
read from a stored table), and every stage looks at a bounded number of neighbouring frames, so synthesizing a
window of frames with enough context on each side gives exactly the samples of one-shot synthesis. Streaming
(:class:`~speechgpt.vocoder.streaming.StreamingSynthesizer`, through :meth:`FastVocoder.render_frames`) relies on
that.

Frames and samples line up with the unit extractors: unit frame ``f`` is analysed around sample
``HOP_LENGTH * f + WINDOW_LENGTH / 2`` and its envelope is rendered centred there, and ``F`` frames give exactly
``HOP_LENGTH * F`` samples.

State-dict keys (``K`` units, ``D = cepstrum_order + 2`` frame features, ``E`` embedding, ``C`` channels):

=========================================  ===========================================================
``unit_features``                           ``[K, D]`` mean frame per unit (cepstrum, then voicing)
``unit_log_durations``                      ``[K]`` mean ``log(1 + frames)`` per unit
``feature_mean``, ``feature_scale``          ``[D]`` normalisation of frames for the refiner
``noise``                                   ``[NOISE_TABLE_SIZE]`` the excitation's noise
``refiner.embed.weight``                    ``[K, E]``
``refiner.inp.{weight,bias}``                ``[C, E + D, 1]``, ``[C]``
``refiner.convs.{i}.{weight,bias}``          ``[C, C, kernel]``, ``[C]``
``refiner.proj.{weight,bias}``               ``[D, C, 1]``, ``[D]``
``duration.embed.weight``                   ``[K, E_d]``
``duration.convs.{i}.{weight,bias}``         ``[C_d, E_d + 1 (first) or C_d, 3]``, ``[C_d]``
``duration.proj.{weight,bias}``              ``[1, C_d, 1]``, ``[1]``
=========================================  ===========================================================
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from speechgpt.audio import SAMPLE_RATE
from speechgpt.devices import resolve_device
from speechgpt.fileio import atomic_write_bytes, atomic_write_text
from speechgpt.units.base import HOP_LENGTH, WINDOW_LENGTH, num_frames
from speechgpt.vocoder.base import (
    CONFIG_NAME,
    FAST_TYPE,
    TYPE_KEY,
    UnitsLike,
    as_durations,
    as_unit_ids,
    check_batch,
    check_speaker,
    durations_from_log,
)
from speechgpt.vocoder.streaming import StreamingSynthesizer
from speechgpt.weights import check_weights

logger = logging.getLogger(__name__)

__all__ = [
    "FAST_VOCODER_FORMAT",
    "FastVocoder",
    "FastVocoderConfig",
    "FrameRefiner",
    "UnitDurationPredictor",
    "analyze_frames",
    "durations_from_log",
]

FAST_VOCODER_FORMAT = "speechgpt-fast-vocoder"
"""``format`` value in a fast vocoder's ``config.json``."""
FAST_VOCODER_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
FRAME_CENTER = WINDOW_LENGTH // 2
"""Offset of unit frame ``f``'s centre from sample ``HOP_LENGTH * f`` (the extractor's 25 ms window's middle)."""
NOISE_TABLE_SIZE = 1 << 16
"""Length of the stored noise the excitation reads cyclically (4 s at 16 kHz: no audible repetition)."""
LOG_POWER_FLOOR = 1e-10
"""Added to power spectra before the log, so digital silence stays finite."""
MAX_LOG_POWER = 20.0
"""Envelopes are capped at ``exp(MAX_LOG_POWER / 2)``; a wild refiner output cannot overflow."""
EULER_GAMMA = 0.5772156649015329
"""``E[log |X_k|^2] = log(sigma^2) - EULER_GAMMA`` for Gaussian noise: added to c0 so that analysed levels are
unbiased (without it, resynthesis comes out about 2.5 dB quiet)."""
PITCH_RANGE_HZ = (80.0, 400.0)
"""Lags searched for periodicity when measuring voicing."""
RENDER_CHUNK_FRAMES = 2048
"""Synthesis frames filtered at once; bounds memory for long inputs."""
DURATION_LAYERS = 2
DURATION_KERNEL = 3


@dataclass(frozen=True)
class FastVocoderConfig:
    """Configuration of :class:`FastVocoder`.

    Attributes:
        num_units: Unit vocabulary size K (the k-means clusters).
        n_fft: Window and FFT size of analysis and synthesis (32 ms: resolves the pulse train's harmonics).
        synthesis_hop: Samples between synthesis windows; divides ``hop_length`` and ``n_fft`` with at least
            three windows overlapping, so Hann² windows add up to a constant.
        cepstrum_order: Real-cepstrum coefficients kept after c0; 40 keeps formants and drops pitch harmonics
            (pitch periods at 16 kHz are 40 samples or longer).
        f0: Pitch of the voiced excitation in Hz (one monotone voice).
        voicing_low: Periodicity (normalised autocorrelation peak) at and below which a frame counts unvoiced.
        voicing_high: Periodicity at and above which a frame counts fully voiced.
        embed_dim: Unit embedding width of the frame refiner.
        channels: Channels of the frame refiner.
        kernel_size: Kernel of the refiner's convolutions (odd).
        dilations: One refiner convolution per entry, with that dilation; empty disables the refiner.
        duration_embed_dim: Unit embedding width of the duration predictor.
        duration_channels: Channels of the duration predictor's two kernel-3 convolutions.
    """

    num_units: int = 1000
    n_fft: int = 512
    synthesis_hop: int = 64
    cepstrum_order: int = 40
    f0: float = 120.0
    voicing_low: float = 0.45
    voicing_high: float = 0.75
    embed_dim: int = 64
    channels: int = 128
    kernel_size: int = 3
    dilations: tuple[int, ...] = field(default=(1, 2, 4, 1))
    duration_embed_dim: int = 32
    duration_channels: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "dilations", tuple(self.dilations))
        positive = ("num_units", "n_fft", "synthesis_hop", "cepstrum_order", "embed_dim", "channels", "kernel_size")
        for name in (*positive, "duration_embed_dim", "duration_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.n_fft % 2 or self.n_fft < WINDOW_LENGTH:
            raise ValueError(f"n_fft must be even and at least {WINDOW_LENGTH}, got {self.n_fft}")
        half = self.n_fft // 2
        if HOP_LENGTH % self.synthesis_hop or self.n_fft % self.synthesis_hop or self.n_fft // self.synthesis_hop < 3:
            raise ValueError(
                f"synthesis_hop must divide {HOP_LENGTH} and n_fft={self.n_fft} with at least 3 windows overlapping, "
                f"got {self.synthesis_hop}"
            )
        if self.cepstrum_order >= half:
            raise ValueError(f"cepstrum_order must be below n_fft/2={half}, got {self.cepstrum_order}")
        if not PITCH_RANGE_HZ[0] / 2 <= self.f0 <= SAMPLE_RATE / 8:
            raise ValueError(f"f0 must be in {PITCH_RANGE_HZ[0] / 2:g}..{SAMPLE_RATE / 8:g} Hz, got {self.f0}")
        if not 0.0 <= self.voicing_low < self.voicing_high <= 1.0:
            raise ValueError(f"need 0 <= voicing_low < voicing_high <= 1, got {self.voicing_low}, {self.voicing_high}")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in self.dilations):
            raise ValueError(f"dilations must be positive ints, got {self.dilations!r}")

    @property
    def feature_dim(self) -> int:
        """Numbers per frame: ``cepstrum_order + 1`` cepstra and one voicing degree."""
        return self.cepstrum_order + 2

    @property
    def pitch_period(self) -> int:
        """Samples between excitation pulses."""
        return round(SAMPLE_RATE / self.f0)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["dilations"] = list(self.dilations)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FastVocoderConfig:
        """Build from :meth:`to_dict` output.

        Raises:
            ValueError: unknown keys (listed with the valid ones) or invalid values.
        """
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown fast-vocoder settings {unknown}; valid: {sorted(known)}")
        return cls(**data)


# --- analysis -----------------------------------------------------------------------------------------------------


def analyze_frames(wave: torch.Tensor | np.ndarray, config: FastVocoderConfig) -> torch.Tensor:
    """Per unit frame of a 16 kHz waveform: smoothed log-power cepstrum and voicing, ``[num_frames(len), D]``.

    Frame ``f`` is an ``n_fft`` Hann window centred on sample ``HOP_LENGTH * f + FRAME_CENTER`` (zeros outside
    the signal). The cepstrum is ``irfft(log power)[: cepstrum_order + 1]``, power normalised by the window's
    energy and c0 raised by :data:`EULER_GAMMA`, so that white noise of unit variance has log power 0. Voicing
    is the highest normalised autocorrelation over pitch lags (divided by the window's own autocorrelation, so
    a periodic signal scores near 1), mapped linearly from ``[voicing_low, voicing_high]`` onto ``[0, 1]``.

    Raises:
        ValueError: not 1-D, or shorter than one unit frame's window.
    """
    wave = torch.as_tensor(wave, dtype=torch.float32).detach().cpu()
    if wave.dim() != 1:
        raise ValueError(f"expected a 1-D waveform, got shape {tuple(wave.shape)}")
    count = num_frames(wave.numel())
    if count == 0:
        raise ValueError(f"audio of {wave.numel()} samples is shorter than one {WINDOW_LENGTH}-sample window")
    size, half = config.n_fft, config.n_fft // 2
    window = torch.hann_window(size)
    padded = F.pad(wave, (size, size))
    starts = torch.arange(count) * HOP_LENGTH + FRAME_CENTER - half + size
    frames = padded[starts[:, None] + torch.arange(size)] * window  # [F, n_fft]
    spectrum = torch.fft.rfft(frames, n=2 * size)  # zero-padded twice: autocorrelation without wrap-around
    power = spectrum[:, ::2].abs().pow(2) / window.pow(2).sum()  # the n_fft-point spectrum
    cepstrum = torch.fft.irfft(torch.log(power + LOG_POWER_FLOOR), n=size)[:, : config.cepstrum_order + 1]
    cepstrum[:, 0] += EULER_GAMMA
    autocorr = torch.fft.irfft(spectrum.abs().pow(2), n=2 * size)[:, :size]
    window_autocorr = torch.fft.irfft(torch.fft.rfft(window, n=2 * size).abs().pow(2), n=2 * size)[:size]
    normalised = (autocorr / autocorr[:, :1].clamp(min=1e-12)) / (window_autocorr / window_autocorr[0])
    low, high = (round(SAMPLE_RATE / hz) for hz in reversed(PITCH_RANGE_HZ))
    periodicity = normalised[:, low : high + 1].amax(dim=1).clamp(0.0, 1.0)
    voicing = ((periodicity - config.voicing_low) / (config.voicing_high - config.voicing_low)).clamp(0.0, 1.0)
    return torch.cat([cepstrum, voicing[:, None]], dim=1)


# --- learned parts ------------------------------------------------------------------------------------------------


class FrameRefiner(nn.Module):
    """Correction of the table's frames from frame-level unit context (dilated 1-D convolutions, residual).

    Works on normalised frames; the output projection starts at zero, so an untrained refiner returns the table.
    """

    def __init__(self, config: FastVocoderConfig, *, device: torch.device | str | None = None) -> None:
        super().__init__()
        dim, channels, kernel = config.feature_dim, config.channels, config.kernel_size
        self.embed = nn.Embedding(config.num_units, config.embed_dim, device=device)
        self.inp = nn.Conv1d(config.embed_dim + dim, channels, 1, device=device)
        self.convs = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, padding=(kernel - 1) // 2 * d, dilation=d, device=device)
            for d in config.dilations
        )
        self.proj = nn.Conv1d(channels, dim, 1, device=device)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.context = sum((kernel - 1) // 2 * d for d in config.dilations)
        """Frames on each side that one output frame depends on."""

    def forward(self, frame_ids: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """``[B, F]`` ids and ``[B, F, D]`` normalised table frames -> refined ``[B, F, D]``."""
        x = self.inp(torch.cat([self.embed(frame_ids), base], dim=-1).transpose(1, 2))
        for conv in self.convs:
            x = x + F.gelu(conv(x))
        return base + self.proj(x).transpose(1, 2)


class UnitDurationPredictor(nn.Module):
    """Correction of the table's ``log(1 + frames)`` from the two units on each side (two kernel-3 convolutions)."""

    def __init__(self, config: FastVocoderConfig, *, device: torch.device | str | None = None) -> None:
        super().__init__()
        channels = config.duration_channels
        self.embed = nn.Embedding(config.num_units, config.duration_embed_dim, device=device)
        self.convs = nn.ModuleList(
            nn.Conv1d(
                config.duration_embed_dim + 1 if i == 0 else channels,
                channels,
                DURATION_KERNEL,
                padding=DURATION_KERNEL // 2,
                device=device,
            )
            for i in range(DURATION_LAYERS)
        )
        self.proj = nn.Conv1d(channels, 1, 1, device=device)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.context = DURATION_LAYERS * (DURATION_KERNEL // 2)
        """Units on each side that one prediction depends on."""

    def forward(self, units: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` ids and ``[B, T]`` table log durations -> predicted ``log(1 + frames)`` ``[B, T]``."""
        x = torch.cat([self.embed(units), base[..., None]], dim=-1).transpose(1, 2)
        for conv in self.convs:
            x = F.relu(conv(x))
        return base + self.proj(x)[:, 0]


# --- the vocoder --------------------------------------------------------------------------------------------------


class FastVocoder(nn.Module):
    """Unit ids to 16 kHz waveform by table lookup, two tiny convolution stacks and source-filter synthesis.

    Implements :class:`~speechgpt.vocoder.base.Vocoder`. Build it with
    :func:`speechgpt.vocoder.fit.fit_fast_vocoder`; a freshly constructed one holds zero tables (silence).

    Args:
        config: Configuration; defaults for 1000 units when None.
        device: Where tensors live (CPU when None; the vocoder is meant for CPUs).
    """

    def __init__(self, config: FastVocoderConfig | None = None, *, device: torch.device | str | None = None):
        super().__init__()
        self.config = config = config if config is not None else FastVocoderConfig()
        dim, kw = config.feature_dim, {"device": device}
        self.register_buffer("unit_features", torch.zeros(config.num_units, dim, **kw))
        self.register_buffer("unit_log_durations", torch.zeros(config.num_units, **kw))
        self.register_buffer("feature_mean", torch.zeros(dim, **kw))
        self.register_buffer("feature_scale", torch.ones(dim, **kw))
        self.register_buffer("noise", torch.zeros(NOISE_TABLE_SIZE, **kw))
        self.refiner = FrameRefiner(config, **kw)
        self.duration = UnitDurationPredictor(config, **kw)
        # The minimum-phase filter whose log power is the liftered real cepstrum c: its complex log spectrum is
        # c0/2 + sum_q c_q exp(-2 pi i q k / n_fft) (real part: half the log power; imaginary part: the phase).
        quefrency = torch.arange(config.cepstrum_order + 1, dtype=torch.float64)
        angle = 2 * math.pi * quefrency[:, None] * torch.arange(config.n_fft // 2 + 1) / config.n_fft
        cos_basis, sin_basis = torch.cos(angle), -torch.sin(angle)
        cos_basis[0] = 0.5
        self.register_buffer("_log_magnitude_basis", cos_basis.float().to(device), persistent=False)
        self.register_buffer("_phase_basis", sin_basis.float().to(device), persistent=False)
        self.register_buffer("_window", torch.hann_window(config.n_fft, device=device), persistent=False)
        # Hann² windows every n_fft/R samples add up to 3R/8 everywhere (R >= 3 windows overlapping).
        self._overlap_gain = 0.375 * config.n_fft / config.synthesis_hop
        self.info: dict[str, str] = {}
        """Free-form string facts about the fit (data size, time); saved with the weights."""

    # --- basic properties ---------------------------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    @property
    def hop_length(self) -> int:
        return HOP_LENGTH

    @property
    def num_units(self) -> int:
        return self.config.num_units

    @property
    def device(self) -> torch.device:
        return self.unit_features.device

    @property
    def num_speakers(self) -> int:
        """Always 0: one monotone voice."""
        return 0

    @property
    def render_context(self) -> tuple[int, int]:
        """Frames ``(left, right)`` whose features the samples of one frame depend on in :meth:`render`."""
        half = self.config.n_fft // 2
        left = math.ceil((half + FRAME_CENTER) / HOP_LENGTH)
        right = math.ceil((half + HOP_LENGTH - FRAME_CENTER) / HOP_LENGTH)
        return left, right

    @property
    def frame_context(self) -> tuple[int, int]:
        """Frames ``(left, right)`` of unit ids that one frame's samples depend on (refiner + rendering)."""
        left, right = self.render_context
        return left + self.refiner.context, right + self.refiner.context

    # --- pieces -------------------------------------------------------------------------------------------------

    def log_durations(self, units: torch.Tensor) -> torch.Tensor:
        """Predicted ``log(1 + frames)`` ``[B, T]`` for unit ids ``[B, T]``."""
        return self.duration(units, self.unit_log_durations[units])

    def frame_features(self, frame_ids: torch.Tensor) -> torch.Tensor:
        """Refined frames ``[B, F, D]`` (cepstrum, voicing) for frame-level unit ids ``[B, F]``."""
        base = (self.unit_features[frame_ids] - self.feature_mean) / self.feature_scale
        return self.refiner(frame_ids, base) * self.feature_scale + self.feature_mean

    def render(self, features: torch.Tensor, first_frame: int = 0) -> torch.Tensor:
        """Source-filter synthesis of ``[F, D]`` frames into ``[F * hop_length]`` samples in [-1, 1].

        Args:
            features: Frames as :func:`analyze_frames` measures them (cepstrum, voicing).
            first_frame: Absolute index of ``features[0]`` in the utterance; the excitation is a function of the
                absolute sample index, so a window rendered with its true offset matches one-shot rendering away
                from the window's edges (see :attr:`render_context`).

        Raises:
            ValueError: ``features`` is not ``[F >= 1, feature_dim]``.
        """
        cfg = self.config
        if features.dim() != 2 or features.shape[0] < 1 or features.shape[1] != cfg.feature_dim:
            raise ValueError(f"features must be [frames >= 1, {cfg.feature_dim}], got shape {tuple(features.shape)}")
        count = features.shape[0]
        length = count * HOP_LENGTH
        hop, size, half = cfg.synthesis_hop, cfg.n_fft, cfg.n_fft // 2
        # Synthesis windows centred at multiples of hop, from the first whose support reaches sample 0 to the last
        # that reaches sample length - 1, so every output sample gets the full overlap-add.
        centres = torch.arange(-((half - 1) // hop), (length - 1 + half) // hop + 1, device=features.device) * hop
        position = ((centres - FRAME_CENTER) / HOP_LENGTH).clamp(0, count - 1)
        lower = position.floor().long()
        upper = (lower + 1).clamp(max=count - 1)
        weight = (position - lower)[:, None]
        offsets = torch.arange(size, device=features.device) - half
        out = torch.zeros(length + 2 * size, device=features.device)
        origin = first_frame * HOP_LENGTH
        for start in range(0, centres.numel(), RENDER_CHUNK_FRAMES):
            part = slice(start, start + RENDER_CHUNK_FRAMES)
            frames = features[lower[part]] * (1 - weight[part]) + features[upper[part]] * weight[part]
            log_magnitude = (frames[:, :-1] @ self._log_magnitude_basis).clamp(max=MAX_LOG_POWER / 2)
            response = torch.exp(torch.complex(log_magnitude, frames[:, :-1] @ self._phase_basis))
            voicing = frames[:, -1:].clamp(0.0, 1.0)
            samples = centres[part, None] + offsets  # [J, n_fft], relative to the window's first sample
            absolute = samples + origin
            pulses = (absolute % cfg.pitch_period == 0).to(features.dtype) * math.sqrt(cfg.pitch_period)
            noise = self.noise[absolute % NOISE_TABLE_SIZE]
            excitation = (voicing.sqrt() * pulses + (1 - voicing).sqrt() * noise) * self._window
            filtered = torch.fft.irfft(torch.fft.rfft(excitation) * response, n=size)
            out.index_add_(0, (samples + size).reshape(-1), (filtered * self._window).reshape(-1))
        return (out[size : size + length] / self._overlap_gain).clamp(-1.0, 1.0)

    def render_frames(self, frame_ids: torch.Tensor, first_frame: int = 0, speaker: int | None = None) -> torch.Tensor:
        """Samples ``[F * hop_length]`` of frame-level ids ``[F]``, the first being frame ``first_frame``.

        The streaming protocol's rendering step (see :meth:`render`); ``speaker`` is accepted for that protocol and
        unused (callers check it is None).
        """
        return self.render(self.frame_features(frame_ids[None])[0], first_frame=first_frame)

    # --- inference ----------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def predict_durations(self, units: UnitsLike) -> torch.Tensor:
        """Frames per unit, ``LongTensor [T]`` on CPU (negative ids dropped).

        Raises:
            ValueError: empty input, non-integer ids, or an id outside ``0..num_units-1``.
        """
        ids, _ = as_unit_ids(units, self.num_units)
        return durations_from_log(self.log_durations(ids[None].to(self.device)))[0].cpu()

    def _frames_per_unit(self, ids: torch.Tensor, dur_prediction: bool, durations: torch.Tensor | None) -> torch.Tensor:
        """Frames of each unit: the given (already validated) durations, else predicted, else one each."""
        if durations is not None:
            return durations.to(self.device)
        if dur_prediction:
            return durations_from_log(self.log_durations(ids[None].to(self.device)))[0]
        return torch.ones_like(ids, device=self.device)

    @torch.inference_mode()
    def synthesize(
        self,
        units: UnitsLike,
        dur_prediction: bool = True,
        durations: UnitsLike | None = None,
        speaker: int | None = None,
    ) -> torch.Tensor:
        """Waveform ``[hop_length * sum(durations)]`` in [-1, 1] for one unit sequence, on the model's device.

        Args:
            units: Unit ids ``[T]``; negative ids are dropped (as the unit HiFi-GAN does).
            dur_prediction: Predict each unit's frames; when False each unit lasts one frame (the input is then
                frame-level units, e.g. before deduplication).
            durations: Frames per unit ``[T]``, e.g. from ``speechgpt units encode``; overrides ``dur_prediction``.
            speaker: Must be None (single speaker).

        Raises:
            ValueError: empty input, non-integer ids, an id outside ``0..num_units-1``, bad durations, a speaker.
        """
        check_speaker(speaker)
        ids, keep = as_unit_ids(units, self.num_units)
        given = None if durations is None else as_durations(durations, keep)
        ids = ids.to(self.device)
        return self.render_frames(torch.repeat_interleave(ids, self._frames_per_unit(ids, dur_prediction, given)))

    @torch.inference_mode()
    def synthesize_batch(
        self,
        unit_seqs: Sequence[UnitsLike],
        dur_prediction: bool = True,
        durations: Sequence[UnitsLike] | None = None,
        speakers: Sequence[int] | None = None,
    ) -> list[torch.Tensor]:
        """Synthesize several sequences; item ``b`` is exactly ``synthesize(unit_seqs[b], ...)``.

        Each item is rendered on its own (rendering costs little next to an LM), so results are bit-identical to
        one-by-one synthesis; every input is checked before any audio is made.

        Raises:
            ValueError: as :meth:`synthesize`, naming the item; or mismatched ``durations``/``speakers`` counts.
        """
        ids, given = check_batch(unit_seqs, self.num_units, durations, speakers)
        frame_ids = []
        for b, item in enumerate(ids):
            counts = self._frames_per_unit(item, dur_prediction, None if given is None else given[b])
            frame_ids.append(torch.repeat_interleave(item.to(self.device), counts))
        return [self.render_frames(item) for item in frame_ids]

    def synthesize_stream(
        self,
        unit_chunks: Iterable[UnitsLike],
        dur_prediction: bool = True,
        left_context: int | None = None,
        right_context: int | None = None,
        speaker: int | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield audio while unit chunks arrive; the pieces joined equal :meth:`synthesize` of all units.

        With the default contexts (:attr:`frame_context`) streaming is exact up to float rounding; smaller contexts
        cut latency and add a small error near window edges. The last ``right_context`` frames, and with duration
        prediction the last two units, wait for more units or the end of the chunks. Empty pieces are not yielded.

        Raises:
            ValueError: bad ids in a chunk (named by chunk number), a speaker, or no units at all.
        """
        stream = StreamingSynthesizer(
            self, dur_prediction=dur_prediction, left_context=left_context, right_context=right_context, speaker=speaker
        )
        return stream.feed(unit_chunks)

    # --- persistence --------------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` (``"type": "fast"``) and ``model.safetensors`` to ``directory``, each atomically."""
        from safetensors.torch import save

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        atomic_write_bytes(directory / WEIGHTS_NAME, save(state, metadata={"format": FAST_VOCODER_FORMAT, **self.info}))
        config = {
            TYPE_KEY: FAST_TYPE,
            "format": FAST_VOCODER_FORMAT,
            "version": FAST_VOCODER_VERSION,
            **self.config.to_dict(),
        }
        atomic_write_text(directory / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, device: str | torch.device | None = None) -> FastVocoder:
        """Load a folder written by :meth:`save_pretrained`, in eval mode.

        Raises:
            FileNotFoundError: the folder, its ``config.json`` or its weights are missing.
            ValueError: the config is not a fast vocoder's, or the weights do not fit it.
        """
        from safetensors import SafetensorError, safe_open

        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory}: no such vocoder folder")
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        if not config_path.is_file():
            raise FileNotFoundError(f"{directory}: not a vocoder folder (no {CONFIG_NAME})")
        try:
            data = json.loads(config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{config_path}: not valid JSON ({e})") from e
        if not isinstance(data, dict) or data.get(TYPE_KEY) != FAST_TYPE or data.get("format") != FAST_VOCODER_FORMAT:
            raise ValueError(f"{config_path}: not a fast vocoder config (needs type {FAST_TYPE!r})")
        if data.get("version") != FAST_VOCODER_VERSION:
            raise ValueError(f"{config_path}: unsupported fast vocoder config version {data.get('version')!r}")
        fields = {k: v for k, v in data.items() if k not in (TYPE_KEY, "format", "version")}
        try:
            config = FastVocoderConfig.from_dict(fields)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{config_path}: {e}") from e
        if not weights_path.is_file():
            raise FileNotFoundError(f"{directory}: vocoder weights {WEIGHTS_NAME} are missing")
        try:
            with safe_open(str(weights_path), framework="pt") as f:
                state = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
                metadata = f.metadata() or {}
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{weights_path}: unreadable safetensors file ({e})") from e
        model = cls(config)
        check_weights(state, model.state_dict(), str(weights_path), expects="the config needs")
        model.load_state_dict(state, strict=True)
        model.info = {k: v for k, v in metadata.items() if k != "format"}
        return model.to(resolve_device(device)).eval()
