"""``speechgpt vocode``: released checkpoint or our folder -> WAV equal to the reference waveform."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from speechgpt.audio import SAMPLE_RATE
from speechgpt.convert.fairseq_hifigan import convert_fairseq_hifigan
from speechgpt.serve.cli import app
from tests.hifigan_reference import (
    TINY_FAIRSEQ_CONFIG,
    duration_rounding_margin,
    random_released_state_dict,
    reference_generator,
    reference_synthesize,
)

runner = CliRunner()
# write_wav rounds to 16-bit PCM: half a step of quantisation, plus the float parity tolerance.
WAV_TOLERANCE = 0.5 / 2**15 + 1e-5
UNITS = [7, 3, 41, 41, 0, 19, 26, 5, 33, 12, 48, 2]


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A tiny vocoder in the released formats: ``{"generator": sd}`` file and fairseq ``config.json``."""
    folder = tmp_path_factory.mktemp("released")
    state = random_released_state_dict(TINY_FAIRSEQ_CONFIG, seed=5)
    assert duration_rounding_margin(state, TINY_FAIRSEQ_CONFIG, UNITS) > 1e-3
    torch.save({"generator": state}, folder / "g_00500000")
    (folder / "config.json").write_text(json.dumps(TINY_FAIRSEQ_CONFIG))
    ours = convert_fairseq_hifigan(folder / "g_00500000", folder / "ours")
    return {"state": state, "checkpoint": folder / "g_00500000", "config": folder / "config.json", "ours": ours}


def unit_text(ids: list[int]) -> str:
    return "<sosp>" + "".join(f"<{i}>" for i in ids) + "<eosp>"


def read_wav(path) -> np.ndarray:
    wave, rate = sf.read(path, dtype="float32")
    assert rate == SAMPLE_RATE and wave.ndim == 1
    return wave


def run_ok(args: list[str]):
    result = runner.invoke(app, ["vocode", *args])
    assert result.exit_code == 0, result.output
    return result


def test_help():
    result = runner.invoke(app, ["vocode", "--help"])
    assert result.exit_code == 0 and "--vocoder" in result.output and "--no-dur-prediction" in result.output


@pytest.mark.parametrize("dur_prediction", [True, False], ids=["dur", "no-dur"])
@pytest.mark.parametrize("source", ["checkpoint", "checkpoint+config", "ours"])
def test_wav_equals_the_reference(released, tmp_path, source, dur_prediction):
    out = tmp_path / "out.wav"
    args = ["--vocoder", str(released["ours" if source == "ours" else "checkpoint"]), "-o", str(out)]
    if source == "checkpoint+config":
        args += ["--vocoder-config", str(released["config"])]
    # Model-output-like text: chatter around the span, a malformed token that is skipped.
    text = "sure: " + unit_text(UNITS).replace("<19>", "<19><-4><x>") + " bye <999>"
    args += ["--units", text, "--device", "cpu"]
    if not dur_prediction:
        args.append("--no-dur-prediction")
    result = run_ok(args)
    expected, durations = reference_synthesize(released["state"], TINY_FAIRSEQ_CONFIG, UNITS, dur_prediction)
    wave = read_wav(out)
    assert wave.shape == (320 * int(durations.sum()),) == expected.shape
    assert np.abs(wave - expected.numpy()).max() <= WAV_TOLERANCE
    assert f"wrote {out}: {len(UNITS)} units" in result.stderr


