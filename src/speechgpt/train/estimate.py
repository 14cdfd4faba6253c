"""How much memory each GPU needs to train a stage, for every shipped distribution strategy.

A planning tool, not a measurement: it counts the tensors that dominate (weights, gradients, Adam states,
activations kept for the backward pass, communication buffers) with the formulas documented on each function,
so a user can pick ``single``/``ddp``/``fsdp``/``zero3`` and gradient checkpointing before renting a cluster.
Not counted: the CUDA context and allocator fragmentation (add 1-3 GiB), temporary buffers of kernels.

Imports neither torch nor transformers.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "MODEL_SHAPES",
    "STAGE_SEQ_LEN",
    "STRATEGIES",
    "MemoryEstimate",
    "MemoryTable",
    "ModelShape",
    "estimate_memory",
    "resolve_model_shape",
]

FP32_BYTES = 4
BF16_BYTES = 2
ADAM_STATE_BYTES = 2 * FP32_BYTES
"""Adam's first and second moments, fp32, per trainable parameter."""
GIB = 1024**3
RELEASED_ADDED_TOKENS = 1000 + 6
"""Rows the released vocabulary expansion adds: 1000 units and 6 control tokens."""
LOGIT_BYTES_PER_ENTRY = BF16_BYTES + FP32_BYTES + FP32_BYTES
"""Per token and vocabulary entry: the bf16 logits, their fp32 upcast for the loss, the softmax kept by the loss."""
PREFETCHED_LAYERS = 2
"""Decoder layers an FSDP/ZeRO-3 rank holds gathered at once: the one computing and the one prefetched."""
LLAMA_WIDTH_PER_LAYER = 128
"""LLaMA-7B and -13B have hidden = 128 x layers (4096 = 128 x 32, 5120 = 128 x 40); used to shape a bare count."""

