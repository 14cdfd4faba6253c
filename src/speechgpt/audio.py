"""Audio I/O: the one place in the package that reads or writes audio.

Everything downstream (unit extractors, vocoders, evaluation) takes 1-D float32 mono at
:data:`SAMPLE_RATE`, so :func:`load_audio` turns any file, byte string or array into exactly that,
and rejects bad input with an :class:`AudioError` naming the input and the reason, instead of
letting a soundfile or numpy exception escape mid-run.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import TypeAlias

import numpy as np
import soundfile as sf
import soxr
import torch

from speechgpt.constants import SAMPLE_RATE
from speechgpt.fileio import atomic_output

logger = logging.getLogger(__name__)

DEFAULT_MAX_SECONDS = 1800.0
"""Longest input :func:`load_audio` accepts by default (30 min), so one stray file cannot exhaust memory."""
MAX_CHANNELS = 8
"""Most channels accepted; a 2-D array with more than this on both axes is not audio we understand."""

AudioSource: TypeAlias = str | os.PathLike | bytes | np.ndarray | torch.Tensor
"""Anything :func:`load_audio` reads: a path, the bytes of an audio file, or samples in memory."""

# Errors soundfile raises for files it cannot open or decode (LibsndfileError subclasses both of the first two);
# TypeError comes from header-less formats such as ``.raw`` that need a rate we do not have.
_SF_ERRORS = (sf.SoundFileError, RuntimeError, TypeError)
# Integer PCM dtypes and the divisor that maps them onto [-1, 1).
_INT_SCALE = {np.dtype(np.int8): 2.0**7, np.dtype(np.int16): 2.0**15, np.dtype(np.int32): 2.0**31}


class AudioError(ValueError):
    """Bad audio input; ``str(err)`` is one line, ``"{source}: {reason}"``, that the CLI prints as is."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


def load_audio(
    source: AudioSource,
    *,
    sample_rate: int | None = None,
    target_rate: int = SAMPLE_RATE,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    reject_silence: bool = False,
    silence_threshold: float = 1e-4,
    name: str | None = None,
) -> np.ndarray:
    """Read audio from a path, file bytes or an array as mono float32 at ``target_rate``.

    Files and bytes may be in any format the installed libsndfile reads (wav, flac, ogg, and mp3 with
    libsndfile >= 1.1). Arrays need ``sample_rate`` and may be ``[N]``, ``[N, C]`` or ``[C, N]``: for 2-D input
    the smaller axis is the channel axis (``[N, C]`` when both are equal). Integer arrays (int8/16/32) are PCM
    and scaled to [-1, 1). Channels are averaged, and the result is resampled with soxr when rates differ.

    Args:
        source: Path, bytes of an audio file, or a numpy array / torch tensor of samples.
        sample_rate: Rate of an array ``source``; for files it must agree with the header if given.
        target_rate: Rate of the returned waveform.
        max_seconds: Longest accepted input, checked from the header before any sample is decoded; None for no limit.
        reject_silence: Refuse input whose peak magnitude is below ``silence_threshold``.
        silence_threshold: Peak magnitude under which input counts as silent.
        name: Label used in error messages; defaults to the path, ``"<bytes>"`` or ``"<array>"``.

    Returns:
        C-contiguous 1-D float32 waveform at ``target_rate``.

    Raises:
        AudioError: The input is missing, unreadable, empty, too long, has NaN/inf, bad shape, too many channels,
            no ``sample_rate`` for an array, or is silent while ``reject_silence`` is set.
        TypeError: ``source`` is not one of the supported types.
    """
    label = _label(source, name)
    if not isinstance(target_rate, int) or target_rate <= 0:
        raise ValueError(f"target_rate must be a positive int, got {target_rate!r}")
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be positive or None, got {max_seconds!r}")
    if isinstance(source, np.ndarray | torch.Tensor):
        wave, rate = _from_array(source, sample_rate, label, max_seconds)
    else:
        wave, rate = _from_file(source, sample_rate, label, max_seconds)
    _check_samples(wave, label, reject_silence, silence_threshold)
    if rate != target_rate:
        wave = soxr.resample(wave, rate, target_rate, quality="HQ")
    return np.ascontiguousarray(wave, dtype=np.float32)


def change_speed(wave: np.ndarray, factor: float) -> np.ndarray:
    """A 16 kHz recording played ``factor`` times as fast: tempo, pitch and formants scale together, as between a
    shorter and a longer vocal tract (the speed perturbation of ASR recipes such as Kaldi's, 0.9/1.0/1.1).

    Raises:
        ValueError: ``factor`` is not a positive finite number.
    """
    if not np.isfinite(factor) or factor <= 0:
        raise ValueError(f"speed factor must be a positive number, got {factor!r}")
    return np.ascontiguousarray(soxr.resample(wave, SAMPLE_RATE, SAMPLE_RATE / factor, quality="MQ"), np.float32)


