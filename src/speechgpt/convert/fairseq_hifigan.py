"""Read the released fairseq unit HiFi-GAN (``g_00500000``) into :class:`~speechgpt.vocoder.hifigan.UnitHiFiGAN`.

The file is ``{"generator": state_dict}`` with 302 tensors (``FAIRSEQ_COMPAT.md`` section A); every generator
convolution carries old-style weight norm (``weight_g``, ``weight_v``, dim 0). Conversion is three explicit steps:

1. :func:`fold_weight_norm` turns each ``weight_g``/``weight_v`` pair into a plain ``weight``
   (``W = g * v / ||v||``, the norm over every dim but 0; for a ConvTranspose1d, whose weight is
   ``[in, out, k]``, that is one norm per *input* channel). This is the only place weight norm is handled.
2. :data:`FAIRSEQ_HIFIGAN_KEYS` renames every key; an unknown key is an error that lists it.
3. Names and shapes are checked against the model before anything is loaded: missing keys are listed and a
   shape mismatch names the key and both shapes.

The architecture comes from fairseq's ``config.json`` when given (checked against the tensor shapes), else it is
inferred from the shapes (upsample rates and dilations are not stored in tensors: the released ones are assumed,
which is only allowed when the kernel sizes match the release).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from speechgpt.devices import resolve_device
from speechgpt.vocoder.config import VocoderConfig
from speechgpt.vocoder.hifigan import UnitHiFiGAN

logger = logging.getLogger(__name__)

__all__ = [
    "FAIRSEQ_HIFIGAN_KEYS",
    "CheckpointError",
    "convert_fairseq_hifigan",
    "convert_state_dict",
    "fold_weight_norm",
    "infer_config",
    "load_fairseq_hifigan",
    "read_fairseq_checkpoint",
    "read_fairseq_config",
]

GENERATOR_KEY = "generator"
"""The one entry of the released checkpoint dict that holds the model."""

FAIRSEQ_HIFIGAN_KEYS: dict[str, str | None] = {
    "dict.weight": "embed.weight",
    "dur_predictor.conv1.0.weight": "duration.conv1.weight",
    "dur_predictor.conv1.0.bias": "duration.conv1.bias",
    "dur_predictor.ln1.weight": "duration.norm1.weight",
    "dur_predictor.ln1.bias": "duration.norm1.bias",
    "dur_predictor.conv2.0.weight": "duration.conv2.weight",
    "dur_predictor.conv2.0.bias": "duration.conv2.bias",
    "dur_predictor.ln2.weight": "duration.norm2.weight",
    "dur_predictor.ln2.bias": "duration.norm2.bias",
    "dur_predictor.proj.weight": "duration.proj.weight",
    "dur_predictor.proj.bias": "duration.proj.bias",
    "conv_pre.weight": "generator.conv_pre.weight",
    "conv_pre.bias": "generator.conv_pre.bias",
    "ups.{}.weight": "generator.ups.{}.weight",
    "ups.{}.bias": "generator.ups.{}.bias",
    "resblocks.{}.convs1.{}.weight": "generator.blocks.{}.convs1.{}.weight",
    "resblocks.{}.convs1.{}.bias": "generator.blocks.{}.convs1.{}.bias",
    "resblocks.{}.convs2.{}.weight": "generator.blocks.{}.convs2.{}.weight",
    "resblocks.{}.convs2.{}.bias": "generator.blocks.{}.convs2.{}.bias",
    "conv_post.weight": "generator.conv_post.weight",
    "conv_post.bias": "generator.conv_post.bias",
}
"""fairseq key (after :func:`fold_weight_norm`) -> our key; ``{}`` is a layer index, copied across in order.
No released key is dropped, so no value is None."""

# Weight-norm suffixes: old API (``weight_g``/``weight_v``) and torch.nn.utils.parametrizations (original0/1).
_NORM_SUFFIXES = (
    (".weight_g", ".weight_v"),
    (".parametrizations.weight.original0", ".parametrizations.weight.original1"),
)
_PATTERNS = [
    (re.compile("^" + re.escape(src).replace(r"\{\}", r"(\d+)") + "$"), dst)
    for src, dst in FAIRSEQ_HIFIGAN_KEYS.items()
]
_REVERSE = [
    (re.compile("^" + re.escape(dst).replace(r"\{\}", r"(\d+)") + "$"), src)
    for src, dst in FAIRSEQ_HIFIGAN_KEYS.items()
    if dst
]


class CheckpointError(ValueError):
    """A released vocoder file that cannot be read or does not fit; the message names the file and the problem."""


def _map_key(key: str) -> str | None:
    """Our name for a (folded) fairseq key, or None when the table does not know it."""
    for pattern, target in _PATTERNS:
        match = pattern.match(key)
        if match:
            return target.format(*match.groups()) if target is not None else None
    return None


def _fairseq_name(our_key: str) -> str:
    """The fairseq key an error message should show for one of our keys (weight norm spelled out)."""
    for pattern, source in _REVERSE:
        match = pattern.match(our_key)
        if match:
            name = source.format(*match.groups())
            if name.endswith(".weight") and our_key.startswith("generator."):
                return name[: -len(".weight")] + ".weight_g/weight_v"
            return name
    return our_key


def fold_weight_norm(state_dict: Mapping[str, torch.Tensor], source: str = "<state_dict>") -> dict[str, torch.Tensor]:
    """Replace every weight-norm pair ``X.weight_g``/``X.weight_v`` by ``X.weight = g * v / ||v||`` (dim 0).

    The norm is over every dim but 0 (``v.flatten(1).norm(dim=1)``), i.e. ``torch._weight_norm(v, g, 0)``; for
    a ConvTranspose1d (``[in, out, k]``) that is one norm per input channel. The parametrization spelling
    (``parametrizations.weight.original0/1``) is folded the same way. Other keys pass through.

    Raises:
        CheckpointError: half a pair, a pair next to a plain ``weight``, or a ``g`` whose shape is not
            ``[v.shape[0], 1, ...]`` (naming the key and the shapes).
    """
    out: dict[str, torch.Tensor] = {}
    consumed: set[str] = set()
    for g_suffix, v_suffix in _NORM_SUFFIXES:
        for key in state_dict:
            if not (key.endswith(g_suffix) or key.endswith(v_suffix)):
                continue
            base = key[: -len(g_suffix)] if key.endswith(g_suffix) else key[: -len(v_suffix)]
            g_key, v_key = base + g_suffix, base + v_suffix
            if g_key not in state_dict or v_key not in state_dict:
                present, absent = (g_key, v_key) if g_key in state_dict else (v_key, g_key)
                raise CheckpointError(f"{source}: {present} has no partner {absent} (weight norm needs both)")
            if base + ".weight" in state_dict:
                raise CheckpointError(f"{source}: {base}.weight is present next to its weight-norm pair {g_key}")
            if g_key in consumed:
                continue
            g, v = state_dict[g_key], state_dict[v_key]
            expected = (v.shape[0],) + (1,) * (v.dim() - 1)
            if tuple(g.shape) != expected:
                raise CheckpointError(
                    f"{source}: {g_key} has shape {tuple(g.shape)}, expected {expected} for {v_key} of shape "
                    f"{tuple(v.shape)} (weight norm over dim 0)"
                )
            norm = v.flatten(1).norm(dim=1).view(expected)
            out[base + ".weight"] = v * (g / norm)  # torch._weight_norm's order of operations
            consumed.update((g_key, v_key))
    for key, tensor in state_dict.items():
        if key not in consumed:
            out[key] = tensor
    return out


def convert_state_dict(state_dict: Mapping[str, torch.Tensor], source: str = "<state_dict>") -> dict[str, torch.Tensor]:
    """Fold weight norm and rename every key to ours (works on ``meta`` tensors too).

    Raises:
        CheckpointError: unknown keys (all listed), or a weight-norm problem.
    """
    folded = fold_weight_norm(state_dict, source)
    unknown = sorted(key for key in folded if _map_key(key) is None)
    if unknown:
        raise CheckpointError(f"{source}: unknown keys for a unit HiFi-GAN generator: {unknown}")
    return {_map_key(key): tensor for key, tensor in folded.items()}  # type: ignore[misc]


def check_state_dict(state_dict: Mapping[str, torch.Tensor], model: UnitHiFiGAN, source: str = "<state_dict>") -> None:
    """Check converted weights against ``model``: every key present, no extra one, every shape equal.

    Raises:
        CheckpointError: missing or extra keys (listed with their fairseq names), or the first shape mismatch
            (key and both shapes).
    """
    expected = {key: tuple(t.shape) for key, t in model.inference_state_dict().items()}
    missing = sorted(_fairseq_name(k) for k in set(expected) - set(state_dict))
    if missing:
        raise CheckpointError(f"{source}: missing keys {missing}")
    extra = sorted(_fairseq_name(k) for k in set(state_dict) - set(expected))
    if extra:
        raise CheckpointError(f"{source}: keys this configuration does not have: {extra}")
    for key, shape in expected.items():
        if tuple(state_dict[key].shape) != shape:
            raise CheckpointError(
                f"{source}: {_fairseq_name(key)} ({key}) has shape {tuple(state_dict[key].shape)}, "
                f"the configuration expects {shape}"
            )


def read_fairseq_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The generator state dict of a released checkpoint, read with ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not a torch file, not loadable as plain tensors, or not ``{"generator": {name: tensor}}``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such vocoder checkpoint file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises pickle, zip, EOF and runtime errors for files it cannot read
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({reason})") from e
    if not isinstance(data, Mapping) or GENERATOR_KEY not in data:
        found = sorted(map(str, data))[:10] if isinstance(data, Mapping) else type(data).__name__
        raise CheckpointError(
            f"{path}: expected a fairseq vocoder checkpoint {{'generator': state_dict}}, found {found}"
        )
    state = data[GENERATOR_KEY]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: 'generator' must map parameter names to tensors")
    return dict(state)


def read_fairseq_config(path: str | os.PathLike) -> VocoderConfig:
    """Parse fairseq's vocoder ``config.json`` (see :meth:`VocoderConfig.from_fairseq_json`).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not JSON, or a configuration we do not support (the reason is given).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such vocoder config file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    try:
        return VocoderConfig.from_fairseq_json(data)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from e


