"""Speaking the embedded world: voices, the utterance plan, and :func:`build_world`, which writes the world folder.

The folder (a contract read by the data builders, the demo and the evaluation)::

    DIR/world.json              format, version, seed, config, voices, counts, hours, seconds_to_build
    DIR/text/corpus.txt         text-pretraining corpus, one sentence per line
    DIR/text/vocabulary.txt     every word of the world's language, one per line (the judge ASR's word list)
    DIR/qa/train.jsonl          {"id", "instruction", "input": "", "output", "family", "split": "train"}
    DIR/qa/heldout.jsonl        the same for held-out questions
    DIR/speech_train.jsonl      {"id", "audio": "audio/train/<id>.wav", "text", "voice", "kind", "family"}
    DIR/speech_test.jsonl       the same plus "voice_split" and "item_split"
    DIR/audio/{train,test}/*.wav  16 kHz mono PCM-16

Training speech is train voices saying train text; test speech is held-out voices saying train and held-out
questions (and answers), and train voices saying held-out ones. A question text belongs to exactly one QA record,
so a spoken question's answer is found by looking its ``text`` up among the ``instruction`` fields.

Builds are resumable and deterministic. ``world.json`` is written last and marks a finished folder; while a build
runs, ``world.json.partial`` pins its config, so an interrupted build continues (keeping every valid WAV already
written) only with the same config. The same config gives byte-identical files (``world.json``'s
``seconds_to_build`` aside), whatever the number of workers and however often the build was interrupted.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from speechgpt.audio import AudioError, load_audio, write_wav
from speechgpt.constants import SAMPLE_RATE
from speechgpt.data.tts import EspeakEngine, VoiceSettings, synthesize_many
from speechgpt.data.world import Question, TextWorld, WorldConfig, build_text_world
from speechgpt.fileio import atomic_write_text
from speechgpt.jsonl import PARTIAL_SUFFIX, dumps_record

logger = logging.getLogger(__name__)

WORLD_FORMAT = "speechgpt-speech-world"
WORLD_VERSION = 1
WORLD_FILE = "world.json"
CORPUS_FILE = "text/corpus.txt"
VOCABULARY_FILE = "text/vocabulary.txt"
QA_FILES = {"train": "qa/train.jsonl", "heldout": "qa/heldout.jsonl"}
SPEECH_FILES = {"train": "speech_train.jsonl", "test": "speech_test.jsonl"}
AUDIO_DIR = "audio"
OUTPUTS = (WORLD_FILE, WORLD_FILE + PARTIAL_SUFFIX, "text", "qa", *SPEECH_FILES.values(), AUDIO_DIR)
"""Everything a build writes (and all that ``overwrite`` deletes)."""
BATCH_SIZE = 256
"""Utterances synthesized per call to :func:`synthesize_many`: a progress step, and what an interruption loses."""
WRITE_THREADS = 4
"""Threads writing WAVs while the next batch is synthesized."""
SILENCE_PEAK = 1e-3
"""Synthesized audio with a lower peak is an engine failure, not speech."""
TEST_GROUPS = (("heldout", "train"), ("heldout", "heldout"), ("train", "heldout"))
"""(voice split, item split) of the test speech, in manifest order."""
TEST_QUESTION_SHARE = 2 / 3
"""Share of questions among test utterances (the rest are answers): spoken QA needs questions most."""

ProgressFn = Callable[[int, int], None]
"""Called as ``progress(done, total)`` with utterances whose WAV is written (kept ones included)."""


class WorldError(ValueError):
    """A world folder that cannot be built or continued as asked; the message names the folder and the reason."""


@dataclass(frozen=True)
class Utterance:
    """One planned recording: what is said, by which voice, and where it goes."""

    id: str
    split: str  # "train" | "test": the manifest and audio folder
    text: str
    kind: str  # "question" | "answer" | "sentence"
    family: str
    voice_name: str
    voice: VoiceSettings
    voice_split: str
    item_split: str

    @property
    def audio(self) -> str:
        """The WAV's path relative to the world folder."""
        return f"{AUDIO_DIR}/{self.split}/{self.id}.wav"

    def record(self) -> dict[str, str]:
        """The manifest row (test rows also say which splits the voice and the item come from)."""
        row = {
            "id": self.id,
            "audio": self.audio,
            "text": self.text,
            "voice": self.voice_name,
            "kind": self.kind,
            "family": self.family,
        }
        if self.split == "test":
            row.update(voice_split=self.voice_split, item_split=self.item_split)
        return row


