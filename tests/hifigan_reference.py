"""Reference math for the released unit HiFi-GAN, written from ``FAIRSEQ_COMPAT.md`` section A.

Independent of ``speechgpt.vocoder`` and ``speechgpt.convert``: it works directly on the fairseq-keyed state dict
(``dict.weight``, ``dur_predictor.*``, ``conv_pre.weight_g``/``weight_v``, ``ups.i.*``, ``resblocks.j.convs{1,2}.m.*``,
``conv_post.*``) with functional torch ops, and folds weight norm itself. Two knobs exist only so tests can show
that the parity tolerance catches a mistake: ``final_slope`` (the release uses F.leaky_relu's default 0.01 before
``conv_post``) and ``fold_dim`` (the release normalises over every dim but 0).

:func:`random_released_state_dict` builds the released key set (names, order and shapes of
``codehifigan_g_00500000_keys.txt`` for :data:`RELEASED_FAIRSEQ_CONFIG`) with random weights chosen so that the
waveform is neither silent nor saturated and predicted durations spread over about 1..18 frames, some clamped to 1.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F

RELEASED_FAIRSEQ_CONFIG: dict[str, Any] = {
    "resblock": "1",
    "upsample_rates": [5, 4, 4, 2, 2],
    "upsample_kernel_sizes": [11, 8, 8, 4, 4],
    "upsample_initial_channel": 512,
    "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "num_embeddings": 1000,
    "embedding_dim": 128,
    "model_in_dim": 128,
    "f0": False,
    "code_hop_size": 320,
    "sampling_rate": 16000,
    "dur_prediction_weight": 1.0,
    "dur_predictor_params": {
        "encoder_embed_dim": 128,
        "var_pred_hidden_dim": 128,
        "var_pred_kernel_size": 3,
        "var_pred_dropout": 0.5,
    },
    # training-only fields that the model never reads
    "segment_size": 8960,
    "num_mels": 80,
    "n_fft": 1024,
    "hop_size": 256,
    "win_size": 1024,
    "fmin": 0,
    "fmax": 8000,
}
"""The released vocoder's config.json as voidful/asrp gives it (FAIRSEQ_COMPAT.md section A)."""

TINY_FAIRSEQ_CONFIG: dict[str, Any] = {
    **RELEASED_FAIRSEQ_CONFIG,
    "upsample_initial_channel": 32,
    "num_embeddings": 50,
    "embedding_dim": 16,
    "model_in_dim": 16,
    "dur_predictor_params": {
        "encoder_embed_dim": 16,
        "var_pred_hidden_dim": 16,
        "var_pred_kernel_size": 3,
        "var_pred_dropout": 0.5,
    },
}
"""Released rates, kernels and dilations with tiny widths (32 initial channels, 16-dim embedding, 50 units)."""

DURATION_BIAS = 1.5
"""Duration-predictor output bias: log(1 + frames) centred near 1.5, i.e. about 3.5 frames."""
DURATION_SPREAD = 0.55
"""Standard deviation of the predicted log(1 + frames) around the bias (spreads durations over ~1..18)."""
LRELU_SLOPE = 0.1
RELEASED_FINAL_SLOPE = 0.01
_GAINS = {"conv_pre": (0.5, 1.5), "ups": (1.2, 2.2), "resblocks": (0.4, 1.2), "conv_post": (1.0, 2.0)}


