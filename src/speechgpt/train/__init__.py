"""The training stages of SpeechGPT on Hugging Face ``Trainer``/``accelerate``.

``run_stage0`` (embedded world: tokenizer + tiny Llama from nothing), ``run_stage1`` (unit-text pretraining),
``run_stage2`` (cross-modal instructions, full model), ``run_stage3`` (chain-of-modality, LoRA), each configured by
a dataclass (:mod:`speechgpt.train.config`). Multi-GPU runs use the shipped ``accelerate`` configs::

    accelerate launch --config_file "$(python -c 'import speechgpt.train as t; print(t.accelerate_config("fsdp"))')" \\
        -m speechgpt.serve.cli train stage2 --config stage2.yaml

Importing this package is cheap: the configs and the memory estimate need no torch, and the training code is
imported on first use of its names.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from speechgpt.train.config import (
    STAGE_CONFIGS,
    ConfigError,
    Stage0Config,
    Stage1Config,
    Stage2Config,
    Stage3Config,
    TrainConfig,
    load_config,
)
from speechgpt.train.estimate import estimate_memory

if TYPE_CHECKING:
    from speechgpt.train.stages import StageResult, run_stage, run_stage0, run_stage1, run_stage2, run_stage3

__all__ = [
    "ACCELERATE_CONFIGS",
    "STAGE_CONFIGS",
    "ConfigError",
    "Stage0Config",
    "Stage1Config",
    "Stage2Config",
    "Stage3Config",
    "StageResult",
    "TrainConfig",
    "accelerate_config",
    "estimate_memory",
    "load_config",
    "run_stage",
    "run_stage0",
    "run_stage1",
    "run_stage2",
    "run_stage3",
]

ACCELERATE_CONFIGS = ("single", "ddp", "fsdp", "zero3")
"""Shipped ``accelerate launch`` configs: one device, DDP, FSDP full shard (Llama decoder layers), DeepSpeed ZeRO-3."""
_CONFIG_DIR = Path(__file__).parent / "accelerate_configs"
_LAZY = {name: "speechgpt.train.stages" for name in ("StageResult", "run_stage", "run_stage0", "run_stage1")}
_LAZY.update({name: "speechgpt.train.stages" for name in ("run_stage2", "run_stage3")})


def accelerate_config(name: str) -> Path:
    """Path of a shipped accelerate config (``single``, ``ddp``, ``fsdp``, ``zero3``), for ``--config_file``.

    Raises:
        ValueError: for another name, listing the shipped ones.
    """
    if name not in ACCELERATE_CONFIGS:
        raise ValueError(f"no accelerate config {name!r}; shipped: {', '.join(ACCELERATE_CONFIGS)}")
    return _CONFIG_DIR / f"{name}.yaml"


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