def _count(state_dict: Mapping[str, torch.Tensor], pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for key in state_dict if (m := regex.match(key))})


def _shape_fields(folded: Mapping[str, torch.Tensor], source: str) -> dict[str, Any]:
    """Architecture fields readable from the tensor shapes of a folded fairseq state dict."""
    needed = [
        "dict.weight",
        "dur_predictor.conv1.0.weight",
        "conv_pre.weight",
        "ups.0.weight",
        "resblocks.0.convs1.0.weight",
    ]
    missing = [key for key in needed if key not in folded]
    if missing:
        raise CheckpointError(f"{source}: missing keys {missing}; is this a unit HiFi-GAN (CodeHiFiGAN) generator?")
    num_stages = _count(folded, r"^ups\.(\d+)\.weight$")
    num_blocks = _count(folded, r"^resblocks\.(\d+)\.convs1\.\d+\.weight$")
    if num_blocks % num_stages:
        raise CheckpointError(f"{source}: {num_blocks} residual blocks do not divide evenly into {num_stages} stages")
    num_kernels = num_blocks // num_stages
    for key in [f"ups.{i}.weight" for i in range(num_stages)] + [
        f"resblocks.{j}.convs1.0.weight" for j in range(num_kernels)
    ]:
        if key not in folded:
            raise CheckpointError(f"{source}: missing keys ['{key}']")
    num_units, embedding_dim = folded["dict.weight"].shape
    duration_channels, _, duration_kernel = folded["dur_predictor.conv1.0.weight"].shape
    return {
        "num_units": int(num_units),
        "embedding_dim": int(embedding_dim),
        "duration_channels": int(duration_channels),
        "duration_kernel_size": int(duration_kernel),
        "upsample_initial_channel": int(folded["conv_pre.weight"].shape[0]),
        "upsample_kernel_sizes": tuple(int(folded[f"ups.{i}.weight"].shape[2]) for i in range(num_stages)),
        "resblock_kernel_sizes": tuple(
            int(folded[f"resblocks.{j}.convs1.0.weight"].shape[2]) for j in range(num_kernels)
        ),
        "dilations_per_block": _count(folded, r"^resblocks\.0\.convs1\.(\d+)\.weight$"),
    }


