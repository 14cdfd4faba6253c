"""The bundle: one folder holding everything a conversation needs, named by a ``speechgpt.json`` manifest.

A SpeechGPT is three trained parts that only work together: the speech tokenizer (features + k-means), the LM
whose vocabulary was extended with exactly that many unit tokens (plus an optional LoRA adapter), and a vocoder for
the same units. Shipping them as one folder with a manifest lets ``SpeechGPT.from_pretrained(path)`` load them with
one call, and lets :meth:`BundleManifest.read` refuse a bundle whose parts disagree (the classic mistake: a 500-unit
k-means next to an LM expanded with 1000 units) before any model is loaded::

    bundle/
      speechgpt.json   {"format": "speechgpt-bundle", "version": 1, "tokenizer": "tokenizer", "lm": "lm",
                        "lora": null, "vocoder": "vocoder", "num_units": 1000, "created_by": "speechgpt 0.1.0"}
      tokenizer/       SpeechTokenizer.save_pretrained
      lm/              speechgpt.lm.save_model (HF LlamaForCausalLM + the expanded text tokenizer)
      lora/            optional PEFT adapter
      vocoder/         UnitHiFiGAN or FastVocoder save_pretrained

Part paths are relative to the bundle folder (absolute paths are accepted when reading, for hand-written manifests).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speechgpt.fileio import atomic_write_text

logger = logging.getLogger(__name__)

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_VERSION",
    "MANIFEST_NAME",
    "BundleError",
    "BundleManifest",
    "assemble_bundle",
    "lm_num_units",
    "tokenizer_num_units",
    "vocoder_num_units",
]

MANIFEST_NAME = "speechgpt.json"
"""The manifest file at the root of a bundle folder."""
BUNDLE_FORMAT = "speechgpt-bundle"
"""Value of the manifest's ``format`` key."""
BUNDLE_VERSION = 1
"""Manifest layout written by this code; newer versions are refused with a clear message."""
DEFAULT_PARTS = {"tokenizer": "tokenizer", "lm": "lm", "lora": "lora", "vocoder": "vocoder"}
"""Sub-folder of each part inside a bundle written by :func:`assemble_bundle`."""
REQUIRED_PARTS = ("tokenizer", "lm", "vocoder")
PART_MARKERS = {
    "tokenizer": "tokenizer_config.json",
    "lm": "config.json",
    "lora": "adapter_config.json",
    "vocoder": "config.json",
}
"""A file each part's folder must hold (what its loader reads first), checked before anything is loaded."""
_MANIFEST_KEYS = ("format", "version", "tokenizer", "lm", "lora", "vocoder", "num_units", "created_by")


class BundleError(ValueError):
    """A bundle folder that cannot be used; ``str(err)`` is one line naming the file and the problem."""


def _created_by() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"speechgpt {version('speechgpt')}"
    except PackageNotFoundError:
        return "speechgpt"


