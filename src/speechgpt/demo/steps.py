"""The steps of the demo: each a small function from the run folder to its outputs under it.

Every step calls the same library code as the matching ``speechgpt`` command (named in :attr:`Step.command`), with
the demo's settings, so the demo is a script over the product rather than a second path through it. The run folder
(``runs/demo`` by default) ends up holding::

    world/                 the speech world (``speechgpt data build-world``)
    recognizer/            a CTC recogniser whose hidden states the tokenizer clusters (``speechgpt judge train``)
    tokenizer/             recogniser (or MFCC) features + k-means (``speechgpt units train-kmeans``)
    units/train.jsonl      units of every training recording, computed once from the k-means features
                           (the records of ``speechgpt units encode``; audio paths relative to ``units/``)
    data/stage{1,2,3}.*    SpeechInstruct (``speechgpt data build --stage N``)
    train/stage{0..3}/     training runs; ``model/`` in each (``speechgpt train stageN``)
    vocoder/               the fast vocoder (``speechgpt vocoder fit``)
    judge/                 the judge ASR, trained on the training voices only (``speechgpt judge train``)
    bundle/                tokenizer + LM + vocoder, loadable by ``SpeechGPT.from_pretrained``
    eval/                  one result file per evaluation (``speechgpt eval ... -o``)
    conversation/          spoken questions by held-out voices, the spoken answers, ``conversation.md``/``.jsonl``
    report.md, report.json, *.png   the report (``speechgpt eval report``)

Steps that build on earlier ones find their inputs at these fixed places. Unit encodings are computed once: the
tokenizer step keeps the features it clusters and writes the units of every training recording, and the data
builders read them through :class:`CachedUnits` (any recording it has not seen is encoded as usual).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from speechgpt.fileio import atomic_write_text
from speechgpt.jsonl import dumps_record, read_jsonl

if TYPE_CHECKING:
    from speechgpt.demo.runner import DemoConfig
    from speechgpt.eval.lexicon import Lexicon
    from speechgpt.units.tokenizer import SpeechTokenizer, Units

logger = logging.getLogger(__name__)

__all__ = [
    "BUNDLE_DIR",
    "CONVERSATION_DIR",
    "DATA_DIR",
    "EVAL_DIR",
    "JUDGE_DIR",
    "STEPS",
    "TOKENIZER_DIR",
    "TRAIN_DIR",
    "UNITS_FILE",
    "VOCODER_DIR",
    "WORLD_DIR",
    "CachedUnits",
    "Step",
    "StepContext",
    "StepOutput",
    "StepReporter",
]

WORLD_DIR = "world"
TOKENIZER_DIR = "tokenizer"
UNITS_FILE = "units/train.jsonl"
DATA_DIR = "data"
TRAIN_DIR = "train"
VOCODER_DIR = "vocoder"
JUDGE_DIR = "judge"
RECOGNIZER_DIR = "recognizer"
BUNDLE_DIR = "bundle"
EVAL_DIR = "eval"
CONVERSATION_DIR = "conversation"
CONVERSATION_MD = "conversation.md"
CONVERSATION_JSONL = "conversation.jsonl"
STAGE3_ITEMS = "stage3_items.jsonl"
"""The chain-of-modality items the demo speaks (a spread-out subset of the world's training QA)."""
TTS_AUDIO_DIR = "tts_audio"
"""Inside :data:`EVAL_DIR`: what the model said in the TTS evaluation, one WAV per sentence."""
TRAINING_STAGES = (0, 1, 2, 3)


class StepReporter:
    """How a step tells the display what it is doing; this base class shows nothing (library use, tests)."""

    def update(self, done: float, total: float | None = None, status: str = "") -> None:
        """``done`` of ``total`` units of work of the running step (``total`` None: unknown), and a status text."""

    @contextlib.contextmanager
    def own_display(self) -> Iterator[bool]:
        """Wrap work that draws its own progress bar (training); yields whether it should draw one."""
        yield False


@dataclass
class StepContext:
    """What a step gets: the settings, the run folder, the display, and the records of the steps before it."""

    config: DemoConfig
    out: Path
    reporter: StepReporter = field(default_factory=StepReporter)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Finished steps of this run folder by name (``seconds``, ``info``...), for the report."""

    def path(self, *parts: str) -> Path:
        """A path inside the run folder."""
        return self.out.joinpath(*parts)


@dataclass
class StepOutput:
    """What a step made: its outputs (paths relative to the run folder) and a few JSON-ready facts about them."""

    outputs: list[str]
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    """One step of the demo.

    Attributes:
        name: Short name: the cache file is ``steps/<name>.json``.
        title: What the display says.
        run: Does the work.
        keys: The :class:`~speechgpt.demo.runner.DemoConfig` fields its result depends on (its fingerprint).
        after: Steps whose outputs it reads; their fingerprints are part of its own, so a redone step redoes
            everything built on it.
        clean: Paths (relative to the run folder, globs allowed) deleted before the step is redone with another
            fingerprint, so that a resumable library job never continues work of other settings.
        budget: Expected seconds at the default size, for the overall ETA.
        command: The ``speechgpt`` command that does the same with the CLI (shown in the step's record).
        background: Run in a child process on one CPU core while the steps after it go on (on the other cores);
            a step that reads it waits for it. For single-threaded work the language model's training does not
            need (the vocoder, the judge): on 2 cores this hides their minutes behind training. ``run`` must then
            be a module-level function (it is sent to the child by reference).
    """

    name: str
    title: str
    run: Callable[[StepContext], StepOutput]
    keys: tuple[str, ...]
    after: tuple[str, ...]
    clean: tuple[str, ...]
    budget: float
    command: str
    background: bool = False


# --- helpers ----------------------------------------------------------------------------------------------------


def _relative(path: Path, ctx: StepContext) -> str:
    return Path(os.path.relpath(path, ctx.out)).as_posix()


def _world_config(ctx: StepContext) -> Any:
    from speechgpt.data.world import WorldConfig

    config = ctx.config
    overrides = {
        name: getattr(config, name)
        for name in ("questions_per_family", "train_utterances", "test_utterances")
        if getattr(config, name) is not None
    }
    return WorldConfig.from_preset(config.world_size, seed=config.seed, **overrides)


def _world_json(ctx: StepContext) -> dict[str, Any]:
    from speechgpt.data.world_speech import load_world

    return load_world(ctx.path(WORLD_DIR))


def _speech_manifest(ctx: StepContext, split: str) -> Path:
    from speechgpt.data.world_speech import SPEECH_FILES

    return ctx.path(WORLD_DIR, SPEECH_FILES[split])


def _load_tokenizer(ctx: StepContext) -> SpeechTokenizer:
    from speechgpt.units.tokenizer import SpeechTokenizer

    return SpeechTokenizer.from_pretrained(ctx.path(TOKENIZER_DIR), device=ctx.config.device)


def _builder_progress(ctx: StepContext, status: str) -> Callable[[int, int, Any], None]:
    def update(done: int, total: int, failure: Any) -> None:
        ctx.reporter.update(done, total, status)

    return update


def _build_info(result: Any) -> dict[str, Any]:
    stats = result.stats.to_dict()
    keep = ("records", "items", "failed", "skipped", "resumed", "hours", "units")
    info = {key: stats[key] for key in keep if key in stats}
    if result.failures:
        info["failures"] = [str(f) for f in result.failures[:5]]
        logger.warning("%s: %d item(s) failed and were left out", result.output, len(result.failures))
    return info


class CachedUnits:
    """A :class:`~speechgpt.units.tokenizer.SpeechTokenizer` that answers from units already computed.

    The data builders call ``encode(wave, sample_rate=..., name=path)``; for a recording in ``units`` (keyed by its
    absolute path) the stored units are returned, which are exactly what the wrapped tokenizer computes for it;
    anything else is encoded by the tokenizer. ``extractor``, ``kmeans``, ``num_units`` and ``max_seconds`` are the
    tokenizer's, so builds record the same tokenizer fingerprint as with the tokenizer itself.
    """

    def __init__(self, tokenizer: SpeechTokenizer, units: dict[str, Units]) -> None:
        self.tokenizer = tokenizer
        self.units = units
        self.hits = 0
        self.misses = 0

    @property
    def extractor(self) -> Any:
        return self.tokenizer.extractor

    @property
    def kmeans(self) -> Any:
        return self.tokenizer.kmeans

    @property
    def num_units(self) -> int:
        return self.tokenizer.num_units

    @property
    def max_seconds(self) -> float | None:
        return self.tokenizer.max_seconds

    @property
    def frame_rate(self) -> float:
        return self.tokenizer.frame_rate

    def encode(self, audio: Any, *, sample_rate: int | None = None, name: str | None = None) -> Units:
        """The stored units of the recording named ``name`` (or ``audio``, a path), else the tokenizer's."""
        key = name if name is not None else audio if isinstance(audio, str | os.PathLike) else None
        if key is not None:
            found = self.units.get(os.path.abspath(key))
            if found is not None:
                self.hits += 1
                return found
        self.misses += 1
        return self.tokenizer.encode(audio, sample_rate=sample_rate, name=name)


def read_units(ctx: StepContext) -> dict[str, Units]:
    """The units of the training recordings, by absolute audio path (from :data:`UNITS_FILE`)."""
    import torch

    from speechgpt.units.tokenizer import Units

    manifest = ctx.path(UNITS_FILE)
    found = {}
    for record in read_jsonl(manifest):
        units = Units(torch.tensor(record["units"], dtype=torch.long), torch.tensor(record["durations"]))
        found[os.path.abspath(manifest.parent / record["audio"])] = units
    return found


def _cached_tokenizer(ctx: StepContext) -> CachedUnits:
    return CachedUnits(_load_tokenizer(ctx), read_units(ctx))


# --- world and units --------------------------------------------------------------------------------------------


def run_world(ctx: StepContext) -> StepOutput:
    """Speak the embedded world (texts, QA, espeak-ng speech by training and held-out voices)."""
    from speechgpt.data.world_speech import build_world

    summary = build_world(
        _world_config(ctx),
        ctx.path(WORLD_DIR),
        num_workers=ctx.config.workers,
        progress=lambda done, total: ctx.reporter.update(done, total, "speaking"),
    )
    counts = summary.counts
    info = {
        "hours": summary.hours,
        "speech_train": counts["speech_train"]["total"],
        "speech_test": counts["speech_test"]["total"],
        "qa": counts["qa"],
        "corpus_lines": counts["corpus_lines"],
        "voices": summary.voices,
    }
    return StepOutput([WORLD_DIR], info)


def run_tokenizer(ctx: StepContext) -> StepOutput:
    """Fit the unit k-means on frames of the training speech (the recogniser's states, or MFCC/log-mel), then write
    the units of every training recording.

    The features are computed once and kept: k-means trains on a bounded uniform sample of them (as
    ``speechgpt units train-kmeans`` does), and the units are their assignments after deduplication, which is
    exactly ``SpeechTokenizer.encode`` of each recording.
    """
    from speechgpt.audio import DEFAULT_MAX_SECONDS
    from speechgpt.jsonl import ResumableJsonlWriter
    from speechgpt.manifest import collect_audio_inputs
    from speechgpt.units.kmeans import FrameReservoir, KMeans
    from speechgpt.units.light import LightFeatureConfig, LightFeatures
    from speechgpt.units.tokenizer import SpeechTokenizer, dedup, load_wave_for_units

    config = ctx.config
    items = collect_audio_inputs([_speech_manifest(ctx, "train")])
    extractor: Any
    if config.extractor == "recognizer":
        from speechgpt.units.encoder import RecognizerFeatures

        extractor = RecognizerFeatures.from_pretrained(ctx.path(RECOGNIZER_DIR), device="cpu")
    else:
        extractor = LightFeatures(LightFeatureConfig(kind=config.extractor))
    reservoir = FrameReservoir(config.kmeans_max_frames, seed=config.seed)
    features = []
    for done, item in enumerate(items, start=1):
        frames = extractor(load_wave_for_units(item, max_seconds=DEFAULT_MAX_SECONDS))
        reservoir.add(frames.numpy())
        features.append(frames)
        ctx.reporter.update(done, len(items), "features")
    sample = reservoir.features()
    if len(sample) < config.clusters:
        raise ValueError(f"only {len(sample)} frames of training speech for clusters={config.clusters}")

    def on_iteration(iteration: int, total: int, objective: float) -> None:
        ctx.reporter.update(iteration, total, f"k-means, objective {objective:.4g}")

    codebook = KMeans.train(
        sample, config.clusters, seed=config.seed, niter=config.kmeans_iterations, progress=on_iteration
    )
    codebook.info.update(
        {"extractor": config.extractor, "frames_sampled": str(len(sample)), "frames_seen": str(reservoir.seen)}
    )
    SpeechTokenizer(extractor, codebook, max_seconds=DEFAULT_MAX_SECONDS).save_pretrained(ctx.path(TOKENIZER_DIR))
    total_units = 0
    manifest = ctx.path(UNITS_FILE)
    with ResumableJsonlWriter(manifest, key="audio", overwrite=True) as writer:
        for done, (item, frames) in enumerate(zip(items, features, strict=True), start=1):
            units = dedup(codebook.assign(frames))
            total_units += len(units)
            # Relative to the manifest's folder, as every manifest of the package: the run folder can move.
            audio = Path(os.path.relpath(item, manifest.parent)).as_posix()
            writer.write({"audio": audio, **units.to_dict()})
            if done % 256 == 0 or done == len(items):
                ctx.reporter.update(done, len(items), "units")
        writer.finish()
    frames_total = sum(len(f) for f in features)
    info = {
        "clusters": config.clusters,
        "recordings": len(items),
        "frames": frames_total,
        "frames_sampled": len(sample),
        "units": total_units,
        "units_per_second": round(total_units / max(frames_total, 1) * extractor.frame_rate, 2),
    }
    return StepOutput([TOKENIZER_DIR, UNITS_FILE], info)


# --- SpeechInstruct ---------------------------------------------------------------------------------------------


def run_data_stage1(ctx: StepContext) -> StepOutput:
    """Stage-1 unit text: one ``<sosp>...<eosp>`` line per training recording."""
    from speechgpt.data.builders import build_stage1

    out = ctx.path(DATA_DIR, "stage1.txt")
    tokenizer = _cached_tokenizer(ctx)
    result = build_stage1(_speech_manifest(ctx, "train"), tokenizer, out, progress=_builder_progress(ctx, "unit lines"))
    return StepOutput([_relative(out, ctx)], {**_build_info(result), "encoded_again": tokenizer.misses})


def run_data_stage2(ctx: StepContext) -> StepOutput:
    """Stage-2 cross-modal records: an ASR and a TTS instruction per training recording (and, with
    ``asr_speed_perturbation``, ASR instructions of the recording played faster or slower)."""
    from speechgpt.data.builders import build_stage2

    out = ctx.path(DATA_DIR, "stage2.jsonl")
    tokenizer = _cached_tokenizer(ctx)
    result = build_stage2(
        _speech_manifest(ctx, "train"),
        tokenizer,
        out,
        speed_perturbation=ctx.config.asr_speed_perturbation,
        seed=ctx.config.seed,
        progress=_builder_progress(ctx, "ASR/TTS records"),
    )
    return StepOutput([_relative(out, ctx)], {**_build_info(result), "encoded_again": tokenizer.misses})


def _stage3_items(ctx: StepContext) -> Path:
    """Write the chain-of-modality items: every k-th training QA record, all families kept in proportion."""
    from speechgpt.data.world_speech import QA_FILES
    from speechgpt.eval.asr import select_evenly

    records = list(read_jsonl(ctx.path(WORLD_DIR, QA_FILES["train"])))
    chosen = select_evenly(records, ctx.config.stage3_items)
    path = ctx.path(DATA_DIR, STAGE3_ITEMS)
    atomic_write_text(path, "".join(dumps_record(record) + "\n" for record in chosen))
    return path


def run_data_stage3(ctx: StepContext) -> StepOutput:
    """Stage-3 chain-of-modality records: questions and answers spoken by the training voices, four layouts each."""
    from speechgpt.data.builders import build_stage3
    from speechgpt.data.tts import EspeakEngine, VoiceSettings

    items = _stage3_items(ctx)
    # The training voices at espeak-ng's own settings, as `speechgpt data build --stage 3 --voices ...` makes them.
    voices = [VoiceSettings(voice=voice["name"]) for voice in _world_json(ctx)["voices"]["train"]]
    out = ctx.path(DATA_DIR, "stage3.jsonl")
    result = build_stage3(
        items,
        _load_tokenizer(ctx),
        out,
        EspeakEngine(),
        voices,
        seed=ctx.config.seed,
        num_workers=_workers(ctx),
        progress=_builder_progress(ctx, "chain-of-modality records"),
    )
    return StepOutput([_relative(items, ctx), _relative(out, ctx)], _build_info(result))


def _workers(ctx: StepContext) -> int:
    from speechgpt.data.world_speech import default_workers

    return default_workers() if ctx.config.workers is None else ctx.config.workers


# --- training ---------------------------------------------------------------------------------------------------


def _stage_dir(ctx: StepContext, stage: int) -> Path:
    return ctx.path(TRAIN_DIR, f"stage{stage}")


STAGE_FIELDS = (
    "num_epochs",
    "max_steps",
    "learning_rate",
    "batch_size",
    "max_length",
    "warmup",
    "packing",
    "pack_length",
)
"""The training settings every stage has in :class:`DemoConfig` as ``stage{N}_<field>``."""

STAGE_DATA = {0: f"{WORLD_DIR}/text/corpus.txt", 1: "data/stage1.txt", 2: "data/stage2.jsonl", 3: "data/stage3.jsonl"}
"""What each training stage reads, relative to the run folder."""


def _stage_settings(config: DemoConfig, stage: int) -> dict[str, Any]:
    """The settings of a training stage from the demo config (``stage{N}_*`` fields, model size, LoRA), without
    paths: the ``--set`` values of ``speechgpt train stage{N}``."""
    prefix = f"stage{stage}_"
    values: dict[str, Any] = {"seed": config.seed, "save_steps": config.save_steps}
    values["precision"] = _training_precision(config)
    values["logging_steps"] = config.logging_steps
    for name in STAGE_FIELDS:
        values[name] = getattr(config, prefix + name)
    if stage == 0:
        values.update(
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            num_heads=config.num_heads,
            tokenizer_vocab_size=config.text_vocab_size,
            max_position_embeddings=config.max_position_embeddings,
        )
    else:
        values["num_units"] = config.clusters
    if stage == 3:
        values.update(
            lora_r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_target_modules=tuple(config.lora_target_modules),
            replay_fraction=config.stage3_replay_fraction,
        )
    return values


def _letters_for_units(config: DemoConfig) -> bool:
    """Whether stage 1 starts the unit rows at their letters (which needs the recogniser's units)."""
    return config.unit_init == "letters" and config.extractor == "recognizer"


def _training_precision(config: DemoConfig) -> str:
    """``config.precision``, with ``auto`` made bf16 where only the CPU trains and it computes in bf16 natively."""
    import torch

    from speechgpt.train.trainer import cpu_has_bf16

    cpu_only = config.device == "cpu" or (config.device is None and not torch.cuda.is_available())
    if config.precision == "auto" and cpu_only and cpu_has_bf16():
        return "bf16"
    return config.precision


def _train(ctx: StepContext, stage: int) -> StepOutput:
    from speechgpt.train import STAGE_CONFIGS
    from speechgpt.train.stages import run_stage

    values = _stage_settings(ctx.config, stage)
    values.update(data=str(ctx.path(STAGE_DATA[stage])), output_dir=str(_stage_dir(ctx, stage)))
    values["device"] = ctx.config.device
    if stage > 0:
        values["base_model"] = str(_stage_dir(ctx, stage - 1))
    if stage == 1 and _letters_for_units(ctx.config):
        values["unit_init_tokenizer"] = str(ctx.path(TOKENIZER_DIR))
    if stage == 3:
        values["replay_data"] = str(ctx.path(STAGE_DATA[2]))
    with ctx.reporter.own_display() as draw, warnings.catch_warnings():
        # torch's DataLoader warns on every CPU-only run that pinned memory is unused: noise here.
        warnings.filterwarnings("ignore", message=".*pin_memory.*", category=UserWarning)
        result = run_stage(STAGE_CONFIGS[stage](**values, progress=draw))
    info = result.to_dict()
    keep = ("steps", "first_loss", "final_loss", "rows", "examples", "tokens_per_epoch", "train_tokens_per_second")
    outputs = [_relative(_stage_dir(ctx, stage), ctx)]
    return StepOutput(outputs, {key: info[key] for key in keep if key in info})


def run_train_stage0(ctx: StepContext) -> StepOutput:
    """Stage 0: a text tokenizer and a tiny Llama trained from nothing on the world's text corpus."""
    return _train(ctx, 0)


def run_train_stage1(ctx: StepContext) -> StepOutput:
    """Stage 1: modality adaptation on the unit text (adds the speech tokens to the vocabulary)."""
    return _train(ctx, 1)


def run_train_stage2(ctx: StepContext) -> StepOutput:
    """Stage 2: cross-modal instruction fine-tuning of the whole model."""
    return _train(ctx, 2)


def run_train_stage3(ctx: StepContext) -> StepOutput:
    """Stage 3: chain-of-modality instruction fine-tuning with LoRA (merged into ``model/`` at the end)."""
    return _train(ctx, 3)


# --- vocoder, judge, bundle -------------------------------------------------------------------------------------


def run_vocoder(ctx: StepContext) -> StepOutput:
    """Fit the fast vocoder on the training recordings and their units."""
    from speechgpt.audio import load_audio
    from speechgpt.vocoder.fast import FastVocoderConfig
    from speechgpt.vocoder.fit import FastVocoderFitArgs, fit_fast_vocoder

    config = ctx.config
    units = read_units(ctx)
    paths = list(units)
    waves = []
    for done, path in enumerate(paths, start=1):
        waves.append(load_audio(path))
        if done % 256 == 0 or done == len(paths):
            ctx.reporter.update(done, len(paths), "loading audio")
    tokenizer = _load_tokenizer(ctx)

    def on_progress(stage: str, done: int, total: int, loss: float | None) -> None:
        ctx.reporter.update(done, total, stage if loss is None else f"{stage}, loss {loss:.4f}")

    vocoder = fit_fast_vocoder(
        waves,
        [units[path] for path in paths],
        tokenizer.num_units,
        config=FastVocoderConfig(num_units=tokenizer.num_units),
        args=FastVocoderFitArgs(
            refiner_steps=config.vocoder_refiner_steps,
            duration_steps=config.vocoder_duration_steps,
            seed=config.seed,
        ),
        centers=tokenizer.kmeans.centers,
        names=paths,
        progress=on_progress,
    )
    vocoder.save_pretrained(ctx.path(VOCODER_DIR))
    return StepOutput([VOCODER_DIR], {key: vocoder.info[key] for key in sorted(vocoder.info)})


def _train_ctc_recognizer(
    ctx: StepContext, *, steps: int, seed: int, folder: str, lexicon: Lexicon | None = None
) -> StepOutput:
    """A CTC recogniser (the judge's architecture) trained on the training voices only, validated on training
    voices saying held-out questions (not training data), saved to ``folder`` with ``lexicon`` if given."""
    from speechgpt.eval.asr import read_eval_manifest
    from speechgpt.eval.judge import JudgeConfig, JudgeTrainArgs, read_transcripts, train_judge

    config = ctx.config
    items = read_transcripts(_speech_manifest(ctx, "train"))
    valid = read_eval_manifest(
        _speech_manifest(ctx, "test"), where={"voice_split": "train"}, limit=config.judge_valid_items
    )
    args = JudgeTrainArgs(
        steps=steps, batch_seconds=config.judge_batch_seconds, valid_every=0, seed=seed, device=config.device
    )

    def on_step(step: int, total: int, values: dict[str, float]) -> None:
        ctx.reporter.update(step, total, f"loss {values['loss']:.3f}")

    sizes = {
        "hidden_size": config.judge_hidden_size,
        "conv_channels": config.judge_conv_channels,
        "num_layers": config.judge_num_layers,
    }
    architecture = JudgeConfig(**{name: value for name, value in sizes.items() if value is not None})
    model, history = train_judge(
        items, architecture, args=args, valid_items=[(item.audio, item.text) for item in valid], progress=on_step
    )
    model.lexicon = lexicon
    model.save_pretrained(ctx.path(folder))
    info: dict[str, Any] = {"train_items": len(items), "valid_items": len(valid), "steps": steps, "seed": seed}
    info["decoding"] = model.describe_decoding()
    if history.valid:
        _, cer, wer = history.valid[-1]
        info.update(valid_cer=round(cer, 4), valid_wer=round(wer, 4))
    return StepOutput([folder], info)


def _judge_lexicon_files() -> tuple[str, ...]:
    """Inside the world folder: the texts whose words (and counts) the judge spells its transcripts from."""
    from speechgpt.data.world_speech import CORPUS_FILE, VOCABULARY_FILE  # imported late: it loads torch

    return (CORPUS_FILE, VOCABULARY_FILE)


def run_judge(ctx: StepContext) -> StepOutput:
    """Train the judge ASR on the training voices only: it never hears a held-out voice, whose speech it scores.

    With ``judge_lexicon`` it spells what it hears from the world's words (the corpus and the word list).
    """
    from speechgpt.eval.lexicon import Lexicon

    lexicon = None
    if ctx.config.judge_lexicon:
        lexicon = Lexicon.from_files([ctx.path(WORLD_DIR, name) for name in _judge_lexicon_files()])
    return _train_ctc_recognizer(
        ctx, steps=ctx.config.judge_steps, seed=ctx.config.seed, folder=JUDGE_DIR, lexicon=lexicon
    )


def run_recognizer(ctx: StepContext) -> StepOutput:
    """Train the recogniser whose hidden states become the unit features (``extractor="recognizer"``).

    It has the judge's architecture and training data but its own seed and weights: the judge scores speech made
    from these units, so the two stay separate models. Nothing to do for the light extractors.
    """
    config = ctx.config
    if config.extractor != "recognizer":
        return StepOutput([], {"skipped": f"extractor is {config.extractor}"})
    return _train_ctc_recognizer(ctx, steps=config.recognizer_steps, seed=config.seed + 1, folder=RECOGNIZER_DIR)


def run_bundle(ctx: StepContext) -> StepOutput:
    """Put the tokenizer, the stage-3 model (LoRA merged) and the vocoder together as one bundle folder."""
    from speechgpt.infer.bundle import BundleManifest, assemble_bundle
    from speechgpt.train.stages import MODEL_DIR

    bundle = assemble_bundle(
        ctx.path(BUNDLE_DIR),
        tokenizer_dir=ctx.path(TOKENIZER_DIR),
        lm_dir=_stage_dir(ctx, 3) / MODEL_DIR,
        vocoder_dir=ctx.path(VOCODER_DIR),
        overwrite=True,
    )
    manifest = BundleManifest.read(bundle)
    return StepOutput([BUNDLE_DIR], {"num_units": manifest.num_units, "parts": manifest.parts()})


# --- evaluation, conversation, report ---------------------------------------------------------------------------


def _load_pipeline(ctx: StepContext) -> Any:
    from speechgpt.infer import SpeechGPT
    from speechgpt.train.trainer import quiet_hf_progress

    with quiet_hf_progress():  # the demo's display is the only one
        return SpeechGPT.from_pretrained(ctx.path(BUNDLE_DIR), device=ctx.config.device)


def _load_judge(ctx: StepContext) -> Any:
    from speechgpt.eval.tts import load_judge

    return load_judge(ctx.path(JUDGE_DIR), device=ctx.config.device)


def _eval_progress(ctx: StepContext, status: str) -> Callable[[int, int], None]:
    return lambda done, total: ctx.reporter.update(done, total, status)


def run_evaluate(ctx: StepContext) -> StepOutput:
    """Measure the bundle on held-out voices: ASR, TTS and vocoder intelligibility, spoken QA, latency."""
    from speechgpt.eval import asr, latency, qa, tts
    from speechgpt.eval.asr import evaluate_asr, read_eval_manifest
    from speechgpt.eval.latency import measure_latency
    from speechgpt.eval.qa import evaluate_qa, load_world_questions
    from speechgpt.eval.report import save_result
    from speechgpt.eval.tts import evaluate_resynthesis, evaluate_tts, read_text_items

    config = ctx.config
    out = ctx.path(EVAL_DIR)
    test = _speech_manifest(ctx, "test")
    heldout_voices = {"voice_split": "heldout"}
    pipeline = _load_pipeline(ctx)
    judge = _load_judge(ctx)
    results: dict[str, Any] = {}

    def options(default: Callable[..., Any]) -> Any:
        """Each evaluation's own options (greedy), with the demo's token budget when it sets one."""
        return default() if config.eval_max_new_tokens is None else default(config.eval_max_new_tokens)

    asr_items = read_eval_manifest(test, where=heldout_voices, limit=config.eval_asr_items)
    results["asr"] = evaluate_asr(
        pipeline, asr_items, options=options(asr.default_options), progress=_eval_progress(ctx, "ASR")
    )
    save_result(out, "asr", results["asr"])

    texts = read_text_items(test, where=heldout_voices, limit=config.eval_tts_items)
    results["tts"] = evaluate_tts(
        pipeline,
        texts,
        judge,
        options=options(tts.default_tts_options),
        progress=_eval_progress(ctx, "TTS"),
        audio_dir=out / TTS_AUDIO_DIR,
    )
    save_result(out, "tts", results["tts"])

    recordings = read_eval_manifest(test, where=heldout_voices, limit=config.eval_resynthesis_items)
    results["resynthesis"] = evaluate_resynthesis(
        pipeline.vocoder, pipeline.speech_tokenizer, recordings, judge, progress=_eval_progress(ctx, "vocoder")
    )
    save_result(out, "resynthesis", results["resynthesis"])

    questions = load_world_questions(
        ctx.path(WORLD_DIR), split="heldout", voices="heldout", limit=config.eval_qa_questions
    )
    results["qa"] = evaluate_qa(
        pipeline, questions, judge, options=options(qa.default_options), progress=_eval_progress(ctx, "spoken QA")
    )
    save_result(out, "qa", results["qa"])

    results["latency"] = measure_latency(
        pipeline,
        questions[0].audio,
        repeats=config.latency_repeats,
        options=options(latency.default_options),
        progress=_eval_progress(ctx, "latency"),
    )
    save_result(out, "latency", results["latency"])

    failures = sum(len(results[name].failures) for name in ("asr", "tts", "resynthesis"))
    failures += sum(len(combo.failures) for combo in results["qa"].combos.values())
    info = {
        "asr_wer": results["asr"].wer,
        "tts_judge_wer": results["tts"].wer,
        "vocoder_judge_wer": results["resynthesis"].wer,
        "vocoder_ceiling_wer": results["resynthesis"].ceiling.wer,
        "qa_text_accuracy": results["qa"].text_accuracy,
        "qa_speech_accuracy": results["qa"].speech_accuracy,
        "latency_first_audio_s": results["latency"].summary.get("first_audio_s"),
        "items": {
            "asr": len(asr_items),
            "tts": len(texts),
            "resynthesis": len(recordings),
            "qa_questions": len(questions),
        },
        "failures": failures,
    }
    return StepOutput([EVAL_DIR], info)


def _conversation_questions(ctx: StepContext) -> list[Any]:
    """Held-out questions spoken by held-out voices, one per family first (so the few turns show variety)."""
    from speechgpt.eval.qa import load_world_questions

    questions = load_world_questions(ctx.path(WORLD_DIR), split="heldout", voices="heldout")
    chosen: list[Any] = []
    families: set[str] = set()
    for question in questions:  # first pass: a new family each time
        if question.family not in families:
            chosen.append(question)
            families.add(question.family)
    chosen += [q for q in questions if q not in chosen]
    from speechgpt.eval.asr import select_evenly

    return select_evenly(chosen[: max(ctx.config.conversation_turns, 1) * 3], ctx.config.conversation_turns)


def run_conversation(ctx: StepContext) -> StepOutput:
    """Ask a few held-out spoken questions (held-out voices) and keep the question and answer WAVs and transcripts."""
    from speechgpt.audio import load_audio, write_wav
    from speechgpt.eval.tts import judge_transcripts
    from speechgpt.infer import GenerationOptions

    config = ctx.config
    folder = ctx.path(CONVERSATION_DIR)
    pipeline = _load_pipeline(ctx)
    judge = _load_judge(ctx)
    options = GenerationOptions(
        temperature=config.conversation_temperature,
        max_new_tokens=config.conversation_max_new_tokens,
        output_modality="speech",
        seed=config.seed,
    )
    questions = _conversation_questions(ctx)
    turns = []
    for number, question in enumerate(questions, start=1):
        wave = load_audio(question.audio)
        question_wav = write_wav(folder / f"turn{number:02d}_question.wav", wave)
        reply = pipeline.chat([{"role": "user", "content": Path(question.audio)}], options)
        answer_wav = None
        if reply.waveform is not None:
            answer_wav = write_wav(folder / f"turn{number:02d}_answer.wav", reply.waveform, reply.sample_rate)
        turns.append((question, reply, question_wav, answer_wav))
        ctx.reporter.update(number, len(questions), "asking")
    heard = judge_transcripts(judge, [reply.waveform if reply.units else None for _, reply, _, _ in turns])
    rows = []
    for number, ((question, reply, question_wav, answer_wav), spoken) in enumerate(
        zip(turns, heard, strict=True), start=1
    ):
        rows.append(
            {
                "turn": number,
                "voice": question.voice,
                "family": question.family,
                "question": question.question,
                "question_audio": question_wav.name,
                "transcript": reply.transcript,
                "answer_text": reply.text,
                "gold_answer": question.answer,
                "answer_audio": answer_wav.name if answer_wav is not None else None,
                "answer_seconds": round(reply.duration, 3),
                "answer_heard_by_judge": spoken,
                "units": len(reply.units),
            }
        )
    atomic_write_text(folder / CONVERSATION_JSONL, "".join(dumps_record(row) + "\n" for row in rows))
    atomic_write_text(folder / CONVERSATION_MD, conversation_markdown(rows))
    spoken_turns = sum(row["answer_audio"] is not None for row in rows)
    return StepOutput([CONVERSATION_DIR], {"turns": len(rows), "spoken_answers": spoken_turns})


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ") if text not in (None, "") else "—"


def conversation_markdown(rows: Sequence[dict[str, Any]], *, level: int = 1, links: str = "") -> str:
    """``conversation.md``: each turn with links to its two WAVs, what the model heard, wrote and said.

    Args:
        rows: The turns, as ``conversation.jsonl`` holds them.
        level: Markdown level of the title (the report includes the conversation one level down).
        links: Prefix of the WAV links (the folder of the WAVs as seen from where the Markdown lives).
    """
    title = "#" * level
    lines = [
        f"{title} A spoken conversation with the demo SpeechGPT",
        "",
        "Held-out questions (never in training) asked by held-out voices (never heard in training). Each answer is",
        "the model's chain of modality: its transcript of the question, its text answer, then its spoken answer,",
        "which the judge ASR transcribes.",
        "",
    ]
    for row in rows:
        answer = f"[{row['answer_audio']}]({links}{row['answer_audio']})" if row["answer_audio"] else "none"
        lines += [
            f"{title}# Turn {row['turn']} ({row['family']}, voice {row['voice']})",
            "",
            "| | |",
            "|---|---|",
            f"| question (audio) | [{row['question_audio']}]({links}{row['question_audio']}) |",
            f"| question (text) | {_cell(row['question'])} |",
            f"| model heard | {_cell(row['transcript'])} |",
            f"| model answered | {_cell(row['answer_text'])} |",
            f"| expected | {_cell(row['gold_answer'])} |",
            f"| spoken answer | {answer} ({row['answer_seconds']:.1f} s) |",
            f"| judge heard | {_cell(row['answer_heard_by_judge'])} |",
            "",
        ]
    return "\n".join(lines).rstrip() + "\n"


def steps_markdown(records: Sequence[dict[str, Any]]) -> str:
    """The demo's steps: how long each took, and the ``speechgpt`` command that does the same."""
    total = sum(float(record["seconds"]) for record in records)
    lines = [
        "## Demo steps",
        "",
        f"All steps before this report took {total / 60:.1f} min. Each one is the library code of a command:",
        "",
        "| step | seconds | share |",
        "|---|---|---|",
    ]
    for record in records:
        share = float(record["seconds"]) / total if total else 0.0
        lines.append(f"| {record['title']} | {float(record['seconds']):.1f} | {100 * share:.0f}% |")
    lines += ["", "The same steps with the command line:", "", "```sh"]
    lines += [record["command"] for record in records if record.get("command")]
    lines += ["```", ""]
    return "\n".join(lines)


def build_seconds(seconds: Mapping[str, float], steps: Sequence[Step] | None = None) -> float:
    """Wall-clock seconds of a build whose steps took ``seconds`` (by name), with background steps counted only
    where the foreground had to wait for them.

    Each group of consecutive background steps runs next to everything after it until the first step that reads
    one of them (or the end), as the runner does; only what it takes beyond the time that passed meanwhile is
    added. Steps not in ``steps`` (default :data:`STEPS`) count as foreground.
    """
    order = [step for step in (STEPS if steps is None else steps) if step.name in seconds]
    known = {step.name for step in order}
    total = sum(value for name, value in seconds.items() if name not in known)
    lanes: list[dict[str, Any]] = []  # open groups: their steps, their seconds, the time passed since they began

    def wait_for(lane: dict[str, Any]) -> None:
        nonlocal total
        waited = max(0.0, lane["seconds"] - lane["passed"])
        total += waited
        lanes.remove(lane)
        for other in lanes:
            other["passed"] += waited

    for index, step in enumerate(order):
        for lane in [lane for lane in lanes if lane["names"] & set(step.after)]:
            wait_for(lane)
        if step.background:
            if index == 0 or not order[index - 1].background or not lanes:
                lanes.append({"names": set(), "seconds": 0.0, "passed": 0.0})
            lanes[-1]["names"].add(step.name)
            lanes[-1]["seconds"] += seconds[step.name]
            continue
        total += seconds[step.name]
        for lane in lanes:
            lane["passed"] += seconds[step.name]
    while lanes:
        wait_for(lanes[0])
    return total


def run_report(ctx: StepContext) -> StepOutput:
    """``report.md``, ``report.json`` and the plots from the evaluation results, training curves and step times."""
    from speechgpt.eval.report import PLOT_FILES, REPORT_JSON, REPORT_MD, load_results, write_report
    from speechgpt.train.trainer import LOSS_JSON

    results = load_results(ctx.path(EVAL_DIR))
    curves = {f"stage {stage}": _stage_dir(ctx, stage) / LOSS_JSON for stage in TRAINING_STAGES}
    step_seconds = {name: round(float(record["seconds"]), 2) for name, record in ctx.records.items()}
    extra = {
        "seconds_total": round(build_seconds(step_seconds), 2),
        "seconds_per_step": step_seconds,
        "size": ctx.config.size,
        "demo_config": ctx.config.to_dict(),
        "world": ctx.records.get("world", {}).get("info", {}),
        "conversation": f"{CONVERSATION_DIR}/{CONVERSATION_MD}",
    }
    report = write_report(ctx.out, **results, training_curves=curves, extra=extra)
    outputs = [REPORT_MD, REPORT_JSON]
    document = json.loads(ctx.path(REPORT_JSON).read_text(encoding="utf-8"))
    outputs += sorted(document.get("plots", {}).values())
    sections = [report.read_text(encoding="utf-8").rstrip(), steps_markdown(list(ctx.records.values()))]
    turns = ctx.path(CONVERSATION_DIR, CONVERSATION_JSONL)
    if turns.is_file():
        sections.append(conversation_markdown(list(read_jsonl(turns)), level=2, links=f"{CONVERSATION_DIR}/"))
    atomic_write_text(report, "\n\n".join(section.rstrip() for section in sections) + "\n")
    known = set(PLOT_FILES.values())
    info = {key: document.get(key) for key in ("asr_wer", "tts_judge_wer", "qa_text_accuracy", "qa_speech_accuracy")}
    info["plots"] = [p for p in outputs if p in known]
    return StepOutput(outputs, info)


# --- the list ---------------------------------------------------------------------------------------------------

_JUDGE_SIZES = ("judge_hidden_size", "judge_conv_channels", "judge_num_layers")
"""The architecture of the judge and of the units' recogniser."""
_TRAIN_KEYS = ("seed", "precision")
"""What every training stage reads besides its own fields (checkpoint and logging intervals change no result)."""


def _stage_keys(stage: int) -> tuple[str, ...]:
    return (*_TRAIN_KEYS, *(f"stage{stage}_{name}" for name in STAGE_FIELDS))


STEPS: tuple[Step, ...] = (
    Step(
        "world",
        "speech world",
        run_world,
        keys=("seed", "world_size", "questions_per_family", "train_utterances", "test_utterances"),
        after=(),
        clean=(WORLD_DIR,),
        budget=35,
        command="speechgpt data build-world -o {out}/world --size {world_size} --seed {seed}{world_options}",
    ),
    Step(
        "judge",
        "judge ASR",
        run_judge,
        keys=(
            "seed",
            "judge_steps",
            "judge_batch_seconds",
            "judge_valid_items",
            "judge_lexicon",
            *_JUDGE_SIZES,
        ),
        after=("world",),
        clean=(JUDGE_DIR,),
        budget=80,
        command="speechgpt judge train {out}/world/speech_train.jsonl -o {out}/judge --steps {judge_steps} "
        "--batch-seconds {judge_batch_seconds}{judge_options}",
        background=True,
    ),
    Step(
        "recognizer",
        "recogniser for the units",
        run_recognizer,
        keys=("seed", "extractor", "recognizer_steps", "judge_batch_seconds", "judge_valid_items", *_JUDGE_SIZES),
        after=("world",),
        clean=(RECOGNIZER_DIR,),
        budget=140,
        command="speechgpt judge train {out}/world/speech_train.jsonl -o {out}/recognizer --steps {recognizer_steps} "
        "--seed {recognizer_seed} --batch-seconds {judge_batch_seconds}",
    ),
    Step(
        "tokenizer",
        "unit tokenizer (k-means)",
        run_tokenizer,
        keys=("seed", "extractor", "clusters", "kmeans_iterations", "kmeans_max_frames"),
        after=("world", "recognizer"),
        clean=(TOKENIZER_DIR, "units"),
        budget=60,
        command="speechgpt units train-kmeans {out}/world/speech_train.jsonl -o {out}/tokenizer "
        "--extractor {extractor}{recognizer_option} --clusters {clusters} --niter {kmeans_iterations} "
        "--max-frames {kmeans_max_frames}"
        " && speechgpt units encode {out}/world/speech_train.jsonl --tokenizer {out}/tokenizer "
        "-o {out}/units/train.jsonl",
    ),
    Step(
        "vocoder",
        "vocoder",
        run_vocoder,
        keys=("seed", "vocoder_refiner_steps", "vocoder_duration_steps"),
        after=("tokenizer",),
        clean=(VOCODER_DIR,),
        budget=40,
        command="speechgpt vocoder fit {out}/units/train.jsonl --tokenizer {out}/tokenizer -o {out}/vocoder "
        "--refiner-steps {vocoder_refiner_steps} --duration-steps {vocoder_duration_steps}",
        background=True,
    ),
    Step(
        "data_stage1",
        "SpeechInstruct stage 1",
        run_data_stage1,
        keys=(),
        after=("tokenizer",),
        clean=("data/stage1.txt*",),
        budget=3,
        command="speechgpt data build --stage 1 {out}/world/speech_train.jsonl --tokenizer {out}/tokenizer "
        "-o {out}/data/stage1.txt",
    ),
    Step(
        "data_stage2",
        "SpeechInstruct stage 2",
        run_data_stage2,
        keys=("seed", "asr_speed_perturbation"),
        after=("tokenizer",),
        clean=("data/stage2.jsonl*",),
        budget=4,
        command="speechgpt data build --stage 2 {out}/world/speech_train.jsonl --tokenizer {out}/tokenizer "
        "-o {out}/data/stage2.jsonl --seed {seed}{speed_option}",
    ),
    Step(
        "data_stage3",
        "SpeechInstruct stage 3",
        run_data_stage3,
        keys=("seed", "stage3_items"),
        after=("tokenizer",),
        clean=("data/stage3.jsonl*", f"data/{STAGE3_ITEMS}"),
        budget=10,
        command="speechgpt data build --stage 3 {out}/data/stage3_items.jsonl --tokenizer {out}/tokenizer "
        "-o {out}/data/stage3.jsonl --seed {seed} --voices {train_voices}",
    ),
    Step(
        "train_stage0",
        "train stage 0 (text)",
        run_train_stage0,
        keys=(*_stage_keys(0), "hidden_size", "num_layers", "num_heads", "text_vocab_size", "max_position_embeddings"),
        after=("world",),
        clean=("train/stage0",),
        budget=60,
        command="speechgpt train stage0 --data {out}/world/text/corpus.txt -o {out}/train/stage0{stage0_sets}",
    ),
    Step(
        "train_stage1",
        "train stage 1 (units)",
        run_train_stage1,
        keys=(*_stage_keys(1), "clusters", "unit_init", "extractor"),
        after=("train_stage0", "data_stage1"),
        clean=("train/stage1",),
        budget=25,
        command="speechgpt train stage1 --data {out}/data/stage1.txt --base-model {out}/train/stage0 "
        "-o {out}/train/stage1{stage1_sets}",
    ),
    Step(
        "train_stage2",
        "train stage 2 (cross-modal)",
        run_train_stage2,
        keys=_stage_keys(2),
        after=("train_stage1", "data_stage2"),
        clean=("train/stage2",),
        budget=280,
        command="speechgpt train stage2 --data {out}/data/stage2.jsonl --base-model {out}/train/stage1 "
        "-o {out}/train/stage2{stage2_sets}",
    ),
    Step(
        "train_stage3",
        "train stage 3 (chain of modality, LoRA)",
        run_train_stage3,
        keys=(*_stage_keys(3), "lora_r", "lora_alpha", "lora_target_modules", "stage3_replay_fraction"),
        after=("train_stage2", "data_stage3", "data_stage2"),
        clean=("train/stage3",),
        budget=200,
        command="speechgpt train stage3 --data {out}/data/stage3.jsonl --base-model {out}/train/stage2 "
        "-o {out}/train/stage3 --set replay_data={out}/data/stage2.jsonl{stage3_sets}",
    ),
    Step(
        "bundle",
        "bundle",
        run_bundle,
        keys=(),
        after=("tokenizer", "train_stage3", "vocoder"),
        clean=(BUNDLE_DIR,),
        budget=2,
        command="python -c \"from speechgpt.infer.bundle import assemble_bundle; assemble_bundle('{out}/bundle', "
        "tokenizer_dir='{out}/tokenizer', lm_dir='{out}/train/stage3/model', vocoder_dir='{out}/vocoder', "
        'overwrite=True)"',
    ),
    Step(
        "evaluate",
        "evaluation",
        run_evaluate,
        keys=(
            "eval_asr_items",
            "eval_tts_items",
            "eval_resynthesis_items",
            "eval_qa_questions",
            "eval_max_new_tokens",
            "latency_repeats",
        ),
        after=("bundle", "judge"),
        clean=(EVAL_DIR,),
        budget=90,
        command="speechgpt eval asr {out}/world/speech_test.jsonl --bundle {out}/bundle --where voice_split=heldout "
        "--limit {eval_asr_items}{max_new_tokens} -o {out}/eval\n"
        "speechgpt eval tts {out}/world/speech_test.jsonl --bundle {out}/bundle --judge {out}/judge "
        "--where voice_split=heldout --limit {eval_tts_items}{max_new_tokens} --save-audio {out}/eval/tts_audio "
        "-o {out}/eval\n"
        "speechgpt eval vocoder {out}/world/speech_test.jsonl --bundle {out}/bundle --judge {out}/judge "
        "--where voice_split=heldout --limit {eval_resynthesis_items} -o {out}/eval\n"
        "speechgpt eval qa --bundle {out}/bundle --judge {out}/judge --world {out}/world "
        "--limit {eval_qa_questions}{max_new_tokens} -o {out}/eval\n"
        "speechgpt eval latency QUESTION.wav --bundle {out}/bundle --repeats {latency_repeats}{max_new_tokens} "
        "-o {out}/eval",
    ),
    Step(
        "conversation",
        "spoken conversation",
        run_conversation,
        keys=("seed", "conversation_turns", "conversation_max_new_tokens", "conversation_temperature"),
        after=("bundle", "judge"),
        clean=(CONVERSATION_DIR,),
        budget=8,
        command="speechgpt chat --bundle {out}/bundle --audio QUESTION.wav --reply-as speech "
        "--temperature {conversation_temperature} --seed {seed} --max-new-tokens {conversation_max_new_tokens} "
        "-o ANSWER.wav",
    ),
    Step(
        "report",
        "report",
        run_report,
        keys=(),
        after=("evaluate", "conversation", "train_stage0", "train_stage1", "train_stage2", "train_stage3"),
        clean=("report.md", "report.json", "*.png"),
        budget=4,
        command="speechgpt eval report {out}/eval -o {out}",
    ),
)
"""Every step, in the order they run (each after the steps it reads)."""


def step_command(step: Step, ctx: StepContext) -> str:
    """The step's equivalent ``speechgpt`` command, filled with this run's folder and settings."""
    config = ctx.config
    values: dict[str, Any] = {**asdict(config), "out": ctx.out}
    world = {name: getattr(config, name) for name in ("questions_per_family", "train_utterances", "test_utterances")}
    values["world_options"] = "".join(f" --{k.replace('_', '-')} {v}" for k, v in world.items() if v is not None)
    values["train_voices"] = ",".join(_world_config(ctx).train_voices)
    values["recognizer_seed"] = config.seed + 1
    recognizer = config.extractor == "recognizer"
    values["recognizer_option"] = f" --recognizer {ctx.out}/recognizer" if recognizer else ""
    words = "".join(f" --lexicon {ctx.out}/{WORLD_DIR}/{name}" for name in _judge_lexicon_files())
    values["judge_options"] = words if config.judge_lexicon else ""
    speeds = ",".join(f"{factor:g}" for factor in config.asr_speed_perturbation)
    values["speed_option"] = f" --speed-perturb {speeds}" if speeds else ""
    tokens = config.eval_max_new_tokens
    values["max_new_tokens"] = "" if tokens is None else f" --max-new-tokens {tokens}"
    for stage in TRAINING_STAGES:
        settings = _stage_settings(config, stage)
        shown = {k: ",".join(v) if isinstance(v, tuple) else "none" if v is None else v for k, v in settings.items()}
        values[f"stage{stage}_sets"] = "".join(f" --set {k}={v}" for k, v in shown.items())
    if _letters_for_units(config):
        values["stage1_sets"] += f" --set unit_init_tokenizer={ctx.out}/{TOKENIZER_DIR}"
    return step.command.format(**values)
