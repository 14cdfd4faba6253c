"""The synthetic-speech engine: espeak-ng in-process, the TTSEngine protocol and process-parallel synthesis."""

import numpy as np
import pytest

from speechgpt.constants import SAMPLE_RATE
from speechgpt.data.tts import (
    ENGLISH_VOICES,
    MAX_RATE,
    MIN_RATE,
    EspeakEngine,
    TTSEngine,
    VoiceSettings,
    clean_text,
    synthesize_many,
)

SENTENCE = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def engine() -> EspeakEngine:
    return EspeakEngine()


def median_f0(wave: np.ndarray) -> float:
    """Median pitch (Hz) of the loud 40 ms frames, from the autocorrelation peak between 60 and 400 Hz."""
    frame, low, high = SAMPLE_RATE // 25, SAMPLE_RATE // 400, SAMPLE_RATE // 60
    frames = [wave[i : i + frame] for i in range(0, wave.size - frame, frame // 2)]
    loudest = max(float(np.abs(f).max()) for f in frames)
    pitches = []
    for f in frames:
        if np.abs(f).max() < 0.3 * loudest:
            continue
        f = f - f.mean()
        corr = np.correlate(f, f, mode="full")[frame - 1 :]
        lag = low + int(np.argmax(corr[low:high]))
        if corr[lag] > 0.5 * corr[0]:  # voiced
            pitches.append(SAMPLE_RATE / lag)
    assert len(pitches) >= 5, "too few voiced frames to measure pitch"
    return float(np.median(pitches))


def test_output_is_16k_float32_mono_of_plausible_length(engine):
    wave = engine.synthesize(SENTENCE)
    assert engine.sample_rate == SAMPLE_RATE
    assert wave.dtype == np.float32 and wave.ndim == 1 and wave.flags.c_contiguous
    assert 1.0 < wave.size / SAMPLE_RATE < 5.0
    assert 0.05 < float(np.abs(wave).max()) <= 1.0
    assert 0.3 < engine.synthesize("Hello.").size / SAMPLE_RATE < 1.5


def test_same_input_gives_identical_samples_whatever_came_before(engine):
    first = engine.synthesize(SENTENCE, VoiceSettings("en+f3", rate=160))
    engine.synthesize("Something else entirely, spoken by another voice.", VoiceSettings("en+klatt", pitch=80))
    engine.synthesize("And once more.")
    again = engine.synthesize(SENTENCE, VoiceSettings("en+f3", rate=160))
    assert first.shape == again.shape and first.tobytes() == again.tobytes()


def test_rate_changes_duration(engine):
    slow = engine.synthesize(SENTENCE, VoiceSettings(rate=120)).size
    normal = engine.synthesize(SENTENCE, VoiceSettings(rate=175)).size
    fast = engine.synthesize(SENTENCE, VoiceSettings(rate=300)).size
    assert slow > 1.2 * normal and normal > 1.3 * fast


def test_pitch_changes_f0(engine):
    low = median_f0(engine.synthesize(SENTENCE, VoiceSettings(pitch=10)))
    high = median_f0(engine.synthesize(SENTENCE, VoiceSettings(pitch=90)))
    assert 60 < low < high < 400
    assert high > 1.4 * low


def test_female_variant_is_higher_and_voices_differ(engine):
    male = engine.synthesize(SENTENCE, VoiceSettings("en-us"))
    female = engine.synthesize(SENTENCE, VoiceSettings("en-us+f3"))
    assert median_f0(female) > 1.3 * median_f0(male)
    waves = [engine.synthesize(SENTENCE, VoiceSettings(v)) for v in ENGLISH_VOICES]
    for i in range(len(waves)):
        for j in range(i):
            assert waves[i].shape != waves[j].shape or not np.array_equal(waves[i], waves[j]), (i, j)


def test_word_gap_lengthens_and_control_characters_are_dropped(engine):
    plain = engine.synthesize(SENTENCE)
    gapped = engine.synthesize(SENTENCE, VoiceSettings(word_gap=20))
    # 8 gaps of 200 ms each
    assert gapped.size - plain.size > 8 * 0.15 * SAMPLE_RATE
    messy = engine.synthesize("The quick\x00 brown\tfox\x07 jumps  over\nthe lazy dog.\x1b")
    assert messy.tobytes() == plain.tobytes()
    assert clean_text(" a\x00b\r\n c ") == "a b c"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": MIN_RATE - 1}, r"rate must be an int in \[80, 450\], got 79"),
        ({"rate": MAX_RATE + 1}, r"rate must be an int in \[80, 450\], got 451"),
        ({"rate": 175.0}, r"rate must be an int in \[80, 450\], got 175\.0"),
        ({"pitch": 101}, r"pitch must be an int in \[0, 100\], got 101"),
        ({"pitch_range": -1}, r"pitch_range must be an int in \[0, 100\], got -1"),
        ({"word_gap": True}, r"word_gap must be an int in \[0, 100\], got True"),
        ({"voice": ""}, "voice must be a non-empty string"),
        ({"voice": " en"}, "voice ' en' has surrounding whitespace"),
        ({"voice": "en+f3+m3"}, r"voice 'en\+f3\+m3' must be 'language' or 'language\+variant'"),
    ],
)
def test_bad_settings_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VoiceSettings(**kwargs)


