"""``speechgpt vocoder ...``: train the unit HiFi-GAN on units from ``speechgpt units encode``."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from speechgpt.serve._console import EXIT_INTERRUPTED, fail, stderr
from speechgpt.serve.vocoder_fit_cli import fit

vocoder_app = typer.Typer(
    help="Unit vocoders: train the unit HiFi-GAN, or fit the fast CPU vocoder, that turn units back into speech.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)


class Precision(str, enum.Enum):
    no = "no"
    bf16 = "bf16"
    fp16 = "fp16"


class DiscriminatorSize(str, enum.Enum):
    released = "released"
    tiny = "tiny"


vocoder_app.command("fit")(fit)


@vocoder_app.command("train")
def train(
    manifest: Annotated[
        Path,
        typer.Option(
            "--manifest",
            "-m",
            help="JSON Lines from `speechgpt units encode` (audio, units, durations).",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Run folder: checkpoints, metrics.jsonl, val/ samples, final/.")
    ],
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            help="Generator architecture: released, tiny, or a JSON config (ours or fairseq's). Default: released.",
        ),
    ] = None,
    init_from: Annotated[
        Path | None,
        typer.Option("--init-from", help="Start from these weights: a vocoder folder or the fairseq g_00500000 file."),
    ] = None,
    discriminator: Annotated[
        DiscriminatorSize | None,
        typer.Option("--discriminator", help="Discriminator sizes (default: tiny with --config tiny, else released)."),
    ] = None,
    val_manifest: Annotated[
        Path | None,
        typer.Option("--val-manifest", help="Validation records (default: the first training records)."),
    ] = None,
    steps: Annotated[
        int, typer.Option("--steps", help="Total training steps, resumed ones included.", min=1)
    ] = 500_000,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Segments per step on each device.", min=1)] = 16,
    segment_frames: Annotated[
        int, typer.Option("--segment-frames", help="Unit frames (20 ms) per training segment.", min=2)
    ] = 28,
    learning_rate: Annotated[float, typer.Option("--lr", help="AdamW learning rate of both networks.", min=0.0)] = 2e-4,
    lr_decay: Annotated[
        float, typer.Option("--lr-decay", help="Learning-rate factor applied after every epoch.", min=0.0, max=1.0)
    ] = 0.999,
    checkpoint_every: Annotated[
        int, typer.Option("--checkpoint-every", help="Steps between checkpoints.", min=1)
    ] = 5000,
    validate_every: Annotated[
        int, typer.Option("--validate-every", help="Steps between validations (0: never).", min=0)
    ] = 1000,
    keep_last: Annotated[int, typer.Option("--keep-last", help="Checkpoints to keep.", min=1)] = 3,
    seed: Annotated[int, typer.Option("--seed", help="Seed of weights, data order and dropout.")] = 1234,
    mixed_precision: Annotated[
        Precision, typer.Option("--mixed-precision", help="Autocast precision (accelerate).")
    ] = Precision.no,
    num_workers: Annotated[int, typer.Option("--num-workers", help="Data-loading processes.", min=0)] = 0,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume/--fresh",
            help="Continue from the newest checkpoint in the run folder, or delete the run's outputs and start over.",
        ),
    ] = True,
    cpu: Annotated[bool, typer.Option("--cpu", help="Train on the CPU even if a GPU is present.")] = False,
) -> None:
    """Train the unit HiFi-GAN (generator + duration predictor, with HiFi-GAN's discriminators).

    Checkpoints are written every --checkpoint-every steps; running the same command again continues from the
    newest one exactly where it stopped (Ctrl-C saves the last finished step first). At the end, OUTPUT/final/
    holds the vocoder, ready for `speechgpt vocode --vocoder OUTPUT/final`.

    Several GPUs: `accelerate launch -m speechgpt.serve.cli vocoder train ...`.

    Examples:

      speechgpt vocoder train -m units.jsonl -o runs/vocoder

      speechgpt vocoder train -m units.jsonl -o runs/toy --config tiny --steps 2000 --batch-size 4
    """
    from speechgpt.vocoder.data import VocoderDataError
    from speechgpt.vocoder.train import VocoderTrainConfig, VocoderTrainer

    try:
        settings = VocoderTrainConfig(
            manifest=manifest,
            output_dir=output,
            model=config,
            init_from=init_from,
            discriminator=None if discriminator is None else discriminator.value,
            val_manifest=val_manifest,
            steps=steps,
            batch_size=batch_size,
            segment_frames=segment_frames,
            learning_rate=learning_rate,
            lr_decay=lr_decay,
            checkpoint_every=checkpoint_every,
            validate_every=validate_every,
            keep_last=keep_last,
            seed=seed,
            mixed_precision=mixed_precision.value,
            num_workers=num_workers,
            resume=resume,
            cpu=cpu,
        )
    except ValueError as e:
        fail(str(e))
    trainer = VocoderTrainer(settings)
    try:
        try:
            trainer.setup()
        except (FileNotFoundError, IsADirectoryError, VocoderDataError, ValueError) as e:
            fail(str(e))
        if trainer.step:
            stderr.print(f"resuming {output} at step {trainer.step}")
        try:
            final = trainer.train()
        except KeyboardInterrupt:
            stderr.print(f"interrupted at step {trainer.step}; checkpoint saved, run the same command to resume")
            raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        trainer.cleanup()
    stderr.print(f"trained {trainer.step} steps; wrote the vocoder to {final}")