def released_key_shapes(cfg: dict[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of the released generator state dict for a fairseq config, in the file's order."""
    emb, units = cfg["embedding_dim"], cfg["num_embeddings"]
    hidden = cfg["dur_predictor_params"]["var_pred_hidden_dim"]
    k_dur = cfg["dur_predictor_params"]["var_pred_kernel_size"]
    keys: list[tuple[str, tuple[int, ...]]] = [("dict.weight", (units, emb))]
    for conv, ln, c_in in (("conv1", "ln1", emb), ("conv2", "ln2", hidden)):
        keys += [
            (f"dur_predictor.{conv}.0.weight", (hidden, c_in, k_dur)),
            (f"dur_predictor.{conv}.0.bias", (hidden,)),
            (f"dur_predictor.{ln}.weight", (hidden,)),
            (f"dur_predictor.{ln}.bias", (hidden,)),
        ]
    keys += [("dur_predictor.proj.weight", (1, hidden)), ("dur_predictor.proj.bias", (1,))]

    def normed(name: str, out_shape_first: int, v_shape: tuple[int, ...], bias: int) -> None:
        keys.extend(
            [(f"{name}.bias", (bias,)), (f"{name}.weight_g", (out_shape_first, 1, 1)), (f"{name}.weight_v", v_shape)]
        )

    c0 = cfg["upsample_initial_channel"]
    normed("conv_pre", c0, (c0, cfg["model_in_dim"], 7), c0)
    for i, k in enumerate(cfg["upsample_kernel_sizes"]):
        c_in, c_out = c0 >> i, c0 >> (i + 1)
        normed(f"ups.{i}", c_in, (c_in, c_out, k), c_out)
    n = 0
    for i in range(len(cfg["upsample_rates"])):
        ch = c0 >> (i + 1)
        for k, dilations in zip(cfg["resblock_kernel_sizes"], cfg["resblock_dilation_sizes"], strict=True):
            for convs in ("convs1", "convs2"):
                for m in range(len(dilations)):
                    normed(f"resblocks.{n}.{convs}.{m}", ch, (ch, ch, k), ch)
            n += 1
    last = c0 >> len(cfg["upsample_rates"])
    normed("conv_post", 1, (1, last, 7), 1)
    return keys


def random_released_state_dict(cfg: dict[str, Any], seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    """Random fp32 weights in the released format (old-style weight norm), deterministic from ``seed``."""
    gen = torch.Generator().manual_seed(seed)

    def normal(shape: tuple[int, ...], std: float = 1.0) -> torch.Tensor:
        return torch.randn(shape, generator=gen) * std

    def uniform(shape: tuple[int, ...], low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(shape, generator=gen)

    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, shape in released_key_shapes(cfg):
        if name == "dict.weight":
            tensor = normal(shape)
        elif name == "dur_predictor.proj.weight":
            tensor = normal(shape, DURATION_SPREAD / math.sqrt(shape[1]))
        elif name == "dur_predictor.proj.bias":
            tensor = torch.full(shape, DURATION_BIAS)
        elif name.startswith("dur_predictor.ln") and name.endswith("weight"):
            tensor = torch.exp(normal(shape, 0.2))  # log-normal gains around 1
        elif name.startswith("dur_predictor.conv") and name.endswith("weight"):
            tensor = normal(shape, 1.0 / math.sqrt(shape[1] * shape[2]))
        elif name.endswith("weight_g"):
            # Gains that keep the signal alive through five stages without saturating tanh: transposed convs
            # spread each input over rate outputs and need more gain than the residual convs.
            tensor = uniform(shape, *_GAINS[name.split(".")[0]])
        elif name.endswith("weight_v"):
            tensor = normal(shape)
        else:  # biases
            tensor = normal(shape, 0.05)
        state[name] = tensor
    return state


def fold(g: torch.Tensor, v: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Weight norm ``g * v / ||v||``, the norm over every dim except ``dim`` (the release: 0)."""
    moved = v.transpose(0, dim).flatten(1).norm(dim=1)
    shape = [1] * v.dim()
    shape[dim] = v.shape[dim]
    return g * v / moved.view(shape)


def _weight(sd: dict[str, torch.Tensor], name: str, fold_dim: int) -> torch.Tensor:
    return fold(sd[f"{name}.weight_g"], sd[f"{name}.weight_v"], fold_dim)


def reference_log_durations(sd: dict[str, torch.Tensor], cfg: dict[str, Any], units: list[int]) -> torch.Tensor:
    """``log_dur [T]`` of the duration predictor, eval mode (fastspeech2 VariancePredictor)."""
    hidden = cfg["dur_predictor_params"]["var_pred_hidden_dim"]
    x = F.embedding(torch.tensor([units]), sd["dict.weight"]).transpose(1, 2)  # [1, E, T]
    h = F.relu(F.conv1d(x, sd["dur_predictor.conv1.0.weight"], sd["dur_predictor.conv1.0.bias"], padding=1))
    h = F.layer_norm(h.transpose(1, 2), (hidden,), sd["dur_predictor.ln1.weight"], sd["dur_predictor.ln1.bias"], 1e-5)
    h = F.relu(
        F.conv1d(h.transpose(1, 2), sd["dur_predictor.conv2.0.weight"], sd["dur_predictor.conv2.0.bias"], padding=1)
    )
    h = F.layer_norm(h.transpose(1, 2), (hidden,), sd["dur_predictor.ln2.weight"], sd["dur_predictor.ln2.bias"], 1e-5)
    return F.linear(h, sd["dur_predictor.proj.weight"], sd["dur_predictor.proj.bias"])[0, :, 0]


def reference_durations(sd: dict[str, torch.Tensor], cfg: dict[str, Any], units: list[int]) -> torch.Tensor:
    return torch.clamp(torch.round(torch.exp(reference_log_durations(sd, cfg, units)) - 1).long(), min=1)


def duration_rounding_margin(sd: dict[str, torch.Tensor], cfg: dict[str, Any], units: list[int]) -> float:
    """Smallest distance of ``exp(log_dur) - 1`` to a rounding boundary (k + 0.5) among the unclamped units."""
    raw = torch.exp(reference_log_durations(sd, cfg, units).double()) - 1
    unclamped = raw[raw > 1.5]  # below 1.5 the value is clamped to 1 whatever rounding does
    if unclamped.numel() == 0:
        return math.inf
    return float((unclamped - torch.floor(unclamped) - 0.5).abs().min())


def reference_generator(
    sd: dict[str, torch.Tensor],
    cfg: dict[str, Any],
    frames: list[int],
    *,
    final_slope: float = RELEASED_FINAL_SLOPE,
    fold_dim: int = 0,
) -> torch.Tensor:
    """Waveform ``[320 * F]`` for frame-level unit ids (HiFi-GAN generator on the code embeddings)."""
    x = F.embedding(torch.tensor([frames]), sd["dict.weight"]).transpose(1, 2)
    x = F.conv1d(x, _weight(sd, "conv_pre", fold_dim), sd["conv_pre.bias"], padding=3)
    kernels, dilation_sets = cfg["resblock_kernel_sizes"], cfg["resblock_dilation_sizes"]
    for i, (u, k) in enumerate(zip(cfg["upsample_rates"], cfg["upsample_kernel_sizes"], strict=True)):
        x = F.leaky_relu(x, LRELU_SLOPE)
        x = F.conv_transpose1d(
            x, _weight(sd, f"ups.{i}", fold_dim), sd[f"ups.{i}.bias"], stride=u, padding=(k - u) // 2
        )
        total = torch.zeros_like(x)
        for j, (rk, dilations) in enumerate(zip(kernels, dilation_sets, strict=True)):
            n = i * len(kernels) + j
            y = x
            for m, d in enumerate(dilations):
                c1, c2 = f"resblocks.{n}.convs1.{m}", f"resblocks.{n}.convs2.{m}"
                t = F.conv1d(
                    F.leaky_relu(y, LRELU_SLOPE),
                    _weight(sd, c1, fold_dim),
                    sd[f"{c1}.bias"],
                    dilation=d,
                    padding=(rk * d - d) // 2,
                )
                t = F.conv1d(
                    F.leaky_relu(t, LRELU_SLOPE), _weight(sd, c2, fold_dim), sd[f"{c2}.bias"], padding=(rk - 1) // 2
                )
                y = y + t
            total = total + y
        x = total / len(kernels)
    x = F.leaky_relu(x, final_slope)
    x = F.conv1d(x, _weight(sd, "conv_post", fold_dim), sd["conv_post.bias"], padding=3)
    return torch.tanh(x).reshape(-1)


@torch.no_grad()
def reference_synthesize(
    sd: dict[str, torch.Tensor],
    cfg: dict[str, Any],
    units: list[int],
    dur_prediction: bool = True,
    **generator_knobs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(waveform, durations)`` as the released vocoder computes them for one unit sequence."""
    units = [u for u in units if u >= 0]
    durations = reference_durations(sd, cfg, units) if dur_prediction else torch.ones(len(units), dtype=torch.long)
    frames = torch.repeat_interleave(torch.tensor(units), durations).tolist()
    return reference_generator(sd, cfg, frames, **generator_knobs), durations
