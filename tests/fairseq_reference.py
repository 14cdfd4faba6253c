"""Reference math and released-format writers for the fairseq mHuBERT / scikit-learn k-means parity tests.

fairseq cannot be a test dependency, so the reference forward pass is written here from the facts in
``shared/compat/FAIRSEQ_COMPAT.md`` (sections B-D), as plain functional torch code on the *fairseq-keyed*
state dict, independently of ``speechgpt.units.hubert``. The writers produce files in the released
layouts: a fairseq checkpoint whose pickle holds a ``fairseq.data.dictionary.Dictionary`` object (so the
loader must stub fairseq), and a genuine scikit-learn k-means dumped with joblib.
"""

from __future__ import annotations

import os
import re
import sys
import types
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

LAYER_NORM_EPS = 1e-5  # fairseq LayerNorm / Fp32GroupNorm default


# --- config and weights ----------------------------------------------------------------------------------


def tiny_fairseq_hubert_cfg(
    *,
    layers: int = 12,
    conv_channels: int = 32,
    embed_dim: int = 32,
    ffn_dim: int = 64,
    heads: int = 4,
    conv_pos: int = 16,
    conv_pos_groups: int = 4,
) -> dict[str, Any]:
    """A fairseq HuBERT checkpoint ``cfg`` in the base layout (real strides/kernels), with tiny widths.

    ``conv_pos`` is even by default so that SamePad drops a frame, as in the released model (128).
    """
    c = conv_channels
    model = {
        "_name": "hubert",
        "label_rate": 50.0,
        "extractor_mode": "default",
        "encoder_layers": layers,
        "encoder_embed_dim": embed_dim,
        "encoder_ffn_embed_dim": ffn_dim,
        "encoder_attention_heads": heads,
        "activation_fn": "gelu",
        "layer_type": "transformer",
        "dropout": 0.1,
        "attention_dropout": 0.1,
        "activation_dropout": 0.0,
        "encoder_layerdrop": 0.05,
        "dropout_input": 0.1,
        "dropout_features": 0.1,
        "final_dim": 16,
        "untie_final_proj": False,
        "layer_norm_first": False,
        "conv_feature_layers": f"[({c},10,5)]+[({c},3,2)]*4+[({c},2,2)]*2",
        "conv_bias": False,
        "logit_temp": 0.1,
        "target_glu": False,
        "feature_grad_mult": 0.1,
        "mask_length": 10,
        "mask_prob": 0.8,
        "mask_selection": "static",
        "mask_other": 0.0,
        "no_mask_overlap": False,
        "mask_min_space": 1,
        "mask_channel_length": 10,
        "mask_channel_prob": 0.0,
        "conv_pos": conv_pos,
        "conv_pos_groups": conv_pos_groups,
        "latent_temp": [2.0, 0.5, 0.999995],
        "skip_masked": False,
        "skip_nomask": False,
        "checkpoint_activations": False,
        "required_seq_len_multiple": 2,
    }
    task = {
        "_name": "hubert_pretraining",
        "data": "/data/manifest",
        "fine_tuning": False,
        "labels": ["km"],
        "label_dir": "/data/labels",
        "label_rate": 50.0,
        "sample_rate": 16000,
        "normalize": False,
        "enable_padding": False,
        "max_keep_size": None,
        "max_sample_size": 250000,
        "min_sample_size": 32000,
        "single_target": False,
        "random_crop": True,
        "pad_audio": False,
    }
    return {"_name": None, "common": {"fp16": True, "seed": 1337}, "model": model, "task": task}


def conv_layers_of(cfg: dict[str, Any]) -> list[tuple[int, int, int]]:
    """The (channels, kernel, stride) list of a ``conv_feature_layers`` string like ``[(C,10,5)]+[(C,3,2)]*4``."""
    layers: list[tuple[int, int, int]] = []
    for term in cfg["model"]["conv_feature_layers"].replace(" ", "").split("+"):
        match = re.fullmatch(r"\[\((\d+),(\d+),(\d+)\)\](?:\*(\d+))?", term)
        assert match is not None, term
        channels, kernel, stride, repeat = match.groups()
        layers += [(int(channels), int(kernel), int(stride))] * int(repeat or 1)
    return layers


