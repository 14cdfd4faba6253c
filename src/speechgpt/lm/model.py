"""Building, loading and saving the language model, and its LoRA adapters (stage 3).

The LM is a plain Hugging Face ``LlamaForCausalLM`` with an expanded vocabulary, so checkpoints are ordinary HF
directories (safetensors + config + tokenizer) that any HF-compatible engine can serve. Directories are written
atomically: a crash leaves either the old checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from speechgpt.devices import resolve_device

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "LoraSettings",
    "add_lora",
    "count_parameters",
    "create_model",
    "load_model",
    "merge_lora",
    "save_lora",
    "save_model",
    "tiny_llama_config",
]

logger = logging.getLogger(__name__)

MODEL_CONFIG_NAME = "config.json"
ADAPTER_CONFIG_NAME = "adapter_config.json"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
FFN_MULTIPLE = 16
"""The tiny config's feed-forward width is 8/3 of the hidden size (Llama's SwiGLU ratio) rounded up to this."""
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def tiny_llama_config(
    vocab_size: int,
    *,
    hidden_size: int = 256,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 2048,
    tie_word_embeddings: bool = True,
    num_kv_heads: int | None = None,
    bos_token_id: int | None = 1,
    eos_token_id: int | None = 2,
    pad_token_id: int | None = None,
    rope_theta: float = 10_000.0,
) -> LlamaConfig:
    """A small Llama architecture for the embedded world (about 3.5M parameters at the defaults, vocab ~1300).

    Args:
        vocab_size: Rows of the embedding matrix (the expanded tokenizer's size).
        hidden_size: Model width; must divide evenly into ``num_heads`` heads.
        num_layers: Decoder layers.
        num_heads: Attention heads.
        intermediate_size: SwiGLU width; default ``8/3 * hidden_size`` rounded up to a multiple of 16.
        max_position_embeddings: Longest sequence.
        tie_word_embeddings: Share input embeddings and output head (saves ``vocab_size * hidden_size`` weights).
        num_kv_heads: Key/value heads for grouped-query attention; default ``num_heads``.
        bos_token_id, eos_token_id, pad_token_id: The tokenizer's ids (defaults match
            :func:`~speechgpt.lm.text_tokenizer.train_text_tokenizer`).
        rope_theta: Rotary base.

    Raises:
        ValueError: A size is not positive or the heads do not divide the width.
    """
    sizes = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "max_position_embeddings": max_position_embeddings,
    }
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    kv_heads = num_heads if num_kv_heads is None else num_kv_heads
    if kv_heads < 1 or num_heads % kv_heads:
        raise ValueError(f"num_kv_heads {kv_heads} must be positive and divide num_heads {num_heads}")
    if intermediate_size is None:
        intermediate_size = -(-8 * hidden_size // (3 * FFN_MULTIPLE)) * FFN_MULTIPLE
    if intermediate_size < 1:
        raise ValueError(f"intermediate_size must be positive, got {intermediate_size}")
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
    )


def create_model(config: LlamaConfig, *, seed: int = 0, attn_implementation: str | None = None) -> LlamaForCausalLM:
    """A randomly initialised ``LlamaForCausalLM``, the same for the same seed; the global RNG is left alone.

    Args:
        config: Architecture, e.g. from :func:`tiny_llama_config`.
        seed: Initialisation seed.
        attn_implementation: ``"sdpa"``, ``"eager"``, ``"flash_attention_2"``…; transformers' choice when None.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if attn_implementation is not None:
            config._attn_implementation = attn_implementation
        model = LlamaForCausalLM(config)
    return model


def _resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | str | None:
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(f"dtype must be a torch.dtype, 'auto' or one of {sorted(_DTYPES)}, got {dtype!r}")


def _check_dir(path: Path, required: str, what: str) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"{what} {path} is not a directory")
    if not (path / required).is_file():
        raise FileNotFoundError(f"{what} {path} has no {required} (holds: {sorted(p.name for p in path.iterdir())})")