STRATEGIES = ("single", "ddp", "fsdp", "zero3")
"""single device; DDP replicas; FSDP full shard with decoder-layer wrapping; DeepSpeed ZeRO stage 3."""
STRATEGY_TITLES = {
    "single": "single GPU",
    "ddp": "DDP",
    "fsdp": "FSDP full shard",
    "zero3": "DeepSpeed ZeRO-3",
}
STAGE_SEQ_LEN = {0: 256, 1: 1024, 2: 512, 3: 1024}
"""Default tokens per row of each stage (the released block size / max lengths; stage 0 is the tiny one's)."""


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a Llama-architecture causal LM that decide its memory."""

    name: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    vocab_size: int
    num_kv_heads: int | None = None
    """Key/value heads (grouped-query attention); ``None`` means as many as ``num_heads``."""
    tie_word_embeddings: bool = False

    @property
    def kv_size(self) -> int:
        """Width of the key (and of the value) projection."""
        return (self.num_kv_heads or self.num_heads) * (self.hidden_size // self.num_heads)

    @property
    def layer_params(self) -> int:
        """Parameters of one decoder layer: q/o (h x h), k/v (h x kv), gate/up/down (h x i), two RMSNorms."""
        h, i = self.hidden_size, self.intermediate_size
        return 2 * h * h + 2 * h * self.kv_size + 3 * h * i + 2 * h

    @property
    def root_params(self) -> int:
        """Parameters outside the decoder layers: embeddings, the LM head unless tied, the final norm."""
        heads = 1 if self.tie_word_embeddings else 2
        return heads * self.vocab_size * self.hidden_size + self.hidden_size

    @property
    def params(self) -> int:
        """All parameters."""
        return self.num_layers * self.layer_params + self.root_params


MODEL_SHAPES: dict[str, ModelShape] = {
    "7b": ModelShape("LLaMA-7B + units", 32, 4096, 11008, 32, 32000 + RELEASED_ADDED_TOKENS),
    "13b": ModelShape("LLaMA-13B + units", 40, 5120, 13824, 40, 32000 + RELEASED_ADDED_TOKENS),
    "tiny": ModelShape("embedded tiny Llama", 4, 256, 688, 4, 1300, tie_word_embeddings=True),
}
"""Named models: the released base (LLaMA-7B, and 13B) after vocabulary expansion, and the embedded tiny one."""

_SUFFIXES = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}


def _shape_from_count(params: int) -> ModelShape:
    """A LLaMA-proportioned shape with about ``params`` parameters.

    LLaMA keeps hidden = 128 x layers and intermediate ~ 8/3 x hidden, so a layer holds ~12 h^2 and the model
    ~12 L h^2 = 196,608 L^3; the embeddings are ignored when solving for L (they are a few percent at 7B).
    """
    layers = max(1, round((params / (12 * LLAMA_WIDTH_PER_LAYER**2)) ** (1 / 3)))
    hidden = LLAMA_WIDTH_PER_LAYER * layers
    intermediate = 256 * math.ceil(8 * hidden / 3 / 256)
    heads = max(1, hidden // 128)
    return ModelShape(f"~{params / 1e9:.2f}B params", layers, hidden, intermediate, heads, 32000)


def _shape_from_config(path: Path) -> ModelShape:
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no config.json to read the model's shape from")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
        hidden = int(config["hidden_size"])
        return ModelShape(
            name=str(path),
            num_layers=int(config["num_hidden_layers"]),
            hidden_size=hidden,
            intermediate_size=int(config.get("intermediate_size") or 4 * hidden),
            num_heads=int(config["num_attention_heads"]),
            vocab_size=int(config["vocab_size"]),
            num_kv_heads=config.get("num_key_value_heads"),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        )
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{file}: not a Llama-style config ({e})") from e


def resolve_model_shape(model_size: str | int | ModelShape) -> ModelShape:
    """A :class:`ModelShape` from a preset name (``7b``, ``13b``, ``tiny``), a parameter count (``6.7e9``,
    ``"350m"``, ``"7B"``) or a model folder / ``config.json``.

    Raises:
        ValueError: for a name that is none of these, listing the presets.
        FileNotFoundError: for a folder without ``config.json``.
    """
    if isinstance(model_size, ModelShape):
        return model_size
    if isinstance(model_size, int | float) and not isinstance(model_size, bool):
        if model_size <= 0:
            raise ValueError(f"model size must be a positive parameter count, got {model_size}")
        return _shape_from_count(int(model_size))
    text = str(model_size).strip()
    if text.lower() in MODEL_SHAPES:
        return MODEL_SHAPES[text.lower()]
    match = re.fullmatch(r"(\d+(?:\.\d+)?(?:e\d+)?)\s*([kmbgt]?)", text.lower())
    if match:
        count = float(match.group(1)) * _SUFFIXES.get(match.group(2), 1.0)
        return resolve_model_shape(int(count))
    path = Path(text)
    if path.exists():
        return _shape_from_config(path)
    raise ValueError(
        f"unknown model size {model_size!r}: use one of {', '.join(MODEL_SHAPES)}, a parameter count such as "
        "6.7e9 or 350m, or a model folder with config.json"
    )


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one GPU holds for one strategy (all fields in bytes)."""

    strategy: str
    weights: int
    gradients: int
    optimizer: int
    buffers: int
    """DDP's gradient buckets, or the parameters FSDP/ZeRO-3 gather for the layers in flight."""
    activations: int
    """Kept for the backward pass without gradient checkpointing (logits included)."""
    activations_checkpointed: int
    """The same with gradient checkpointing of every decoder layer."""

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.buffers + self.activations

    @property
    def total_checkpointed(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.buffers + self.activations_checkpointed


@dataclass(frozen=True)
class MemoryTable:
    """The estimates of one model, stage and GPU count, one row per strategy."""

    model: ModelShape
    stage: int
    gpus: int
    micro_batch_size: int
    seq_len: int
    trainable_params: int
    rows: list[MemoryEstimate] = field(default_factory=list)

    def row(self, strategy: str) -> MemoryEstimate:
        """The row of one strategy."""
        for row in self.rows:
            if row.strategy == strategy:
                return row
        raise KeyError(f"no row for strategy {strategy!r}; rows: {[r.strategy for r in self.rows]}")

    def to_text(self) -> str:
        """A plain-text table in GiB per GPU."""
        kind = "LoRA" if self.stage == 3 else "full"
        lines = [
            f"{self.model.name}: {self.model.params / 1e9:.3f}B params ({self.trainable_params:,} trainable, "
            f"{kind}), stage {self.stage}, {self.gpus} GPU(s), micro-batch {self.micro_batch_size} x "
            f"{self.seq_len} tokens; GiB per GPU",
        ]
        header = ("strategy", "weights", "grads", "Adam", "buffers", "activ.", "total", "activ.(ckpt)", "total(ckpt)")
        table = [header]
        for r in self.rows:
            values = (r.weights, r.gradients, r.optimizer, r.buffers, r.activations, r.total)
            table.append(
                (
                    STRATEGY_TITLES[r.strategy],
                    *(f"{v / GIB:.1f}" for v in values),
                    f"{r.activations_checkpointed / GIB:.1f}",
                    f"{r.total_checkpointed / GIB:.1f}",
                )
            )
        widths = [max(len(row[c]) for row in table) for c in range(len(header))]
        for row in table:
            cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True)]
            lines.append("  ".join(cells))
        lines.append("not counted: CUDA context and allocator fragmentation (add 1-3 GiB per GPU)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: the inputs and every row in bytes."""
        return {
            "model": self.model.name,
            "params": self.model.params,
            "trainable_params": self.trainable_params,
            "stage": self.stage,
            "gpus": self.gpus,
            "micro_batch_size": self.micro_batch_size,
            "seq_len": self.seq_len,
            "rows": [
                {
                    "strategy": r.strategy,
                    "weights": r.weights,
                    "gradients": r.gradients,
                    "optimizer": r.optimizer,
                    "buffers": r.buffers,
                    "activations": r.activations,
                    "activations_checkpointed": r.activations_checkpointed,
                    "total": r.total,
                    "total_checkpointed": r.total_checkpointed,
                }
                for r in self.rows
            ],
        }


def lora_params(model: ModelShape, r: int, target_modules: Sequence[str]) -> int:
    """Trainable LoRA parameters: per layer and target, ``r x (d_in + d_out)`` (the A and B matrices)."""
    h, kv, i = model.hidden_size, model.kv_size, model.intermediate_size
    dims = {
        "q_proj": (h, h),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (h, h),
        "gate_proj": (h, i),
        "up_proj": (h, i),
        "down_proj": (i, h),
    }
    unknown = [m for m in target_modules if m not in dims]
    if unknown:
        raise ValueError(f"unknown LoRA target module(s) {unknown}; known: {', '.join(dims)}")
    return model.num_layers * sum(r * (dims[m][0] + dims[m][1]) for m in target_modules)


def activation_bytes(
    model: ModelShape,
    tokens: int,
    *,
    checkpointing: bool,
    lora_r: int = 0,
    lora_targets: int = 0,
) -> int:
    """Activations kept for the backward pass of one micro-batch of ``tokens`` tokens, in bf16.

    Per token and decoder layer, a Llama layer with memory-efficient attention (SDPA/flash: no ``s x s`` scores)
    keeps the inputs of its backward: the attention RMSNorm's input and output (2h), q, k, v after RoPE
    (h + 2 kv), the attention output = o_proj's input (h), the MLP RMSNorm's input and output (2h), and in the
    SwiGLU MLP the gate and up outputs, SiLU(gate) and the product fed to down_proj (4i). That is
    ``2 x (6h + 2kv + 4i)`` bytes (``16h + 8i`` for full multi-head attention). LoRA adds, per target, its
    dropped-out input (h) and the rank-r hidden (r). The loss adds ``tokens x vocab x 10`` bytes
    (:data:`LOGIT_BYTES_PER_ENTRY`).

    With gradient checkpointing of each decoder layer only the layer inputs are kept (``2h`` bytes per token and
    layer) plus one layer's full activations while it is recomputed.
    """
    h, kv, i = model.hidden_size, model.kv_size, model.intermediate_size
    per_layer = BF16_BYTES * (6 * h + 2 * kv + 4 * i + lora_targets * (h + lora_r))
    logits = model.vocab_size * LOGIT_BYTES_PER_ENTRY
    if checkpointing:
        per_token = model.num_layers * BF16_BYTES * h + per_layer + logits
    else:
        per_token = model.num_layers * per_layer + logits
    return tokens * per_token


def estimate_memory(
    model_size: str | int | ModelShape = "7b",
    stage: int = 2,
    gpus: int = 1,
    strategy: str | Sequence[str] | None = None,
    *,
    micro_batch_size: int = 4,
    seq_len: int | None = None,
    lora_r: int = 8,
    lora_target_modules: Sequence[str] = ("q_proj", "v_proj"),
) -> MemoryTable:
    """Per-GPU memory to train ``stage`` of a model on ``gpus`` GPUs, for each strategy.

    Mixed precision (bf16 compute) with AdamW. Full training (stages 0-2), P parameters, N GPUs:

    - ``single`` and ``ddp``: fp32 weights 4P, fp32 gradients 4P, Adam moments 8P (16 bytes per parameter);
      ``ddp`` also holds its gradient buckets, a second fp32 copy of the gradients (4P) unless
      ``gradient_as_bucket_view`` is on.
    - ``fsdp`` (full shard, one unit per decoder layer): the same 16 bytes per parameter divided by N, plus the
      gathered working set: the root unit (embeddings, head) and two decoder layers (:data:`PREFETCHED_LAYERS`)
      unsharded in bf16, weights and gradients (2 + 2 bytes per parameter).
    - ``zero3`` (DeepSpeed bf16): bf16 weights 2P/N, bf16 gradients 2P/N, fp32 master weights and moments
      12P/N, plus the same gathered working set.

    Stage 3 (LoRA, ``T = num_layers x sum r(d_in + d_out)`` trainable): the frozen base is held in bf16 (2P, or
    2P/N when sharded) with no gradients or optimizer state; the adapters cost 16 bytes per parameter like full
    training (4T for DDP buckets). Activations (:func:`activation_bytes`) are per GPU and do not shrink with N:
    each GPU runs its own micro-batch of ``micro_batch_size x seq_len`` tokens.

    Args:
        model_size: ``7b``, ``13b``, ``tiny``, a parameter count, or a model folder (see :func:`resolve_model_shape`).
        stage: 0-3; decides full vs LoRA training and the default ``seq_len`` (:data:`STAGE_SEQ_LEN`).
        gpus: GPUs sharing the work (``single`` always uses one).
        strategy: One of :data:`STRATEGIES`, several, or ``None`` for all.
        micro_batch_size: Rows per GPU per micro-step.
        seq_len: Tokens per row (default: the stage's released length).
        lora_r: LoRA rank (stage 3).
        lora_target_modules: Layers with adapters (stage 3).

    Raises:
        ValueError: for an unknown stage, strategy or model size, or non-positive counts.
    """
    if stage not in STAGE_SEQ_LEN:
        raise ValueError(f"stage must be one of {sorted(STAGE_SEQ_LEN)}, got {stage}")
    if gpus < 1 or micro_batch_size < 1 or (seq_len is not None and seq_len < 1):
        raise ValueError(
            f"gpus, micro_batch_size and seq_len must be positive, got {gpus}, {micro_batch_size}, {seq_len}"
        )
    names = list(STRATEGIES) if strategy is None else [strategy] if isinstance(strategy, str) else list(strategy)
    unknown = [s for s in names if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"unknown strategy {unknown[0]!r}; choose from {', '.join(STRATEGIES)}")
    model = resolve_model_shape(model_size)
    seq = seq_len if seq_len is not None else STAGE_SEQ_LEN[stage]
    tokens = micro_batch_size * seq
    p = model.params
    lora = stage == 3
    trainable = lora_params(model, lora_r, lora_target_modules) if lora else p
    targets = len(lora_target_modules) if lora else 0
    act = activation_bytes(model, tokens, checkpointing=False, lora_r=lora_r if lora else 0, lora_targets=targets)
    act_ckpt = activation_bytes(model, tokens, checkpointing=True, lora_r=lora_r if lora else 0, lora_targets=targets)
    gathered_params = model.root_params + PREFETCHED_LAYERS * model.layer_params
    rows = []
    for name in names:
        n = 1 if name == "single" else gpus
        sharded = name in ("fsdp", "zero3")
        if lora:
            weights = BF16_BYTES * p + FP32_BYTES * trainable
            gradients = FP32_BYTES * trainable
            optimizer = ADAM_STATE_BYTES * trainable
            gathered_bytes = BF16_BYTES  # frozen weights only: no gradients for the gathered base
            ddp_buckets = FP32_BYTES * trainable
        elif name == "zero3":
            weights, gradients, optimizer = BF16_BYTES * p, BF16_BYTES * p, (FP32_BYTES + ADAM_STATE_BYTES) * p
            gathered_bytes = 2 * BF16_BYTES
            ddp_buckets = 0
        else:
            weights, gradients, optimizer = FP32_BYTES * p, FP32_BYTES * p, ADAM_STATE_BYTES * p
            gathered_bytes = 2 * BF16_BYTES
            ddp_buckets = FP32_BYTES * p
        if sharded:
            weights, gradients, optimizer = (math.ceil(x / n) for x in (weights, gradients, optimizer))
            buffers = gathered_bytes * gathered_params if n > 1 else 0
        else:
            buffers = ddp_buckets if name == "ddp" else 0
        rows.append(MemoryEstimate(name, weights, gradients, optimizer, buffers, act, act_ckpt))
    return MemoryTable(model, stage, gpus, micro_batch_size, seq, trainable, rows)
