"""``speechgpt units ...``: train the unit k-means and encode audio into units."""

from __future__ import annotations

import contextlib
import enum
import sys
from pathlib import Path
from typing import Annotated

import typer

from speechgpt.audio import DEFAULT_MAX_SECONDS, AudioError
from speechgpt.jsonl import JsonlError, ResumableJsonlWriter, dumps_record
from speechgpt.manifest import ManifestError, collect_audio_inputs, shard_items
from speechgpt.serve._console import (
    EXIT_INTERRUPTED,
    EXIT_PARTIAL_FAILURE,
    fail,
    progress_bar,
    stderr,
    user_errors,
    warn,
)

units_app = typer.Typer(
    help="Speech units: train the k-means codebook, encode audio into <sosp><12>...<eosp> units.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)

# What can go wrong because of what the user gave (never a bug of ours): shown as one line, no traceback.
USER_ERRORS = (AudioError, ManifestError, JsonlError, FileNotFoundError, IsADirectoryError, ValueError)

InputsArg = Annotated[
    list[Path],
    typer.Argument(
        help="Audio files, folders (searched recursively for .wav/.flac/.ogg/...) or manifests "
        "(.jsonl with an 'audio' field, fairseq .tsv, or .txt with one path per line).",
        show_default=False,
    ),
]
ShardOpt = Annotated[int, typer.Option("--shard", help="Which shard of the inputs to process (0-based).", min=0)]
NumShardsOpt = Annotated[int, typer.Option("--num-shards", help="Split the inputs into this many shards.", min=1)]
MaxSecondsOpt = Annotated[
    float, typer.Option("--max-seconds", help="Reject recordings longer than this (seconds).", min=0.1)
]
DeviceOpt = Annotated[
    str | None,
    typer.Option(
        "--device", help="Torch device for HuBERT, e.g. cpu or cuda:0 (default: cuda when present, else cpu)."
    ),
]
LayerOpt = Annotated[int, typer.Option("--layer", help="HuBERT transformer layer whose output is clustered.", min=1)]


class ExtractorKind(str, enum.Enum):
    mfcc = "mfcc"
    logmel = "logmel"
    hubert = "hubert"
    recognizer = "recognizer"


def _load_tokenizer(
    tokenizer: Path | None,
    hubert: Path | None,
    kmeans: Path | None,
    layer: int,
    device: str | None,
    max_seconds: float,
):
    from speechgpt.units.tokenizer import SpeechTokenizer

    if tokenizer is not None and (hubert or kmeans):
        fail("give either --tokenizer DIR or --hubert PATH --kmeans PATH, not both")
    with user_errors(*USER_ERRORS):
        if tokenizer is not None:
            return SpeechTokenizer.from_pretrained(tokenizer, device=device, max_seconds=max_seconds)
        if hubert is None or kmeans is None:
            fail("a tokenizer is needed: --tokenizer DIR, or both --hubert PATH and --kmeans PATH")
        return SpeechTokenizer.from_released(hubert, kmeans, layer=layer, device=device, max_seconds=max_seconds)


def _inputs(sources: list[Path], shard: int, num_shards: int) -> list[str]:
    with user_errors(*USER_ERRORS):
        items = shard_items(collect_audio_inputs(sources), shard, num_shards)
    if not items:
        fail(f"no audio found in {', '.join(map(str, sources))}")
    return items


@units_app.command("encode")
def encode(
    inputs: InputsArg,
    tokenizer: Annotated[
        Path | None, typer.Option("--tokenizer", help="A tokenizer folder (from `speechgpt units train-kmeans`).")
    ] = None,
    hubert: Annotated[
        Path | None,
        typer.Option("--hubert", help="Released fairseq mHuBERT checkpoint (.pt) or a Hugging Face HuBERT folder."),
    ] = None,
    kmeans: Annotated[
        Path | None,
        typer.Option("--kmeans", help="Released joblib k-means (.bin) or our kmeans.safetensors; with --hubert."),
    ] = None,
    layer: LayerOpt = 11,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write JSON Lines here (resumable) instead of to stdout."),
    ] = None,
    shard: ShardOpt = 0,
    num_shards: NumShardsOpt = 1,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Start -o from scratch instead of resuming it.")
    ] = False,
    max_seconds: MaxSecondsOpt = DEFAULT_MAX_SECONDS,
    device: DeviceOpt = None,
) -> None:
    """Encode audio into deduplicated units, one JSON object per recording.

    Each line holds `audio` (the path), `units` (ids after removing repeats), `durations` (frames per unit,
    20 ms each) and `unit_string` (`<sosp><12>...<eosp>`). With -o, finished recordings are written as they
    complete to OUT.partial, which becomes OUT at the end; running the same command again after an
    interruption skips what is done and yields exactly the same file. Unreadable or invalid recordings are
    reported on stderr and skipped; the exit code is then 1.

    Examples:

      speechgpt units encode clip.wav --tokenizer runs/tokenizer

      speechgpt units encode data/ -o units.jsonl \\
        --hubert mhubert_base_vp_en_es_fr_it3.pt --kmeans mhubert_base_vp_en_es_fr_it3_L11_km1000.bin
    """
    items = _inputs(inputs, shard, num_shards)
    speech_tokenizer = _load_tokenizer(tokenizer, hubert, kmeans, layer, device, max_seconds)
    writer = None
    if output is not None:
        with user_errors(*USER_ERRORS):
            writer = ResumableJsonlWriter(output, key="audio", overwrite=overwrite)
        if writer.resumed:
            stderr.print(f"resuming {output}: {writer.resumed} recording(s) already encoded")
    todo = [item for item in items if writer is None or item not in writer.done]
    failures: list[str] = []
    try:
        with progress_bar() as progress, writer if writer is not None else contextlib.nullcontext():
            task = progress.add_task("encoding", total=len(todo), status="")
            for item in todo:
                try:
                    units = speech_tokenizer.encode(item)
                except AudioError as e:
                    failures.append(str(e))
                    progress.console.print(f"[red]skipped[/] {e}", markup=True, highlight=False, soft_wrap=True)
                else:
                    record = {"audio": item, **units.to_dict()}
                    if writer is not None:
                        writer.write(record)
                    else:
                        sys.stdout.write(dumps_record(record) + "\n")
                        sys.stdout.flush()
                progress.update(task, advance=1, status=f"{len(failures)} failed" if failures else "")
            if writer is not None:
                writer.finish()
    except KeyboardInterrupt:
        where = f"; finished ones are kept in {writer.partial_path}, run the same command to resume" if writer else ""
        stderr.print(f"interrupted{where}")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    done = len(todo) - len(failures)
    stderr.print(f"encoded {done}, already done {len(items) - len(todo)}, failed {len(failures)}")
    if failures:
        raise typer.Exit(EXIT_PARTIAL_FAILURE)


