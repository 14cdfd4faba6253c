"""The vocoder interface shared by the unit HiFi-GAN and the fast CPU vocoder, and one loader for both.

Everything downstream (inference, serving, evaluation) talks to a :class:`Vocoder`, so the released unit HiFi-GAN
and :class:`~speechgpt.vocoder.fast.FastVocoder` (fitted in minutes on a CPU for the embedded demo) are
interchangeable, and tests can swap in either. :func:`load_vocoder` picks the class from the folder's
``config.json``: ``"type": "fast"`` is the fast vocoder; a missing type (our UnitHiFiGAN folders carry none), or
a checkpoint file instead of a folder (the released fairseq file), is the unit HiFi-GAN.

The input checks every vocoder applies the same way live here too: negative ids are dropped (as the release
does, so padding ``-1`` is harmless), everything else must be an id in ``0..num_units-1``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol, TypeAlias, runtime_checkable

import numpy as np
import torch

__all__ = [
    "CONFIG_NAME",
    "VOCODER_TYPES",
    "UnitsLike",
    "Vocoder",
    "as_durations",
    "as_unit_ids",
    "check_batch",
    "check_speaker",
    "durations_from_log",
    "load_vocoder",
    "vocoder_type",
]

CONFIG_NAME = "config.json"
"""The file in a vocoder folder that names its type (and holds its configuration)."""
TYPE_KEY = "type"
"""Key of ``config.json`` naming the vocoder class; absent in UnitHiFiGAN folders."""
HIFIGAN_TYPE = "hifigan"
FAST_TYPE = "fast"

UnitsLike: TypeAlias = Sequence[int] | torch.Tensor | np.ndarray
"""One unit sequence: a list of ids, or a 1-D integer tensor/array (``[1, T]`` is accepted too)."""


@runtime_checkable
class Vocoder(Protocol):
    """Unit ids to 16 kHz waveform. Implemented by ``UnitHiFiGAN`` and ``FastVocoder``.

    Every waveform is float in [-1, 1] with exactly ``hop_length * sum(durations)`` samples.
    """

    @property
    def sample_rate(self) -> int:
        """Samples per second of the output (16000)."""
        ...

    @property
    def hop_length(self) -> int:
        """Samples per unit frame (320: one 20 ms frame)."""
        ...

    @property
    def num_units(self) -> int:
        """Size of the unit vocabulary; valid ids are ``0 … num_units-1``."""
        ...

    def synthesize(
        self,
        units: UnitsLike,
        dur_prediction: bool = True,
        durations: UnitsLike | None = None,
        speaker: int | None = None,
    ) -> torch.Tensor:
        """Waveform ``[hop_length * sum(durations)]`` for one sequence (one frame per unit without prediction)."""
        ...

    def synthesize_batch(
        self,
        unit_seqs: Sequence[UnitsLike],
        dur_prediction: bool = True,
        durations: Sequence[UnitsLike] | None = None,
        speakers: Sequence[int] | None = None,
    ) -> list[torch.Tensor]:
        """One waveform per sequence, each equal to :meth:`synthesize` of that sequence."""
        ...

    def synthesize_stream(
        self,
        unit_chunks: Iterable[UnitsLike],
        dur_prediction: bool = True,
        left_context: int | None = None,
        right_context: int | None = None,
        speaker: int | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield audio as unit chunks arrive; the pieces joined equal :meth:`synthesize` of all units."""
        ...

    def predict_durations(self, units: UnitsLike) -> torch.Tensor:
        """Frames per unit, ``LongTensor [T]`` with every value >= 1."""
        ...

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write the vocoder as a folder that :func:`load_vocoder` reads back."""
        ...


# --- shared input checks ---------------------------------------------------------------------------------------


def as_unit_ids(
    units: UnitsLike, num_units: int, name: str = "units", *, allow_empty: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated 1-D ``LongTensor`` of ids on CPU with negative ids dropped, plus the keep-mask over the input.

    Raises:
        ValueError: non-integer ids, not one sequence, empty (unless ``allow_empty``), or an id ``>= num_units``
            (named with its position).
    """
    if isinstance(units, np.ndarray):
        if units.dtype.kind not in "iu":
            raise ValueError(f"{name} must hold integer unit ids, got a {units.dtype} array")
        units = torch.from_numpy(units.astype(np.int64, copy=False))
    if isinstance(units, torch.Tensor):
        if units.is_floating_point() or units.is_complex() or units.dtype == torch.bool:
            raise ValueError(f"{name} must hold integer unit ids, got a {units.dtype} tensor")
        if units.dim() == 2 and units.shape[0] == 1:
            units = units[0]
        if units.dim() != 1:
            raise ValueError(f"{name} must be one sequence [T] (or [1, T]), got shape {tuple(units.shape)}")
        ids = units.detach().to("cpu", torch.long)
    else:
        values = list(units)
        for value in values:
            if not isinstance(value, int | np.integer) or isinstance(value, bool):
                raise ValueError(f"{name} must hold integer unit ids, got {value!r}")
        ids = torch.tensor([int(v) for v in values], dtype=torch.long)
    keep = ids >= 0
    ids = ids[keep]
    if ids.numel() == 0 and not allow_empty:
        raise ValueError(f"{name} is empty: no unit ids >= 0 to synthesize")
    too_big = (ids >= num_units).nonzero()
    if too_big.numel():
        position = int(too_big[0])
        raise ValueError(
            f"{name}: unit id {int(ids[position])} (position {position}) is out of range; "
            f"this vocoder knows units 0..{num_units - 1}"
        )
    return ids, keep


