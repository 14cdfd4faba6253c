"""Synthetic test audio: deterministic 'speech-like' signals made of a few distinct sounds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16_000
# A handful of 'phones': each a mix of two partials (like formants) or noise.
PHONES = [(300.0, 2300.0), (700.0, 1200.0), (500.0, 900.0), (350.0, 1900.0), (0.0, 0.0)]


def phone_sequence_wave(sequence: list[int], seconds_per_phone: float = 0.12, seed: int = 0) -> np.ndarray:
    """Concatenate phones from :data:`PHONES` (index 4 is noise), with a little noise everywhere."""
    rng = np.random.default_rng(seed)
    n = int(seconds_per_phone * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    pieces = []
    for index in sequence:
        f1, f2 = PHONES[index]
        if f1 == 0.0:
            piece = 0.3 * rng.standard_normal(n)
        else:
            piece = 0.5 * np.sin(2 * np.pi * f1 * t) + 0.3 * np.sin(2 * np.pi * f2 * t)
        pieces.append(piece)
    wave = np.concatenate(pieces) + 0.01 * rng.standard_normal(n * len(sequence))
    return (0.8 * wave / np.abs(wave).max()).astype(np.float32)


def random_utterance(seed: int, num_phones: int = 12) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return phone_sequence_wave(list(rng.integers(0, len(PHONES), num_phones)), seed=seed)


def write_corpus(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """Write ``count`` WAV files ``utt000.wav``... with random phone sequences."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"utt{i:03d}.wav"
        sf.write(path, random_utterance(seed * 1000 + i), SAMPLE_RATE)
        paths.append(path)
    return paths
