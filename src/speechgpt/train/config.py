"""Run settings of the training stages: one dataclass per stage, filled from defaults, a YAML/JSON file and
``key=value`` overrides.

The defaults of stages 1-3 are the released SpeechGPT recipe (``../shared/DESIGN.md``): stage 1 packs unit text
into blocks of 1024 tokens; stage 2 fine-tunes the whole model with lr 2e-5, max length 512, 3 epochs, loss on
the response; stage 3 trains LoRA (r 8, alpha 16, dropout 0.05 on ``q_proj``/``v_proj``) with lr 2e-5 and max
length 1024. Stage 0 exists only in the embedded world: it trains a text tokenizer and a tiny Llama from nothing.

Every field is checked when a config is built, so a typo in a file or a ``--set`` fails before any model loads.
This module imports neither torch nor transformers.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from speechgpt.constants import RELEASED_NUM_UNITS

__all__ = [
    "ATTENTIONS",
    "LR_SCHEDULERS",
    "PRECISIONS",
    "RELEASED_NUM_UNITS",
    "STAGE_CONFIGS",
    "ConfigError",
    "Stage0Config",
    "Stage1Config",
    "Stage2Config",
    "Stage3Config",
    "TrainConfig",
    "config_to_dict",
    "load_config",
    "parse_overrides",
]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
"""``auto``: bf16 on a GPU that supports it, else fp16 on a GPU, else fp32 (CPU)."""
LR_SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")
"""Learning-rate schedules accepted (names of Hugging Face ``SchedulerType``)."""
ATTENTIONS = ("auto", "segmented", "sdpa", "eager", "flash_attention_2")
"""Attention kernels a config may ask for (see :attr:`TrainConfig.attention`)."""

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
_NONE = ("none", "null", "~", "")


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key and the reason."""


