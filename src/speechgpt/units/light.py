"""A light CPU feature extractor (log-mel or MFCC + deltas) for the embedded default.

HuBERT needs a GPU-class budget to extract features for hours of audio; the embedded speech world only needs
features that k-means can turn into consistent units. Classic MFCCs with deltas, normalised per utterance,
do that at a few hundred times real time on one CPU core. Framing is HuBERT's (25 ms windows every 20 ms),
so the units line up with the vocoder exactly as HuBERT units do.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from transformers.audio_utils import mel_filter_bank

from speechgpt.audio import SAMPLE_RATE
from speechgpt.units.base import FRAME_RATE, HOP_LENGTH, WINDOW_LENGTH, num_frames

LOG_FLOOR = 1e-6
"""Added to mel energies before the log so silence stays finite."""
DELTA_WINDOW = 2
"""Frames on each side used by the delta regression."""


@dataclass(frozen=True)
class LightFeatureConfig:
    """Configuration of :class:`LightFeatures`.

    Attributes:
        kind: ``"mfcc"`` (cepstra, compact and speaker-robust) or ``"logmel"`` (log mel energies).
        n_fft: FFT size; each 400-sample window is zero-padded to it.
        n_mels: Mel filters.
        n_mfcc: Cepstral coefficients kept (``kind="mfcc"`` only).
        deltas: Orders of time derivatives appended (0, 1 or 2).
        fmin: Lowest filter edge in Hz.
        fmax: Highest filter edge in Hz (at most half the sample rate).
        preemphasis: First-order pre-emphasis coefficient (0 disables it).
        cmvn: Normalise each feature to zero mean and unit variance over the utterance, which removes most of
            the channel and speaker offset that would otherwise split one sound into several clusters.
    """

    kind: Literal["mfcc", "logmel"] = "mfcc"
    n_fft: int = 512
    n_mels: int = 40
    n_mfcc: int = 13
    deltas: int = 2
    fmin: float = 20.0
    fmax: float = 7600.0
    preemphasis: float = 0.97
    cmvn: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ("mfcc", "logmel"):
            raise ValueError(f"kind must be 'mfcc' or 'logmel', got {self.kind!r}")
        if self.n_fft < WINDOW_LENGTH:
            raise ValueError(f"n_fft must be at least the window length {WINDOW_LENGTH}, got {self.n_fft}")
        if not 0 <= self.deltas <= 2:
            raise ValueError(f"deltas must be 0, 1 or 2, got {self.deltas}")
        if self.kind == "mfcc" and not 0 < self.n_mfcc <= self.n_mels:
            raise ValueError(f"n_mfcc must be in 1..n_mels={self.n_mels}, got {self.n_mfcc}")
        if not 0 <= self.fmin < self.fmax <= SAMPLE_RATE / 2:
            raise ValueError(f"need 0 <= fmin < fmax <= {SAMPLE_RATE / 2}, got fmin={self.fmin}, fmax={self.fmax}")

    @property
    def dim(self) -> int:
        """Feature dimension of the output."""
        base = self.n_mfcc if self.kind == "mfcc" else self.n_mels
        return base * (1 + self.deltas)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LightFeatureConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown light-feature settings {unknown}; valid: {sorted(known)}")
        return cls(**data)


def _dct_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """Orthonormal DCT-II basis ``[n_in, n_out]`` (what ``scipy.fft.dct(norm="ortho")`` applies)."""
    n = torch.arange(n_in, dtype=torch.float64)
    k = torch.arange(n_out, dtype=torch.float64)
    basis = torch.cos(math.pi / n_in * (n[:, None] + 0.5) * k[None, :]) * math.sqrt(2.0 / n_in)
    basis[:, 0] /= math.sqrt(2.0)
    return basis.float()


def deltas(features: torch.Tensor, window: int = DELTA_WINDOW) -> torch.Tensor:
    """Regression deltas over ``±window`` frames with edge frames repeated. ``[T, D] -> [T, D]``."""
    if features.shape[0] == 0:
        return features.clone()
    padded = torch.cat([features[:1].expand(window, -1), features, features[-1:].expand(window, -1)])
    length = features.shape[0]
    numerator = sum(
        n * (padded[window + n : window + n + length] - padded[window - n : window - n + length])
        for n in range(1, window + 1)
    )
    return numerator / (2 * sum(n * n for n in range(1, window + 1)))


class LightFeatures:
    """MFCC/log-mel frames at 50 Hz on 16 kHz audio; implements :class:`~speechgpt.units.base.FeatureExtractor`."""

    frame_rate: float = FRAME_RATE

    def __init__(self, config: LightFeatureConfig | None = None) -> None:
        self.config = config or LightFeatureConfig()
        cfg = self.config
        self.dim = cfg.dim
        self._window = torch.hann_window(WINDOW_LENGTH, periodic=False)
        filters = mel_filter_bank(
            num_frequency_bins=cfg.n_fft // 2 + 1,
            num_mel_filters=cfg.n_mels,
            min_frequency=cfg.fmin,
            max_frequency=cfg.fmax,
            sampling_rate=SAMPLE_RATE,
            norm="slaney",
            mel_scale="htk",
        )
        self._mel_filters = torch.from_numpy(filters).float()  # [n_fft/2+1, n_mels]
        self._dct = _dct_matrix(cfg.n_mels, cfg.n_mfcc) if cfg.kind == "mfcc" else None

    def __repr__(self) -> str:
        return f"LightFeatures({self.config})"

    @torch.inference_mode()
    def __call__(self, wave: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Extract ``[T, dim]`` float32 features, ``T = num_frames(len(wave))``.

        Raises:
            ValueError: if the input is not 1-D or is shorter than one 25 ms window.
        """
        wave = torch.as_tensor(wave, dtype=torch.float32)
        if wave.dim() != 1:
            raise ValueError(f"expected a 1-D waveform, got shape {tuple(wave.shape)}")
        if num_frames(wave.numel()) == 0:
            raise ValueError(f"audio of {wave.numel()} samples is shorter than one {WINDOW_LENGTH}-sample window")
        cfg = self.config
        if cfg.preemphasis:
            wave = torch.cat([wave[:1], wave[1:] - cfg.preemphasis * wave[:-1]])
        frames = wave.unfold(0, WINDOW_LENGTH, HOP_LENGTH) * self._window  # [T, 400]
        power = torch.fft.rfft(frames, n=cfg.n_fft).abs().pow(2)  # [T, n_fft/2+1]
        feats = torch.log(power @ self._mel_filters + LOG_FLOOR)  # [T, n_mels]
        if self._dct is not None:
            feats = feats @ self._dct
        parts = [feats]
        for _ in range(cfg.deltas):
            parts.append(deltas(parts[-1]))
        feats = torch.cat(parts, dim=1)
        if cfg.cmvn:
            feats = (feats - feats.mean(0)) / (feats.std(0, unbiased=False) + 1e-5)
        return feats.contiguous()
