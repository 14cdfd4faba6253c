"""The ``speechgpt data`` commands (build, merge, validate), run in-process through Typer's runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from speechgpt.data.builders import shard_path
from speechgpt.jsonl import read_jsonl
from speechgpt.serve.data_cli import data_app
from speechgpt.units.tokenizer import SpeechTokenizer
from tests.data.test_builders import INSTRUCTIONS, NUM_UNITS, tiny_tokenizer, write_speech_manifest
from tests.synth import write_corpus

runner = CliRunner()


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    return tiny_tokenizer().save_pretrained(tmp_path_factory.mktemp("tok") / "tokenizer")


@pytest.fixture(scope="module")
def wavs(tmp_path_factory) -> list[Path]:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "wavs", 5)


@pytest.fixture(scope="module")
def manifest(wavs, tmp_path_factory) -> Path:
    return write_speech_manifest(tmp_path_factory.mktemp("manifest"), wavs)


def _summary(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert len(lines) == 1, stdout  # stdout carries exactly the JSON summary
    return json.loads(lines[0])


def _build(*args: str):
    return runner.invoke(data_app, ["build", *args])


@pytest.mark.parametrize(
    "command", [[], ["build"], ["merge"], ["validate"], ["build-world"]], ids=lambda c: " ".join(c) or "data"
)
def test_every_command_has_help(command):
    result = runner.invoke(data_app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output and "--help" in result.output
    if not command:
        assert all(name in result.output for name in ("build", "merge", "validate", "build-world"))


def test_build_stage1_reports_bad_audio_and_exits_1(wavs, tokenizer_dir, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    out = tmp_path / "stage1.txt"
    result = _build("--stage", "1", str(wavs[0].parent), str(bad), "--tokenizer", str(tokenizer_dir), "-o", str(out))
    assert result.exit_code == 1, result.output
    summary = _summary(result.stdout)
    assert summary["output"] == str(out) and summary["records"] == 5 and summary["failed"] == 1
    assert summary["failures"] == [f"{bad}: unreadable or not audio (Format not recognised.)"]
    assert summary["hours"] > 0 and summary["units_per_record"]["count"] == 5
    assert f"failed {bad}: unreadable" in result.stderr
    assert "records written" in result.stderr and "units/record" in result.stderr  # the stats table
    tokenizer = SpeechTokenizer.from_pretrained(tokenizer_dir)
    assert out.read_text().splitlines() == [tokenizer.encode(w).to_string() for w in wavs]
    checked = runner.invoke(data_app, ["validate", str(out), "--num-units", str(NUM_UNITS)])
    assert checked.exit_code == 0 and checked.stdout == "" and "5 records, OK (units: 5)" in checked.stderr


def test_build_stage2_in_shards_then_merge_and_validate(manifest, tokenizer_dir, tmp_path):
    whole = tmp_path / "whole.jsonl"
    result = _build("--stage", "2", str(manifest), "--tokenizer", str(tokenizer_dir), "-o", str(whole), "--seed", "4")
    assert result.exit_code == 1  # the manifest's missing and corrupt recordings
    summary = _summary(result.stdout)
    assert summary["tasks"] == {"asr": 5, "tts": 5} and summary["failed"] == 2
    out = tmp_path / "sharded.jsonl"
    for shard in range(2):
        args = ["--stage", "2", str(manifest), "--tokenizer", str(tokenizer_dir), "-o", str(out), "--seed", "4"]
        result = _build(*args, "--shard", str(shard), "--num-shards", "2")
        assert _summary(result.stdout)["output"] == str(shard_path(out, shard, 2))
    assert not out.exists()
    merged = runner.invoke(data_app, ["merge", str(out)])
    assert merged.exit_code == 0, merged.output
    assert json.loads(merged.stdout) == {
        "output": str(out),
        "shards": [str(shard_path(out, 0, 2)), str(shard_path(out, 1, 2))],
        "lines": 10,
    }
    assert sorted(out.read_text().splitlines()) == sorted(whole.read_text().splitlines())
    checked = runner.invoke(data_app, ["validate", str(out), "--num-units", str(NUM_UNITS)])
    assert checked.exit_code == 0, checked.output
    assert checked.stdout == "" and "10 records, OK" in checked.stderr


def test_build_stage2_with_speed_perturbed_copies(manifest, tokenizer_dir, tmp_path):
    out = tmp_path / "speed.jsonl"
    args = ["--stage", "2", str(manifest), "--tokenizer", str(tokenizer_dir), "-o", str(out)]
    result = _build(*args, "--speed-perturb", "0.9,1.1")
    assert result.exit_code == 1  # the manifest's missing and corrupt recordings
    assert _summary(result.stdout)["tasks"] == {"asr": 15, "tts": 5}
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert sum(i.endswith("-asr-speed0.9") for i in ids) == 5 and sum(i.endswith("-asr-speed1.1") for i in ids) == 5
    for bad, message in (("fast", "expected comma-separated numbers"), ("1.0", "distinct factors in (0.5, 2)")):
        result = _build(*args, "--speed-perturb", bad, "--overwrite")
        assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.output
    result = _build("--stage", "1", str(manifest), "--tokenizer", str(tokenizer_dir), "-o", str(tmp_path / "u.txt"),
                    "--speed-perturb", "0.9")  # fmt: skip
    assert "--speed-perturb is ignored with --stage 1" in result.stderr


def test_interrupted_build_resumes_to_the_same_file(manifest, tokenizer_dir, tmp_path, monkeypatch):
    args = ["--stage", "2", str(manifest), "--tokenizer", str(tokenizer_dir)]
    full = tmp_path / "full.jsonl"
    _build(*args, "-o", str(full))
    original = SpeechTokenizer.encode
    calls = {"n": 0}

    def encode_then_ctrl_c(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, *a, **kw)

    monkeypatch.setattr(SpeechTokenizer, "encode", encode_then_ctrl_c)
    out = tmp_path / "resumed.jsonl"
    result = _build(*args, "-o", str(out))
    assert result.exit_code == 130 and "run the same command to resume" in result.stderr
    assert not out.exists() and len(Path(f"{out}.partial").read_text().splitlines()) == 4
    monkeypatch.setattr(SpeechTokenizer, "encode", original)
    result = _build(*args, "-o", str(out))
    assert result.exit_code == 1 and _summary(result.stdout)["resumed"] == 4
    assert "4 (resumed)" in result.stderr
    assert out.read_bytes() == full.read_bytes()
    again = _build(*args, "-o", str(out), "--seed", "9")
    assert again.exit_code == 2 and "other settings (seed)" in again.stderr and "--overwrite" in again.stderr
    rebuilt = _build(*args, "-o", str(out), "--seed", "9", "--overwrite")
    assert rebuilt.exit_code == 1 and _summary(rebuilt.stdout)["records"] == 10


def test_build_stage3_with_espeak_voices(tokenizer_dir, tmp_path):
    instructions = tmp_path / "alpaca.jsonl"
    instructions.write_text("".join(json.dumps(item) + "\n" for item in INSTRUCTIONS[:3]), encoding="utf-8")
    out = tmp_path / "stage3.jsonl"
    args = ["--stage", "3", str(instructions), "--tokenizer", str(tokenizer_dir), "-o", str(out)]
    result = _build(*args, "--voices", "en-us, en+f3", "--max-chars", "25")
    assert result.exit_code == 0, result.output
    summary = _summary(result.stdout)
    assert summary["skipped"] == 1 and summary["failed"] == 0 and summary["records"] == 8
    assert "skipped q1: question has 27 characters, more than the 25 spoken at most" in result.stderr
    names = ("speech2speech", "speech2text", "text2speech", "text2text")
    assert summary["tasks"] == {f"com-{name}": 2 for name in names}
    assert [r["id"] for r in read_jsonl(out)] == [f"{item}-{name}" for item in ("q0", "q2") for name in names]
    assert runner.invoke(data_app, ["validate", str(out), "--stage", "3", "--num-units", str(NUM_UNITS)]).exit_code == 0


def test_user_errors_exit_2_with_one_line(wavs, tokenizer_dir, tmp_path):
    out = str(tmp_path / "o.txt")
    wav = str(wavs[0])
    tok = str(tokenizer_dir)
    cases = [
        (["--stage", "4", wav, "--tokenizer", tok, "-o", out], "--stage"),
        (["--stage", "1", wav, "--tokenizer", str(tmp_path), "-o", out], "not a speech tokenizer folder"),
        (["--stage", "1", str(tmp_path / "none"), "--tokenizer", tok, "-o", out], "no such file or folder"),
        (["--stage", "1", wav, "--tokenizer", tok, "-o", out, "--shard", "3", "--num-shards", "2"], "--shard"),
        (["--stage", "2", str(tmp_path / "c.tsv"), "--tokenizer", tok, "-o", out], "no such corpus"),
        (["--stage", "3", wav, "--tokenizer", tok, "-o", out, "--voices", "en-us,xx-nope"], "unknown espeak voice"),
        (["--stage", "3", wav, "--tokenizer", tok, "-o", out, "--voices", ","], "names no voice"),
    ]
    for args, message in cases:
        result = _build(*args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.output


def test_options_of_other_stages_are_flagged(wavs, tokenizer_dir, tmp_path):
    out = tmp_path / "o.txt"
    result = _build("--stage", "1", str(wavs[0]), "--tokenizer", str(tokenizer_dir), "-o", str(out), "--voices", "en")
    assert result.exit_code == 0
    assert "warning: --voices is ignored with --stage 1" in result.stderr


def test_validate_reports_problems_with_line_numbers(manifest, tokenizer_dir, tmp_path):
    good = tmp_path / "good.jsonl"
    _build("--stage", "2", str(manifest), "--tokenizer", str(tokenizer_dir), "-o", str(good))
    lines = good.read_text().splitlines()
    broken = tmp_path / "broken.jsonl"
    record = json.loads(lines[2])
    record["plain_text"] = record["plain_text"].replace("<eoa>", "")
    broken.write_text("\n".join([lines[0], "{not json", json.dumps(record), *lines[3:]]) + "\n")
    result = runner.invoke(data_app, ["validate", str(good), str(broken), "--num-units", str(NUM_UNITS)])
    assert result.exit_code == 1
    problems = result.stdout.splitlines()
    assert problems[0].startswith(f"{broken}:2: json: not valid JSON")
    assert problems[1].startswith(f"{broken}:3: plain_text:") and "<eoa>" in problems[1]
    assert {problem.split(":")[1] for problem in problems} == {"2", "3"}  # nothing on the other lines
    assert f"{good}: 10 records, OK" in result.stderr and f"{broken}: 10 records, 2 invalid" in result.stderr
    assert runner.invoke(data_app, ["validate", str(good), "--num-units", "3"]).exit_code == 1  # unit ids too big


def test_validate_token_budget_with_a_hugging_face_tokenizer(manifest, tokenizer_dir, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel(vocab={"[UNK]": 0, "the": 1}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    hf_dir = tmp_path / "hf"
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]").save_pretrained(hf_dir)
    good = tmp_path / "good.jsonl"
    _build("--stage", "2", str(manifest), "--tokenizer", str(tokenizer_dir), "-o", str(good))
    args = ["validate", str(good), "--num-units", str(NUM_UNITS), "--tokenizer", str(hf_dir)]
    assert runner.invoke(data_app, [*args, "--max-tokens", "100000"]).exit_code == 0
    tight = runner.invoke(data_app, [*args, "--max-tokens", "20"])
    assert tight.exit_code == 1
    assert all(": tokens: prefix + plain_text is " in line for line in tight.stdout.splitlines())
    assert len(tight.stdout.splitlines()) == 10
    missing = runner.invoke(data_app, ["validate", str(good), "--max-tokens", "20"])
    assert missing.exit_code == 2 and "--max-tokens needs --tokenizer" in missing.stderr
    not_hf = runner.invoke(data_app, ["validate", str(good), "--max-tokens", "20", "--tokenizer", str(tmp_path / "x")])
    assert not_hf.exit_code == 2 and "Hugging Face tokenizer folder" in not_hf.stderr
