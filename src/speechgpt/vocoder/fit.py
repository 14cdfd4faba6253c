"""Fitting the fast vocoder on units and their audio, in about a minute on 2 CPU cores.

Input: recordings and the :class:`~speechgpt.units.tokenizer.Units` that the speech tokenizer gave them (or a
JSON Lines manifest from ``speechgpt units encode``, whose records hold ``audio``, ``units`` and ``durations``).
Every unit frame of the audio is measured with :func:`~speechgpt.vocoder.fast.analyze_frames`; then

1. each unit's table entry is the mean of its frames, and its duration entry the mean ``log(1 + frames)``;
   units that never occur take the entry of the nearest unit that does (by k-means centre, when the centres
   are given) or the mean over all frames;
2. the duration predictor learns the correction of the table from unit context (MSE on ``log(1 + frames)``);
3. the frame refiner learns the correction of the table frames from frame context (L1 on normalised frames).

Both networks train for a fixed number of steps on seeded random crops, so a fit is deterministic for a given
seed, data and thread count, and its time does not depend on the machine's load.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from speechgpt.audio import DEFAULT_MAX_SECONDS, load_audio
from speechgpt.jsonl import read_jsonl
from speechgpt.units.base import num_frames
from speechgpt.units.tokenizer import Units
from speechgpt.vocoder.fast import NOISE_TABLE_SIZE, FastVocoder, FastVocoderConfig, analyze_frames

logger = logging.getLogger(__name__)

__all__ = [
    "FastVocoderFitArgs",
    "FitProgress",
    "fit_fast_vocoder",
    "fit_from_manifest",
    "read_manifest",
]

FitProgress = Callable[[str, int, int, float | None], None]
"""``progress(stage, done, total, loss)``; stages ``"analysis"``, ``"durations"``, ``"refiner"``; ``loss`` is the
latest training loss (None during analysis)."""


@dataclass(frozen=True)
class FastVocoderFitArgs:
    """How the fast vocoder is fitted (the architecture is :class:`FastVocoderConfig`).

    Attributes:
        refiner_steps: Optimiser steps of the frame refiner (0 keeps the plain table).
        duration_steps: Optimiser steps of the duration predictor (0 keeps the plain table).
        batch_size: Crops per step.
        crop_frames: Frames per refiner crop.
        crop_units: Units per duration-predictor crop.
        learning_rate: Peak AdamW learning rate (cosine decay to a tenth over the steps).
        weight_decay: AdamW weight decay.
        seed: Seed of initialisation, crops and the excitation noise.
        num_threads: Torch CPU threads during the fit (restored afterwards); None keeps the current setting. The
            networks are small, so on a busy machine 1 thread can be several times faster than oversubscribed
            cores.
    """

    refiner_steps: int = 800
    duration_steps: int = 600
    batch_size: int = 16
    crop_frames: int = 128
    crop_units: int = 48
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    num_threads: int | None = None

    def __post_init__(self) -> None:
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 or None, got {self.num_threads}")
        for name in ("refiner_steps", "duration_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "crop_frames", "crop_units"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0 or self.weight_decay < 0:
            raise ValueError(
                f"need learning_rate > 0 and weight_decay >= 0, got {self.learning_rate}, {self.weight_decay}"
            )


def _check_item(wave: torch.Tensor, units: Units, num_units: int, name: str) -> None:
    if wave.dim() != 1:
        raise ValueError(f"{name}: expected a 1-D 16 kHz waveform, got shape {tuple(wave.shape)}")
    if not bool(torch.isfinite(wave).all()):
        raise ValueError(f"{name}: waveform contains NaN or inf")
    if len(units) == 0:
        raise ValueError(f"{name}: no units")
    if units.ids.shape != units.durations.shape:
        raise ValueError(f"{name}: {len(units.ids)} units but {len(units.durations)} durations")
    if int(units.ids.min()) < 0 or int(units.ids.max()) >= num_units:
        bad = int(units.ids[(units.ids < 0) | (units.ids >= num_units)][0])
        raise ValueError(f"{name}: unit id {bad} is outside 0..{num_units - 1}")
    if int(units.durations.min()) < 1:
        raise ValueError(f"{name}: durations must be >= 1 frame, got {int(units.durations.min())}")
    expected = num_frames(wave.numel())
    if units.num_frames != expected:
        raise ValueError(
            f"{name}: the units cover {units.num_frames} frames but the audio has {expected} "
            f"({wave.numel()} samples); were these units encoded from this audio?"
        )


def _cosine_lr(step: int, total: int, peak: float) -> float:
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / max(1, total))))


def _crops(
    data: torch.Tensor, offsets: torch.Tensor, lengths: torch.Tensor, crop: int, count: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` random crops of at most ``crop`` rows from the sequences packed in ``data``; padded, with a mask."""
    items = torch.randint(len(lengths), (count,), generator=gen)
    room = (lengths[items] - crop).clamp(min=0)
    starts = offsets[items] + (torch.rand(count, generator=gen) * (room + 1)).long().clamp(max=room)
    size = min(crop, int(lengths[items].max()))
    index = starts[:, None] + torch.arange(size)
    mask = torch.arange(size)[None, :] < lengths[items, None]
    return data[index.clamp(max=data.shape[0] - 1)], mask