@dataclass
class TrainConfig:
    """What every stage shares: where data and models are, the optimiser, batching, saving and precision.

    Sizes count tokens; steps count optimiser updates.
    """

    data: str = ""
    """The builder's file for this stage (text, unit text or JSONL)."""
    output_dir: str = "runs/train"
    """Run folder: ``checkpoint-N/`` (the last ``save_total_limit`` kept), ``model/``, ``loss.json``, ``loss.png``."""
    base_model: str | None = None
    """Model folder to start from (a Hugging Face causal LM with its tokenizer, e.g. the previous stage's
    ``OUTPUT/model``); a run folder holding ``model/`` is accepted too."""
    seed: int = 0
    """Seed of model initialisation, data order, packing and dropout."""
    num_epochs: float = 1.0
    """Passes over the data (ignored when ``max_steps`` is set)."""
    max_steps: int | None = None
    """Stop after this many optimiser steps (overrides ``num_epochs``)."""
    learning_rate: float = 2e-5
    """Peak learning rate of AdamW."""
    lr_scheduler: str = "cosine"
    """Schedule after warm-up: one of :data:`LR_SCHEDULERS`."""
    warmup: float = 0.03
    """Linear warm-up: a fraction of all steps when below 1, else a number of steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Clip gradients to this norm (0 disables clipping)."""
    batch_size: int = 4
    """Rows per device and micro-step (a packed row holds several examples)."""
    grad_accum: int = 1
    """Micro-steps accumulated per optimiser step."""
    max_length: int = 512
    """Longest row in tokens: the block size when packing, the truncation length otherwise."""
    packing: bool = True
    """Pack several examples into each row (without attention across them) instead of padding each one."""
    pack_length: int | None = None
    """Longest packed row (stages 2/3); ``None``: ``max_length``. Longer rows waste less on CPU (e.g. 2048)."""
    share_prefix: bool = True
    """Packed rows of stages 2/3 hold the prompt start that all examples share (the meta instruction) once, and
    each example attends to it as if it were its own: the same loss and gradients, with the prefix computed once
    per row instead of once per example. Needs the ``segmented`` attention kernel (``attention=auto`` picks it);
    other kernels pack without sharing."""
    attention: str = "auto"
    """Attention kernel: ``auto`` (per-example causal sdpa for packed rows, the model's default otherwise),
    ``segmented``, ``sdpa``, ``eager`` or ``flash_attention_2`` (GPUs with flash-attn installed)."""
    logging_steps: int = 10
    """Log loss, learning rate and tokens/s every this many steps (the loss curve's resolution)."""
    save_steps: int = 500
    """Write a checkpoint every this many steps (atomically: a temporary folder renamed when complete)."""
    save_total_limit: int = 2
    """Keep only the last this many checkpoints."""
    precision: str = "auto"
    """One of :data:`PRECISIONS`."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: far less memory for ~30% more compute."""
    resume: bool = True
    """Continue from the last checkpoint in ``output_dir`` when there is one."""
    num_units: int | None = None
    """Speech units in the vocabulary; ``None`` keeps the base model's if expanded, else the released 1000."""
    unit_init_tokenizer: str | None = None
    """A unit tokenizer folder whose features come from a CTC recogniser (the embedded world's): when this stage
    adds the speech vocabulary, each unit row starts at the letters that recogniser reads in the unit's k-means
    centre instead of at the mean of the text rows (:mod:`speechgpt.lm.unit_init`); with ``num_units`` None the
    vocabulary gets that tokenizer's units. Unused when the base model already has the speech vocabulary."""
    device: str | None = None
    """``cpu`` forces the CPU, ``cuda`` requires a GPU; ``None`` lets accelerate choose (a GPU when present).
    Several GPUs: ``accelerate launch`` with a shipped config."""
    dataloader_workers: int = 0
    """Worker processes that collate batches (0: in the training process)."""
    progress: bool = True
    """Show the progress bar on stderr."""

    def __post_init__(self) -> None:
        _check_fields(self)
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.attention not in ATTENTIONS:
            raise ConfigError(f"attention must be one of {', '.join(ATTENTIONS)}, got {self.attention!r}")
        if self.pack_length is not None and self.pack_length < self.max_length:
            raise ConfigError(f"pack_length ({self.pack_length}) must be at least max_length ({self.max_length})")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ConfigError(f"lr_scheduler must be one of {', '.join(LR_SCHEDULERS)}, got {self.lr_scheduler!r}")
        _positive(self, "learning_rate", "batch_size", "grad_accum", "max_length", "logging_steps", "save_steps")
        _positive(self, "save_total_limit", "num_epochs")
        _non_negative(self, "warmup", "weight_decay", "max_grad_norm", "dataloader_workers")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ConfigError(f"max_steps must be positive (or none), got {self.max_steps}")
        if self.warmup >= 1 and self.warmup != int(self.warmup):
            raise ConfigError(f"warmup must be a fraction below 1 or a whole number of steps, got {self.warmup}")
        if self.num_units is not None and self.num_units <= 0:
            raise ConfigError(f"num_units must be positive (or none), got {self.num_units}")
        if self.device not in (None, "cpu", "cuda"):
            raise ConfigError(
                f"device must be cpu, cuda or none (several GPUs: accelerate launch), got {self.device!r}"
            )
        if not self.output_dir:
            raise ConfigError("output_dir must not be empty")


