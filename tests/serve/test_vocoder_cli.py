"""The ``speechgpt vocoder train`` command, run in-process with Typer's runner."""

import json
import os
import signal

import pytest
import torch
from typer.testing import CliRunner

from speechgpt.serve.cli import app
from speechgpt.vocoder import UnitHiFiGAN
from speechgpt.vocoder import train as train_module
from speechgpt.vocoder.losses import mel_l1_loss
from speechgpt.vocoder.train import VocoderTrainer
from tests.vocoder.test_train import write_unit_corpus

runner = CliRunner()
TINY = ["--config", "tiny", "--batch-size", "2", "--segment-frames", "8", "--validate-every", "0", "--cpu"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convolutions spend more time in thread hand-offs than in arithmetic (badly so on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return write_unit_corpus(tmp_path_factory.mktemp("corpus"), 3)


@pytest.mark.parametrize("command", [["vocoder"], ["vocoder", "train"]], ids=" ".join)
def test_help(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output
    if command[-1] == "train":
        for option in ("--manifest", "--output", "--config", "--steps", "--resume", "--fresh", "--mixed-precision"):
            assert option in result.output, option


def test_three_steps_write_a_loadable_vocoder(manifest, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["vocoder", "train", "-m", str(manifest), "-o", str(out), "--steps", "3", *TINY])
    assert result.exit_code == 0, result.output
    assert f"wrote the vocoder to {out / 'final'}" in result.stderr
    vocoder = UnitHiFiGAN.from_pretrained(out / "final")
    assert vocoder.num_units == 50 and vocoder.synthesize([1, 2, 3], durations=[1, 2, 1]).shape == (4 * 320,)
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert [p.name for p in sorted(out.glob("ckpt-*"))] == ["ckpt-000003"]

    again = runner.invoke(app, ["vocoder", "train", "-m", str(manifest), "-o", str(out), "--steps", "4", *TINY])
    assert again.exit_code == 0, again.output
    assert "resuming" in again.stderr and "at step 3" in again.stderr
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_ctrl_c_finishes_the_step_saves_it_and_the_same_command_resumes(manifest, tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = ["vocoder", "train", "-m", str(manifest), "-o", str(out), "--steps", "4", "--checkpoint-every", "100"]
    original = VocoderTrainer.train_step

    def ctrl_c_during_step_3(self, batch):
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # arrives in the middle of the step
        return original(self, batch)

    monkeypatch.setattr(VocoderTrainer, "train_step", ctrl_c_during_step_3)
    # Whatever handled SIGINT before (Python's default, or SIG_IGN for a job started in the background by a shell).
    handler_before = signal.getsignal(signal.SIGINT)
    result = runner.invoke(app, [*args, *TINY])
    assert result.exit_code == 130, result.output
    assert "interrupted at step 3" in result.stderr and "run the same command to resume" in result.stderr
    assert (out / "ckpt-000003" / "trainer_state.json").is_file() and not (out / "final").exists()
    assert signal.getsignal(signal.SIGINT) is handler_before  # the handler is put back

    monkeypatch.setattr(VocoderTrainer, "train_step", original)
    result = runner.invoke(app, [*args, *TINY])
    assert result.exit_code == 0, result.output
    assert "at step 3" in result.stderr and (out / "final" / "model.safetensors").is_file()
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_a_step_cut_short_is_not_saved(manifest, tmp_path, monkeypatch):
    """A KeyboardInterrupt raised inside a step (weights half-updated) must not become a checkpoint."""
    out = tmp_path / "run"
    calls = []

    def mel_loss_then_ctrl_c(*args, **kwargs):  # the generator half of a step: the discriminators already moved
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return mel_l1_loss(*args, **kwargs)

    monkeypatch.setattr(train_module, "mel_l1_loss", mel_loss_then_ctrl_c)
    args = ["vocoder", "train", "-m", str(manifest), "-o", str(out), "--steps", "3", "--checkpoint-every", "100"]
    result = runner.invoke(app, [*args, *TINY])
    assert result.exit_code == 130, result.output
    assert len(calls) == 2 and list(out.glob("ckpt-*")) == []  # step 1 finished, but step 2 was cut short


def test_user_errors_are_one_line_without_traceback(manifest, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(manifest.read_text().splitlines()[0] + '\n{"audio": "x.wav", "units": [1, 2]}\n')
    cases = [
        (["-m", str(tmp_path / "none.jsonl")], "none.jsonl: no such manifest"),
        (["-m", str(bad)], "bad.jsonl:2: record lacks ['durations']"),
        (["-m", str(manifest), "--init-from", str(tmp_path / "v")], "not both"),
        (["-m", str(manifest), "--config", str(tmp_path / "nope.json")], "not a model preset"),
    ]
    for extra, message in cases:
        # later options win: the case's own options come last; --steps 1 bounds the work if a case went through
        result = runner.invoke(app, ["vocoder", "train", "-o", str(tmp_path / "out"), "--steps", "1", *TINY, *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.stderr, (extra, result.stderr)
        assert "Traceback" not in result.output