def _fallbacks(seen: torch.Tensor, centers: torch.Tensor | None) -> torch.Tensor:
    """For every unit, the unit whose entries it uses: itself when seen, else the nearest seen centre (-1: none)."""
    source = torch.where(seen, torch.arange(seen.numel()), torch.full_like(seen, -1, dtype=torch.long))
    if centers is None or not bool(seen.any()) or bool(seen.all()):
        return source
    seen_ids = seen.nonzero()[:, 0]
    unseen_ids = (~seen).nonzero()[:, 0]
    distances = torch.cdist(centers[unseen_ids].double(), centers[seen_ids].double())
    source[unseen_ids] = seen_ids[distances.argmin(dim=1)]
    return source


def fit_fast_vocoder(
    waves: Sequence[np.ndarray | torch.Tensor],
    units: Sequence[Units],
    num_units: int,
    *,
    config: FastVocoderConfig | None = None,
    args: FastVocoderFitArgs | None = None,
    centers: np.ndarray | torch.Tensor | None = None,
    names: Sequence[str] | None = None,
    progress: FitProgress | None = None,
) -> FastVocoder:
    """Fit a :class:`FastVocoder` to recordings and their units.

    Args:
        waves: 16 kHz mono waveforms.
        units: Their units, as the speech tokenizer gives them; ``units[i].num_frames`` must equal
            ``num_frames(len(waves[i]))``.
        num_units: Unit vocabulary size (the tokenizer's k-means clusters).
        config: Architecture; the default for ``num_units`` when None.
        args: Training settings; defaults when None.
        centers: ``[num_units, dim]`` k-means centres; units absent from the data then borrow the entries of the
            nearest unit present (else they get the mean frame and duration).
        names: Labels of the recordings for error messages (default ``item {i}``).
        progress: Called as :data:`FitProgress`.

    Returns:
        The fitted vocoder in eval mode on CPU; ``info`` records the data size and fit time.

    Raises:
        ValueError: mismatched lengths, no data, units outside the vocabulary, or units that do not cover their
            audio's frames (naming the recording).
    """
    args = args or FastVocoderFitArgs()
    threads = torch.get_num_threads()
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    try:
        return _fit(waves, units, num_units, config, args, centers, names, progress)
    finally:
        torch.set_num_threads(threads)