@dataclass
class BundleManifest:
    """The content of ``speechgpt.json``: where each part lives and how many speech units they share.

    Attributes:
        num_units: Speech units of the k-means, the LM vocabulary (``<0>``…) and the vocoder; all must agree.
        tokenizer: Speech tokenizer folder, relative to the bundle.
        lm: LM folder (weights and the expanded text tokenizer), relative to the bundle.
        vocoder: Vocoder folder, relative to the bundle.
        lora: Optional LoRA adapter folder applied on top of ``lm``; None for none.
        created_by: Free text naming the tool that wrote the bundle.
        version: Manifest layout version.
    """

    num_units: int
    tokenizer: str = DEFAULT_PARTS["tokenizer"]
    lm: str = DEFAULT_PARTS["lm"]
    vocoder: str = DEFAULT_PARTS["vocoder"]
    lora: str | None = None
    created_by: str = field(default_factory=_created_by)
    version: int = BUNDLE_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.num_units, int) or isinstance(self.num_units, bool) or self.num_units < 1:
            raise BundleError(f"num_units must be a positive int, got {self.num_units!r}")
        for name in (*REQUIRED_PARTS, "lora"):
            value = getattr(self, name)
            if name == "lora" and value is None:
                continue
            if not isinstance(value, str) or not value.strip():
                raise BundleError(f"part {name!r} must be a non-empty folder path, got {value!r}")

    # --- paths -------------------------------------------------------------------------------------------------

    def parts(self) -> dict[str, str]:
        """The parts present in this bundle, ``{"tokenizer": ..., "lm": ..., "vocoder": ..., ["lora": ...]}``."""
        named = {name: getattr(self, name) for name in REQUIRED_PARTS}
        if self.lora is not None:
            named["lora"] = self.lora
        return named

    def path(self, directory: str | os.PathLike, part: str) -> Path | None:
        """Where ``part`` lives for a bundle at ``directory`` (None for an absent LoRA).

        Raises:
            ValueError: ``part`` is not one of tokenizer, lm, lora, vocoder.
        """
        if part not in PART_MARKERS:
            raise ValueError(f"unknown bundle part {part!r}; parts are {sorted(PART_MARKERS)}")
        value = getattr(self, part)
        return None if value is None else Path(directory) / value

    # --- (de)serialisation -------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": BUNDLE_FORMAT,
            "version": self.version,
            "tokenizer": self.tokenizer,
            "lm": self.lm,
            "lora": self.lora,
            "vocoder": self.vocoder,
            "num_units": self.num_units,
            "created_by": self.created_by,
        }

    @classmethod
    def from_dict(cls, data: Any, *, source: str = MANIFEST_NAME) -> BundleManifest:
        """Validate a manifest's JSON content.

        Raises:
            BundleError: wrong format or version, unknown keys, missing parts, or bad values (named with ``source``).
        """
        if not isinstance(data, dict):
            raise BundleError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{source}: 'format' is {data.get('format')!r}, expected {BUNDLE_FORMAT!r}")
        version = data.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= BUNDLE_VERSION:
            raise BundleError(
                f"{source}: unsupported bundle version {version!r}; this speechgpt reads versions 1..{BUNDLE_VERSION}"
            )
        unknown = sorted(set(data) - set(_MANIFEST_KEYS))
        if unknown:
            raise BundleError(f"{source}: unknown keys {unknown}; known keys are {list(_MANIFEST_KEYS)}")
        missing = [key for key in (*REQUIRED_PARTS, "num_units") if data.get(key) is None]
        if missing:
            raise BundleError(f"{source}: missing {', '.join(repr(k) for k in missing)}")
        try:
            return cls(
                num_units=data["num_units"],
                tokenizer=data["tokenizer"],
                lm=data["lm"],
                vocoder=data["vocoder"],
                lora=data.get("lora"),
                created_by=str(data.get("created_by") or ""),
                version=version,
            )
        except BundleError as e:
            raise BundleError(f"{source}: {e}") from e

    @classmethod
    def read(cls, directory: str | os.PathLike, *, verify: bool = True) -> BundleManifest:
        """Read and check a bundle's manifest.

        Args:
            directory: The bundle folder.
            verify: Also check that every part's folder exists and holds its marker file, and that the tokenizer's
                k-means, the LM vocabulary and the vocoder all have ``num_units`` units (loads the k-means and the
                LM's text tokenizer, not the models). Without it only the manifest itself is checked.

        Raises:
            FileNotFoundError: the folder, its manifest or a part is missing.
            BundleError: the manifest is malformed, or the parts disagree on the number of units.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory}: no such bundle folder")
        manifest_path = directory / MANIFEST_NAME
        if not manifest_path.is_file():
            raise FileNotFoundError(
                f"{directory}: not a speechgpt bundle (no {MANIFEST_NAME}; build one with assemble_bundle)"
            )
        try:
            data = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BundleError(f"{manifest_path}: not valid JSON ({e})") from e
        manifest = cls.from_dict(data, source=str(manifest_path))
        if verify:
            manifest.verify(directory)
        return manifest

    def write(self, directory: str | os.PathLike) -> Path:
        """Write ``speechgpt.json`` into ``directory`` atomically (the folder is created if needed).

        Returns:
            The manifest's path.
        """
        path = Path(directory) / MANIFEST_NAME
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    # --- checks ------------------------------------------------------------------------------------------------

    def check_files(self, directory: str | os.PathLike) -> None:
        """Every part's folder exists and holds the file its loader needs first.

        Raises:
            FileNotFoundError: a part's folder or its marker file is missing (named).
        """
        for part in self.parts():
            path = self.path(directory, part)
            assert path is not None  # parts() lists present parts only
            _check_part_folder(part, path, where=f"{Path(directory) / MANIFEST_NAME}: ")

    def verify(self, directory: str | os.PathLike) -> None:
        """:meth:`check_files`, then the unit counts of the k-means, the LM vocabulary and the vocoder.

        Raises:
            FileNotFoundError: a part is missing.
            BundleError: a part is unreadable, or the unit counts disagree (all of them are listed).
        """
        self.check_files(directory)
        tokenizer_path, lm_path, vocoder_path = (self.path(directory, p) for p in REQUIRED_PARTS)
        assert tokenizer_path is not None and lm_path is not None and vocoder_path is not None
        check_unit_counts(
            {
                "manifest": self.num_units,
                f"tokenizer k-means ({self.tokenizer})": tokenizer_num_units(tokenizer_path),
                f"LM vocabulary ({self.lm})": lm_num_units(lm_path),
                f"vocoder ({self.vocoder})": vocoder_num_units(vocoder_path),
            },
            where=str(Path(directory) / MANIFEST_NAME),
        )


# --- unit counts of the parts ------------------------------------------------------------------------------------


def _check_part_folder(part: str, path: Path, *, where: str = "") -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"{where}{part} folder {path} does not exist")
    marker = PART_MARKERS[part]
    if not (path / marker).is_file():
        raise FileNotFoundError(f"{where}{part} folder {path} has no {marker}")


def tokenizer_num_units(path: str | os.PathLike) -> int:
    """Clusters of a speech tokenizer folder's k-means (the extractor is not loaded).

    Raises:
        BundleError: the folder is not a readable speech tokenizer.
    """
    from speechgpt.units.tokenizer import load_codebook

    try:
        return load_codebook(path).n_clusters
    except (OSError, ValueError) as e:
        raise BundleError(f"speech tokenizer {path}: {e}") from e


def lm_num_units(path: str | os.PathLike) -> int:
    """Unit tokens in the vocabulary of an LM folder's text tokenizer (the weights are not loaded).

    Raises:
        BundleError: the tokenizer cannot be loaded or was never expanded with unit tokens.
    """
    from transformers import AutoTokenizer

    from speechgpt.lm import SpeechVocab

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        return SpeechVocab.from_tokenizer(tokenizer).num_units
    except (OSError, ValueError, KeyError) as e:
        raise BundleError(f"LM {path}: {e}") from e


def vocoder_num_units(path: str | os.PathLike) -> int:
    """Units a vocoder folder knows, read from its ``config.json`` (both vocoder types store ``num_units``).

    Raises:
        BundleError: the config is unreadable or has no integer ``num_units``.
    """
    config_path = Path(path) / PART_MARKERS["vocoder"]
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"vocoder config {config_path}: unreadable ({e})") from e
    value = data.get("num_units") if isinstance(data, dict) else None
    if not isinstance(value, int) or isinstance(value, bool):
        raise BundleError(f"vocoder config {config_path}: no integer 'num_units' (got {value!r})")
    return value


def check_unit_counts(counts: dict[str, int], *, where: str) -> int:
    """The one unit count every part agrees on.

    Raises:
        BundleError: the counts differ; the message lists each part with its count.
    """
    values = set(counts.values())
    if len(values) != 1:
        listing = ", ".join(f"{name} {count}" for name, count in counts.items())
        raise BundleError(f"{where}: the parts disagree on the number of speech units: {listing}")
    return values.pop()


# --- assembling ----------------------------------------------------------------------------------------------------


def assemble_bundle(
    out_dir: str | os.PathLike,
    *,
    tokenizer_dir: str | os.PathLike,
    lm_dir: str | os.PathLike,
    vocoder_dir: str | os.PathLike,
    lora_dir: str | os.PathLike | None = None,
    copy: bool = True,
    overwrite: bool = False,
    created_by: str | None = None,
) -> Path:
    """Put trained parts together as a bundle folder, after checking that they fit each other.

    The parts are checked first (marker files, and the same number of units in the k-means, the LM vocabulary and
    the vocoder), so a bad combination fails before anything is copied or written.

    Args:
        out_dir: The bundle folder to write.
        tokenizer_dir: Speech tokenizer folder (``SpeechTokenizer.save_pretrained``).
        lm_dir: LM folder (``speechgpt.lm.save_model``) with the expanded text tokenizer.
        vocoder_dir: Vocoder folder (``UnitHiFiGAN``/``FastVocoder`` ``save_pretrained``).
        lora_dir: Optional LoRA adapter folder.
        copy: Copy the parts into ``out_dir/{tokenizer,lm,lora,vocoder}``, built in a temporary sibling folder and
            renamed into place, so an interrupted copy never leaves a half bundle. With False nothing is copied:
            the manifest points at the parts where they are, by paths relative to ``out_dir`` (for parts already
            written inside ``out_dir``, e.g. by a converter, or to avoid duplicating a large LM).
        overwrite: Replace an existing bundle (copy) or manifest (no copy) instead of refusing.
        created_by: Recorded in the manifest; defaults to ``"speechgpt <version>"``.

    Returns:
        ``out_dir``.

    Raises:
        FileNotFoundError: a part folder or its marker file is missing.
        FileExistsError: ``out_dir`` already holds a bundle (copy: is not empty) and ``overwrite`` is False.
        BundleError: the parts disagree on the number of units, or a part is unreadable.
    """
    out_dir = Path(out_dir)
    sources = {"tokenizer": Path(tokenizer_dir), "lm": Path(lm_dir), "vocoder": Path(vocoder_dir)}
    if lora_dir is not None:
        sources["lora"] = Path(lora_dir)
    for part, path in sources.items():
        _check_part_folder(part, path)
    num_units = check_unit_counts(
        {
            f"tokenizer k-means ({sources['tokenizer']})": tokenizer_num_units(sources["tokenizer"]),
            f"LM vocabulary ({sources['lm']})": lm_num_units(sources["lm"]),
            f"vocoder ({sources['vocoder']})": vocoder_num_units(sources["vocoder"]),
        },
        where=f"bundle {out_dir}",
    )
    extra = {} if created_by is None else {"created_by": created_by}
    if not copy:
        if (out_dir / MANIFEST_NAME).exists() and not overwrite:
            raise FileExistsError(f"{out_dir} already holds a {MANIFEST_NAME}; pass overwrite=True to replace it")
        out_dir.mkdir(parents=True, exist_ok=True)
        relative = {part: _relative(path, out_dir) for part, path in sources.items()}
        manifest = BundleManifest(num_units=num_units, **relative, **extra)
        manifest.write(out_dir)
        logger.info("wrote %s pointing at the parts in place", out_dir / MANIFEST_NAME)
        return out_dir

    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty; pass overwrite=True to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        for part, path in sources.items():
            logger.info("copying %s %s", part, path)
            shutil.copytree(path, staging / DEFAULT_PARTS[part], symlinks=False)
        manifest = BundleManifest(num_units=num_units, **{part: DEFAULT_PARTS[part] for part in sources}, **extra)
        manifest.write(staging)
        os.chmod(staging, 0o755)  # mkdtemp makes it private
        _replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("wrote bundle %s (%d units)", out_dir, num_units)
    return out_dir


def _relative(path: Path, start: Path) -> str:
    """``path`` relative to ``start`` when both are on one drive, else absolute (POSIX always relative)."""
    try:
        return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()
    except ValueError:  # different drives on Windows
        return str(path.resolve())


def _replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``; an existing ``target`` is set aside first and removed only once ``new`` is in."""
    if not target.exists():
        os.replace(new, target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if old.exists():
        shutil.rmtree(old)
    os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)
        raise
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)
