"""The shared training loop: exact resume after a kill, atomic checkpoints, loss files, progress display."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file
from transformers import Trainer, TrainerCallback

import speechgpt.train.trainer as trainer_module
from speechgpt.lm import PromptEncoder, create_model, load_model, tiny_llama_config
from speechgpt.train.config import Stage2Config
from speechgpt.train.data import RowCollator, RowDataset, encode_records, pack_examples
from speechgpt.train.trainer import (
    LOSS_JSON,
    LOSS_PNG,
    STAGING_DIR,
    build_training_arguments,
    list_checkpoints,
    prepare_run_dir,
    resolve_precision,
    run_training,
)
from tests.train import TINY_MODEL, cross_modal_records, make_base_model

STEPS = 8


class Killed(Exception):
    """Stands for SIGKILL: the run stops dead, with whatever checkpoints it had written."""


class KillAfter(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Killed(f"killed at step {self.step}")


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, list[int]]], int, int]:
    path = make_base_model(tmp_path_factory.mktemp("base") / "model", expanded=True)
    _, tokenizer = load_model(path, device="cpu")
    examples = encode_records(cross_modal_records(24), PromptEncoder(tokenizer), max_length=256)
    return pack_examples(examples, 256, seed=0), len(tokenizer), tokenizer.pad_token_id


def _model(vocab_size: int):
    config = tiny_llama_config(vocab_size, **TINY_MODEL, max_position_embeddings=512)
    config.attention_dropout = 0.1  # dropout draws random numbers: resume must restore the RNG state too
    model = create_model(config, seed=0)
    model.config.use_cache = False
    return model


def _config(output_dir: Path, **changes) -> Stage2Config:
    values = {
        "output_dir": str(output_dir),
        "max_steps": STEPS,
        "batch_size": 2,
        "learning_rate": 3e-3,
        "warmup": 2,
        "logging_steps": 1,
        "save_steps": 2,
        "save_total_limit": 2,
        "device": "cpu",
        "progress": False,
    }
    values.update(changes)
    return Stage2Config(**values)


def _losses(run_dir: Path) -> dict[int, float]:
    log = json.loads((run_dir / LOSS_JSON).read_text())["log"]
    return {entry["step"]: entry["loss"] for entry in log}


def test_resume_after_kill_continues_the_same_curve(tmp_path, rows) -> None:
    data, vocab_size, pad_id = rows
    collate = RowCollator(pad_id, 8)

    straight = run_training(_model(vocab_size), RowDataset(data), collate, _config(tmp_path / "straight"))
    assert straight.steps == STEPS and straight.resumed_from is None

    interrupted = tmp_path / "interrupted"
    with pytest.raises(Killed):
        # Killed after step 5: checkpoint-4 is the last one written, step 5's work is lost.
        run_training(_model(vocab_size), RowDataset(data), collate, _config(interrupted), callbacks=[KillAfter(5)])
    assert [p.name for p in list_checkpoints(interrupted)] == ["checkpoint-2", "checkpoint-4"]

    # A fresh process would build a fresh model: the checkpoint restores weights, optimizer, schedule, RNG, data order.
    resumed = run_training(_model(vocab_size), RowDataset(data), collate, _config(interrupted))
    assert resumed.resumed_from == interrupted / "checkpoint-4"
    assert resumed.steps == STEPS

    expected, got = _losses(tmp_path / "straight"), _losses(interrupted)
    assert sorted(expected) == sorted(got) == list(range(1, STEPS + 1))
    for step in expected:
        assert got[step] == pytest.approx(expected[step], abs=1e-5), step
    assert expected[STEPS] < expected[1]  # it learned something
    final_a = load_file(tmp_path / "straight" / f"checkpoint-{STEPS}" / "model.safetensors")
    final_b = load_file(interrupted / f"checkpoint-{STEPS}" / "model.safetensors")
    assert final_a.keys() == final_b.keys()
    for name in final_a:
        torch.testing.assert_close(final_b[name], final_a[name], atol=1e-5, rtol=0)


def test_checkpoints_are_atomic_and_rotated(tmp_path, rows, monkeypatch) -> None:
    data, vocab_size, pad_id = rows
    run_dir = tmp_path / "run"
    original = Trainer._save_rng_state

    def fail_at_step_6(self, output_dir):
        if self.state.global_step == 6:
            raise OSError("disk full")
        return original(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", fail_at_step_6)
    with pytest.raises(OSError, match="disk full"):
        run_training(_model(vocab_size), RowDataset(data), RowCollator(pad_id), _config(run_dir))
    # The half-written checkpoint-6 never got its name: a resume can only pick a complete one.
    assert [p.name for p in list_checkpoints(run_dir)] == ["checkpoint-2", "checkpoint-4"]
    assert (run_dir / STAGING_DIR / "checkpoint-6" / "model.safetensors").is_file()
    assert not (run_dir / STAGING_DIR / "checkpoint-6" / "trainer_state.json").exists()
    assert json.loads((run_dir / "checkpoint-4" / "trainer_state.json").read_text())["global_step"] == 4

    # The next run clears the debris and resumes from the last complete checkpoint.
    assert prepare_run_dir(_config(run_dir)) == run_dir / "checkpoint-4"
    assert not (run_dir / STAGING_DIR).exists()
    # Starting over instead removes the old run's checkpoints (a later resume must not pick them up).
    assert prepare_run_dir(_config(run_dir, resume=False)) is None
    assert list_checkpoints(run_dir) == []


def test_loss_files_and_progress_display(tmp_path, rows) -> None:
    data, vocab_size, pad_id = rows
    buffer = io.StringIO()
    console = Console(file=buffer, width=200, force_terminal=False)
    config = _config(tmp_path / "run", max_steps=5, logging_steps=2, save_steps=100, progress=True)
    outcome = run_training(
        _model(vocab_size), RowDataset(data), RowCollator(pad_id), config, title="stage 2", console=console
    )
    # Trainer saves a final checkpoint; save_steps=100 wrote none before it.
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["checkpoint-5"]
    log = json.loads((tmp_path / "run" / LOSS_JSON).read_text())
    # The first step, every logging_steps, and the last step.
    assert [e["step"] for e in log["log"]] == [1, 2, 4, 5]
    shortest, longest = min(len(r["input_ids"]) for r in data), max(len(r["input_ids"]) for r in data)
    previous = 0
    for entry in log["log"]:
        assert entry["loss"] > 0 and entry["tokens_per_second"] > 0
        assert entry["learning_rate"] > 0 or entry["step"] == 1  # linear warm-up starts at 0
        rows = 2 * (entry["step"] - previous)  # batch_size 2 per step since the previous log
        assert rows * shortest <= entry["useful_tokens"] <= rows * longest
        previous = entry["step"]
    assert log["summary"]["train_useful_tokens"] == sum(e["useful_tokens"] for e in log["log"])
    assert log["summary"]["train_tokens_per_second"] > 0
    assert outcome.metrics["train_useful_tokens"] == log["summary"]["train_useful_tokens"]
    png = (tmp_path / "run" / LOSS_PNG).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    shown = buffer.getvalue()
    assert "stage 2" in shown and "5/5" in shown and "loss " in shown and "tok/s" in shown


def test_precision_choice_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_precision("auto", use_cpu=True) == "fp32"
    assert resolve_precision("fp32") == "fp32"
    with pytest.raises(ValueError, match="precision=fp16 needs a CUDA GPU"):
        resolve_precision("fp16", use_cpu=True)
    monkeypatch.setattr(trainer_module, "cpu_has_bf16", lambda: False)
    with pytest.raises(ValueError, match="precision=bf16 on the CPU needs native bf16"):
        resolve_precision("bf16", use_cpu=True)
    monkeypatch.setattr(trainer_module, "cpu_has_bf16", lambda: True)
    assert resolve_precision("bf16", use_cpu=True) == "bf16"
    assert resolve_precision("auto", use_cpu=True) == "fp32"  # bf16 on the CPU only when asked for
    args = build_training_arguments(Stage2Config(data="x", output_dir="unused", precision="bf16", device="cpu"))
    assert args.bf16 and args.use_cpu and not args.fp16
    fp32 = build_training_arguments(Stage2Config(data="x", output_dir="unused", precision="fp32"))
    assert not fp32.use_cpu and not fp32.bf16  # only bf16 pins the CPU; accelerate still picks the device otherwise
