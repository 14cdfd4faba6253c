"""Running the demo: its settings (:class:`DemoConfig`, sized by a preset), the step cache, and the progress display.

Each finished step writes ``<out>/steps/<name>.json`` (atomically): its fingerprint, outputs, seconds and a few
facts. A later run skips a step whose record has the same fingerprint and whose outputs all exist; ``fresh`` redoes
everything. The fingerprint of a step covers the settings it reads (:attr:`~speechgpt.demo.steps.Step.keys`) and
the fingerprints of the steps it builds on, so changing, say, the stage-2 learning rate redoes stage 2, stage 3,
the bundle, the evaluation and the report, and nothing before them.

A step that is interrupted leaves ``<out>/steps/<name>.started.json``; the next run continues it when its settings
are the same (the world build, unit files, data builders and training all resume), and deletes its outputs first
when they are not (or when the step is redone after finishing), so no job ever continues another setting's work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from speechgpt.demo.steps import STEPS, Step, StepContext, StepReporter, build_seconds, step_command
from speechgpt.fileio import atomic_write_text

logger = logging.getLogger(__name__)

__all__ = [
    "DEMO_SIZES",
    "DemoConfig",
    "DemoError",
    "DemoProgress",
    "DemoResult",
    "RichDemoProgress",
    "StepFailed",
    "StepRecord",
    "run_demo",
    "summary_table",
]

STEPS_DIR = "steps"
"""Inside the run folder: one record per finished step."""
STARTED_SUFFIX = ".started.json"
LOCK_FILE = ".lock"
"""Inside :data:`STEPS_DIR`: held (``flock``) by the run working in the folder."""
RECORD_FORMAT = "speechgpt-demo-step"
RECORD_VERSION = 1
DEFAULT_OUTPUT = "runs/demo"

DEMO_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "threads": 1,
        "world_size": "tiny",
        "train_utterances": 60,
        "test_utterances": 24,
        "clusters": 24,
        "kmeans_iterations": 8,
        "kmeans_max_frames": 20_000,
        "stage3_items": 24,
        "hidden_size": 64,
        "num_layers": 2,
        "num_heads": 2,
        "text_vocab_size": 300,
        "save_steps": 1000,
        "logging_steps": 5,
        "stage0_num_epochs": 6.0,
        "stage0_learning_rate": 3e-3,
        "stage0_batch_size": 8,
        "stage0_max_length": 128,
        "stage1_num_epochs": 2.0,
        "stage1_learning_rate": 3e-3,
        "stage1_batch_size": 4,
        "stage1_max_length": 256,
        "stage2_num_epochs": 5.0,
        "stage2_learning_rate": 3e-3,
        "stage2_batch_size": 4,
        "stage2_max_length": 512,
        "stage3_num_epochs": 10.0,
        "stage3_learning_rate": 5e-3,
        "stage3_batch_size": 4,
        "stage3_max_length": 512,
        "stage3_replay_fraction": 0.5,
        "stage2_packing": True,
        "stage2_pack_length": None,
        "stage3_packing": True,
        "stage3_pack_length": None,
        "lora_r": 8,
        "lora_alpha": 16,
        "vocoder_refiner_steps": 10,
        "vocoder_duration_steps": 10,
        "judge_steps": 30,
        # MFCC units: the plumbing check skips the recogniser (tests cover that path on its own).
        "extractor": "mfcc",
        "recognizer_steps": 30,
        "judge_batch_seconds": 10.0,
        "judge_valid_items": 4,
        "judge_hidden_size": 48,
        "judge_conv_channels": 48,
        "judge_num_layers": 1,
        "eval_asr_items": 4,
        "eval_tts_items": 3,
        "eval_resynthesis_items": 4,
        "eval_qa_questions": 2,
        "eval_max_new_tokens": 48,
        "latency_repeats": 1,
        "conversation_turns": 3,
        "conversation_max_new_tokens": 160,
        # A model trained for seconds repeats one unit when decoding greedily; sampling exercises the spoken path.
        "conversation_temperature": 0.8,
    },
    "small": {
        "world_size": "small",
        "clusters": 100,
        "kmeans_iterations": 15,
        "kmeans_max_frames": 100_000,
        "stage3_items": 200,
        "hidden_size": 128,
        "num_layers": 3,
        "num_heads": 4,
        "stage0_num_epochs": 4.0,
        "stage2_num_epochs": 1.0,
        "stage3_num_epochs": 2.0,
        "vocoder_refiner_steps": 300,
        "vocoder_duration_steps": 200,
        "judge_steps": 400,
        "recognizer_steps": 300,
        "eval_asr_items": 30,
        "eval_tts_items": 12,
        "eval_resynthesis_items": 30,
        "eval_qa_questions": 12,
    },
    "default": {},
}
"""Named sizes: the fields each one changes from the :class:`DemoConfig` defaults (which are the default size)."""


class DemoError(ValueError):
    """Settings or a run folder the demo cannot use; the message names the setting or folder and the reason."""


class StepFailed(RuntimeError):
    """A step raised; the message names the step, and the original error is the ``__cause__``."""

    def __init__(self, step: str, error: BaseException) -> None:
        super().__init__(f"step {step!r} failed: {type(error).__name__}: {error}")
        self.step = step


@dataclass
class DemoConfig:
    """Every setting of the demo; the defaults are the ``default`` size (see :data:`DEMO_SIZES` for the others).

    Counts of items and steps set the time the demo takes; ``None`` for a world count keeps the world preset's.
    Training fields ``stage{N}_*`` are those of :class:`~speechgpt.train.Stage0Config` and the following stages.
    """

    size: str = "default"
    """The preset these values came from (recorded in the report)."""
    output_dir: str = DEFAULT_OUTPUT
    """The run folder."""
    seed: int = 0
    """Seed of the world, the k-means, the data, the models and the judge."""
    workers: int | None = None
    """Speech synthesis processes (world and stage 3); None: one per CPU."""
    device: str | None = None
    """Torch device of training, the judge and evaluation; None: CUDA when present, else CPU."""
    precision: str = "auto"
    """Precision of training: ``auto`` is bf16 autocast on a CPU with native bf16 (AVX512-BF16 or AMX: 1.4x the
    tokens/s of fp32 in stage 2 here, same held-out WER; stage 3 1.26x, parse rates and WER as in fp32) and
    ``speechgpt train``'s choice elsewhere; or ``fp32``, ``bf16``, ``fp16``."""
    threads: int | None = None
    """Torch CPU threads while the demo runs (restored afterwards); None keeps torch's choice. Small models and busy
    machines run much faster on 1 thread (2 threads contending with other work can be 10x slower)."""

    world_size: str = "default"
    """Preset of :class:`~speechgpt.data.world.WorldConfig` (``tiny``, ``small``, ``default``, ``large``)."""
    questions_per_family: int | None = None
    train_utterances: int | None = None
    test_utterances: int | None = None

    extractor: str = "recognizer"
    """Frame features of the unit tokenizer: ``recognizer`` (the hidden states of a small CTC recogniser trained
    first on the training voices: units that agree across speakers, which the LM learns to read much sooner),
    ``mfcc`` or ``logmel`` (no training step; units that depend more on the voice)."""
    recognizer_steps: int = 800
    """Training steps of that recogniser (its architecture is the judge's)."""
    clusters: int = 200
    """Speech units (k-means clusters). More clusters keep more of what was said, but cost time the demo does not
    have. From the same recogniser, the vocoder's resynthesis of 240 held-out-voice recordings scored judge WER 22.3%
    at 200 clusters, 20.8% at 400, 20.2% at 800 and 20.6% at 1,000, and the stage-2 model's held-out ASR WER went
    from 0.208 (200) to 0.181 (800) at the same number of steps (``--set clusters=800 --set stage2_num_epochs=2.3``).
    The whole demo at 800: ASR 20.0% (23.6%), vocoder 20.2%, TTS 24.9% (same), spoken QA 17.5/8.8% on 80 questions
    (20.0/10.0%), but 15.0 minutes plus the install instead of 12.7: k-means took 44 s (25), stage 2 338 s (272)
    and stage 3 212 s (167)."""
    kmeans_iterations: int = 20
    kmeans_max_frames: int = 200_000
    """k-means trains on a uniform sample of at most this many frames."""

    stage3_items: int | None = 400
    """Training QA records spoken for stage 3 (spread over the families); None: all of them."""

    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    text_vocab_size: int = 1024
    """Byte-level BPE vocabulary of the stage-0 text tokenizer. At 512 the meta instruction that starts every
    stage-2/3 record takes 161 tokens (over half of a record); at 1024 it takes 65."""
    max_position_embeddings: int = 1024

    save_steps: int = 50
    """Training checkpoints (what an interrupted stage resumes from) every this many steps."""
    logging_steps: int = 10

    stage0_num_epochs: float = 8.0
    """The facts and phrasings of the text world are learned here, and every later stage builds on this prior. At 3
    epochs of 16 rows (36 steps) the model wrote "is is is", and the same stage-2 training from it reached held-out
    ASR WER 0.76; from 8 epochs of 4 rows (376 steps, loss 0.91) 0.31, from 12 (564 steps, loss 0.54) 0.35."""
    stage0_max_steps: int | None = None
    stage0_learning_rate: float = 1e-3
    stage0_batch_size: int = 4
    """Rows of 256 tokens: small batches, many steps (16 rows at 2e-3 reached loss 1.61 on the same tokens)."""
    stage0_max_length: int = 256
    stage0_warmup: float = 0.05
    stage0_packing: bool = True
    stage0_pack_length: int | None = None

    unit_init: str = "letters"
    """How stage 1 starts the unit embeddings: ``letters``, the mix of letters the recogniser reads in each unit's
    k-means centre (recogniser units only; :mod:`speechgpt.lm.unit_init`: the stage-2 model's held-out ASR WER
    0.230 -> 0.200 on 240 recordings), or ``mean``, the mean of the text rows (what MFCC and HuBERT units get)."""

    stage1_num_epochs: float = 0.25
    stage1_max_steps: int | None = None
    stage1_learning_rate: float = 2e-3
    stage1_batch_size: int = 8
    stage1_max_length: int = 512
    stage1_warmup: float = 0.05
    stage1_packing: bool = True
    stage1_pack_length: int | None = None

    asr_speed_perturbation: tuple[float, ...] = ()
    """Stage-2 data: one more transcription record per training recording and factor, of the recording played that
    much faster (``speechgpt data build --speed-perturb``). Not used by default: at the same 2,148 stage-2 steps,
    copies at 0.9 and 1.1 lowered the stage-2 model's held-out-voice ASR WER from 0.208 to 0.176, but the same three
    transcription records per recording without perturbation reached 0.179 (the gain is the larger share of
    transcription steps), and the model's speech got worse: TTS judge WER 0.219 -> 0.385 (0.278 with the plain
    copies; 120 sentences). One copy alone: 0.202 and 0.312; one copy and as many speech-output records: 0.215 and
    0.240."""

    stage2_num_epochs: float = 2.5
    """Each training recording is a transcription record and a speech-output record. With the meta instruction
    computed once per row (``stage2_pack_length``), 2.5 epochs took the time 1.5 padded epochs took (291 s against
    290 s), and the stage-2 model's held-out ASR WER fell from 0.32 to 0.23 (240 recordings). With 800 units (see
    ``clusters``) a record is longer: 2.3 epochs are the 2,150 steps that 2.5 epochs are at 200 units."""
    stage2_max_steps: int | None = None
    stage2_learning_rate: float = 1e-3
    """Learning to read units is sensitive to it: ASR-only runs (1,200 steps of 8 records, recogniser units) reached
    held-out WER 0.93, 0.60, 0.31 and 0.55 at 5e-3, 2e-3, 1e-3 and 5e-4 (30 held-out recordings each)."""
    stage2_batch_size: int = 1
    """One packed row a step, ~8.5 records: 8 records a step learned to read units faster per record than 26."""
    stage2_max_length: int = 512
    stage2_warmup: float = 0.05
    stage2_packing: bool = True
    stage2_pack_length: int | None = 720
    """Rows hold the 68-token meta instruction once, then the rest of ~8.5 records (each ~75 tokens) in random
    order: 1.5 epochs took 170 s against 290 s for padded batches of 8, at held-out ASR WER 0.35 against 0.32 (240
    recordings; the same rows filled by best fit, which groups records by length, gave 0.40)."""

    stage3_num_epochs: float = 1.75
    """With units that start as letters, 1.5 epochs left spoken answers without units: 100 held-out spoken
    questions parsed 85% speech->speech, against 95% at 1.75 epochs (held-out ASR WER 0.219 and 0.228, 100
    recordings) and 96% at 2 (0.231; 50 s more)."""
    stage3_max_steps: int | None = None
    stage3_learning_rate: float = 3e-3
    """From the same stage-2 model (rows of ~4 records, 1.5 epochs, replay 1), 30 held-out questions parsed
    90/100/100/100% at 3e-3 (speech->speech, speech->text, text->speech, text->text) and 87/97/100/100% at 2e-3,
    with held-out ASR WER 0.250 and 0.243. Padded batches of 4 at 1e-3 had parsed 60/93/97/100%."""
    stage3_batch_size: int = 1
    stage3_max_length: int = 350
    """Longest record (the world's chain-of-modality and stage-2 records are at most ~225 tokens)."""
    stage3_warmup: float = 0.05
    stage3_packing: bool = True
    stage3_pack_length: int | None = 350
    """Rows hold the meta instruction once, then ~3.5 records in random order: a step costs half a padded batch of
    4. Padded batches of 4 (1 epoch, replay 0.5, 90 s) left held-out ASR WER at 0.34 after stage 2's 0.23; these
    rows with replay 1 and 1.5 epochs (114 s), 0.25. Long packed rows (1024, 54 steps) taught the adapter nothing."""
    stage3_replay_fraction: float = 1.0
    """Stage-2 records mixed into stage 3 per chain-of-modality record, so that the model still follows the
    cross-modal instructions (transcribe, speak) afterwards; 0: chain of modality alone, as released. Held-out ASR
    WER after stage 3 (1 epoch, same rows): 0.29 at 0.5, 0.255 at 1.0 (0.93 with no replay, in an earlier recipe)."""
    lora_r: int = 16
    lora_alpha: int = 32
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    """The release adapts ``q_proj``/``v_proj`` of a 7B model; a 3.5M-parameter model needs the adapter's capacity on
    every projection to take in the chain of modality."""

    vocoder_refiner_steps: int = 800
    vocoder_duration_steps: int = 600

    judge_lexicon: bool = True
    """Spell the judge's transcripts from the world's words (``world/text/corpus.txt`` counts and the word list
    ``world/text/vocabulary.txt``) instead of character by character. On the default demo's judge, its WER on real
    held-out-voice recordings fell from 0.254 to 0.127 (200 recordings), on the vocoder's resynthesis of 60 of them
    from 0.307 to 0.211; the report shows the greedy numbers beside these."""
    judge_steps: int = 1400
    """On 2 cores the judge trains in the background on one while the recogniser, the data and stages 0-1 run on
    the other; at 1,400 steps it was done here before stage 2 began, so stage 2 got both cores (a step keeps the
    threads it started with)."""
    judge_batch_seconds: float = 30.0
    judge_valid_items: int = 60
    judge_hidden_size: int | None = None
    """Recurrent units per direction of the judge; None: :class:`~speechgpt.eval.judge.JudgeConfig`'s."""
    judge_conv_channels: int | None = None
    judge_num_layers: int | None = None

    eval_asr_items: int = 240
    """Held-out-voice recordings transcribed by the model (240: all of the default world's; 80 took 4 s)."""
    eval_tts_items: int = 30
    """Sentences the model speaks for the judge."""
    eval_resynthesis_items: int = 240
    """Held-out-voice recordings passed through units and the vocoder (on 60 of them the vocoder scored 20.2%, on all
    240 22.3%: small samples of a few words each move by points)."""
    eval_qa_questions: int = 30
    """Held-out spoken questions (held-out voices), each asked in the four combinations."""
    eval_max_new_tokens: int | None = None
    """Most tokens per evaluated reply; None: each evaluation's own budget."""
    latency_repeats: int = 2
    conversation_turns: int = 4
    conversation_max_new_tokens: int = 400
    conversation_temperature: float = 0.0
    """0: greedy answers (the evaluation's decoding); above 0, sampled with ``top_p`` 0.9 and the demo's seed, as
    ``speechgpt chat`` samples."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if typing.get_origin(hints[item.name]) is tuple and isinstance(value, list):
                value = tuple(value)
                setattr(self, item.name, value)
            if not _matches(value, hints[item.name]):
                raise DemoError(f"{item.name} must be {_type_name(hints[item.name])}, got {value!r}")
        if self.size not in DEMO_SIZES:
            raise DemoError(f"unknown size {self.size!r}; choose one of {', '.join(DEMO_SIZES)}")
        from speechgpt.data.world import SIZE_PRESETS

        if self.world_size not in SIZE_PRESETS:
            raise DemoError(f"unknown world_size {self.world_size!r}; choose one of {', '.join(SIZE_PRESETS)}")
        from speechgpt.train.config import PRECISIONS

        if self.precision not in PRECISIONS:
            raise DemoError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.extractor not in ("recognizer", "mfcc", "logmel"):
            raise DemoError(f"extractor must be 'recognizer', 'mfcc' or 'logmel', got {self.extractor!r}")
        if self.unit_init not in ("letters", "mean"):
            raise DemoError(f"unit_init must be 'letters' or 'mean', got {self.unit_init!r}")
        if not self.output_dir:
            raise DemoError("output_dir must not be empty")
        if self.threads is not None and self.threads < 1:
            raise DemoError(f"threads must be >= 1 (or None for torch's choice), got {self.threads}")
        if self.workers is not None and self.workers < 0:
            raise DemoError(f"workers must be >= 0 (0: synthesize in this process), got {self.workers}")
        if self.seed < 0:
            raise DemoError(f"seed must be >= 0, got {self.seed}")
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if not isinstance(value, int | float) or item.name in ("seed", "workers", "threads"):
                continue
            if isinstance(value, bool):
                continue
            may_be_zero = item.name.endswith(("_warmup", "_temperature", "_replay_fraction"))
            if may_be_zero and value < 0:
                raise DemoError(f"{item.name} must be >= 0, got {value}")
            if not may_be_zero and value <= 0:
                raise DemoError(f"{item.name} must be positive, got {value}")
        if self.clusters < 2:
            raise DemoError(f"clusters must be at least 2, got {self.clusters}")
        if self.hidden_size % self.num_heads:
            raise DemoError(f"hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads})")
        if not self.lora_target_modules:
            raise DemoError("lora_target_modules must name at least one module (e.g. q_proj,v_proj)")
        speeds = self.asr_speed_perturbation
        if any(not 0.5 < f < 2.0 or f == 1.0 for f in speeds) or len(set(speeds)) != len(speeds):
            raise DemoError(f"asr_speed_perturbation must be distinct factors in (0.5, 2) other than 1, got {speeds}")

    @classmethod
    def from_size(cls, size: str = "default", **overrides: Any) -> DemoConfig:
        """The preset ``size`` with some fields changed.

        Raises:
            DemoError: unknown size or field, or an invalid value.
        """
        if size not in DEMO_SIZES:
            raise DemoError(f"unknown size {size!r}; choose one of {', '.join(DEMO_SIZES)}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise DemoError(f"unknown demo setting(s) {unknown}; known: {', '.join(sorted(known))}")
        return cls(**{**DEMO_SIZES[size], "size": size, **overrides})

    @classmethod
    def from_strings(cls, size: str, settings: Sequence[str], **overrides: Any) -> DemoConfig:
        """The preset ``size`` with ``key=value`` strings (as typed on the command line) and typed ``overrides``.

        Raises:
            DemoError: a malformed item, an unknown key, or a value of the wrong type.
        """
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for item in settings:
            key, sep, text = item.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or not key:
                raise DemoError(f"--set expects KEY=VALUE, got {item!r}")
            if key not in hints:
                raise DemoError(f"unknown demo setting {key!r}; known: {', '.join(sorted(hints))}")
            values[key] = _parse(key, text.strip(), hints[key])
        return cls.from_size(size, **values, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def _matches(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, option) for option in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is tuple:
        element = typing.get_args(annotation)[0]
        return isinstance(value, tuple) and all(_matches(v, element) and v != "" for v in value)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def _type_name(annotation: Any) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def _parse(key: str, text: str, annotation: Any) -> Any:
    """A command-line string as a value of the field's type."""
    options = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
    if options and text.lower() in ("none", "null"):
        return None
    target = next((o for o in options if o is not type(None)), annotation)
    if typing.get_origin(target) is tuple:
        element = typing.get_args(target)[0]
        return tuple(_parse(key, part.strip(), element) for part in text.split(",") if part.strip())
    try:
        if target is int:
            return int(text.replace("_", ""))
        if target is float:
            return float(text.replace("_", ""))
    except ValueError:
        raise DemoError(f"{key} must be {_type_name(annotation)}, got {text!r}") from None
    return text