def as_durations(durations: UnitsLike, keep: torch.Tensor, name: str = "durations") -> torch.Tensor:
    """Validated frame counts aligned with the ids that :func:`as_unit_ids` kept.

    Raises:
        ValueError: non-integer values, a length that differs from the units', or a count below 1.
    """
    values = durations if isinstance(durations, torch.Tensor) else torch.as_tensor(np.asarray(durations))
    if values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
        raise ValueError(f"{name} must be integer frame counts, got dtype {values.dtype}")
    values = values.detach().to("cpu", torch.long).reshape(-1)
    if values.numel() != keep.numel():
        raise ValueError(f"{name} has {values.numel()} entries but there are {keep.numel()} units")
    values = values[keep]
    if values.numel() and int(values.min()) < 1:
        raise ValueError(f"{name} must be >= 1 frame each, got {int(values.min())}")
    return values


def check_speaker(speaker: int | None, num_speakers: int = 0) -> None:
    """A single-speaker vocoder takes no speaker id; a multi-speaker one needs one in ``0..num_speakers-1``.

    Raises:
        ValueError: a speaker for a single-speaker vocoder, none for a multi-speaker one, or one out of range.
    """
    if num_speakers == 0:
        if speaker is not None:
            raise ValueError(f"speaker={speaker!r} given, but this vocoder is single-speaker (num_speakers=0)")
        return
    if speaker is None:
        raise ValueError(f"this vocoder has {num_speakers} speakers; pass speaker=0..{num_speakers - 1}")
    if not isinstance(speaker, int) or isinstance(speaker, bool) or not 0 <= speaker < num_speakers:
        raise ValueError(f"speaker {speaker!r} is out of range; this vocoder has speakers 0..{num_speakers - 1}")


def check_batch(
    unit_seqs: Sequence[UnitsLike],
    num_units: int,
    durations: Sequence[UnitsLike] | None = None,
    speakers: Sequence[int] | None = None,
    num_speakers: int = 0,
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """The checks every ``synthesize_batch`` runs before making any audio, so that a bad item costs no work.

    Returns:
        Per item, the validated ids (as :func:`as_unit_ids`), and the validated durations (as :func:`as_durations`,
        None when ``durations`` is None).

    Raises:
        ValueError: no sequences, mismatched ``durations``/``speakers`` counts, or a bad item (named by index).
    """
    if len(unit_seqs) == 0:
        raise ValueError("unit_seqs is empty: nothing to synthesize")
    if durations is not None and len(durations) != len(unit_seqs):
        raise ValueError(f"durations has {len(durations)} entries for {len(unit_seqs)} unit sequences")
    if speakers is not None and len(speakers) != len(unit_seqs):
        raise ValueError(f"speakers has {len(speakers)} entries for {len(unit_seqs)} unit sequences")
    checked = [as_unit_ids(seq, num_units, f"unit_seqs[{b}]") for b, seq in enumerate(unit_seqs)]
    for speaker in speakers if speakers is not None else [None] * len(unit_seqs):
        check_speaker(speaker, num_speakers)
    given = None
    if durations is not None:
        given = [as_durations(d, checked[b][1], f"durations[{b}]") for b, d in enumerate(durations)]
    return [ids for ids, _ in checked], given


def durations_from_log(log_durations: torch.Tensor) -> torch.Tensor:
    """Frames per unit from predicted log durations: ``clamp(round(exp(d) - 1), min=1)`` (round half to even).

    Duration predictors are trained on ``log(1 + frames)``, hence the ``- 1``; every unit keeps at least one frame.
    """
    return torch.clamp(torch.round(torch.exp(log_durations) - 1).long(), min=1)


# --- loading ----------------------------------------------------------------------------------------------------


def vocoder_type(path: str | os.PathLike) -> str:
    """Which vocoder a path holds: ``"fast"`` or ``"hifigan"`` (a checkpoint file, or a folder without a type).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``config.json`` is not valid JSON or names an unknown type.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such vocoder folder or checkpoint file")
    if path.is_file():
        return HIFIGAN_TYPE  # the released fairseq checkpoint is a single file
    config_path = path / CONFIG_NAME
    if not config_path.is_file():
        return HIFIGAN_TYPE  # let UnitHiFiGAN.load report what the folder lacks
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{config_path}: not valid JSON ({e})") from e
    kind = data.get(TYPE_KEY, HIFIGAN_TYPE) if isinstance(data, dict) else HIFIGAN_TYPE
    if kind not in VOCODER_TYPES:
        raise ValueError(f"{config_path}: unknown vocoder type {kind!r}; known types: {sorted(VOCODER_TYPES)}")
    return kind


def _load_hifigan(path: Path, device: str | torch.device | None) -> Vocoder:
    from speechgpt.vocoder.hifigan import UnitHiFiGAN

    return UnitHiFiGAN.load(path, device=device)


def _load_fast(path: Path, device: str | torch.device | None) -> Vocoder:
    from speechgpt.vocoder.fast import FastVocoder

    return FastVocoder.from_pretrained(path, device=device)


VOCODER_TYPES: dict[str, Callable[[Path, str | torch.device | None], Vocoder]] = {
    HIFIGAN_TYPE: _load_hifigan,
    FAST_TYPE: _load_fast,
}
"""Loader of each vocoder type named in ``config.json``."""


def load_vocoder(path: str | os.PathLike, *, device: str | torch.device | None = None) -> Vocoder:
    """Load any vocoder: a fast-vocoder folder, a UnitHiFiGAN folder, or the released fairseq checkpoint file.

    Args:
        path: A folder written by ``save_pretrained``, or a fairseq checkpoint file (e.g. ``g_00500000``).
        device: Where to run; each class picks its default when None.

    Raises:
        FileNotFoundError: the path, its config or its weights are missing.
        ValueError: unknown type, or files that do not fit the class.
    """
    path = Path(path)
    return VOCODER_TYPES[vocoder_type(path)](path, device)
