"""The feature-extractor interface shared by HuBERT and the light CPU extractor.

Units are 50 per second: one frame per 320 samples of 16 kHz audio, with a 400-sample (25 ms)
receptive field, exactly like HuBERT's convolutional front end. Every extractor follows the same
framing so that units from any extractor line up with the vocoder's hop of 320 samples.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch

from speechgpt.audio import SAMPLE_RATE

HOP_LENGTH = 320
"""Samples between two unit frames at :data:`SAMPLE_RATE`."""
WINDOW_LENGTH = 400
"""Samples seen by one frame (HuBERT's receptive field, 25 ms)."""
FRAME_RATE = SAMPLE_RATE / HOP_LENGTH
"""Unit frames per second (50)."""


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