def _fit(
    waves: Sequence[np.ndarray | torch.Tensor],
    units: Sequence[Units],
    num_units: int,
    config: FastVocoderConfig | None,
    args: FastVocoderFitArgs,
    centers: np.ndarray | torch.Tensor | None,
    names: Sequence[str] | None,
    progress: FitProgress | None,
) -> FastVocoder:
    started = time.perf_counter()
    config = config or FastVocoderConfig(num_units=num_units)
    if config.num_units != num_units:
        raise ValueError(f"config.num_units={config.num_units} differs from num_units={num_units}")
    if len(waves) != len(units):
        raise ValueError(f"got {len(waves)} waveforms but {len(units)} unit sequences")
    if not waves:
        raise ValueError("no recordings to fit the vocoder on")
    if names is not None and len(names) != len(waves):
        raise ValueError(f"got {len(names)} names for {len(waves)} recordings")
    center_tensor = None
    if centers is not None:
        center_tensor = torch.as_tensor(np.array(centers) if not isinstance(centers, torch.Tensor) else centers)
        if center_tensor.dim() != 2 or center_tensor.shape[0] != num_units:
            raise ValueError(f"centers must be [num_units={num_units}, dim], got shape {tuple(center_tensor.shape)}")

    # 1. Measure every frame; pack the corpus into flat tensors.
    features, frame_ids, unit_ids, log_durations = [], [], [], []
    for i, (wave, item) in enumerate(zip(waves, units, strict=True)):
        wave = torch.as_tensor(wave, dtype=torch.float32)
        _check_item(wave, item, num_units, names[i] if names is not None else f"item {i}")
        features.append(analyze_frames(wave, config))
        frame_ids.append(item.frames())
        unit_ids.append(item.ids.long())
        log_durations.append(torch.log1p(item.durations.float()))
        if progress is not None:
            progress("analysis", i + 1, len(waves), None)
    all_features, all_frames = torch.cat(features), torch.cat(frame_ids)
    all_units, all_log_durations = torch.cat(unit_ids), torch.cat(log_durations)

    # 2. Tables, with fallbacks for units absent from the data.
    dim = config.feature_dim
    frame_counts = torch.bincount(all_frames, minlength=num_units).float()
    table = torch.zeros(num_units, dim).index_add_(0, all_frames, all_features) / frame_counts.clamp(min=1)[:, None]
    unit_counts = torch.bincount(all_units, minlength=num_units).float()
    duration_table = torch.zeros(num_units).index_add_(0, all_units, all_log_durations) / unit_counts.clamp(min=1)
    seen = frame_counts > 0
    source = _fallbacks(seen, center_tensor)
    table = torch.where((source >= 0)[:, None], table[source.clamp(min=0)], all_features.mean(0))
    duration_table = torch.where(source >= 0, duration_table[source.clamp(min=0)], all_log_durations.mean())

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        model = FastVocoder(config)
        gen = torch.Generator().manual_seed(args.seed)
        model.noise.copy_(torch.randn(NOISE_TABLE_SIZE, generator=gen))
        model.unit_features.copy_(table)
        model.unit_log_durations.copy_(duration_table)
        model.feature_mean.copy_(all_features.mean(0))
        model.feature_scale.copy_(all_features.std(0).clamp(min=1e-3))

        # 3. Duration predictor on unit sequences.
        lengths = torch.tensor([len(u) for u in unit_ids])
        offsets = torch.cumsum(lengths, 0) - lengths
        packed = torch.stack([all_units.float(), all_log_durations], dim=1)
        duration_loss = _train(
            model.duration,
            args.duration_steps,
            args,
            lambda: _crops(packed, offsets, lengths, args.crop_units, args.batch_size, gen),
            lambda batch, mask: _duration_loss(model, batch, mask),
            "durations",
            progress,
        )

        # 4. Frame refiner on frame sequences.
        lengths = torch.tensor([len(f) for f in features])
        offsets = torch.cumsum(lengths, 0) - lengths
        packed = torch.cat([all_frames.float()[:, None], all_features], dim=1)
        refiner_loss = _train(
            model.refiner,
            args.refiner_steps,
            args,
            lambda: _crops(packed, offsets, lengths, args.crop_frames, args.batch_size, gen),
            lambda batch, mask: _refiner_loss(model, batch, mask),
            "refiner",
            progress,
        )

    # 5. Units absent from the data have untrained embeddings: give them their fallback's.
    with torch.no_grad():
        for embedding in (model.refiner.embed.weight, model.duration.embed.weight):
            embedding.copy_(
                torch.where(
                    (source >= 0)[:, None], embedding[source.clamp(min=0)], embedding[seen].mean(0, keepdim=True)
                )
            )
    model.eval()
    model.info = {
        "recordings": str(len(waves)),
        "frames": str(all_frames.numel()),
        "units_seen": str(int(seen.sum())),
        "duration_loss": f"{duration_loss:.4f}",
        "refiner_loss": f"{refiner_loss:.4f}",
        "fit_seconds": f"{time.perf_counter() - started:.1f}",
        "seed": str(args.seed),
    }
    logger.info("fast vocoder fitted: %s", model.info)
    return model