# --- records --------------------------------------------------------------------------------------------------------


@dataclass
class StepRecord:
    """What a finished step left in ``steps/<name>.json``.

    Attributes:
        name: The step.
        title: What it is, in words.
        fingerprint: Hash of the settings and earlier steps it was built from.
        seconds: How long it took when it ran.
        outputs: Its outputs, relative to the run folder.
        info: A few JSON-ready facts (counts, losses, metrics).
        command: The equivalent ``speechgpt`` command.
        finished_at: When it finished (UTC, ISO 8601).
        cached: True when this run found it done and skipped it.
    """

    name: str
    title: str
    fingerprint: str
    seconds: float
    outputs: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    finished_at: str = ""
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("cached")
        return {"format": RECORD_FORMAT, "version": RECORD_VERSION, **data}

    @classmethod
    def read(cls, path: Path) -> StepRecord | None:
        """The record at ``path``, or None when there is none or it cannot be read (the step then runs again)."""
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != RECORD_FORMAT or data.get("version") != RECORD_VERSION:
                return None
            names = {f.name for f in dataclasses.fields(cls)} - {"cached"}
            return cls(**{k: v for k, v in data.items() if k in names})
        except (OSError, ValueError, TypeError, AttributeError) as e:
            logger.warning("%s: unreadable step record (%s); the step runs again", path, e)
            return None


