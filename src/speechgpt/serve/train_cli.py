"""``speechgpt train ...``: the training stages, the memory estimate and the shipped accelerate configs."""

from __future__ import annotations

import enum
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from speechgpt.jsonl import JsonlError
from speechgpt.serve._console import EXIT_INTERRUPTED, stderr, user_errors
from speechgpt.train.config import (
    ConfigError,
    Stage0Config,
    Stage1Config,
    Stage2Config,
    Stage3Config,
    TrainConfig,
    config_to_dict,
    load_config,
)

train_app = typer.Typer(
    help="Train SpeechGPT: stage 0 (embedded world: text model from nothing), stage 1 (unit text), stage 2 "
    "(cross-modal instructions), stage 3 (chain-of-modality, LoRA); estimate per-GPU memory.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)

# What can go wrong because of what the user gave (a bad file, setting or model folder): one line, no traceback.
USER_ERRORS = (ConfigError, JsonlError, FileNotFoundError, NotADirectoryError, IsADirectoryError, ValueError)

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML or JSON file of settings (`--print-config` shows them all)."),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", "-s", help="Override one setting, e.g. `--set learning_rate=1e-4` (repeatable; wins over all)."
    ),
]
DataOpt = Annotated[Path | None, typer.Option("--data", help="The data builder's file for this stage.")]
BaseOpt = Annotated[
    Path | None,
    typer.Option("--base-model", help="Model folder to start from (e.g. the previous stage's run folder)."),
]
OutputOpt = Annotated[
    Path | None, typer.Option("--output", "-o", help="Run folder (checkpoints, loss curves, model/).")
]
MaxStepsOpt = Annotated[int | None, typer.Option("--max-steps", help="Stop after this many steps.", min=1)]
ResumeOpt = Annotated[
    bool | None,
    typer.Option("--resume/--no-resume", help="Continue from the run folder's last checkpoint (default: yes)."),
]
PrintConfigOpt = Annotated[
    bool, typer.Option("--print-config", help="Print the effective settings as YAML and exit without training.")
]


def _build(cls: type[TrainConfig], config_file: Path | None, sets: list[str] | None, **flags: Any) -> TrainConfig:
    values = {k: str(v) if isinstance(v, Path) else v for k, v in flags.items()}
    with user_errors(*USER_ERRORS):
        return load_config(cls, config_file, sets or [], **values)


def _run(config: TrainConfig, print_config: bool) -> None:
    if print_config:
        import yaml

        sys.stdout.write(f"# {type(config).__name__}\n" + yaml.safe_dump(config_to_dict(config), sort_keys=False))
        return
    from speechgpt.lm import VocabularyError
    from speechgpt.train.data import DataError
    from speechgpt.train.stages import run_stage

    try:
        with user_errors(*USER_ERRORS, DataError, VocabularyError):
            result = run_stage(config)
    except KeyboardInterrupt:
        stderr.print(f"interrupted; run the same command to resume from the last checkpoint in {config.output_dir}")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    from accelerate import PartialState

    if not PartialState().is_main_process:  # under accelerate launch / torchrun: one summary, from rank 0
        return
    speed = result.metrics.get("train_tokens_per_second")
    losses = f"loss {result.first_loss:.3f} -> {result.final_loss:.3f}" if result.final_loss is not None else "no loss"
    stderr.print(
        f"stage {result.stage}: {result.steps} steps, {losses}"
        + (f", {speed:,.0f} useful tokens/s" if speed else "")
        + f"; model in {result.model_dir}"
    )
    sys.stdout.write(json.dumps(result.to_dict()) + "\n")


