"""Tests for speechgpt.audio: reading any input to 16 kHz mono float32, clear errors, atomic WAV writing."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechgpt import audio
from speechgpt.audio import (
    DEFAULT_MAX_SECONDS,
    SAMPLE_RATE,
    AudioError,
    audio_duration,
    change_speed,
    encode_pcm16,
    encode_wav,
    load_audio,
    write_wav,
)


def _sine(rate: int, seconds: float, freq: float = 440.0, amp: float = 0.5, seed: int = 0) -> np.ndarray:
    """A sine plus a little noise, float32, so tests never feed perfectly clean signals."""
    t = np.arange(round(rate * seconds)) / rate
    noise = np.random.default_rng(seed).normal(0.0, 1e-3, t.size)
    return (amp * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)


def _peak_hz(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(wave.size)))
    return float(np.fft.rfftfreq(wave.size, 1 / rate)[np.argmax(spectrum)])


def _write(path: Path, wave: np.ndarray, rate: int = SAMPLE_RATE, **kwargs: object) -> Path:
    sf.write(path, wave, rate, **kwargs)
    return path


def _assert_error(err: pytest.ExceptionInfo[AudioError], source: str, *words: str) -> None:
    message = str(err.value)
    assert message.startswith(f"{source}: "), message
    assert "\n" not in message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


# ---------------------------------------------------------------- AudioError


def test_audio_error_is_one_line_value_error_with_fields() -> None:
    err = AudioError("a.wav", "empty audio")
    assert isinstance(err, ValueError)
    assert (err.source, err.reason, str(err)) == ("a.wav", "empty audio", "a.wav: empty audio")
    assert DEFAULT_MAX_SECONDS == 1800.0


# ---------------------------------------------------------------- formats, mono, resampling


def test_stereo_file_is_averaged_to_mono(tmp_path: Path) -> None:
    left, right = _sine(SAMPLE_RATE, 0.5, 440.0), _sine(SAMPLE_RATE, 0.5, 1000.0, amp=0.3, seed=1)
    path = _write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), subtype="FLOAT")
    wave = load_audio(path)
    assert wave.shape == (left.size,)  # averaged, not concatenated
    np.testing.assert_allclose(wave, (left + right) / 2, atol=1e-7)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_other_rates_are_resampled_to_16k(tmp_path: Path, rate: int) -> None:
    original = _sine(rate, 1.5)
    wave = load_audio(_write(tmp_path / f"in_{rate}.wav", original, rate, subtype="FLOAT"))
    assert wave.dtype == np.float32 and wave.flags.c_contiguous and wave.ndim == 1
    assert abs(wave.size - original.size * SAMPLE_RATE / rate) <= 2
    assert abs(_peak_hz(wave, SAMPLE_RATE) - 440.0) < 1.0  # FFT bins are 0.67 Hz wide here
    # Level survives resampling: RMS of a 0.5-amplitude sine is 0.354.
    assert abs(float(np.sqrt(np.mean(wave[100:-100] ** 2))) - 0.5 / np.sqrt(2)) < 0.01


def test_target_rate_other_than_16k(tmp_path: Path) -> None:
    wave = load_audio(_write(tmp_path / "a.wav", _sine(SAMPLE_RATE, 1.0)), target_rate=24_000)
    assert wave.size == 24_000
    assert abs(_peak_hz(wave, 24_000) - 440.0) < 1.5


def test_int16_and_float_wav(tmp_path: Path) -> None:
    original = _sine(SAMPLE_RATE, 0.5)
    from_int16 = load_audio(_write(tmp_path / "i16.wav", original, subtype="PCM_16"))
    from_float = load_audio(_write(tmp_path / "f32.wav", original, subtype="FLOAT"))
    assert from_int16.dtype == from_float.dtype == np.float32
    assert np.max(np.abs(from_int16 - original)) <= 1 / 2**15
    np.testing.assert_array_equal(from_float, original)


@pytest.mark.parametrize(("fmt", "tolerance"), [("FLAC", 1e-4), ("OGG", None)])
def test_flac_and_ogg_from_path_and_bytes(tmp_path: Path, fmt: str, tolerance: float | None) -> None:
    original = _sine(SAMPLE_RATE, 1.0)
    path = _write(tmp_path / f"a.{fmt.lower()}", original, format=fmt)
    from_path = load_audio(path)
    from_bytes = load_audio(path.read_bytes())
    np.testing.assert_array_equal(from_path, from_bytes)
    assert from_path.size == original.size
    assert abs(_peak_hz(from_path, SAMPLE_RATE) - 440.0) < 1.5
    if tolerance is not None:  # FLAC is lossless up to its 16-bit quantisation
        assert np.max(np.abs(from_path - original)) < tolerance
    else:  # Vorbis is lossy: the waveform must still be nearly the same signal
        assert np.corrcoef(from_path, original)[0, 1] > 0.99


def test_mp3_loads_when_libsndfile_supports_it(tmp_path: Path) -> None:
    if "MP3" in sf.available_formats():
        path = _write(tmp_path / "a.mp3", _sine(SAMPLE_RATE, 1.0), format="MP3")
        wave = load_audio(path.read_bytes())
        assert abs(wave.size - SAMPLE_RATE) < 2000  # mp3 may pad a frame
        assert abs(_peak_hz(wave, SAMPLE_RATE) - 440.0) < 1.5
    else:  # an older libsndfile cannot read mp3: that must be a clean error, not a crash
        path = tmp_path / "a.mp3"
        path.write_bytes(b"\xff\xfb\x90\x00" + bytes(400))
        with pytest.raises(AudioError):
            load_audio(path)


def test_audio_duration_reads_header(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.wav", _sine(22050, 2.0), 22050)
    assert audio_duration(path) == pytest.approx(2.0)
    assert audio_duration(path.read_bytes()) == pytest.approx(2.0)
    with pytest.raises(AudioError) as err:
        audio_duration(tmp_path / "missing.wav")
    _assert_error(err, str(tmp_path / "missing.wav"), "not found")


# ---------------------------------------------------------------- arrays


def test_numpy_and_torch_arrays() -> None:
    original = _sine(SAMPLE_RATE, 0.5)
    np.testing.assert_array_equal(load_audio(original, sample_rate=SAMPLE_RATE), original)
    from_torch = load_audio(torch.from_numpy(original).double(), sample_rate=SAMPLE_RATE)
    assert from_torch.dtype == np.float32
    np.testing.assert_array_equal(from_torch, original)
    from_8k = load_audio(torch.from_numpy(_sine(8000, 0.5)), sample_rate=8000)
    assert from_8k.size == SAMPLE_RATE // 2


@pytest.mark.parametrize("source", [np.zeros(100, np.float32), torch.zeros(100)])
def test_array_without_sample_rate_is_refused(source: np.ndarray | torch.Tensor) -> None:
    with pytest.raises(AudioError) as err:
        load_audio(source)
    _assert_error(err, "<array>", "sample_rate is required")
    with pytest.raises(AudioError) as err:
        load_audio(source, name="clip7")
    _assert_error(err, "clip7", "sample_rate")


def test_channels_first_and_last_arrays_average_the_smaller_axis() -> None:
    left, right = _sine(SAMPLE_RATE, 0.25), _sine(SAMPLE_RATE, 0.25, 700.0, seed=3)
    expected = (left + right) / 2
    np.testing.assert_allclose(load_audio(np.stack([left, right]), sample_rate=SAMPLE_RATE), expected, atol=1e-7)
    channels_last = torch.from_numpy(np.stack([left, right], axis=1))
    np.testing.assert_allclose(load_audio(channels_last, sample_rate=SAMPLE_RATE), expected, atol=1e-7)


def test_integer_arrays_are_scaled_as_pcm() -> None:
    int16 = np.array([16384, -32768, 0, 8192], dtype=np.int16)
    np.testing.assert_array_equal(load_audio(int16, sample_rate=SAMPLE_RATE), [0.5, -1.0, 0.0, 0.25])
    int32 = torch.tensor([2**30, -(2**31)], dtype=torch.int32)
    np.testing.assert_array_equal(load_audio(int32, sample_rate=SAMPLE_RATE), [0.5, -1.0])


@pytest.mark.parametrize(
    ("array", "word"),
    [
        (np.zeros((2, 3, 100), np.float32), "1-D"),
        (np.zeros((10, 1000), np.float32), "too many channels"),
        (np.ones(100, dtype=bool), "dtype"),
        (np.zeros(0, np.float32), "empty"),
        (np.zeros((0, 2), np.float32), "empty"),
    ],
)
def test_bad_arrays(array: np.ndarray, word: str) -> None:
    with pytest.raises(AudioError) as err:
        load_audio(array, sample_rate=SAMPLE_RATE)
    _assert_error(err, "<array>", word)


@pytest.mark.parametrize(("value", "word"), [(np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "inf")])
def test_non_finite_arrays(value: float, word: str) -> None:
    wave = _sine(SAMPLE_RATE, 0.1)
    wave[7] = value
    with pytest.raises(AudioError) as err:
        load_audio(torch.from_numpy(wave), sample_rate=SAMPLE_RATE, name="take1")
    _assert_error(err, "take1", word)


def test_nan_in_float_wav_file(tmp_path: Path) -> None:
    wave = _sine(SAMPLE_RATE, 0.1)
    wave[3] = np.nan
    path = _write(tmp_path / "nan.wav", wave, subtype="FLOAT")
    with pytest.raises(AudioError) as err:
        load_audio(path)
    _assert_error(err, str(path), "NaN")


def test_unsupported_source_type_is_type_error() -> None:
    with pytest.raises(TypeError, match="unsupported audio source type int"):
        load_audio(42)  # type: ignore[arg-type]


# ---------------------------------------------------------------- bad files


def test_empty_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "empty.wav", np.zeros(0, np.float32))
    with pytest.raises(AudioError) as err:
        load_audio(path)
    _assert_error(err, str(path), "empty")


def test_zero_byte_input_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "zero.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioError) as err:
        load_audio(path)
    _assert_error(err, str(path), "unreadable")
    with pytest.raises(AudioError) as err:
        load_audio(b"")
    _assert_error(err, "<bytes>", "unreadable")


def test_wav_cut_in_half_loads_what_is_there(tmp_path: Path) -> None:
    # libsndfile trusts the file size over the header's data length, so a truncated WAV loads its first part.
    original = _sine(SAMPLE_RATE, 1.0)
    full = _write(tmp_path / "full.wav", original, subtype="PCM_16").read_bytes()
    path = tmp_path / "half.wav"
    path.write_bytes(full[: len(full) // 2])
    wave = load_audio(path)
    assert abs(wave.size - original.size // 2) <= 30  # 44-byte header = 22 samples
    assert np.max(np.abs(wave - original[: wave.size])) <= 1 / 2**15
    np.testing.assert_array_equal(load_audio(path.read_bytes()), wave)


@pytest.mark.parametrize("cut", [20, 30])
def test_wav_cut_inside_header_is_unreadable(tmp_path: Path, cut: int) -> None:
    full = _write(tmp_path / "full.wav", _sine(SAMPLE_RATE, 0.1)).read_bytes()
    path = tmp_path / "cut.wav"
    path.write_bytes(full[:cut])
    with pytest.raises(AudioError) as err:
        load_audio(path)
    _assert_error(err, str(path), "unreadable")
    assert err.value.__cause__ is not None  # re-raised from soundfile's error


def test_text_file_named_wav(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio, just a note\n" * 20)
    with pytest.raises(AudioError) as err:
        load_audio(path)
    _assert_error(err, str(path), "unreadable", "not audio")
    with pytest.raises(AudioError) as err:
        load_audio(path.read_bytes(), name="upload.wav")
    _assert_error(err, "upload.wav", "not audio")


def test_headerless_raw_extension_is_audio_error(tmp_path: Path) -> None:
    path = tmp_path / "a.raw"
    path.write_bytes(bytes(1000))
    with pytest.raises(AudioError) as err:
        load_audio(path)
    _assert_error(err, str(path), "unreadable")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope.wav"
    with pytest.raises(AudioError) as err:
        load_audio(missing)
    _assert_error(err, str(missing), "not found")
    with pytest.raises(AudioError) as err:
        load_audio(str(tmp_path))
    _assert_error(err, str(tmp_path), "not a file")


def test_file_with_too_many_channels(tmp_path: Path) -> None:
    path = _write(tmp_path / "many.wav", np.zeros((100, 10), np.float32))
    with pytest.raises(AudioError) as err:
        load_audio(path)
    _assert_error(err, str(path), "too many channels", "10")


def test_sample_rate_disagreeing_with_file_header(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.wav", _sine(22050, 0.1), 22050)
    assert load_audio(path, sample_rate=22050).size == 1600
    with pytest.raises(AudioError) as err:
        load_audio(path, sample_rate=SAMPLE_RATE)
    _assert_error(err, str(path), "22050 Hz")


# ---------------------------------------------------------------- limits


def test_too_long_is_refused_before_reading_samples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path / "long.wav", _sine(SAMPLE_RATE, 2.0))

    def no_read(*args: object, **kwargs: object) -> None:
        raise AssertionError("samples were read")

    monkeypatch.setattr(sf, "read", no_read)
    with pytest.raises(AudioError) as err:
        load_audio(path, max_seconds=1)
    _assert_error(err, str(path), "too long", "2.0 s", "limit of 1 s", "max_seconds")
    with pytest.raises(AudioError) as err:
        load_audio(path.read_bytes(), max_seconds=1.5)
    _assert_error(err, "<bytes>", "too long")
    monkeypatch.undo()
    assert load_audio(path, max_seconds=None).size == 2 * SAMPLE_RATE
    assert load_audio(path, max_seconds=2.0).size == 2 * SAMPLE_RATE


def test_too_long_array() -> None:
    with pytest.raises(AudioError) as err:
        load_audio(np.zeros((2, 3 * 8000), np.float32), sample_rate=8000, max_seconds=2.5)
    _assert_error(err, "<array>", "too long", "3.0 s")


def test_silence_rejected_only_when_asked(tmp_path: Path) -> None:
    path = _write(tmp_path / "quiet.wav", np.full(SAMPLE_RATE // 10, 5e-5, np.float32), subtype="FLOAT")
    assert load_audio(path).size == SAMPLE_RATE // 10
    with pytest.raises(AudioError) as err:
        load_audio(path, reject_silence=True)
    _assert_error(err, str(path), "silent", "5.00e-05")
    assert load_audio(path, reject_silence=True, silence_threshold=1e-5).size == SAMPLE_RATE // 10
    assert load_audio(_sine(SAMPLE_RATE, 0.1), sample_rate=SAMPLE_RATE, reject_silence=True).size == 1600


def test_bad_options_are_value_errors() -> None:
    wave = _sine(SAMPLE_RATE, 0.1)
    with pytest.raises(ValueError, match="target_rate"):
        load_audio(wave, sample_rate=SAMPLE_RATE, target_rate=0)
    with pytest.raises(ValueError, match="max_seconds"):
        load_audio(wave, sample_rate=SAMPLE_RATE, max_seconds=-1)
    with pytest.raises(AudioError, match="sample_rate must be a positive int"):
        load_audio(wave, sample_rate=-8000)


# ---------------------------------------------------------------- write_wav


def test_write_wav_round_trip_and_parent_dirs(tmp_path: Path) -> None:
    original = _sine(SAMPLE_RATE, 0.5, amp=0.9)
    target = tmp_path / "out" / "deep" / "a.wav"
    assert write_wav(target, torch.from_numpy(original)) == target
    info = sf.info(target)
    assert (info.format, info.subtype, info.channels, info.samplerate) == ("WAV", "PCM_16", 1, SAMPLE_RATE)
    assert np.max(np.abs(load_audio(target) - original)) < 1e-4
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.wav"]  # no temp file left
    assert target.stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600


def test_write_wav_clips_and_keeps_rate(tmp_path: Path) -> None:
    target = write_wav(tmp_path / "loud.wav", np.array([1.5, -2.0, 0.25, 1.0], np.float32), sample_rate=22050)
    data, rate = sf.read(target, dtype="int16")
    assert rate == 22050
    np.testing.assert_array_equal(data, [32767, -32768, 8192, 32767])


@pytest.mark.parametrize(
    ("wave", "word"),
    [
        (np.array([0.1, np.nan], np.float32), "NaN"),
        (np.zeros((2, 100), np.float32), "1-D"),
        (np.zeros(0, np.float32), "empty"),
        (np.array([100, -100], np.int16), "float"),
    ],
)
def test_write_wav_refuses_bad_waves(tmp_path: Path, wave: np.ndarray, word: str) -> None:
    target = tmp_path / "x.wav"
    with pytest.raises(AudioError) as err:
        write_wav(target, wave)
    _assert_error(err, str(target), word)
    assert list(tmp_path.iterdir()) == []


def test_write_wav_failure_keeps_old_file_and_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = write_wav(tmp_path / "a.wav", _sine(SAMPLE_RATE, 0.1))
    before = target.read_bytes()

    def broken_write(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(audio.sf, "write", broken_write)
    with pytest.raises(OSError, match="disk full"):
        write_wav(target, _sine(SAMPLE_RATE, 0.2))
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav"]


# ---------------------------------------------------------------- encode_wav / encode_pcm16


def test_encode_wav_round_trips_to_the_pcm16_quantised_input(tmp_path: Path) -> None:
    original = np.concatenate([_sine(SAMPLE_RATE, 0.25, amp=0.9), np.array([1.5, -2.0, 0.25], np.float32)])
    data = encode_wav(original)
    quantised = np.clip(np.round(original.astype(np.float64) * 2**15), -(2**15), 2**15 - 1) / 2**15
    decoded = load_audio(data)
    assert decoded.dtype == np.float32 and decoded.shape == original.shape
    np.testing.assert_array_equal(decoded, quantised.astype(np.float32))
    assert decoded[-3:].tolist() == [32767 / 2**15, -1.0, 0.25]  # clipped like write_wav
    # One conversion: the file write_wav writes holds exactly these bytes, and raw PCM is the WAV's data.
    assert write_wav(tmp_path / "a.wav", original).read_bytes() == data
    assert data[:4] == b"RIFF" and data.endswith(encode_pcm16(original))
    assert len(encode_pcm16(original)) == 2 * original.size


def test_encode_wav_keeps_rate_and_refuses_bad_input() -> None:
    data = encode_wav(torch.tensor([0.5, -0.5]), sample_rate=22050)
    assert sf.info(io.BytesIO(data)).samplerate == 22050
    np.testing.assert_array_equal(np.frombuffer(encode_pcm16(np.array([0.5, -0.5])), "<i2"), [16384, -16384])
    with pytest.raises(AudioError) as err:
        encode_wav(np.array([0.1, np.inf], np.float32))
    _assert_error(err, "<array>", "NaN or inf")
    with pytest.raises(AudioError, match="1-D"):
        encode_pcm16(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="sample_rate must be a positive int, got 0"):
        encode_wav(np.zeros(4, np.float32), sample_rate=0)


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_change_speed_scales_duration_and_pitch_together(factor: float) -> None:
    seconds, pitch = 1.0, 220.0
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    wave = (0.5 * np.sin(2 * np.pi * pitch * t)).astype(np.float32)
    faster = change_speed(wave, factor)
    assert faster.dtype == np.float32 and len(faster) == pytest.approx(len(wave) / factor, abs=2)
    spectrum = np.abs(np.fft.rfft(faster))
    peak = np.argmax(spectrum) * SAMPLE_RATE / len(faster)
    assert peak == pytest.approx(pitch * factor, abs=2.0)
    with pytest.raises(ValueError, match="positive number"):
        change_speed(wave, 0.0)
