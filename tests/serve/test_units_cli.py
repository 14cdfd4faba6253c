"""The ``speechgpt units`` commands, run in-process (Typer's runner) and as real processes."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from speechgpt.serve.cli import app
from speechgpt.units.tokenizer import SpeechTokenizer
from tests.synth import SAMPLE_RATE, random_utterance, write_corpus

runner = CliRunner()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "wavs", 8)


@pytest.fixture(scope="module")
def tokenizer_dir(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    result = runner.invoke(
        app, ["units", "train-kmeans", str(corpus[0].parent), "-o", str(out), "-k", "12", "--niter", "8"]
    )
    assert result.exit_code == 0, result.output
    return out


def _records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize(
    "command", [[], ["units"], ["units", "encode"], ["units", "train-kmeans"]], ids=lambda c: " ".join(c) or "root"
)
def test_every_command_has_help(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output and "--help" in result.output


def test_train_kmeans_writes_a_loadable_tokenizer(tokenizer_dir):
    tokenizer = SpeechTokenizer.from_pretrained(tokenizer_dir)
    assert tokenizer.num_units == 12
    assert tokenizer.kmeans.info["extractor"] == "mfcc"
    assert int(tokenizer.kmeans.info["frames_seen"]) > 12


def test_encode_to_stdout_matches_the_library(corpus, tokenizer_dir):
    result = runner.invoke(app, ["units", "encode", str(corpus[0]), str(corpus[1]), "--tokenizer", str(tokenizer_dir)])
    assert result.exit_code == 0, result.output
    records = _records(result.stdout)
    tokenizer = SpeechTokenizer.from_pretrained(tokenizer_dir)
    assert [r["audio"] for r in records] == [str(corpus[0]), str(corpus[1])]
    for record, path in zip(records, corpus, strict=False):
        units = tokenizer.encode(path)
        assert record["units"] == units.ids.tolist()
        assert record["durations"] == units.durations.tolist()
        assert record["unit_string"] == units.to_string()
        assert set(record) == {"audio", "units", "durations", "unit_string"}


def test_bad_files_are_reported_skipped_and_fail_the_run(corpus, tokenizer_dir, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_text("this is not audio")
    empty = tmp_path / "empty.wav"
    sf.write(empty, random_utterance(0)[:0], SAMPLE_RATE)
    out = tmp_path / "units.jsonl"
    args = ["units", "encode", str(corpus[0]), str(bad), str(empty), str(tmp_path / "gone.wav"), str(corpus[1])]
    result = runner.invoke(app, [*args, "--tokenizer", str(tokenizer_dir), "-o", str(out)])
    assert result.exit_code == 1
    assert [r["audio"] for r in _records(out.read_text())] == [str(corpus[0]), str(corpus[1])]
    errors = result.stderr
    assert "bad.wav: unreadable" in errors and "empty.wav: empty" in errors and "gone.wav" in errors
    assert "Traceback" not in result.output


def test_user_errors_are_one_line_without_traceback(corpus, tmp_path):
    cases = [
        (["units", "encode", str(corpus[0])], "a tokenizer is needed"),
        (["units", "encode", str(corpus[0]), "--tokenizer", str(tmp_path)], "not a speech tokenizer folder"),
        (["units", "encode", str(tmp_path / "nothing_here")], "no such file or folder"),
        (
            [
                "units",
                "encode",
                str(corpus[0]),
                "--hubert",
                str(tmp_path / "x.pt"),
                "--kmeans",
                str(tmp_path / "k.bin"),
            ],
            "x.pt",
        ),
        (["units", "train-kmeans", str(corpus[0]), "-o", str(tmp_path / "t"), "-k", "5000"], "need at least"),
        (["units", "train-kmeans", str(corpus[0]), "-o", str(tmp_path / "t"), "--extractor", "hubert"], "--hubert"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.output


def test_shards_cover_the_inputs_once(corpus, tokenizer_dir, tmp_path):
    folder = str(corpus[0].parent)
    seen = []
    for shard in range(3):
        out = tmp_path / f"units.{shard}.jsonl"
        args = ["units", "encode", folder, "--tokenizer", str(tokenizer_dir), "-o", str(out)]
        result = runner.invoke(app, [*args, "--shard", str(shard), "--num-shards", "3"])
        assert result.exit_code == 0, result.output
        seen += [r["audio"] for r in _records(out.read_text())]
    assert sorted(seen) == sorted(map(str, corpus))


def test_interrupted_encode_resumes_to_the_same_output(corpus, tokenizer_dir, tmp_path, monkeypatch):
    folder = str(corpus[0].parent)
    full = tmp_path / "full.jsonl"
    assert (
        runner.invoke(app, ["units", "encode", folder, "--tokenizer", str(tokenizer_dir), "-o", str(full)]).exit_code
        == 0
    )

    out = tmp_path / "resumed.jsonl"
    calls = {"n": 0}
    original = SpeechTokenizer.encode

    def encode_then_ctrl_c(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SpeechTokenizer, "encode", encode_then_ctrl_c)
    result = runner.invoke(app, ["units", "encode", folder, "--tokenizer", str(tokenizer_dir), "-o", str(out)])
    assert result.exit_code == 130 and "run the same command to resume" in result.stderr
    assert not out.exists() and len(_records((tmp_path / "resumed.jsonl.partial").read_text())) == 3

    monkeypatch.setattr(SpeechTokenizer, "encode", original)
    result = runner.invoke(app, ["units", "encode", folder, "--tokenizer", str(tokenizer_dir), "-o", str(out)])
    assert result.exit_code == 0 and "3 recording(s) already encoded" in result.stderr
    assert out.read_bytes() == full.read_bytes()


@pytest.mark.slow
def test_killed_process_resumes_to_the_same_output(tokenizer_dir, tmp_path):
    """A real SIGKILL while the 5th recording (20 minutes long, seconds of work) is being encoded."""
    folder = tmp_path / "wavs"
    folder.mkdir()
    paths = [folder / f"{i:02d}.wav" for i in range(7)]
    for i, path in enumerate(paths):
        sf.write(path, random_utterance(100 + i), SAMPLE_RATE)
    noise = 0.1 * np.random.default_rng(0).standard_normal(SAMPLE_RATE * 1200)
    sf.write(paths[4], noise.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
    cli = [
        sys.executable,
        "-m",
        "speechgpt.serve.cli",
        "units",
        "encode",
        str(folder),
        "--tokenizer",
        str(tokenizer_dir),
    ]
    out = tmp_path / "units.jsonl"
    partial = tmp_path / "units.jsonl.partial"
    proc = subprocess.Popen([*cli, "-o", str(out)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (partial.exists() and partial.read_text().count("\n") >= 4):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert partial.read_text().count("\n") == 4 and not out.exists()

    resumed = subprocess.run([*cli, "-o", str(out)], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "4 recording(s) already encoded" in resumed.stderr
    fresh = tmp_path / "fresh.jsonl"
    subprocess.run([*cli, "-o", str(fresh)], check=True, capture_output=True)
    assert out.read_bytes() == fresh.read_bytes()
    assert [r["audio"] for r in _records(out.read_text())] == list(map(str, paths))
