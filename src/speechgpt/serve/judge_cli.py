"""``speechgpt judge ...``: train the judge ASR on transcribed audio, and transcribe audio with it."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from speechgpt.audio import AudioError
from speechgpt.jsonl import JsonlError, ResumableJsonlWriter, dumps_record
from speechgpt.manifest import ManifestError, collect_audio_inputs
from speechgpt.serve._console import (
    EXIT_INTERRUPTED,
    EXIT_PARTIAL_FAILURE,
    fail,
    progress_bar,
    stderr,
    user_errors,
)

judge_app = typer.Typer(
    help="The judge ASR: a small CTC recogniser that scores the intelligibility of generated speech.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)

# What can go wrong because of what the user gave (never a bug of ours): shown as one line, no traceback.
USER_ERRORS = (AudioError, ManifestError, JsonlError, FileNotFoundError, IsADirectoryError, ValueError, TypeError)


@judge_app.command("train")
def train(
    manifest: Annotated[
        Path,
        typer.Argument(
            help="JSON Lines with `audio` (a path, relative to the manifest's folder) and `text` per line.",
            show_default=False,
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Judge folder to write (config.json + weights).")],
    valid: Annotated[
        Path | None,
        typer.Option("--valid", help="A second manifest to validate on (default: a share of MANIFEST is held out)."),
    ] = None,
    valid_fraction: Annotated[
        float,
        typer.Option("--valid-fraction", help="Share of MANIFEST held out for validation without --valid.", min=0.0),
    ] = 0.05,
    steps: Annotated[int, typer.Option("--steps", help="Optimiser steps.", min=1)] = 1600,
    lexicon: Annotated[
        list[Path] | None,
        typer.Option(
            "--lexicon",
            help="Text file(s) whose words (and how often they occur) the judge spells its transcripts from "
            "(repeatable: a corpus and a word list). Without it the judge decodes character by character.",
            show_default=False,
        ),
    ] = None,
    batch_seconds: Annotated[float, typer.Option("--batch-seconds", help="Audio per batch (s).", min=1.0)] = 30.0,
    valid_every: Annotated[
        int, typer.Option("--valid-every", help="Steps between validations (0: only at the end).", min=0)
    ] = 200,
    seed: Annotated[int, typer.Option("--seed", help="Seed of initialisation, batching and augmentation.")] = 0,
    threads: Annotated[
        int,
        typer.Option(
            "--threads",
            help="CPU threads for torch (more rarely helps this small model, and hurts on a busy machine).",
            min=1,
        ),
    ] = 1,
    device: Annotated[
        str | None, typer.Option("--device", help="Torch device, e.g. cpu or cuda:0 (default: cuda when present).")
    ] = None,
) -> None:
    """Train the judge ASR on recordings and their transcripts.

    Each line of the manifest names a recording and what is said in it:
    `{"audio": "audio/train/0001.wav", "text": "the capital of france is paris"}`. Transcripts are normalised
    (lowercase, numbers as words, no punctuation) before training. Train the judge on voices other than the
    ones it will judge, and never on the output of the system it judges.

    With --lexicon, transcripts are spelled from the words of those files, each weighted by how often it occurs
    (a word list adds one to each word it names): a listener's knowledge of the language's words, with no model of
    which sentence to expect. `speechgpt judge transcribe --decoding greedy` still decodes without it.

    Example:

      speechgpt judge train runs/world/speech_train.jsonl -o runs/judge \\
        --lexicon runs/world/text/corpus.txt --lexicon runs/world/text/vocabulary.txt
    """
    from speechgpt.eval.judge import VOCABULARY, JudgeConfig, JudgeTrainArgs, read_transcripts, train_judge
    from speechgpt.eval.lexicon import Lexicon, LexiconCTCDecoder

    if valid is None and not valid_fraction < 1:
        fail(f"--valid-fraction must be below 1, got {valid_fraction}")
    with user_errors(*USER_ERRORS, ImportError):
        words = Lexicon.from_files(lexicon) if lexicon else None
        if words is not None:
            LexiconCTCDecoder(words, VOCABULARY)  # a word the judge cannot spell fails now, not after training
        items = read_transcripts(manifest)
        if valid is not None:
            valid_items = read_transcripts(valid)
        else:
            count = round(len(items) * valid_fraction)
            if count >= len(items):
                fail(f"{manifest}: {len(items)} item(s) leave nothing to train on after holding out {count}")
            # Every k-th item, not the last ones: manifests are often ordered by voice or family.
            stride = len(items) / count if count else 0
            held = {int(i * stride) for i in range(count)}
            valid_items = [item for i, item in enumerate(items) if i in held]
            items = [item for i, item in enumerate(items) if i not in held]
        args = JudgeTrainArgs(
            steps=steps,
            batch_seconds=batch_seconds,
            valid_every=valid_every,
            seed=seed,
            device=device,
            num_threads=threads,
        )
    stderr.print(f"training on {len(items)} recording(s), validating on {len(valid_items)}")
    started = time.perf_counter()
    try:
        with progress_bar() as progress:
            task = progress.add_task("training", total=steps, status="")
            last_valid = ""

            def on_step(step: int, total: int, values: dict[str, float]) -> None:
                nonlocal last_valid
                if "valid_cer" in values:
                    last_valid = f", valid CER {values['valid_cer']:.3f} WER {values['valid_wer']:.3f}"
                progress.update(task, completed=step, status=f"loss {values['loss']:.3f}{last_valid}")

            with user_errors(*USER_ERRORS):
                judge, history = train_judge(
                    items, JudgeConfig(), args=args, valid_items=valid_items or None, progress=on_step
                )
    except KeyboardInterrupt:
        stderr.print("interrupted; nothing written")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    judge.lexicon = words
    with user_errors(*USER_ERRORS):
        judge.save_pretrained(output)
    scores = ""
    if history.valid:
        _, cer, wer = history.valid[-1]
        scores = f"; validation CER {cer:.3f}, WER {wer:.3f}"
    stderr.print(
        f"wrote {output}: {len(items)} recording(s), {history.train_seconds / 60:.1f} min of speech, "
        f"{steps} steps in {time.perf_counter() - started:.0f} s{scores}; decoding: {judge.describe_decoding()}"
    )


@judge_app.command("transcribe")
def transcribe(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="Audio files, folders (searched recursively) or manifests (.jsonl with an 'audio' field, ...).",
            show_default=False,
        ),
    ],
    judge: Annotated[Path, typer.Option("--judge", help="A judge folder (from `speechgpt judge train`).")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write JSON Lines here (resumable) instead of to stdout.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Start -o from scratch instead of resuming it.")
    ] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Recordings per forward pass.", min=1)] = 16,
    decoding: Annotated[
        str | None,
        typer.Option(
            "--decoding",
            help="greedy (character by character) or lexicon (words of the judge's lexicon.txt); "
            "default: lexicon when the judge has one.",
            show_default=False,
        ),
    ] = None,
    max_seconds: Annotated[
        float, typer.Option("--max-seconds", help="Reject recordings longer than this (seconds).", min=0.1)
    ] = 120.0,
    device: Annotated[
        str | None, typer.Option("--device", help="Torch device, e.g. cpu or cuda:0 (default: cuda when present).")
    ] = None,
) -> None:
    """Transcribe recordings with a judge: one `{"audio", "text"}` JSON object per recording.

    Text is normalised (lowercase letters, apostrophes, single spaces), ready for `speechgpt eval` scoring.
    With -o, finished recordings are written as they complete to OUT.partial, which becomes OUT at the end;
    running the same command again after an interruption skips what is done. Unreadable recordings are
    reported on stderr and skipped; the exit code is then 1.

    Example:

      speechgpt judge transcribe --judge runs/judge answers/*.wav -o answers.jsonl
    """
    from speechgpt.eval.judge import JudgeASR, load_for_judge

    with user_errors(*USER_ERRORS):
        items = collect_audio_inputs(inputs)
    if not items:
        fail(f"no audio found in {', '.join(map(str, inputs))}")
    if decoding not in (None, "greedy", "lexicon"):
        fail(f"--decoding {decoding!r}: expected greedy or lexicon")
    with user_errors(*USER_ERRORS, ImportError):
        model = JudgeASR.from_pretrained(judge, device=device)
    if decoding == "lexicon" and model.lexicon is None:
        fail(f"{judge}: --decoding lexicon, but the judge has no lexicon.txt (train it with --lexicon)")
    writer = None
    if output is not None:
        with user_errors(*USER_ERRORS):
            writer = ResumableJsonlWriter(output, key="audio", overwrite=overwrite)
        if writer.resumed:
            stderr.print(f"resuming {output}: {writer.resumed} recording(s) already transcribed")
    todo = [item for item in items if writer is None or item not in writer.done]
    failures: list[str] = []
    try:
        with progress_bar() as progress, writer if writer is not None else contextlib.nullcontext():
            task = progress.add_task("transcribing", total=len(todo), status="")
            for start in range(0, len(todo), batch_size):
                loaded = []
                for item in todo[start : start + batch_size]:
                    try:
                        loaded.append((item, load_for_judge(item, max_seconds=max_seconds)))
                    except AudioError as e:
                        failures.append(str(e))
                        progress.console.print(f"[red]skipped[/] {e}", markup=True, highlight=False, soft_wrap=True)
                waves = [wave for _, wave in loaded]
                texts = model.transcribe(waves, batch_size=batch_size, decoding=decoding) if loaded else []
                for (item, _), text in zip(loaded, texts, strict=True):
                    record = {"audio": item, "text": text}
                    if writer is not None:
                        writer.write(record)
                    else:
                        sys.stdout.write(dumps_record(record) + "\n")
                        sys.stdout.flush()
                progress.update(
                    task,
                    advance=len(todo[start : start + batch_size]),
                    status=f"{len(failures)} failed" if failures else "",
                )
            if writer is not None:
                writer.finish()
    except KeyboardInterrupt:
        where = f"; finished ones are kept in {writer.partial_path}, run the same command to resume" if writer else ""
        stderr.print(f"interrupted{where}")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    stderr.print(
        f"transcribed {len(todo) - len(failures)}, already done {len(items) - len(todo)}, failed {len(failures)}"
    )
    if failures:
        raise typer.Exit(EXIT_PARTIAL_FAILURE)
