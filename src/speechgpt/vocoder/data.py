"""Training data of the unit vocoder: (audio, units, durations) triples from a ``speechgpt units encode`` manifest.

A manifest is JSON Lines with one record per recording: ``audio`` (a path), ``units`` (deduplicated ids) and
``durations`` (20 ms frames per unit). Unit frame ``f`` stands for audio samples ``[f * hop, (f + 1) * hop)``, so a
training segment of ``segment_frames`` frames is cut at frame boundaries in both: the units that overlap the
frames (edge units shortened to the part inside) and exactly ``segment_frames * hop`` samples. Items shorter than a
segment are used whole and padded by :class:`SegmentCollator`.

Randomness (the order of items and where each segment starts) comes only from :class:`SegmentSampler`, which
derives each epoch from ``(seed, epoch)`` and yields ``(index, crop_seed)`` keys: the dataset itself is
deterministic, so worker processes, prefetching and resuming mid-epoch cannot change what is trained on.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from speechgpt.audio import AudioError, audio_duration, load_audio
from speechgpt.constants import HOP_LENGTH, SAMPLE_RATE

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "FRAME_TOLERANCE",
    "SegmentCollator",
    "SegmentSampler",
    "UnitAudioDataset",
    "UnitRecord",
    "VocoderDataError",
    "read_unit_manifest",
]

DEFAULT_CACHE_BYTES = 2 * 1024**3
"""Keep every waveform in memory (float32) when the whole set needs at most this many bytes."""
FRAME_TOLERANCE = 1
"""Frames by which a recording's length may disagree with its durations (framing conventions differ by one)."""
_MAX_CROP_SEED = 2**31 - 1


class VocoderDataError(ValueError):
    """A manifest record or its audio that cannot be trained on; the message names the file and line."""


@dataclass(frozen=True, eq=False)
class UnitRecord:
    """One manifest record, checked.

    Attributes:
        audio: Path of the recording (relative paths already resolved).
        units: ``int64 [T]`` unit ids.
        durations: ``int64 [T]`` frames per unit, each >= 1.
        where: ``"manifest:line"``, for messages.
    """

    audio: str
    units: np.ndarray
    durations: np.ndarray
    where: str

    @property
    def num_frames(self) -> int:
        """Unit frames of the recording (the sum of its durations)."""
        return int(self.durations.sum())


def _resolve_audio(manifest: Path, entry: str) -> str:
    """Absolute paths as given; relative ones against the manifest's folder, else the working directory.

    ``speechgpt units encode`` records paths as they were typed (relative to where it ran), while hand-written
    manifests usually list paths next to themselves; the manifest's folder wins when both exist.
    """
    path = Path(entry).expanduser()
    if path.is_absolute():
        return str(path)
    beside = manifest.parent / path
    return str(beside if beside.exists() or not path.exists() else path)


def _int_array(value: Any, where: str, field: str) -> np.ndarray:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise VocoderDataError(f"{where}: field {field!r} must be a list of integers")
    if not value:
        raise VocoderDataError(f"{where}: field {field!r} is empty")
    return np.asarray(value, dtype=np.int64)


def _check_record(record: Any, manifest: Path, where: str, num_units: int | None) -> UnitRecord:
    if not isinstance(record, dict):
        raise VocoderDataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [key for key in ("audio", "units", "durations") if key not in record]
    if missing:
        raise VocoderDataError(
            f"{where}: record lacks {missing}; vocoder training needs 'audio', 'units' and 'durations' "
            "(as written by `speechgpt units encode`)"
        )
    audio = record["audio"]
    if not isinstance(audio, str) or not audio:
        raise VocoderDataError(f"{where}: field 'audio' must be a non-empty path string")
    units = _int_array(record["units"], where, "units")
    durations = _int_array(record["durations"], where, "durations")
    if len(units) != len(durations):
        raise VocoderDataError(f"{where}: 'durations' has {len(durations)} entries but 'units' has {len(units)}")
    if (durations < 1).any():
        raise VocoderDataError(f"{where}: every duration must be >= 1 frame, found {int(durations.min())}")
    if (units < 0).any():
        raise VocoderDataError(f"{where}: unit ids must be >= 0, found {int(units.min())}")
    if num_units is not None and (units >= num_units).any():
        raise VocoderDataError(
            f"{where}: unit id {int(units.max())} is out of range for a vocoder with {num_units} units "
            f"(ids 0..{num_units - 1}); was the manifest encoded with another tokenizer?"
        )
    return UnitRecord(audio=_resolve_audio(manifest, audio), units=units, durations=durations, where=where)


