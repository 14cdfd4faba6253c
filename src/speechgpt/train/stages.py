"""The four training stages, each a function from its config to a trained model folder.

Every stage reads the file the data builder wrote, builds rows, trains with :func:`~speechgpt.train.trainer.
run_training` (atomic checkpoints, exact resume, loss curves) and saves ``OUTPUT/model`` (model + tokenizer, a
Hugging Face folder that the next stage's ``base_model`` points at):

- :func:`run_stage0` (embedded world only): text tokenizer + tiny Llama from nothing, causal LM on sentences;
- :func:`run_stage1`: modality adaptation, causal LM on unit sequences packed into blocks;
- :func:`run_stage2`: cross-modal instruction fine-tuning of the whole model, loss on the response;
- :func:`run_stage3`: chain-of-modality instruction fine-tuning with LoRA; also saves ``OUTPUT/adapter``.

Stages 1-3 expand the vocabulary when the base model lacks the speech tokens (idempotent, released order).
Each function reads top to bottom; what they share (loading, vocabulary, saving) are the small functions below.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from speechgpt.fileio import atomic_write_text
from speechgpt.prompt_format import CROSS_MODAL_INPUT, HUMAN_OPEN, META_INSTRUCTION, RESPONSE_OPEN
from speechgpt.train.config import (
    RELEASED_NUM_UNITS,
    ConfigError,
    Stage0Config,
    Stage1Config,
    Stage2Config,
    Stage3Config,
    TrainConfig,
    config_to_dict,
)
from speechgpt.train.data import (
    PackingStats,
    Row,
    RowCollator,
    RowDataset,
    encode_records,
    encode_text_lines,
    encode_unit_lines,
    pack_blocks,
    pack_examples,
    pad_examples,
    read_records,
    read_text_lines,
    use_segmented_attention,
)
from speechgpt.train.trainer import TrainOutcome, quiet_hf_progress, resolve_precision, run_training

__all__ = [
    "ADAPTER_DIR",
    "CONFIG_FILE",
    "MODEL_DIR",
    "StageResult",
    "resolve_base_model",
    "run_stage",
    "run_stage0",
    "run_stage1",
    "run_stage2",
    "run_stage3",
]

logger = logging.getLogger(__name__)

MODEL_DIR = "model"
"""Subfolder of a run holding the final model and tokenizer (stage 3: the merged model)."""
ADAPTER_DIR = "adapter"
"""Subfolder of a stage-3 run holding the LoRA adapter alone."""
CONFIG_FILE = "train_config.json"
"""The settings a run used, written next to its model."""
PAD_TO_MULTIPLE_OF = 8
"""Batch widths are rounded up to this (tensor-core friendly on GPUs, harmless on CPUs)."""


@dataclass
class StageResult:
    """What a stage produced."""

    stage: int
    output_dir: Path
    model_dir: Path
    """The trained model with its tokenizer (``from_pretrained``-loadable)."""
    steps: int
    final_loss: float | None
    """Last logged training loss."""
    first_loss: float | None
    """First logged training loss of the whole run (across resumes)."""
    data: PackingStats
    """Rows and tokens of one epoch."""
    metrics: dict[str, float] = field(default_factory=dict)
    """This session's ``train_runtime``, ``train_loss``, ``train_tokens_per_second`` (useful tokens)..."""
    loss_curve: list[dict[str, float]] = field(default_factory=list)
    adapter_dir: Path | None = None
    """Stage 3: the LoRA adapter."""
    resumed_from: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (without the full loss curve)."""
        return {
            "stage": self.stage,
            "output_dir": str(self.output_dir),
            "model_dir": str(self.model_dir),
            "adapter_dir": str(self.adapter_dir) if self.adapter_dir else None,
            "steps": self.steps,
            "first_loss": self.first_loss,
            "final_loss": self.final_loss,
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            "rows": self.data.rows,
            "examples": self.data.examples,
            "tokens_per_epoch": self.data.tokens,
            "example_tokens_per_epoch": self.data.example_tokens,
            "label_tokens_per_epoch": self.data.label_tokens,
            "fill": round(self.data.fill, 4),
            **{k: v for k, v in self.metrics.items() if k.startswith("train_")},
        }


# ---------------------------------------------------------------------------------------------------- shared


def resolve_base_model(base_model: str | None) -> Path:
    """The model folder of ``base_model``: the folder itself, or ``base_model/model`` for a run folder.

    Raises:
        ConfigError: if no base model is given.
        FileNotFoundError: if it holds no ``config.json`` (naming what it holds).
    """
    if not base_model:
        raise ConfigError("base_model is required: the model folder to start from (e.g. the previous stage's run)")
    path = Path(base_model)
    if (path / "config.json").is_file():
        return path
    if (path / MODEL_DIR / "config.json").is_file():
        return path / MODEL_DIR
    if not path.exists():
        raise FileNotFoundError(f"base model {path} does not exist")
    held = ", ".join(sorted(p.name for p in path.iterdir())) if path.is_dir() else "it is a file"
    raise FileNotFoundError(f"base model {path} has no config.json (nor {MODEL_DIR}/config.json); holds: {held}")


def _check_inputs(config: TrainConfig, *, needs_base: bool = True) -> None:
    """Fail on missing settings before any file is read or model loaded."""
    if not config.data:
        raise ConfigError("data is required: the training file the data builder wrote for this stage")
    if needs_base:
        resolve_base_model(config.base_model)


def replayed_records(config: Stage3Config, count: int) -> list[dict[str, Any]]:
    """``replay_fraction * count`` records of ``config.replay_data`` (none without it), the same ones for a seed.

    Raises:
        FileNotFoundError, DataError: for a missing or malformed replay file.
    """
    if not config.replay_data:
        return []
    pool = read_records(config.replay_data)
    wanted = min(len(pool), round(config.replay_fraction * count))
    chosen = random.Random(config.seed).sample(pool, wanted)
    logger.info("replaying %d of %d records of %s", wanted, len(pool), config.replay_data)
    return chosen


def _load_base(config: TrainConfig, *, frozen: bool = False) -> tuple[Any, Any]:
    """Model and tokenizer of ``config.base_model`` on the CPU (the trainer places them).

    Trained weights stay fp32 (mixed precision keeps fp32 masters); a frozen base (LoRA) is loaded in the
    compute precision to halve its memory.
    """
    from speechgpt.lm import load_model

    path = resolve_base_model(config.base_model)
    precision = resolve_precision(config.precision, use_cpu=config.device == "cpu")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32) if frozen else None
    with quiet_hf_progress():
        model, tokenizer = load_model(path, device="cpu", dtype=dtype)
    logger.info("loaded base model %s (%s parameters)", path, f"{model.num_parameters():,}")
    return model, tokenizer


def _speech_vocab(model: Any, tokenizer: Any, config: TrainConfig) -> tuple[Any, bool]:
    """The tokenizer's speech vocabulary, expanding tokenizer and model when they lack it (new unit rows start at
    their letters when ``config.unit_init_tokenizer`` names a recogniser's unit tokenizer).

    Returns ``(vocab, expanded_now)``. ``num_units=None`` keeps an existing vocabulary's size, else takes the unit
    tokenizer's or the release's.
    """
    from speechgpt.lm import SpeechVocab, expand_vocabulary

    num_units = config.num_units
    if "<0>" in tokenizer.get_vocab():
        existing = SpeechVocab.from_tokenizer(tokenizer, num_units)
        # Idempotent: makes sure the model's embeddings cover the vocabulary too.
        return expand_vocabulary(model, tokenizer, existing.num_units), False
    letters = _letters_tokenizer(config)
    if num_units is None:
        num_units = letters.num_units if letters is not None else RELEASED_NUM_UNITS
    vocab = expand_vocabulary(model, tokenizer, num_units)
    logger.info("expanded the vocabulary with %d units and 6 control tokens", vocab.num_units)
    if letters is not None:
        from speechgpt.lm.unit_init import init_units_from_letters

        try:
            init_units_from_letters(model, tokenizer, vocab, letters)
        except ValueError as error:
            raise ConfigError(f"unit_init_tokenizer {config.unit_init_tokenizer}: {error}") from error
    return vocab, True


def _letters_tokenizer(config: TrainConfig) -> Any:
    """The unit tokenizer named by ``config.unit_init_tokenizer`` (None when unset)."""
    if config.unit_init_tokenizer is None:
        return None
    from speechgpt.units import SpeechTokenizer

    try:
        return SpeechTokenizer.from_pretrained(config.unit_init_tokenizer)
    except (OSError, ValueError) as error:
        raise ConfigError(f"unit_init_tokenizer {config.unit_init_tokenizer}: {error}") from error


def _pad_id(tokenizer: Any) -> int:
    """The id pad positions get (never seen by the loss or by real tokens); eos when there is no pad token."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def reshuffled_blocks(
    sequences: list[list[int]], block_size: int, num_epochs: float, *, seed: int
) -> tuple[list[Row], float]:
    """Blocks of ``ceil(num_epochs)`` copies of the sequences, each copy packed in its own seeded order, and the
    epochs to train over them so that training sees as many tokens as ``num_epochs`` over one copy.

    The rows are a pure function of the arguments, so a resumed run trains on exactly the rows it started with.
    """
    copies = max(1, math.ceil(num_epochs))
    rng = random.Random(seed)
    rows: list[Row] = []
    for _ in range(copies):
        order = list(range(len(sequences)))
        rng.shuffle(order)
        rows.extend(pack_blocks([sequences[i] for i in order], block_size))
    return rows, num_epochs / copies


