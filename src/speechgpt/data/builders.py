"""The SpeechInstruct builders: stage-1 unit text, stage-2 cross-modal records, stage-3 chain-of-modality records.

Each builder reads its inputs, turns speech into units with a :class:`~speechgpt.units.SpeechTokenizer`, checks
every record with :mod:`speechgpt.data.validate` before writing it (a record that fails is reported and left out,
never written), and writes through :class:`~speechgpt.jsonl.ResumableJsonlWriter`, so that a killed build run
again resumes where it stopped and ends byte-identical to an uninterrupted one:

* stage 1 keeps a sidecar ``OUT.units.jsonl`` of ``{"id": audio path, "units": "<sosp>...<eosp>", "seconds"}``
  and, once every item is done, writes ``OUT`` (one unit line per recording, in input order) atomically;
* stages 2 and 3 append records to ``OUT.partial``, keyed by record id, and rename it to ``OUT`` at the end.

Bad audio (unreadable, empty, too short...) is reported per item, one line naming the file and the reason, and the
build goes on. Work is split by stable striding (:func:`speechgpt.manifest.shard_items`): shard ``i`` of ``n`` takes
items ``i, i + n, i + 2n, ...``, so the shards together hold exactly the records of the unsharded build;
:func:`merge_shards` concatenates them in shard order. The settings of a build (tokenizer, seed, templates,
voices, shard...) are written next to the output as ``OUT.build.json``; resuming with other settings is refused,
because it would silently mix two datasets.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from speechgpt.audio import SAMPLE_RATE, AudioError, change_speed, load_audio
from speechgpt.data.readers import InstructionItem, SpeechItem, read_instructions, read_speech_corpus
from speechgpt.data.records import make_asr_record, make_com_record, make_tts_record
from speechgpt.data.stats import BuildStats
from speechgpt.data.templates import Direction, load_templates, pick_template, stable_index
from speechgpt.data.tts import TTSEngine, VoiceSettings, synthesize_many
from speechgpt.data.validate import check_unit_line, ensure_valid
from speechgpt.fileio import atomic_output, atomic_write_text
from speechgpt.jsonl import PARTIAL_SUFFIX, ResumableJsonlWriter, read_jsonl
from speechgpt.manifest import collect_audio_inputs, shard_items
from speechgpt.prompt_format import Modality

if TYPE_CHECKING:  # only for annotations: importing the tokenizer loads the feature extractors
    from speechgpt.units.tokenizer import SpeechTokenizer, Units

logger = logging.getLogger(__name__)

__all__ = [
    "ALL_COMBOS",
    "DIRECTIONS",
    "MAX_SPOKEN_CHARS",
    "BuildFailure",
    "BuildResult",
    "ProgressFn",
    "build_stage1",
    "build_stage2",
    "build_stage3",
    "combo_name",
    "merge_shards",
    "shard_path",
    "shard_paths",
]

UNITS_SIDECAR_SUFFIX = ".units.jsonl"
"""Stage 1 keeps ``OUT.units.jsonl`` (audio path → unit line) beside ``OUT``: what a resumed build continues."""
SETTINGS_SUFFIX = ".build.json"
"""``OUT.build.json`` records the settings a build used, so a resume with other settings is refused."""
DIRECTIONS: dict[str, Direction] = {"asr": Direction.SPEECH_TO_TEXT, "tts": Direction.TEXT_TO_SPEECH}
"""Stage-2 record kinds and the template direction each uses; the key is also the record-id suffix."""
ALL_COMBOS: tuple[tuple[Modality, Modality], ...] = (
    (Modality.SPEECH, Modality.SPEECH),
    (Modality.SPEECH, Modality.TEXT),
    (Modality.TEXT, Modality.SPEECH),
    (Modality.TEXT, Modality.TEXT),
)
"""The four chain-of-modality (input, output) combinations, in the order stage 3 writes them per item."""
MAX_SPOKEN_CHARS = 400
"""Longest question or answer stage 3 speaks by default: about 25 s of espeak speech, which as units already fills
most of the released 1024-token budget of a stage-3 record."""
SYNTHESIS_BATCH = 64
"""Stage-3 items spoken per :func:`~speechgpt.data.tts.synthesize_many` call (bounds memory, keeps workers busy)."""
_SHARD_NAME = re.compile(r"^(?P<stem>.+)\.(?P<shard>\d{5})-of-(?P<total>\d{5})(?P<suffix>\.[^.]*)?$")

FAILED = "failed"
SKIPPED = "skipped"


@dataclass(frozen=True)
class BuildFailure:
    """One item or record that was not written.

    Attributes:
        item: The item's id (stage 1: the audio path).
        message: One line naming the file or record and the reason, e.g. ``"a/b.wav: empty audio (0 samples)"``.
        kind: ``"failed"`` (bad audio, invalid record) or ``"skipped"`` (left out on purpose, e.g. too long).
    """

    item: str
    message: str
    kind: str = FAILED

    def __str__(self) -> str:
        return self.message


ProgressFn = Callable[[int, int, "BuildFailure | None"], None]
"""``progress(done, total, failure)``: called after each item of this run; ``failure`` is that item's failure or
skip (the last one when it had several), else None. An exception raised here stops the build, which can resume."""


@dataclass
class BuildResult:
    """What a build wrote and what it could not.

    Attributes:
        output: The finished output file.
        stats: Counts of this run (records, hours of speech, units, length histograms...).
        failures: Items or records that failed and were not written (a run with any has a non-zero CLI exit).
        skipped: Items left out on purpose (stage 3: text too long to speak).
    """

    output: Path
    stats: BuildStats
    failures: list[BuildFailure] = field(default_factory=list)
    skipped: list[BuildFailure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing failed (skipped items do not count as failures)."""
        return not self.failures


