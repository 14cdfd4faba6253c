"""Turn the released SpeechGPT-7B files into one bundle that ``SpeechGPT.from_pretrained`` loads.

The release is five separately published pieces that only work together: a Hugging Face LLaMA directory whose
tokenizer was extended with the speech vocabulary (SpeechGPT-7B-cm), optionally the chain-of-modality LoRA adapter
(SpeechGPT-7B-com), the fairseq mHuBERT pickle, the joblib scikit-learn k-means and the fairseq unit HiFi-GAN with
its ``config.json``. Nothing in those files says they belong together, so everything that must agree is checked
before anything is written, and every disagreement is reported at once, so that all of them can be fixed in one go:

* the tokenizer holds ``<0>`` … ``<N-1>``, ``<sosp>``, ``<eosp>``, ``[Human]``, ``[SpeechGPT]``, ``<eoh>``,
  ``<eos>`` at consecutive ids right after its base vocabulary (the ids the released LM was trained on);
* the LM's tensors have the shapes its ``config.json`` implies and its embedding and output rows cover the tokenizer;
* the k-means, the LM's unit tokens and the vocoder's unit embedding count the same ``N`` units (1000 in the release);
* the LoRA adapter's target modules exist in the LM and each ``lora_A``/``lora_B`` fits its layer.

A 7B LM is never loaded for checking: tensor shapes come from safetensors headers (or a ``.bin`` opened on the
``meta`` device) and the expected shapes from the architecture built on ``meta``. The LM directory is then copied
(or hard-linked or symlinked file by file) into the bundle; only ``merge_lora`` loads it, once, to fold the adapter
in. The bundle is built in a temporary sibling folder and renamed into place, so a failure never leaves half of one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from speechgpt.constants import RELEASED_NUM_UNITS
from speechgpt.prompt_format import ADDED_CONTROL_TOKENS

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from speechgpt.lm import SpeechVocab

logger = logging.getLogger(__name__)

__all__ = [
    "CONVERSION_RECORD_NAME",
    "LINK_MODES",
    "ConversionError",
    "LMReport",
    "LoraReport",
    "ProgressCallback",
    "convert_released",
    "inspect_lm",
    "inspect_lora",
    "read_weight_shapes",
]

ProgressCallback = Callable[[str, int, int], None]
"""Called as ``progress(step, done, total)`` when a step starts (``done`` steps finished) and once at the end."""

LINK_MODES = ("copy", "hardlink", "symlink")
"""How the LM's files get into the bundle: copied, hard-linked (same file system) or symlinked (absolute paths)."""
CONVERSION_RECORD_NAME = "conversion.json"
"""File at the bundle's root recording what was converted from where (the manifest itself stays minimal)."""
CONVERSION_FORMAT = "speechgpt-conversion"
LM_CONFIG_NAME = "config.json"
LM_TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHT_NAMES = ("adapter_model.safetensors", "adapter_model.bin")
"""peft's weight files, newest format first (the released adapter predates safetensors adapters)."""
WEIGHT_FILES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)
"""HF weight layouts in transformers' order of preference: sharded or single, safetensors or pickled ``.bin``."""
IGNORED_LM_KEYS = (re.compile(r"(^|\.)rotary_emb\.inv_freq$"),)
"""Tensors old transformers versions saved that the model recomputes (LLaMA checkpoints from early 2023)."""
PEFT_PREFIX = "base_model.model."
"""peft's prefix of every adapter key, in front of the wrapped model's own parameter name."""
EXAMPLES_SHOWN = 3
"""How many examples of one kind of problem an error message shows (the count is always given)."""

_LORA_KEY = re.compile(
    r"^(?P<module>.+)\.lora_(?P<kind>A|B|embedding_A|embedding_B)(?:\.(?P<adapter>[\w-]+))?(?:\.weight)?$"
)


class ConversionError(ValueError):
    """Released files that cannot be put together; ``str(err)`` is one line listing every problem found."""


def _summarise(label: str, items: list[str]) -> str:
    """``label: a, b, c (and 7 more)``: one line however many items there are."""
    shown = ", ".join(items[:EXAMPLES_SHOWN])
    more = f" (and {len(items) - EXAMPLES_SHOWN} more)" if len(items) > EXAMPLES_SHOWN else ""
    return f"{label}: {shown}{more}"


