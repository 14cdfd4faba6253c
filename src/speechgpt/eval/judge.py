"""The judge ASR: a small CTC recogniser that scores how intelligible generated speech is.

Intelligibility of synthesized speech is measured as the WER of an ASR model that did **not** train on that
speech; for the embedded world that judge is this model, trained in a few minutes on one CPU core on espeak-ng
speech of voices other than the ones it will judge (``benchmarks/judge.py`` measures time against accuracy: its
WER keeps falling well past the default 1,600 steps, so a longer run buys a sharper judge). Its parts:

* features: 16 kHz audio (read through :func:`speechgpt.audio.load_audio`), with 0.1 s of silence added at both
  ends, → log-mel frames at 50 Hz from :class:`speechgpt.units.LightFeatures`, floored 60 dB below the loudest
  band and normalised per utterance (which removes loudness and much of a voice's or a vocoder's colouring);
* a convolutional front end that halves the frame rate (25 Hz is still more frames than spoken characters);
* a bidirectional GRU stack and a linear layer onto the character vocabulary (``a``-``z``, apostrophe, space)
  plus the CTC blank;
* training with CTC on text normalised by :func:`speechgpt.eval.text_norm.normalize_text`, augmented with speed
  perturbation (tempo, pitch and formants move together, as between speakers), random extra silence around the
  utterance, a random frequency warp of the mel axis (vocal-tract length) and SpecAugment-style masks, so that
  the model hears past the few training voices;
* decoding: greedy CTC (best class per frame, repeats merged, blanks dropped: a garbled word is scored as garbled),
  or, when the judge has a :class:`~speechgpt.eval.lexicon.Lexicon` (``lexicon.txt`` in its folder), a beam search
  in which every word is spelled from the words of the language, weighted by how often the language says them (no
  word sequence model: a garbled word is heard as whatever word it sounds like, right or wrong).
  :attr:`JudgeASR.decoding` says which one a judge uses.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from speechgpt.audio import SAMPLE_RATE, AudioError, AudioSource, change_speed, load_audio
from speechgpt.devices import resolve_device
from speechgpt.eval.lexicon import LEXICON_NAME, Lexicon, LexiconCTCDecoder
from speechgpt.eval.metrics import error_rates
from speechgpt.eval.text_norm import normalize_text
from speechgpt.fileio import atomic_write_bytes, atomic_write_text
from speechgpt.jsonl import read_jsonl
from speechgpt.manifest import ManifestError
from speechgpt.units.base import HOP_LENGTH, WINDOW_LENGTH, num_frames
from speechgpt.units.light import LightFeatureConfig, LightFeatures
from speechgpt.weights import check_weights

logger = logging.getLogger(__name__)

__all__ = [
    "BLANK",
    "VOCABULARY",
    "JudgeASR",
    "JudgeConfig",
    "JudgeHistory",
    "JudgeTrainArgs",
    "ctc_greedy_decode",
    "decode_ids",
    "encode_text",
    "load_for_judge",
    "read_transcripts",
    "train_judge",
]

VOCABULARY = " 'abcdefghijklmnopqrstuvwxyz"
"""The characters the judge writes; class ``i + 1`` is ``VOCABULARY[i]``."""
BLANK = 0
"""Class index of the CTC blank."""
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
JUDGE_FORMAT = "speechgpt-judge-asr"
JUDGE_VERSION = 1
MAX_AUDIO_SECONDS = 120.0
"""Longest recording the judge transcribes or trains on (its GRU runs over the whole utterance at once)."""

EDGE_SILENCE = 0.1
"""Seconds of silence added before and after every utterance the judge hears (espeak-ng speech starts and stops
at the very edge of the recording, which otherwise costs the first and last words)."""
_EDGE_SAMPLES = round(EDGE_SILENCE * SAMPLE_RATE)
DYNAMIC_RANGE_DB = 60.0
"""Log-mel energies more than this far below an utterance's loudest are raised to that floor."""
_DYNAMIC_RANGE = DYNAMIC_RANGE_DB / 10 * math.log(10)  # in natural-log power units, as LightFeatures writes them
RNN_CELLS: dict[str, type[nn.RNNBase]] = {"gru": nn.GRU, "lstm": nn.LSTM}
"""Recurrent layers :class:`JudgeConfig` can name."""
TrainItem = tuple[AudioSource, str]
"""One training example: a 16 kHz waveform (array) or an audio path, and its transcript."""
JudgeProgress = Callable[[int, int, dict[str, float]], None]
"""``progress(step, total_steps, values)``; ``values`` holds ``loss`` and, after a validation, ``valid_cer`` and
``valid_wer``."""