def audio_duration(source: str | os.PathLike | bytes, *, name: str | None = None) -> float:
    """Duration in seconds read from a file's header without decoding it (cheap enough for batch planning).

    Raises:
        AudioError: The file is missing or not readable audio.
    """
    label = _label(source, name)
    info = _info(_file_like(source, label), label)
    return info.frames / info.samplerate


def write_wav(path: str | os.PathLike, wave: np.ndarray | torch.Tensor, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write mono 16-bit PCM WAV atomically (temp file + rename), so a crash never leaves half a file.

    The bytes are those of :func:`encode_wav`: samples clipped to [-1, 1]. Parent folders are created.

    Returns:
        The path written.

    Raises:
        AudioError: ``wave`` is not 1-D float, is empty, or holds NaN/inf.
    """
    path = Path(path)
    _check_rate(sample_rate)
    pcm = _to_pcm16(wave, str(path))
    with atomic_output(path) as tmp:
        _write_pcm16_wav(tmp, pcm, sample_rate)
    logger.debug("wrote %s (%.2f s)", path, pcm.size / sample_rate)
    return path


def encode_wav(wave: np.ndarray | torch.Tensor, sample_rate: int = SAMPLE_RATE) -> bytes:
    """A mono 16-bit PCM WAV file in memory, byte for byte what :func:`write_wav` writes (for HTTP answers).

    Raises:
        AudioError: ``wave`` is not 1-D float, is empty, or holds NaN/inf.
        ValueError: ``sample_rate`` is not a positive int.
    """
    _check_rate(sample_rate)
    buffer = io.BytesIO()
    _write_pcm16_wav(buffer, _to_pcm16(wave, _label(wave, None)), sample_rate)
    return buffer.getvalue()


def encode_pcm16(wave: np.ndarray | torch.Tensor) -> bytes:
    """Raw little-endian 16-bit PCM without a header, scaled as :func:`encode_wav` scales it.

    Streamed audio is sent this way: pieces of a WAV file cannot be played on their own, raw PCM pieces can.

    Raises:
        AudioError: ``wave`` is not 1-D float, is empty, or holds NaN/inf.
    """
    return _to_pcm16(wave, _label(wave, None)).astype("<i2", copy=False).tobytes()


def _check_rate(sample_rate: int) -> None:
    if not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive int, got {sample_rate!r}")


def _to_pcm16(wave: np.ndarray | torch.Tensor, label: str) -> np.ndarray:
    """The one float-to-PCM conversion: checked 1-D float samples as int16, x·2¹⁵ rounded and clipped."""
    samples = wave.detach().cpu().float().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave)
    if samples.dtype.kind != "f":
        raise AudioError(label, f"expected float samples in [-1, 1], got dtype {samples.dtype}")
    if samples.ndim != 1:
        raise AudioError(label, f"expected a 1-D mono waveform, got shape {tuple(samples.shape)}")
    if samples.size == 0:
        raise AudioError(label, "empty waveform (0 samples)")
    if not np.all(np.isfinite(samples)):
        raise AudioError(label, "waveform contains NaN or inf samples")
    # Scale by 2**15 (libsndfile reads int16 as x / 2**15), so a round trip is exact up to rounding.
    return np.clip(np.round(samples.astype(np.float64) * 2.0**15), -(2**15), 2**15 - 1).astype(np.int16)


def _write_pcm16_wav(file: Path | io.BytesIO, pcm: np.ndarray, sample_rate: int) -> None:
    sf.write(file, pcm, sample_rate, format="WAV", subtype="PCM_16")


def _label(source: object, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(source, bytes | bytearray | memoryview):
        return "<bytes>"
    if isinstance(source, np.ndarray | torch.Tensor):
        return "<array>"
    return os.fspath(source) if isinstance(source, str | os.PathLike) else f"<{type(source).__name__}>"


def _file_like(source: object, label: str) -> str | io.BytesIO:
    """What soundfile should open: a checked path string, or the bytes wrapped in a file object."""
    if isinstance(source, bytes | bytearray | memoryview):
        return io.BytesIO(bytes(source))
    if not isinstance(source, str | os.PathLike):
        raise TypeError(f"{label}: unsupported audio source type {type(source).__name__}; expected {AudioSource}")
    path = Path(source)
    if not path.exists():
        raise AudioError(label, "file not found")
    if not path.is_file():
        raise AudioError(label, "not a file")
    return str(path)


def _sf_reason(error: Exception) -> str:
    """libsndfile's own words, without soundfile's "Error opening <file>: " prefix that repeats the label."""
    return getattr(error, "error_string", None) or str(error)


def _info(file: str | io.BytesIO, label: str) -> sf._SoundFileInfo:
    try:
        info = sf.info(file)
    except _SF_ERRORS as e:
        raise AudioError(label, f"unreadable or not audio ({_sf_reason(e)})") from e
    if isinstance(file, io.BytesIO):
        file.seek(0)
    if info.samplerate <= 0:
        raise AudioError(label, f"unreadable header: sample rate {info.samplerate}")
    return info


def _from_file(
    source: object, sample_rate: int | None, label: str, max_seconds: float | None
) -> tuple[np.ndarray, int]:
    file = _file_like(source, label)
    info = _info(file, label)
    if sample_rate is not None and sample_rate != info.samplerate:
        raise AudioError(label, f"header says {info.samplerate} Hz but sample_rate={sample_rate} was given")
    if info.channels > MAX_CHANNELS:
        raise AudioError(label, f"too many channels: {info.channels} (at most {MAX_CHANNELS})")
    _check_duration(info.frames / info.samplerate, label, max_seconds)  # before decoding a single sample
    try:
        data, rate = sf.read(file, dtype="float32", always_2d=True)
    except _SF_ERRORS as e:
        raise AudioError(label, f"unreadable or corrupt audio ({_sf_reason(e)})") from e
    return data.mean(axis=1, dtype=np.float32), int(rate)


def _from_array(
    array: np.ndarray | torch.Tensor, sample_rate: int | None, label: str, max_seconds: float | None
) -> tuple[np.ndarray, int]:
    if sample_rate is None:
        raise AudioError(label, "sample_rate is required for array input")
    if not isinstance(sample_rate, int) or sample_rate <= 0:
        raise AudioError(label, f"sample_rate must be a positive int, got {sample_rate!r}")
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu()
        # numpy has no bfloat16/float16 math worth keeping; ints stay ints so they are scaled as PCM below.
        array = (array.float() if array.is_floating_point() else array).numpy()
    if array.ndim not in (1, 2):
        raise AudioError(label, f"expected a 1-D [N] or 2-D [N, C]/[C, N] array, got shape {array.shape}")
    # For [N, C] vs [C, N] the channel axis is the smaller one (audio has far more samples than channels).
    channel_axis = None if array.ndim == 1 else (0 if array.shape[0] < array.shape[1] else 1)
    if channel_axis is not None and array.shape[channel_axis] > MAX_CHANNELS:
        raise AudioError(label, f"too many channels: shape {array.shape} (at most {MAX_CHANNELS})")
    if array.size == 0:
        raise AudioError(label, f"empty audio (0 samples, shape {array.shape})")
    num_samples = array.shape[0] if channel_axis is None else array.shape[1 - channel_axis]
    _check_duration(num_samples / sample_rate, label, max_seconds)
    wave = _to_float32(array, label)
    if channel_axis is not None:
        wave = wave.mean(axis=channel_axis, dtype=np.float32)
    return wave, sample_rate


def _to_float32(array: np.ndarray, label: str) -> np.ndarray:
    if array.dtype in _INT_SCALE:
        return (array.astype(np.float64) / _INT_SCALE[array.dtype]).astype(np.float32)
    if array.dtype.kind != "f":
        raise AudioError(label, f"unsupported sample dtype {array.dtype} (use float or int8/int16/int32 PCM)")
    return array.astype(np.float32, copy=False)


def _check_duration(seconds: float, label: str, max_seconds: float | None) -> None:
    if max_seconds is not None and seconds > max_seconds:
        raise AudioError(
            label,
            f"too long: {seconds:.1f} s exceeds the limit of {max_seconds:g} s "
            "(raise it with max_seconds=..., or pass max_seconds=None for no limit)",
        )


def _check_samples(wave: np.ndarray, label: str, reject_silence: bool, silence_threshold: float) -> None:
    if wave.size == 0:
        raise AudioError(label, "empty audio (0 samples)")
    if np.isnan(wave).any():
        raise AudioError(label, f"contains NaN samples ({int(np.isnan(wave).sum())} of {wave.size})")
    if np.isinf(wave).any():
        raise AudioError(label, f"contains inf samples ({int(np.isinf(wave).sum())} of {wave.size})")
    if reject_silence and (peak := float(np.abs(wave).max())) < silence_threshold:
        raise AudioError(label, f"silent: peak {peak:.2e} is below the threshold {silence_threshold:g}")
