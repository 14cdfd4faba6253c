"""Turning what a user names on the command line (files, folders, manifests) into a list of audio inputs.

Accepted manifests:

* ``.jsonl``: one object per line with an ``audio`` (or ``path``) field;
* ``.tsv``: fairseq's layout, the root folder on the first line, then ``relative/path<TAB>num_samples``;
* ``.txt`` / ``.lst``: one audio path per line (relative paths resolve against the manifest's folder).

Lines starting with ``#`` and blank lines are ignored in the text formats.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from speechgpt.jsonl import read_jsonl

AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif", ".au", ".w64"})
MANIFEST_EXTENSIONS = frozenset({".jsonl", ".tsv", ".txt", ".lst"})


class ManifestError(ValueError):
    """An input list that cannot be read; the message names the file (and line) and the reason."""


def _resolve(base: Path, entry: str) -> str:
    path = Path(entry).expanduser()
    return str(path if path.is_absolute() else base / path)


def read_manifest(path: str | os.PathLike) -> list[str]:
    """Audio paths listed by a manifest file, in file order."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        items = []
        for number, record in enumerate(read_jsonl(path), start=1):
            entry = record.get("audio", record.get("path"))
            if not isinstance(entry, str) or not entry:
                raise ManifestError(f"{path}: record {number} has no 'audio' (or 'path') string field")
            items.append(_resolve(path.parent, entry))
        return items
    lines = [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines()]
    if suffix == ".tsv":
        if not lines or not lines[0].strip():
            raise ManifestError(f"{path}: a .tsv manifest starts with its root folder on the first line")
        root = Path(lines[0].strip())
        return [_resolve(root, line.split("\t")[0]) for line in lines[1:] if line.strip()]
    return [_resolve(path.parent, line.strip()) for line in lines if line.strip() and not line.startswith("#")]


def collect_audio_inputs(sources: Iterable[str | os.PathLike]) -> list[str]:
    """Expand files, folders (recursively, audio extensions only, sorted) and manifests into audio paths.

    Duplicates are kept once, at their first position, so each item has one identity in resumable jobs.

    Raises:
        ManifestError: for a path that does not exist, or an unreadable manifest.
    """
    items: list[str] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
            items.extend(str(p) for p in found)
        elif path.is_file() and path.suffix.lower() in MANIFEST_EXTENSIONS:
            items.extend(read_manifest(path))
        elif path.is_file() or path.suffix.lower() in AUDIO_EXTENSIONS:
            items.append(str(path))  # a missing audio file is reported per item by the job
        else:
            raise ManifestError(f"{path}: no such file or folder")
    return list(dict.fromkeys(items))


def shard_items(items: Sequence[str], shard: int, num_shards: int) -> list[str]:
    """The items of shard ``shard`` out of ``num_shards``: every ``num_shards``-th item from ``shard`` on.

    Striding (rather than cutting into blocks) keeps shards balanced when similar files sit together.
    """
    if num_shards < 1:
        raise ValueError(f"--num-shards must be at least 1, got {num_shards}")
    if not 0 <= shard < num_shards:
        raise ValueError(f"--shard must be in 0..{num_shards - 1}, got {shard}")
    return list(items[shard::num_shards])