@dataclass
class DemoResult:
    """What :func:`run_demo` did.

    Attributes:
        out_dir: The run folder.
        steps: One record per step, in order (``cached`` tells which were skipped).
        metrics: The headline numbers of ``report.json`` (``asr_wer``, ``qa_text_accuracy``, ...).
        seconds_total: Wall-clock seconds of the build: every step as it was built (skipped steps count what they
            took then), background steps only where the foreground waited for them.
        seconds_run: Wall time of this call.
    """

    out_dir: Path
    steps: list[StepRecord]
    metrics: dict[str, Any]
    seconds_total: float
    seconds_run: float

    @property
    def report(self) -> Path:
        return self.out_dir / "report.md"

    @property
    def report_json(self) -> Path:
        return self.out_dir / "report.json"

    @property
    def bundle(self) -> Path:
        from speechgpt.demo.steps import BUNDLE_DIR

        return self.out_dir / BUNDLE_DIR

    @property
    def conversation(self) -> Path:
        from speechgpt.demo.steps import CONVERSATION_DIR, CONVERSATION_MD

        return self.out_dir / CONVERSATION_DIR / CONVERSATION_MD

    @property
    def problems(self) -> list[str]:
        """Steps that finished with items left out (failed records, unreadable audio): partial success."""
        found = []
        for record in self.steps:
            count = record.info.get("failures", record.info.get("failed", 0))
            count = len(count) if isinstance(count, list) else count
            if isinstance(count, int) and count > 0:
                found.append(f"{record.name}: {count} item(s) failed")
        return found


