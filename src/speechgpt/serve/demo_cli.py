"""``speechgpt demo``: build, train, evaluate and talk to a whole SpeechGPT from nothing, on a laptop CPU."""

from __future__ import annotations

import enum
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from speechgpt.serve._console import EXIT_INTERRUPTED, EXIT_PARTIAL_FAILURE, fail, stderr, warn


class DemoSize(str, enum.Enum):
    tiny = "tiny"
    small = "small"
    default = "default"


def demo_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="Run folder (everything the demo makes).")] = Path(
        "runs/demo"
    ),
    size: Annotated[
        DemoSize,
        typer.Option(
            "--size", help="tiny (under a minute, checks the plumbing), small, or default (~13 min on 2 cores)."
        ),
    ] = DemoSize.default,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Redo every step, even those a previous run finished.")
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option("--workers", help="Speech synthesis processes (default: one per CPU; 0: in this process).", min=0),
    ] = None,
    settings: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            "-s",
            help="Change one setting of the size, e.g. `--set clusters=100` or `--set stage2_num_epochs=2` "
            "(repeatable; the names are the fields of speechgpt.demo.DemoConfig).",
        ),
    ] = None,
) -> None:
    """Build the whole SpeechGPT from nothing and talk to it: data, units, four training stages, vocoder, evaluation.

    Steps: speak the embedded world with espeak-ng (some voices held out), train a small recogniser whose states
    become the unit features and fit the unit k-means on them, build SpeechInstruct stages 1-3, train a tiny Llama
    through stages 0-3, fit the vocoder and the judge ASR (both in the background on one core), assemble the bundle,
    evaluate it on held-out voices (ASR, TTS and vocoder intelligibility, spoken QA in four combinations,
    latency), hold a short spoken conversation, and write the report. Each step is the library code of a
    `speechgpt` command (each step's record in OUTPUT/steps/ names it).

    Finished steps are remembered in OUTPUT/steps/: running the command again skips them (a step whose settings
    changed is redone, with everything after it), and an interrupted step continues where it stopped. Progress
    goes to stderr; the last line on stdout is a JSON summary with the headline numbers.

    Outputs: OUTPUT/report.md (with plots and report.json), OUTPUT/bundle (load it with
    `SpeechGPT.from_pretrained` or `speechgpt chat --bundle`), OUTPUT/conversation (question and answer WAVs).

    Examples:

      speechgpt demo

      speechgpt demo --size tiny -o runs/tiny

      speechgpt demo --set stage2_num_epochs=2 --set eval_qa_questions=60
    """
    from speechgpt.demo.runner import DemoConfig, DemoError, RichDemoProgress, StepFailed, run_demo, summary_table

    try:
        overrides = {"output_dir": str(output)}
        if workers is not None:
            overrides["workers"] = workers
        config = DemoConfig.from_strings(size.value, settings or [], **overrides)
    except DemoError as e:
        fail(str(e))
    display = RichDemoProgress(stderr)
    try:
        result = run_demo(config, fresh=fresh, progress=display)
    except DemoError as e:
        fail(str(e))
    except StepFailed as e:
        stderr.print_exception(show_locals=False)
        fail(f"{e}; finished steps are kept: run the same command to continue", code=EXIT_PARTIAL_FAILURE)
    except KeyboardInterrupt:
        stderr.print(f"interrupted; finished steps are kept in {output}: run the same command to continue")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    stderr.print(summary_table(result))
    summary = {
        "output": str(result.out_dir),
        "report": str(result.report),
        "bundle": str(result.bundle),
        **{key: value for key, value in result.metrics.items() if value is not None},
        "seconds_total": round(result.seconds_total, 1),
        "seconds_this_run": round(result.seconds_run, 1),
    }
    sys.stdout.write(json.dumps(summary) + "\n")
    sys.stdout.flush()
    if result.problems:
        for problem in result.problems:
            warn(problem)
        raise typer.Exit(EXIT_PARTIAL_FAILURE)