@dataclass
class Stage0Config(TrainConfig):
    """Stage 0 (embedded world only): a text tokenizer and a tiny Llama trained from nothing on a text corpus.

    ``data`` is plain text, one sentence per line; lines are packed into blocks of ``max_length`` tokens (in a new
    order every epoch with ``reshuffle_lines``).
    """

    output_dir: str = "runs/stage0"
    learning_rate: float = 1e-3
    max_length: int = 256
    batch_size: int = 16
    warmup: float = 0.05
    weight_decay: float = 0.01
    tokenizer_vocab_size: int = 512
    """Byte-level BPE vocabulary of the text tokenizer (before the speech tokens are added in stage 1)."""
    tokenizer_min_frequency: int = 2
    """Pairs seen fewer times are not merged."""
    tokenizer_prompt_copies: int = 20
    """Copies of the meta instruction and turn template added to the tokenizer's training text, so that the
    prompt every stage-2/3 example starts with encodes in ~65 tokens instead of ~290 (0: the corpus alone)."""
    hidden_size: int = 256
    """Width of the tiny Llama."""
    num_layers: int = 4
    """Decoder layers of the tiny Llama."""
    num_heads: int = 4
    """Attention heads of the tiny Llama."""
    intermediate_size: int | None = None
    """MLP width; ``None`` lets :func:`speechgpt.lm.tiny_llama_config` choose."""
    max_position_embeddings: int = 2048
    """Longest sequence the model will ever see (stages 1-3 and inference included)."""
    reshuffle_lines: bool = False
    """Pack the lines in a new seeded order every epoch. The world's lines are independent facts and questions;
    packed once, every epoch shows each line after the same neighbours, and a long run learns the corpus by its
    neighbours instead of by its questions: 24 epochs of the demo's corpus reached loss 0.02, yet only 35 of 60
    typed training questions, asked alone, were answered right; reshuffled, 24 epochs answered 57 (loss 0.64), and
    25 of 60 held-out ones (6 after the demo's 8 epochs).
    Off by default: the whole demo with it (8 epochs) measured held-out ASR WER 21.1% against 23.6%, but spoken
    questions answered in text 18% against 27% (30 questions) and TTS judge WER 30.1% against 24.9%."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive(self, "tokenizer_vocab_size", "tokenizer_min_frequency", "hidden_size", "num_layers", "num_heads")
        _positive(self, "max_position_embeddings")
        _non_negative(self, "tokenizer_prompt_copies")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads})")
        if self.intermediate_size is not None and self.intermediate_size <= 0:
            raise ConfigError(f"intermediate_size must be positive (or none), got {self.intermediate_size}")
        if self.max_length > self.max_position_embeddings:
            raise ConfigError(
                f"max_length ({self.max_length}) exceeds max_position_embeddings ({self.max_position_embeddings})"
            )
        if self.reshuffle_lines and not self.packing:
            raise ConfigError("reshuffle_lines needs packing: unpacked rows are already shuffled every epoch")


@dataclass
class Stage1Config(TrainConfig):
    """Stage 1, modality-adaptation pretraining: a causal LM on unit text (one ``<sosp>...<eosp>`` per line),
    packed into blocks of ``max_length`` = 1024 tokens as released. Expands the vocabulary when the base lacks it.
    """

    output_dir: str = "runs/stage1"
    max_length: int = 1024
    learning_rate: float = 2e-4


@dataclass
class Stage2Config(TrainConfig):
    """Stage 2, cross-modal instruction fine-tuning of the whole model on JSONL records (released: lr 2e-5, max
    length 512, 3 epochs, loss on the response)."""

    output_dir: str = "runs/stage2"
    learning_rate: float = 2e-5
    max_length: int = 512
    num_epochs: float = 3.0
    train_on_inputs: bool = False
    """Also put the loss on the meta instruction and the human turn (everything but the BOS)."""


@dataclass
class Stage3Config(TrainConfig):
    """Stage 3, chain-of-modality instruction fine-tuning with LoRA (released: r 8, alpha 16, dropout 0.05 on
    ``q_proj``/``v_proj``, max length 1024, lr 2e-5). Saves the adapter (``OUTPUT/adapter``) and the merged model
    (``OUTPUT/model``)."""

    output_dir: str = "runs/stage3"
    learning_rate: float = 2e-5
    max_length: int = 1024
    num_epochs: float = 3.0
    train_on_inputs: bool = False
    """Also put the loss on the meta instruction and the human turn (everything but the BOS)."""
    lora_r: int = 8
    """LoRA rank."""
    lora_alpha: int = 16
    """LoRA scale numerator (the update is scaled by alpha / r)."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA input."""
    lora_target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    """Linear layers that get an adapter (names inside each decoder layer)."""
    replay_data: str | None = None
    """Records of an earlier stage (stage 2's JSONL) mixed into this stage's, so that the cross-modal instructions
    it taught are not forgotten. The release trains stage 3 on chain-of-modality records alone; a 3.5M-parameter
    model trained that way answers a transcription request with an answer (held-out ASR WER 0.35 -> 0.93)."""
    replay_fraction: float = 0.25
    """Replayed records per record of ``data`` (drawn without replacement with ``seed``, at most the whole file)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive(self, "lora_r", "lora_alpha")
        _non_negative(self, "replay_fraction")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not self.lora_target_modules or not all(self.lora_target_modules):
            raise ConfigError(f"lora_target_modules must name at least one module, got {self.lora_target_modules!r}")


STAGE_CONFIGS: dict[int, type[TrainConfig]] = {0: Stage0Config, 1: Stage1Config, 2: Stage2Config, 3: Stage3Config}
"""The config class of each stage."""

C = TypeVar("C", bound=TrainConfig)


def _positive(config: TrainConfig, *names: str) -> None:
    for name in names:
        if getattr(config, name) <= 0:
            raise ConfigError(f"{name} must be positive, got {getattr(config, name)}")


def _non_negative(config: TrainConfig, *names: str) -> None:
    for name in names:
        if getattr(config, name) < 0:
            raise ConfigError(f"{name} must not be negative, got {getattr(config, name)}")


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _coerce(name: str, annotation: Any, value: Any) -> Any:
    """``value`` (from a file, typed, or from the command line, a string) as a value of ``annotation``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
            return None
        errors = []
        for option in options:
            try:
                return _coerce(name, option, value)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{name}: {value!r} is not a {_type_name(annotation)}")
    if origin is tuple:
        items = [s.strip() for s in value.split(",")] if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(v, str) for v in items):
            raise ConfigError(f"{name} must be a list of strings (or comma-separated), got {value!r}")
        return tuple(v for v in items if v)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                number = float(value.replace("_", ""))
            except ValueError:
                number = None
            if number is not None and number.is_integer():
                return int(number)
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    if annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, Path):
            return str(value)
        raise ConfigError(f"{name} must be a string, got {value!r}")
    raise TypeError(f"unsupported config field type {annotation!r} for {name}")  # a bug in a config class


