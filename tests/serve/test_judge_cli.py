"""The ``speechgpt judge`` commands, run in-process with Typer's runner on ``judge_app``."""

import inspect
import json

import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from speechgpt.data.tts import VoiceSettings, synthesize_many
from speechgpt.eval.judge import JudgeASR, JudgeTrainArgs
from speechgpt.serve.judge_cli import judge_app, train

runner = CliRunner()
TEXTS = ["the cat sees a ball", "a dog likes the tree", "my friend finds some bread", "the bird wants the moon"]
FAST = ["--steps", "4", "--batch-seconds", "6", "--valid-every", "2", "--threads", "1", "--device", "cpu"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Four spoken sentences (two voices) in ``audio/``, and ``speech.jsonl`` naming them relative to itself."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "audio").mkdir()
    waves = synthesize_many(TEXTS, [VoiceSettings("en-us"), VoiceSettings("en+f2")] * 2)
    lines = []
    for i, (wave, text) in enumerate(zip(waves, TEXTS, strict=True)):
        sf.write(root / "audio" / f"{i}.wav", wave, 16_000)
        lines.append(json.dumps({"audio": f"audio/{i}.wav", "text": text}))
    (root / "speech.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def judge_dir(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("judge") / "judge"
    result = runner.invoke(judge_app, ["train", str(corpus / "speech.jsonl"), "-o", str(out), *FAST])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("command", [[], ["train"], ["transcribe"]], ids=lambda c: " ".join(c) or "root")
def test_every_command_has_help_with_an_example(command):
    result = runner.invoke(judge_app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output
    if command:
        assert "speechgpt judge" in result.output  # the example


def test_train_defaults_are_the_library_defaults():
    defaults = {name: p.default for name, p in inspect.signature(train).parameters.items()}
    library = JudgeTrainArgs()
    assert defaults["threads"] == library.num_threads
    for name in ("steps", "batch_seconds", "valid_every", "seed"):
        assert defaults[name] == getattr(library, name), name


def test_train_writes_a_loadable_judge_and_reports_validation(judge_dir):
    model = JudgeASR.from_pretrained(judge_dir, device="cpu")
    # 4 items with the default 5% held out: round(0.2) = 0 for validation, so all four train.
    assert model.info["train_items"] == "4" and model.info["steps"] == "4"


def test_train_with_a_validation_manifest(corpus, tmp_path):
    out = tmp_path / "judge"
    manifest = str(corpus / "speech.jsonl")
    result = runner.invoke(judge_app, ["train", manifest, "-o", str(out), "--valid", manifest, *FAST])
    assert result.exit_code == 0, result.output
    assert "validating on 4" in result.stderr
    assert "validation CER" in result.stderr
    assert "valid_cer" in JudgeASR.from_pretrained(out).info


def test_train_holds_out_a_share_for_validation(corpus, tmp_path):
    out = tmp_path / "judge"
    args = ["train", str(corpus / "speech.jsonl"), "-o", str(out), "--valid-fraction", "0.25", *FAST]
    result = runner.invoke(judge_app, args)
    assert result.exit_code == 0, result.output
    assert "training on 3 recording(s), validating on 1" in result.stderr


def test_train_user_errors_are_one_line_exit_2(corpus, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"audio": "audio/0.wav"}\n')
    result = runner.invoke(judge_app, ["train", str(bad), "-o", str(tmp_path / "j"), *FAST])
    assert result.exit_code == 2
    assert "record 1 has no 'text' string" in result.stderr and "Traceback" not in result.output
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"audio": "nowhere.wav", "text": "hi"}\n')
    result = runner.invoke(judge_app, ["train", str(missing), "-o", str(tmp_path / "j"), *FAST])
    assert result.exit_code == 2
    assert "nowhere.wav: file not found" in result.stderr
    assert not (tmp_path / "j").exists()


def test_transcribe_to_stdout_matches_the_library(corpus, judge_dir):
    paths = [str(corpus / "audio" / f"{i}.wav") for i in range(2)]
    result = runner.invoke(judge_app, ["transcribe", "--judge", str(judge_dir), *paths, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    model = JudgeASR.from_pretrained(judge_dir, device="cpu")
    assert records == [{"audio": p, "text": t} for p, t in zip(paths, model.transcribe(paths), strict=True)]


def test_transcribe_a_manifest_to_a_file_skipping_bad_audio(corpus, judge_dir, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    out = tmp_path / "out.jsonl"
    args = ["transcribe", "--judge", str(judge_dir), str(corpus / "speech.jsonl"), str(bad), "-o", str(out)]
    result = runner.invoke(judge_app, [*args, "--batch-size", "3"])
    assert result.exit_code == 1
    assert "skipped" in result.stderr and "bad.wav" in result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["audio"] for r in records] == [str(corpus / "audio" / f"{i}.wav") for i in range(4)]
    again = runner.invoke(judge_app, args)  # resumes: only the bad file is tried again
    assert again.exit_code == 1
    assert "4 recording(s) already transcribed" in again.stderr
    assert [json.loads(line) for line in out.read_text().splitlines()] == records


def test_transcribe_without_a_judge_folder_is_a_user_error(corpus, tmp_path):
    result = runner.invoke(
        judge_app, ["transcribe", "--judge", str(tmp_path / "none"), str(corpus / "audio" / "0.wav")]
    )
    assert result.exit_code == 2
    assert "no such judge folder" in result.stderr


def test_train_with_a_lexicon_spells_transcripts_from_its_words(corpus, tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("\n".join(TEXTS) + "\nzebra\n")
    out = tmp_path / "judge"
    args = ["train", str(corpus / "speech.jsonl"), "-o", str(out), "--lexicon", str(words), *FAST]
    result = runner.invoke(judge_app, args)
    assert result.exit_code == 0, result.output
    assert "decoding: lexicon beam search (17 words" in result.stderr
    model = JudgeASR.from_pretrained(out, device="cpu")
    assert model.lexicon is not None and model.lexicon.counts["the"] == 4 and model.lexicon.counts["zebra"] == 1
    path = str(corpus / "audio" / "0.wav")
    heard = {}
    for decoding in ("lexicon", "greedy"):
        result = runner.invoke(judge_app, ["transcribe", "--judge", str(out), path, "--decoding", decoding])
        assert result.exit_code == 0, result.output
        heard[decoding] = json.loads(result.stdout)["text"]
    assert heard["lexicon"] == model.transcribe([path])[0]
    assert heard["greedy"] == model.transcribe([path], decoding="greedy")[0]
    assert set(heard["lexicon"].split()) <= set(model.lexicon.counts)


def test_lexicon_errors_are_one_line_exit_2(corpus, judge_dir, tmp_path):
    manifest = str(corpus / "speech.jsonl")
    result = runner.invoke(judge_app, ["train", manifest, "-o", str(tmp_path / "j"), "--lexicon", "nowhere.txt"])
    assert result.exit_code == 2 and "nowhere.txt: no such lexicon text file" in result.stderr
    accented = tmp_path / "accented.txt"
    accented.write_text("naïve\n")
    result = runner.invoke(judge_app, ["train", manifest, "-o", str(tmp_path / "j"), "--lexicon", str(accented)])
    assert result.exit_code == 2 and "cannot write" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "j").exists()  # refused before training
    audio = str(corpus / "audio" / "0.wav")
    result = runner.invoke(judge_app, ["transcribe", "--judge", str(judge_dir), audio, "--decoding", "lexicon"])
    assert result.exit_code == 2 and "has no lexicon.txt" in result.stderr
    result = runner.invoke(judge_app, ["transcribe", "--judge", str(judge_dir), audio, "--decoding", "beam"])
    assert result.exit_code == 2 and "expected greedy or lexicon" in result.stderr
