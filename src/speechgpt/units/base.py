"""The feature-extractor interface shared by HuBERT and the light CPU extractor.

Every extractor follows HuBERT's framing (:mod:`speechgpt.constants`: 50 frames/s, 25 ms windows), so units
from any extractor line up with the vocoder's hop of 320 samples.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch

from speechgpt.constants import FRAME_RATE, HOP_LENGTH, SAMPLE_RATE, WINDOW_LENGTH

__all__ = ["FRAME_RATE", "HOP_LENGTH", "SAMPLE_RATE", "WINDOW_LENGTH", "FeatureExtractor", "num_frames"]


def num_frames(num_samples: int) -> int:
    """Number of frames an extractor yields for ``num_samples`` samples (0 when shorter than a window)."""
    if num_samples < WINDOW_LENGTH:
        return 0
    return (num_samples - WINDOW_LENGTH) // HOP_LENGTH + 1


@runtime_checkable
class FeatureExtractor(Protocol):
    """Turns 16 kHz mono audio into frame features.

    Implementations: :class:`speechgpt.units.hubert.HubertFeatures` and
    :class:`speechgpt.units.light.LightFeatures`.
    """

    frame_rate: float
    """Frames per second of the output."""
    dim: int
    """Feature dimension D."""

    def __call__(self, wave: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Extract features from a 1-D 16 kHz waveform. Returns float32 ``[T, D]`` on CPU."""
        ...