# --- progress -------------------------------------------------------------------------------------------------------


class DemoProgress(StepReporter):
    """What the runner tells a display; this base class shows nothing (subclass it, e.g. :class:`RichDemoProgress`)."""

    def demo_started(self, steps: Sequence[Step], out: Path) -> None:
        """Before the first step."""

    def step_started(self, index: int, step: Step) -> None:
        """Step ``index`` (0-based) of the list begins."""

    def step_finished(self, index: int, step: Step, record: StepRecord) -> None:
        """Step ``index`` finished, or was found done (``record.cached``)."""

    def demo_finished(self) -> None:
        """After the last step, or when the run stops on an error or an interruption."""

    def background_started(self, steps: Sequence[Step], log: Path) -> None:
        """``steps`` began in a background process (their output goes to ``log``)."""

    def background_waiting(self, steps: Sequence[Step]) -> None:
        """The next step needs ``steps`` (or the demo is over): waiting for the background process."""

    def background_finished(self, index: int, step: Step, record: StepRecord) -> None:
        """A background step finished (reported when the demo joins the background process)."""


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class RichDemoProgress(DemoProgress):
    """One display on stderr for the whole demo: step i/N with elapsed time and ETA, and the running step's own bar.

    Finished steps leave one line each. Training draws its own bar (loss, tokens/s, ETA of the stage); while it
    does, this display steps aside after printing where the demo stands.
    """

    def __init__(self, console: Console | None = None) -> None:
        self.console = console if console is not None else Console(stderr=True)
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[eta]}"),
            console=self.console,
            transient=True,
        )
        self._steps: Sequence[Step] = ()
        self._started = 0.0
        self._done_budget = 0.0
        self._ran_budget = 0.0
        self._ran_seconds = 0.0
        self._fraction = 0.0
        self._index = 0
        self._step_started = 0.0
        self._overall: Any = None
        self._current: Any = None
        self._live = False

    def _eta(self) -> str:
        remaining = sum(step.budget for step in self._steps[self._index :]) - self._fraction * (
            self._steps[self._index].budget if self._index < len(self._steps) else 0.0
        )
        running = time.perf_counter() - self._step_started
        # Scale the budget by how fast this machine has been so far (the running step included).
        spent = self._ran_seconds + running
        budget = self._ran_budget + self._fraction * (
            self._steps[self._index].budget if self._index < len(self._steps) else 0.0
        )
        scale = spent / budget if budget > 0 and spent > 5 else 1.0
        return f"about {_clock(max(remaining, 0.0) * scale)} left"

    def demo_started(self, steps: Sequence[Step], out: Path) -> None:
        self._steps = steps
        self._started = time.perf_counter()
        self.console.print(f"[bold]SpeechGPT demo[/] → {out} ({len(steps)} steps)", highlight=False)
        self._overall = self._progress.add_task("demo", total=len(steps), status="", eta="")
        self._current = self._progress.add_task("", total=None, status="", eta="")
        self._progress.start()
        self._live = True

    def step_started(self, index: int, step: Step) -> None:
        self._index = index
        self._fraction = 0.0
        self._step_started = time.perf_counter()
        self._progress.update(
            self._overall,
            description=f"[bold]{index + 1}/{len(self._steps)}[/] {step.title}",
            completed=index,
            eta=self._eta(),
        )
        self._progress.reset(self._current, total=None, description="  ", status="", eta="")

    def update(self, done: float, total: float | None = None, status: str = "") -> None:
        if total:
            self._fraction = min(max(done / total, 0.0), 1.0)
        self._progress.update(self._current, completed=done, total=total, status=status)
        self._progress.update(self._overall, completed=self._index + self._fraction, eta=self._eta())

    @contextlib.contextmanager
    def own_display(self) -> Iterator[bool]:
        step = self._steps[self._index]
        self._progress.stop()
        self._live = False
        elapsed = _clock(time.perf_counter() - self._started)
        self.console.print(
            f"[bold]{self._index + 1}/{len(self._steps)}[/] {step.title} (demo {elapsed} in, {self._eta()})",
            highlight=False,
        )
        try:
            yield True
        finally:
            self._progress.start()
            self._live = True

    def step_finished(self, index: int, step: Step, record: StepRecord) -> None:
        if record.cached:
            line = f"[dim]↷ {index + 1}/{len(self._steps)} {step.title}: done before ({record.seconds:.0f} s)[/]"
        else:
            self._ran_seconds += record.seconds
            self._ran_budget += step.budget
            line = f"[green]✓[/] {index + 1}/{len(self._steps)} {step.title} [dim]{record.seconds:.1f} s[/]"
        self._done_budget += step.budget
        self._fraction = 0.0
        self._index = index + 1
        self._progress.console.print(line, highlight=False)
        self._progress.update(self._overall, completed=index + 1, eta=self._eta())

    def background_started(self, steps: Sequence[Step], log: Path) -> None:
        titles = ", ".join(step.title for step in steps)
        self._progress.console.print(f"[cyan]⇉[/] {titles}: started in the background on one core (log: {log})")

    def background_waiting(self, steps: Sequence[Step]) -> None:
        titles = ", ".join(step.title for step in steps)
        self._progress.reset(self._current, total=None, description="  ", status=f"waiting for {titles}", eta="")

    def background_finished(self, index: int, step: Step, record: StepRecord) -> None:
        line = (
            f"[green]✓[/] {index + 1}/{len(self._steps)} {step.title} [dim]{record.seconds:.1f} s, in the background[/]"
        )
        self._progress.console.print(line, highlight=False)

    def demo_finished(self) -> None:
        if self._live:
            self._progress.stop()
            self._live = False


