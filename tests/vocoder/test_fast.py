"""FastVocoder: analysis, fitting, exact lengths, determinism, unseen units, persistence, streaming, re-encoding."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from speechgpt.audio import load_audio, write_wav
from speechgpt.units.base import HOP_LENGTH, num_frames
from speechgpt.units.kmeans import KMeans
from speechgpt.units.light import LightFeatures
from speechgpt.units.tokenizer import SpeechTokenizer, Units
from speechgpt.vocoder import UnitHiFiGAN, VocoderConfig
from speechgpt.vocoder.base import Vocoder, load_vocoder, vocoder_type
from speechgpt.vocoder.fast import (
    FRAME_CENTER,
    FastVocoder,
    FastVocoderConfig,
    analyze_frames,
)
from speechgpt.vocoder.fit import FastVocoderFitArgs, fit_fast_vocoder, fit_from_manifest, read_manifest
from tests.synth import SAMPLE_RATE, random_utterance

NUM_CLUSTERS = 16
TINY = FastVocoderConfig(num_units=NUM_CLUSTERS, embed_dim=16, channels=32, duration_embed_dim=8, duration_channels=16)
# One thread: the networks are tiny, and on a shared 2-core machine oversubscribed threads are several times slower.
TINY_ARGS = FastVocoderFitArgs(refiner_steps=150, duration_steps=100, crop_frames=64, num_threads=1)
STREAM_TOLERANCE = 1e-5  # max abs difference between streamed and one-shot samples (fp32 rounding only)
# Frame agreement of re-encoded vocoder output with the original's units on the synthetic corpus below, measured
# with this fit: 0.91 on held-out utterances, 0.94 on training ones (0.91-0.95 with 0, 150 or 300 refiner steps);
# vocoding the wrong utterance's units scores 0.06.
REENCODE_THRESHOLD = 0.80


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Run this module on one torch thread: its models are tiny, and on a shared 2-core machine two threads of
    tiny ops wait on each other (measured: up to 20x slower under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus():
    torch.manual_seed(0)
    waves = [random_utterance(i) for i in range(12)]
    extractor = LightFeatures()
    kmeans = KMeans.train(torch.cat([extractor(w) for w in waves]), NUM_CLUSTERS, seed=0, niter=10)
    tokenizer = SpeechTokenizer(extractor, kmeans)
    units = [tokenizer.encode(w, sample_rate=SAMPLE_RATE) for w in waves]
    return waves, units, tokenizer


@pytest.fixture(scope="module")
def vocoder(corpus):
    waves, units, tokenizer = corpus
    return fit_fast_vocoder(waves, units, NUM_CLUSTERS, config=TINY, args=TINY_ARGS, centers=tokenizer.kmeans.centers)


def frame_agreement(tokenizer: SpeechTokenizer, original: np.ndarray, vocoded: torch.Tensor) -> float:
    reference, again = tokenizer.frame_ids(original), tokenizer.frame_ids(vocoded.numpy())
    count = min(len(reference), len(again))
    return float((reference[:count] == again[:count]).float().mean())


# --- config and analysis -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"synthesis_hop": 80}, "synthesis_hop"),  # does not divide n_fft=512
        ({"n_fft": 256}, "n_fft"),
        ({"kernel_size": 4}, "kernel_size must be odd"),
        ({"f0": 10.0}, "f0"),
        ({"voicing_low": 0.8, "voicing_high": 0.5}, "voicing_low"),
        ({"cepstrum_order": 256}, "cepstrum_order"),
        ({"num_units": 0}, "num_units"),
    ],
)
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        FastVocoderConfig(**overrides)


def test_config_round_trips_and_rejects_unknown_keys():
    config = FastVocoderConfig(num_units=7, dilations=[1, 3])
    assert FastVocoderConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match=r"unknown fast-vocoder settings \['bogus'\]"):
        FastVocoderConfig.from_dict({"bogus": 1})


def test_analysis_measures_level_and_voicing():
    rng = np.random.default_rng(0)
    noise = (0.1 * rng.standard_normal(SAMPLE_RATE)).astype(np.float32)
    frames = analyze_frames(noise, TINY)
    assert frames.shape == (num_frames(SAMPLE_RATE), TINY.feature_dim)
    # c0 is the mean log power per sample (unbiased by the Euler-gamma correction): log(0.1^2) = -4.61.
    assert frames[2:-2, 0].mean().item() == pytest.approx(np.log(0.01), abs=0.1)
    assert frames[:, -1].mean().item() < 0.05  # noise is unvoiced
    pulses = np.zeros(SAMPLE_RATE, dtype=np.float32)
    pulses[::100] = 1.0  # 160 Hz
    assert analyze_frames(pulses, TINY)[2:-2, -1].min().item() > 0.95
    with pytest.raises(ValueError, match="shorter than one 400-sample window"):
        analyze_frames(np.zeros(399, dtype=np.float32), TINY)


def test_analysis_then_rendering_keeps_the_level():
    rng = np.random.default_rng(1)
    noise = (0.1 * rng.standard_normal(SAMPLE_RATE)).astype(np.float32)
    model = FastVocoder(TINY)
    model.noise.copy_(torch.randn(model.noise.numel(), generator=torch.Generator().manual_seed(0)))
    wave = model.render(analyze_frames(noise, TINY))
    assert wave.numel() == num_frames(SAMPLE_RATE) * HOP_LENGTH
    rms = wave[FRAME_CENTER:-FRAME_CENTER].pow(2).mean().sqrt().item()
    assert rms == pytest.approx(0.1, rel=0.1)


# --- the fitted vocoder ------------------------------------------------------------------------------------------


def test_it_is_a_vocoder(vocoder):
    assert isinstance(vocoder, Vocoder)
    assert isinstance(UnitHiFiGAN(VocoderConfig.tiny()), Vocoder)
    assert (vocoder.sample_rate, vocoder.hop_length, vocoder.num_units) == (SAMPLE_RATE, HOP_LENGTH, NUM_CLUSTERS)
    assert vocoder.info["recordings"] == "12" and vocoder.info["units_seen"] == str(NUM_CLUSTERS)


def test_output_length_is_exactly_hop_times_frames(vocoder, corpus):
    units = corpus[1][0]
    given = vocoder.synthesize(units.ids, durations=units.durations)
    assert given.shape == (HOP_LENGTH * units.num_frames,) and given.dtype == torch.float32
    one_each = vocoder.synthesize(units.ids, dur_prediction=False)
    assert one_each.numel() == HOP_LENGTH * len(units)
    predicted = vocoder.synthesize(units.ids)
    durations = vocoder.predict_durations(units.ids)
    assert predicted.numel() == HOP_LENGTH * int(durations.sum()) and int(durations.min()) >= 1
    for wave in (given, one_each, predicted):
        assert bool(torch.isfinite(wave).all()) and wave.abs().max().item() <= 1.0
        assert wave.abs().max().item() > 0.05  # not silence
    # Negative ids are dropped (with their durations), as the unit HiFi-GAN does.
    padded = vocoder.synthesize([-1, *units.ids.tolist()], durations=[5, *units.durations.tolist()])
    torch.testing.assert_close(padded, given, rtol=0, atol=0)


def test_predicted_durations_are_close_to_the_data(vocoder, corpus):
    _, units, _ = corpus
    ids = torch.cat([u.ids for u in units])
    truth = torch.cat([u.durations for u in units]).float()
    predicted = torch.cat([vocoder.predict_durations(u.ids) for u in units]).float()
    # Measured: mean absolute error 0.88 frames, against a mean absolute deviation of the durations of 1.67.
    assert (predicted - truth).abs().mean() < 0.7 * (truth - truth.mean()).abs().mean()
    assert predicted.sum() / truth.sum() == pytest.approx(1.0, abs=0.15)
    assert ids.numel() == predicted.numel()


def test_fitting_is_deterministic_and_seeded(corpus, vocoder):
    waves, units, tokenizer = corpus
    again = fit_fast_vocoder(waves, units, NUM_CLUSTERS, config=TINY, args=TINY_ARGS, centers=tokenizer.kmeans.centers)
    for key, tensor in vocoder.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[key]), key
    torch.testing.assert_close(vocoder.synthesize(units[0].ids), again.synthesize(units[0].ids), rtol=0, atol=0)
    other_seed = FastVocoderFitArgs(refiner_steps=20, duration_steps=0, crop_frames=64, seed=1, num_threads=1)
    different = fit_fast_vocoder(waves, units, NUM_CLUSTERS, config=TINY, args=other_seed)
    assert not torch.equal(different.noise, vocoder.noise)


def test_unseen_units_fall_back_to_the_global_mean(corpus):
    waves, units, _ = corpus
    config = FastVocoderConfig(**{**TINY.to_dict(), "num_units": NUM_CLUSTERS + 4})
    model = fit_fast_vocoder(waves, units, NUM_CLUSTERS + 4, config=config, args=TINY_ARGS)
    assert model.info["units_seen"] == str(NUM_CLUSTERS)
    all_frames = torch.cat([analyze_frames(w, config) for w in waves])
    torch.testing.assert_close(model.unit_features[NUM_CLUSTERS:], all_frames.mean(0).expand(4, -1))
    wave = model.synthesize([NUM_CLUSTERS, NUM_CLUSTERS + 3, 2, NUM_CLUSTERS + 1])
    assert bool(torch.isfinite(wave).all()) and wave.numel() % HOP_LENGTH == 0


def test_unseen_units_borrow_the_nearest_centre(corpus):
    waves, units, tokenizer = corpus
    centers = tokenizer.kmeans.centers
    twin = 5  # an extra unit whose centre sits right next to unit 5's
    with_twin = np.concatenate([centers, centers[twin : twin + 1] + 1e-3])
    config = FastVocoderConfig(**{**TINY.to_dict(), "num_units": NUM_CLUSTERS + 1})
    model = fit_fast_vocoder(waves, units, NUM_CLUSTERS + 1, config=config, args=TINY_ARGS, centers=with_twin)
    assert torch.equal(model.unit_features[NUM_CLUSTERS], model.unit_features[twin])
    assert torch.equal(model.refiner.embed.weight[NUM_CLUSTERS], model.refiner.embed.weight[twin])
    sequence = [3, twin, twin, 7]
    torch.testing.assert_close(
        model.synthesize([3, NUM_CLUSTERS, NUM_CLUSTERS, 7]), model.synthesize(sequence), rtol=0, atol=0
    )


def test_batch_equals_one_by_one(vocoder, corpus):
    units = corpus[1][:3]
    batch = vocoder.synthesize_batch([u.ids for u in units], durations=[u.durations for u in units])
    for item, u in zip(batch, units, strict=True):
        torch.testing.assert_close(item, vocoder.synthesize(u.ids, durations=u.durations), rtol=0, atol=0)
    predicted = vocoder.synthesize_batch([u.ids.tolist() for u in units])
    assert [w.numel() for w in predicted] == [vocoder.synthesize(u.ids).numel() for u in units]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda v: v.synthesize([1, NUM_CLUSTERS]), rf"unit id {NUM_CLUSTERS} \(position 1\) is out of range"),
        (lambda v: v.synthesize(torch.tensor([1.0, 2.0])), "integer unit ids"),
        (lambda v: v.synthesize([]), "empty"),
        (lambda v: v.synthesize([-1, -1]), "empty"),
        (lambda v: v.synthesize([1, 2], durations=[1]), "durations has 1 entries but there are 2 units"),
        (lambda v: v.synthesize([1, 2], durations=[1, 0]), ">= 1 frame"),
        (lambda v: v.synthesize([1, 2], speaker=0), "single-speaker"),
        (lambda v: v.synthesize_batch([[1], [2, 99]]), r"unit_seqs\[1\]: unit id 99"),
        (lambda v: v.synthesize_batch([[1]], durations=[[1], [2]]), "durations has 2 entries for 1"),
        (lambda v: list(v.synthesize_stream([[1], [NUM_CLUSTERS]])), "unit chunk 1"),
        (lambda v: list(v.synthesize_stream([[], [-1]])), "no units"),
    ],
)
def test_bad_input_is_named(vocoder, call, message):
    with pytest.raises(ValueError, match=message):
        call(vocoder)


# --- streaming ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dur_prediction", [True, False])
@pytest.mark.parametrize("chunk", [1, 4, 1000])
def test_streaming_equals_one_shot(vocoder, corpus, dur_prediction, chunk):
    ids = corpus[1][1].ids
    one_shot = vocoder.synthesize(ids, dur_prediction=dur_prediction)
    chunks = [ids[i : i + chunk] for i in range(0, len(ids), chunk)]
    pieces = list(vocoder.synthesize_stream(chunks, dur_prediction=dur_prediction))
    streamed = torch.cat(pieces)
    assert streamed.shape == one_shot.shape
    assert (streamed - one_shot).abs().max().item() < STREAM_TOLERANCE
    if chunk == 1:
        assert len(pieces) > len(ids) // 2  # audio really arrives while units do


def test_streaming_with_short_context_keeps_length_and_trades_accuracy(vocoder, corpus):
    ids = corpus[1][2].ids
    one_shot = vocoder.synthesize(ids, dur_prediction=False)
    left, right = vocoder.frame_context
    errors = []
    for left_context, right_context in ((left // 2, right // 2), (0, 0)):
        chunks = [ids[i : i + 2] for i in range(0, len(ids), 2)]
        streamed = torch.cat(list(vocoder.synthesize_stream(chunks, False, left_context, right_context)))
        assert streamed.shape == one_shot.shape
        errors.append(((streamed - one_shot).pow(2).mean() / one_shot.pow(2).mean()).sqrt().item())
    # Measured: 0.019 relative RMS error with half the context, 0.34 with none.
    assert 1e-4 < errors[0] < 0.1 < errors[1]


# --- intelligibility proxy ---------------------------------------------------------------------------------------


def test_reencoded_vocoder_output_gives_back_the_units(vocoder, corpus):
    tokenizer = corpus[2]
    held_out = [random_utterance(100 + i) for i in range(6)]
    scores, wrong = [], []
    for i, wave in enumerate(held_out):
        units = tokenizer.encode(wave, sample_rate=SAMPLE_RATE)
        scores.append(frame_agreement(tokenizer, wave, vocoder.synthesize(units.ids, durations=units.durations)))
        other = tokenizer.encode(held_out[i - 1], sample_rate=SAMPLE_RATE)
        wrong.append(frame_agreement(tokenizer, wave, vocoder.synthesize(other.ids, durations=other.durations)))
    assert np.mean(scores) > REENCODE_THRESHOLD
    assert np.mean(wrong) < 0.5  # the check can fail: wrong units do not re-encode to these


def test_espeak_speech_survives_vocoding():
    """The same check on real (espeak-ng) speech: 16 sentences, 2 voices, 32 units; 4 held-out sentences.

    Measured: 0.90-0.92 frame agreement for 0/150/300 refiner steps; the wrong sentence's units score 0.06.
    """
    from speechgpt.data.tts import ENGLISH_VOICES, EspeakEngine, VoiceSettings

    engine = EspeakEngine()
    words = ["red", "blue", "green", "cat", "dog", "house", "river", "seven", "apples", "window", "morning", "garden"]
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, 4)) for _ in range(20)]
    waves = [engine.synthesize(text, VoiceSettings(ENGLISH_VOICES[i % 2])) for i, text in enumerate(texts)]
    extractor = LightFeatures()
    kmeans = KMeans.train(torch.cat([extractor(w) for w in waves[:16]]), 32, seed=0, niter=10)
    tokenizer = SpeechTokenizer(extractor, kmeans)
    units = [tokenizer.encode(w, sample_rate=SAMPLE_RATE) for w in waves[:16]]
    config = FastVocoderConfig(**{**TINY.to_dict(), "num_units": 32})
    vocoder = fit_fast_vocoder(waves[:16], units, 32, config=config, args=TINY_ARGS, centers=kmeans.centers)
    held_out = waves[16:]
    scores, wrong = [], []
    for i, wave in enumerate(held_out):
        item = tokenizer.encode(wave, sample_rate=SAMPLE_RATE)
        scores.append(frame_agreement(tokenizer, wave, vocoder.synthesize(item.ids, durations=item.durations)))
        other = tokenizer.encode(held_out[i - 1], sample_rate=SAMPLE_RATE)
        wrong.append(frame_agreement(tokenizer, wave, vocoder.synthesize(other.ids, durations=other.durations)))
    assert np.mean(scores) > REENCODE_THRESHOLD
    assert np.mean(wrong) < 0.3


# --- persistence and loading -------------------------------------------------------------------------------------


def test_save_and_load_give_the_same_vocoder(vocoder, corpus, tmp_path):
    folder = vocoder.save_pretrained(tmp_path / "fast")
    config = json.loads((folder / "config.json").read_text())
    assert config["type"] == "fast" and config["num_units"] == NUM_CLUSTERS
    assert vocoder_type(folder) == "fast"
    loaded = load_vocoder(folder)
    assert isinstance(loaded, FastVocoder) and not loaded.training
    assert loaded.config == vocoder.config and loaded.info == vocoder.info
    for key, tensor in vocoder.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[key]), key
    ids = corpus[1][3].ids
    torch.testing.assert_close(loaded.synthesize(ids), vocoder.synthesize(ids), rtol=0, atol=0)


def test_loading_rejects_broken_folders(vocoder, tmp_path):
    folder = vocoder.save_pretrained(tmp_path / "fast")
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors are missing"):
        load_vocoder(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "type": "wavenet"}))
    with pytest.raises(ValueError, match=r"unknown vocoder type 'wavenet'; known types: \['fast', 'hifigan'\]"):
        load_vocoder(folder)
    small = FastVocoder(FastVocoderConfig(num_units=3)).save_pretrained(tmp_path / "small")
    (small / "config.json").write_text(json.dumps({**config, "num_units": 4}))
    with pytest.raises(ValueError, match=r"unit_features has shape \(3, 42\), the config needs \(4, 42\)"):
        FastVocoder.from_pretrained(small)
    with pytest.raises(FileNotFoundError, match="no such vocoder"):
        load_vocoder(tmp_path / "absent")


def test_load_vocoder_dispatches_hifigan_folders_and_files(tmp_path, monkeypatch):
    hifigan = UnitHiFiGAN(VocoderConfig.tiny()).eval()
    folder = hifigan.save_pretrained(tmp_path / "hifigan")
    assert "type" not in json.loads((folder / "config.json").read_text())
    loaded = load_vocoder(folder)
    assert isinstance(loaded, UnitHiFiGAN) and loaded.num_units == hifigan.num_units
    checkpoint = tmp_path / "g_00500000"
    checkpoint.write_bytes(b"not really a checkpoint")
    calls = []
    monkeypatch.setattr(UnitHiFiGAN, "load", classmethod(lambda cls, path, *a, **k: calls.append(path) or "sentinel"))
    assert load_vocoder(checkpoint) == "sentinel" and calls == [checkpoint]


# --- fitting from a manifest, and the CLI ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifest(corpus, tmp_path_factory):
    waves, _, tokenizer = corpus
    folder = tmp_path_factory.mktemp("encoded")
    lines = []
    for i, wave in enumerate(waves[:6]):
        path = write_wav(folder / "wavs" / f"utt{i}.wav", wave)
        units = tokenizer.encode(path)
        lines.append(json.dumps({"audio": f"wavs/utt{i}.wav", **units.to_dict()}))
    (folder / "units.jsonl").write_text("\n".join(lines) + "\n")
    tokenizer.save_pretrained(folder / "tokenizer")
    return folder / "units.jsonl"


def test_fit_from_manifest_equals_fitting_in_memory(manifest, corpus):
    items = read_manifest(manifest)  # relative paths resolve beside the manifest
    assert [p.name for p, _ in items] == [f"utt{i}.wav" for i in range(6)]
    args = FastVocoderFitArgs(refiner_steps=20, duration_steps=20, crop_frames=64, num_threads=1)
    from_file = fit_from_manifest(manifest, NUM_CLUSTERS, config=TINY, args=args)
    waves = [load_audio(path) for path, _ in items]
    in_memory = fit_fast_vocoder(waves, [u for _, u in items], NUM_CLUSTERS, config=TINY, args=args)
    for key, tensor in in_memory.state_dict().items():
        assert torch.equal(tensor, from_file.state_dict()[key]), key


def test_manifest_errors_name_the_record(manifest, tmp_path, corpus):
    record = json.loads(manifest.read_text().splitlines()[0])
    audio = str(manifest.parent / record["audio"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"audio": audio, "units": [1, 2]}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl record 1: missing field\(s\) \['durations'\]"):
        read_manifest(bad)
    shifted = {**record, "audio": audio, "durations": [d + 1 for d in record["durations"]]}
    bad.write_text(json.dumps(shifted) + "\n")
    with pytest.raises(ValueError, match=r"utt0\.wav: the units cover \d+ frames but the audio has \d+"):
        fit_from_manifest(bad, NUM_CLUSTERS, config=TINY, args=TINY_ARGS)
    with pytest.raises(ValueError, match=r"unit id 16 is outside 0\.\.15"):
        fit_fast_vocoder([corpus[0][0]], [Units(torch.tensor([16]), torch.tensor([3]))], NUM_CLUSTERS)


def test_fit_command(manifest, tmp_path):
    import typer

    from speechgpt.serve.vocoder_fit_cli import fit

    app = typer.Typer()
    app.command()(fit)
    app.command("other")(lambda: None)  # two commands, so `fit` is a subcommand as it will be in `speechgpt`
    runner = CliRunner()
    help_text = runner.invoke(app, ["fit", "--help"])
    assert help_text.exit_code == 0 and "speechgpt vocoder fit" in help_text.output
    out = tmp_path / "vocoder"
    tokenizer = manifest.parent / "tokenizer"
    args = ["fit", str(manifest), "-o", str(out), "--tokenizer", str(tokenizer), "--refiner-steps", "5"]
    torch.set_num_threads(2)
    try:
        result = runner.invoke(app, [*args, "--duration-steps", "5", "--threads", "1"])
        assert torch.get_num_threads() == 2  # the fit restores the thread count
    finally:
        torch.set_num_threads(1)
    assert result.exit_code == 0, result.output
    assert f"of {NUM_CLUSTERS} units seen" in result.output
    vocoder = load_vocoder(out)
    assert isinstance(vocoder, FastVocoder) and vocoder.num_units == NUM_CLUSTERS
    both = runner.invoke(app, ["fit", str(manifest), "-o", str(out), "--tokenizer", str(tokenizer), "--num-units", "3"])
    assert both.exit_code == 2 and "exactly one of --tokenizer DIR or --num-units N" in both.output
    missing = runner.invoke(app, ["fit", str(tmp_path / "none.jsonl"), "-o", str(out), "--num-units", "3"])
    assert missing.exit_code == 2 and "none.jsonl: no such manifest" in missing.output
