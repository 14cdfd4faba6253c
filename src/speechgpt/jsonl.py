"""JSON Lines files that survive being killed: atomic writes, resumable appends, line-numbered errors.

Every long job in the project (unit encoding, dataset building) writes one JSON object per finished item to
``OUT.partial``, flushing after each line; a restarted job reads what is there, drops a torn last line, skips
the finished items and appends the rest in the same order, so the final file is byte-identical to the one an
uninterrupted run writes. Only a finished job renames ``OUT.partial`` to ``OUT``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

PARTIAL_SUFFIX = ".partial"


class JsonlError(ValueError):
    """A malformed JSON Lines file; the message names the file and the line number."""


def read_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Yield the objects of a JSON Lines file, skipping blank lines.

    Raises:
        JsonlError: for a line that is not a JSON object, naming the file and the 1-based line number.
    """
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise JsonlError(f"{path}:{number}: not valid JSON ({e.msg})") from e
            if not isinstance(record, dict):
                raise JsonlError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            yield record


def dumps_record(record: dict[str, Any]) -> str:
    """One JSON line (no trailing newline); non-ASCII text is kept readable."""
    return json.dumps(record, ensure_ascii=False, separators=(", ", ": "))


class ResumableJsonlWriter:
    """Appends records to ``OUT.partial`` and renames it to ``OUT`` when the job is complete.

    Args:
        path: The final output file.
        key: The record field that identifies an item (e.g. ``"audio"``); used to tell finished items.
        overwrite: Start from scratch instead of resuming from ``OUT.partial`` or a finished ``OUT``.

    The writer is a context manager; leaving it with an exception keeps the partial file for the next run.
    """

    def __init__(self, path: str | os.PathLike, key: str, *, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.partial_path = self.path.with_name(self.path.name + PARTIAL_SUFFIX)
        self.key = key
        self.done: set[str] = set()
        self._file: IO[str] | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if overwrite:
            self.partial_path.unlink(missing_ok=True)
            self.path.unlink(missing_ok=True)
        elif not self.partial_path.exists() and self.path.exists():
            # A finished output given again: continue from it so new items are appended, none redone.
            os.replace(self.path, self.partial_path)
        if self.partial_path.exists():
            self._drop_torn_tail()
            self.done = {str(record[key]) for record in read_jsonl(self.partial_path) if key in record}

    @property
    def resumed(self) -> int:
        """How many items were already finished when the writer opened."""
        return len(self.done)

    def _drop_torn_tail(self) -> None:
        """Cut a last line that a kill left without its newline."""
        data = self.partial_path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            with self.partial_path.open("r+b") as f:
                f.truncate(end)

    def __enter__(self) -> ResumableJsonlWriter:
        self._file = self.partial_path.open("a", encoding="utf-8")
        return self

    def write(self, record: dict[str, Any]) -> None:
        """Append one record and flush it, so a kill loses at most the line being written."""
        assert self._file is not None, "use the writer as a context manager"
        self._file.write(dumps_record(record) + "\n")
        self._file.flush()
        self.done.add(str(record[self.key]))

    def finish(self) -> Path:
        """Close the partial file and publish it as the final output."""
        self.close()
        os.replace(self.partial_path, self.path)
        return self.path

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def __exit__(self, *exc_info: object) -> None:
        self.close()