def summary_table(result: DemoResult) -> Table:
    """The final table: headline metrics against the demo's targets, seconds per step, and where the report is."""
    from speechgpt.eval.report import DEMO_TARGETS

    table = Table(title=f"SpeechGPT demo: {result.out_dir}", title_justify="left", show_lines=False)
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    labels = {
        "asr_wer": "ASR WER (held-out voices)",
        "tts_judge_wer": "TTS judge WER",
        "vocoder_judge_wer": "vocoder judge WER",
        "qa_text_accuracy": "spoken QA, text answers",
        "qa_speech_accuracy": "spoken QA, spoken answers",
    }
    for key, label in labels.items():
        value = result.metrics.get(key)
        shown = f"{100 * value:.1f}%" if isinstance(value, int | float) else "—"
        target = ""
        if key in DEMO_TARGETS:
            op, bound = DEMO_TARGETS[key]
            met = isinstance(value, int | float) and (value <= bound if op == "<=" else value >= bound)
            target = f"{'[green]✓[/]' if met else '[red]✗[/]'} {'≤' if op == '<=' else '≥'} {100 * bound:.0f}%"
        table.add_row(label, shown, target)
    latency = result.metrics.get("latency_first_audio_s")
    if isinstance(latency, int | float):
        table.add_row("first audio of a spoken answer", f"{latency:.2f} s", "")
    table.add_section()
    for record in result.steps:
        table.add_row(f"[dim]{record.title}[/]", f"{record.seconds:.1f} s" + (" (before)" if record.cached else ""), "")
    table.add_row("[bold]total[/]", f"{result.seconds_total / 60:.1f} min", "≤ 15 min")
    table.caption = f"report: {result.report}   bundle: {result.bundle}   conversation: {result.conversation}"
    table.caption_justify = "left"
    return table


