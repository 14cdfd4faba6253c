"""Units from a CTC recogniser's states: framing, persistence inside a tokenizer folder, and the command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from speechgpt.eval.judge import JudgeASR, JudgeConfig
from speechgpt.serve.cli import app
from speechgpt.units.base import num_frames
from speechgpt.units.encoder import RecognizerFeatures
from speechgpt.units.kmeans import KMeans
from speechgpt.units.tokenizer import SpeechTokenizer
from tests.synth import random_utterance, write_corpus


@pytest.fixture(scope="module")
def recognizer() -> JudgeASR:
    torch.manual_seed(0)
    return JudgeASR(JudgeConfig(conv_channels=16, hidden_size=8, num_layers=1)).eval()


@pytest.mark.parametrize("samples", [400, 719, 720, 16_000, 16_321, 48_000])
def test_one_state_per_50_hz_frame(recognizer, samples):
    wave = np.random.default_rng(samples).standard_normal(samples).astype(np.float32) * 0.1
    features = RecognizerFeatures(recognizer)(wave)
    assert features.shape == (num_frames(samples), 16) and features.dtype == torch.float32
    assert torch.isfinite(features).all()


def test_states_follow_the_recognizer_at_half_rate(recognizer):
    """Each recogniser state covers two 50 Hz frames, after the padding frames at the start are skipped."""
    wave = np.random.default_rng(1).standard_normal(16_000).astype(np.float32) * 0.1
    features = RecognizerFeatures(recognizer)(wave)
    extracted = recognizer.extract(torch.from_numpy(wave))
    with torch.inference_mode():
        hidden, _ = recognizer.hidden_states(extracted[None], torch.tensor([extracted.shape[0]]))
    expected = hidden[0].repeat_interleave(2, dim=0)[5 : 5 + num_frames(16_000)]
    assert torch.equal(features, expected)


def test_too_short_audio_is_refused(recognizer):
    with pytest.raises(ValueError, match="shorter than one 25 ms window"):
        RecognizerFeatures(recognizer)(np.zeros(100, dtype=np.float32))


def test_a_tokenizer_with_a_recognizer_saves_and_loads_to_the_same_units(recognizer, tmp_path):
    extractor = RecognizerFeatures(recognizer)
    waves = [random_utterance(seed) for seed in range(4)]
    frames = np.concatenate([extractor(w).numpy() for w in waves])
    tokenizer = SpeechTokenizer(extractor, KMeans.train(frames, 6, seed=0, niter=5))
    tokenizer.save_pretrained(tmp_path / "tok")
    config = json.loads((tmp_path / "tok/tokenizer_config.json").read_text())
    assert config["extractor"] == {"type": "recognizer", "path": "recognizer"}
    loaded = SpeechTokenizer.from_pretrained(tmp_path / "tok", device="cpu")
    for wave in waves:
        a, b = tokenizer.encode(wave, sample_rate=16_000), loaded.encode(wave, sample_rate=16_000)
        assert torch.equal(a.ids, b.ids) and torch.equal(a.durations, b.durations)


def test_train_kmeans_with_a_recognizer_folder(recognizer, tmp_path):
    corpus = write_corpus(tmp_path / "wavs", count=4)
    recognizer.save_pretrained(tmp_path / "recognizer")
    runner = CliRunner()
    args = ["units", "train-kmeans", str(corpus[0].parent), "-o", str(tmp_path / "tok"), "-k", "5", "--niter", "4"]
    missing = runner.invoke(app, [*args, "--extractor", "recognizer"])
    assert missing.exit_code == 2 and "--recognizer DIR" in missing.stderr
    result = runner.invoke(app, [*args, "--extractor", "recognizer", "--recognizer", str(tmp_path / "recognizer")])
    assert result.exit_code == 0, result.output
    tokenizer = SpeechTokenizer.from_pretrained(tmp_path / "tok")
    assert isinstance(tokenizer.extractor, RecognizerFeatures) and tokenizer.num_units == 5
    assert len(tokenizer.encode(corpus[0])) > 0