def _rows_per_line(sequences: list[list[int]], max_length: int) -> list[Row]:
    """One row per sequence, truncated (the unpacked alternative to :func:`pack_blocks`)."""
    return [{"input_ids": s[:max_length], "labels": s[:max_length]} for s in sequences if len(s) >= 2]


@contextlib.contextmanager
def _atomic_directory(path: Path) -> Iterator[Path]:
    """A temporary sibling folder that replaces ``path`` when the block finishes (for sharded saves)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if path.exists():  # move the old folder aside first: at every moment one complete folder has the name
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _save_trained(outcome: TrainOutcome, tokenizer: Any, path: Path, attention: str) -> None:
    """Save the trained model with its tokenizer as a Hugging Face folder, atomically, from the main process.

    Sharded runs (FSDP, ZeRO-3) gather the full state dict first (a collective: every rank calls this).
    """
    from speechgpt.lm import save_model

    trainer = outcome.trainer
    accelerator = trainer.accelerator
    model = accelerator.unwrap_model(trainer.model)
    model.config.use_cache = True  # training turned it off; generation wants it
    model.config._attn_implementation = attention
    with quiet_hf_progress():
        if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
            state_dict = accelerator.get_state_dict(trainer.model_wrapped)
            if accelerator.is_main_process:
                with _atomic_directory(path) as tmp:
                    model.save_pretrained(tmp, state_dict=state_dict)
                    tokenizer.save_pretrained(tmp)
        elif accelerator.is_main_process:
            save_model(model, tokenizer, path)
    accelerator.wait_for_everyone()


def _write_config(config: TrainConfig, outcome: TrainOutcome) -> None:
    if outcome.trainer.is_world_process_zero():
        atomic_write_text(Path(config.output_dir) / CONFIG_FILE, json.dumps(config_to_dict(config), indent=1) + "\n")


def _result(stage: int, config: TrainConfig, outcome: TrainOutcome, stats: PackingStats, **extra: Any) -> StageResult:
    curve = outcome.loss_curve
    return StageResult(
        stage=stage,
        output_dir=Path(config.output_dir),
        model_dir=Path(config.output_dir) / MODEL_DIR,
        steps=outcome.steps,
        final_loss=curve[-1]["loss"] if curve else None,
        first_loss=curve[0]["loss"] if curve else None,
        data=stats,
        metrics=outcome.metrics,
        loss_curve=curve,
        resumed_from=outcome.resumed_from,
        **extra,
    )


def _prepare_for_training(model: Any, config: TrainConfig, *, packed: bool) -> str:
    """Turn the KV cache off and pick the attention kernel; returns the kernel to restore before saving.

    ``attention=auto`` runs packed rows through :data:`~speechgpt.train.data.SEGMENTED_ATTENTION` (no attention
    across examples) and leaves anything else to the model's default.
    """
    # A cache during training would hide the packed position-id restarts from the mask builder, and waste memory.
    model.config.use_cache = False
    previous = model.config._attn_implementation
    choice = _attention_kernel(config, packed=packed)
    if choice == "segmented":
        use_segmented_attention(model)
    elif choice != "auto":
        try:
            model.set_attn_implementation(choice)
        except (ImportError, ValueError) as e:  # e.g. flash-attn not installed, or no GPU for it
            raise ConfigError(f"attention={choice} is not available here: {e}") from e
    return previous


def _attention_kernel(config: TrainConfig, *, packed: bool) -> str:
    """The ``attention`` setting with ``auto`` resolved for packed rows (``auto`` otherwise: the model's default)."""
    return "segmented" if config.attention == "auto" and packed else config.attention


def _pack_rows(examples: list[Any], config: TrainConfig) -> list[Row]:
    if not config.packing:
        return pad_examples(examples)
    share = config.share_prefix and _attention_kernel(config, packed=True) == "segmented"  # the kernel that reads them
    return pack_examples(examples, config.pack_length or config.max_length, seed=config.seed, share_prefix=share)


def _sharded_launch() -> bool:
    """Whether ``accelerate launch`` started this process with FSDP or DeepSpeed."""
    return any(os.environ.get(k, "").lower() == "true" for k in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"))


# ---------------------------------------------------------------------------------------------------- stages


def run_stage0(config: Stage0Config) -> StageResult:
    """Stage 0 (embedded world): train a byte-level BPE tokenizer and a tiny Llama from nothing on a text corpus.

    ``config.data`` holds one sentence per line. The model's vocabulary is the text tokenizer's; stage 1 adds the
    speech tokens.

    Raises:
        FileNotFoundError, DataError, ConfigError: for missing or unusable data or settings.
    """
    from speechgpt.lm import create_model, tiny_llama_config, train_text_tokenizer

    _check_inputs(config, needs_base=False)
    if config.base_model:
        raise ConfigError("stage 0 trains a model from nothing: base_model must not be set")
    lines = read_text_lines(config.data)
    # The prompt layout is in every stage-2/3 example; learning its merges keeps those prompts short.
    layout = [META_INSTRUCTION, f"{HUMAN_OPEN}{CROSS_MODAL_INPUT}{RESPONSE_OPEN}"] * config.tokenizer_prompt_copies
    tokenizer = train_text_tokenizer(
        lines + layout, vocab_size=config.tokenizer_vocab_size, min_frequency=config.tokenizer_min_frequency
    )
    model_config = tiny_llama_config(
        len(tokenizer),
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = create_model(model_config, seed=config.seed)
    logger.info("stage 0: tiny Llama of %s parameters, vocabulary %d", f"{model.num_parameters():,}", len(tokenizer))
    sequences = encode_text_lines(lines, tokenizer)
    return _train_on_blocks(0, config, model, tokenizer, sequences, reshuffle=config.reshuffle_lines)


def _train_on_blocks(
    stage: int, config: TrainConfig, model: Any, tokenizer: Any, sequences: list[list[int]], *, reshuffle: bool = False
) -> StageResult:
    """Stages 0 and 1: causal LM on token sequences cut into blocks of ``max_length`` (one row per sequence when
    ``packing`` is off), trained, saved with the tokenizer to ``OUTPUT/model``.

    With ``reshuffle`` (and packing), every epoch packs the sequences in a new order (:func:`reshuffled_blocks`)."""
    schedule = config
    if not config.packing:
        rows = _rows_per_line(sequences, config.max_length)
    elif reshuffle:
        rows, epochs = reshuffled_blocks(sequences, config.max_length, config.num_epochs, seed=config.seed)
        schedule = dataclasses.replace(config, num_epochs=epochs)
    else:
        rows = pack_blocks(sequences, config.max_length)
    stats = PackingStats.of(rows, config.batch_size)
    attention = _prepare_for_training(model, config, packed=False)
    collator = RowCollator(_pad_id(tokenizer), PAD_TO_MULTIPLE_OF)
    outcome = run_training(model, RowDataset(rows), collator, schedule, title=f"stage {stage}")
    _save_trained(outcome, tokenizer, Path(config.output_dir) / MODEL_DIR, attention)
    _write_config(config, outcome)
    return _result(stage, config, outcome, stats)


def run_stage1(config: Stage1Config) -> StageResult:
    """Stage 1, modality adaptation: causal LM on unit text (``<sosp><12>...<eosp>`` per line), packed into
    blocks of ``max_length`` tokens. Expands the base model's vocabulary when it lacks the speech tokens.

    Raises:
        FileNotFoundError, DataError, ConfigError, VocabularyError: for missing or unusable inputs.
    """
    from speechgpt.lm import PromptEncoder

    _check_inputs(config)
    lines = read_text_lines(config.data)
    model, tokenizer = _load_base(config)
    vocab, _ = _speech_vocab(model, tokenizer, config)
    encoder = PromptEncoder(tokenizer, vocab)
    return _train_on_blocks(1, config, model, tokenizer, encode_unit_lines(lines, encoder, source=config.data))


def run_stage2(config: Stage2Config) -> StageResult:
    """Stage 2, cross-modal instruction fine-tuning of the whole model on JSONL records, loss on the response
    (``train_on_inputs`` adds the prompt). Examples are packed without cross-attention unless ``packing`` is off.

    Raises:
        FileNotFoundError, DataError, ConfigError, VocabularyError: for missing or unusable inputs.
    """
    from speechgpt.lm import PromptEncoder

    _check_inputs(config)
    records = read_records(config.data)
    model, tokenizer = _load_base(config)
    vocab, _ = _speech_vocab(model, tokenizer, config)
    encoder = PromptEncoder(tokenizer, vocab)
    examples = encode_records(
        records, encoder, train_on_inputs=config.train_on_inputs, max_length=config.max_length, source=config.data
    )
    rows = _pack_rows(examples, config)
    stats = PackingStats.of(rows, config.batch_size)
    attention = _prepare_for_training(model, config, packed=config.packing)
    outcome = run_training(
        model, RowDataset(rows), RowCollator(_pad_id(tokenizer), PAD_TO_MULTIPLE_OF), config, title="stage 2"
    )
    _save_trained(outcome, tokenizer, Path(config.output_dir) / MODEL_DIR, attention)
    _write_config(config, outcome)
    return _result(2, config, outcome, stats)


def run_stage3(config: Stage3Config) -> StageResult:
    """Stage 3, chain-of-modality instruction fine-tuning with LoRA on JSONL records, loss on the response.

    Saves the adapter alone (``OUTPUT/adapter``) and the base with the adapter merged (``OUTPUT/model``).
    Runs on one device or DDP; the frozen base is held in the compute precision.

    Raises:
        FileNotFoundError, DataError, ConfigError, VocabularyError: for missing or unusable inputs.
    """
    from speechgpt.lm import LoraSettings, PromptEncoder, add_lora, merge_lora, save_lora

    if _sharded_launch():
        raise ConfigError(
            "stage 3 (LoRA) runs on one device or with DDP (ddp.yaml): its frozen base fits one GPU in bf16; "
            "see `speechgpt train estimate --stage 3`"
        )
    _check_inputs(config)
    records = read_records(config.data)
    records += replayed_records(config, len(records))
    model, tokenizer = _load_base(config, frozen=True)
    vocab, expanded = _speech_vocab(model, tokenizer, config)
    if expanded:
        logger.warning("stage 3 expanded the vocabulary: LoRA leaves the new embedding rows untrained (run stage 1)")
    encoder = PromptEncoder(tokenizer, vocab)
    examples = encode_records(
        records, encoder, train_on_inputs=config.train_on_inputs, max_length=config.max_length, source=config.data
    )
    rows = _pack_rows(examples, config)
    stats = PackingStats.of(rows, config.batch_size)
    attention = _prepare_for_training(model, config, packed=config.packing)
    settings = LoraSettings(
        r=config.lora_r,
        alpha=config.lora_alpha,
        dropout=config.lora_dropout,
        target_modules=config.lora_target_modules,
    )
    model = add_lora(model, settings, seed=config.seed)
    if config.gradient_checkpointing:
        model.enable_input_require_grads()  # checkpointed blocks need a grad-carrying input when the base is frozen
    outcome = run_training(
        model, RowDataset(rows), RowCollator(_pad_id(tokenizer), PAD_TO_MULTIPLE_OF), config, title="stage 3"
    )
    output_dir = Path(config.output_dir)
    trained = outcome.trainer.accelerator.unwrap_model(outcome.trainer.model)
    if outcome.trainer.is_world_process_zero():
        with quiet_hf_progress():
            save_lora(trained, output_dir / ADAPTER_DIR)
            merged = merge_lora(trained)
            merged.config.use_cache = True
            merged.config._attn_implementation = attention
            from speechgpt.lm import save_model

            save_model(merged, tokenizer, output_dir / MODEL_DIR)
    outcome.trainer.accelerator.wait_for_everyone()
    _write_config(config, outcome)
    return _result(3, config, outcome, stats, adapter_dir=output_dir / ADAPTER_DIR)


STAGE_RUNNERS = {0: run_stage0, 1: run_stage1, 2: run_stage2, 3: run_stage3}


def run_stage(config: TrainConfig) -> StageResult:
    """Run the stage that ``config``'s class belongs to."""
    for stage, cls in ((0, Stage0Config), (1, Stage1Config), (2, Stage2Config), (3, Stage3Config)):
        if type(config) is cls:
            return STAGE_RUNNERS[stage](config)
    raise TypeError(f"run_stage needs a Stage0Config..Stage3Config, got {type(config).__name__}")