# --- shards ---------------------------------------------------------------------------------------------------------


def shard_path(path: str | os.PathLike, shard: int, num_shards: int) -> Path:
    """The conventional name of one shard's output: ``out.jsonl`` → ``out.00001-of-00004.jsonl``.

    With ``num_shards == 1`` the path is returned unchanged.

    Raises:
        ValueError: ``shard`` is not in ``0 .. num_shards - 1``.
    """
    shard_items([], shard, num_shards)  # the one check of shard arguments
    path = Path(path)
    if num_shards == 1:
        return path
    return path.with_name(f"{path.stem}.{shard:05d}-of-{num_shards:05d}{path.suffix}")


def shard_paths(path: str | os.PathLike, num_shards: int) -> list[Path]:
    """The names of all ``num_shards`` shards of ``path``, in shard order."""
    return [shard_path(path, shard, num_shards) for shard in range(num_shards)]


def _find_shards(path: Path) -> list[Path]:
    """The shard files of ``path`` on disk, checked to be one complete, finished set."""
    totals: dict[int, list[Path]] = {}
    if path.parent.is_dir():
        for candidate in path.parent.iterdir():
            match = _SHARD_NAME.match(candidate.name)
            if match and match["stem"] == path.stem and (match["suffix"] or "") == path.suffix:
                totals.setdefault(int(match["total"]), []).append(candidate)
    if not totals:
        pattern = f"{path.stem}.NNNNN-of-NNNNN{path.suffix}"
        raise FileNotFoundError(f"{path}: no shard files named like {pattern} in {path.parent}")
    if len(totals) > 1:
        raise ValueError(f"{path}: shard files of different shard counts {sorted(totals)} sit side by side")
    ((num_shards, _),) = totals.items()
    return _check_shards(shard_paths(path, num_shards))


def _check_shards(paths: Sequence[Path]) -> list[Path]:
    for number, shard in enumerate(paths):
        if not shard.is_file():
            partial = shard.with_name(shard.name + PARTIAL_SUFFIX)
            unfinished = shard.with_name(shard.name + UNITS_SIDECAR_SUFFIX + PARTIAL_SUFFIX)
            state = "is not finished" if partial.exists() or unfinished.exists() else "is missing"
            raise FileNotFoundError(f"{shard}: shard {number} of {len(paths)} {state}")
    return list(paths)