@dataclass(frozen=True)
class WorldSummary:
    """What a :func:`build_world` call produced (or found already built)."""

    out_dir: Path
    seed: int
    counts: dict[str, Any]
    hours: dict[str, float]
    voices: dict[str, list[str]]
    seconds_to_build: float
    already_built: bool
    synthesized: int
    reused: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for the command's summary line."""
        return {**asdict(self), "out_dir": str(self.out_dir)}


def voice_dicts(config: WorldConfig) -> dict[str, list[dict[str, Any]]]:
    """The voices of ``world.json``: VoiceSettings fields at the middle of the config's bounds, plus ``name``."""

    def middle(bounds: tuple[int, int]) -> int:
        return (bounds[0] + bounds[1]) // 2

    return {
        split: [
            {
                "name": voice,
                **asdict(
                    VoiceSettings(
                        voice,
                        rate=middle(config.rate_bounds),
                        pitch=middle(config.pitch_bounds),
                        pitch_range=middle(config.intonation_bounds),
                    )
                ),
            }
            for voice in voices
        ]
        for split, voices in (("train", config.train_voices), ("heldout", config.heldout_voices))
    }


def _rng(seed: int, purpose: str) -> random.Random:
    return random.Random(f"speechgpt-world-speech/{seed}/{purpose}")


def _draw(pool: Sequence[tuple[str, str, str]], count: int, rng: random.Random) -> list[tuple[str, str, str]]:
    """``count`` entries: the pool in random order, reshuffled and repeated when ``count`` exceeds it."""
    drawn: list[tuple[str, str, str]] = []
    while pool and len(drawn) < count:
        order = list(pool)
        rng.shuffle(order)
        drawn.extend(order[: count - len(drawn)])
    return drawn


def _pools(questions: Sequence[Question]) -> dict[str, list[tuple[str, str, str]]]:
    """Distinct (text, kind, family) entries per kind."""
    pools: dict[str, list[tuple[str, str, str]]] = {
        "question": [(text, "question", q.family) for q in questions for text in q.phrasings],
        "answer": [(q.answer, "answer", q.family) for q in questions],
        "sentence": [(fact, "sentence", q.family) for q in questions for fact in q.facts],
    }
    return {kind: list(dict.fromkeys(pool)) for kind, pool in pools.items()}


def _split_count(total: int, shares: Sequence[float]) -> list[int]:
    """``total`` cut into parts proportional to ``shares`` (which sum to 1), the parts summing to ``total``."""
    counts = [int(total * share + 1e-9) for share in shares]
    for i in range(total - sum(counts)):  # the remainder goes to the first shares
        counts[i % len(counts)] += 1
    return counts


def _speak(
    entries: list[tuple[str, str, str]], voices: Sequence[str], rng: random.Random, config: WorldConfig
) -> list[tuple[str, str, str, str, VoiceSettings]]:
    """Shuffle the entries and give each a voice (balanced over ``voices``) with a drawn rate, pitch and intonation."""
    rng.shuffle(entries)
    spoken = []
    for i, (text, kind, family) in enumerate(entries):
        name = voices[i % len(voices)]
        settings = VoiceSettings(
            name,
            rate=rng.randint(*config.rate_bounds),
            pitch=rng.randint(*config.pitch_bounds),
            pitch_range=rng.randint(*config.intonation_bounds),
        )
        spoken.append((text, kind, family, name, settings))
    return spoken