# --- the runner -----------------------------------------------------------------------------------------------------


def fingerprint(step: Step, config: DemoConfig, upstream: Mapping[str, str]) -> str:
    """Hash of what the step's result depends on: its settings and the fingerprints of the steps it reads."""
    settings = config.to_dict()
    document = {
        "step": step.name,
        "settings": {key: settings[key] for key in step.keys},
        "after": {name: upstream[name] for name in step.after},
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def _outputs_exist(out: Path, outputs: Sequence[str]) -> bool:
    return all((out / output).exists() for output in outputs)


def _clean(out: Path, step: Step) -> None:
    """Delete what an earlier run of ``step`` (with other settings, or before a ``fresh`` run) left."""
    for pattern in step.clean:
        for path in sorted(out.glob(pattern)):
            logger.info("removing %s before redoing step %s", path, step.name)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)


def _check_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DemoError(f"{out}: exists and is not a folder; choose another --output")


def run_demo(
    config: DemoConfig,
    *,
    fresh: bool = False,
    progress: DemoProgress | None = None,
    steps: Sequence[Step] | None = None,
) -> DemoResult:
    """Build, train, evaluate and talk to a whole SpeechGPT in ``config.output_dir``, skipping finished steps.

    Args:
        config: The settings (:meth:`DemoConfig.from_size` for a preset).
        fresh: Redo every step even if its record says it is done (its old outputs are deleted first).
        progress: The display; none when None.
        steps: The steps to run (tests pass stand-ins); :data:`~speechgpt.demo.steps.STEPS` when None.

    Returns:
        The records of the steps and the headline numbers of the report.

    Raises:
        DemoError: the run folder is not usable.
        StepFailed: a step raised (its outputs so far are kept; running again resumes it).
        KeyboardInterrupt: the run was interrupted (likewise resumable).
    """
    if not isinstance(config, DemoConfig):
        raise TypeError(f"config must be a DemoConfig, got {type(config).__name__}")
    steps = list(STEPS if steps is None else steps)
    names = [step.name for step in steps]
    if len(set(names)) != len(names):
        raise DemoError(f"step names repeat: {names}")
    out = Path(config.output_dir)
    _check_folder(out)
    display = progress if progress is not None else DemoProgress()
    ctx = StepContext(config=config, out=out, reporter=display)
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    with _folder_lock(out):
        display.demo_started(steps, out)
        try:
            with _torch_threads(config.threads):
                records = _run_steps(ctx, steps, fresh, display)
        finally:
            display.demo_finished()
    metrics: dict[str, Any] = {}

    report_json = out / "report.json"
    if report_json.is_file():
        from speechgpt.eval.report import HEADLINE_KEYS

        document = json.loads(report_json.read_text(encoding="utf-8"))
        metrics = {key: document.get(key) for key in HEADLINE_KEYS}
    return DemoResult(
        out_dir=out,
        steps=records,
        metrics=metrics,
        seconds_total=build_seconds({record.name: record.seconds for record in records}, steps),
        seconds_run=time.perf_counter() - started,
    )