def merge_shards(path: str | os.PathLike, *, num_shards: int | None = None) -> list[Path]:
    """Concatenate the finished shards of ``path`` into ``path`` (atomically), in shard order.

    The merged file holds exactly the lines of the unsharded build; since shards take items by striding, the lines
    are grouped by shard rather than in the unsharded input order (training shuffles them anyway).

    Args:
        path: The unsharded output name (``out.jsonl`` for ``out.00000-of-00004.jsonl`` ...).
        num_shards: How many shards to expect; found from the file names when None.

    Returns:
        The shard files merged, in order.

    Raises:
        FileNotFoundError: A shard is missing or unfinished, or no shard exists.
        ValueError: Shard files of different shard counts are present and ``num_shards`` is not given.
    """
    path = Path(path)
    shards = _find_shards(path) if num_shards is None else _check_shards(shard_paths(path, num_shards))
    with atomic_output(path) as tmp, tmp.open("wb") as out:
        for shard in shards:
            data = shard.read_bytes()
            out.write(data)
            if data and not data.endswith(b"\n"):
                out.write(b"\n")
    logger.info("merged %d shards into %s", len(shards), path)
    return shards


# --- shared machinery -----------------------------------------------------------------------------------------------

_T = TypeVar("_T")


def _select(items: Sequence[_T], ids: Sequence[str], shard: int, num_shards: int, source: str) -> list[_T]:
    """This shard's items (stable striding), after checking that ids are unique (they key resumed work)."""
    seen: set[str] = set()
    for item_id in ids:
        if item_id in seen:
            raise ValueError(f"{source}: item id {item_id!r} appears more than once; ids must be unique")
        seen.add(item_id)
    chosen = set(shard_items(list(ids), shard, num_shards))
    return [item for item, item_id in zip(items, ids, strict=True) if item_id in chosen]


