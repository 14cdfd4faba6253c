"""``speechgpt data ...``: build the SpeechInstruct stages, merge shards, validate files."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from speechgpt.audio import AudioError
from speechgpt.data.builders import (
    MAX_SPOKEN_CHARS,
    BuildFailure,
    build_stage1,
    build_stage2,
    build_stage3,
    merge_shards,
    shard_path,
)
from speechgpt.data.stats import render_table
from speechgpt.jsonl import JsonlError
from speechgpt.manifest import ManifestError
from speechgpt.serve._console import (
    EXIT_INTERRUPTED,
    EXIT_PARTIAL_FAILURE,
    fail,
    progress_bar,
    stderr,
    user_errors,
    warn,
)
from speechgpt.serve.world_cli import build_world_command

data_app = typer.Typer(
    help="SpeechInstruct data: build the stage 1/2/3 training files from audio, corpora and instructions; "
    "merge shards; validate files.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)

# What can go wrong because of what the user gave (never a bug of ours): one line, no traceback. The readers',
# templates' and validators' errors are ValueError subclasses.
USER_ERRORS = (AudioError, ManifestError, JsonlError, FileNotFoundError, IsADirectoryError, ValueError)

SUMMARY_FAILURES = 20
"""Failures listed in the JSON summary (all of them are printed on stderr as they happen)."""


def _load_speech_tokenizer(directory: Path) -> Any:
    from speechgpt.units.tokenizer import SpeechTokenizer

    with user_errors(*USER_ERRORS):
        return SpeechTokenizer.from_pretrained(directory)


def _parse_voices(voices: str | None) -> list[Any]:
    from speechgpt.data.tts import ENGLISH_VOICES, VoiceSettings

    names = ENGLISH_VOICES if voices is None else tuple(v.strip() for v in voices.split(",") if v.strip())
    if not names:
        fail(f"--voices {voices!r} names no voice; give e.g. --voices en-us,en+f3")
    with user_errors(ValueError):
        return [VoiceSettings(voice=name) for name in names]


def _parse_speeds(text: str | None) -> tuple[float, ...]:
    if text is None:
        return ()
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        fail(f"--speed-perturb {text!r}: expected comma-separated numbers such as 0.9,1.1")


@data_app.command("build")
def build(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="Stage 1: audio files, folders or manifests. Stage 2: speech corpora (LibriSpeech folder, "
            "Common Voice .tsv, .jsonl/.csv manifest with audio + text). Stage 3: Alpaca-style .json/.jsonl.",
            show_default=False,
        ),
    ],
    stage: Annotated[
        int,
        typer.Option(
            "--stage", help="1: unit text; 2: cross-modal ASR/TTS records; 3: chain of modality.", min=1, max=3
        ),
    ],
    tokenizer: Annotated[
        Path, typer.Option("--tokenizer", help="Speech tokenizer folder (from `speechgpt units train-kmeans`).")
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="File to write (.txt for stage 1, .jsonl otherwise); gets a shard suffix with --num-shards > 1.",
        ),
    ],
    shard: Annotated[int, typer.Option("--shard", help="Which shard of the inputs to build (0-based).", min=0)] = 0,
    num_shards: Annotated[
        int, typer.Option("--num-shards", help="Split the inputs into this many shards (stable striding).", min=1)
    ] = 1,
    seed: Annotated[int, typer.Option("--seed", help="Seed of template (stage 2) and voice (stage 3) choices.")] = 0,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Start the output from scratch instead of resuming it.")
    ] = False,
    voices: Annotated[
        str | None,
        typer.Option("--voices", help="Stage 3: comma-separated espeak-ng voices, e.g. en-us,en+f3 (default: six)."),
    ] = None,
    workers: Annotated[int, typer.Option("--workers", help="Stage 3: speech synthesis processes.", min=0)] = 0,
    templates: Annotated[
        Path | None,
        typer.Option("--templates", help="Stage 2: folder with speech_to_text.txt and text_to_speech.txt."),
    ] = None,
    speed_perturb: Annotated[
        str | None,
        typer.Option(
            "--speed-perturb",
            help="Stage 2: comma-separated speed factors, e.g. 0.9,1.1: one more ASR record per factor and "
            "recording, played that much faster (tempo, pitch and formants together, as between speakers).",
            show_default=False,
        ),
    ] = None,
    max_chars: Annotated[
        int, typer.Option("--max-chars", help="Stage 3: skip items whose spoken question or answer is longer.", min=1)
    ] = MAX_SPOKEN_CHARS,
) -> None:
    """Build one SpeechInstruct stage and print its statistics.

    Stage 1 writes one `<sosp>...<eosp>` line per recording; stage 2 writes an ASR and a TTS record per
    (audio, transcript) item, each with an instruction template; stage 3 speaks every instruction and its answer
    with espeak-ng and writes the four chain-of-modality records (speech/text in, speech/text out). Every record is
    validated before it is written. Work is saved as it goes: running the same command again after an interruption
    resumes and gives exactly the same file. Bad recordings are reported on stderr and skipped (exit code 1).

    A progress bar and the final statistics table go to stderr; one JSON summary line goes to stdout. With
    `--num-shards N` the output becomes `OUT.0000I-of-0000N.jsonl`; join the finished shards with
    `speechgpt data merge OUT`.

    Examples:

      speechgpt data build --stage 1 wavs/ --tokenizer runs/tokenizer -o data/stage1.txt

      speechgpt data build --stage 2 LibriSpeech/train-clean-100 --tokenizer runs/tokenizer -o data/stage2.jsonl \\
        --shard 0 --num-shards 4 --speed-perturb 0.9,1.1

      speechgpt data build --stage 3 alpaca.json --tokenizer runs/tokenizer -o data/stage3.jsonl \\
        --voices en-us,en+f3,en+m3 --workers 2
    """
    with user_errors(*USER_ERRORS):
        out = shard_path(output, shard, num_shards)
    ignored = {
        "--voices": voices is not None and stage != 3,
        "--workers": workers != 0 and stage != 3,
        "--max-chars": max_chars != MAX_SPOKEN_CHARS and stage != 3,
        "--templates": templates is not None and stage != 2,
        "--speed-perturb": speed_perturb is not None and stage != 2,
        "--seed": seed != 0 and stage == 1,
    }
    for option, is_ignored in ignored.items():
        if is_ignored:
            warn(f"{option} is ignored with --stage {stage}")
    speeds = _parse_speeds(speed_perturb) if stage == 2 else ()
    speech_tokenizer = _load_speech_tokenizer(tokenizer)
    engine, voice_list = None, []
    if stage == 3:
        from speechgpt.data.tts import EspeakEngine

        voice_list = _parse_voices(voices)
        with user_errors(*USER_ERRORS):
            engine = EspeakEngine()
            for voice in voice_list:
                engine.check_voice(voice.voice)

    try:
        with progress_bar() as bar:
            task = bar.add_task(f"stage {stage}", total=None, status="")
            failed = 0

            def on_item(done: int, total: int, failure: BuildFailure | None) -> None:
                nonlocal failed
                if failure is not None and failure.kind == "skipped":
                    bar.console.print(f"[yellow]skipped[/] {escape(str(failure))}", highlight=False, soft_wrap=True)
                elif failure is not None:
                    failed += 1
                    bar.console.print(f"[red]failed[/] {escape(str(failure))}", highlight=False, soft_wrap=True)
                bar.update(task, completed=done, total=total, status=f"{failed} failed" if failed else "")

            common: dict[str, Any] = {
                "shard": shard,
                "num_shards": num_shards,
                "overwrite": overwrite,
                "progress": on_item,
            }
            with user_errors(*USER_ERRORS):
                if stage == 1:
                    result = build_stage1(inputs, speech_tokenizer, out, **common)
                elif stage == 2:
                    result = build_stage2(
                        inputs,
                        speech_tokenizer,
                        out,
                        speed_perturbation=speeds,
                        seed=seed,
                        templates_dir=templates,
                        **common,
                    )
                else:
                    result = build_stage3(
                        inputs,
                        speech_tokenizer,
                        out,
                        engine,
                        voice_list,
                        seed=seed,
                        num_workers=workers,
                        max_chars=max_chars,
                        **common,
                    )
    except KeyboardInterrupt:
        stderr.print(f"interrupted; finished work is kept: run the same command to resume {out}")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    stderr.print(render_table(result.stats, title=f"stage {stage}: {out}"))
    summary = {"output": str(result.output), **result.stats.to_dict()}
    summary["failures"] = [str(f) for f in result.failures[:SUMMARY_FAILURES]]
    sys.stdout.write(json.dumps(summary, ensure_ascii=False) + "\n")
    sys.stdout.flush()
    if result.failures:
        stderr.print(f"{len(result.failures)} item(s) or record(s) failed and were left out")
        raise typer.Exit(EXIT_PARTIAL_FAILURE)


@data_app.command("merge")
def merge(
    output: Annotated[
        Path, typer.Argument(help="The unsharded name, e.g. data/stage2.jsonl for data/stage2.00000-of-00004.jsonl.")
    ],
    num_shards: Annotated[
        int | None, typer.Option("--num-shards", help="Shards to expect (default: found from the file names).", min=1)
    ] = None,
) -> None:
    """Join the finished shards of a build into one file, in shard order.

    Every shard `OUT.0000I-of-0000N.ext` must exist and be finished; the merged file is written atomically and
    holds exactly the records of an unsharded build (grouped by shard). Prints a JSON summary line on stdout.
    `cat OUT.*-of-*.jsonl > OUT.jsonl` does the same without the checks.

    Example:

      speechgpt data merge data/stage2.jsonl
    """
    with user_errors(*USER_ERRORS):
        shards = merge_shards(output, num_shards=num_shards)
    with output.open("rb") as f:
        lines = sum(1 for _ in f)
    stderr.print(f"merged {len(shards)} shard(s) into {output}: {lines} lines")
    sys.stdout.write(json.dumps({"output": str(output), "shards": [str(s) for s in shards], "lines": lines}) + "\n")


def _load_text_tokenizer(directory: Path) -> Any:
    try:
        from transformers import AutoTokenizer
    except ImportError:  # pragma: no cover - transformers is a core dependency
        fail("--tokenizer needs the 'transformers' package")
    if not directory.is_dir():
        fail(f"{directory}: --tokenizer must be a Hugging Face tokenizer folder")
    try:
        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as e:
        fail(f"{directory}: cannot load a Hugging Face tokenizer ({str(e).splitlines()[0]})")


@data_app.command("validate")
def validate(
    files: Annotated[
        list[Path], typer.Argument(help="Stage-1 .txt or stage-2/3 .jsonl files to check.", show_default=False)
    ],
    stage: Annotated[
        int | None,
        typer.Option(
            "--stage", help="Check as this stage (default: from the file: .txt is 1, JSONL 2/3).", min=1, max=3
        ),
    ] = None,
    tokenizer: Annotated[
        Path | None,
        typer.Option("--tokenizer", help="Hugging Face tokenizer folder of the LM, to check --max-tokens."),
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option("--max-tokens", help="Token budget per record (needs --tokenizer).", min=1)
    ] = None,
    num_units: Annotated[int, typer.Option("--num-units", help="Unit ids must be below this.", min=1)] = 1000,
    max_problems: Annotated[
        int, typer.Option("--max-problems", help="Problems printed per file; the rest are counted.", min=0)
    ] = 100,
) -> None:
    """Check every record of SpeechInstruct files and report problems with their line numbers.

    Checks: well-formed JSON objects with `prefix` and `plain_text`; the `[Human]: ...<eoh>. [SpeechGPT]: ...<eoa>`
    layout; balanced, unnested `<sosp>...<eosp>` spans holding only unit ids below --num-units; no control strings
    in user text; with --tokenizer and --max-tokens, the token length of each record. Stage-1 files must hold one
    `<sosp>...<eosp>` per line.

    The problems are the command's data: one `FILE:LINE: field: message` line each on stdout. A status line per
    file goes to stderr. Exit code 1 when any record fails, 2 for unusable arguments.

    Example:

      speechgpt data validate data/stage2.jsonl --tokenizer runs/lm --max-tokens 512
    """
    from speechgpt.data.validate import validate_file

    if max_tokens is not None and tokenizer is None:
        fail("--max-tokens needs --tokenizer (a Hugging Face tokenizer folder) to count tokens")
    if tokenizer is not None and max_tokens is None:
        warn("--tokenizer is only used with --max-tokens; lengths are not checked")
    text_tokenizer = _load_text_tokenizer(tokenizer) if tokenizer is not None and max_tokens is not None else None
    any_invalid = False
    for path in files:
        with user_errors(*USER_ERRORS):
            report = validate_file(
                path,
                stage=stage,
                num_units=num_units,
                tokenizer=text_tokenizer,
                max_tokens=max_tokens,
                max_problems=max_problems,
            )
        for problem in report.problems:
            sys.stdout.write(problem.format(path) + "\n")
        if report.truncated:
            sys.stdout.write(f"{path}: ... and {report.num_problems - len(report.problems)} more problems\n")
        sys.stdout.flush()
        counts = ", ".join(f"{task}: {n}" for task, n in sorted(report.counts.items()))
        state = (
            "[green]OK[/]"
            if report.ok
            else f"[red]{report.invalid_records} invalid[/] ({report.num_problems} problems)"
        )
        stderr.print(
            f"{escape(str(path))}: {report.records} records, {state}" + (f" ({escape(counts)})" if counts else "")
        )
        any_invalid = any_invalid or not report.ok
    if any_invalid:
        raise typer.Exit(EXIT_PARTIAL_FAILURE)


data_app.command("build-world")(build_world_command)
