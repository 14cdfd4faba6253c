"""The speech tokenizer: audio -> frame features -> k-means ids -> deduplicated units -> ``<sosp><12>...<eosp>``.

Units stay integer tensors inside the library; they become text only here, in :func:`units_to_string`, and
come back from model output only through :func:`parse_units`, which tolerates anything a model may write.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from speechgpt.audio import DEFAULT_MAX_SECONDS, SAMPLE_RATE, AudioError, AudioSource, load_audio
from speechgpt.fileio import atomic_write_text
from speechgpt.prompt_format import EOSP, SOSP
from speechgpt.units.base import FRAME_RATE, WINDOW_LENGTH, FeatureExtractor
from speechgpt.units.kmeans import KMeans
from speechgpt.units.light import LightFeatureConfig, LightFeatures

TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
KMEANS_FILE_NAME = "kmeans.safetensors"
HUBERT_DIR_NAME = "hubert"
RECOGNIZER_DIR_NAME = "recognizer"
TOKENIZER_FORMAT = "speechgpt-speech-tokenizer"

# A unit token is ``<N>`` with N written canonically (no sign, no leading zeros); ten digits at most so a
# runaway generation cannot build an enormous integer.
_UNIT_TOKEN = re.compile(r"<(0|[1-9][0-9]{0,9})>")


@dataclass(frozen=True, eq=False)
class Units:
    """Deduplicated unit ids and how many frames each one lasted.

    Attributes:
        ids: ``LongTensor [N]``, no two neighbours equal.
        durations: ``LongTensor [N]``, frames (20 ms each) per unit, all >= 1.
    """

    ids: torch.Tensor
    durations: torch.Tensor

    def __len__(self) -> int:
        return int(self.ids.numel())

    @property
    def num_frames(self) -> int:
        """Frames before deduplication."""
        return int(self.durations.sum())

    def frames(self) -> torch.Tensor:
        """The frame-level ids before deduplication, ``LongTensor [num_frames]``."""
        return torch.repeat_interleave(self.ids, self.durations)

    def to_string(self) -> str:
        """``<sosp><12><345>...<eosp>``, the form the LM reads and writes."""
        return units_to_string(self.ids)

    def to_dict(self) -> dict[str, Any]:
        return {"units": self.ids.tolist(), "durations": self.durations.tolist(), "unit_string": self.to_string()}


def dedup(frame_ids: torch.Tensor | np.ndarray | list[int]) -> Units:
    """Collapse runs of equal ids into one unit each, keeping the run lengths."""
    frame_ids = torch.as_tensor(frame_ids, dtype=torch.long).reshape(-1)
    ids, durations = torch.unique_consecutive(frame_ids, return_counts=True)
    return Units(ids=ids, durations=durations)


def units_to_string(ids: torch.Tensor | np.ndarray | list[int]) -> str:
    """Format unit ids as ``<sosp><i1><i2>...<eosp>``."""
    values = torch.as_tensor(ids, dtype=torch.long).reshape(-1).tolist()
    return SOSP + "".join(f"<{i}>" for i in values) + EOSP


def parse_units(text: str, *, num_units: int | None = None) -> list[int]:
    """Find the unit ids in any text, e.g. a model's answer. Never raises.

    If the text holds ``<sosp>``, only units after the first ``<sosp>`` count, up to the next ``<eosp>`` (or the
    end of the text when the span was left open); otherwise every unit token in the text counts. Malformed
    pieces (``<12``, ``<-3>``, ``<007>``, ``<x>``) are ignored, and so are ids ``>= num_units`` when given.
    """
    if not isinstance(text, str):
        return []
    start = text.find(SOSP)
    if start >= 0:
        text = text[start + len(SOSP) :]
        end = text.find(EOSP)
        if end >= 0:
            text = text[:end]
    ids = [int(token) for token in _UNIT_TOKEN.findall(text)]
    if num_units is not None:
        ids = [i for i in ids if i < num_units]
    return ids


def load_wave_for_units(
    audio: AudioSource,
    *,
    sample_rate: int | None = None,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    name: str | None = None,
) -> np.ndarray:
    """Load audio as 16 kHz mono and check it is long enough to give at least one unit frame.

    Raises:
        AudioError: when the audio is unreadable, empty, NaN, too long or shorter than one 25 ms window.
    """
    source = name or (str(audio) if isinstance(audio, (str, os.PathLike)) else "<audio>")
    wave = load_audio(audio, sample_rate=sample_rate, max_seconds=max_seconds, name=source)
    if len(wave) < WINDOW_LENGTH:
        raise AudioError(source, f"too short: {len(wave)} samples, at least {WINDOW_LENGTH} (25 ms) needed")
    return wave


def read_tokenizer_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``tokenizer_config.json`` of a tokenizer folder, checked.

    Raises:
        FileNotFoundError: when the folder or its config is missing.
        ValueError: when the config is not valid JSON or not a speech-tokenizer config.
    """
    config_path = Path(directory) / TOKENIZER_CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory}: not a speech tokenizer folder (no {TOKENIZER_CONFIG_NAME})")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{config_path}: not valid JSON ({e})") from e
    if not isinstance(config, dict) or config.get("format") != TOKENIZER_FORMAT:
        found = config.get("format") if isinstance(config, dict) else None
        raise ValueError(f"{config_path}: 'format' is {found!r}, expected {TOKENIZER_FORMAT!r}")
    return config