def read_unit_manifest(path: str | os.PathLike, *, num_units: int | None = None) -> list[UnitRecord]:
    """Read and check every record of a units manifest.

    Args:
        path: JSON Lines file from ``speechgpt units encode`` (blank lines are skipped).
        num_units: Vocabulary of the vocoder to train; ids must lie in ``0..num_units-1``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        VocoderDataError: a line is not JSON, a record lacks a field or has bad values (``path:line: reason``),
            or the manifest holds no record.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such manifest file")
    records = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise VocoderDataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from e
            records.append(_check_record(record, path, where, num_units))
    if not records:
        raise VocoderDataError(f"{path}: the manifest holds no records")
    return records


class UnitAudioDataset(Dataset):
    """Aligned (units, durations, audio) items: random segments for training, whole recordings for validation.

    Keys are ``(index, crop_seed)`` pairs (from :class:`SegmentSampler`) for segments, or plain indices for whole
    items. Audio is loaded once and kept in memory when the whole set fits in ``cache_max_bytes``, else read again
    for each item.

    Args:
        records: Checked records (see :func:`read_unit_manifest`).
        segment_frames: Unit frames per training segment; None for whole items only.
        hop_length: Samples per unit frame.
        sample_rate: Rate the audio is resampled to.
        cache_max_bytes: Largest in-memory cache (float32 samples); 0 disables caching.

    Raises:
        VocoderDataError: unreadable audio, or audio whose length does not fit its durations (naming the line).
    """

    def __init__(
        self,
        records: Sequence[UnitRecord],
        *,
        segment_frames: int | None = None,
        hop_length: int = HOP_LENGTH,
        sample_rate: int = SAMPLE_RATE,
        cache_max_bytes: int = DEFAULT_CACHE_BYTES,
    ):
        if not records:
            raise VocoderDataError("no records to train on")
        if segment_frames is not None and (not isinstance(segment_frames, int) or segment_frames < 1):
            raise ValueError(f"segment_frames must be a positive int or None, got {segment_frames!r}")
        self.records = list(records)
        self.segment_frames = segment_frames
        self.hop_length = hop_length
        self.sample_rate = sample_rate
        seconds = [self._header_seconds(record) for record in self.records]
        needed = int(sum(seconds) * sample_rate * 4)
        self._cache: list[np.ndarray] | None = None
        if needed <= cache_max_bytes:
            self._cache = [self._load(record) for record in self.records]
        else:
            logger.info("audio needs %.1f GiB, more than the cache limit: reading it per item", needed / 1024**3)

    @classmethod
    def from_manifest(cls, path: str | os.PathLike, *, num_units: int | None = None, **kwargs: Any) -> UnitAudioDataset:
        """Read a manifest (:func:`read_unit_manifest`) and build the dataset; ``kwargs`` go to the constructor."""
        return cls(read_unit_manifest(path, num_units=num_units), **kwargs)

    @property
    def cached(self) -> bool:
        """Whether every waveform is held in memory."""
        return self._cache is not None

    def __len__(self) -> int:
        return len(self.records)

    def _header_seconds(self, record: UnitRecord) -> float:
        try:
            return audio_duration(record.audio)
        except AudioError as e:
            raise VocoderDataError(f"{record.where}: {e}") from e

    def _load(self, record: UnitRecord) -> np.ndarray:
        """The recording as exactly ``num_frames * hop`` samples (checked against the durations)."""
        try:
            wave = load_audio(record.audio, target_rate=self.sample_rate, max_seconds=None)
        except AudioError as e:
            raise VocoderDataError(f"{record.where}: {e}") from e
        frames = record.num_frames
        target = frames * self.hop_length
        have = len(wave) // self.hop_length
        if abs(have - frames) > FRAME_TOLERANCE:
            raise VocoderDataError(
                f"{record.where}: {record.audio} has {len(wave)} samples ({have} frames of {self.hop_length}) but "
                f"its durations add up to {frames} frames; the audio and the units do not belong together"
            )
        if len(wave) < target:
            wave = np.pad(wave, (0, target - len(wave)))
        return np.ascontiguousarray(wave[:target], dtype=np.float32)

    def audio(self, index: int) -> np.ndarray:
        """Waveform of item ``index``: float32 ``[num_frames * hop]``."""
        if self._cache is not None:
            return self._cache[index]
        return self._load(self.records[index])

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        """Item ``key``: ``units``, ``durations`` (frames in this piece), ``target_durations`` (whole-unit durations,
        what the duration predictor learns) and ``audio`` ``[frames * hop]``.

        Raises:
            KeyError: a crop key on a dataset without ``segment_frames``.
        """
        if isinstance(key, tuple):
            index, crop_seed = key
            if self.segment_frames is None:
                raise KeyError("segment keys (index, crop_seed) need a dataset built with segment_frames")
            return self.segment(int(index), int(crop_seed))
        record = self.records[key]
        durations = torch.from_numpy(record.durations)
        return {
            "units": torch.from_numpy(record.units),
            "durations": durations,
            "target_durations": durations,
            "audio": torch.from_numpy(self.audio(key)),
        }

    def segment(self, index: int, crop_seed: int) -> dict[str, torch.Tensor]:
        """``segment_frames`` frames of item ``index`` from a start drawn with ``crop_seed`` (whole if shorter)."""
        assert self.segment_frames is not None
        record = self.records[index]
        total = record.num_frames
        length = min(self.segment_frames, total)
        start = int(np.random.default_rng(crop_seed).integers(0, total - length + 1))
        ends = np.cumsum(record.durations)  # unit u covers frames [ends[u] - d[u], ends[u])
        starts = ends - record.durations
        first = int(np.searchsorted(ends, start, side="right"))
        last = int(np.searchsorted(starts, start + length, side="left"))  # one past the last overlapping unit
        clipped = np.minimum(ends[first:last], start + length) - np.maximum(starts[first:last], start)
        hop = self.hop_length
        wave = self.audio(index)[start * hop : (start + length) * hop]
        return {
            "units": torch.from_numpy(record.units[first:last]),
            "durations": torch.from_numpy(clipped),
            "target_durations": torch.from_numpy(record.durations[first:last]),
            "audio": torch.from_numpy(wave),
        }


@dataclass(frozen=True)
class SegmentCollator:
    """Pads items into a batch: ``units``/``durations``/``target_durations`` ``[B, T]`` (zeros after each item's
    units), ``unit_lengths``/``frame_lengths`` ``[B]`` and ``audio`` ``[B, S]`` (zeros after each item's audio).

    Attributes:
        hop_length: Samples per unit frame.
        segment_frames: Pad audio to at least this many frames (training batches have one length); None: to the
            longest item.
    """

    hop_length: int = HOP_LENGTH
    segment_frames: int | None = None

    def __call__(self, items: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        pad = torch.nn.utils.rnn.pad_sequence
        frame_lengths = torch.stack([item["durations"].sum() for item in items])
        frames = max(int(frame_lengths.max()), self.segment_frames or 0)
        audio = torch.zeros(len(items), frames * self.hop_length)
        for b, item in enumerate(items):
            audio[b, : item["audio"].numel()] = item["audio"]
        return {
            "units": pad([item["units"] for item in items], batch_first=True),
            "durations": pad([item["durations"] for item in items], batch_first=True),
            "target_durations": pad([item["target_durations"] for item in items], batch_first=True),
            "unit_lengths": torch.tensor([item["units"].numel() for item in items]),
            "frame_lengths": frame_lengths,
            "audio": audio,
        }


class SegmentSampler(Sampler[tuple[int, int]]):
    """Shuffled ``(index, crop_seed)`` keys, one epoch at a time, reproducible from ``(seed, epoch)``.

    Each epoch draws a permutation and one crop seed per item from a generator seeded with ``seed`` and the epoch;
    with several processes, replica ``rank`` takes every ``num_replicas``-th key (the permutation is wrapped so all
    replicas get as many). :meth:`state_dict` records the epoch and how many keys this replica has consumed, which
    is all a resumed run needs to continue with exactly the same keys.

    Args:
        num_items: Dataset size.
        seed: Base seed.
        num_replicas: Processes sharing the data.
        rank: This process's index.
    """

    def __init__(self, num_items: int, *, seed: int = 0, num_replicas: int = 1, rank: int = 0):
        if num_items < 1:
            raise ValueError(f"num_items must be positive, got {num_items}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in 0..{num_replicas - 1}, got {rank}")
        self.num_items = num_items
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.start = 0

    @property
    def per_replica(self) -> int:
        """Keys per epoch on each replica."""
        return math.ceil(self.num_items / self.num_replicas)

    def generator(self, epoch: int) -> torch.Generator:
        """The generator an epoch's keys come from (seeded from ``seed`` and ``epoch`` only)."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)

    def keys(self, epoch: int) -> list[tuple[int, int]]:
        """This replica's keys of ``epoch``, in order."""
        generator = self.generator(epoch)
        order = torch.randperm(self.num_items, generator=generator).tolist()
        crops = torch.randint(0, _MAX_CROP_SEED, (self.num_items,), generator=generator).tolist()
        total = self.per_replica * self.num_replicas
        wrapped = (order * math.ceil(total / self.num_items))[:total]
        return [(i, crops[i]) for i in wrapped[self.rank :: self.num_replicas]]

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate ``epoch`` from its ``start``-th key (``start > 0`` when resuming mid-epoch)."""
        if not 0 <= start <= self.per_replica:
            raise ValueError(f"start must be in 0..{self.per_replica}, got {start}")
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.keys(self.epoch)[self.start :])

    def __len__(self) -> int:
        return self.per_replica - self.start

    def state_dict(self, consumed: int) -> dict[str, int]:
        """What :meth:`load_state_dict` needs to go on after ``consumed`` keys of the current epoch."""
        return {"seed": self.seed, "epoch": self.epoch, "start": self.start + consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue where :meth:`state_dict` left off.

        Raises:
            ValueError: the state comes from a sampler with another seed.
        """
        if int(state["seed"]) != self.seed:
            raise ValueError(f"sampler state has seed {state['seed']}, this sampler {self.seed}")
        self.set_epoch(int(state["epoch"]), int(state["start"]))
