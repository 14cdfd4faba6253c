"""Convert the released fairseq mHuBERT checkpoint (``mhubert_base_vp_en_es_fr_it3.pt``) to a HF ``HubertModel``.

The file is a pickle of fairseq objects (``task_state`` holds ``fairseq.data.dictionary.Dictionary``), so it
is read with the restricted unpickler (fairseq classes become inert stubs) and only ``cfg`` and ``model``
are kept. The config is checked against what our forward pass (and HF's) computes: the fairseq options
that change the math without changing any tensor shape (post-LN, waveform normalisation, extractor
mode) are asserted, the sizes are read from the config. The state dict is renamed with one explicit key
table; unknown or missing keys are errors.
"""

from __future__ import annotations

import ast
import hashlib
import logging
import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import HubertConfig

from speechgpt.convert.restricted_pickle import RESTRICTED_PICKLE

__all__ = [
    "FAIRSEQ_HUBERT_KEYS",
    "RELEASED_HUBERT_NAME",
    "RELEASED_HUBERT_SHA256",
    "convert_fairseq_hubert_state_dict",
    "hubert_config_from_fairseq",
    "load_fairseq_hubert",
    "parse_conv_feature_layers",
]

logger = logging.getLogger(__name__)

RELEASED_HUBERT_NAME = "mhubert_base_vp_en_es_fr_it3.pt"
RELEASED_HUBERT_SHA256 = "23527cd6311a6617bfa199f574e2eed478cd6a58a634f4007165c10ec0019832"

# fairseq key -> HF HubertModel key. "{}" stands for a layer index; None drops the key.
FAIRSEQ_HUBERT_KEYS: dict[str, str | None] = {
    # convolutional front end ("default" extractor mode: only conv 0 has a (group) norm, at index 2)
    "feature_extractor.conv_layers.{}.0.weight": "feature_extractor.conv_layers.{}.conv.weight",
    "feature_extractor.conv_layers.{}.2.weight": "feature_extractor.conv_layers.{}.layer_norm.weight",
    "feature_extractor.conv_layers.{}.2.bias": "feature_extractor.conv_layers.{}.layer_norm.bias",
    "layer_norm.weight": "feature_projection.layer_norm.weight",
    "layer_norm.bias": "feature_projection.layer_norm.bias",
    "post_extract_proj.weight": "feature_projection.projection.weight",
    "post_extract_proj.bias": "feature_projection.projection.bias",
    # Kept (not dropped) so the HF folder holds every pretrained weight; it is only used when masking
    # during training, never by inference. HF creates it because mask_time_prob > 0 (see the config).
    "mask_emb": "masked_spec_embed",
    # positional convolution, weight norm over dim 2 (weight_g [1, 1, K]); HF/torch parametrization names
    "encoder.pos_conv.0.weight_g": "encoder.pos_conv_embed.conv.parametrizations.weight.original0",
    "encoder.pos_conv.0.weight_v": "encoder.pos_conv_embed.conv.parametrizations.weight.original1",
    "encoder.pos_conv.0.bias": "encoder.pos_conv_embed.conv.bias",
    "encoder.layer_norm.weight": "encoder.layer_norm.weight",
    "encoder.layer_norm.bias": "encoder.layer_norm.bias",
    # transformer layers
    "encoder.layers.{}.self_attn.q_proj.weight": "encoder.layers.{}.attention.q_proj.weight",
    "encoder.layers.{}.self_attn.q_proj.bias": "encoder.layers.{}.attention.q_proj.bias",
    "encoder.layers.{}.self_attn.k_proj.weight": "encoder.layers.{}.attention.k_proj.weight",
    "encoder.layers.{}.self_attn.k_proj.bias": "encoder.layers.{}.attention.k_proj.bias",
    "encoder.layers.{}.self_attn.v_proj.weight": "encoder.layers.{}.attention.v_proj.weight",
    "encoder.layers.{}.self_attn.v_proj.bias": "encoder.layers.{}.attention.v_proj.bias",
    "encoder.layers.{}.self_attn.out_proj.weight": "encoder.layers.{}.attention.out_proj.weight",
    "encoder.layers.{}.self_attn.out_proj.bias": "encoder.layers.{}.attention.out_proj.bias",
    "encoder.layers.{}.self_attn_layer_norm.weight": "encoder.layers.{}.layer_norm.weight",
    "encoder.layers.{}.self_attn_layer_norm.bias": "encoder.layers.{}.layer_norm.bias",
    "encoder.layers.{}.fc1.weight": "encoder.layers.{}.feed_forward.intermediate_dense.weight",
    "encoder.layers.{}.fc1.bias": "encoder.layers.{}.feed_forward.intermediate_dense.bias",
    "encoder.layers.{}.fc2.weight": "encoder.layers.{}.feed_forward.output_dense.weight",
    "encoder.layers.{}.fc2.bias": "encoder.layers.{}.feed_forward.output_dense.bias",
    "encoder.layers.{}.final_layer_norm.weight": "encoder.layers.{}.final_layer_norm.weight",
    "encoder.layers.{}.final_layer_norm.bias": "encoder.layers.{}.final_layer_norm.bias",
    # pretraining heads, unused for features
    "final_proj.weight": None,
    "final_proj.bias": None,
    "label_embs_concat": None,
}