def plan_utterances(world: TextWorld) -> list[Utterance]:
    """Every recording of the world, train then test, deterministic from the config.

    Raises:
        WorldError: Test speech is asked for but there is nothing to test (no held-out voice and no held-out item).
    """
    config = world.config
    train_items, heldout_items = world.split("train"), world.split("heldout")
    train_pools = _pools(train_items)
    kinds = ("question", "answer", "sentence")
    counts = dict(zip(kinds, _split_count(config.train_utterances, config.speech_mix), strict=True))
    for kind in ("answer", "sentence"):  # a family mix without prose (or answers) speaks more questions instead
        if not train_pools[kind]:
            counts["question"] += counts.pop(kind)
    rng = _rng(config.seed, "train")
    entries = [entry for kind, count in counts.items() for entry in _draw(train_pools[kind], count, rng)]
    train = [
        Utterance(f"train-{i:05d}", "train", text, kind, family, name, settings, "train", "train")
        for i, (text, kind, family, name, settings) in enumerate(_speak(entries, config.train_voices, rng, config))
    ]

    voices = {"train": config.train_voices, "heldout": config.heldout_voices}
    items = {"train": train_items, "heldout": heldout_items}
    groups = [(v, i) for v, i in TEST_GROUPS if voices[v] and items[i]]
    if config.test_utterances and not groups:
        raise WorldError(
            f"test_utterances={config.test_utterances} but there are no held-out voices and no held-out questions "
            "to test; set heldout_voices or heldout_fraction, or test_utterances=0"
        )
    test: list[Utterance] = []
    sizes = _split_count(config.test_utterances, [1 / len(groups)] * len(groups)) if groups else []
    for (voice_split, item_split), count in zip(groups, sizes, strict=True):
        rng = _rng(config.seed, f"test/{voice_split}-voice/{item_split}-item")
        pools = _pools(items[item_split])
        questions, answers = _split_count(count, (TEST_QUESTION_SHARE, 1 - TEST_QUESTION_SHARE))
        entries = _draw(pools["question"], questions, rng) + _draw(pools["answer"], answers, rng)
        for text, kind, family, name, settings in _speak(entries, voices[voice_split], rng, config):
            test.append(
                Utterance(f"test-{len(test):05d}", "test", text, kind, family, name, settings, voice_split, item_split)
            )
    return train + test


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WorldError(f"{path}: unreadable ({e}); pass overwrite=True (--overwrite) to rebuild the world") from e
    if not isinstance(data, dict) or data.get("format") != WORLD_FORMAT:
        raise WorldError(f"{path}: not a {WORLD_FORMAT} file; choose another folder or pass overwrite=True")
    return data


def _config_difference(recorded: dict[str, Any], config: WorldConfig) -> list[str]:
    wanted = config.to_dict()
    return sorted(key for key in set(recorded) | set(wanted) if recorded.get(key) != wanted.get(key))


def _prepare_folder(out: Path, config: WorldConfig, overwrite: bool) -> dict[str, Any] | None:
    """Make ``out`` ready; return the finished world.json when the same world is already complete there."""
    marker, partial = out / WORLD_FILE, out / (WORLD_FILE + PARTIAL_SUFFIX)
    present = [name for name in OUTPUTS if (out / name).exists()]
    if present and not marker.exists() and not partial.exists():
        raise WorldError(
            f"{out} holds {', '.join(present)} but no {WORLD_FILE}: it is not a speech world (or one whose marker "
            "was deleted); choose an empty folder, or delete those entries yourself"
        )
    if overwrite:
        for name in present:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        if present:
            logger.info("overwrite: removed %s from %s", ", ".join(present), out)
        return None
    for path in (marker, partial):
        if not path.exists():
            continue
        recorded = _read_json(path)
        differs = _config_difference(recorded.get("config", {}), config)
        if recorded.get("version") != WORLD_VERSION or differs:
            what = "a finished" if path == marker else "an unfinished"
            raise WorldError(
                f"{out} holds {what} world built with another config (differs in: {', '.join(differs) or 'version'}); "
                "pass overwrite=True (--overwrite) to replace it, or choose another folder"
            )
        if path == marker:
            missing = [
                name
                for name in (CORPUS_FILE, VOCABULARY_FILE, *QA_FILES.values(), *SPEECH_FILES.values())
                if not (out / name).is_file()
            ]
            if not missing:
                return recorded
            logger.warning("%s: %s missing; rebuilding what is missing", out, ", ".join(missing))
    return None