_CHAR_IDS = {char: index + 1 for index, char in enumerate(VOCABULARY)}


def encode_text(text: str) -> list[int]:
    """Class ids of a transcript: normalised, accents stripped, characters outside :data:`VOCABULARY` dropped.

    Raises:
        TypeError: ``text`` is not a string.
    """
    normalised = normalize_text(text)
    plain = "".join(c for c in unicodedata.normalize("NFKD", normalised) if not unicodedata.combining(c))
    return [_CHAR_IDS[c] for c in " ".join("".join(c for c in plain if c in _CHAR_IDS).split())]


def decode_ids(ids: Sequence[int]) -> str:
    """Text of a sequence of non-blank class ids (the inverse of :func:`encode_text` on normalised text)."""
    return "".join(VOCABULARY[i - 1] for i in ids if i != BLANK)


def ctc_greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor | Sequence[int] | None = None) -> list[str]:
    """Best path decoding: the top class of every frame, repeats merged, blanks dropped, spaces tidied.

    Args:
        log_probs: ``[B, T, C]`` scores (log-probabilities or logits; only the argmax matters), ``C`` =
            ``len(VOCABULARY) + 1``.
        lengths: Valid frames per item ``[B]``; all ``T`` when None.

    Returns:
        One string per item, without leading, trailing or doubled spaces.

    Raises:
        ValueError: wrong shape or class count, or lengths that do not fit.
    """
    if log_probs.dim() != 3 or log_probs.shape[-1] != len(VOCABULARY) + 1:
        raise ValueError(f"log_probs must be [B, T, {len(VOCABULARY) + 1}], got {tuple(log_probs.shape)}")
    batch, frames = log_probs.shape[:2]
    lengths = torch.full((batch,), frames) if lengths is None else torch.as_tensor(lengths).reshape(-1)
    if lengths.numel() != batch or bool((lengths < 0).any()) or bool((lengths > frames).any()):
        raise ValueError(f"lengths must hold {batch} values in 0..{frames}, got {lengths.tolist()}")
    best = log_probs.argmax(-1).cpu()
    texts = []
    for row, length in zip(best, lengths.tolist(), strict=True):
        path = torch.unique_consecutive(row[:length]).tolist()
        texts.append(" ".join(decode_ids(path).split()))
    return texts