@units_app.command("train-kmeans")
def train_kmeans(
    inputs: InputsArg,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Tokenizer folder to write (config + kmeans.safetensors).")
    ],
    extractor: Annotated[
        ExtractorKind,
        typer.Option(
            "--extractor",
            help="Frame features: mfcc/logmel (light, CPU), hubert (needs --hubert) or recognizer (the hidden "
            "states of a CTC recogniser from `speechgpt judge train`, given by --recognizer: speaker-robust units).",
        ),
    ] = ExtractorKind.mfcc,
    hubert: Annotated[
        Path | None, typer.Option("--hubert", help="fairseq mHuBERT .pt or Hugging Face HuBERT folder.")
    ] = None,
    recognizer: Annotated[
        Path | None,
        typer.Option(
            "--recognizer", help="A recogniser folder written by `speechgpt judge train` (--extractor recognizer)."
        ),
    ] = None,
    layer: LayerOpt = 11,
    clusters: Annotated[
        int, typer.Option("--clusters", "-k", help="Number of units (k-means clusters).", min=2)
    ] = 1000,
    max_frames: Annotated[
        int,
        typer.Option("--max-frames", help="Train on a seeded uniform sample of at most this many frames.", min=1),
    ] = 500_000,
    niter: Annotated[int, typer.Option("--niter", help="k-means iterations.", min=1)] = 50,
    seed: Annotated[int, typer.Option("--seed", help="Seed for frame sampling and k-means initialisation.")] = 0,
    shard: ShardOpt = 0,
    num_shards: NumShardsOpt = 1,
    max_seconds: MaxSecondsOpt = DEFAULT_MAX_SECONDS,
    device: DeviceOpt = None,
) -> None:
    """Fit the unit codebook on an audio collection and write a tokenizer folder.

    Features of every recording are streamed through a bounded uniform sample (--max-frames), so millions of
    frames fit in memory; k-means runs with faiss. The folder then encodes audio with
    `speechgpt units encode --tokenizer DIR`.

    Example:

      speechgpt units train-kmeans data/wavs -o runs/tokenizer --extractor mfcc --clusters 200

      speechgpt judge train world/speech_train.jsonl -o runs/recognizer --seed 1
      speechgpt units train-kmeans world/speech_train.jsonl -o runs/tokenizer --extractor recognizer \\
          --recognizer runs/recognizer --clusters 200
    """
    from speechgpt.units.kmeans import FrameReservoir, KMeans
    from speechgpt.units.light import LightFeatureConfig, LightFeatures
    from speechgpt.units.tokenizer import SpeechTokenizer, load_wave_for_units

    items = _inputs(inputs, shard, num_shards)
    with user_errors(*USER_ERRORS):
        if extractor is ExtractorKind.hubert:
            if hubert is None:
                fail("--extractor hubert needs --hubert PATH (fairseq .pt or Hugging Face folder)")
            from speechgpt.units.hubert import HubertFeatures

            features = HubertFeatures.load(hubert, layer=layer, device=device)
        elif extractor is ExtractorKind.recognizer:
            if recognizer is None:
                fail("--extractor recognizer needs --recognizer DIR (a folder from `speechgpt judge train`)")
            from speechgpt.units.encoder import RecognizerFeatures

            features = RecognizerFeatures.from_pretrained(recognizer, device=device)
        else:
            if hubert is not None or recognizer is not None:
                warn(f"--hubert and --recognizer are ignored with --extractor {extractor.value}")
            features = LightFeatures(LightFeatureConfig(kind=extractor.value))
    reservoir = FrameReservoir(max_frames, seed=seed)
    failures: list[str] = []
    try:
        with progress_bar() as progress:
            task = progress.add_task("features", total=len(items), status="")
            for item in items:
                try:
                    # The same loading and checks as encoding, so both accept exactly the same audio.
                    reservoir.add(features(load_wave_for_units(item, max_seconds=max_seconds)).numpy())
                except AudioError as e:
                    failures.append(str(e))
                    progress.console.print(f"[red]skipped[/] {e}", markup=True, highlight=False, soft_wrap=True)
                progress.update(task, advance=1, status=f"{reservoir.seen} frames")
            sample = reservoir.features()
            if len(sample) < clusters:
                fail(f"only {len(sample)} frames from {len(items)} recording(s); need at least --clusters={clusters}")
            fit = progress.add_task("k-means", total=niter, status="")

            def on_iteration(iteration: int, total: int, objective: float) -> None:
                progress.update(fit, completed=iteration, status=f"objective {objective:.4g}")

            with user_errors(*USER_ERRORS):
                codebook = KMeans.train(sample, clusters, seed=seed, niter=niter, progress=on_iteration)
    except KeyboardInterrupt:
        stderr.print("interrupted; nothing written")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    codebook.info.update(
        {"extractor": extractor.value, "frames_sampled": str(len(sample)), "frames_seen": str(reservoir.seen)}
    )
    with user_errors(*USER_ERRORS):
        SpeechTokenizer(features, codebook, max_seconds=max_seconds).save_pretrained(output)
    stderr.print(
        f"wrote {output}: {clusters} units from {len(sample)} of {reservoir.seen} frames "
        f"({len(items) - len(failures)} recording(s), {len(failures)} skipped)"
    )
    if failures:
        raise typer.Exit(EXIT_PARTIAL_FAILURE)