def _duration_if_valid(path: Path) -> float | None:
    """Seconds of a WAV that a finished build would have written, or None if it must be synthesized again."""
    if not path.is_file():
        return None
    try:
        wave = load_audio(path, sample_rate=SAMPLE_RATE, max_seconds=None, reject_silence=True)
    except AudioError as e:
        logger.info("re-synthesizing %s", e)
        return None
    return wave.size / SAMPLE_RATE


def _remove_strays(out: Path, plan: Sequence[Utterance]) -> None:
    """Delete files in the audio folders that the plan does not name (temporary files left by a kill)."""
    planned = {utterance.audio for utterance in plan}
    for split in ("train", "test"):
        folder = out / AUDIO_DIR / split
        if folder.is_dir():
            for path in folder.iterdir():
                if f"{AUDIO_DIR}/{split}/{path.name}" not in planned:
                    shutil.rmtree(path) if path.is_dir() else path.unlink()


def _write_text_world(out: Path, world: TextWorld) -> None:
    atomic_write_text(out / CORPUS_FILE, "".join(line + "\n" for line in world.corpus))
    atomic_write_text(out / VOCABULARY_FILE, "".join(word + "\n" for word in world.vocabulary()))
    for split, name in QA_FILES.items():
        atomic_write_text(out / name, "".join(dumps_record(r) + "\n" for r in world.qa_records(split)))


def _counts(world: TextWorld, plan: Sequence[Utterance]) -> dict[str, Any]:
    train = [u for u in plan if u.split == "train"]
    test = [u for u in plan if u.split == "test"]
    by_group = Counter(f"{u.voice_split}_voice_{u.item_split}_item" for u in test)
    return {
        "questions": world.question_counts(),
        "qa": {split: len(world.qa_records(split)) for split in ("train", "heldout")},
        "corpus_lines": len(world.corpus),
        "speech_train": {"total": len(train), **Counter(u.kind for u in train)},
        "speech_test": {"total": len(test), **by_group},
        "utterances_per_voice": dict(sorted(Counter(u.voice_name for u in plan).items())),
    }


