import json

import numpy as np
import pytest
import torch

from speechgpt.audio import AudioError
from speechgpt.units.kmeans import KMeans
from speechgpt.units.light import LightFeatureConfig, LightFeatures
from speechgpt.units.tokenizer import SpeechTokenizer, Units, dedup, parse_units, units_to_string
from tests.synth import SAMPLE_RATE, phone_sequence_wave, random_utterance


def test_dedup_keeps_one_id_per_run_with_its_length():
    units = dedup([5, 5, 5, 2, 2, 7, 5, 5])
    assert units.ids.tolist() == [5, 2, 7, 5]
    assert units.durations.tolist() == [3, 2, 1, 2]
    assert units.num_frames == 8
    assert units.frames().tolist() == [5, 5, 5, 2, 2, 7, 5, 5]
    assert len(dedup([])) == 0 and dedup([]).to_string() == "<sosp><eosp>"


def test_unit_string_round_trip():
    ids = [0, 12, 345, 999, 12]
    text = units_to_string(torch.tensor(ids))
    assert text == "<sosp><0><12><345><999><12><eosp>"
    assert parse_units(text) == ids
    assert dedup(ids).to_dict() == {"units": ids, "durations": [1] * 5, "unit_string": text}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Sure! [ua] <sosp><1><2><3><eosp><eoa>", [1, 2, 3]),
        ("<5> before the span <sosp><6><7><eosp> <8> after", [6, 7]),
        ("unbalanced <sosp><1><2", [1]),
        ("<sosp><1><eosp><sosp><2><eosp>", [1]),
        ("no span but <4> and <44>", [4, 44]),
        ("<12<13>><-3><007><x><1.5><  9><99999999999999999999>", [13]),
        ("<eosp><3><sosp>", []),
        ("", []),
        ("<sosp>" * 3 + "<0>", [0]),
    ],
)
def test_parse_units_is_tolerant(text, expected):
    assert parse_units(text) == expected


def test_parse_units_never_raises_on_garbage():
    rng = np.random.default_rng(0)
    alphabet = list("<>sopeSOPE0123456789-[]; \n\x00é")
    for _ in range(300):
        text = "".join(rng.choice(alphabet, size=int(rng.integers(0, 60))))
        ids = parse_units(text)
        assert all(isinstance(i, int) and i >= 0 for i in ids)
    assert parse_units(None) == []  # type: ignore[arg-type]
    assert parse_units("<sosp><3><1000><eosp>", num_units=1000) == [3]


@pytest.fixture(scope="module")
def light_tokenizer():
    extractor = LightFeatures(LightFeatureConfig())
    frames = np.concatenate([extractor(random_utterance(seed)).numpy() for seed in range(6)])
    return SpeechTokenizer(extractor, KMeans.train(frames, 16, seed=0, niter=10))


def test_encode_matches_the_parts_and_dedups(light_tokenizer, tmp_path):
    wave = phone_sequence_wave([0, 1, 2, 3, 4, 1])
    units = light_tokenizer.encode(wave, sample_rate=SAMPLE_RATE)
    frame_ids = light_tokenizer.kmeans.assign(light_tokenizer.extractor(wave))
    assert torch.equal(units.frames(), frame_ids)
    assert (units.ids[1:] != units.ids[:-1]).all()
    assert units.num_frames == (len(wave) - 400) // 320 + 1
    assert 3 <= len(units) < units.num_frames  # distinct sounds give several units, runs are merged

    import soundfile as sf

    sf.write(tmp_path / "u.wav", wave, SAMPLE_RATE, subtype="FLOAT")
    from_file = light_tokenizer.encode(tmp_path / "u.wav")
    assert from_file.ids.tolist() == units.ids.tolist()


def test_encode_resamples_other_rates(light_tokenizer):
    wave = phone_sequence_wave([0, 1, 2], seconds_per_phone=0.3)
    at_48k = np.interp(np.arange(len(wave) * 3) / 3, np.arange(len(wave)), wave).astype(np.float32)
    units = light_tokenizer.encode(at_48k, sample_rate=48_000)
    assert abs(units.num_frames - light_tokenizer.encode(wave, sample_rate=SAMPLE_RATE).num_frames) <= 1


def test_bad_audio_is_a_clear_error(light_tokenizer, tmp_path):
    with pytest.raises(AudioError, match="too short"):
        light_tokenizer.encode(np.zeros(100, np.float32), sample_rate=SAMPLE_RATE, name="tiny.wav")
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF....WAVEfmt garbage")
    with pytest.raises(AudioError, match=r"broken\.wav"):
        light_tokenizer.encode(broken)
    nan = np.full(4000, np.nan, np.float32)
    with pytest.raises(AudioError, match="NaN"):
        light_tokenizer.encode(nan, sample_rate=SAMPLE_RATE, name="nan.wav")


def test_save_and_load_light_tokenizer(light_tokenizer, tmp_path):
    light_tokenizer.save_pretrained(tmp_path / "tok")
    config = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    assert config["extractor"]["type"] == "light" and config["num_units"] == 16
    loaded = SpeechTokenizer.from_pretrained(tmp_path / "tok")
    wave = random_utterance(99)
    assert torch.equal(loaded.frame_ids(wave), light_tokenizer.frame_ids(wave))
    assert isinstance(loaded.encode(wave, sample_rate=SAMPLE_RATE), Units)


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a speech tokenizer folder"):
        SpeechTokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="expected 'speechgpt-speech-tokenizer'"):
        SpeechTokenizer.from_pretrained(tmp_path)


def test_dimension_mismatch_is_rejected():
    with pytest.raises(ValueError, match="39"):
        SpeechTokenizer(LightFeatures(), KMeans(np.zeros((4, 10), np.float32)))