def load_model(
    path: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    lora: str | os.PathLike | None = None,
    merge_lora: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a local directory, optionally with a LoRA adapter, in eval mode.

    Args:
        path: A directory written by :func:`save_model` (or any local HF causal-LM directory with a tokenizer).
        device: Where to put the model; CUDA when present, else CPU, when None.
        dtype: ``torch.float32``, ``"bfloat16"``, ``"auto"`` (the checkpoint's dtype)…; float32 when None.
        lora: A directory written by :func:`save_lora` to apply on top.
        merge_lora: Fold the adapter into the weights (plain model, faster inference) instead of wrapping.

    Returns:
        ``(model, tokenizer)``; the model is a ``PeftModel`` when ``lora`` is given and ``merge_lora`` is False.

    Raises:
        FileNotFoundError: ``path`` or ``lora`` is missing or lacks its config file, or ``path`` its tokenizer.
        ValueError: ``merge_lora`` without ``lora``, a bad dtype, or a tokenizer larger than the model's
            embedding matrix.
    """
    path = Path(path)
    _check_dir(path, MODEL_CONFIG_NAME, "model directory")
    if not (path / TOKENIZER_CONFIG_NAME).is_file():
        raise FileNotFoundError(f"model directory {path} has no {TOKENIZER_CONFIG_NAME}: save it with its tokenizer")
    if merge_lora and lora is None:
        raise ValueError("merge_lora=True needs a lora adapter directory")
    torch_dtype = _resolve_dtype(dtype)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    # Explicit float32 by default: transformers 5 would otherwise load in the checkpoint's dtype.
    model = AutoModelForCausalLM.from_pretrained(
        path, local_files_only=True, dtype=torch.float32 if torch_dtype is None else torch_dtype
    )
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise ValueError(
            f"tokenizer in {path} has {len(tokenizer)} tokens but the model has {rows} embedding rows; "
            f"they were not saved together"
        )
    if lora is not None:
        from peft import PeftModel

        lora = Path(lora)
        _check_dir(lora, ADAPTER_CONFIG_NAME, "LoRA adapter directory")
        with _quiet_peft():
            model = PeftModel.from_pretrained(model, lora, is_trainable=False)
        if merge_lora:
            model = model.merge_and_unload()
    model.to(resolve_device(device))
    model.eval()
    return model, tokenizer


@contextmanager
def _atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces ``path`` only when the block finishes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if path.exists():
            # Move the old copy aside first (a directory cannot be replaced in one step), and back on failure.
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old / path.name, path)
                shutil.rmtree(old, ignore_errors=True)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def _quiet_peft() -> Iterator[None]:
    """Silence the deprecation warning peft triggers in transformers (right answer, not ours to fix)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def _is_peft(model: Any) -> bool:
    if "peft" not in sys.modules:  # nothing can be a peft model before peft is imported; spare the import
        return False
    from peft import PeftModel

    return isinstance(model, PeftModel)


def _has_lora_layers(model: torch.nn.Module) -> bool:
    """Whether peft injected adapter layers into ``model`` (peft wraps the base model in place)."""
    if "peft" not in sys.modules:
        return False
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(module, BaseTunerLayer) for module in model.modules())


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: str | os.PathLike) -> Path:
    """Save a model and its tokenizer as one HF directory (safetensors), atomically; replaces an existing one.

    Raises:
        ValueError: ``model`` is a LoRA-wrapped model (save the adapter with :func:`save_lora`, or
            :func:`merge_lora` first) or its embeddings are smaller than the tokenizer.
    """
    if _is_peft(model) or _has_lora_layers(model):
        raise ValueError(
            "model is a LoRA (peft) model or holds LoRA layers: save the adapter with save_lora, or merge_lora it "
            "first (to keep the base model, save it before add_lora)"
        )
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the model only {rows} embedding rows")
    path = Path(path)
    with _atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    logger.info("saved model and tokenizer to %s", path)
    return path


@dataclass
class LoraSettings:
    """LoRA adapter settings; the defaults are the released stage-3 ones (r 8, alpha 16, dropout 0.05, q/v).

    Attributes:
        r: Rank of the update.
        alpha: Scale numerator: the update is multiplied by ``alpha / r``.
        dropout: Dropout on the adapter's input while training.
        target_modules: Names of the linear layers to adapt (suffixes such as ``"q_proj"``).
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"LoRA r must be a positive integer, got {self.r!r}")
        if not self.alpha > 0:
            raise ValueError(f"LoRA alpha must be positive, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        if isinstance(self.target_modules, str):
            self.target_modules = (self.target_modules,)
        self.target_modules = tuple(self.target_modules)
        if not self.target_modules or not all(isinstance(m, str) and m for m in self.target_modules):
            raise ValueError(f"LoRA target_modules must be non-empty module names, got {self.target_modules!r}")


def add_lora(model: PreTrainedModel, settings: LoraSettings, *, seed: int = 0) -> PeftModel:
    """Wrap a model with a fresh LoRA adapter; only the adapter's weights are trainable afterwards.

    The adapter starts as a no-op (its B matrices are zero), so the wrapped model's outputs equal the base
    model's. Initialisation is seeded; the global RNG is left alone.

    Raises:
        ValueError: A target module name matches no layer of the model.
    """
    from peft import LoraConfig, get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    unknown = [m for m in settings.target_modules if m not in names]
    if unknown:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ValueError(f"LoRA target_modules {unknown} match no layer of the model; linear layers: {linear}")
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]), _quiet_peft():
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, config)
    return peft_model


def merge_lora(model: PeftModel) -> PreTrainedModel:
    """Fold a LoRA adapter into its base weights and return the plain model (same outputs, no adapter cost).

    Raises:
        ValueError: ``model`` carries no LoRA adapter.
    """
    if not _is_peft(model):
        raise ValueError(f"merge_lora needs a LoRA (peft) model, got {type(model).__name__}")
    return model.merge_and_unload()


def save_lora(model: PeftModel, path: str | os.PathLike) -> Path:
    """Save only the LoRA adapter (``adapter_config.json`` + safetensors weights), atomically.

    Raises:
        ValueError: ``model`` carries no LoRA adapter.
    """
    if not _is_peft(model):
        raise ValueError(f"save_lora needs a LoRA (peft) model, got {type(model).__name__}")
    path = Path(path)
    with _atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
    logger.info("saved LoRA adapter to %s", path)
    return path


def count_parameters(model: torch.nn.Module, *, trainable_only: bool = False) -> int:
    """Number of (distinct) parameters, e.g. to report a model's size or what LoRA trains."""
    # ``parameters()`` yields a tied weight once.
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
