"""``speechgpt data build-world``: generate and speak the embedded speech world."""

from __future__ import annotations

import enum
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import TaskID
from rich.table import Table

from speechgpt.audio import AudioError
from speechgpt.data.world import SIZE_PRESETS, WorldConfig
from speechgpt.data.world_speech import WorldSummary, build_world
from speechgpt.serve._console import EXIT_INTERRUPTED, progress_bar, stderr, user_errors

DEFAULT_OUTPUT = Path("runs/world")

# What can go wrong because of what the user gave: shown as one line, no traceback (WorldError is a ValueError).
USER_ERRORS = (ValueError, AudioError, FileExistsError, NotADirectoryError, PermissionError)

WorldSize = enum.Enum("WorldSize", {name: name for name in SIZE_PRESETS}, type=str)
"""The named sizes of :data:`speechgpt.data.world.SIZE_PRESETS`, as command-line choices."""


def build_world_command(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="World folder to write (resumed if a build was interrupted).")
    ] = DEFAULT_OUTPUT,
    seed: Annotated[int, typer.Option("--seed", help="Seed of every random choice in the world.", min=0)] = 0,
    size: Annotated[
        WorldSize, typer.Option("--size", help="Preset size; the count options below override its fields.")
    ] = WorldSize["default"],
    questions_per_family: Annotated[
        int | None, typer.Option("--questions-per-family", help="At most this many question items per family.", min=1)
    ] = None,
    train_utterances: Annotated[
        int | None, typer.Option("--train-utterances", help="Spoken training utterances (train voices).", min=1)
    ] = None,
    test_utterances: Annotated[
        int | None,
        typer.Option("--test-utterances", help="Spoken test utterances (held-out voices and questions).", min=0),
    ] = None,
    heldout_fraction: Annotated[
        float | None,
        typer.Option("--heldout-fraction", help="Share of each family's facts held out of training.", min=0, max=0.99),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", help="Synthesis processes; 0 runs in this process (default: one per CPU).", min=0),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a world built there with another config.")
    ] = False,
) -> None:
    """Build the embedded speech world: questions, answers, a text corpus, and espeak-ng speech of them.

    The world is deterministic from --seed: question families (capitals, colours, animals, opposites, spelling,
    arithmetic, counting, comparisons, chit-chat) with several phrasings each, a held-out set of questions never
    seen in training, 6 training voices and 2 held-out voices with varied rate and pitch. It writes `world.json`,
    `text/corpus.txt`, `text/vocabulary.txt` (every word of the world), `qa/train.jsonl`, `qa/heldout.jsonl`,
    `speech_train.jsonl`, `speech_test.jsonl` and the WAVs under `audio/`. Running the command again with the same
    options does nothing; after an interruption it finishes the build, keeping the audio already written. Progress
    and a stats table go to stderr, a one-line JSON summary to stdout.

    Examples:

      speechgpt data build-world

      speechgpt data build-world -o runs/world-small --size small --seed 3 --workers 2
    """
    overrides: dict[str, Any] = {"seed": seed}
    for name, value in (
        ("questions_per_family", questions_per_family),
        ("train_utterances", train_utterances),
        ("test_utterances", test_utterances),
        ("heldout_fraction", heldout_fraction),
    ):
        if value is not None:
            overrides[name] = value
    with user_errors(*USER_ERRORS):
        config = WorldConfig.from_preset(size.value, **overrides)
    start = time.perf_counter()
    progress = progress_bar()
    tasks: list[TaskID] = []  # the bar starts with the first report, so a refused build shows none

    def on_progress(done: int, total: int) -> None:
        if not tasks:
            progress.start()
            tasks.append(progress.add_task("speaking", total=total, status=""))
        progress.update(tasks[0], completed=done, total=total)

    try:
        with user_errors(*USER_ERRORS):
            summary = build_world(config, output, num_workers=workers, overwrite=overwrite, progress=on_progress)
    except KeyboardInterrupt:
        progress.stop()
        stderr.print(f"interrupted; the audio written so far is kept in {output}, run the same command to resume")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        progress.stop()
    if summary.already_built:
        stderr.print(f"{output} already holds this world (built in {summary.seconds_to_build:.1f} s); nothing to do")
    stderr.print(_stats_table(summary, time.perf_counter() - start))
    sys.stdout.write(json.dumps(summary.to_dict(), separators=(", ", ": ")) + "\n")
    sys.stdout.flush()


def _stats_table(summary: WorldSummary, seconds: float) -> Table:
    counts = summary.counts
    table = Table(title=f"speech world in {summary.out_dir} (seed {summary.seed})", title_justify="left")
    table.add_column("")
    table.add_column("train", justify="right")
    table.add_column("held-out / test", justify="right")
    table.add_row("utterances", str(counts["speech_train"]["total"]), str(counts["speech_test"]["total"]))
    table.add_row("hours of speech", f"{summary.hours['train']:.3f}", f"{summary.hours['test']:.3f}")
    table.add_row(
        "voices",
        f"{len(summary.voices['train'])}: {', '.join(summary.voices['train'])}",
        f"{len(summary.voices['heldout'])}: {', '.join(summary.voices['heldout']) or '-'}",
    )
    table.add_row("QA records", str(counts["qa"]["train"]), str(counts["qa"]["heldout"]))
    train_questions, heldout_questions = counts["questions"]["train"], counts["questions"]["heldout"]
    table.add_row("questions per family", str(sum(train_questions.values())), str(sum(heldout_questions.values())))
    for family in dict.fromkeys([*train_questions, *heldout_questions]):
        table.add_row(f"  {family}", str(train_questions.get(family, 0)), str(heldout_questions.get(family, 0)))
    table.add_row("corpus lines", str(counts["corpus_lines"]), "")
    built = "found complete" if summary.already_built else f"{summary.synthesized} spoken, {summary.reused} kept"
    table.add_row("time taken", f"{seconds:.1f} s", built)
    return table
