"""Training losses of the unit HiFi-GAN: log-mel L1, least-squares GAN, feature matching, log-duration MSE.

The mel spectrogram is HiFi-GAN's training one (80 Slaney mel bands of a 1024-point STFT with hop 256, 0-8 kHz at
16 kHz, magnitude floor 1e-5 before the log); it is a loss only and need not match any feature extractor's mels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from speechgpt.constants import SAMPLE_RATE
from speechgpt.vocoder.discriminators import DiscriminatorOutput

__all__ = [
    "MelConfig",
    "MelSpectrogram",
    "discriminator_loss",
    "duration_loss",
    "duration_targets",
    "feature_matching_loss",
    "generator_adversarial_loss",
    "mel_l1_loss",
]

MAGNITUDE_EPS = 1e-9
"""Added to the squared STFT magnitude before the square root: keeps the gradient finite at exact zeros."""


@dataclass(frozen=True)
class MelConfig:
    """Log-mel spectrogram settings of the reconstruction loss (HiFi-GAN's values at 16 kHz).

    Attributes:
        sample_rate: Rate of the waveforms compared.
        n_fft: FFT size.
        hop_length: Samples between STFT frames (the loss's own hop, unrelated to the 320-sample unit hop).
        win_length: Hann window length.
        n_mels: Mel bands.
        fmin: Lowest mel frequency in Hz.
        fmax: Highest mel frequency in Hz.
        log_floor: Mel magnitudes are clamped to at least this before the log, so silence does not dominate.
    """

    sample_rate: int = SAMPLE_RATE
    n_fft: int = 1024
    hop_length: int = 256
    win_length: int = 1024
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float = 8000.0
    log_floor: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_fft", "hop_length", "win_length", "n_mels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"MelConfig.{name} must be a positive int, got {value!r}")
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length {self.win_length} must not exceed n_fft {self.n_fft}")
        if (self.n_fft - self.hop_length) % 2:
            raise ValueError(
                f"n_fft - hop_length must be even (it is padded equally on both sides), got "
                f"{self.n_fft} - {self.hop_length}"
            )
        if not 0.0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError(
                f"need 0 <= fmin < fmax <= sample_rate / 2, got fmin={self.fmin}, fmax={self.fmax}, "
                f"sample_rate={self.sample_rate}"
            )
        if not self.log_floor > 0:
            raise ValueError(f"log_floor must be positive, got {self.log_floor!r}")


class MelSpectrogram(nn.Module):
    """Waveforms ``[B, S]`` -> log-mel spectrograms ``[B, n_mels, S // hop_length]`` (for ``S`` a multiple of hop).

    The signal is padded by ``(n_fft - hop) / 2`` on both sides (reflection) and framed without centring, so frame
    ``i`` is centred on samples ``[i * hop, (i + 1) * hop)``. The window and the filters are non-persistent buffers:
    they follow ``.to(device)`` but never enter a checkpoint.
    """

    window: torch.Tensor
    filters: torch.Tensor

    def __init__(self, config: MelConfig | None = None):
        super().__init__()
        from transformers.audio_utils import mel_filter_bank  # transformers imports slowly; only when built

        self.config = config = config if config is not None else MelConfig()
        bank = mel_filter_bank(
            num_frequency_bins=config.n_fft // 2 + 1,
            num_mel_filters=config.n_mels,
            min_frequency=config.fmin,
            max_frequency=config.fmax,
            sampling_rate=config.sample_rate,
            norm="slaney",
            mel_scale="slaney",
        )  # [n_fft // 2 + 1, n_mels]
        self.register_buffer(
            "filters", torch.from_numpy(np.ascontiguousarray(bank.T, dtype=np.float32)), persistent=False
        )
        self.register_buffer("window", torch.hann_window(config.win_length), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Log-mel ``[B, n_mels, frames]`` of ``wave [B, S]`` (or ``[S]``), computed in float32.

        Raises:
            ValueError: ``wave`` is not 1-D or 2-D, or is empty.
        """
        if wave.dim() == 1:
            wave = wave[None]
        if wave.dim() != 2 or wave.shape[-1] == 0:
            raise ValueError(f"MelSpectrogram takes waveforms [B, S] with S > 0, got shape {tuple(wave.shape)}")
        config = self.config
        pad = (config.n_fft - config.hop_length) // 2
        # Reflection needs more samples than the pad; a very short input is zero-padded instead.
        mode = "reflect" if wave.shape[-1] > pad else "constant"
        x = F.pad(wave.float()[:, None], (pad, pad), mode=mode)[:, 0]
        if x.shape[-1] < config.n_fft:
            x = F.pad(x, (0, config.n_fft - x.shape[-1]))
        spec = torch.stft(
            x,
            config.n_fft,
            hop_length=config.hop_length,
            win_length=config.win_length,
            window=self.window,
            center=False,
            return_complex=True,
        )  # [B, n_fft // 2 + 1, frames]
        magnitude = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + MAGNITUDE_EPS)
        mel = torch.matmul(self.filters, magnitude)
        return torch.log(torch.clamp(mel, min=config.log_floor))


def mel_l1_loss(fake: torch.Tensor, real: torch.Tensor, mel: MelSpectrogram) -> torch.Tensor:
    """Mean absolute difference of the log-mel spectrograms of two equally long waveform batches ``[B, S]``.

    Raises:
        ValueError: the shapes differ.
    """
    if fake.shape != real.shape:
        raise ValueError(
            f"mel loss compares equal shapes, got generated {tuple(fake.shape)} and real {tuple(real.shape)}"
        )
    return F.l1_loss(mel(fake), mel(real))


def discriminator_loss(real: DiscriminatorOutput, fake: DiscriminatorOutput) -> torch.Tensor:
    """Least-squares GAN loss of the discriminators: ``sum_k mean((1 - D_k(real))^2) + mean(D_k(fake)^2)``."""
    _check_pairs(real.scores, fake.scores, "scores")
    total = real.scores[0].new_zeros(())
    for score_real, score_fake in zip(real.scores, fake.scores, strict=True):
        total = total + torch.mean((1.0 - score_real.float()) ** 2) + torch.mean(score_fake.float() ** 2)
    return total


def generator_adversarial_loss(fake: DiscriminatorOutput) -> torch.Tensor:
    """Least-squares GAN loss of the generator: ``sum_k mean((1 - D_k(fake))^2)``."""
    total = fake.scores[0].new_zeros(())
    for score in fake.scores:
        total = total + torch.mean((1.0 - score.float()) ** 2)
    return total


def feature_matching_loss(real: DiscriminatorOutput, fake: DiscriminatorOutput) -> torch.Tensor:
    """``sum_k sum_l mean(|F_kl(real) - F_kl(fake)|)`` over every discriminator layer; real features are constants.

    (HiFi-GAN folds a factor 2 into this loss; here that factor is the trainer's feature-matching weight.)
    """
    _check_pairs(real.features, fake.features, "feature lists")
    total = fake.scores[0].new_zeros(())
    for maps_real, maps_fake in zip(real.features, fake.features, strict=True):
        _check_pairs(maps_real, maps_fake, "feature maps")
        for f_real, f_fake in zip(maps_real, maps_fake, strict=True):
            total = total + torch.mean(torch.abs(f_real.detach().float() - f_fake.float()))
    return total


def duration_targets(durations: torch.Tensor) -> torch.Tensor:
    """What the duration predictor learns: ``log(1 + frames)`` (inverted by ``durations_from_log``)."""
    return torch.log1p(durations.float())


def duration_loss(
    log_durations: torch.Tensor, durations: torch.Tensor, unit_lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """MSE between predicted log durations and ``log(1 + durations)``, over real units only.

    Args:
        log_durations: ``[B, T]`` predictions.
        durations: ``[B, T]`` frames per unit (padding positions are ignored).
        unit_lengths: ``[B]`` real units per item; None when nothing is padded.

    Raises:
        ValueError: shapes differ, or no unit is real.
    """
    if log_durations.shape != durations.shape:
        raise ValueError(
            f"log_durations {tuple(log_durations.shape)} and durations {tuple(durations.shape)} must have one shape"
        )
    error = (log_durations.float() - duration_targets(durations)) ** 2
    if unit_lengths is None:
        return error.mean()
    mask = torch.arange(durations.shape[1], device=durations.device)[None, :] < unit_lengths[:, None]
    count = mask.sum()
    if int(count) == 0:
        raise ValueError("duration loss over a batch with no real units (all unit_lengths are 0)")
    return (error * mask).sum() / count


def _check_pairs(real: list, fake: list, what: str) -> None:
    if len(real) != len(fake):
        raise ValueError(f"real and generated {what} differ in number: {len(real)} vs {len(fake)}")
