"""Corpus readers: (audio, transcript) corpora and instruction data, as plain dataclasses in a fixed order.

The builders take any speech corpus through :func:`read_speech_corpus` (a LibriSpeech tree, a Common Voice TSV,
or a JSONL/CSV manifest such as the speech world's) and any Alpaca-style instruction data through
:func:`read_instructions`. Order is deterministic (sorted files, file order within them) and ids are unique, so
builds can shard by position and resume by id. File-level problems (missing file, missing column) raise when the
reader is called; row-level problems raise :class:`ReaderError` naming the file, the line or row, and the reason.
Audio files are not opened here: the builders report unreadable audio per item.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from speechgpt.jsonl import JsonlError
from speechgpt.manifest import AUDIO_EXTENSIONS

LIBRISPEECH_TRANSCRIPT_GLOB = "*.trans.txt"
LIBRISPEECH_AUDIO_SUFFIX = ".flac"
COMMON_VOICE_CLIPS = "clips"
COMMON_VOICE_COLUMNS = ("path", "sentence")
COMMON_VOICE_SPEAKER = "client_id"
SPEAKER_FALLBACK_FIELD = "voice"
"""Read as the speaker when the speaker field is absent (the speech world's manifests name voices)."""
AUDIO_FALLBACK_FIELD = "path"
"""Read as the audio path when the audio field is absent (as :mod:`speechgpt.manifest` does)."""
CORPUS_KINDS = ("auto", "librispeech", "common_voice", "manifest")
MANIFEST_SUFFIXES = frozenset({".jsonl", ".csv"})


class ReaderError(ValueError):
    """A corpus that cannot be read; the message names the file, the line or row, and the reason."""


class MalformedJsonError(ReaderError, JsonlError):
    """A line or file that is not valid JSON; both a :class:`ReaderError` and a :class:`~speechgpt.jsonl.JsonlError`."""


@dataclass(frozen=True)
class SpeechItem:
    """One utterance: a unique id, its audio file, what is said, and who says it (``""`` when unknown)."""

    id: str
    audio: str
    text: str
    speaker: str = ""


@dataclass(frozen=True)
class InstructionItem:
    """One instruction-following example (Alpaca fields) with a unique id and an optional family label."""

    id: str
    instruction: str
    input: str
    output: str
    family: str = ""

    @property
    def question(self) -> str:
        """What the user asks: the instruction, then the input on a new line when there is one."""
        return self.instruction + ("\n" + self.input if self.input else "")


def _resolve(base: Path, entry: str) -> str:
    path = Path(entry).expanduser()
    return str(path if path.is_absolute() else base / path)


def _require_file(path: str | os.PathLike, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such {what}")
    return path


def _unique(items: Iterable[tuple[str, SpeechItem | InstructionItem]]) -> Iterator[Any]:
    """Pass items through, raising on a repeated id (ids are the resume keys of the builders)."""
    first: dict[str, str] = {}
    for where, item in items:
        if item.id in first:
            raise ReaderError(f"{where}: duplicate id {item.id!r} (first at {first[item.id]})")
        first[item.id] = where
        yield item


def _jsonl_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line; bad JSON raises with the line number."""
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as e:
                raise MalformedJsonError(f"{path}:{number}: not valid JSON ({e.msg})") from e


def _string_field(record: Any, names: tuple[str, ...], where: str, *, required: bool) -> str:
    """The first of ``names`` present in ``record``, as a trimmed string ("" when optional and absent)."""
    if not isinstance(record, dict):
        raise ReaderError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for name in names:
        if name in record and record[name] is not None:
            value = record[name]
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise ReaderError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
            text = str(value).strip()
            if required and not text:
                raise ReaderError(f"{where}: field {name!r} is empty")
            return text
    if required:
        raise ReaderError(f"{where}: missing field {' or '.join(repr(n) for n in names)}")
    return ""


# --- speech corpora ---------------------------------------------------------------------------------------------


def _librispeech_audio(folder: Path, utterance: str) -> str:
    audio = folder / f"{utterance}{LIBRISPEECH_AUDIO_SUFFIX}"
    if audio.exists():
        return str(audio)
    for suffix in sorted(AUDIO_EXTENSIONS):  # a converted copy (e.g. .wav) of the corpus
        other = folder / f"{utterance}{suffix}"
        if other.exists():
            return str(other)
    return str(audio)  # missing: the builder reports it for this item


def _iter_librispeech(files: list[Path]) -> Iterator[tuple[str, SpeechItem]]:
    for file in files:
        with file.open(encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                utterance, _, text = line.strip().partition(" ")
                where = f"{file}:{number}"
                if not text.strip():
                    raise ReaderError(f"{where}: no transcript after the utterance id {utterance!r}")
                speaker = utterance.split("-", 1)[0]
                audio = _librispeech_audio(file.parent, utterance)
                yield where, SpeechItem(id=utterance, audio=audio, text=text.strip(), speaker=speaker)


def read_librispeech(root: str | os.PathLike) -> Iterator[SpeechItem]:
    """Utterances of a LibriSpeech tree (``speaker/chapter/speaker-chapter.trans.txt``, ``ID.flac`` beside it).

    ``root`` may be a subset folder (``train-clean-100``) or any folder above; every ``*.trans.txt`` below it is
    read, in sorted path order. Text is kept as written (LibriSpeech is upper case), trimmed.

    Raises:
        FileNotFoundError: when ``root`` is not a folder.
        ReaderError: when no transcript file is found, or a line has no transcript.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such LibriSpeech folder")
    files = sorted(root.rglob(LIBRISPEECH_TRANSCRIPT_GLOB))
    if not files:
        raise ReaderError(f"{root}: no LibriSpeech transcripts ({LIBRISPEECH_TRANSCRIPT_GLOB}) found below it")
    return _unique(_iter_librispeech(files))


def _tsv_reader(f: Any) -> csv.DictReader:
    # Common Voice writes quotes inside sentences without CSV quoting.
    return csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)


def _check_columns(path: Path, header: list[str] | None, required: tuple[str, ...]) -> None:
    missing = [c for c in required if c not in (header or [])]
    if missing:
        found = ", ".join(header or []) or "nothing"
        raise ReaderError(f"{path}:1: missing column(s) {', '.join(missing)} in the header (found: {found})")


def _check_row_width(row: dict[Any, Any], where: str) -> None:
    # csv.DictReader files extra cells under the key None and fills missing cells with None.
    if None in row:
        raise ReaderError(f"{where}: more cells than the header has columns")
    if None in row.values():
        raise ReaderError(f"{where}: fewer cells than the header has columns")


def _iter_common_voice(path: Path, clips: Path) -> Iterator[tuple[str, SpeechItem]]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = _tsv_reader(f)
        for row in reader:
            where = f"{path}:{reader.line_num}"
            _check_row_width(row, where)
            clip = _string_field(row, ("path",), where, required=True)
            text = _string_field(row, ("sentence",), where, required=True)
            speaker = _string_field(row, (COMMON_VOICE_SPEAKER,), where, required=False)
            yield where, SpeechItem(id=Path(clip).stem, audio=_resolve(clips, clip), text=text, speaker=speaker)


def read_common_voice(tsv: str | os.PathLike, clips_dir: str | os.PathLike | None = None) -> Iterator[SpeechItem]:
    """Utterances of a Common Voice TSV (header with ``path`` and ``sentence``, optionally ``client_id``).

    Args:
        tsv: e.g. ``validated.tsv`` or ``train.tsv``.
        clips_dir: Where the audio files are; ``<tsv folder>/clips`` when None.

    Raises:
        FileNotFoundError: when ``tsv`` is not a file.
        ReaderError: for a missing column (at the call), or a row with missing fields or a repeated clip.
    """
    path = _require_file(tsv, "Common Voice TSV")
    clips = Path(clips_dir).expanduser() if clips_dir is not None else path.parent / COMMON_VOICE_CLIPS
    with path.open(encoding="utf-8", newline="") as f:
        _check_columns(path, _tsv_reader(f).fieldnames, COMMON_VOICE_COLUMNS)
    return _unique(_iter_common_voice(path, clips))


def _manifest_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    if path.suffix.lower() == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            for row in reader:
                where = f"{path}:{reader.line_num}"
                _check_row_width(row, where)
                yield where, row
        return
    for number, record in _jsonl_lines(path):
        yield f"{path}:{number}", record


def _iter_manifest(
    path: Path, audio_fields: tuple[str, ...], text_field: str, speaker_fields: tuple[str, ...]
) -> Iterator[tuple[str, SpeechItem]]:
    for where, row in _manifest_rows(path):
        audio = _string_field(row, audio_fields, where, required=True)
        text = _string_field(row, (text_field,), where, required=True)
        speaker = _string_field(row, speaker_fields, where, required=False)
        item_id = _string_field(row, ("id",), where, required=False) or Path(audio).stem
        yield where, SpeechItem(id=item_id, audio=_resolve(path.parent, audio), text=text, speaker=speaker)


def read_speech_manifest(
    path: str | os.PathLike,
    *,
    audio_field: str = "audio",
    text_field: str = "text",
    speaker_field: str = "speaker",
) -> Iterator[SpeechItem]:
    """Utterances listed in a JSONL or CSV manifest (CSV: a header row), in file order.

    Audio paths are relative to the manifest's folder unless absolute. The id is the ``id`` field, else the audio
    file's stem. When ``audio_field`` is absent from a row, ``path`` is read; when ``speaker_field`` is absent,
    ``voice`` is (the speech world's manifests name voices).

    Raises:
        FileNotFoundError: when ``path`` is not a file.
        ReaderError: for an unknown suffix, a missing CSV column (at the call), bad JSON, a row without audio or
            text, or a repeated id.
    """
    path = _require_file(path, "speech manifest")
    suffix = path.suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise ReaderError(f"{path}: a speech manifest is .jsonl or .csv, not {suffix or 'a file without suffix'!r}")
    audio_fields = (audio_field, AUDIO_FALLBACK_FIELD) if audio_field != AUDIO_FALLBACK_FIELD else (audio_field,)
    speaker_fields = (speaker_field, SPEAKER_FALLBACK_FIELD)
    if suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            header = csv.DictReader(f).fieldnames or []
        if not any(name in header for name in audio_fields):
            _check_columns(path, header, (audio_field,))
        _check_columns(path, header, (text_field,))
    return _unique(_iter_manifest(path, audio_fields, text_field, speaker_fields))


def read_speech_corpus(path: str | os.PathLike, kind: str = "auto") -> Iterator[SpeechItem]:
    """Utterances of any supported corpus: a folder is LibriSpeech, ``.tsv`` Common Voice, ``.jsonl``/``.csv`` a
    manifest (``kind`` overrides the guess: ``librispeech``, ``common_voice`` or ``manifest``).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: for an unknown ``kind``.
        ReaderError: when the kind cannot be told from the path, or the corpus is malformed.
    """
    if kind not in CORPUS_KINDS:
        raise ValueError(f"unknown corpus kind {kind!r}; expected one of: {', '.join(CORPUS_KINDS)}")
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such corpus file or folder")
    if kind == "auto":
        suffix = path.suffix.lower()
        if path.is_dir():
            kind = "librispeech"
        elif suffix == ".tsv":
            kind = "common_voice"
        elif suffix in MANIFEST_SUFFIXES:
            kind = "manifest"
        else:
            raise ReaderError(
                f"{path}: cannot tell the corpus kind (a LibriSpeech folder, a Common Voice .tsv, "
                "or a .jsonl/.csv manifest); name it with kind="
            )
    if kind == "librispeech":
        return read_librispeech(path)
    if kind == "common_voice":
        return read_common_voice(path)
    return read_speech_manifest(path)


# --- instruction data -------------------------------------------------------------------------------------------


def _instruction_records(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, record) of an Alpaca JSON list or a JSONL file, told apart by the first non-blank character."""
    with path.open(encoding="utf-8") as f:
        head = f.read(4096).lstrip()
    if head.startswith("["):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise MalformedJsonError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from e
        if not isinstance(data, list):
            raise ReaderError(f"{path}: expected a JSON list of instructions")
        for index, record in enumerate(data):
            yield f"{path}: item {index}", record
        return
    for number, record in _jsonl_lines(path):
        yield f"{path}:{number}", record


def _iter_instructions(path: Path) -> Iterator[tuple[str, InstructionItem]]:
    for index, (where, record) in enumerate(_instruction_records(path)):
        instruction = _string_field(record, ("instruction",), where, required=True)
        output = _string_field(record, ("output",), where, required=True)
        extra = _string_field(record, ("input",), where, required=False)
        family = _string_field(record, ("family",), where, required=False)
        item_id = _string_field(record, ("id",), where, required=False) or f"{path.stem}-{index}"
        yield where, InstructionItem(id=item_id, instruction=instruction, input=extra, output=output, family=family)


def read_instructions(path: str | os.PathLike) -> Iterator[InstructionItem]:
    """Instruction examples of an Alpaca-style JSON list or a JSONL file (``instruction``, ``input``, ``output``).

    The id is the record's ``id`` field, else ``"<file stem>-<index>"`` (0-based position); ``family`` is read
    when present. Text fields are trimmed.

    Raises:
        FileNotFoundError: when ``path`` is not a file.
        ReaderError: for bad JSON (a :class:`MalformedJsonError`, with the line), a missing or empty
            ``instruction``/``output``, a non-string field, or a repeated id.
    """
    path = _require_file(path, "instruction file")
    return _unique(_iter_instructions(path))
