"""SpeechInstruct files as a Hugging Face ``datasets.Dataset``, in one call.

Stage-2/3 JSONL loads through the ``json`` builder (one column per field: ``id``, ``task``, ``prefix``,
``plain_text``); stage-1 unit text through the ``text`` builder (one ``text`` column, one row per line). Shards
load in the order given, or in sorted name order when a folder is given, so ``out.00000-of-00004.jsonl`` ... join
as the unsharded build would. ``datasets`` is imported only when a dataset is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import datasets

JSON_SUFFIXES = frozenset({".jsonl", ".json"})
TEXT_SUFFIXES = frozenset({".txt"})
_BUILDERS = {"json": JSON_SUFFIXES, "text": TEXT_SUFFIXES}


def _expand(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The files named, with each folder replaced by its ``.jsonl``/``.json``/``.txt`` files in sorted order."""
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    files: list[Path] = []
    for entry in paths:
        path = Path(entry).expanduser()
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix.lower() in JSON_SUFFIXES | TEXT_SUFFIXES
            )
            if not found:
                raise FileNotFoundError(f"{path}: no .jsonl, .json or .txt files in this folder")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    if not files:
        raise ValueError("no files given to load")
    return files


def _builder(files: list[Path]) -> str:
    kinds = set()
    for file in files:
        kind = next((name for name, suffixes in _BUILDERS.items() if file.suffix.lower() in suffixes), None)
        if kind is None:
            raise ValueError(f"{file}: expected stage-2/3 JSONL (.jsonl, .json) or stage-1 text (.txt)")
        kinds.add(kind)
    if len(kinds) > 1:
        raise ValueError("cannot load stage-1 text (.txt) and JSONL records into one dataset; load them separately")
    return kinds.pop()


def load_instruct_dataset(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    split: str = "train",
    cache_dir: str | os.PathLike | None = None,
) -> datasets.Dataset:
    """Load SpeechInstruct files (stage-2/3 JSONL, or stage-1 unit text) as one ``datasets.Dataset``.

    Args:
        paths: A file, a folder of shards, or a sequence of them; all JSONL or all ``.txt``.
        split: The split name the files are loaded as.
        cache_dir: Where ``datasets`` keeps its Arrow cache; its default cache when None.

    Returns:
        The rows of the files in order: JSONL fields as columns, or a ``text`` column for stage-1 files.

    Raises:
        FileNotFoundError: for a path that does not exist, or a folder without data files.
        ValueError: for an unknown suffix, or text and JSONL files mixed.
    """
    import datasets

    files = _expand(paths)
    builder = _builder(files)
    options = {"keep_linebreaks": False} if builder == "text" else {}
    return datasets.load_dataset(
        builder,
        data_files={split: [str(f) for f in files]},
        split=split,
        cache_dir=None if cache_dir is None else str(cache_dir),
        **options,
    )
