"""``speechgpt eval ...``: measure a bundle (ASR, TTS, vocoder, spoken QA, latency) and write the report."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from speechgpt.audio import AudioError
from speechgpt.jsonl import JsonlError
from speechgpt.manifest import ManifestError
from speechgpt.serve._console import EXIT_INTERRUPTED, EXIT_PARTIAL_FAILURE, fail, progress_bar, stderr, user_errors

if TYPE_CHECKING:
    from speechgpt.eval.tts import Transcriber
    from speechgpt.infer import SpeechGPT

eval_app = typer.Typer(
    help="Evaluate a bundle: ASR WER, TTS and vocoder intelligibility, spoken QA, latency; then a report.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)

# What can go wrong because of what the user gave (never a bug of ours): one line, no traceback.
USER_ERRORS = (
    AudioError,
    ManifestError,
    JsonlError,
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    ValueError,
)

PIPELINE_LOGGER = "speechgpt.infer"

BundleOpt = Annotated[
    Path, typer.Option("--bundle", "-b", help="Bundle folder (with `speechgpt.json`).", show_default=False)
]
JudgeOpt = Annotated[
    Path,
    typer.Option(
        "--judge",
        help="Judge ASR: a `speechgpt judge train` folder, or a local Hugging Face CTC model folder.",
        show_default=False,
    ),
]
OutputOpt = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Results folder: write the result JSON there instead of to stdout."),
]
LimitOpt = Annotated[
    int | None,
    typer.Option(
        "--limit", help="Evaluate at most this many items (a seeded random sample, the same every run).", min=1
    ),
]
WhereOpt = Annotated[
    list[str] | None,
    typer.Option("--where", help="Keep manifest records with FIELD=VALUE (repeatable), e.g. voice_split=heldout."),
]
MaxTokensOpt = Annotated[
    int | None, typer.Option("--max-new-tokens", help="Most tokens per reply (default: the evaluation's own).", min=1)
]
DeviceOpt = Annotated[
    str | None, typer.Option("--device", help="Torch device, e.g. cpu or cuda:0 (default: cuda when present).")
]


# --- shared helpers -----------------------------------------------------------------------------------------------


def _load_pipeline(bundle: Path, device: str | None) -> SpeechGPT:
    """The bundle's pipeline (tests replace this function to evaluate a scripted model)."""
    from speechgpt.infer import SpeechGPT
    from speechgpt.serve.vocode_cli import _check_device

    with user_errors(*USER_ERRORS):
        _check_device(device)
        with stderr.status(f"loading {bundle}"), _quiet_hf_progress():
            return SpeechGPT.from_pretrained(bundle, device=device)


@contextmanager
def _quiet_hf_progress() -> Iterator[None]:
    """No transformers progress bars while loading: ours is the only display."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _load_units_parts(bundle: Path, device: str | None) -> tuple[Any, Any]:
    """The bundle's speech tokenizer and vocoder, without its LM (the vocoder evaluation needs no LM)."""
    from speechgpt.infer.bundle import BundleManifest
    from speechgpt.serve.vocode_cli import _check_device
    from speechgpt.units.tokenizer import SpeechTokenizer
    from speechgpt.vocoder.base import load_vocoder

    with user_errors(*USER_ERRORS):
        _check_device(device)
        manifest = BundleManifest.read(bundle, verify=False)
        manifest.check_files(bundle)
        tokenizer = SpeechTokenizer.from_pretrained(manifest.path(bundle, "tokenizer"), device=device)
        return tokenizer, load_vocoder(manifest.path(bundle, "vocoder"), device=device)


def _load_judge(judge: Path, device: str | None) -> Transcriber:
    from speechgpt.eval.tts import load_judge

    with user_errors(*USER_ERRORS), stderr.status(f"loading judge {judge}"):
        return load_judge(judge, device=device)


def _pairs(values: list[str] | None, option: str) -> dict[str, str]:
    pairs = {}
    for value in values or []:
        key, sep, rest = value.partition("=")
        if not sep or not key.strip():
            fail(f"{option} {value!r}: expected KEY=VALUE")
        pairs[key.strip()] = rest.strip()
    return pairs


def _options(max_new_tokens: int | None, default: Callable[..., Any]) -> Any:
    return default() if max_new_tokens is None else default(max_new_tokens)