@train_app.command("stage0")
def stage0(
    config_file: ConfigOpt = None,
    sets: SetOpt = None,
    data: DataOpt = None,
    output: OutputOpt = None,
    max_steps: MaxStepsOpt = None,
    resume: ResumeOpt = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Embedded world: train a text tokenizer and a tiny Llama from nothing on a text corpus (one sentence per line).

    Writes OUTPUT/model (model + tokenizer), checkpoints, loss.json and loss.png; prints a JSON summary on stdout.

    Example:

      speechgpt train stage0 --data world/corpus.txt -o runs/stage0 --set hidden_size=256 --set num_epochs=2
    """
    config = _build(Stage0Config, config_file, sets, data=data, output_dir=output, max_steps=max_steps, resume=resume)
    _run(config, print_config)


@train_app.command("stage1")
def stage1(
    config_file: ConfigOpt = None,
    sets: SetOpt = None,
    data: DataOpt = None,
    base_model: BaseOpt = None,
    output: OutputOpt = None,
    max_steps: MaxStepsOpt = None,
    resume: ResumeOpt = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Modality adaptation: causal LM on unit text (one `<sosp><12>...<eosp>` per line), packed into blocks of
    1024 tokens. Adds the speech tokens to the base model's vocabulary when it lacks them.

    Examples:

      speechgpt train stage1 --data data/stage1_units.txt --base-model runs/stage0 -o runs/stage1

      speechgpt train stage1 --config stage1.yaml --set num_units=1000 --set gradient_checkpointing=true

    On several GPUs (shipped accelerate configs: single, ddp, fsdp, zero3):

      accelerate launch \\
        --config_file "$(python -c 'import speechgpt.train as t; print(t.accelerate_config("fsdp"))')" \\
        --num_processes 8 -m speechgpt.serve.cli train stage1 --config stage1.yaml
    """
    config = _build(
        Stage1Config,
        config_file,
        sets,
        data=data,
        base_model=base_model,
        output_dir=output,
        max_steps=max_steps,
        resume=resume,
    )
    _run(config, print_config)


@train_app.command("stage2")
def stage2(
    config_file: ConfigOpt = None,
    sets: SetOpt = None,
    data: DataOpt = None,
    base_model: BaseOpt = None,
    output: OutputOpt = None,
    max_steps: MaxStepsOpt = None,
    resume: ResumeOpt = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Cross-modal instruction fine-tuning of the whole model on JSONL records (`prefix`, `plain_text`), loss on
    the response (`--set train_on_inputs=true` adds the prompt). Released: lr 2e-5, max length 512, 3 epochs.

    Examples:

      speechgpt train stage2 --data data/cross_modal.jsonl --base-model runs/stage1 -o runs/stage2

      speechgpt train stage2 --config stage2.yaml --set packing=false --max-steps 100

    On several GPUs (shipped accelerate configs: single, ddp, fsdp, zero3):

      accelerate launch \\
        --config_file "$(python -c 'import speechgpt.train as t; print(t.accelerate_config("fsdp"))')" \\
        --num_processes 8 -m speechgpt.serve.cli train stage2 --config stage2.yaml
    """
    config = _build(
        Stage2Config,
        config_file,
        sets,
        data=data,
        base_model=base_model,
        output_dir=output,
        max_steps=max_steps,
        resume=resume,
    )
    _run(config, print_config)


@train_app.command("stage3")
def stage3(
    config_file: ConfigOpt = None,
    sets: SetOpt = None,
    data: DataOpt = None,
    base_model: BaseOpt = None,
    output: OutputOpt = None,
    max_steps: MaxStepsOpt = None,
    resume: ResumeOpt = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Chain-of-modality instruction fine-tuning with LoRA (r 8, alpha 16, dropout 0.05 on q_proj and v_proj),
    max length 1024. Writes OUTPUT/adapter (the adapter alone) and OUTPUT/model (merged). One GPU or DDP.

    Examples:

      speechgpt train stage3 --data data/chain_of_modality.jsonl --base-model runs/stage2 -o runs/stage3

      speechgpt train stage3 --config stage3.yaml --set lora_r=16 --set lora_target_modules=q_proj,k_proj,v_proj

    A small model forgets stage 2's instructions (transcribe, speak) in stage 3; mix some of its records back in:

      speechgpt train stage3 ... --set replay_data=data/stage2.jsonl --set replay_fraction=0.5

    On several GPUs (shipped accelerate configs: single, ddp, fsdp, zero3):

      accelerate launch \\
        --config_file "$(python -c 'import speechgpt.train as t; print(t.accelerate_config("ddp"))')" \\
        --num_processes 8 -m speechgpt.serve.cli train stage3 --config stage3.yaml
    """
    config = _build(
        Stage3Config,
        config_file,
        sets,
        data=data,
        base_model=base_model,
        output_dir=output,
        max_steps=max_steps,
        resume=resume,
    )
    _run(config, print_config)


class Strategy(str, enum.Enum):
    single = "single"
    ddp = "ddp"
    fsdp = "fsdp"
    zero3 = "zero3"


@train_app.command("estimate")
def estimate(
    model_size: Annotated[
        str,
        typer.Option(
            "--model-size", help="7b, 13b, tiny, a parameter count (6.7e9, 350m) or a model folder with config.json."
        ),
    ] = "7b",
    stage: Annotated[int, typer.Option("--stage", help="Training stage 0-3 (3 is LoRA).", min=0, max=3)] = 2,
    gpus: Annotated[int, typer.Option("--gpus", help="GPUs sharing the work.", min=1)] = 8,
    strategy: Annotated[
        list[Strategy] | None, typer.Option("--strategy", help="Only these strategies (repeatable; default all).")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Rows per GPU per micro-step.", min=1)] = 4,
    seq_len: Annotated[
        int | None, typer.Option("--seq-len", help="Tokens per row (default: the stage's released length).", min=1)
    ] = None,
    lora_r: Annotated[int, typer.Option("--lora-r", help="LoRA rank (stage 3).", min=1)] = 8,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (bytes) instead of a table.")] = False,
) -> None:
    """Estimate per-GPU memory for one stage under each strategy (single GPU, DDP, FSDP full shard, ZeRO-3),
    with and without gradient checkpointing. Weights, gradients, Adam states, buffers and activations, in GiB.

    Example:

      speechgpt train estimate --model-size 7b --stage 2 --gpus 8
    """
    from speechgpt.train.estimate import estimate_memory

    with user_errors(*USER_ERRORS):
        table = estimate_memory(
            model_size,
            stage=stage,
            gpus=gpus,
            strategy=[s.value for s in strategy] if strategy else None,
            micro_batch_size=batch_size,
            seq_len=seq_len,
            lora_r=lora_r,
        )
    sys.stdout.write((json.dumps(table.to_dict()) if as_json else table.to_text()) + "\n")


@train_app.command("accelerate-config")
def accelerate_config_path(
    name: Annotated[Strategy, typer.Argument(help="single, ddp, fsdp or zero3.", show_default=False)],
) -> None:
    """Print the path of a shipped `accelerate` config, for `accelerate launch --config_file`.

    Example:

      accelerate launch --config_file "$(speechgpt train accelerate-config fsdp)" --num_processes 8 \\
        -m speechgpt.serve.cli train stage2 --config stage2.yaml
    """
    from speechgpt.train import accelerate_config

    sys.stdout.write(str(accelerate_config(name.value)) + "\n")
