"""Unit vocoders: unit ids -> waveform.

The released-compatible unit HiFi-GAN (with streaming synthesis and adversarial training) and a fast default
vocoder that fits on a CPU in a minute; both implement :class:`~speechgpt.vocoder.base.Vocoder`.
"""

from speechgpt.vocoder.base import Vocoder, load_vocoder
from speechgpt.vocoder.config import VocoderConfig
from speechgpt.vocoder.fast import FastVocoder, FastVocoderConfig
from speechgpt.vocoder.hifigan import UnitHiFiGAN, VocoderOutput, durations_from_log
from speechgpt.vocoder.streaming import StreamingSynthesizer, generator_context, synthesize_stream

__all__ = [
    "FastVocoder",
    "FastVocoderConfig",
    "StreamingSynthesizer",
    "UnitHiFiGAN",
    "Vocoder",
    "VocoderConfig",
    "VocoderOutput",
    "durations_from_log",
    "generator_context",
    "load_vocoder",
    "synthesize_stream",
]