def _duration_loss(model: FastVocoder, batch: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    units, target = batch[..., 0].long(), batch[..., 1]
    prediction = model.log_durations(units)
    return ((prediction - target).pow(2) * mask).sum() / mask.sum()


def _refiner_loss(model: FastVocoder, batch: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    frame_ids, target = batch[..., 0].long(), batch[..., 1:]
    base = (model.unit_features[frame_ids] - model.feature_mean) / model.feature_scale
    prediction = model.refiner(frame_ids, base)
    error = (prediction - (target - model.feature_mean) / model.feature_scale).abs().mean(-1)
    return (error * mask).sum() / mask.sum()


def _train(
    module: torch.nn.Module,
    steps: int,
    args: FastVocoderFitArgs,
    sample: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    stage: str,
    progress: FitProgress | None,
) -> float:
    """AdamW with cosine decay for ``steps`` steps; returns the mean loss of the last tenth of the steps."""
    if steps == 0:
        return float("nan")
    module.train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    recent: list[float] = []
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = _cosine_lr(step, steps, args.learning_rate)
        batch, mask = sample()
        loss = loss_fn(batch, mask.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = float(loss.detach())
        if step >= steps - max(1, steps // 10):
            recent.append(value)
        if progress is not None:
            progress(stage, step + 1, steps, value)
    module.eval()
    return float(np.mean(recent))


# --- manifests --------------------------------------------------------------------------------------------------


def _int_list(value: object, label: str, field: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{label}: field {field!r} must be a list of integers")
    return value


def _resolve_audio(audio: object, manifest: Path, label: str) -> Path:
    if not isinstance(audio, str) or not audio:
        raise ValueError(f"{label}: field 'audio' must be a non-empty path string")
    path = Path(audio)
    if path.is_absolute() or path.exists():
        return path
    beside = manifest.parent / path
    return beside if beside.exists() else path


def read_manifest(manifest: str | os.PathLike) -> list[tuple[Path, Units]]:
    """The recordings and units of a ``speechgpt units encode`` JSON Lines file.

    Relative audio paths are taken from the current directory, else from the manifest's folder.

    Raises:
        FileNotFoundError: the manifest is missing.
        ValueError: a record without ``audio``/``units``/``durations`` or with mismatched lengths (naming the
            record), or an empty manifest.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: no such manifest")
    items = []
    for number, record in enumerate(read_jsonl(manifest), start=1):
        label = f"{manifest} record {number}"
        missing = [key for key in ("audio", "units", "durations") if key not in record]
        if missing:
            raise ValueError(f"{label}: missing field(s) {missing} (expected output of `speechgpt units encode`)")
        ids = _int_list(record["units"], label, "units")
        durations = _int_list(record["durations"], label, "durations")
        if len(ids) != len(durations):
            raise ValueError(f"{label}: 'durations' has {len(durations)} entries but 'units' has {len(ids)}")
        path = _resolve_audio(record["audio"], manifest, label)
        items.append((path, Units(ids=torch.tensor(ids, dtype=torch.long), durations=torch.tensor(durations))))
    if not items:
        raise ValueError(f"{manifest}: no records")
    return items


def fit_from_manifest(
    manifest: str | os.PathLike,
    num_units: int,
    *,
    config: FastVocoderConfig | None = None,
    args: FastVocoderFitArgs | None = None,
    centers: np.ndarray | torch.Tensor | None = None,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    progress: FitProgress | None = None,
) -> FastVocoder:
    """Fit on the recordings of a ``speechgpt units encode`` manifest (see :func:`fit_fast_vocoder`).

    Raises:
        FileNotFoundError: the manifest is missing.
        ValueError: a bad record (named); :class:`~speechgpt.audio.AudioError` (a ``ValueError``) for a missing or
            unreadable recording; units that do not match their audio.
    """
    items = read_manifest(manifest)
    waves = []
    for i, (path, _) in enumerate(items):
        waves.append(load_audio(path, max_seconds=max_seconds))
        if progress is not None:
            progress("loading", i + 1, len(items), None)
    return fit_fast_vocoder(
        waves,
        [units for _, units in items],
        num_units,
        config=config,
        args=args,
        centers=centers,
        names=[str(path) for path, _ in items],
        progress=progress,
    )