def default_workers() -> int:
    """Worker processes for synthesis: one per CPU available to this process (0, in-process, on one CPU)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cpus if cpus > 1 else 0


def _speak_and_write(
    out: Path,
    todo: Sequence[Utterance],
    seconds: dict[str, float],
    num_workers: int,
    report: Callable[[int], None],
) -> None:
    """Synthesize ``todo`` batch by batch and write the WAVs from a few threads, recording each one's length.

    Every WAV is written atomically with two fsyncs (``write_wav``), which costs milliseconds on a busy disk; threads
    overlap that waiting with each other and with the synthesis of the next batch. ``report(n)`` gets the number
    of WAVs written so far (from this thread only).
    """
    futures: list[Future[Path]] = []
    # Leaving the block waits for the writes already submitted, also on an error or a kill: their audio is done.
    with ThreadPoolExecutor(max_workers=WRITE_THREADS, thread_name_prefix="world-wav") as writers:
        for begin in range(0, len(todo), BATCH_SIZE):
            batch = todo[begin : begin + BATCH_SIZE]
            waves = synthesize_many([u.text for u in batch], [u.voice for u in batch], num_workers=num_workers)
            for utterance, wave in zip(batch, waves, strict=True):
                if not float(np.abs(wave).max()) > SILENCE_PEAK:
                    raise WorldError(
                        f"{utterance.id}: espeak-ng produced silence for {utterance.text!r} "
                        f"with voice {utterance.voice}"
                    )
                futures.append(writers.submit(write_wav, out / utterance.audio, wave))
                seconds[utterance.id] = wave.size / SAMPLE_RATE
            report(sum(f.done() for f in futures))
        for written, future in enumerate(as_completed(futures), start=1):
            future.result()  # re-raises a failed write
            if written % BATCH_SIZE == 0 or written == len(futures):
                report(written)


def build_world(
    config: WorldConfig,
    out_dir: str | os.PathLike,
    *,
    num_workers: int | None = None,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> WorldSummary:
    """Build (or finish, or find) the speech world of ``config`` in ``out_dir``.

    Args:
        config: What to build.
        out_dir: The world folder; created if needed.
        num_workers: Synthesis processes (0: in this process); None uses :func:`default_workers`.
        overwrite: Delete a world already there (built with any config) and start afresh.
        progress: Called as ``progress(done, total)`` while the audio is written.

    Returns:
        The summary; ``already_built`` is True when a complete world of the same config was found (nothing done).

    Raises:
        WorldError: ``out_dir`` holds a world of another config, or something that is not a world.
        ValueError: A voice espeak-ng does not have, or bad ``num_workers``.
    """
    start = time.perf_counter()
    if not isinstance(config, WorldConfig):
        raise TypeError(f"config must be a WorldConfig, got {type(config).__name__}")
    if num_workers is None:
        num_workers = default_workers()
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise WorldError(f"{out}: exists and is not a folder")
    finished = _prepare_folder(out, config, overwrite) if out.exists() else None
    if finished is not None:
        logger.info("%s already holds this world; nothing to do", out)
        return _summary(out, finished, already_built=True, synthesized=0, reused=0)

    engine = EspeakEngine()
    for voice in (*config.train_voices, *config.heldout_voices):
        engine.check_voice(voice)
    world = build_text_world(config)
    plan = plan_utterances(world)
    out.mkdir(parents=True, exist_ok=True)
    header = {"format": WORLD_FORMAT, "version": WORLD_VERSION, "seed": config.seed, "config": config.to_dict()}
    atomic_write_text(out / (WORLD_FILE + PARTIAL_SUFFIX), json.dumps(header, indent=2) + "\n")
    (out / WORLD_FILE).unlink(missing_ok=True)  # a world with missing files is unfinished until rebuilt
    _write_text_world(out, world)
    _remove_strays(out, plan)

    seconds: dict[str, float] = {}
    todo = []
    for utterance in plan:
        duration = _duration_if_valid(out / utterance.audio)
        if duration is None:
            todo.append(utterance)
        else:
            seconds[utterance.id] = duration
    reused = len(seconds)
    if reused:
        logger.info("resuming %s: %d of %d recordings already written", out, reused, len(plan))

    def report(written: int) -> None:
        if progress is not None:
            progress(reused + written, len(plan))

    report(0)
    _speak_and_write(out, todo, seconds, num_workers, report)

    for split, name in SPEECH_FILES.items():
        rows = [u.record() for u in plan if u.split == split]
        atomic_write_text(out / name, "".join(dumps_record(row) + "\n" for row in rows))
    hours = {
        split: round(sum(seconds[u.id] for u in plan if u.split == split) / 3600, 6) for split in ("train", "test")
    }
    document = {
        **header,
        "voices": voice_dicts(config),
        "counts": _counts(world, plan),
        "hours": hours,
        "seconds_to_build": round(time.perf_counter() - start, 3),
    }
    atomic_write_text(out / WORLD_FILE, json.dumps(document, indent=2) + "\n")
    (out / (WORLD_FILE + PARTIAL_SUFFIX)).unlink(missing_ok=True)
    logger.info("built %s: %d recordings (%d reused), %.2f h", out, len(plan), reused, sum(hours.values()))
    return _summary(out, document, already_built=False, synthesized=len(todo), reused=reused)


def _summary(
    out: Path, document: dict[str, Any], *, already_built: bool, synthesized: int, reused: int
) -> WorldSummary:
    return WorldSummary(
        out_dir=out,
        seed=int(document["seed"]),
        counts=document["counts"],
        hours=document["hours"],
        voices={split: [v["name"] for v in voices] for split, voices in document["voices"].items()},
        seconds_to_build=float(document["seconds_to_build"]),
        already_built=already_built,
        synthesized=synthesized,
        reused=reused,
    )


def load_world(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``world.json`` of a finished world folder.

    Raises:
        WorldError: No finished world there.
    """
    path = Path(out_dir) / WORLD_FILE
    if not path.is_file():
        raise WorldError(f"{path}: not found; build the world first (speechgpt data build-world -o {out_dir})")
    return _read_json(path)
