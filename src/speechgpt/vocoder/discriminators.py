"""HiFi-GAN's discriminators: multi-period (MPD) and multi-scale (MSD), used only to train the unit vocoder.

Each sub-discriminator returns a score map (``[B, N]``, one LSGAN score per patch) and the feature maps of every
layer (for the feature-matching loss). The layer plan is HiFi-GAN's (Kong et al., 2020): the MPD folds the waveform
into ``[T / p, p]`` columns for periods 2, 3, 5, 7, 11 and runs 2-D convolutions along time only; the MSD runs
grouped 1-D convolutions on the raw waveform and on two average-pooled copies. Widths and groups come from
:class:`DiscriminatorConfig`, so tests can build a few-thousand-parameter version with the same structure.

The MPD and the pooled MSD scales use weight norm, the raw-waveform MSD scale spectral norm (as HiFi-GAN does);
these stay on for the whole of training because discriminators are never exported.

Shape notation: ``B`` batch, ``S`` samples.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

__all__ = [
    "DiscriminatorConfig",
    "DiscriminatorOutput",
    "Discriminators",
    "MultiPeriodDiscriminator",
    "MultiScaleDiscriminator",
    "PeriodDiscriminator",
    "ScaleDiscriminator",
]

LRELU_SLOPE = 0.1
"""Leaky-ReLU slope after every discriminator convolution but the last (HiFi-GAN's value)."""
PERIOD_KERNEL = 5
"""Time kernel of the MPD's convolutions (the period axis has kernel 1: columns never mix)."""
PERIOD_STRIDE = 3
"""Time stride of every MPD convolution but the last one."""
POST_KERNEL = 3
"""Kernel of the final 1-channel score convolution of both discriminator kinds."""
SCALE_KERNELS = (15, 41, 41, 41, 41, 41, 5)
"""Kernel of each MSD convolution (HiFi-GAN's layout; one per entry of ``scale_channels``)."""
SCALE_STRIDES = (1, 2, 2, 4, 4, 1, 1)
"""Stride of each MSD convolution."""
POOL_KERNEL, POOL_STRIDE = 4, 2
"""Average pooling between MSD scales: each scale sees the waveform at half the previous rate."""

FeatureMaps = list[torch.Tensor]


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Sizes of the MPD and MSD.

    Attributes:
        periods: Periods of the MPD's sub-discriminators (HiFi-GAN: primes, so their views overlap little).
        period_channels: Output channels of the MPD's convolutions; all but the last have stride 3 in time.
        num_scales: Sub-discriminators of the MSD: the raw waveform, then ``num_scales - 1`` pooled copies.
        scale_channels: Output channels of the MSD's convolutions (exactly ``len(SCALE_KERNELS)`` of them).
        scale_groups: Groups of each MSD convolution; must divide its input and output channels.
    """

    periods: tuple[int, ...] = (2, 3, 5, 7, 11)
    period_channels: tuple[int, ...] = (32, 128, 512, 1024, 1024)
    num_scales: int = 3
    scale_channels: tuple[int, ...] = (128, 128, 256, 512, 1024, 1024, 1024)
    scale_groups: tuple[int, ...] = (1, 4, 16, 16, 16, 16, 1)

    def __post_init__(self) -> None:
        for name in ("periods", "period_channels", "scale_channels", "scale_groups"):
            value = getattr(self, name)
            if isinstance(value, str) or not hasattr(value, "__iter__"):
                raise ValueError(f"{name} must be a list of ints, got {value!r}")
            items = tuple(value)
            if not items or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in items):
                raise ValueError(f"{name} must be a non-empty list of positive ints, got {value!r}")
            object.__setattr__(self, name, items)
        if len(set(self.periods)) != len(self.periods) or min(self.periods) < 2:
            raise ValueError(f"periods must be distinct ints >= 2, got {list(self.periods)}")
        if not isinstance(self.num_scales, int) or isinstance(self.num_scales, bool) or self.num_scales < 1:
            raise ValueError(f"num_scales must be a positive int, got {self.num_scales!r}")
        if len(self.scale_channels) != len(SCALE_KERNELS) or len(self.scale_groups) != len(SCALE_KERNELS):
            raise ValueError(
                f"scale_channels and scale_groups need {len(SCALE_KERNELS)} entries each (one per MSD layer), "
                f"got {len(self.scale_channels)} and {len(self.scale_groups)}"
            )
        inputs = (1, *self.scale_channels[:-1])
        for i, (c_in, c_out, groups) in enumerate(zip(inputs, self.scale_channels, self.scale_groups, strict=True)):
            if c_in % groups or c_out % groups:
                raise ValueError(
                    f"MSD layer {i}: groups {groups} must divide its input ({c_in}) and output ({c_out}) channels"
                )

    @classmethod
    def released(cls) -> DiscriminatorConfig:
        """HiFi-GAN V1's discriminators (about 70M parameters), used to train the released vocoder."""
        return cls()

    @classmethod
    def tiny(cls, **overrides: Any) -> DiscriminatorConfig:
        """The same structure with widths of 4-16 channels, for tests and toy runs."""
        values: dict[str, Any] = {
            "period_channels": (4, 8, 8, 16, 16),
            "scale_channels": (8, 8, 16, 16, 16, 16, 16),
            "scale_groups": (1, 2, 4, 4, 4, 4, 1),
        }
        values.update(overrides)
        return cls(**values)

    @classmethod
    def from_name(cls, name: str) -> DiscriminatorConfig:
        """A named preset: ``"released"`` or ``"tiny"``.

        Raises:
            ValueError: ``name`` is not a preset (the message lists them).
        """
        presets = {"released": cls.released, "tiny": cls.tiny}
        if name not in presets:
            raise ValueError(f"unknown discriminator preset {name!r}; available: {sorted(presets)}")
        return presets[name]()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class DiscriminatorOutput:
    """Scores and feature maps of every sub-discriminator, in a fixed order (MPD periods, then MSD scales).

    Attributes:
        scores: One ``[B, N_k]`` score map per sub-discriminator.
        features: For each sub-discriminator, the activations of each of its layers (including the score map).
    """

    scores: list[torch.Tensor]
    features: list[FeatureMaps]

    def __add__(self, other: DiscriminatorOutput) -> DiscriminatorOutput:
        return DiscriminatorOutput(scores=self.scores + other.scores, features=self.features + other.features)

    def split(self, sizes: list[int]) -> list[DiscriminatorOutput]:
        """Cut every tensor along the batch, e.g. the real and the generated halves of one concatenated pass."""
        scores = [s.split(sizes) for s in self.scores]
        features = [[f.split(sizes) for f in maps] for maps in self.features]
        return [
            DiscriminatorOutput(
                scores=[s[i] for s in scores],
                features=[[f[i] for f in maps] for maps in features],
            )
            for i in range(len(sizes))
        ]


def _score(convs: nn.ModuleList, conv_post: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, FeatureMaps]:
    """Run a discriminator's conv stack: flattened scores and every layer's activations (for feature matching)."""
    features = []
    for conv in convs:
        x = F.leaky_relu(conv(x), LRELU_SLOPE)
        features.append(x)
    x = conv_post(x)
    features.append(x)
    return x.flatten(1), features


class PeriodDiscriminator(nn.Module):
    """Scores a waveform folded into ``period`` columns; sees periodic structure a 1-D view averages away."""

    def __init__(self, period: int, channels: tuple[int, ...]):
        super().__init__()
        self.period = period
        inputs = (1, *channels[:-1])
        strides = [PERIOD_STRIDE] * (len(channels) - 1) + [1]
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv2d(c_in, c_out, (PERIOD_KERNEL, 1), (stride, 1), padding=(PERIOD_KERNEL // 2, 0)))
            for c_in, c_out, stride in zip(inputs, channels, strides, strict=True)
        )
        self.conv_post = weight_norm(nn.Conv2d(channels[-1], 1, (POST_KERNEL, 1), 1, padding=(POST_KERNEL // 2, 0)))

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, FeatureMaps]:
        """``wave [B, S]`` -> scores ``[B, N]`` and every layer's activations ``[B, C, S', period]``."""
        batch, length = wave.shape
        remainder = length % self.period
        if remainder:
            # Complete the last column by reflection (zero padding would be an easy "fake" cue); tiny inputs, whose
            # length does not allow reflection, are padded with zeros instead.
            missing = self.period - remainder
            mode = "reflect" if missing < length else "constant"
            wave = F.pad(wave[:, None], (0, missing), mode=mode)[:, 0]
        x = wave.reshape(batch, 1, -1, self.period)
        return _score(self.convs, self.conv_post, x)


class ScaleDiscriminator(nn.Module):
    """Scores a waveform with strided grouped 1-D convolutions (one scale of the MSD)."""

    def __init__(self, channels: tuple[int, ...], groups: tuple[int, ...], *, spectral: bool = False):
        super().__init__()
        norm = spectral_norm if spectral else weight_norm
        inputs = (1, *channels[:-1])
        layers = zip(inputs, channels, SCALE_KERNELS, SCALE_STRIDES, groups, strict=True)
        self.convs = nn.ModuleList(
            norm(nn.Conv1d(c_in, c_out, kernel, stride, groups=group, padding=kernel // 2))
            for c_in, c_out, kernel, stride, group in layers
        )
        self.conv_post = norm(nn.Conv1d(channels[-1], 1, POST_KERNEL, 1, padding=POST_KERNEL // 2))

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, FeatureMaps]:
        """``wave [B, S]`` -> scores ``[B, N]`` and every layer's activations ``[B, C, S']``."""
        x = wave[:, None]
        return _score(self.convs, self.conv_post, x)


class MultiPeriodDiscriminator(nn.Module):
    """One :class:`PeriodDiscriminator` per period."""

    def __init__(self, config: DiscriminatorConfig):
        super().__init__()
        self.discriminators = nn.ModuleList(PeriodDiscriminator(p, config.period_channels) for p in config.periods)

    def forward(self, wave: torch.Tensor) -> DiscriminatorOutput:
        """Scores and features of every period for ``wave [B, S]``."""
        results = [d(wave) for d in self.discriminators]
        return DiscriminatorOutput(scores=[s for s, _ in results], features=[f for _, f in results])


class MultiScaleDiscriminator(nn.Module):
    """:class:`ScaleDiscriminator` on the waveform (spectral norm) and on ``num_scales - 1`` pooled copies."""

    def __init__(self, config: DiscriminatorConfig):
        super().__init__()
        self.discriminators = nn.ModuleList(
            ScaleDiscriminator(config.scale_channels, config.scale_groups, spectral=i == 0)
            for i in range(config.num_scales)
        )
        self.pool = nn.AvgPool1d(POOL_KERNEL, POOL_STRIDE, padding=POOL_KERNEL // 2)

    def forward(self, wave: torch.Tensor) -> DiscriminatorOutput:
        """Scores and features of every scale for ``wave [B, S]``."""
        scores, features = [], []
        for i, discriminator in enumerate(self.discriminators):
            if i > 0:
                wave = self.pool(wave[:, None])[:, 0]
            score, maps = discriminator(wave)
            scores.append(score)
            features.append(maps)
        return DiscriminatorOutput(scores=scores, features=features)


class Discriminators(nn.Module):
    """The MPD and the MSD together, as one module with one optimizer.

    Args:
        config: Sizes; HiFi-GAN V1's when None.
    """

    def __init__(self, config: DiscriminatorConfig | None = None):
        super().__init__()
        self.config = config = config if config is not None else DiscriminatorConfig()
        self.mpd = MultiPeriodDiscriminator(config)
        self.msd = MultiScaleDiscriminator(config)

    def forward(self, wave: torch.Tensor) -> DiscriminatorOutput:
        """Scores and features of all sub-discriminators for ``wave [B, S]`` (MPD first, then MSD).

        Raises:
            ValueError: ``wave`` is not ``[B, S]``.
        """
        if wave.dim() != 2:
            raise ValueError(f"discriminators take waveforms [B, S], got shape {tuple(wave.shape)}")
        return self.mpd(wave) + self.msd(wave)