# fairseq options that change the computation without changing a tensor shape: (section, field) -> expected.
_EXPECTED_OPTIONS: dict[tuple[str, str], Any] = {
    ("model", "extractor_mode"): "default",
    ("model", "layer_norm_first"): False,
    ("model", "conv_bias"): False,
    ("model", "activation_fn"): "gelu",
    ("task", "normalize"): False,
}
# Options that newer fairseq versions added; absent in older configs, where the default is what we compute.
_EXPECTED_IF_PRESENT: dict[tuple[str, str], Any] = {
    ("model", "layer_type"): "transformer",
    ("model", "pos_conv_depth"): 1,
    ("model", "conv_pos_batch_norm"): False,
}
_REQUIRED_SIZES = (
    "encoder_embed_dim",
    "encoder_layers",
    "encoder_attention_heads",
    "encoder_ffn_embed_dim",
    "conv_feature_layers",
    "conv_pos",
    "conv_pos_groups",
)
_MISSING = object()
_LAYER_INDEX = re.compile(r"\.(\d+)\.")


def parse_conv_feature_layers(spec: str) -> list[tuple[int, int, int]]:
    """Parse fairseq's ``conv_feature_layers`` string, e.g. ``"[(512,10,5)]+[(512,3,2)]*4+[(512,2,2)]*2"``.

    fairseq ``eval``\\ s this string; here only list/tuple literals of integers combined with ``+`` and
    ``list * int`` are accepted (checked on the syntax tree, leaves read with :func:`ast.literal_eval`), so
    a config can never run code.

    Returns:
        ``[(channels, kernel, stride), ...]``.

    Raises:
        ValueError: for any other expression or a malformed layer triple.
    """
    try:
        tree = ast.parse(spec, mode="eval")
    except SyntaxError as e:
        raise ValueError(f"conv_feature_layers {spec!r} is not a valid expression: {e.msg}") from e

    def evaluate(node: ast.AST) -> Any:
        if isinstance(node, (ast.List, ast.Tuple, ast.Constant)):
            return ast.literal_eval(node)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left, right = evaluate(node.left), evaluate(node.right)
            if isinstance(left, list) and isinstance(right, list):
                return left + right
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            left, right = evaluate(node.left), evaluate(node.right)
            if isinstance(left, list) and isinstance(right, int) and 0 <= right <= 64:
                return left * right
            if isinstance(right, list) and isinstance(left, int) and 0 <= left <= 64:
                return right * left
        raise ValueError(
            f"conv_feature_layers {spec!r}: only lists of (channels, kernel, stride) joined by + and * are allowed"
        )

    layers = evaluate(tree.body)
    if not isinstance(layers, list) or not layers:
        raise ValueError(f"conv_feature_layers {spec!r} must be a non-empty list of (channels, kernel, stride)")
    out = []
    for item in layers:
        if not (isinstance(item, tuple) and len(item) == 3 and all(type(v) is int and v > 0 for v in item)):
            raise ValueError(f"conv_feature_layers {spec!r}: {item!r} is not a (channels, kernel, stride) triple")
        out.append((item[0], item[1], item[2]))
    return out