def random_fairseq_hubert_state_dict(cfg: dict[str, Any], seed: int = 0, num_classes: int = 20) -> OrderedDict:
    """Random fairseq-keyed HuBERT weights that make a layer-11 parity test meaningful.

    With default initialisation, deep random post-LN stacks collapse every frame onto nearly one vector,
    and layer 10, 11 and 12 give the same k-means ids. Here attention is sharp (large q/k weights), the
    feed-forward block is strong, LayerNorm gains are log-normal and ``weight_g`` is random, so each
    layer visibly changes the features (checked by the tests, not assumed).
    """
    g = torch.Generator().manual_seed(seed)
    m = cfg["model"]
    dim, ffn, layers = m["encoder_embed_dim"], m["encoder_ffn_embed_dim"], m["encoder_layers"]
    k_pos, groups = m["conv_pos"], m["conv_pos_groups"]

    def randn(*shape: int, std: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    def gain(n: int, sigma: float = 0.6) -> torch.Tensor:
        return torch.exp(randn(n, std=sigma))

    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    in_ch = 1
    for i, (ch, k, _) in enumerate(conv_layers_of(cfg)):
        sd[f"feature_extractor.conv_layers.{i}.0.weight"] = randn(ch, in_ch, k, std=(2.0 / (in_ch * k)) ** 0.5)
        if i == 0:
            sd["feature_extractor.conv_layers.0.2.weight"] = gain(ch)
            sd["feature_extractor.conv_layers.0.2.bias"] = randn(ch, std=0.2)
        in_ch = ch
    sd["layer_norm.weight"] = gain(in_ch)
    sd["layer_norm.bias"] = randn(in_ch, std=0.1)
    sd["post_extract_proj.weight"] = randn(dim, in_ch, std=in_ch**-0.5)
    sd["post_extract_proj.bias"] = randn(dim, std=0.1)
    sd["mask_emb"] = torch.rand(dim, generator=g)
    sd["encoder.pos_conv.0.weight_g"] = 0.5 + torch.rand(1, 1, k_pos, generator=g) * 1.5
    sd["encoder.pos_conv.0.weight_v"] = randn(dim, dim // groups, k_pos)
    sd["encoder.pos_conv.0.bias"] = randn(dim, std=0.1)
    sd["encoder.layer_norm.weight"] = gain(dim)
    sd["encoder.layer_norm.bias"] = randn(dim, std=0.1)
    for i in range(layers):
        p = f"encoder.layers.{i}."
        sd[p + "self_attn.k_proj.weight"] = randn(dim, dim, std=5.0 * dim**-0.5)
        sd[p + "self_attn.k_proj.bias"] = randn(dim, std=0.1)
        sd[p + "self_attn.v_proj.weight"] = randn(dim, dim, std=0.1 * dim**-0.5)
        sd[p + "self_attn.v_proj.bias"] = randn(dim, std=0.1)
        sd[p + "self_attn.q_proj.weight"] = randn(dim, dim, std=5.0 * dim**-0.5)
        sd[p + "self_attn.q_proj.bias"] = randn(dim, std=0.1)
        sd[p + "self_attn.out_proj.weight"] = randn(dim, dim, std=dim**-0.5)
        sd[p + "self_attn.out_proj.bias"] = randn(dim, std=0.1)
        sd[p + "self_attn_layer_norm.weight"] = gain(dim)
        sd[p + "self_attn_layer_norm.bias"] = randn(dim, std=0.1)
        sd[p + "fc1.weight"] = randn(ffn, dim, std=2.0 * dim**-0.5)
        sd[p + "fc1.bias"] = randn(ffn, std=0.2)
        sd[p + "fc2.weight"] = randn(dim, ffn, std=4.0 * ffn**-0.5)
        sd[p + "fc2.bias"] = randn(dim, std=0.1)
        sd[p + "final_layer_norm.weight"] = gain(dim)
        sd[p + "final_layer_norm.bias"] = randn(dim, std=0.1)
    final_dim = m["final_dim"]
    sd["label_embs_concat"] = randn(num_classes, final_dim)
    sd["final_proj.weight"] = randn(final_dim, dim, std=dim**-0.5)
    sd["final_proj.bias"] = randn(final_dim, std=0.1)
    return sd


# --- the released checkpoint layout ----------------------------------------------------------------------


@contextmanager
def fake_fairseq_modules(*names: str):
    """Temporarily register empty ``fairseq...`` modules so that pickle can save classes claiming to live there.

    Yields a dict ``module name -> module``; everything is removed afterwards, so loading must cope without.
    """
    saved = {name: sys.modules.get(name) for name in names}
    modules = {}
    try:
        for name in names:
            module = types.ModuleType(name)
            sys.modules[name] = module
            modules[name] = module
        yield modules
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


def _fairseq_class(module: types.ModuleType, name: str) -> type:
    cls = type(name, (), {"__module__": module.__name__, "__qualname__": name})
    setattr(module, name, cls)
    return cls


def write_fairseq_hubert_checkpoint(
    path: str | os.PathLike[str],
    cfg: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    *,
    legacy_format: bool = False,
    use_args: bool = False,
) -> None:
    """Write a checkpoint in the layout fairseq's trainer saves (and the released mHuBERT has).

    ``task_state`` holds a pickled ``fairseq.data.dictionary.Dictionary`` and ``extra_state`` a fairseq meter
    object, so a plain ``torch.load`` without fairseq fails. ``use_args`` writes the pre-2021 variant
    (``cfg=None``, a flat ``argparse.Namespace`` in ``args``).
    """
    import argparse

    names = ("fairseq", "fairseq.data", "fairseq.data.dictionary", "fairseq.logging", "fairseq.logging.meters")
    with fake_fairseq_modules(*names) as modules:
        dictionary_cls = _fairseq_class(modules["fairseq.data.dictionary"], "Dictionary")
        meter_cls = _fairseq_class(modules["fairseq.logging.meters"], "AverageMeter")
        dictionary = dictionary_cls()
        symbols = ["<s>", "<pad>", "</s>", "<unk>"] + [str(i) for i in range(20)]
        dictionary.__dict__.update(
            bos_word="<s>",
            unk_word="<unk>",
            pad_word="<pad>",
            eos_word="</s>",
            symbols=symbols,
            count=[1] * len(symbols),
            indices={s: i for i, s in enumerate(symbols)},
            nspecial=4,
        )
        meter = meter_cls()
        meter.__dict__.update(round=3, val=1.5, sum=30.0, count=20)
        checkpoint = {
            "args": None,
            "cfg": cfg,
            "model": state_dict,
            "criterion": None,
            "optimizer_history": [
                {"criterion_name": "HubertCriterion", "optimizer_name": "FairseqAdam", "num_updates": 400000}
            ],
            "task_state": {"dictionaries": [dictionary]},
            "extra_state": {
                "epoch": 12,
                "best_loss": np.float64(2.5),
                "train_iterator": {"epoch": 12, "iterations_in_epoch": 0, "shuffle": True},
                "previous_training_time": 1234.5,
                "metrics": {"train": OrderedDict(loss=meter)},
            },
        }
        if use_args:
            flat = {**cfg["task"], **cfg["model"]}
            checkpoint["args"] = argparse.Namespace(**flat)
            checkpoint["cfg"] = None
        torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy_format)


# --- reference forward -----------------------------------------------------------------------------------


def _attention(
    x: torch.Tensor, sd: dict[str, torch.Tensor], p: str, heads: int, pad_mask: torch.Tensor
) -> torch.Tensor:
    """fairseq MultiheadAttention (self-attention, key padding mask), x ``[T, D]``."""
    steps, dim = x.shape
    head_dim = dim // heads
    q = F.linear(x, sd[p + "q_proj.weight"], sd[p + "q_proj.bias"]) * head_dim**-0.5
    k = F.linear(x, sd[p + "k_proj.weight"], sd[p + "k_proj.bias"])
    v = F.linear(x, sd[p + "v_proj.weight"], sd[p + "v_proj.bias"])
    q, k, v = (t.view(steps, heads, head_dim).transpose(0, 1) for t in (q, k, v))  # [H, T, d]
    scores = q @ k.transpose(1, 2)
    scores = scores.masked_fill(pad_mask[None, None, :], float("-inf"))
    out = scores.softmax(-1) @ v  # [H, T, d]
    out = out.transpose(0, 1).reshape(steps, dim)
    return F.linear(out, sd[p + "out_proj.weight"], sd[p + "out_proj.bias"])


def _ln(x: torch.Tensor, sd: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], LAYER_NORM_EPS)