@dataclass(frozen=True)
class JudgeConfig:
    """Architecture of :class:`JudgeASR` (what its checkpoint must match).

    Attributes:
        n_mels: Log-mel bands of the input features.
        conv_channels: Width of the convolutional front end.
        conv_kernel: Kernel size (frames) of each front-end convolution; odd.
        subsampling: Time stride of the first convolution: 1 keeps 50 Hz, 2 gives 25 Hz, which is still above fast
            espeak-ng speech's ~22 characters per second (95th percentile) and halves the GRU's work.
        cell: Recurrent cell, ``"gru"`` or ``"lstm"``.
        hidden_size: Recurrent units per direction.
        num_layers: Bidirectional recurrent layers (2-3 is enough for espeak speech).
        dropout: Dropout between layers during training.
    """

    n_mels: int = 40
    conv_channels: int = 128
    conv_kernel: int = 5
    subsampling: int = 2
    hidden_size: int = 128
    num_layers: int = 2
    dropout: float = 0.1
    cell: str = "gru"

    def __post_init__(self) -> None:
        for name in ("n_mels", "conv_channels", "hidden_size", "num_layers", "subsampling"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.subsampling > 3:
            raise ValueError(f"subsampling must be 1..3 (more leaves too few frames), got {self.subsampling}")
        if not isinstance(self.conv_kernel, int) or self.conv_kernel < 1 or self.conv_kernel % 2 == 0:
            raise ValueError(f"conv_kernel must be a positive odd int, got {self.conv_kernel!r}")
        if self.cell not in RNN_CELLS:
            raise ValueError(f"cell must be one of {sorted(RNN_CELLS)}, got {self.cell!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def num_classes(self) -> int:
        """Output classes: the blank and the characters of :data:`VOCABULARY`."""
        return len(VOCABULARY) + 1

    def feature_config(self) -> LightFeatureConfig:
        """The log-mel bands the model reads (no deltas); :meth:`JudgeASR.extract` floors and normalises them."""
        return LightFeatureConfig(kind="logmel", n_mels=self.n_mels, deltas=0, cmvn=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JudgeConfig:
        """Build from a dict, rejecting unknown keys (a typo must not silently become a default)."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown judge settings {unknown}; valid: {sorted(known)}")
        return cls(**data)


@dataclass(frozen=True)
class JudgeTrainArgs:
    """How :func:`train_judge` trains (the architecture is :class:`JudgeConfig`).

    Attributes:
        steps: Optimiser steps.
        batch_seconds: Audio per batch (seconds); batches hold utterances of similar length.
        learning_rate: Peak AdamW learning rate (linear warm-up, then cosine decay to a twentieth).
        warmup_steps: Steps of the linear warm-up.
        weight_decay: AdamW weight decay.
        grad_clip: Largest gradient norm.
        speed_range: Speed perturbation factors are drawn uniformly from ``[1/x, x]`` (1 disables it).
        max_extra_silence: Up to this many seconds of silence are added before and after each utterance, so that the
            per-utterance normalisation does not depend on how much silence surrounds the speech.
        warp_range: Mel-axis warp factors are drawn uniformly from ``[1/x, x]`` (1 disables it).
        freq_masks: SpecAugment frequency masks per utterance.
        freq_mask_bands: Widest frequency mask (mel bands).
        time_masks: SpecAugment time masks per utterance.
        time_mask_fraction: Widest time mask as a fraction of the utterance.
        valid_every: Steps between validations (0: only at the end).
        seed: Seed of initialisation, batching and augmentation.
        device: Torch device; CUDA when present, else CPU, when None.
        num_threads: Torch CPU threads during training (restored afterwards); None keeps the current setting. The
            GRU's matrices are small, so a second thread gains little on an idle machine, while on a busy one it
            made each step 6 times slower here (threads waiting for a core): 1 is the safe default.
    """

    steps: int = 1600
    batch_seconds: float = 30.0
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 1e-2
    grad_clip: float = 5.0
    speed_range: float = 1.15
    max_extra_silence: float = 0.2
    warp_range: float = 1.1
    freq_masks: int = 2
    freq_mask_bands: int = 6
    time_masks: int = 2
    time_mask_fraction: float = 0.05
    valid_every: int = 200
    seed: int = 0
    device: str | None = None
    num_threads: int | None = 1

    def __post_init__(self) -> None:
        for name in ("steps", "warmup_steps", "freq_masks", "freq_mask_bands", "time_masks", "valid_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        for name in ("batch_seconds", "learning_rate", "grad_clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("speed_range", "warp_range"):
            if not 1.0 <= getattr(self, name) <= 2.0:
                raise ValueError(f"{name} must be in [1, 2], got {getattr(self, name)!r}")
        if not 0.0 <= self.time_mask_fraction < 0.5:
            raise ValueError(f"time_mask_fraction must be in [0, 0.5), got {self.time_mask_fraction!r}")
        if self.max_extra_silence < 0:
            raise ValueError(f"max_extra_silence must be >= 0, got {self.max_extra_silence!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 or None, got {self.num_threads!r}")


@dataclass
class JudgeHistory:
    """What happened during :func:`train_judge`.

    Attributes:
        loss: ``(step, mean CTC loss per target character)`` every few steps.
        valid: ``(step, CER, WER)`` of each validation (empty without validation items).
        seconds: Wall time of the whole call (feature extraction included).
        train_seconds: Audio seconds of the training items.
    """

    loss: list[tuple[int, float]] = field(default_factory=list)
    valid: list[tuple[int, float, float]] = field(default_factory=list)
    seconds: float = 0.0
    train_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "loss": [list(x) for x in self.loss],
            "valid": [list(x) for x in self.valid],
            "seconds": self.seconds,
            "train_seconds": self.train_seconds,
        }


class JudgeASR(nn.Module):
    """Log-mel frames → convolutional front end → BiGRU → per-frame character log-probabilities (CTC).

    Args:
        config: Architecture; the defaults when None.
        device: Where to build the weights; CPU when None.
    """

    def __init__(self, config: JudgeConfig | None = None, *, device: str | torch.device | None = None) -> None:
        super().__init__()
        self.config = config or JudgeConfig()
        cfg = self.config
        pad = cfg.conv_kernel // 2
        self.conv1 = nn.Conv1d(cfg.n_mels, cfg.conv_channels, cfg.conv_kernel, stride=cfg.subsampling, padding=pad)
        self.conv2 = nn.Conv1d(cfg.conv_channels, cfg.conv_channels, cfg.conv_kernel, padding=pad)
        self.front_norm = nn.LayerNorm(cfg.conv_channels)
        self.dropout = nn.Dropout(cfg.dropout)
        self.rnn = RNN_CELLS[cfg.cell](
            cfg.conv_channels,
            cfg.hidden_size,
            num_layers=cfg.num_layers,
            batch_first=True,
            bidirectional=True,
            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
        )
        self.head = nn.Linear(2 * cfg.hidden_size, cfg.num_classes)
        self.features = LightFeatures(cfg.feature_config())
        self.info: dict[str, str] = {}
        self._lexicon_decoder: LexiconCTCDecoder | None = None
        if device is not None:
            self.to(device)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    @property
    def lexicon(self) -> Lexicon | None:
        """The words transcripts are spelled from (None: greedy character decoding)."""
        return self._lexicon_decoder.lexicon if self._lexicon_decoder is not None else None

    @lexicon.setter
    def lexicon(self, lexicon: Lexicon | None) -> None:
        self._lexicon_decoder = LexiconCTCDecoder(lexicon, VOCABULARY) if lexicon is not None else None

    @property
    def decoding(self) -> str:
        """How :meth:`transcribe` decodes by default: ``"greedy"`` or ``"lexicon"``."""
        return "greedy" if self._lexicon_decoder is None else "lexicon"

    def describe_decoding(self) -> str:
        """One line for reports: the decoding and, with a lexicon, its size."""
        if self._lexicon_decoder is None:
            return "greedy CTC (no lexicon)"
        options = self._lexicon_decoder.options
        return (
            f"lexicon beam search ({len(self._lexicon_decoder.words)} words, unigram weight {options.lm_weight:g}, "
            f"beam {options.beam_size})"
        )

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Output frames for ``lengths`` input frames (the first convolution's stride)."""
        cfg = self.config
        pad = cfg.conv_kernel // 2
        return torch.div(lengths + 2 * pad - cfg.conv_kernel, cfg.subsampling, rounding_mode="floor") + 1

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Character log-probabilities.

        Args:
            features: ``[B, T, n_mels]`` log-mel frames, zero-padded after each item's length.
            lengths: ``[B]`` valid frames per item (each at least 1).

        Returns:
            ``([B, T', C] log-probabilities, [B] valid output frames)``, ``T' = max(output_lengths)``.
        """
        hidden, out_lengths = self.hidden_states(features, lengths)
        return F.log_softmax(self.head(self.dropout(hidden)), dim=-1), out_lengths

    def hidden_states(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The recurrent layers' output before the character head: ``([B, T', 2H], [B] valid frames)``.

        Trained for CTC, these states say which sound is being spoken and little about who speaks it, which
        makes them good frame features for speech units (:class:`speechgpt.units.encoder.RecognizerFeatures`).
        """
        x = F.gelu(self.conv1(features.transpose(1, 2)))  # [B, C, T']
        out_lengths = self.output_lengths(lengths.to(x.device)).clamp(min=1, max=x.shape[2])
        # Zero the frames past each item's end, as the second convolution's own padding would be: an item's
        # output then does not depend on what it is batched with.
        x = x * (torch.arange(x.shape[2], device=x.device) < out_lengths[:, None])[:, None, :]
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # [B, T', C]
        x = self.dropout(self.front_norm(x))
        packed = nn.utils.rnn.pack_padded_sequence(x, out_lengths.cpu(), batch_first=True, enforce_sorted=False)
        x, _ = self.rnn(packed)
        x, _ = nn.utils.rnn.pad_packed_sequence(x, batch_first=True)  # [B, T', 2H]
        return x, out_lengths

    def extract(self, wave: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Normalised ``[T, n_mels]`` log-mel features of one 16 kHz waveform (on CPU).

        :data:`EDGE_SILENCE` is added at both ends, so the first and last sounds are seen as well as the middle
        ones; energies are floored :data:`DYNAMIC_RANGE_DB` below the utterance's loudest band, so digital silence
        and a faint noise floor look alike; then each band is normalised to zero mean and unit variance over the
        utterance, which removes loudness and much of a voice's (or a vocoder's) spectral colouring.
        """
        wave = F.pad(torch.as_tensor(wave, dtype=torch.float32).cpu(), (_EDGE_SAMPLES, _EDGE_SAMPLES))
        features = self.features(wave)
        features = features.clamp(min=float(features.max()) - _DYNAMIC_RANGE)
        return (features - features.mean(0)) / (features.std(0, unbiased=False) + 1e-5)

    @torch.inference_mode()
    def transcribe(
        self,
        waves: Sequence[AudioSource],
        *,
        sample_rate: int | None = None,
        batch_size: int = 16,
        max_seconds: float | None = MAX_AUDIO_SECONDS,
        decoding: str | None = None,
    ) -> list[str]:
        """Transcribe recordings, in batches of similar length; results in input order.

        Args:
            waves: Audio paths, file bytes, or arrays (arrays need ``sample_rate`` unless already 16 kHz
                float32 1-D, which is assumed when ``sample_rate`` is None).
            sample_rate: Rate of array inputs.
            batch_size: Recordings per forward pass.
            max_seconds: Longest accepted recording.
            decoding: ``"greedy"`` or ``"lexicon"`` (which needs a :attr:`lexicon`); None: :attr:`decoding`.

        Returns:
            One normalised transcript per recording (lowercase letters, apostrophes, single spaces).

        Raises:
            AudioError: an input is unreadable, empty, too long, NaN, or shorter than one 25 ms window.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        decoding = self.decoding if decoding is None else decoding
        if decoding not in ("greedy", "lexicon"):
            raise ValueError(f"decoding must be 'greedy' or 'lexicon', got {decoding!r}")
        if decoding == "lexicon" and self._lexicon_decoder is None:
            raise ValueError("lexicon decoding asked for, but this judge has no lexicon")
        features = [
            self.extract(load_for_judge(wave, sample_rate=sample_rate, max_seconds=max_seconds, name=f"item {i}"))
            for i, wave in enumerate(waves)
        ]
        was_training = self.training
        self.eval()
        try:
            order = sorted(range(len(features)), key=lambda i: len(features[i]))
            texts: list[str] = [""] * len(features)
            for start in range(0, len(order), batch_size):
                chosen = order[start : start + batch_size]
                batch, lengths = _pad([features[i] for i in chosen])
                log_probs, out_lengths = self(batch.to(self.device), lengths.to(self.device))
                out_lengths = out_lengths.cpu()
                if decoding == "greedy":
                    decoded = ctc_greedy_decode(log_probs, out_lengths)
                else:
                    decoder = self._lexicon_decoder
                    assert decoder is not None
                    rows = zip(log_probs, out_lengths.tolist(), strict=True)
                    decoded = [decoder.decode(row[:length]) for row, length in rows]
                for i, text in zip(chosen, decoded, strict=True):
                    texts[i] = text
        finally:
            self.train(was_training)
        return texts

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json``, ``model.safetensors`` and (with a lexicon) ``lexicon.txt`` into ``directory``,
        each atomically; a stale ``lexicon.txt`` of a judge without one is removed."""
        from safetensors.torch import save

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        atomic_write_bytes(directory / WEIGHTS_NAME, save(state, metadata={"format": JUDGE_FORMAT}))
        config = {"format": JUDGE_FORMAT, "version": JUDGE_VERSION, "vocabulary": VOCABULARY, **self.config.to_dict()}
        config["info"] = dict(self.info)
        lexicon = self.lexicon
        if lexicon is not None:
            lexicon.save(directory / LEXICON_NAME)
        else:
            (directory / LEXICON_NAME).unlink(missing_ok=True)
        atomic_write_text(directory / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, device: str | torch.device | None = None) -> JudgeASR:
        """Load a folder written by :meth:`save_pretrained`, in eval mode, on ``device`` (CUDA if present, else CPU),
        with its lexicon when the folder has one.

        Raises:
            FileNotFoundError: the folder, its config or its weights are missing.
            ValueError: the config is not a judge's, the weights do not fit it, or the lexicon is malformed.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory}: no such judge folder")
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        if not config_path.is_file():
            raise FileNotFoundError(f"{directory}: not a judge folder (no {CONFIG_NAME})")
        try:
            data = json.loads(config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{config_path}: not valid JSON ({e})") from e
        if not isinstance(data, dict) or data.get("format") != JUDGE_FORMAT:
            found = data.get("format") if isinstance(data, dict) else None
            raise ValueError(f"{config_path}: 'format' is {found!r}, expected {JUDGE_FORMAT!r}")
        if data.get("version") != JUDGE_VERSION:
            raise ValueError(f"{config_path}: unsupported judge version {data.get('version')!r}")
        if data.get("vocabulary") != VOCABULARY:
            raise ValueError(f"{config_path}: vocabulary {data.get('vocabulary')!r} differs from {VOCABULARY!r}")
        fields = {k: v for k, v in data.items() if k not in ("format", "version", "vocabulary", "info")}
        try:
            config = JudgeConfig.from_dict(fields)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{config_path}: {e}") from e
        if not weights_path.is_file():
            raise FileNotFoundError(f"{directory}: judge weights {WEIGHTS_NAME} are missing")
        try:
            state = load_file(str(weights_path))
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{weights_path}: unreadable safetensors file ({e})") from e
        model = cls(config)
        check_weights(state, model.state_dict(), str(weights_path))
        model.load_state_dict(state)
        model.info = {str(k): str(v) for k, v in (data.get("info") or {}).items()}
        if (directory / LEXICON_NAME).is_file():
            model.lexicon = Lexicon.load(directory / LEXICON_NAME)
        return model.to(resolve_device(device)).eval()


# --- training ---------------------------------------------------------------------------------------------------


@dataclass
class _Example:
    wave: np.ndarray
    target: torch.Tensor


def _prepare(items: Sequence[TrainItem], name: str) -> list[_Example]:
    if isinstance(items, str | bytes) or not isinstance(items, Sequence):
        raise TypeError(f"{name} must be a sequence of (audio, text) pairs, got {type(items).__name__}")
    examples = []
    for index, item in enumerate(items):
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise ValueError(f"{name}[{index}] must be an (audio, text) pair, got {type(item).__name__}")
        source, text = item
        if not isinstance(text, str):
            raise TypeError(f"{name}[{index}]: the transcript must be a str, got {type(text).__name__}")
        wave = load_for_judge(source, name=f"{name}[{index}]")
        examples.append(_Example(wave, torch.tensor(encode_text(text), dtype=torch.long)))
    return examples


def _batches(lengths: Sequence[int], frames_per_batch: int, rng: np.random.Generator) -> list[list[int]]:
    """Items grouped by similar length (less padding), each batch within the frame budget, batches shuffled."""
    jitter = rng.uniform(0.0, 0.1, len(lengths)) * np.asarray(lengths)  # a little shuffling between close lengths
    order = np.argsort(np.asarray(lengths) + jitter, kind="stable")
    batches, current, longest = [], [], 0
    for index in order.tolist():
        longest_after = max(longest, lengths[index])
        if current and longest_after * (len(current) + 1) > frames_per_batch:
            batches.append(current)
            current, longest_after = [], lengths[index]
        current.append(index)
        longest = longest_after
    if current:
        batches.append(current)
    rng.shuffle(batches)
    return batches


def _augment(model: JudgeASR, wave: np.ndarray, args: JudgeTrainArgs, rng: np.random.Generator) -> torch.Tensor:
    """Features of one training utterance after speed perturbation, extra edge silence, mel warping and SpecAugment
    masks."""
    if args.speed_range > 1.0:
        speed = math.exp(rng.uniform(-math.log(args.speed_range), math.log(args.speed_range)))
        wave = change_speed(wave, speed)
    if args.max_extra_silence > 0:
        before, after = rng.integers(0, int(args.max_extra_silence * SAMPLE_RATE) + 1, size=2)
        wave = np.pad(wave, (int(before), int(after)))
    features = model.extract(wave)  # [T, M]
    frames, bands = features.shape
    if args.warp_range > 1.0:
        warp = math.exp(rng.uniform(-math.log(args.warp_range), math.log(args.warp_range)))
        source = (torch.arange(bands, dtype=torch.float32) * warp).clamp(max=bands - 1)
        low = source.floor().long()
        high = (low + 1).clamp(max=bands - 1)
        weight = source - low
        features = features[:, low] * (1 - weight) + features[:, high] * weight
    features = features.clone()
    for _ in range(args.freq_masks):
        width = int(rng.integers(0, args.freq_mask_bands + 1))
        start = int(rng.integers(0, max(1, bands - width + 1)))
        features[:, start : start + width] = 0.0
    widest = int(frames * args.time_mask_fraction)
    for _ in range(args.time_masks):
        width = int(rng.integers(0, widest + 1))
        start = int(rng.integers(0, max(1, frames - width + 1)))
        features[start : start + width] = 0.0
    return features


def _lr(step: int, args: JudgeTrainArgs) -> float:
    if step < args.warmup_steps:
        return args.learning_rate * (step + 1) / args.warmup_steps
    progress = (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps)
    floor = args.learning_rate / 20
    return floor + (args.learning_rate - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def train_judge(
    items: Sequence[TrainItem],
    config: JudgeConfig | None = None,
    *,
    args: JudgeTrainArgs | None = None,
    valid_items: Sequence[TrainItem] | None = None,
    progress: JudgeProgress | None = None,
) -> tuple[JudgeASR, JudgeHistory]:
    """Train a judge ASR on recordings and their transcripts with CTC.

    Args:
        items: ``(audio, text)`` pairs; audio is a 16 kHz waveform array or a path (any rate, resampled).
        config: Architecture; the defaults when None.
        args: Training settings; the defaults when None.
        valid_items: Pairs scored (CER/WER, greedy decoding) every ``args.valid_every`` steps and at the end.
        progress: Called after every step as :data:`JudgeProgress`.

    Returns:
        The trained model in eval mode, and its :class:`JudgeHistory`.

    Raises:
        TypeError: ``items`` is not a sequence of pairs, or a transcript is not a string.
        ValueError: no items, or a malformed pair (naming its index).
        AudioError: unreadable, empty, too long or too short audio (naming the item).
    """
    started = time.perf_counter()
    args = args or JudgeTrainArgs()
    config = config or JudgeConfig()
    train = _prepare(items, "items")
    if not train:
        raise ValueError("no training items")
    valid = _prepare(valid_items, "valid_items") if valid_items is not None else []
    threads = torch.get_num_threads()
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            model, history = _train(train, valid, config, args, progress)
    finally:
        torch.set_num_threads(threads)
    history.seconds = time.perf_counter() - started
    history.train_seconds = sum(e.wave.size for e in train) / SAMPLE_RATE
    model.info = {
        "train_items": str(len(train)),
        "train_audio_seconds": f"{history.train_seconds:.1f}",
        "steps": str(args.steps),
        "train_wall_seconds": f"{history.seconds:.1f}",
        "seed": str(args.seed),
    }
    if history.valid:
        model.info.update({"valid_cer": f"{history.valid[-1][1]:.4f}", "valid_wer": f"{history.valid[-1][2]:.4f}"})
    logger.info("judge trained: %s", model.info)
    return model, history


def _score(model: JudgeASR, valid: list[_Example]) -> tuple[float, float]:
    hypotheses = model.transcribe([e.wave for e in valid], decoding="greedy")
    references = [decode_ids(e.target.tolist()) for e in valid]
    report = error_rates(references, hypotheses)
    return report.cer, report.wer


def _train(
    train: list[_Example],
    valid: list[_Example],
    config: JudgeConfig,
    args: JudgeTrainArgs,
    progress: JudgeProgress | None,
) -> tuple[JudgeASR, JudgeHistory]:
    device = resolve_device(args.device)
    model = JudgeASR(config, device=device)
    rng = np.random.default_rng(args.seed)
    history = JudgeHistory()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    # Batch planning uses unperturbed lengths; speed perturbation moves them by at most speed_range.
    lengths = [num_frames(e.wave.size) for e in train]
    frames_per_batch = int(args.batch_seconds * SAMPLE_RATE / HOP_LENGTH)
    plan: list[list[int]] = []
    recent: list[float] = []
    model.train()
    for step in range(args.steps):
        if not plan:
            plan = _batches(lengths, frames_per_batch, rng)
        chosen = plan.pop()
        features, feature_lengths = _pad([_augment(model, train[i].wave, args, rng) for i in chosen])
        targets = [train[i].target for i in chosen]
        target_lengths = torch.tensor([len(t) for t in targets])
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, args)
        log_probs, out_lengths = model(features.to(device), feature_lengths.to(device))
        loss = F.ctc_loss(
            log_probs.transpose(0, 1),
            torch.cat(targets).to(device),
            out_lengths,
            target_lengths.to(device),
            blank=BLANK,
            reduction="mean",
            zero_infinity=True,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        recent.append(float(loss.detach()))
        values = {"loss": float(np.mean(recent[-20:]))}
        if (step + 1) % 20 == 0 or step + 1 == args.steps:
            history.loss.append((step + 1, values["loss"]))
        validate = valid and ((args.valid_every and (step + 1) % args.valid_every == 0) or step + 1 == args.steps)
        if validate:
            cer, wer = _score(model, valid)
            history.valid.append((step + 1, cer, wer))
            values.update({"valid_cer": cer, "valid_wer": wer})
            model.train()
        if progress is not None:
            progress(step + 1, args.steps, values)
    model.eval()
    return model, history


# --- helpers ----------------------------------------------------------------------------------------------------


def read_transcripts(manifest: str | os.PathLike) -> list[tuple[str, str]]:
    """``(audio path, text)`` pairs of a JSON Lines manifest with ``audio`` and ``text`` fields.

    Relative audio paths are resolved against the manifest's folder (as :mod:`speechgpt.manifest` does).

    Raises:
        FileNotFoundError: the manifest is missing.
        JsonlError: a line is not a JSON object (naming the line).
        ManifestError: a record lacks a non-empty ``audio`` string or a ``text`` string (naming the record), or
            the manifest holds no records.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: no such manifest")
    items = []
    for number, record in enumerate(read_jsonl(manifest), start=1):
        audio, text = record.get("audio"), record.get("text")
        if not isinstance(audio, str) or not audio:
            raise ManifestError(f"{manifest}: record {number} has no 'audio' path string")
        if not isinstance(text, str):
            raise ManifestError(f"{manifest}: record {number} has no 'text' string")
        path = Path(audio).expanduser()
        items.append((str(path if path.is_absolute() else manifest.parent / path), text))
    if not items:
        raise ManifestError(f"{manifest}: no records")
    return items


def load_for_judge(
    source: AudioSource,
    *,
    sample_rate: int | None = None,
    max_seconds: float | None = MAX_AUDIO_SECONDS,
    name: str | None = None,
) -> np.ndarray:
    """Audio as the judge reads it: 16 kHz float32 mono, at least one 25 ms window long.

    A 1-D array without ``sample_rate`` is taken to be 16 kHz already (what every part of the package produces).

    Raises:
        AudioError: unreadable, empty, NaN/inf, too long, or shorter than one window (naming the input).
    """
    if sample_rate is None and isinstance(source, np.ndarray | torch.Tensor):
        sample_rate = SAMPLE_RATE
    label = str(source) if isinstance(source, str | os.PathLike) else (name or "<audio>")
    wave = load_audio(source, sample_rate=sample_rate, max_seconds=max_seconds, name=label)
    if wave.size < WINDOW_LENGTH:
        raise AudioError(label, f"too short: {wave.size} samples, at least {WINDOW_LENGTH} (25 ms) needed")
    return wave


def _pad(features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(f) for f in features])
    return nn.utils.rnn.pad_sequence(list(features), batch_first=True), lengths
