"""The judge ASR: CTC decoding, the model, its checkpoints, and a short real training on espeak-ng speech."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from speechgpt.audio import AudioError
from speechgpt.data.tts import VoiceSettings, synthesize_many
from speechgpt.eval.judge import (
    BLANK,
    VOCABULARY,
    JudgeASR,
    JudgeConfig,
    JudgeTrainArgs,
    ctc_greedy_decode,
    decode_ids,
    encode_text,
    load_for_judge,
    read_transcripts,
    train_judge,
)
from speechgpt.eval.metrics import error_rates
from speechgpt.manifest import ManifestError

TINY = JudgeConfig(conv_channels=48, hidden_size=48, num_layers=1, dropout=0.0)
SUBJECTS = ["the cat", "a dog", "my friend", "the bird", "a girl"]
VERBS = ["sees", "likes", "finds", "wants"]
OBJECTS = ["a ball", "the tree", "some bread", "the moon", "a red box", "the sun"]
# 40 distinct short sentences, alternately spoken by two voices.
SENTENCES = [f"{SUBJECTS[i % 5]} {VERBS[(i // 5) % 4]} {OBJECTS[(i * 7) % 6]}" for i in range(40)]
VOICES = [VoiceSettings("en-us" if i % 2 else "en+f2") for i in range(40)]
# A bound measured on this data: after the 100 steps below the training-set CER was 0.11-0.25 over seeds 0-2 (and
# the mean CTC loss fell from ~2.9 to 0.7-0.93); an empty or all-blank output, all an untrained model writes, scores
# 1.0.
TRAINED_CER_BOUND = 0.4


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny GRUs spend more time in thread hand-offs than in arithmetic (badly so on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _class(char: str) -> int:
    return VOCABULARY.index(char) + 1


def _logits(path: list[int]) -> torch.Tensor:
    """``[1, T, C]`` scores whose best class at frame t is ``path[t]``."""
    logits = torch.zeros(1, len(path), len(VOCABULARY) + 1)
    for t, index in enumerate(path):
        logits[0, t, index] = 5.0
    return logits


def test_text_encoding_normalises_and_keeps_only_the_vocabulary():
    ids = encode_text("Café: 42 élan!")
    assert decode_ids(ids) == "cafe forty two elan"
    assert BLANK not in ids and all(1 <= i <= len(VOCABULARY) for i in ids)
    assert decode_ids(encode_text("It's 9")) == "it's nine"


def test_greedy_decoding_merges_repeats_and_drops_blanks():
    b = BLANK
    path = [b, _class("c"), _class("c"), b, _class("a"), _class("t"), _class("t"), _class(" "), _class(" "), b]
    path += [_class("a"), b, _class("l"), _class("l"), b, _class("l"), _class(" ")]
    assert ctc_greedy_decode(_logits(path)) == ["cat all"]  # "l l" with a blank between are two letters


def test_greedy_decoding_stops_at_each_length_and_tidies_spaces():
    b = BLANK
    first = [_class(" "), _class("h"), _class("i"), _class(" "), b, _class(" "), _class("o"), _class("k")]
    second = [_class("n"), b, _class("o"), _class("o"), _class("x"), _class("x"), _class("x"), _class("x")]
    batch = torch.cat([_logits(first), _logits(second)])
    assert ctc_greedy_decode(batch, [8, 4]) == ["hi ok", "no"]
    assert ctc_greedy_decode(batch, [0, 8]) == ["", "nox"]


def test_greedy_decoding_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"log_probs must be \[B, T, 29\]"):
        ctc_greedy_decode(torch.zeros(2, 5, 10))
    with pytest.raises(ValueError, match=r"lengths must hold 1 values in 0\.\.3"):
        ctc_greedy_decode(torch.zeros(1, 3, 29), [4])


def test_config_checks_and_rejects_unknown_keys():
    with pytest.raises(ValueError, match="conv_kernel must be a positive odd int"):
        JudgeConfig(conv_kernel=4)
    with pytest.raises(ValueError, match=r"cell must be one of \['gru', 'lstm'\], got 'rnn'"):
        JudgeConfig(cell="rnn")
    with pytest.raises(ValueError, match="hidden_size must be a positive int"):
        JudgeConfig(hidden_size=0)
    with pytest.raises(ValueError, match=r"unknown judge settings \['hidden'\]"):
        JudgeConfig.from_dict({"hidden": 3})
    with pytest.raises(ValueError, match="speed_range must be in"):
        JudgeTrainArgs(speed_range=0.9)


@pytest.mark.parametrize(("subsampling", "cell"), [(1, "gru"), (2, "gru"), (3, "gru"), (2, "lstm")])
def test_forward_shapes_follow_the_frame_rate(subsampling, cell):
    config = JudgeConfig(conv_channels=16, hidden_size=8, num_layers=1, subsampling=subsampling, cell=cell)
    model = JudgeASR(config).eval()
    features, lengths = torch.randn(2, 50, config.n_mels), torch.tensor([50, 21])
    log_probs, out_lengths = model(features, lengths)
    expected = model.output_lengths(lengths)
    assert out_lengths.tolist() == expected.tolist()
    assert expected.tolist() == [-(-50 // subsampling), -(-21 // subsampling)]  # ceil(T / stride): padded conv
    assert log_probs.shape == (2, int(expected.max()), len(VOCABULARY) + 1)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(log_probs.shape[:2]))


def test_padding_does_not_change_an_item():
    torch.manual_seed(0)
    model = JudgeASR(JudgeConfig(conv_channels=16, hidden_size=8, num_layers=2)).eval()
    short = torch.randn(1, 30, 40)
    alone, alone_lengths = model(short, torch.tensor([30]))
    padded = torch.cat([torch.nn.functional.pad(short, (0, 0, 0, 20)), torch.randn(1, 50, 40)])
    batched, batched_lengths = model(padded, torch.tensor([30, 50]))
    assert batched_lengths[0] == alone_lengths[0]
    torch.testing.assert_close(batched[0, : alone_lengths[0]], alone[0], atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def speech():
    return synthesize_many(SENTENCES, VOICES)


@pytest.fixture(scope="module")
def trained(speech):
    args = JudgeTrainArgs(
        steps=100,
        batch_seconds=10.0,
        learning_rate=1e-2,
        warmup_steps=5,
        speed_range=1.05,
        warp_range=1.05,
        max_extra_silence=0.0,
        valid_every=50,
        seed=0,
        device="cpu",
    )
    items = list(zip(speech, SENTENCES, strict=True))
    return train_judge(items, TINY, args=args, valid_items=items[:8])


def test_short_training_lowers_the_loss_and_beats_chance(trained, speech):
    model, history = trained
    first, last = history.loss[0][1], history.loss[-1][1]
    assert last < 0.4 * first, history.loss
    hypotheses = model.transcribe(speech)
    report = error_rates(SENTENCES, hypotheses)
    assert report.cer < TRAINED_CER_BOUND, list(zip(SENTENCES, hypotheses, strict=True))[:5]
    assert error_rates(SENTENCES, [""] * len(SENTENCES)).cer == 1.0  # what "nothing learned" scores
    assert [step for step, _, _ in history.valid] == [50, 100]
    assert model.info["train_items"] == "40"
    assert float(model.info["valid_cer"]) == pytest.approx(history.valid[-1][1], abs=1e-4)
    assert history.train_seconds == pytest.approx(sum(w.size for w in speech) / 16_000)


def test_training_is_repeatable_for_a_seed(speech):
    args = JudgeTrainArgs(steps=3, batch_seconds=8.0, valid_every=0, device="cpu")
    items = list(zip(speech[:6], SENTENCES[:6], strict=True))
    one, _ = train_judge(items, TINY, args=args)
    two, _ = train_judge(items, TINY, args=args)
    for (name, a), b in zip(one.state_dict().items(), two.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_transcribe_batches_like_single_items_and_accepts_files(trained, speech, tmp_path):
    model, _ = trained
    waves = [speech[0], speech[5][:8000], speech[9]]
    one_by_one = [model.transcribe([w])[0] for w in waves]
    assert model.transcribe(waves, batch_size=2) == one_by_one
    path = tmp_path / "clip.wav"
    sf.write(path, speech[0], 16_000)
    assert model.transcribe([str(path)]) == one_by_one[:1]


def test_arrays_at_other_rates_are_resampled():
    wave_48k = np.sin(np.arange(48_000) * 0.05).astype(np.float32)
    assert load_for_judge(wave_48k, sample_rate=48_000).shape == (16_000,)
    assert load_for_judge(wave_48k).shape == (48_000,)  # an array without a rate is taken as 16 kHz


def test_transcribe_rejects_bad_audio_naming_it(trained):
    model, _ = trained
    with pytest.raises(AudioError, match="item 1: too short"):
        model.transcribe([np.zeros(16_000, np.float32), np.zeros(100, np.float32)])
    with pytest.raises(AudioError, match="NaN"):
        model.transcribe([np.full(1000, np.nan, np.float32)])


def test_save_and_load_give_the_same_outputs(trained, speech, tmp_path):
    model, _ = trained
    model.save_pretrained(tmp_path / "judge")
    assert sorted(p.name for p in (tmp_path / "judge").iterdir()) == ["config.json", "model.safetensors"]
    loaded = JudgeASR.from_pretrained(tmp_path / "judge", device="cpu")
    assert loaded.config == model.config and loaded.info == model.info and not loaded.training
    features = model.extract(speech[3])[None]
    lengths = torch.tensor([features.shape[1]])
    with torch.inference_mode():
        torch.testing.assert_close(loaded(features, lengths)[0], model(features, lengths)[0], rtol=0, atol=0)
    assert loaded.transcribe(speech[:4]) == model.transcribe(speech[:4])


def test_loading_reports_what_is_wrong(trained, tmp_path):
    model, _ = trained
    with pytest.raises(FileNotFoundError, match="no such judge folder"):
        JudgeASR.from_pretrained(tmp_path / "missing")
    folder = model.save_pretrained(tmp_path / "judge")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "format": "other"}))
    with pytest.raises(ValueError, match="'format' is 'other'"):
        JudgeASR.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**config, "hidden_size": 64}))
    with pytest.raises(ValueError, match="has shape"):
        JudgeASR.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"weights model\.safetensors are missing"):
        JudgeASR.from_pretrained(folder)


def test_training_input_errors_name_the_item(speech):
    with pytest.raises(ValueError, match="no training items"):
        train_judge([], TINY)
    with pytest.raises(ValueError, match=r"items\[1\] must be an \(audio, text\) pair"):
        train_judge([(speech[0], "a"), (speech[1],)], TINY)
    with pytest.raises(TypeError, match=r"items\[0\]: the transcript must be a str, got int"):
        train_judge([(speech[0], 3)], TINY)
    with pytest.raises(AudioError, match=r"valid_items\[0\]: too short"):
        train_judge([(speech[0], "a")], TINY, valid_items=[(np.zeros(10, np.float32), "b")])


def test_read_transcripts_resolves_paths_beside_the_manifest(tmp_path):
    manifest = tmp_path / "data" / "speech.jsonl"
    manifest.parent.mkdir()
    manifest.write_text('{"audio": "a/1.wav", "text": "one"}\n\n{"audio": "/abs/2.wav", "text": "two"}\n')
    assert read_transcripts(manifest) == [(str(tmp_path / "data" / "a" / "1.wav"), "one"), ("/abs/2.wav", "two")]
    manifest.write_text('{"audio": "a.wav", "text": "one"}\n{"audio": "b.wav"}\n')
    with pytest.raises(ManifestError, match="record 2 has no 'text' string"):
        read_transcripts(manifest)
    with pytest.raises(FileNotFoundError, match="no such manifest"):
        read_transcripts(tmp_path / "none.jsonl")