def infer_config(
    state_dict: Mapping[str, torch.Tensor], config: VocoderConfig | None = None, source: str = "<state_dict>"
) -> VocoderConfig:
    """The architecture of a fairseq generator state dict, from its shapes; checked against ``config`` if given.

    Raises:
        CheckpointError: a shape disagrees with ``config`` (field, config value and checkpoint value named), or,
            without ``config``, the shapes are not the released layout so rates/dilations cannot be assumed.
    """
    fields = _shape_fields(fold_weight_norm(state_dict, source), source)
    reference = config if config is not None else VocoderConfig()
    stated = {
        "num_units": reference.num_units,
        "embedding_dim": reference.embedding_dim,
        "duration_channels": reference.duration_channels,
        "duration_kernel_size": reference.duration_kernel_size,
        "upsample_initial_channel": reference.upsample_initial_channel,
        "upsample_kernel_sizes": reference.upsample_kernel_sizes,
        "resblock_kernel_sizes": reference.resblock_kernel_sizes,
        "dilations_per_block": len(reference.resblock_dilation_sizes[0]),
    }
    if config is not None:
        for name, value in fields.items():
            if stated[name] != value:
                raise CheckpointError(
                    f"{source}: config.json says {name} = {stated[name]!r}, the checkpoint has {value!r}"
                )
        return config
    # Without config.json: widths come from shapes; rates and dilations (not in any shape) are the release's,
    # which is only safe when every kernel size and block layout matches the release.
    layout = ("upsample_kernel_sizes", "resblock_kernel_sizes", "dilations_per_block", "duration_kernel_size")
    differs = [name for name in layout if fields[name] != stated[name]]
    if differs:
        raise CheckpointError(
            f"{source}: {', '.join(f'{n} = {fields[n]!r}' for n in differs)} differ from the released vocoder, so its "
            "upsample rates and dilations cannot be assumed; pass the checkpoint's config.json"
        )
    return VocoderConfig(
        num_units=fields["num_units"],
        embedding_dim=fields["embedding_dim"],
        duration_channels=fields["duration_channels"],
        upsample_initial_channel=fields["upsample_initial_channel"],
    )


