"""A 2-process distributed run on the CPU: ``torchrun --nproc_per_node 2`` (gloo DDP) trains stage 2 through the
CLI and saves a model that ``from_pretrained`` loads.

FSDP is not tested here because it cannot run on the CPU through our code path (checked with torch 2.13,
accelerate 1.15, transformers 5.24): ``SpeechGPTTrainer`` gets FSDP from accelerate (``ACCELERATE_USE_FSDP`` and the
``FSDP_*`` variables that ``accelerate launch --config_file fsdp.yaml`` sets), and

- with ``FSDP_VERSION=1`` accelerate refuses in ``FullyShardedDataParallelPlugin.__post_init__``
  (``accelerate/utils/dataclasses.py``): "RuntimeError: There are currently no available devices found, must be
  one of 'XPU', 'CUDA', 'MLU', 'NPU', 'MUSA', or 'HPU'";
- with ``FSDP_VERSION=2`` accelerate silently keeps ``DistributedType.MULTI_CPU``: the model is wrapped in
  ``DistributedDataParallel`` and ``trainer.is_fsdp_enabled`` is False, i.e. the run is DDP, not FSDP.

A test of FSDP on CPU would therefore test DDP under another name; FSDP needs a GPU run (shipped ``fsdp.yaml``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from speechgpt.lm import load_model
from tests.train import cross_modal_records, make_base_model, write_records

WORLD_SIZE = 2
BATCH_SIZE = 2
RECORDS = 32
TIMEOUT_S = 60
"""Bound of the whole torchrun (it takes about 20 s on 2 CPU cores)."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _child_env() -> dict[str, str]:
    """The parent's environment with one thread per process and no accelerate/FSDP launch settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "FSDP_"))}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _torchrun_stage2(data: Path, base: Path, output: Path) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        str(WORLD_SIZE),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "speechgpt.serve.cli",
        "train",
        "stage2",
        "--data",
        str(data),
        "--base-model",
        str(base),
        "-o",
        str(output),
        *("--set", "device=cpu", "--set", "progress=false", "--set", "num_epochs=1", "--set", "warmup=0"),
        *("--set", f"batch_size={BATCH_SIZE}", "--set", "max_length=240", "--set", "learning_rate=1e-2"),
        *("--set", "logging_steps=1", "--set", "save_steps=1000"),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, env=_child_env(), check=False)


@pytest.mark.slow
def test_ddp_two_processes_on_cpu_train_stage2_and_save_a_loadable_model(tmp_path: Path) -> None:
    base = make_base_model(tmp_path / "base", expanded=True)
    data = write_records(tmp_path / "cross_modal.jsonl", cross_modal_records(RECORDS))
    output = tmp_path / "run"

    run = _torchrun_stage2(data, base, output)

    assert run.returncode == 0, f"torchrun failed ({run.returncode}):\n{run.stderr[-4000:]}"
    summaries = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1, f"expected one JSON summary (rank 0 only), got {run.stdout!r}"
    result = json.loads(summaries[0])
    assert result["stage"] == 2 and result["examples"] == RECORDS
    rows = result["rows"]
    assert rows % (WORLD_SIZE * BATCH_SIZE) == 0, f"{rows} rows: the sampler would pad, tokens would not add up"
    # Two ranks each took BATCH_SIZE rows per step: half the steps one process would need for the epoch.
    assert result["steps"] == rows // (WORLD_SIZE * BATCH_SIZE)
    # The useful tokens gathered over both ranks are exactly one epoch: each row was seen once, by one rank. Rows hold
    # the meta instruction once for two examples (shared prefix), so the examples' tokens exceed the rows'.
    assert result["train_useful_tokens"] == result["example_tokens_per_epoch"] > result["tokens_per_epoch"] > 0
    assert result["final_loss"] < result["first_loss"]
    curve = json.loads((output / "loss.json").read_text(encoding="utf-8"))["log"]
    assert [e["step"] for e in curve] == list(range(1, result["steps"] + 1))
    assert sum(e["useful_tokens"] for e in curve) == result["example_tokens_per_epoch"]

    model_dir = Path(result["model_dir"])
    assert model_dir == output / "model"
    hf_model = AutoModelForCausalLM.from_pretrained(model_dir)
    ours, tokenizer = load_model(model_dir, device="cpu")
    assert len(tokenizer) == hf_model.get_input_embeddings().weight.shape[0]
    assert "<sosp>" in tokenizer.get_vocab()
    trained = dict(hf_model.state_dict())
    for name, tensor in ours.state_dict().items():
        assert torch.equal(tensor, trained[name]), f"{name} differs between load_model and from_pretrained"
    before = load_file(base / "model.safetensors")
    changed = [name for name, tensor in before.items() if not torch.equal(tensor, trained[name])]
    assert "model.embed_tokens.weight" in changed
    assert any(".self_attn.q_proj." in name for name in changed)
    assert len(changed) == len(before), f"unchanged after training: {sorted(set(before) - set(changed))}"