def _check_fields(config: TrainConfig) -> None:
    """Coerce every field to its declared type (so ``TrainConfig(batch_size="8")`` is rejected or fixed)."""
    for name, annotation in _field_types(type(config)).items():
        setattr(config, name, _coerce(name, annotation, getattr(config, name)))


def _unknown_key(cls: type, key: str, source: str) -> ConfigError:
    names = [f.name for f in fields(cls)]
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{source}: unknown key {key!r} for {cls.__name__}{hint}; valid keys: {', '.join(names)}")


def parse_overrides(overrides: Sequence[str]) -> dict[str, str]:
    """``["lr=1e-3", "packing=false"]`` -> ``{"lr": "1e-3", "packing": "false"}``; the later of two wins.

    Raises:
        ConfigError: for an item without ``=`` or with an empty key.
    """
    result: dict[str, str] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        result[key.strip().replace("-", "_")] = value.strip()
    return result


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # json.JSONDecodeError, yaml.YAMLError: the file is the user's, not a bug of ours
        raise ConfigError(f"{path}: cannot parse ({e})") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value, got {type(data).__name__}")
    return data


def load_config(
    cls: type[C],
    path: str | Path | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    **values: Any,
) -> C:
    """Build a stage config: defaults, then the file, then ``values`` (CLI flags), then ``overrides`` (``--set``).

    Args:
        cls: The stage's config class, e.g. :class:`Stage2Config`.
        path: A YAML (``.yaml``/``.yml``) or JSON (``.json``) file of ``key: value`` pairs.
        overrides: ``key=value`` strings (or a mapping); values are converted to the field's type.
        values: Typed values, e.g. from dedicated command-line flags; ``None`` means "not given".

    Raises:
        ConfigError: for an unknown key (naming the valid ones), a value of the wrong type or an invalid setting.
        FileNotFoundError: if ``path`` does not exist.
    """
    merged: dict[str, Any] = {}
    names = {f.name for f in fields(cls)}
    sources: list[tuple[str, Mapping[str, Any]]] = []
    if path is not None:
        sources.append((str(path), _read_file(Path(path))))
    sources.append(("options", {k: v for k, v in values.items() if v is not None}))
    if isinstance(overrides, Mapping):
        sources.append(("--set", dict(overrides)))
    else:
        sources.append(("--set", parse_overrides(overrides)))
    types_ = _field_types(cls)
    for source, mapping in sources:
        for key, value in mapping.items():
            key = str(key).replace("-", "_")
            if key not in names:
                raise _unknown_key(cls, key, source)
            merged[key] = _coerce(key, types_[key], value)
    try:
        return cls(**merged)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from e


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """The config as plain JSON/YAML-ready values (tuples as lists); :func:`load_config` reads it back."""
    data = dataclasses.asdict(config)
    for key, value in data.items():
        if isinstance(value, tuple):
            data[key] = list(value)
    return data
