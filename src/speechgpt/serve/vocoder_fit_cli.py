"""``speechgpt vocoder fit``: fit the fast CPU vocoder on encoded audio (a minute or so on 2 cores)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from speechgpt.audio import DEFAULT_MAX_SECONDS, AudioError
from speechgpt.jsonl import JsonlError
from speechgpt.serve._console import EXIT_INTERRUPTED, fail, progress_bar, stderr, user_errors
from speechgpt.units.tokenizer import load_codebook

# What can go wrong because of what the user gave: shown as one line, no traceback.
USER_ERRORS = (AudioError, JsonlError, FileNotFoundError, IsADirectoryError, ValueError)
STAGE_LABELS = {
    "loading": "loading audio",
    "analysis": "analysing frames",
    "durations": "duration model",
    "refiner": "frame refiner",
}


def fit(
    manifest: Annotated[
        Path,
        typer.Argument(
            help="JSON Lines from `speechgpt units encode` (fields `audio`, `units`, `durations`).",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Vocoder folder to write (config.json + model.safetensors).")
    ],
    tokenizer: Annotated[
        Path | None,
        typer.Option(
            "--tokenizer",
            help="The tokenizer folder that made the units: gives the unit count, and its k-means centres let "
            "units absent from the data borrow the nearest present unit's sound.",
        ),
    ] = None,
    num_units: Annotated[
        int | None,
        typer.Option("--num-units", help="Unit vocabulary size, when no --tokenizer is given.", min=1),
    ] = None,
    refiner_steps: Annotated[
        int, typer.Option("--refiner-steps", help="Training steps of the frame refiner (0: plain unit table).", min=0)
    ] = 800,
    duration_steps: Annotated[
        int, typer.Option("--duration-steps", help="Training steps of the duration predictor.", min=0)
    ] = 600,
    f0: Annotated[float, typer.Option("--f0", help="Pitch of the voice in Hz.", min=40.0, max=2000.0)] = 120.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of initialisation, sampling and the noise.")] = 0,
    threads: Annotated[
        int | None, typer.Option("--threads", help="CPU threads for torch (default: torch's choice).", min=1)
    ] = None,
    max_seconds: Annotated[
        float, typer.Option("--max-seconds", help="Reject recordings longer than this (seconds).", min=0.1)
    ] = DEFAULT_MAX_SECONDS,
) -> None:
    """Fit the fast vocoder: unit tables, a duration model and a small frame refiner, then source-filter synthesis.

    It needs the units of some speech and the audio they came from, i.e. the output of `speechgpt units
    encode` (relative audio paths are looked up from the current folder, then from the manifest's). Fitting
    is deterministic for a given seed and takes about a minute on 2 CPU cores for ten minutes of speech; the
    folder is then a vocoder for `speechgpt vocode --vocoder DIR`.

    Example:

      speechgpt units encode data/wavs --tokenizer runs/tokenizer -o runs/units.jsonl

      speechgpt vocoder fit runs/units.jsonl --tokenizer runs/tokenizer -o runs/vocoder
    """
    from speechgpt.vocoder.fast import FastVocoderConfig
    from speechgpt.vocoder.fit import FastVocoderFitArgs, fit_from_manifest

    if (tokenizer is None) == (num_units is None):
        fail("give the unit vocabulary with exactly one of --tokenizer DIR or --num-units N")
    centers = None
    with user_errors(*USER_ERRORS):
        if tokenizer is not None:
            codebook = load_codebook(tokenizer)
            num_units, centers = codebook.n_clusters, codebook.centers
        assert num_units is not None
        config = FastVocoderConfig(num_units=num_units, f0=f0)
        args = FastVocoderFitArgs(
            refiner_steps=refiner_steps, duration_steps=duration_steps, seed=seed, num_threads=threads
        )
    started = time.perf_counter()
    try:
        with progress_bar() as progress:
            tasks: dict[str, int] = {}

            def on_progress(stage: str, done: int, total: int, loss: float | None) -> None:
                if stage not in tasks:
                    tasks[stage] = progress.add_task(STAGE_LABELS.get(stage, stage), total=total, status="")
                status = "" if loss is None else f"loss {loss:.4f}"
                progress.update(tasks[stage], completed=done, status=status)

            with user_errors(*USER_ERRORS):
                vocoder = fit_from_manifest(
                    manifest,
                    num_units,
                    config=config,
                    args=args,
                    centers=centers,
                    max_seconds=max_seconds,
                    progress=on_progress,
                )
    except KeyboardInterrupt:
        stderr.print("interrupted; nothing written")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    with user_errors(*USER_ERRORS):
        vocoder.save_pretrained(output)
    info = vocoder.info
    stderr.print(
        f"wrote {output}: fitted on {info['recordings']} recording(s), {info['frames']} frames, "
        f"{info['units_seen']} of {num_units} units seen, in {time.perf_counter() - started:.1f} s"
    )