def _section(cfg: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    section = cfg.get(name)
    if not isinstance(section, Mapping):
        raise ValueError(f"fairseq config has no '{name}' section (found sections: {sorted(cfg)})")
    return section


def hubert_config_from_fairseq(cfg: Mapping[str, Any]) -> HubertConfig:
    """Build the HF ``HubertConfig`` for a fairseq HuBERT checkpoint config (``checkpoint["cfg"]``).

    Sizes are read from ``cfg["model"]``, so any model in the base layout (the release, or a tiny test
    model) converts. Options our forward pass does not implement are rejected.

    Args:
        cfg: The checkpoint's ``cfg`` dict, with ``"model"`` and ``"task"`` sections.

    Raises:
        ValueError: naming the field, its value and the expected value, for an unsupported configuration.
    """
    model, task = _section(cfg, "model"), _section(cfg, "task")
    sections = {"model": model, "task": task}
    for (section, field), expected in _EXPECTED_OPTIONS.items():
        value = sections[section].get(field, _MISSING)
        if value is _MISSING:
            raise ValueError(f"unsupported fairseq HuBERT config: {section}.{field} is missing, expected {expected!r}")
        if value != expected or type(value) is not type(expected):
            raise ValueError(f"unsupported fairseq HuBERT config: {section}.{field} = {value!r}, expected {expected!r}")
    for (section, field), expected in _EXPECTED_IF_PRESENT.items():
        value = sections[section].get(field, expected)
        if value != expected:
            raise ValueError(f"unsupported fairseq HuBERT config: {section}.{field} = {value!r}, expected {expected!r}")
    missing = [f"model.{name}" for name in _REQUIRED_SIZES if name not in model]
    if missing:
        raise ValueError(f"unsupported fairseq HuBERT config: missing size fields {missing}")
    sizes: dict[str, int] = {}
    for name in _REQUIRED_SIZES[:4] + _REQUIRED_SIZES[5:]:
        value = model[name]
        if type(value) is not int or value <= 0:
            raise ValueError(f"unsupported fairseq HuBERT config: model.{name} = {value!r}, expected a positive int")
        sizes[name] = value
    if sizes["encoder_embed_dim"] % sizes["encoder_attention_heads"]:
        raise ValueError(
            f"unsupported fairseq HuBERT config: model.encoder_embed_dim = {sizes['encoder_embed_dim']} is not "
            f"divisible by model.encoder_attention_heads = {sizes['encoder_attention_heads']}"
        )
    if sizes["encoder_embed_dim"] % sizes["conv_pos_groups"]:
        raise ValueError(
            f"unsupported fairseq HuBERT config: model.encoder_embed_dim = {sizes['encoder_embed_dim']} is not "
            f"divisible by model.conv_pos_groups = {sizes['conv_pos_groups']}"
        )
    conv_layers = parse_conv_feature_layers(str(model["conv_feature_layers"]))
    mask_prob = float(model.get("mask_prob", 0.65))
    return HubertConfig(
        hidden_size=sizes["encoder_embed_dim"],
        num_hidden_layers=sizes["encoder_layers"],
        num_attention_heads=sizes["encoder_attention_heads"],
        intermediate_size=sizes["encoder_ffn_embed_dim"],
        hidden_act="gelu",
        feat_extract_activation="gelu",
        feat_extract_norm="group",
        do_stable_layer_norm=False,
        feat_proj_layer_norm=True,
        conv_bias=False,
        conv_dim=tuple(c for c, _, _ in conv_layers),
        conv_kernel=tuple(k for _, k, _ in conv_layers),
        conv_stride=tuple(s for _, _, s in conv_layers),
        num_conv_pos_embeddings=sizes["conv_pos"],
        num_conv_pos_embedding_groups=sizes["conv_pos_groups"],
        layer_norm_eps=1e-5,  # fairseq's LayerNorm default
        hidden_dropout=float(model.get("dropout", 0.1)),
        attention_dropout=float(model.get("attention_dropout", 0.1)),
        activation_dropout=float(model.get("activation_dropout", 0.0)),
        feat_proj_dropout=float(model.get("dropout_input", 0.0)),
        layerdrop=float(model.get("encoder_layerdrop", 0.0)),
        # > 0 so that HF creates masked_spec_embed for mask_emb; masking only ever happens in training.
        mask_time_prob=mask_prob if mask_prob > 0 else 0.05,
        mask_time_length=int(model.get("mask_length", 10)),
    )


def _abstract_key(key: str) -> tuple[str, str | None]:
    """``"encoder.layers.3.fc1.weight"`` -> ``("encoder.layers.{}.fc1.weight", "3")`` (first index only)."""
    match = _LAYER_INDEX.search(key)
    if match is None:
        return key, None
    return key[: match.start()] + ".{}." + key[match.end() :], match.group(1)


def convert_fairseq_hubert_state_dict(
    state_dict: Mapping[str, torch.Tensor], source: str = "state dict"
) -> dict[str, torch.Tensor]:
    """Rename a fairseq HuBERT state dict to HF ``HubertModel`` keys with :data:`FAIRSEQ_HUBERT_KEYS`.

    Raises:
        ValueError: listing every key the table does not know.
    """
    converted: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, tensor in state_dict.items():
        if key in FAIRSEQ_HUBERT_KEYS:
            target = FAIRSEQ_HUBERT_KEYS[key]
        else:
            pattern, index = _abstract_key(key)
            if index is None or pattern not in FAIRSEQ_HUBERT_KEYS:
                unknown.append(key)
                continue
            target = FAIRSEQ_HUBERT_KEYS[pattern]
            target = None if target is None else target.format(index)
        if target is None:
            continue
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{source}: '{key}' is a {type(tensor).__name__}, not a tensor")
        converted[target] = tensor
    if unknown:
        raise ValueError(f"{source}: unknown fairseq HuBERT keys {sorted(unknown)}")
    return converted


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, pickle_module=RESTRICTED_PICKLE)
    except Exception as e:  # torch/pickle raise many types for a file that is not a checkpoint
        if "refusing to load global" in str(e):
            raise ValueError(f"{path}: unsafe or unexpected content in the checkpoint pickle: {e}") from e
        if isinstance(e, (zipfile.BadZipFile, EOFError, RuntimeError, OSError, ValueError, TypeError, KeyError)):
            raise ValueError(f"{path}: not a fairseq checkpoint (cannot be read by torch.load: {e})") from e
        raise ValueError(f"{path}: not a fairseq checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{path}: not a fairseq checkpoint (holds a {type(checkpoint).__name__}, not a dict)")
    return dict(checkpoint)


