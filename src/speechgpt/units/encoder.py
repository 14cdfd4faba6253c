"""Frame features from a small CTC recogniser: supervised, speaker-robust speech units for the embedded world.

HuBERT's layer-11 features make good units because self-supervised training on thousands of hours taught them
phonetics. Without that budget, a recogniser trained for a few minutes on transcribed speech learns the same kind
of representation: its recurrent states encode which sound is spoken and little about the voice. Clustered with
k-means they give units that agree across speakers (on the speech world, the same sentence by two voices differs
in 19% of its units against 66% for MFCC units) and come at about 18 per second instead of 36, so the language
model learns to read them far sooner. This is the "supervised semantic token" idea of CosyVoice, here with the
package's own CTC recogniser (:class:`speechgpt.eval.judge.JudgeASR`, trained by ``speechgpt judge train``).

The recogniser runs at 25 frames/s (its first convolution has stride 2); each state is repeated to the 50 frames/s
of every extractor, so units keep the vocoder's 320-sample hop.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from speechgpt.units.base import FRAME_RATE, num_frames

if TYPE_CHECKING:
    from speechgpt.eval.judge import JudgeASR

__all__ = ["RecognizerFeatures"]


class RecognizerFeatures:
    """Hidden states of a CTC recogniser, ``[T, 2H]`` at 50 frames/s with ``T = num_frames(len(wave))``.

    Args:
        model: A trained :class:`~speechgpt.eval.judge.JudgeASR` (its weights are used as they are, in eval mode).
    """

    frame_rate: float = FRAME_RATE

    def __init__(self, model: JudgeASR) -> None:
        self.model = model.eval()
        self.dim = 2 * model.config.hidden_size
        if model.config.subsampling < 1:
            raise ValueError(f"recogniser subsampling must be >= 1, got {model.config.subsampling}")

    def __repr__(self) -> str:
        return f"RecognizerFeatures(dim={self.dim}, subsampling={self.model.config.subsampling})"

    @torch.inference_mode()
    def __call__(self, wave: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Features of a 1-D 16 kHz waveform (at least one 25 ms window long)."""
        from speechgpt.eval.judge import EDGE_SILENCE

        wave = torch.as_tensor(wave, dtype=torch.float32).reshape(-1)
        frames = num_frames(int(wave.numel()))
        if frames == 0:
            raise ValueError(f"audio of {wave.numel()} samples is shorter than one 25 ms window")
        features = self.model.extract(wave).to(self.model.device)
        lengths = torch.tensor([features.shape[0]], device=self.model.device)
        hidden, _ = self.model.hidden_states(features[None], lengths)
        states = hidden[0].repeat_interleave(self.model.config.subsampling, dim=0).float().cpu()
        # The recogniser sees EDGE_SILENCE of padding on both sides: skip its frames at the start, and repeat the
        # last state if the stride left the end a frame short.
        edge = round(EDGE_SILENCE * FRAME_RATE)
        states = states[edge : edge + frames]
        if states.shape[0] < frames:
            states = torch.cat([states, states[-1:].expand(frames - states.shape[0], -1)])
        return states.contiguous()

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write the recogniser (``config.json`` + ``model.safetensors``) into ``directory``."""
        return self.model.save_pretrained(directory)

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, *, device: str | torch.device | None = None
    ) -> RecognizerFeatures:
        """Load a recogniser folder written by ``speechgpt judge train`` (or :meth:`save_pretrained`).

        Raises:
            FileNotFoundError, ValueError: as :meth:`speechgpt.eval.judge.JudgeASR.from_pretrained`.
        """
        from speechgpt.eval.judge import JudgeASR

        return cls(JudgeASR.from_pretrained(directory, device=device))