def test_unknown_voices_are_named_with_suggestions(engine):
    assert {"en", "en-us", "en-gb", "de"} <= set(engine.available_voices())
    assert {"f3", "m3", "klatt"} <= set(engine.available_variants())
    suggestion = r"unknown espeak voice 'eng-us': no language 'eng-us'; try one of \[.*'en-us'"
    with pytest.raises(ValueError, match=suggestion):
        engine.synthesize(SENTENCE, VoiceSettings("eng-us"))
    # libespeak-ng itself would silently ignore an unknown variant
    with pytest.raises(ValueError, match=r"unknown espeak voice 'en\+f33': no variant 'f33'; try one of \[.*'f3'"):
        engine.synthesize(SENTENCE, VoiceSettings("en+f33"))
    with pytest.raises(ValueError, match="unknown espeak voice 'xx-yy'"):
        EspeakEngine(VoiceSettings("xx-yy"))
    with pytest.raises(TypeError, match="voice must be a VoiceSettings or None, got str"):
        engine.synthesize(SENTENCE, "en-us")


@pytest.mark.parametrize("text", ["", "   ", "\n\t", "\x00\x07"])
def test_empty_text_is_rejected(engine, text):
    with pytest.raises(ValueError, match="text is empty or only whitespace/control characters"):
        engine.synthesize(text)


def test_synthesize_many_in_workers_equals_in_process_in_order():
    texts = [f"Sentence number {n} is here." for n in (3, 1, 4, 1, 5, 9, 2)]
    voices = [VoiceSettings(ENGLISH_VOICES[i % 3], rate=150 + 10 * i) for i in range(len(texts))]
    local = synthesize_many(texts, voices)
    parallel = synthesize_many(texts, voices, num_workers=2, chunksize=2)
    assert len(local) == len(parallel) == len(texts)
    for a, b in zip(local, parallel, strict=True):
        assert a.tobytes() == b.tobytes()
    assert local[1].tobytes() != local[3].tobytes()  # same text, other voice: the order really is checked
    single = synthesize_many(texts[:2], VoiceSettings("en+m3"))
    assert single[0].tobytes() == EspeakEngine().synthesize(texts[0], VoiceSettings("en+m3")).tobytes()
    assert synthesize_many([]) == []
    with pytest.raises(ValueError, match="voices has 2 entries but texts has 7"):
        synthesize_many(texts, voices[:2])
    with pytest.raises(ValueError, match="num_workers must be an int >= 0, got -1"):
        synthesize_many(texts, num_workers=-1)
    with pytest.raises(ValueError, match="text is empty"):
        synthesize_many(["fine", " "], num_workers=2)


class ToneEngine:
    """A stand-in synthesizer: a tone whose length follows the text, its pitch the voice."""

    sample_rate = SAMPLE_RATE

    def synthesize(self, text: str, voice: VoiceSettings | None = None) -> np.ndarray:
        pitch = (voice or VoiceSettings()).pitch
        t = np.arange(len(text) * SAMPLE_RATE // 20) / SAMPLE_RATE
        return (0.5 * np.sin(2 * np.pi * (100 + 2 * pitch) * t)).astype(np.float32)


def test_custom_engines_satisfy_the_protocol_and_plug_in():
    assert isinstance(ToneEngine(), TTSEngine)
    assert isinstance(EspeakEngine(), TTSEngine)
    assert not isinstance(object(), TTSEngine)
    waves = synthesize_many(["ab", "abcd"], VoiceSettings(pitch=0), engine_factory=ToneEngine, num_workers=2)
    assert [w.size for w in waves] == [SAMPLE_RATE // 10, SAMPLE_RATE // 5]
    assert median_f0(waves[1]) == pytest.approx(100, rel=0.02)


def test_threads_are_serialised_and_get_the_same_samples(engine):
    from concurrent.futures import ThreadPoolExecutor

    texts = [f"Thread safe sentence {n}." for n in range(8)]
    voices = [VoiceSettings(ENGLISH_VOICES[n % 4], pitch=30 + 5 * n) for n in range(8)]
    expected = [engine.synthesize(t, v).tobytes() for t, v in zip(texts, voices, strict=True)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda job: engine.synthesize(*job).tobytes(), zip(texts, voices, strict=True)))
    assert got == expected