def _checkpoint_cfg(checkpoint: Mapping[str, Any], path: Path) -> Mapping[str, Any]:
    cfg = checkpoint.get("cfg")
    if isinstance(cfg, Mapping):
        return cfg
    args = checkpoint.get("args")
    if cfg is None and args is not None and hasattr(args, "__dict__"):
        # Checkpoints from fairseq before hydra (2020) keep one flat argparse.Namespace for model and task.
        flat = dict(vars(args))
        return {"model": flat, "task": flat}
    raise ValueError(f"{path}: not a fairseq checkpoint (no 'cfg' dict; keys: {sorted(map(str, checkpoint))})")


def load_fairseq_hubert(
    path: str | os.PathLike[str], *, verify_sha256: bool = False
) -> tuple[HubertConfig, dict[str, torch.Tensor]]:
    """Read a fairseq HuBERT checkpoint into an HF config and an HF-keyed state dict, without fairseq.

    Args:
        path: The fairseq ``.pt`` file (e.g. the released ``mhubert_base_vp_en_es_fr_it3.pt``).
        verify_sha256: Check the released file's known SHA-256; only done when the file has the released name.

    Returns:
        ``(config, state_dict)`` ready for ``HubertModel(config).load_state_dict(state_dict, strict=True)``.

    Raises:
        FileNotFoundError: if ``path`` is not a file.
        ValueError: naming the file, when it is not a fairseq checkpoint, has an unsupported config, unknown or
            missing keys, wrong shapes, or a wrong checksum.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"fairseq HuBERT checkpoint not found: {path}")
    if verify_sha256:
        if path.name == RELEASED_HUBERT_NAME:
            digest = _sha256(path)
            if digest != RELEASED_HUBERT_SHA256:
                raise ValueError(f"{path}: SHA-256 is {digest}, the released file's is {RELEASED_HUBERT_SHA256}")
        else:
            logger.info("not checking the SHA-256 of %s: only %s has a known sum", path, RELEASED_HUBERT_NAME)
    checkpoint = _read_checkpoint(path)
    if "model" not in checkpoint:
        raise ValueError(f"{path}: not a fairseq checkpoint (no 'model'; keys: {sorted(map(str, checkpoint))})")
    cfg = _checkpoint_cfg(checkpoint, path)
    state = checkpoint["model"]
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: 'model' is a {type(state).__name__}, not a state dict")
    try:
        config = hubert_config_from_fairseq(cfg)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    converted = convert_fairseq_hubert_state_dict(state, source=str(path))
    _check_against_model(config, converted, path)
    return config, converted


def _check_against_model(config: HubertConfig, state_dict: Mapping[str, torch.Tensor], path: Path) -> None:
    """Check keys and shapes against the HF model the config builds (on the meta device: no memory)."""
    from transformers import HubertModel

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in HubertModel(config).state_dict().items()}
    missing = sorted(set(expected) - set(state_dict))
    if missing:
        raise ValueError(f"{path}: missing keys for a HuBERT with this config: {missing}")
    extra = sorted(set(state_dict) - set(expected))
    if extra:
        raise ValueError(f"{path}: keys not in a HuBERT with this config: {extra}")
    wrong = [
        f"{key}: {tuple(state_dict[key].shape)} vs {shape}"
        for key, shape in expected.items()
        if tuple(state_dict[key].shape) != shape
    ]
    if wrong:
        raise ValueError(f"{path}: tensor shapes do not match the config: {wrong}")