def load_fairseq_hifigan(
    checkpoint_path: str | os.PathLike,
    config_json_path: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
) -> UnitHiFiGAN:
    """Build a :class:`UnitHiFiGAN` (eval mode, plain weights) from the released checkpoint.

    Args:
        checkpoint_path: The fairseq file, e.g. ``g_00500000``.
        config_json_path: Its ``config.json``; without it the architecture is inferred from shapes.
        device: Target device (default: CUDA when present, else CPU).

    Raises:
        FileNotFoundError: a file is missing.
        CheckpointError: unreadable file, unsupported config, unknown/missing keys or shape mismatches.
    """
    source = str(checkpoint_path)
    state = read_fairseq_checkpoint(checkpoint_path)
    config = read_fairseq_config(config_json_path) if config_json_path is not None else None
    config = infer_config(state, config, source)
    converted = convert_state_dict(state, source)
    model = UnitHiFiGAN(config, device="meta")
    check_state_dict(converted, model, source)
    model.load_weights({k: v.float().contiguous() for k, v in converted.items()}, source=source, assign=True)
    logger.info("loaded fairseq unit HiFi-GAN %s (%d units)", source, config.num_units)
    return model.to(resolve_device(device)).eval()


def convert_fairseq_hifigan(
    checkpoint_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    config_json_path: str | os.PathLike | None = None,
) -> Path:
    """Convert the released checkpoint into our folder format (``config.json`` + ``model.safetensors``)."""
    model = load_fairseq_hifigan(checkpoint_path, config_json_path, device="cpu")
    return model.save_pretrained(output_dir)