def _shape(shape: Iterable[int]) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


# --- reading tensor shapes without loading tensors -----------------------------------------------------------------


def _file_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Shapes of every tensor in one safetensors or torch file, read without loading the data."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
        except (SafetensorError, OSError) as e:
            raise ConversionError(f"{path}: not a readable safetensors file ({e})") from e
    try:
        # On the meta device a zip-format checkpoint's data is never read; tensors only are allowed.
        state = torch.load(path, map_location="meta", weights_only=True)
    except Exception as e:  # torch raises pickle, zip, EOF and runtime errors for files it cannot read
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConversionError(f"{path}: not a readable torch checkpoint ({reason})") from e
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    return {str(key): tuple(tensor.shape) for key, tensor in state.items()}


def read_weight_shapes(directory: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape in a Hugging Face model directory, from file headers only (no tensor is loaded).

    Looks for the layouts transformers reads, in its order: ``model.safetensors.index.json``,
    ``model.safetensors``, ``pytorch_model.bin.index.json``, ``pytorch_model.bin``.

    Raises:
        FileNotFoundError: no weights, or a shard named by the index is missing.
        ConversionError: an unreadable index or weight file.
    """
    directory = Path(directory)
    for name in WEIGHT_FILES:
        path = directory / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return _file_shapes(path)
        try:
            weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
            raise ConversionError(f"{path}: not a weight index (expected JSON with a 'weight_map'): {e}") from e
        missing = [shard for shard in shards if not (directory / shard).is_file()]
        if missing:
            raise FileNotFoundError(f"{path} names shards that are missing: {missing}")
        shapes: dict[str, tuple[int, ...]] = {}
        for shard in shards:
            shapes.update(_file_shapes(directory / shard))
        return shapes
    names = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    raise FileNotFoundError(f"{directory}: no model weights ({', '.join(WEIGHT_FILES)}); it holds {names}")


# --- the LM --------------------------------------------------------------------------------------------------------


@dataclass
class LMReport:
    """What checking an LM directory found, without loading its weights.

    Attributes:
        path: The directory.
        tokenizer: Its (expanded) text tokenizer.
        model: The architecture built on the ``meta`` device (no memory), for names and shapes.
        shapes: Tensor shapes read from the weight files.
        base_vocab_size: Tokens of the base vocabulary, the tokenizer model's own (added tokens not counted).
        num_units: Unit tokens ``<0>``, ``<1>``, … found (0 when there are none).
        embedding_rows: Rows of the input embedding matrix in the files.
        head_rows: Rows of the output head in the files (None when tied to the input embeddings).
        vocab: The speech vocabulary when it is in the released order, else None.
        problems: Everything that does not fit, one sentence each.
    """

    path: Path
    tokenizer: PreTrainedTokenizerBase
    model: PreTrainedModel
    shapes: dict[str, tuple[int, ...]]
    base_vocab_size: int
    num_units: int
    embedding_rows: int | None
    head_rows: int | None
    vocab: SpeechVocab | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def num_parameters(self) -> int:
        """Parameters stored in the weight files."""
        return sum(math.prod(shape) for shape in self.shapes.values())


def _count_unit_tokens(vocab: Mapping[str, int]) -> int:
    count = 0
    while f"<{count}>" in vocab:
        count += 1
    return count


def _vocabulary_problems(tokenizer: PreTrainedTokenizerBase, base: int, num_units: int) -> list[str]:
    """Every released speech token that is missing or not at its released id ``base + position``."""
    from speechgpt.lm import speech_tokens

    vocab = tokenizer.get_vocab()
    tokens = speech_tokens(num_units)
    missing = [token for token in tokens if token not in vocab]
    misplaced = [
        (token, vocab[token], base + i) for i, token in enumerate(tokens) if token in vocab and vocab[token] != base + i
    ]
    problems = []
    shifts = {actual - expected for _, actual, expected in misplaced}
    if not missing and len(misplaced) == len(tokens) and len(shifts) == 1:
        first = base + shifts.pop()
        between = [t for t, i in sorted(vocab.items(), key=lambda item: item[1]) if base <= i < first]
        problems.append(
            f"the speech tokens start at id {first}, not right after the base vocabulary of {base} tokens "
            f"(ids {base}..{first - 1} hold {between[:EXAMPLES_SHOWN]}), so no id matches the released model's"
        )
        return problems
    if missing:
        problems.append(
            _summarise(f"tokenizer lacks {len(missing)} released speech token(s)", [repr(t) for t in missing])
        )
    if misplaced:
        problems.append(
            _summarise(
                f"{len(misplaced)} speech token(s) are out of the released order "
                f"(<0>..<{num_units - 1}>, {', '.join(ADDED_CONTROL_TOKENS)} from id {base})",
                [f"{token!r} at id {actual}, expected {expected}" for token, actual, expected in misplaced],
            )
        )
    return problems


def _weight_name(model: torch.nn.Module, module: torch.nn.Module | None) -> str | None:
    """The state-dict name of ``module.weight`` inside ``model`` (None when there is no such module)."""
    if module is None:
        return None
    return next((f"{name}.weight" for name, candidate in model.named_modules() if candidate is module), None)


def inspect_lm(lm_dir: str | os.PathLike, *, num_units: int | None = None) -> LMReport:
    """Check a Hugging Face causal-LM directory with an expanded vocabulary, reading headers only.

    Args:
        lm_dir: The LM directory (``config.json``, tokenizer files, safetensors or ``.bin`` weights).
        num_units: Units its vocabulary must hold; the number of consecutive ``<k>`` tokens found when None.

    Returns:
        The report; :attr:`LMReport.problems` lists what does not fit (empty when the LM is usable as released).

    Raises:
        FileNotFoundError: the directory, its config, tokenizer or weights are missing.
        ConversionError: the config or tokenizer cannot be read.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from speechgpt.lm import SpeechVocab, VocabularyError

    path = Path(lm_dir)
    for name in (LM_CONFIG_NAME, LM_TOKENIZER_CONFIG_NAME):
        if not (path / name).is_file():
            raise FileNotFoundError(f"LM directory {path} has no {name}")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConversionError(f"{path / LM_CONFIG_NAME}: not a usable causal-LM config ({e})") from e
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError, ImportError) as e:
        raise ConversionError(f"{path}: cannot load the tokenizer ({str(e).splitlines()[0] if str(e) else e!r})") from e
    shapes = read_weight_shapes(path)
    expected = {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}

    problems: list[str] = []
    base = int(tokenizer.vocab_size)
    found_units = _count_unit_tokens(tokenizer.get_vocab())
    block_units = found_units or num_units or RELEASED_NUM_UNITS
    problems += _vocabulary_problems(tokenizer, base, block_units)
    vocab = None
    if not problems:
        try:
            vocab = SpeechVocab.from_tokenizer(tokenizer)
        except VocabularyError as e:
            problems.append(str(e))
    if num_units is not None and found_units and found_units != num_units:
        problems.append(f"tokenizer holds {found_units} unit tokens <0>..<{found_units - 1}>, expected {num_units}")

    input_name = _weight_name(model, model.get_input_embeddings())
    output_name = _weight_name(model, model.get_output_embeddings())
    tied = output_name is not None and model.get_output_embeddings().weight is model.get_input_embeddings().weight
    ignorable = {output_name} if tied and output_name not in shapes else set()
    unexpected = sorted(k for k in set(shapes) - set(expected) if not any(p.search(k) for p in IGNORED_LM_KEYS))
    missing = sorted(set(expected) - set(shapes) - ignorable)
    wrong = [
        f"{key} {_shape(shapes[key])} (config.json implies {_shape(shape)})"
        for key, shape in expected.items()
        if key in shapes and tuple(shapes[key]) != shape
    ]
    if missing:
        problems.append(_summarise(f"{len(missing)} tensor(s) of the architecture are not in the weights", missing))
    if unexpected:
        problems.append(
            _summarise(f"{len(unexpected)} tensor(s) in the weights are not in the architecture", unexpected)
        )
    if wrong:
        problems.append(_summarise(f"{len(wrong)} tensor(s) have the wrong shape", wrong))

    size = len(tokenizer)
    embedding_rows = shapes[input_name][0] if input_name in shapes else None
    head_rows = None if tied or output_name not in shapes else shapes[output_name][0]
    for what, rows in (("input embedding", embedding_rows), ("output head (lm_head)", head_rows)):
        if rows is not None and rows < size:
            problems.append(f"the {what} has {rows} rows, fewer than the tokenizer's {size} tokens")
    return LMReport(
        path=path,
        tokenizer=tokenizer,
        model=model,
        shapes=shapes,
        base_vocab_size=base,
        num_units=found_units,
        embedding_rows=embedding_rows,
        head_rows=head_rows,
        vocab=vocab,
        problems=[f"LM {path}: {p}" for p in problems],
    )