@contextlib.contextmanager
def _folder_lock(out: Path) -> Iterator[None]:
    """Hold ``<out>/steps/.lock`` for the run: two demos in one folder would continue each other's work.

    Raises:
        DemoError: another process holds the lock (its pid is named when known).
    """
    import fcntl  # POSIX only; the demo's training, synthesis and file layout assume it anyway

    path = out / STEPS_DIR / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise DemoError(
                f"{out}: another demo is running in this folder (pid {holder}); wait for it, or choose another --output"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Use ``threads`` torch CPU threads inside the block (nothing changes for None)."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_steps(ctx: StepContext, steps: Sequence[Step], fresh: bool, display: DemoProgress) -> list[StepRecord]:
    fingerprints: dict[str, str] = {}
    records: dict[str, StepRecord] = {}
    lanes: list[_BackgroundLane] = []

    def keep(found: Mapping[str, StepRecord]) -> None:
        for name, record in found.items():
            records[name] = record
            ctx.records[name] = record.to_dict()

    def check(step: Step) -> None:
        missing = [name for name in step.after if name not in fingerprints]
        if missing:
            raise DemoError(f"step {step.name!r} needs {missing}, which do not run before it")

    try:
        index = 0
        while index < len(steps):
            step = steps[index]
            check(step)
            for lane in [lane for lane in lanes if lane.names & set(step.after)]:
                keep(lane.join())
                lanes.remove(lane)
            if step.background:
                # Consecutive background steps share one child process, which runs them in order.
                group: list[tuple[int, Step, str]] = []
                while index < len(steps) and steps[index].background:
                    step = steps[index]
                    check(step)
                    fingerprints[step.name] = fingerprint(step, ctx.config, fingerprints)
                    cached = _cached(ctx.out, step, fingerprints[step.name], fresh)
                    if cached is not None:
                        display.step_started(index, step)
                        display.step_finished(index, step, cached)
                        keep({step.name: cached})
                    else:
                        group.append((index, step, fingerprints[step.name]))
                    index += 1
                if group:
                    lanes.append(_BackgroundLane(ctx, fresh, display))
                    lanes[-1].start(group)
                continue
            fingerprints[step.name] = fingerprint(step, ctx.config, fingerprints)
            busy = sum(lane.running for lane in lanes)
            with _foreground_threads(ctx.config.threads, busy_cores=busy):
                keep({step.name: _run_step(ctx, index, step, fingerprints[step.name], fresh, display)})
            index += 1
        while lanes:
            keep(lanes.pop(0).join())
    finally:
        for lane in lanes:
            lane.stop()
    return [records[step.name] for step in steps]


def _cached(out: Path, step: Step, fp: str, fresh: bool) -> StepRecord | None:
    """The step's record when a previous run finished it with the same fingerprint and its outputs are all there."""
    previous = StepRecord.read(out / STEPS_DIR / f"{step.name}.json")
    if fresh or previous is None or previous.fingerprint != fp or not _outputs_exist(out, previous.outputs):
        return None
    previous.cached = True
    return previous


@contextlib.contextmanager
def _foreground_threads(threads: int | None, *, busy_cores: int) -> Iterator[None]:
    """While background steps hold cores, the foreground takes the others (unless ``threads`` was set)."""
    if threads is not None or not busy_cores:
        yield
        return
    with _torch_threads(max(1, (os.cpu_count() or 1) - busy_cores)):
        yield


class _BackgroundLane:
    """A child process running a group of background steps in order, on one CPU thread.

    The child writes each step's record exactly as a foreground step does (same cache, same resume), and its
    output goes to ``steps/<first step>.log`` rather than through the live display.
    """

    def __init__(self, ctx: StepContext, fresh: bool, display: DemoProgress) -> None:
        self.ctx, self.fresh, self.display = ctx, fresh, display
        self.group: list[tuple[int, Step, str]] = []
        self.process: Any = None
        self.log: Path | None = None

    @property
    def names(self) -> set[str]:
        """The steps the lane is running (or has run, until joined)."""
        return {step.name for _, step, _ in self.group}

    @property
    def running(self) -> bool:
        """Whether the child process is still working (holding a core)."""
        return self.process is not None and self.process.is_alive()

    def start(self, group: list[tuple[int, Step, str]]) -> None:
        import multiprocessing

        self.group = group
        self.log = self.ctx.out / STEPS_DIR / f"{group[0][1].name}.log"
        jobs = [(index, step, fp) for index, step, fp in group]
        # spawn, not fork: forking a process whose torch thread pool has run can deadlock the child.
        context = multiprocessing.get_context("spawn")
        self.process = context.Process(
            target=_background_main,
            args=(self.ctx.config, str(self.ctx.out), jobs, self.fresh, str(self.log)),
            name="speechgpt-demo-background",
        )
        self.process.start()
        self.display.background_started([step for _, step, _ in group], self.log)

    def join(self) -> dict[str, StepRecord]:
        """Wait for the running steps; their records. Raises :class:`StepFailed` naming the first that failed."""
        if self.process is None:
            return {}
        self.display.background_waiting([step for _, step, _ in self.group])
        self.process.join()
        code, self.process = self.process.exitcode, None
        records: dict[str, StepRecord] = {}
        for index, step, fp in self.group:
            record = StepRecord.read(self.ctx.out / STEPS_DIR / f"{step.name}.json")
            if record is None or record.fingerprint != fp:
                self.group = []
                detail = _log_tail(self.log) if self.log is not None else ""
                error = RuntimeError(f"the background process exited with code {code}; see {self.log}{detail}")
                raise StepFailed(step.name, error)
            self.display.background_finished(index, step, record)
            records[step.name] = record
        self.group = []
        return records

    def stop(self) -> None:
        """End a child still running (the demo stopped on an error or an interruption); its steps resume later."""
        if self.process is not None and self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=10)
        self.process = None