@contextmanager
def _progress(description: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr and the ``progress(done, total)`` callback that drives it; Ctrl-C exits cleanly.

    The pipeline's per-reply warnings (e.g. "speech was asked for but the model wrote no units") are held back
    meanwhile: the result counts them (parse rate, spoken rate), and hundreds of them would bury the display.
    """
    pipeline_logger = logging.getLogger(PIPELINE_LOGGER)
    level = pipeline_logger.level
    pipeline_logger.setLevel(logging.ERROR)
    try:
        with progress_bar() as progress:
            task = progress.add_task(description, total=None, status="")

            def update(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            yield update
    except KeyboardInterrupt:
        stderr.print("interrupted; nothing written")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        pipeline_logger.setLevel(level)


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, int | float) else "—"


def _summary(title: str, rows: list[tuple[str, str]]) -> None:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for metric, value in rows:
        table.add_row(metric, value)
    stderr.print(table)


def _emit(name: str, result: Any, output: Path | None) -> None:
    """The result as JSON: into ``output/{name}.json`` when given, else on stdout."""
    from speechgpt.eval.report import dumps_result, save_result

    if output is None:
        sys.stdout.write(dumps_result(result) + "\n")
        sys.stdout.flush()
        return
    with user_errors(*USER_ERRORS):
        path = save_result(output, name, result)
    stderr.print(f"wrote {path}")


def _finish(failures: int) -> None:
    if failures:
        stderr.print(f"[yellow]{failures} item(s) could not be run; see 'failures' in the result[/]", markup=True)
        raise typer.Exit(EXIT_PARTIAL_FAILURE)


def _group_rows(groups: dict[str, Any], label: str) -> list[tuple[str, str]]:
    return [(f"  {label} {name}", f"{_pct(g.wer)} ({g.utterances})") for name, g in groups.items()]


# --- commands -----------------------------------------------------------------------------------------------------


@eval_app.command("asr")
def asr(
    manifest: Annotated[
        Path,
        typer.Argument(
            help="JSON Lines with `audio` (relative to the manifest's folder) and `text`; `voice` or `speaker` "
            "for the breakdown.",
            show_default=False,
        ),
    ],
    bundle: BundleOpt,
    limit: LimitOpt = None,
    where: WhereOpt = None,
    output: OutputOpt = None,
    template_seed: Annotated[int, typer.Option("--template-seed", help="Changes each item's instruction.")] = 0,
    max_new_tokens: MaxTokensOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Speech recognition through the model: WER/CER of its transcripts, overall and per voice.

    Each recording is asked with one of the packaged speech→text instructions
    (`{instruction} This is input: <sosp>...<eosp>`), greedy decoding; both sides are normalised before scoring.
    Recordings that cannot be read are skipped and listed; the exit code is then 1.

    Example:

      speechgpt eval asr --bundle runs/demo/bundle runs/world/speech_test.jsonl --where voice_split=heldout -o runs/eval
    """
    from speechgpt.eval.asr import default_options, evaluate_asr, read_eval_manifest

    filters = _pairs(where, "--where")
    with user_errors(*USER_ERRORS):
        items = read_eval_manifest(manifest, limit=limit, where=filters)
    pipeline = _load_pipeline(bundle, device)
    with _progress("ASR") as update, user_errors(*USER_ERRORS):
        result = evaluate_asr(
            pipeline,
            items,
            options=_options(max_new_tokens, default_options),
            template_seed=template_seed,
            progress=update,
        )
    rows = [("WER", _pct(result.wer)), ("CER", _pct(result.cer)), ("utterances", str(result.report.utterances))]
    _summary("ASR", rows + _group_rows(result.report.groups, "voice"))
    _emit("asr", result, output)
    _finish(len(result.failures))


@eval_app.command("tts")
def tts(
    texts: Annotated[
        Path,
        typer.Argument(
            help="Sentences to speak: a .txt file (one a line) or a .jsonl manifest with `text` (repeats kept once).",
            show_default=False,
        ),
    ],
    bundle: BundleOpt,
    judge: JudgeOpt,
    limit: LimitOpt = None,
    where: WhereOpt = None,
    output: OutputOpt = None,
    save_audio: Annotated[
        Path | None, typer.Option("--save-audio", help="Also write each spoken reply as ID.wav into this folder.")
    ] = None,
    template_seed: Annotated[int, typer.Option("--template-seed", help="Changes each item's instruction.")] = 0,
    max_new_tokens: MaxTokensOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Text-to-speech intelligibility: the model speaks each sentence, the judge ASR transcribes it, WER is scored.

    Each sentence is asked with one of the packaged text→speech instructions (`{instruction} This is input: {text}`).
    The judge must not have trained on this model's output. A reply without speech counts as silence.

    Example:

      speechgpt eval tts --bundle runs/demo/bundle --judge runs/demo/judge runs/world/speech_test.jsonl --limit 100
    """
    from speechgpt.eval.tts import default_tts_options, evaluate_tts, read_text_items

    with user_errors(*USER_ERRORS):
        items = read_text_items(texts, limit=limit, where=_pairs(where, "--where"))
    pipeline = _load_pipeline(bundle, device)
    transcriber = _load_judge(judge, device)
    with _progress("TTS") as update, user_errors(*USER_ERRORS):
        result = evaluate_tts(
            pipeline,
            items,
            transcriber,
            options=_options(max_new_tokens, default_tts_options),
            template_seed=template_seed,
            progress=update,
            audio_dir=save_audio,
        )
    rows = [("judge WER", _pct(result.wer)), ("judge CER", _pct(result.cer)), ("spoken", _pct(result.spoken_rate))]
    _summary("TTS", [*rows, ("sentences", str(result.report.utterances))])
    _emit("tts", result, output)
    _finish(len(result.failures))


@eval_app.command("vocoder")
def vocoder(
    manifest: Annotated[
        Path,
        typer.Argument(
            help="Held-out recordings: JSON Lines with `audio` and `text` (and `voice`).", show_default=False
        ),
    ],
    bundle: BundleOpt,
    judge: JudgeOpt,
    limit: LimitOpt = None,
    where: WhereOpt = None,
    output: OutputOpt = None,
    true_durations: Annotated[
        bool,
        typer.Option("--true-durations", help="Give the vocoder the measured unit durations instead of its own."),
    ] = False,
    device: DeviceOpt = None,
) -> None:
    """Vocoder intelligibility: real recordings → units → the bundle's vocoder → judge WER.

    The judge's WER on the original recordings is reported too: the ceiling the resynthesis cannot beat.

    Example:

      speechgpt eval vocoder --bundle runs/demo/bundle --judge runs/demo/judge runs/world/speech_test.jsonl \\
        --where voice_split=heldout -o runs/eval
    """
    from speechgpt.eval.asr import read_eval_manifest
    from speechgpt.eval.tts import evaluate_resynthesis

    with user_errors(*USER_ERRORS):
        items = read_eval_manifest(manifest, limit=limit, where=_pairs(where, "--where"))
    tokenizer, model = _load_units_parts(bundle, device)
    transcriber = _load_judge(judge, device)
    with _progress("resynthesis") as update, user_errors(*USER_ERRORS):
        result = evaluate_resynthesis(
            model, tokenizer, items, transcriber, true_durations=true_durations, progress=update
        )
    rows = [
        ("judge WER (resynthesis)", _pct(result.wer)),
        ("judge WER (original audio)", _pct(result.ceiling.wer)),
    ]
    if result.greedy is not None:
        rows.append(("  greedy, no lexicon", f"{_pct(result.greedy['wer'])} / {_pct(result.greedy['ceiling_wer'])}"))
    rows += [
        ("judge", result.judge),
        ("vocoder RTF", f"{result.vocoder_rtf:.3f}"),
        ("recordings", str(result.report.utterances)),
    ]
    _summary("vocoder", rows + _group_rows(result.report.groups, "voice"))
    _emit("resynthesis", result, output)
    _finish(len(result.failures))


@eval_app.command("qa")
def qa(
    bundle: BundleOpt,
    world: Annotated[
        Path, typer.Option("--world", help="A speech world folder (`speechgpt data build-world`).", show_default=False)
    ],
    judge: Annotated[
        Path | None,
        typer.Option("--judge", help="Judge ASR folder (needed when an answer is spoken).", show_default=False),
    ] = None,
    split: Annotated[str, typer.Option("--split", help="Questions: heldout (never trained on) or train.")] = "heldout",
    voices: Annotated[
        str, typer.Option("--voices", help="Speakers of the questions: heldout, train or all.")
    ] = "heldout",
    combos: Annotated[
        list[str] | None,
        typer.Option("--combo", help="Input-output combination (repeatable; default all four): speech-speech, ..."),
    ] = None,
    limit: LimitOpt = None,
    output: OutputOpt = None,
    max_new_tokens: MaxTokensOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Spoken question answering in the four input/output combinations (speech or text in, speech or text out).

    Text answers are matched against the gold answer after normalisation (exact, and contains as whole words);
    spoken answers are transcribed by the judge first. The parse rate counts replies holding every part their
    combination needs.

    Example:

      speechgpt eval qa --bundle runs/demo/bundle --judge runs/demo/judge --world runs/world --limit 60 -o runs/eval
    """
    from speechgpt.eval.qa import COMBOS, Combo, default_options, evaluate_qa, load_world_questions
    from speechgpt.prompt_format import Modality

    chosen = combos or list(COMBOS)
    with user_errors(*USER_ERRORS):
        parsed = [Combo.parse(c) for c in chosen]
        questions = load_world_questions(world, split=split, voices=voices, limit=limit)
    speaks = any(c.output == Modality.SPEECH for c in parsed)
    if judge is None and speaks:
        fail("--judge DIR is needed to score spoken answers (or choose only --combo speech-text / text-text)")
    pipeline = _load_pipeline(bundle, device)
    transcriber = _load_judge(judge, device) if judge is not None and speaks else None
    with _progress("QA") as update, user_errors(*USER_ERRORS):
        result = evaluate_qa(
            pipeline,
            questions,
            transcriber,
            combos=parsed,
            options=_options(max_new_tokens, default_options),
            progress=update,
        )
    rows = [("text accuracy (spoken questions)", _pct(result.text_accuracy))]
    rows.append(("spoken accuracy (spoken questions)", _pct(result.speech_accuracy)))
    for name, combo in result.combos.items():
        speech = _pct(combo.speech_contains.accuracy) if combo.speech_contains is not None else "—"
        rows.append(
            (
                f"  {name}",
                f"text {_pct(combo.text_contains.accuracy)}, spoken {speech}, parsed {_pct(combo.parse_rate)}",
            )
        )
    _summary(f"QA ({len(questions)} questions)", rows)
    _emit("qa", result, output)
    _finish(sum(len(c.failures) for c in result.combos.values()))


@eval_app.command("latency")
def latency(
    audio: Annotated[Path, typer.Argument(help="A spoken question (wav, flac, ...).", show_default=False)],
    bundle: BundleOpt,
    repeats: Annotated[int, typer.Option("--repeats", help="Measured turns per mode.", min=1)] = 3,
    warmup: Annotated[int, typer.Option("--warmup", help="Unmeasured turns first.", min=0)] = 1,
    output: OutputOpt = None,
    max_new_tokens: MaxTokensOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Latency of a spoken turn: stage times, time to first text/audio when streaming, tokens/s, RTFs (medians).

    Example:

      speechgpt eval latency --bundle runs/demo/bundle runs/world/audio/test/test-00000.wav -o runs/eval
    """
    from speechgpt.audio import load_audio
    from speechgpt.eval.latency import default_options, measure_latency

    with user_errors(*USER_ERRORS):
        question = load_audio(audio)  # a bad file is reported before the model loads
    pipeline = _load_pipeline(bundle, device)
    with _progress("latency") as update, user_errors(*USER_ERRORS):
        result = measure_latency(
            pipeline,
            question,
            repeats=repeats,
            warmup=warmup,
            options=_options(max_new_tokens, default_options),
            progress=update,
        )
    s = result.summary

    def secs(key: str) -> str:
        return f"{s[key]:.3f} s" if s.get(key) is not None else "—"

    rows = [(name, secs(f"{name}_s")) for name in ("speech_to_units", "prefill", "decode", "vocoder", "full_reply")]
    rows += [("first text (streaming)", secs("first_text_s")), ("first audio (streaming)", secs("first_audio_s"))]
    if s.get("decode_tokens_per_s") is not None:
        rows.append(("decode tokens/s", f"{s['decode_tokens_per_s']:.1f}"))
    _summary("latency (median)", rows)
    _emit("latency", result, output)


@eval_app.command("report")
def report(
    results: Annotated[
        Path,
        typer.Argument(
            help="Results folder written by the other commands' -o (asr.json, qa.json, ...).", show_default=False
        ),
    ],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Where to write the report (default: the results folder).")
    ] = None,
    loss: Annotated[
        list[Path] | None,
        typer.Option("--loss", help="A training stage's loss.json or its run folder (repeatable), for the curves."),
    ] = None,
    extra: Annotated[
        list[str] | None,
        typer.Option("--extra", help="KEY=VALUE added to report.json (repeatable), e.g. seconds_total=812."),
    ] = None,
) -> None:
    """Assemble `report.md`, `report.json` and the PNG plots from a results folder.

    `report.json` holds the headline numbers (`asr_wer`, `tts_judge_wer`, `vocoder_judge_wer`, `qa_text_accuracy`,
    `qa_speech_accuracy`, ..., null for parts not run) for scripts; `report.md` shows them with tables and plots.

    Example:

      speechgpt eval report runs/eval --loss runs/demo/stage1 --loss runs/demo/stage2 --extra seconds_total=812
    """
    from speechgpt.eval.report import load_results, write_report

    values: dict[str, Any] = {}
    for key, text in _pairs(extra, "--extra").items():
        try:
            values[key] = json.loads(text)
        except json.JSONDecodeError:
            values[key] = text
    curves: dict[str, Path] = {}
    for path in loss or []:
        name = path.name if path.is_dir() else path.parent.name
        curves[name if name not in curves else str(path)] = path
    with user_errors(*USER_ERRORS, TypeError):
        found = load_results(results)
        if not found and not curves:
            fail(f"{results}: no results ({', '.join(sorted(['asr', 'tts', 'resynthesis', 'qa', 'latency']))} .json)")
        path = write_report(output or results, **found, training_curves=curves, extra=values)
    stderr.print(f"wrote {path} from {', '.join(found) or 'training curves only'}")
    sys.stdout.write(str(path) + "\n")