# --- the LoRA adapter ----------------------------------------------------------------------------------------------


@dataclass
class LoraReport:
    """What checking a peft LoRA adapter against an LM found.

    Attributes:
        path: The adapter directory.
        r: Rank from ``adapter_config.json``.
        alpha: ``lora_alpha``.
        target_modules: As configured (a list of names, or a regular expression).
        modules: LM layers the adapter's weights update.
        base_model: ``base_model_name_or_path`` as recorded by the trainer (informative only).
        problems: Everything that does not fit, one sentence each.
    """

    path: Path
    r: int | None
    alpha: float | None
    target_modules: list[str] | str | None
    modules: list[str]
    base_model: str | None = None
    problems: list[str] = field(default_factory=list)


def _adapter_weights(path: Path) -> Path:
    for name in ADAPTER_WEIGHT_NAMES:
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(
        f"LoRA adapter {path} has no weights ({' or '.join(ADAPTER_WEIGHT_NAMES)}); "
        f"it holds {sorted(p.name for p in path.iterdir())}"
    )


def _targets_match(targets: list[str] | str, name: str) -> bool:
    """peft's rule: a regular expression must match the whole name, a list entry the name or its last parts."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def inspect_lora(lora_dir: str | os.PathLike, lm: LMReport) -> LoraReport:
    """Check a peft LoRA adapter (config and weight shapes) against an LM inspected with :func:`inspect_lm`.

    Raises:
        FileNotFoundError: the directory, its ``adapter_config.json`` or its weights are missing.
        ConversionError: the config is not JSON or a weight file is unreadable.
    """
    path = Path(lora_dir)
    config_path = path / ADAPTER_CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"LoRA adapter directory {path} has no {ADAPTER_CONFIG_NAME}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConversionError(f"{config_path}: not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise ConversionError(f"{config_path}: expected a JSON object, got {type(config).__name__}")
    weights = _adapter_weights(path)
    shapes = _file_shapes(weights)

    problems: list[str] = []
    if config.get("peft_type") != "LORA":
        problems.append(f"peft_type is {config.get('peft_type')!r}, expected 'LORA'")
    r, alpha = config.get("r"), config.get("lora_alpha")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        problems.append(f"r is {r!r}, expected a positive integer")
        r = None
    rank_pattern = config.get("rank_pattern") or {}
    targets = config.get("target_modules")
    modules = dict(lm.model.named_modules())
    layer_names = [n for n, m in modules.items() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))]
    if isinstance(targets, list):
        unmatched = [t for t in targets if not any(_targets_match([t], n) for n in layer_names)]
        if unmatched:
            leaves = sorted({n.rsplit(".", 1)[-1] for n in layer_names})
            problems.append(f"target_modules {unmatched} match no layer of the LM (its layers: {leaves})")
    elif isinstance(targets, str):
        if not any(_targets_match(targets, n) for n in layer_names):
            problems.append(f"target_modules pattern {targets!r} matches no layer of the LM")
    elif targets is not None:
        problems.append(f"target_modules is {targets!r}, expected a list of names or a pattern")

    found: dict[str, dict[str, tuple[int, ...]]] = {}
    unknown, wrong, outside = [], [], []
    for key, shape in shapes.items():
        if not key.startswith(PEFT_PREFIX):
            unknown.append(key)
            continue
        name = key[len(PEFT_PREFIX) :]
        match = _LORA_KEY.match(name)
        if match is None:
            # modules_to_save: full copies of LM tensors, saved under the LM's own names.
            plain = re.sub(r"\.modules_to_save\.[\w-]+\.", ".", name)
            if plain in lm.shapes or plain in lm.model.state_dict():
                reference = lm.shapes.get(plain) or tuple(lm.model.state_dict()[plain].shape)
                if tuple(shape) != tuple(reference):
                    wrong.append(f"{key} {_shape(shape)} (the LM's is {_shape(reference)})")
            else:
                unknown.append(key)
            continue
        module_name, kind = match.group("module"), match.group("kind")
        module = modules.get(module_name)
        if module is None:
            outside.append(module_name)
            continue
        found.setdefault(module_name, {})[kind] = tuple(shape)
        rank = next((v for p, v in rank_pattern.items() if _targets_match(p, module_name)), r)
        if isinstance(module, torch.nn.Linear):
            need: tuple[int, ...] | None = {"A": (rank, module.in_features), "B": (module.out_features, rank)}.get(kind)
        elif isinstance(module, torch.nn.Embedding):
            need = {"embedding_A": (rank, module.num_embeddings), "embedding_B": (module.embedding_dim, rank)}.get(kind)
        else:
            need = None
            problems.append(f"{key}: LoRA on a {type(module).__name__} layer is not supported")
        if need is not None and rank is not None and tuple(shape) != need:
            wrong.append(f"{key} {_shape(shape)} (the LM layer needs {_shape(need)})")
    if outside:
        problems.append(_summarise(f"{len(outside)} adapted layer(s) do not exist in the LM", sorted(set(outside))))
    if wrong:
        problems.append(_summarise(f"{len(wrong)} adapter tensor(s) do not fit the LM", wrong))
    if unknown:
        problems.append(_summarise(f"{len(unknown)} tensor(s) are not LoRA weights", sorted(unknown)))
    halves = sorted(n for n, kinds in found.items() if len(kinds) != 2)
    if halves:
        problems.append(_summarise(f"{len(halves)} layer(s) have only one of lora_A/lora_B", halves))
    if not found:
        problems.append(f"{weights.name} holds no LoRA weights")
    base_model = config.get("base_model_name_or_path")
    if base_model:
        logger.info("LoRA adapter %s was trained on %s; checked against %s by shapes", path, base_model, lm.path)
    return LoraReport(
        path=path,
        r=r,
        alpha=alpha,
        target_modules=targets,
        modules=sorted(found),
        base_model=base_model,
        problems=[f"LoRA {path}: {p}" for p in problems],
    )


# --- conversion ----------------------------------------------------------------------------------------------------


def _check_inputs(files: Mapping[str, Path], folders: Mapping[str, Path]) -> None:
    missing = [f"{name} file {path}" for name, path in files.items() if not path.is_file()]
    missing += [f"{name} directory {path}" for name, path in folders.items() if not path.is_dir()]
    if missing:
        raise FileNotFoundError(f"missing input(s): {'; '.join(missing)}")


def _check_output(out_dir: Path, files: Iterable[Path], folders: Iterable[Path], overwrite: bool) -> None:
    target = out_dir.resolve()
    for source in [*files, *folders]:
        resolved = source.resolve()
        if target == resolved or target in resolved.parents:
            raise ValueError(f"output {out_dir} would replace the input {source}; choose another output folder")
    for folder in folders:  # a bundle inside the LM folder would be copied into itself
        if folder.resolve() in target.parents:
            raise ValueError(f"output {out_dir} is inside the input {folder}; choose a folder outside it")
    if out_dir.exists() and not overwrite and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace it")


def _place_tree(source: Path, target: Path, link: str) -> None:
    """Copy, hard-link or symlink (absolute) every file of ``source`` into a new ``target``; hidden files skipped."""

    def hard_link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError as e:
            raise ConversionError(
                f"cannot hard-link {src} into {dst} ({e.strerror}); use link='copy' or 'symlink' (--link)"
            ) from e

    def symlink(src: str, dst: str) -> None:
        os.symlink(os.path.abspath(src), dst)

    copy_function = {"copy": shutil.copy2, "hardlink": hard_link, "symlink": symlink}[link]
    try:
        shutil.copytree(source, target, ignore=shutil.ignore_patterns(".*"), copy_function=copy_function)
    except shutil.Error as e:  # copytree gathers per-file errors; the first names the file and the reason
        first = e.args[0][0] if e.args and isinstance(e.args[0], list) and e.args[0] else e
        raise ConversionError(f"copying {source} to {target} failed: {first}") from e


def convert_released(
    *,
    lm_dir: str | os.PathLike,
    lora_dir: str | os.PathLike | None = None,
    hubert: str | os.PathLike,
    kmeans: str | os.PathLike,
    vocoder: str | os.PathLike,
    vocoder_config: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    merge_lora: bool = False,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    num_units: int | None = RELEASED_NUM_UNITS,
    link: str = "copy",
) -> Path:
    """Check the released SpeechGPT files against each other and write them as one bundle folder.

    Args:
        lm_dir: Hugging Face LLaMA directory with the extended vocabulary (SpeechGPT-7B-cm).
        lora_dir: Optional peft LoRA adapter directory (SpeechGPT-7B-com), copied into the bundle as ``lora``.
        hubert: fairseq mHuBERT checkpoint (``mhubert_base_vp_en_es_fr_it3.pt``).
        kmeans: joblib scikit-learn k-means (``..._L11_km1000.bin``).
        vocoder: fairseq unit HiFi-GAN checkpoint (``g_00500000``).
        vocoder_config: Its ``config.json``; None infers the architecture from the tensor shapes.
        out_dir: Bundle folder to write.
        merge_lora: Fold the adapter into the LM weights (loads the LM once) instead of shipping it separately.
        overwrite: Replace an existing non-empty ``out_dir``.
        progress: Called as ``progress(step, done, total)`` when each step starts and once at the end.
        num_units: Units every part must have (the release: 1000); None takes the k-means' count, for stand-ins.
        link: ``"copy"`` the LM's files, ``"hardlink"`` or ``"symlink"`` them (saves a 13 GB copy); ignored
            with ``merge_lora``, which writes new weights.

    Returns:
        ``out_dir``, holding ``speechgpt.json``, ``tokenizer/``, ``lm/``, ``vocoder/``, ``lora/`` (unless merged or
        absent) and ``conversion.json`` (sources and what was checked).

    Raises:
        FileNotFoundError: an input file or folder is missing.
        FileExistsError: ``out_dir`` is not empty and ``overwrite`` is False.
        ConversionError: the inputs do not fit together; one line lists every problem.
        ValueError: a bad argument, or an unreadable released file (the message names it).
    """
    from speechgpt.convert.fairseq_hifigan import load_fairseq_hifigan
    from speechgpt.infer.bundle import assemble_bundle
    from speechgpt.units.hubert import DEFAULT_LAYER, HubertFeatures
    from speechgpt.units.kmeans import KMeans
    from speechgpt.units.tokenizer import SpeechTokenizer

    if link not in LINK_MODES:
        raise ValueError(f"link must be one of {LINK_MODES}, got {link!r}")
    if num_units is not None and (isinstance(num_units, bool) or not isinstance(num_units, int) or num_units < 1):
        raise ValueError(f"num_units must be a positive integer or None, got {num_units!r}")
    if merge_lora and lora_dir is None:
        raise ValueError("merge_lora needs a LoRA adapter directory (lora_dir / --lora)")
    out_dir = Path(out_dir)
    files = {"hubert": Path(hubert), "kmeans": Path(kmeans), "vocoder": Path(vocoder)}
    if vocoder_config is not None:
        files["vocoder config"] = Path(vocoder_config)
    folders = {"LM": Path(lm_dir)} | ({"LoRA": Path(lora_dir)} if lora_dir is not None else {})
    _check_inputs(files, folders)
    _check_output(out_dir, files.values(), folders.values(), overwrite)

    steps = ["checking the released files", "speech tokenizer (mHuBERT + k-means)", "vocoder"]
    steps += ["language model (merging LoRA)" if merge_lora else f"language model ({link})"]
    steps += ["LoRA adapter"] if lora_dir is not None and not merge_lora else []
    steps += ["bundle manifest"]
    step = iter(range(len(steps)))

    def report(name: str) -> None:
        index = next(step)
        logger.info("convert: %s (%d/%d)", name, index + 1, len(steps))
        if progress is not None:
            progress(name, index, len(steps))

    report(steps[0])
    # The speech tokenizer is SpeechTokenizer.from_released's two loaders, called here so that a feature size the
    # k-means does not fit is listed with the other problems, and the k-means is read only once.
    codebook = KMeans.from_file(files["kmeans"], device="cpu")
    features = HubertFeatures.load(files["hubert"], layer=DEFAULT_LAYER, device="cpu")
    expected = num_units if num_units is not None else codebook.n_clusters
    lm = inspect_lm(folders["LM"])
    vocoder_model = load_fairseq_hifigan(files["vocoder"], vocoder_config, device="cpu")
    lora = inspect_lora(folders["LoRA"], lm) if lora_dir is not None else None
    problems = list(lm.problems)
    if features.dim != codebook.dim:
        problems.append(
            f"k-means {files['kmeans']} has {codebook.dim}-dimensional centres but layer {DEFAULT_LAYER} of "
            f"{files['hubert']} gives {features.dim}-dimensional features"
        )
    counts = {f"k-means {files['kmeans']}": codebook.n_clusters, f"vocoder {files['vocoder']}": vocoder_model.num_units}
    if lm.num_units:
        counts[f"LM vocabulary {folders['LM']}"] = lm.num_units
    if any(count != expected for count in counts.values()):
        source = "the release's" if num_units == RELEASED_NUM_UNITS else "asked for" if num_units else "the k-means'"
        hint = ""
        if len(set(counts.values())) == 1 and num_units is not None:
            other = codebook.n_clusters
            hint = f" (to convert a system with {other} units, pass num_units={other} or --num-units {other})"
        listing = ", ".join(f"{what} has {count}" for what, count in counts.items())
        problems.append(f"speech unit counts differ from {source} {expected}: {listing}{hint}")
    if lora is not None:
        problems += lora.problems
    if problems:
        raise ConversionError(
            f"the released files do not fit together ({len(problems)} problem(s)): " + "; ".join(problems)
        )

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        report(steps[1])
        SpeechTokenizer(features, codebook).save_pretrained(staging / "tokenizer")
        del features
        report(steps[2])
        vocoder_model.save_pretrained(staging / "vocoder")
        del vocoder_model
        report(steps[3])
        if merge_lora:
            _write_merged_lm(folders["LM"], folders["LoRA"], staging / "lm")
        else:
            _place_tree(folders["LM"], staging / "lm", link)
        if lora is not None and not merge_lora:
            report(steps[4])
            _place_tree(folders["LoRA"], staging / "lora", "copy")
        report(steps[-1])
        assemble_bundle(
            staging,
            tokenizer_dir=staging / "tokenizer",
            lm_dir=staging / "lm",
            vocoder_dir=staging / "vocoder",
            lora_dir=staging / "lora" if lora is not None and not merge_lora else None,
            copy=False,
            overwrite=True,
        )
        record = _record(files, folders, expected, lm, lora, merge_lora=merge_lora, link=link)
        (staging / CONVERSION_RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        os.chmod(staging, 0o755)  # mkdtemp makes it private
        _replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if progress is not None:
        progress("done", len(steps), len(steps))
    logger.info("wrote bundle %s (%d units)", out_dir, expected)
    return out_dir


def _write_merged_lm(lm_dir: Path, lora_dir: Path, target: Path) -> None:
    from speechgpt.lm import load_model, save_model

    # "auto" keeps the checkpoint's dtype (float16 for the release): one copy of the model in memory, not two.
    model, tokenizer = load_model(lm_dir, lora=lora_dir, merge_lora=True, dtype="auto", device="cpu")
    save_model(model, tokenizer, target)


def _replace(new: Path, target: Path) -> None:
    from speechgpt.infer.bundle import _replace_dir

    _replace_dir(new, target)


def _record(
    files: Mapping[str, Path],
    folders: Mapping[str, Path],
    num_units: int,
    lm: LMReport,
    lora: LoraReport | None,
    *,
    merge_lora: bool,
    link: str,
) -> dict[str, Any]:
    """The content of ``conversion.json``: where each part came from and what the checks found."""
    sources = {name.replace(" ", "_"): str(path.resolve()) for name, path in {**folders, **files}.items()}
    return {
        "format": CONVERSION_FORMAT,
        "version": 1,
        "num_units": num_units,
        "sources": {key.lower(): value for key, value in sources.items()},
        "lm": {
            "files": "merged" if merge_lora else link,
            "parameters": lm.num_parameters,
            "base_vocab_size": lm.base_vocab_size,
            "tokenizer_size": len(lm.tokenizer),
            "embedding_rows": lm.embedding_rows,
        },
        "lora": None
        if lora is None
        else {
            "mode": "merged" if merge_lora else "adapter",
            "r": lora.r,
            "alpha": lora.alpha,
            "target_modules": lora.target_modules,
            "layers": len(lora.modules),
            "base_model": lora.base_model,
        },
    }
