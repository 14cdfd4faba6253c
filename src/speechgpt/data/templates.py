"""Instruction templates of the cross-modal SpeechInstruct records, kept as data files.

The paper wraps every (speech, transcript) pair in one of many human-written instructions so the model learns the
task from the words of the request, not from one fixed phrase. The templates ship as two text files
(``templates/speech_to_text.txt`` and ``templates/text_to_speech.txt``, one template a line, ``#`` comments); a
user's own file replaces them. :func:`pick_template` chooses one per item from a stable hash of the item's key, so
sharded and resumed builds pick the same template for the same item on any machine and any Python.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence
from enum import Enum
from importlib import resources
from pathlib import Path

from speechgpt.prompt_format import neutralize_user_text

TEMPLATE_PACKAGE = "speechgpt.data"
"""The package whose ``templates/`` folder holds the shipped template files."""
TEMPLATE_FOLDER = "templates"
COMMENT_PREFIX = "#"


class Direction(str, Enum):
    """Which way a cross-modal instruction goes; its value names the template file."""

    SPEECH_TO_TEXT = "speech_to_text"
    TEXT_TO_SPEECH = "text_to_speech"

    @property
    def file_name(self) -> str:
        return f"{self.value}.txt"


class TemplateError(ValueError):
    """A template file that cannot be used; the message names the file (and line) and the reason."""


def _direction(direction: Direction | str) -> Direction:
    try:
        return Direction(direction)
    except ValueError:
        valid = ", ".join(d.value for d in Direction)
        raise ValueError(f"unknown template direction {direction!r}; expected one of: {valid}") from None


def parse_templates(text: str, *, source: str = "<templates>") -> tuple[str, ...]:
    """The templates in a file's text: one per line, blank lines and ``#`` comments skipped, whitespace trimmed.

    Raises:
        TemplateError: when there is no template, a template repeats, or a line holds a control string
            (``<sosp>``, ``[Human]``, ``<12>``, ...) that would break the record layout.
    """
    templates: list[str] = []
    first_line: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = " ".join(raw.split())
        if not line or line.startswith(COMMENT_PREFIX):
            continue
        if line in first_line:
            raise TemplateError(f"{source}:{number}: duplicate template (same as line {first_line[line]}): {line!r}")
        if neutralize_user_text(line) != line:
            raise TemplateError(f"{source}:{number}: template holds a control string or unit token: {line!r}")
        first_line[line] = number
        templates.append(line)
    if not templates:
        raise TemplateError(f"{source}: no templates (only blank or '{COMMENT_PREFIX}' lines)")
    return tuple(templates)


@functools.cache
def _packaged(direction: Direction) -> tuple[str, ...]:
    resource = resources.files(TEMPLATE_PACKAGE).joinpath(TEMPLATE_FOLDER, direction.file_name)
    return parse_templates(resource.read_text(encoding="utf-8"), source=f"{TEMPLATE_PACKAGE}:{resource.name}")


def load_templates(direction: Direction | str, path: str | os.PathLike | None = None) -> tuple[str, ...]:
    """The instruction templates for one direction, in file order.

    Args:
        direction: Speech→text (ASR records) or text→speech (TTS records).
        path: A user's template file, or a folder holding ``speech_to_text.txt`` / ``text_to_speech.txt``;
            ``None`` uses the templates shipped with the package.

    Raises:
        FileNotFoundError: when ``path`` (or the direction's file inside the folder) does not exist.
        TemplateError: when the file has no templates, repeats one, or holds control strings.
    """
    direction = _direction(direction)
    if path is None:
        return _packaged(direction)
    file = Path(path).expanduser()
    if file.is_dir():
        file = file / direction.file_name
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such template file for {direction.value}")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TemplateError(f"{file}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    return parse_templates(text, source=str(file))


def stable_index(key: str, size: int, seed: int = 0) -> int:
    """An index in ``range(size)`` from a hash of ``(seed, key)`` that is the same on every machine and run.

    Python's ``hash`` of a string changes from process to process, so it cannot be used for choices that shards
    and resumed runs must repeat.
    """
    if size < 1:
        raise ValueError(f"cannot choose from {size} options")
    digest = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % size


def pick_template(templates: Sequence[str], key: str, seed: int = 0) -> str:
    """The template for one item: a deterministic choice from a stable hash of ``(seed, key)``.

    Args:
        templates: The templates to choose from (e.g. from :func:`load_templates`).
        key: What identifies the item and the direction, e.g. ``"1089-134686-0000-asr"``.
        seed: Changes the whole assignment while keeping it reproducible.

    Raises:
        ValueError: when ``templates`` is empty or ``key`` is not a string.
    """
    if not isinstance(key, str):
        raise ValueError(f"template key must be a string, got {type(key).__name__}")
    if len(templates) == 0:
        raise ValueError("no templates to choose from")
    return templates[stable_index(key, len(templates), seed)]