def _log_tail(path: Path, lines: int = 3) -> str:
    try:
        tail = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return (": " + " | ".join(tail[-lines:])) if tail else ""


def _background_main(
    config: DemoConfig, out: str, jobs: list[tuple[int, Step, str]], fresh: bool, log: str
) -> None:  # pragma: no cover - runs in the child process (its effects are tested)
    """The child process: run each step on one torch thread, output to ``log``; exit code 1 on a failure."""
    import sys
    import traceback

    with open(log, "a", encoding="utf-8", buffering=1) as stream:
        sys.stdout = sys.stderr = stream
        logging.basicConfig(stream=stream, level=logging.INFO, force=True)
        ctx = StepContext(config=config, out=Path(out), reporter=DemoProgress())
        try:
            with _torch_threads(1):
                for index, step, fp in jobs:
                    stream.write(f"{_now()} {step.name}: started\n")
                    _run_step(ctx, index, step, fp, fresh, DemoProgress())
                    stream.write(f"{_now()} {step.name}: finished\n")
        except BaseException:
            traceback.print_exc(file=stream)
            sys.exit(1)


def _run_step(ctx: StepContext, index: int, step: Step, fp: str, fresh: bool, display: DemoProgress) -> StepRecord:
    out = ctx.out
    record_path = out / STEPS_DIR / f"{step.name}.json"
    started_path = out / STEPS_DIR / f"{step.name}{STARTED_SUFFIX}"
    previous = StepRecord.read(record_path)
    display.step_started(index, step)
    if not fresh and previous is not None and previous.fingerprint == fp and _outputs_exist(out, previous.outputs):
        previous.cached = True
        display.step_finished(index, step, previous)
        return previous
    interrupted = None
    if started_path.is_file():
        with contextlib.suppress(OSError, ValueError):
            interrupted = json.loads(started_path.read_text(encoding="utf-8")).get("fingerprint")
    if fresh or previous is not None or (interrupted is not None and interrupted != fp):
        _clean(out, step)
    elif interrupted == fp:
        logger.info("continuing step %s where an earlier run stopped", step.name)
    record_path.unlink(missing_ok=True)
    atomic_write_text(started_path, json.dumps({"fingerprint": fp, "started_at": _now()}) + "\n")
    begin = time.perf_counter()
    try:
        output = step.run(ctx)
    except (KeyboardInterrupt, DemoError):
        raise
    except Exception as e:
        raise StepFailed(step.name, e) from e
    record = StepRecord(
        name=step.name,
        title=step.title,
        fingerprint=fp,
        seconds=round(time.perf_counter() - begin, 3),
        outputs=list(output.outputs),
        info=json.loads(json.dumps(output.info, default=str)),
        command=step_command(step, ctx),
        finished_at=_now(),
    )
    atomic_write_text(record_path, json.dumps(record.to_dict(), indent=1, ensure_ascii=False) + "\n")
    started_path.unlink(missing_ok=True)
    display.step_finished(index, step, record)
    return record


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