def _paths(sources: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    if isinstance(sources, str | os.PathLike):
        return [Path(sources)]
    return [Path(source) for source in sources]


def _tokenizer_fingerprint(tokenizer: SpeechTokenizer) -> dict[str, Any]:
    """What identifies a tokenizer's units across runs (not its device): extractor kind/config and the centres."""
    extractor = getattr(tokenizer, "extractor", None)
    fingerprint: dict[str, Any] = {"extractor": type(extractor).__name__, "num_units": int(tokenizer.num_units)}
    config = getattr(extractor, "config", None)
    if hasattr(config, "to_dict"):
        fingerprint["extractor_config"] = config.to_dict()
    if getattr(extractor, "layer", None) is not None:
        fingerprint["layer"] = int(extractor.layer)
    centers = getattr(getattr(tokenizer, "kmeans", None), "centers", None)
    if centers is not None:
        fingerprint["centers_sha256"] = hashlib.sha256(np.ascontiguousarray(centers).tobytes()).hexdigest()
    return fingerprint


def _check_settings(out: Path, settings: dict[str, Any], overwrite: bool, outputs: Sequence[Path]) -> None:
    """Refuse to resume ``out`` when an earlier run used other settings; then record this run's settings."""
    record = out.with_name(out.name + SETTINGS_SUFFIX)
    settings = json.loads(json.dumps(settings))  # as it reads back (tuples → lists)
    if not overwrite and record.is_file() and any(p.exists() for p in outputs):
        try:
            previous = json.loads(record.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{record}: not valid JSON ({e}); pass overwrite=True (--overwrite) to rebuild") from e
        if previous != settings:
            keys = sorted(k for k in settings.keys() | previous.keys() if settings.get(k) != previous.get(k))
            raise ValueError(
                f"{out}: an earlier build used other settings ({', '.join(keys)}); pass overwrite=True "
                "(--overwrite) to rebuild it, or write to another output"
            )
    atomic_write_text(record, json.dumps(settings, indent=2, sort_keys=True) + "\n")


def _report(progress: ProgressFn | None, done: int, total: int, failure: BuildFailure | None) -> None:
    # With a callback the caller shows failures; without one they are logged (each is also in the result).
    if failure is not None:
        logger.log(logging.DEBUG if progress is not None else logging.WARNING, "%s %s", failure.kind, failure)
    if progress is not None:
        progress(done, total, failure)


def _load(tokenizer: SpeechTokenizer, audio: str | np.ndarray, name: str, sample_rate: int | None = None) -> np.ndarray:
    """A path or a waveform at ``sample_rate`` as 16 kHz audio the tokenizer accepts.

    Raises:
        AudioError: unreadable, empty, NaN, too long or too short audio (the message names ``name``).
    """
    return load_audio(audio, sample_rate=sample_rate, max_seconds=getattr(tokenizer, "max_seconds", None), name=name)


def _encode(
    tokenizer: SpeechTokenizer, audio: str | np.ndarray, name: str, sample_rate: int | None = None
) -> tuple[Units, float]:
    """Units of a path or a waveform at ``sample_rate``, and its duration in seconds.

    Raises:
        AudioError: unreadable, empty, NaN, too long or too short audio (the message names ``name``).
    """
    wave = _load(tokenizer, audio, name, sample_rate)
    return tokenizer.encode(wave, sample_rate=SAMPLE_RATE, name=name), len(wave) / SAMPLE_RATE


def _record_failure(result: BuildResult, failure: BuildFailure) -> BuildFailure:
    if failure.kind == SKIPPED:
        result.skipped.append(failure)
        result.stats.skipped += 1
    else:
        result.failures.append(failure)
        result.stats.failed += 1
    return failure


def _write_checked(
    writer: ResumableJsonlWriter, result: BuildResult, record_id: str, make: Callable[[], dict[str, Any]], **check: Any
) -> BuildFailure | None:
    """Build one record, validate it and write it; a record that cannot be built or fails validation is reported."""
    try:
        record = make()
        ensure_valid(record, **check)
    except ValueError as e:  # InvalidRecordError is a ValueError; so are the record makers' input checks
        return _record_failure(result, BuildFailure(record_id, f"{record_id}: {e}"))
    writer.write(record)
    text = record["plain_text"]
    result.stats.add_record(str(record.get("task", "")), units=_count_units(text), chars=len(text))
    return None


_UNIT_TOKEN = re.compile(r"<(?:0|[1-9][0-9]*)>")


def _count_units(text: str) -> int:
    """Unit tokens in a record (all speech spans together)."""
    return len(_UNIT_TOKEN.findall(text))


# --- stage 1 --------------------------------------------------------------------------------------------------------


def build_stage1(
    audio_sources: str | os.PathLike | Iterable[str | os.PathLike],
    tokenizer: SpeechTokenizer,
    out_txt: str | os.PathLike,
    *,
    shard: int = 0,
    num_shards: int = 1,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> BuildResult:
    """Stage-1 (modality-adaptation) data: one ``<sosp><12>...<eosp>`` line per recording, in input order.

    Args:
        audio_sources: Audio files, folders and manifests (see :func:`speechgpt.manifest.collect_audio_inputs`).
        tokenizer: Turns audio into units.
        out_txt: The text file to write (as given; see :func:`shard_path` for shard names).
        shard: Which shard of the recordings to build (0-based).
        num_shards: Into how many shards the recordings are split (stable striding).
        overwrite: Start from scratch instead of resuming an earlier run.
        progress: Called after each recording (see :data:`ProgressFn`).

    Returns:
        The output path, this run's stats and the recordings that failed.

    Raises:
        ManifestError: An input does not exist or a manifest is unreadable.
        ValueError: Bad shard arguments, or an earlier run of ``out_txt`` used another tokenizer or shard.
    """
    started = time.perf_counter()
    out = Path(out_txt)
    sidecar = out.with_name(out.name + UNITS_SIDECAR_SUFFIX)
    items = collect_audio_inputs(_paths(audio_sources))
    selected = _select(items, items, shard, num_shards, "audio inputs")
    settings = {"stage": 1, "tokenizer": _tokenizer_fingerprint(tokenizer), "shard": shard, "num_shards": num_shards}
    _check_settings(out, settings, overwrite, [out, sidecar, sidecar.with_name(sidecar.name + PARTIAL_SUFFIX)])
    if overwrite:
        out.unlink(missing_ok=True)
    result = BuildResult(output=out, stats=BuildStats(stage=1))
    stats = result.stats
    writer = ResumableJsonlWriter(sidecar, key="id", overwrite=overwrite)
    todo = [item for item in selected if item not in writer.done]
    stats.resumed = len(selected) - len(todo)
    with writer:
        for done, path in enumerate(todo, start=1):
            failure = None
            try:
                units, seconds = _encode(tokenizer, path, path)
            except AudioError as e:
                failure = _record_failure(result, BuildFailure(path, str(e)))
            else:
                line = units.to_string()
                problems = check_unit_line(line, num_units=tokenizer.num_units)
                if problems:
                    failure = _record_failure(result, BuildFailure(path, f"{path}: {'; '.join(problems)}"))
                else:
                    writer.write({"id": path, "units": line, "seconds": round(seconds, 6)})
                    stats.add_audio(seconds, len(units))
                    stats.add_record("units", units=len(units), chars=len(line))
            stats.items += 1
            _report(progress, done, len(todo), failure)
        writer.finish()
    _write_unit_lines(sidecar, out, selected)
    stats.elapsed = time.perf_counter() - started
    return result


def _write_unit_lines(sidecar: Path, out: Path, selected: Sequence[str]) -> None:
    """Write the unit lines of ``selected`` from the sidecar to ``out`` atomically, in ``selected``'s order."""
    position = {item: index for index, item in enumerate(selected)}
    order = [position[r["id"]] for r in read_jsonl(sidecar) if r.get("id") in position]
    in_order = all(a < b for a, b in itertools.pairwise(order))
    records: Iterator[dict[str, Any]] = (r for r in read_jsonl(sidecar) if r.get("id") in position)
    if not in_order:  # inputs changed between runs: sort the (rare) mixed-up sidecar in memory
        records = iter(sorted(records, key=lambda r: position[r["id"]]))
    with atomic_output(out) as tmp, tmp.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(record["units"] + "\n")


# --- stage 2 --------------------------------------------------------------------------------------------------------


def build_stage2(
    corpus_path: str | os.PathLike | Iterable[str | os.PathLike],
    tokenizer: SpeechTokenizer,
    out_jsonl: str | os.PathLike,
    *,
    directions: Sequence[str] = ("asr", "tts"),
    speed_perturbation: Sequence[float] = (),
    seed: int = 0,
    templates_dir: str | os.PathLike | None = None,
    shard: int = 0,
    num_shards: int = 1,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> BuildResult:
    """Stage-2 (cross-modal instruction) records: for each (audio, transcript) item an ASR and a TTS record, and
    with ``speed_perturbation`` more ASR records of the recording played faster or slower.

    Record ids are ``<item id>-asr``, ``<item id>-tts`` and ``<item id>-asr-speed<factor>`` (``-asr-speed0.9``);
    each record's template is ``pick_template(templates, key=record id, seed=seed)``, so shards and resumed runs
    choose the same one.

    Speed perturbation changes tempo, pitch and formants together (:func:`~speechgpt.audio.change_speed`), as
    between speakers: the model learns to read the units of more voices than the corpus has. Only ASR records get
    copies; TTS targets stay the recordings' own units, the ones a vocoder is fitted on.

    Args:
        corpus_path: A speech corpus (LibriSpeech folder, Common Voice .tsv, .jsonl/.csv manifest), or several.
        tokenizer: Turns audio into units.
        out_jsonl: The JSONL file to write (as given; see :func:`shard_path` for shard names).
        directions: Which records to write per item, in this order: ``"asr"`` (speech→text), ``"tts"``.
        speed_perturbation: Speed factors (e.g. ``(0.9, 1.1)``, each in (0.5, 2), not 1) of extra ASR records per
            item; needs ``"asr"`` among the directions.
        seed: Changes the template assignment, reproducibly.
        templates_dir: A folder with ``speech_to_text.txt`` / ``text_to_speech.txt``; None uses the shipped ones.
        shard: Which shard of the items to build (0-based).
        num_shards: Into how many shards the items are split (stable striding).
        overwrite: Start from scratch instead of resuming an earlier run.
        progress: Called after each item (see :data:`ProgressFn`).

    Returns:
        The output path, this run's stats and the items/records that failed.

    Raises:
        ReaderError: The corpus cannot be read.
        ValueError: Unknown directions, bad speed factors, duplicate item ids, bad shard arguments, or other
            settings than a run being resumed.
    """
    started = time.perf_counter()
    directions = _check_directions(directions)
    speeds = _check_speeds(speed_perturbation, directions)
    names = [*directions, *(f"asr-speed{factor:g}" for factor in speeds)]
    out = Path(out_jsonl)
    templates = {name: load_templates(DIRECTIONS[name], templates_dir) for name in directions}
    items: list[SpeechItem] = [item for path in _paths(corpus_path) for item in read_speech_corpus(path)]
    selected = _select(items, [item.id for item in items], shard, num_shards, "speech corpus")
    settings = {
        "stage": 2,
        "tokenizer": _tokenizer_fingerprint(tokenizer),
        "directions": list(directions),
        **({"speed_perturbation": list(speeds)} if speeds else {}),  # builds without it resume as before
        "seed": seed,
        "templates": {name: _digest(lines) for name, lines in templates.items()},
        "shard": shard,
        "num_shards": num_shards,
    }
    _check_settings(out, settings, overwrite, [out, out.with_name(out.name + PARTIAL_SUFFIX)])
    result = BuildResult(output=out, stats=BuildStats(stage=2))
    stats = result.stats
    writer = ResumableJsonlWriter(out, key="id", overwrite=overwrite)
    plan: list[tuple[SpeechItem, list[str]]] = []
    for item in selected:
        missing = [name for name in names if f"{item.id}-{name}" not in writer.done]
        stats.resumed += len(names) - len(missing)
        if missing:
            plan.append((item, missing))
    with writer:
        for done, (item, missing) in enumerate(plan, start=1):
            failure = None
            try:
                wave = _load(tokenizer, item.audio, item.audio)
                units = tokenizer.encode(wave, sample_rate=SAMPLE_RATE, name=item.audio)
            except AudioError as e:
                failure = _record_failure(result, BuildFailure(item.id, str(e)))
            else:
                stats.add_audio(len(wave) / SAMPLE_RATE, len(units))
                own_units = units.to_string()
                for name in missing:
                    record_id = f"{item.id}-{name}"
                    direction, _, speed = name.partition("-speed")
                    unit_string = own_units
                    if speed:
                        label = f"{item.audio} at speed {speed}"
                        try:
                            perturbed = tokenizer.encode(
                                change_speed(wave, float(speed)), sample_rate=SAMPLE_RATE, name=label
                            )
                        except AudioError as e:  # e.g. too short once sped up: this record alone fails
                            failure = _record_failure(result, BuildFailure(record_id, str(e)))
                            continue
                        unit_string = perturbed.to_string()
                    template = pick_template(templates[direction], key=record_id, seed=seed)
                    if direction == "asr":
                        make = functools.partial(make_asr_record, transcript=item.text)
                    else:
                        make = functools.partial(make_tts_record, text=item.text)
                    make = functools.partial(
                        make, id=record_id, units=unit_string, template=template, num_units=tokenizer.num_units
                    )
                    failure = _write_checked(writer, result, record_id, make, num_units=tokenizer.num_units) or failure
            stats.items += 1
            _report(progress, done, len(plan), failure)
        writer.finish()
    stats.elapsed = time.perf_counter() - started
    return result


def _check_directions(directions: Sequence[str]) -> tuple[str, ...]:
    if isinstance(directions, str):
        directions = (directions,)
    chosen = tuple(directions)
    unknown = [d for d in chosen if d not in DIRECTIONS]
    if not chosen or unknown or len(set(chosen)) != len(chosen):
        raise ValueError(f"directions must be distinct values among {sorted(DIRECTIONS)}, got {list(chosen)!r}")
    return chosen


def _check_speeds(speeds: Sequence[float], directions: Sequence[str]) -> tuple[float, ...]:
    chosen = tuple(float(f) for f in speeds)
    bad = [f for f in chosen if not 0.5 < f < 2.0 or f == 1.0]
    if bad or len(set(chosen)) != len(chosen):
        raise ValueError(f"speed_perturbation must be distinct factors in (0.5, 2) other than 1, got {list(speeds)!r}")
    if chosen and "asr" not in directions:
        raise ValueError("speed_perturbation makes ASR records: it needs 'asr' among the directions")
    return chosen


def _digest(lines: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


# --- stage 3 --------------------------------------------------------------------------------------------------------


def combo_name(input_modality: Modality, output_modality: Modality) -> str:
    """``"speech2text"`` and the like: the record-id suffix of a chain-of-modality combination."""
    return f"{Modality(input_modality).value}2{Modality(output_modality).value}"


def _same_engine(engine: TTSEngine) -> TTSEngine:
    """Engine factory for :func:`synthesize_many` that hands out an existing engine (picklable via ``partial``)."""
    return engine


@dataclass
class _Speech:
    """What one stage-3 item needs spoken, and what came back."""

    item: InstructionItem
    combos: list[tuple[Modality, Modality]]
    voice: VoiceSettings
    texts: dict[str, str]  # "question"/"answer" → text to speak
    waves: dict[str, np.ndarray] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def build_stage3(
    instructions_path: str | os.PathLike | Iterable[str | os.PathLike],
    tokenizer: SpeechTokenizer,
    out_jsonl: str | os.PathLike,
    engine: TTSEngine,
    voices: Sequence[VoiceSettings],
    *,
    combos: Sequence[tuple[Modality, Modality]] = ALL_COMBOS,
    seed: int = 0,
    num_workers: int = 0,
    max_chars: int = MAX_SPOKEN_CHARS,
    answer_voice: VoiceSettings | None = None,
    batch_size: int = SYNTHESIS_BATCH,
    shard: int = 0,
    num_shards: int = 1,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> BuildResult:
    """Stage-3 (chain-of-modality) records: each instruction spoken, encoded, and written in four layouts.

    For every Alpaca-style item the question (instruction + input) and the answer (output) are spoken by
    ``engine`` with a voice chosen per item from ``voices`` (a stable hash of ``(seed, item id)``), encoded into
    units, and one record per combination is written with id ``<item id>-<in>2<out>`` (e.g. ``q7-speech2text``).
    Only what a combination needs is spoken. Items whose question or answer is longer than ``max_chars`` (when
    it has to be spoken) are skipped with a warning.

    Args:
        instructions_path: Alpaca JSON/JSONL instruction data, or several files.
        tokenizer: Turns the synthetic speech into units.
        out_jsonl: The JSONL file to write (as given; see :func:`shard_path` for shard names).
        engine: Any :class:`~speechgpt.data.tts.TTSEngine`; audio at its ``sample_rate`` is resampled to 16 kHz.
            It must be picklable when ``num_workers > 0``.
        voices: Voices to choose from per item.
        combos: (input, output) modality pairs, written per item in this order; all four by default.
        seed: Changes the voice assignment, reproducibly.
        num_workers: Synthesis processes (0: in this process).
        max_chars: Longest text spoken; longer items are skipped.
        answer_voice: One voice for every spoken answer (a consistent assistant voice); None uses the item's voice.
        batch_size: Items spoken per synthesis call.
        shard: Which shard of the items to build (0-based).
        num_shards: Into how many shards the items are split (stable striding).
        overwrite: Start from scratch instead of resuming an earlier run.
        progress: Called after each item (see :data:`ProgressFn`).

    Returns:
        The output path, this run's stats, the failures and the skipped items.

    Raises:
        ReaderError: The instructions cannot be read.
        ValueError: Bad combos, voices, sizes or shard arguments, duplicate item ids, or other settings than a
            run being resumed.
    """
    started = time.perf_counter()
    combos = _check_combos(combos)
    voices = list(voices)
    if not voices or not all(isinstance(v, VoiceSettings) for v in voices):
        raise ValueError(f"voices must be a non-empty sequence of VoiceSettings, got {voices!r}")
    if answer_voice is not None and not isinstance(answer_voice, VoiceSettings):
        raise ValueError(f"answer_voice must be a VoiceSettings or None, got {answer_voice!r}")
    for name, value in (("max_chars", max_chars), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    out = Path(out_jsonl)
    items: list[InstructionItem] = [item for path in _paths(instructions_path) for item in read_instructions(path)]
    selected = _select(items, [item.id for item in items], shard, num_shards, "instructions")
    settings = {
        "stage": 3,
        "tokenizer": _tokenizer_fingerprint(tokenizer),
        "engine": type(engine).__name__,
        "voices": [asdict(v) for v in voices],
        "answer_voice": asdict(answer_voice) if answer_voice is not None else None,
        "combos": [combo_name(*combo) for combo in combos],
        "seed": seed,
        "max_chars": max_chars,
        "shard": shard,
        "num_shards": num_shards,
    }
    _check_settings(out, settings, overwrite, [out, out.with_name(out.name + PARTIAL_SUFFIX)])
    result = BuildResult(output=out, stats=BuildStats(stage=3))
    stats = result.stats
    writer = ResumableJsonlWriter(out, key="id", overwrite=overwrite)
    plan: list[_Speech] = []
    for item in selected:
        missing = [combo for combo in combos if f"{item.id}-{combo_name(*combo)}" not in writer.done]
        stats.resumed += len(combos) - len(missing)
        if not missing:
            continue
        voice = voices[stable_index(item.id, len(voices), seed)]
        texts = {}
        if any(i == Modality.SPEECH for i, _ in missing):
            texts["question"] = item.question
        if any(o == Modality.SPEECH for _, o in missing):
            texts["answer"] = item.output
        plan.append(_Speech(item, missing, voice, texts))
    speak = functools.partial(_speak, engine=engine, answer_voice=answer_voice, num_workers=num_workers)
    with writer:
        done = 0
        for start in range(0, len(plan), batch_size):
            batch = plan[start : start + batch_size]
            speak([job for job in batch if not _too_long(job, max_chars)])
            for job in batch:
                done += 1
                stats.items += 1
                failure = _write_stage3_item(job, writer, result, tokenizer, max_chars, engine.sample_rate)
                _report(progress, done, len(plan), failure)
        writer.finish()
    stats.elapsed = time.perf_counter() - started
    return result


def _check_combos(combos: Sequence[tuple[Modality, Modality]]) -> list[tuple[Modality, Modality]]:
    try:
        chosen = [(Modality(i), Modality(o)) for i, o in combos]
    except (TypeError, ValueError) as e:
        raise ValueError(f"combos must be (input, output) Modality pairs, got {combos!r} ({e})") from e
    if not chosen or len(set(chosen)) != len(chosen):
        raise ValueError(f"combos must be distinct and non-empty, got {[combo_name(*c) for c in chosen]}")
    return chosen


def _too_long(job: _Speech, max_chars: int) -> str | None:
    for part, text in job.texts.items():
        if len(text) > max_chars:
            return f"{job.item.id}: {part} has {len(text)} characters, more than the {max_chars} spoken at most"
    return None


def _speak(jobs: list[_Speech], *, engine: TTSEngine, answer_voice: VoiceSettings | None, num_workers: int) -> None:
    """Speak every text of ``jobs`` in one batch; a batch that fails is retried text by text to isolate the error."""
    keys = [(job, part) for job in jobs for part in job.texts]
    texts = [job.texts[part] for job, part in keys]
    settings = [answer_voice if part == "answer" and answer_voice is not None else job.voice for job, part in keys]
    factory = functools.partial(_same_engine, engine)
    try:
        waves = synthesize_many(texts, settings, engine_factory=factory, num_workers=num_workers)
    except (ValueError, RuntimeError) as e:
        logger.debug("synthesis of a batch failed (%s); speaking its texts one by one", e)
        for (job, part), text, voice in zip(keys, texts, settings, strict=True):
            try:
                job.waves[part] = engine.synthesize(text, voice)
            except (ValueError, RuntimeError) as error:
                job.errors[part] = f"{job.item.id}: cannot speak the {part} ({error})"
        return
    for (job, part), wave in zip(keys, waves, strict=True):
        job.waves[part] = wave


def _write_stage3_item(
    job: _Speech,
    writer: ResumableJsonlWriter,
    result: BuildResult,
    tokenizer: SpeechTokenizer,
    max_chars: int,
    sample_rate: int,
) -> BuildFailure | None:
    item = job.item
    reason = _too_long(job, max_chars)
    if reason is not None:
        return _record_failure(result, BuildFailure(item.id, reason, kind=SKIPPED))
    if job.errors:
        return _record_failure(result, BuildFailure(item.id, "; ".join(job.errors.values())))
    unit_strings: dict[str, str] = {}
    for part, wave in job.waves.items():
        try:
            units, seconds = _encode(tokenizer, np.asarray(wave), f"{item.id} ({part})", sample_rate)
        except AudioError as e:
            return _record_failure(result, BuildFailure(item.id, str(e)))
        result.stats.add_audio(seconds, len(units))
        unit_strings[part] = units.to_string()
    failure = None
    for input_modality, output_modality in job.combos:
        record_id = f"{item.id}-{combo_name(input_modality, output_modality)}"
        make = functools.partial(
            make_com_record,
            id=record_id,
            input_modality=input_modality,
            output_modality=output_modality,
            question_text=item.question,
            answer_text=item.output,
            question_units=unit_strings.get("question") if input_modality == Modality.SPEECH else None,
            answer_units=unit_strings.get("answer") if output_modality == Modality.SPEECH else None,
            num_units=tokenizer.num_units,
        )
        failure = _write_checked(writer, result, record_id, make, num_units=tokenizer.num_units) or failure
    return failure