def test_units_file_with_text_or_an_encode_record(released, tmp_path):
    checkpoint = str(released["checkpoint"])
    text_file = tmp_path / "units.txt"
    text_file.write_text(unit_text(UNITS) + "\n")
    run_ok(["--vocoder", checkpoint, "--units-file", str(text_file), "-o", str(tmp_path / "text.wav")])
    durations = [2, 1, 4, 1, 3, 1, 1, 6, 2, 1, 1, 2]
    record = {"audio": "clip.wav", "units": UNITS, "durations": durations, "unit_string": unit_text(UNITS)}
    record_file = tmp_path / "units.jsonl"
    record_file.write_text(json.dumps(record) + "\n\n")
    run_ok(["--vocoder", checkpoint, "--units-file", str(record_file), "-o", str(tmp_path / "predicted.wav")])
    run_ok(
        [
            "--vocoder",
            checkpoint,
            "--units-file",
            str(record_file),
            "-o",
            str(tmp_path / "timed.wav"),
            "--no-dur-prediction",
        ]
    )
    # Default: durations are predicted, so the record gives the same audio as the text.
    assert np.array_equal(read_wav(tmp_path / "predicted.wav"), read_wav(tmp_path / "text.wav"))
    # --no-dur-prediction: the record's own durations (resynthesis with the original timing).
    frames = torch.repeat_interleave(torch.tensor(UNITS), torch.tensor(durations)).tolist()
    expected = reference_generator(released["state"], TINY_FAIRSEQ_CONFIG, frames).numpy()
    timed = read_wav(tmp_path / "timed.wav")
    assert timed.shape == (320 * sum(durations),) and np.abs(timed - expected).max() <= WAV_TOLERANCE


def test_user_errors_are_one_line_without_traceback(released, tmp_path):
    checkpoint, config = str(released["checkpoint"]), str(released["config"])
    out = str(tmp_path / "out.wav")
    two_records = tmp_path / "two.jsonl"
    two_records.write_text('{"units": [1]}\n{"units": [2]}\n')
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"units": [1, 2]\n')
    no_units_field = tmp_path / "nofield.jsonl"
    no_units_field.write_text('{"unit_string": "<sosp><1><eosp>"}\n')
    bad_durations = tmp_path / "baddur.jsonl"
    bad_durations.write_text('{"units": [1, 2], "durations": [1, 0]}\n')
    not_a_checkpoint = tmp_path / "notes.txt"
    not_a_checkpoint.write_text("hello")
    cases = [
        (["--vocoder", checkpoint, "--units", "hello there", "-o", out], "no units found in --units"),
        (["--vocoder", checkpoint, "--units", "<sosp><eosp><3>", "-o", out], "no units found in --units"),
        (
            ["--vocoder", checkpoint, "--units", unit_text([1, 50, 2]), "-o", out],
            "--units: unit <50> (position 1) is out of range; this vocoder knows units <0>..<49>",
        ),
        (["--vocoder", str(tmp_path / "g_missing"), "--units", "<1>", "-o", out], "g_missing: no such vocoder"),
        (
            ["--vocoder", checkpoint, "--units-file", str(tmp_path / "gone.txt"), "-o", out],
            "gone.txt: no such units file",
        ),
        (["--vocoder", checkpoint, "-o", out], "exactly one of --units TEXT or --units-file FILE"),
        (
            ["--vocoder", checkpoint, "--units", "<1>", "--units-file", str(two_records), "-o", out],
            "exactly one of --units",
        ),
        (["--vocoder", checkpoint, "--units-file", str(two_records), "-o", out], "holds 2 JSON records"),
        (["--vocoder", checkpoint, "--units-file", str(bad_json), "-o", out], "bad.jsonl:1: not valid JSON"),
        (["--vocoder", checkpoint, "--units-file", str(no_units_field), "-o", out], "with a 'units' list"),
        (
            ["--vocoder", checkpoint, "--units-file", str(bad_durations), "--no-dur-prediction", "-o", out],
            "durations must be >= 1",
        ),
        (
            ["--vocoder", str(released["ours"]), "--vocoder-config", config, "--units", "<1>", "-o", out],
            "--vocoder-config is only for a checkpoint file",
        ),
        (
            ["--vocoder", str(not_a_checkpoint), "--units", "<1>", "-o", out],
            "notes.txt: not a readable torch checkpoint",
        ),
        (["--vocoder", checkpoint, "--units", "<1>", "-o", out, "--device", "abacus"], "--device 'abacus'"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["vocode", *args])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.wav").exists()