def reference_hubert_layer(
    state_dict: dict[str, torch.Tensor],
    cfg: dict[str, Any],
    wave: torch.Tensor | np.ndarray,
    layer: int = 11,
    *,
    final_layer_norm: bool = True,
    pre_ln: bool = False,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """fairseq ``HubertModel.extract_features(wave, output_layer=layer)`` in float32: ``[T, D]``.

    Follows section B: conv stack (GroupNorm on conv 0 only), LayerNorm + projection, weight-normed
    positional conv (norm over dims 0 and 1 for each tap) with SamePad, encoder LayerNorm *before* the
    layers, padding to an even length with a key-padding mask, post-LN layers, and the loop stopping after
    layer index ``layer - 1`` with that layer's full output (final LayerNorm included).

    ``final_layer_norm=False`` and ``pre_ln=True`` compute deliberately *wrong* variants, used by the tests to
    show that the parity check can fail. ``dtype=torch.float64`` gives a near-exact answer for ill-conditioned
    inputs (the samples are still rounded to float32 first, as the model sees them).
    """
    sd = {k: v.to(dtype) for k, v in state_dict.items()}
    m = cfg["model"]
    x = torch.as_tensor(np.asarray(wave, dtype=np.float32)).to(dtype)[None, None, :]  # [1, 1, N]
    for i, (ch, _k, stride) in enumerate(conv_layers_of(cfg)):
        x = F.conv1d(x, sd[f"feature_extractor.conv_layers.{i}.0.weight"], stride=stride)
        if i == 0:
            gn_w, gn_b = sd["feature_extractor.conv_layers.0.2.weight"], sd["feature_extractor.conv_layers.0.2.bias"]
            x = F.group_norm(x, ch, gn_w, gn_b, LAYER_NORM_EPS)
        x = F.gelu(x)
    x = x[0].t()  # [T, C]
    x = _ln(x, sd, "layer_norm")
    x = F.linear(x, sd["post_extract_proj.weight"], sd["post_extract_proj.bias"])  # [T, D]

    g, v = sd["encoder.pos_conv.0.weight_g"], sd["encoder.pos_conv.0.weight_v"]
    weight = g * v / v.norm(dim=(0, 1), keepdim=True)  # weight_norm(dim=2): one norm per kernel tap
    k_pos = m["conv_pos"]
    pos = F.conv1d(x.t()[None], weight, sd["encoder.pos_conv.0.bias"], padding=k_pos // 2, groups=m["conv_pos_groups"])
    if k_pos % 2 == 0:
        pos = pos[..., :-1]  # SamePad
    x = x + F.gelu(pos[0]).t()
    if not pre_ln:
        x = _ln(x, sd, "encoder.layer_norm")

    steps = x.shape[0]
    pad = (-steps) % m.get("required_seq_len_multiple", 2)
    x = torch.cat([x, x.new_zeros(pad, x.shape[1])]) if pad else x
    pad_mask = torch.zeros(x.shape[0], dtype=torch.bool)  # True = padding
    if pad:
        pad_mask[-pad:] = True

    target = layer - 1
    for i in range(m["encoder_layers"]):
        p = f"encoder.layers.{i}."
        if pre_ln:
            x = x + _attention(
                _ln(x, sd, p + "self_attn_layer_norm"), sd, p + "self_attn.", m["encoder_attention_heads"], pad_mask
            )
            h = _ln(x, sd, p + "final_layer_norm")
            x = x + F.linear(
                F.gelu(F.linear(h, sd[p + "fc1.weight"], sd[p + "fc1.bias"])), sd[p + "fc2.weight"], sd[p + "fc2.bias"]
            )
        else:
            x = _ln(
                x + _attention(x, sd, p + "self_attn.", m["encoder_attention_heads"], pad_mask),
                sd,
                p + "self_attn_layer_norm",
            )
            h = F.linear(
                F.gelu(F.linear(x, sd[p + "fc1.weight"], sd[p + "fc1.bias"])), sd[p + "fc2.weight"], sd[p + "fc2.bias"]
            )
            x = x + h
            if final_layer_norm or i != target:
                x = _ln(x, sd, p + "final_layer_norm")
        if i == target:
            break
    return x[:steps].float()


# --- k-means ---------------------------------------------------------------------------------------------


def write_sklearn_kmeans(
    path: str | os.PathLike[str], centers: np.ndarray, *, minibatch: bool = False, compress: int = 0
) -> Any:
    """``joblib.dump`` a genuine fitted scikit-learn (MiniBatch)KMeans whose ``cluster_centers_`` are ``centers``.

    Returns the estimator (for ``predict`` cross-checks).
    """
    import joblib
    from sklearn.cluster import KMeans, MiniBatchKMeans

    centers = np.asarray(centers)
    k = centers.shape[0]
    if minibatch:
        km = MiniBatchKMeans(n_clusters=k, init=centers, n_init=1, max_iter=1, batch_size=k, random_state=0)
    else:
        km = KMeans(n_clusters=k, init=centers, n_init=1, max_iter=1, random_state=0)
    km.fit(centers)
    km.cluster_centers_ = centers.copy()  # exactly the given values and dtype, whatever one fit step did
    joblib.dump(km, path, compress=compress)
    return km


def numpy_assign(features: np.ndarray | torch.Tensor, centers: np.ndarray) -> np.ndarray:
    """The release's assignment (SpeechGPT ``ApplyKmeans``): ``argmin |x|^2 - 2 x.C + |C|^2``, first index on ties.

    ``C`` and ``|C|^2`` are computed in the centres' dtype, then cast to the features' dtype (float32).
    """
    x = np.asarray(features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else features)
    c = np.asarray(centers).T  # [D, K]
    c_norm = (c**2).sum(0, keepdims=True)
    c, c_norm = c.astype(x.dtype), c_norm.astype(x.dtype)
    dist = (x**2).sum(1, keepdims=True) - 2 * x @ c + c_norm
    return dist.argmin(1)