def load_codebook(directory: str | os.PathLike) -> KMeans:
    """Only the k-means of a tokenizer folder (unit count and centres), without loading its feature extractor."""
    config = read_tokenizer_config(directory)
    return KMeans.load(Path(directory) / config.get("kmeans", KMEANS_FILE_NAME))


class SpeechTokenizer:
    """Feature extractor + k-means: turns audio into :class:`Units`.

    Args:
        extractor: Any :class:`~speechgpt.units.base.FeatureExtractor` (HuBERT or the light extractor).
        kmeans: Centres whose dimension matches the extractor's features.
        max_seconds: Longest audio accepted by :meth:`encode` (``None`` for no limit).
    """

    def __init__(
        self, extractor: FeatureExtractor, kmeans: KMeans, *, max_seconds: float | None = DEFAULT_MAX_SECONDS
    ) -> None:
        if extractor.dim != kmeans.dim:
            raise ValueError(f"k-means centres are {kmeans.dim}-dimensional but the extractor gives {extractor.dim}")
        self.extractor = extractor
        self.kmeans = kmeans
        self.max_seconds = max_seconds

    @property
    def num_units(self) -> int:
        """Size of the unit vocabulary (the number of k-means clusters)."""
        return self.kmeans.n_clusters

    @property
    def frame_rate(self) -> float:
        return self.extractor.frame_rate

    def __repr__(self) -> str:
        return f"SpeechTokenizer(extractor={self.extractor!r}, num_units={self.num_units})"

    def encode(self, audio: AudioSource, *, sample_rate: int | None = None, name: str | None = None) -> Units:
        """Encode one recording given as a path, bytes or an array (``sample_rate`` needed for arrays).

        Raises:
            AudioError: when the audio is unreadable, empty, NaN, too long or shorter than one 25 ms window.
        """
        wave = load_wave_for_units(audio, sample_rate=sample_rate, max_seconds=self.max_seconds, name=name)
        return dedup(self.frame_ids(wave))

    def frame_ids(self, wave: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Per-frame cluster ids of a loaded 16 kHz mono waveform, before deduplication, ``LongTensor [T]``."""
        return self.kmeans.assign(self.extractor(wave))

    # --- persistence -------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write the tokenizer as one folder: ``tokenizer_config.json``, ``kmeans.safetensors`` (+ ``hubert/`` or
        ``recognizer/``)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if isinstance(self.extractor, LightFeatures):
            extractor: dict[str, Any] = {"type": "light", "config": self.extractor.config.to_dict()}
        elif type(self.extractor).__name__ == "HubertFeatures":  # not imported here: it loads transformers' HuBERT
            self.extractor.save_pretrained(directory / HUBERT_DIR_NAME)
            extractor = {"type": "hubert", "path": HUBERT_DIR_NAME, "layer": self.extractor.layer}
        elif type(self.extractor).__name__ == "RecognizerFeatures":
            self.extractor.save_pretrained(directory / RECOGNIZER_DIR_NAME)
            extractor = {"type": "recognizer", "path": RECOGNIZER_DIR_NAME}
        else:
            raise TypeError(f"cannot save a tokenizer with a {type(self.extractor).__name__} extractor")
        self.kmeans.save(directory / KMEANS_FILE_NAME)
        config = {
            "format": TOKENIZER_FORMAT,
            "version": 1,
            "sample_rate": SAMPLE_RATE,
            "frame_rate": FRAME_RATE,
            "num_units": self.num_units,
            "extractor": extractor,
            "kmeans": KMEANS_FILE_NAME,
        }
        atomic_write_text(directory / TOKENIZER_CONFIG_NAME, json.dumps(config, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, *, device: str | torch.device | None = None, **kwargs: Any
    ) -> SpeechTokenizer:
        """Load a folder written by :meth:`save_pretrained`.

        Raises:
            FileNotFoundError: when the folder or its config is missing.
            ValueError: when the config is not a speech-tokenizer config.
        """
        directory = Path(directory)
        config = read_tokenizer_config(directory)
        config_path = directory / TOKENIZER_CONFIG_NAME
        spec = config.get("extractor", {})
        extractor: FeatureExtractor
        if spec.get("type") == "light":
            extractor = LightFeatures(LightFeatureConfig.from_dict(spec.get("config", {})))
        elif spec.get("type") == "hubert":
            from speechgpt.units.hubert import HubertFeatures

            extractor = HubertFeatures.from_pretrained(
                directory / spec.get("path", HUBERT_DIR_NAME), layer=int(spec.get("layer", 11)), device=device
            )
        elif spec.get("type") == "recognizer":
            from speechgpt.units.encoder import RecognizerFeatures

            extractor = RecognizerFeatures.from_pretrained(
                directory / spec.get("path", RECOGNIZER_DIR_NAME), device=device
            )
        else:
            raise ValueError(
                f"{config_path}: unknown extractor type {spec.get('type')!r}; expected 'light', 'hubert' or "
                "'recognizer'"
            )
        return cls(extractor, load_codebook(directory), **kwargs)

    @classmethod
    def from_released(
        cls,
        hubert: str | os.PathLike,
        kmeans: str | os.PathLike,
        *,
        layer: int = 11,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> SpeechTokenizer:
        """Build the tokenizer from the released files (fairseq mHuBERT ``.pt`` or a HF folder, joblib k-means)."""
        from speechgpt.units.hubert import HubertFeatures

        return cls(HubertFeatures.load(hubert, layer=layer, device=device), KMeans.from_file(kmeans), **kwargs)
