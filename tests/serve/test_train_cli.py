"""``speechgpt train ...`` through Typer's runner: help, estimate table, settings, a real short run, user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from speechgpt.serve.train_cli import train_app
from tests.train import corpus_lines, cross_modal_records, make_base_model, write_lines, write_records

runner = CliRunner()

TINY = ["--set", "hidden_size=32", "--set", "num_layers=2", "--set", "num_heads=2", "--set", "max_length=64"]
SET6 = ["--set", "batch_size=6", "--print-config"]
QUIET = ["--set", "device=cpu", "--set", "progress=false", "--set", "logging_steps=1"]


@pytest.mark.parametrize(
    "command",
    [[], ["stage0"], ["stage1"], ["stage2"], ["stage3"], ["estimate"], ["accelerate-config"]],
    ids=lambda c: " ".join(c) or "train",
)
def test_every_command_has_help(command: list[str]) -> None:
    result = runner.invoke(train_app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    if command in (["stage1"], ["stage2"], ["stage3"]):
        assert "accelerate launch" in result.output and "speechgpt.serve.cli train" in result.output
        assert "--base-model" in result.output and "--resume" in result.output


def test_estimate_prints_the_table() -> None:
    result = runner.invoke(train_app, ["estimate", "--model-size", "7b", "--stage", "2", "--gpus", "8"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("LLaMA-7B + units: 6.747B params") and "8 GPU(s)" in lines[0]
    assert [line.split()[0] for line in lines[2:6]] == ["single", "DDP", "FSDP", "DeepSpeed"]
    # FSDP full shard on 8 GPUs with checkpointing: 16 bytes x 6.75e9 / 8 + gathered layers + activations.
    assert lines[4].split()[-1] == "16.5"

    as_json = runner.invoke(
        train_app, ["estimate", "--model-size", "13b", "--stage", "3", "--gpus", "2", "--strategy", "ddp", "--json"]
    )
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.stdout)
    assert data["stage"] == 3 and [r["strategy"] for r in data["rows"]] == ["ddp"]
    assert data["trainable_params"] == 40 * 2 * 8 * (5120 + 5120)


def test_estimate_rejects_an_unknown_model_size() -> None:
    result = runner.invoke(train_app, ["estimate", "--model-size", "huge"])
    assert result.exit_code == 2
    assert "unknown model size 'huge'" in result.output and "Traceback" not in result.output


def test_accelerate_config_prints_a_shipped_path() -> None:
    result = runner.invoke(train_app, ["accelerate-config", "fsdp"])
    assert result.exit_code == 0, result.output
    config = yaml.safe_load(Path(result.stdout.strip()).read_text(encoding="utf-8"))
    assert config["distributed_type"] == "FSDP"
    assert runner.invoke(train_app, ["accelerate-config", "tpu"]).exit_code == 2


def test_settings_merge_and_print(tmp_path) -> None:
    path = tmp_path / "stage2.yaml"
    path.write_text("learning_rate: 1.0e-4\nbatch_size: 2\ndata: from_file.jsonl\n", encoding="utf-8")
    result = runner.invoke(
        train_app,
        [*("stage2", "-c", str(path), "--data", "flag.jsonl", "--no-resume", "--max-steps", "5"), *SET6],
    )
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.stdout)
    assert printed["data"] == "flag.jsonl"  # a flag beats the file
    assert printed["batch_size"] == 6  # --set beats everything
    assert (printed["learning_rate"], printed["resume"], printed["max_steps"]) == (1e-4, False, 5)
    assert printed["max_length"] == 512 and printed["train_on_inputs"] is False  # released defaults
    assert result.stdout.startswith("# Stage2Config")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["stage2", "--set", "learning_rat=1"], "unknown key 'learning_rat' for Stage2Config"),
        (["stage3", "--set", "lora_r=big"], "lora_r must be a whole number, got 'big'"),
        (["stage1", "--data", "units.txt"], "base_model is required"),
        (["stage2", "--data", "nowhere.jsonl", "--base-model", "no_model"], "base model no_model does not exist"),
    ],
)
def test_user_errors_are_one_line(args: list[str], message: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(train_app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_stage0_then_stage2_run_from_the_command_line(tmp_path) -> None:
    corpus = write_lines(tmp_path / "corpus.txt", corpus_lines(60))
    out = tmp_path / "s0"
    result = runner.invoke(
        train_app,
        ["stage0", "--data", str(corpus), "-o", str(out), "--max-steps", "3", *TINY, *QUIET, "--set", "batch_size=4"],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["stage"] == 0 and summary["steps"] == 3 and summary["model_dir"] == str(out / "model")
    assert (out / "model" / "config.json").is_file()
    assert "stage 0: 3 steps, loss" in result.stderr

    # Stage 2 on padded rows, from a text-only base: the vocabulary is expanded on the way (released 1000 units).
    base = make_base_model(tmp_path / "base")
    records = write_records(tmp_path / "records.jsonl", cross_modal_records(8))
    options = ["--data", str(records), "--base-model", str(base), "-o", str(tmp_path / "s2"), "--max-steps", "2"]
    padded = ["--set", "packing=false", "--set", "batch_size=2", "--set", "max_length=256"]
    result = runner.invoke(train_app, ["stage2", *options, *QUIET, *padded])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["steps"] == 2 and summary["examples"] == summary["rows"] == 8
    tokenizer = json.loads((tmp_path / "s2" / "model" / "tokenizer.json").read_text())
    added = [t["content"] for t in tokenizer["added_tokens"]]
    assert added[-1006:][:2] == ["<0>", "<1>"] and added[-6:] == [
        "<sosp>",
        "<eosp>",
        "[Human]",
        "[SpeechGPT]",
        "<eoh>",
        "<eos>",
    ]
