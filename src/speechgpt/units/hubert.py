"""HuBERT frame features (the paper's speech tokenizer front end), fast on CPU.

:class:`HubertFeatures` wraps a Hugging Face ``HubertModel`` (loaded from a HF folder or converted from the
released fairseq mHuBERT checkpoint) and returns the output of transformer layer ``layer`` (11 for
SpeechGPT): the same tensor as HF ``hidden_states[layer]`` and fairseq ``extract_features(output_layer=layer)``.

The model's weights are used through our own inference loop rather than ``HubertModel.forward``, because
feature extraction is the costliest step of encoding audio and the generic forward wastes a lot on CPU:

* only the layers up to ``layer`` run, and no hidden states are collected;
* the first convolution's GroupNorm (a per-channel normalisation over *all* time steps) is folded into that
  convolution's weights from the exact mean and covariance of the 10-sample input windows (computed in
  float64), so the 512 x T activation is written once instead of being normalised in extra passes;
* the convolutions then run time-major as matrix products in blocks of about 2 s, which keeps the
  activations in cache, and each activation is fused into its matrix product;
* the positional convolution's weight norm is folded once at construction;
* attention uses PyTorch's fused scaled-dot-product kernel without a mask; on CPU the matrix products use
  oneDNN with fused bias/GELU/residual epilogues (plain PyTorch ops elsewhere, same results).

Audio longer than :data:`MAX_CHUNK_SAMPLES` (100 s) is cut into 100-s chunks processed separately and the
features concatenated, as the released SpeechGPT tokenizer does. No waveform normalisation is applied
(the release has ``task.normalize=False``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import HubertModel

from speechgpt.audio import SAMPLE_RATE
from speechgpt.devices import resolve_device

__all__ = ["DEFAULT_LAYER", "MAX_CHUNK_SAMPLES", "HubertFeatures"]

logger = logging.getLogger(__name__)

DEFAULT_LAYER = 11
"""Transformer layer whose output SpeechGPT quantises (fairseq ``output_layer=11``, HF ``hidden_states[11]``)."""
MAX_CHUNK_SAMPLES = 1_600_000
"""Longest piece of audio run through the model at once (100 s at 16 kHz), as in the release."""
FRONT_END_BLOCK_FRAMES = 100
"""Output frames per block of the convolutional front end (2 s). Measured on 2 CPU cores: ~15% faster than
whole-utterance convolutions at 60 s of audio, because a block's activations stay in cache; it also bounds
the front end's memory to a few MB whatever the length."""


@dataclass
class _Norm:
    weight: torch.Tensor
    bias: torch.Tensor
    eps: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


@dataclass
class _Conv:
    weight: torch.Tensor  # [C_out, kernel * C_in], tap-major: column j * C_in + c is tap j of input channel c
    bias: torch.Tensor | None
    kernel: int
    stride: int
    norm: _Norm | None  # per-frame LayerNorm over channels ("layer" feature-extractor norm)


@dataclass
class _Layer:
    qkv_weight: torch.Tensor  # [3D, D]: q, k, v projections stacked
    qkv_bias: torch.Tensor
    out_weight: torch.Tensor
    out_bias: torch.Tensor
    attn_norm: _Norm
    fc1_weight: torch.Tensor
    fc1_bias: torch.Tensor
    fc2_weight: torch.Tensor
    fc2_bias: torch.Tensor
    final_norm: _Norm


class _TorchOps:
    """Plain PyTorch ops: any device and dtype."""

    def linear(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, gelu: bool = False) -> torch.Tensor:
        y = F.linear(x, w, b)
        return F.gelu(y) if gelu else y

    def linear_add(self, x: torch.Tensor, residual: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.addmm(b, x.reshape(-1, x.shape[-1]), w.t()).view(residual.shape).add_(residual)

    def pos_conv(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, groups: int) -> torch.Tensor:
        """``gelu(conv(x))`` for x ``[B, T, D]`` with "same" padding and the last frame dropped for even kernels."""
        k = w.shape[-1]
        y = F.conv1d(x.transpose(1, 2), w, b, padding=k // 2, groups=groups)[..., : x.shape[1]]
        return F.gelu(y).transpose(1, 2)


class _OneDnnOps(_TorchOps):
    """oneDNN kernels with fused epilogues (CPU, float32): the same math; measured 1.1-1.5x faster than MKL here."""

    def __init__(self, pos_weight: torch.Tensor) -> None:
        # channels-last 2-D weight [D, D/groups, 1, K] for oneDNN's grouped convolution
        self.pos_weight_2d = pos_weight.unsqueeze(2).contiguous(memory_format=torch.channels_last)

    def linear(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, gelu: bool = False) -> torch.Tensor:
        if gelu:
            return torch.ops.mkldnn._linear_pointwise(x, w, b, "gelu", [], "none")  # "none": exact erf GELU
        return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")

    def linear_add(self, x: torch.Tensor, residual: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, w, b, "add")

    def pos_conv(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, groups: int) -> torch.Tensor:
        k = w.shape[-1]
        # [B, T, D] viewed as [B, D, 1, T] is already channels-last: no copy.
        y = torch.ops.mkldnn._convolution_pointwise(
            x.transpose(1, 2).unsqueeze(2),
            self.pos_weight_2d,
            b,
            [0, k // 2],
            [1, 1],
            [1, 1],
            groups,
            "gelu",
            [],
            "none",
        )
        return y[:, :, 0, : x.shape[1]].transpose(1, 2)


def _onednn_works(pos_weight: torch.Tensor) -> bool:
    """Probe the oneDNN ops once on tiny tensors (they are absent from some builds)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        ops = _OneDnnOps(pos_weight[:, :, :3].contiguous())
        x = torch.zeros(1, 4, pos_weight.shape[0])
        w = torch.zeros(2, pos_weight.shape[0])
        ops.linear(x, w, None, gelu=True)
        ops.linear_add(x, torch.zeros(1, 4, 2), w, torch.zeros(2))
        ops.pos_conv(
            x, pos_weight[:, :, :3], torch.zeros(pos_weight.shape[0]), pos_weight.shape[0] // pos_weight.shape[1]
        )
    except (RuntimeError, AttributeError, NotImplementedError) as e:
        logger.info("oneDNN kernels unavailable (%s); using plain PyTorch ops", e)
        return False
    return True


def _check_supported(model: HubertModel) -> None:
    config = model.config
    problems = []
    if config.feat_extract_norm not in ("group", "layer"):
        problems.append(f"feat_extract_norm = {config.feat_extract_norm!r}, expected 'group' or 'layer'")
    if config.feat_extract_activation != "gelu":
        problems.append(f"feat_extract_activation = {config.feat_extract_activation!r}, expected 'gelu'")
    if config.hidden_act != "gelu":
        problems.append(f"hidden_act = {config.hidden_act!r}, expected 'gelu'")
    if getattr(config, "conv_pos_batch_norm", False):
        problems.append("conv_pos_batch_norm = True, expected False (weight-normed positional convolution)")
    if problems:
        raise ValueError("unsupported HuBERT config: " + "; ".join(problems))


class HubertFeatures:
    """Frame features from a HuBERT model: the output of transformer layer ``layer``, 50 frames per second.

    Implements :class:`speechgpt.units.base.FeatureExtractor`. The weights are read from ``model`` once, at
    construction (the weight norm folded, projections stacked): build a new instance after changing them.

    Args:
        model: A Hugging Face ``HubertModel`` (post-LN like the release, or pre-LN "stable layer norm").
        layer: Which transformer layer's output to return, 1..num_hidden_layers (``hidden_states[layer]``).
        device: Where to run; ``None`` keeps the model where it is (CPU after loading).
        use_onednn: Use oneDNN fused kernels (CPU float32 only); ``None`` picks them when available.

    Raises:
        ValueError: for a layer out of range or a model configuration this loop does not implement.
    """

    def __init__(
        self,
        model: HubertModel,
        layer: int = DEFAULT_LAYER,
        device: str | torch.device | None = None,
        *,
        use_onednn: bool | None = None,
    ) -> None:
        if not isinstance(model, HubertModel):
            raise TypeError(f"model must be a transformers.HubertModel, got {type(model).__name__}")
        _check_supported(model)
        num_layers = model.config.num_hidden_layers
        if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= num_layers:
            raise ValueError(f"layer must be an int in 1..{num_layers} (the model's layers), got {layer!r}")
        if device is not None:
            model = model.to(device)
        self.model = model.eval()
        self.layer = layer
        self.dim = int(model.config.hidden_size)
        self.hop_length = math.prod(model.config.conv_stride)
        self.frame_rate = SAMPLE_RATE / self.hop_length
        self._prepare()
        param = next(model.parameters())
        cpu_fp32 = param.device.type == "cpu" and param.dtype == torch.float32
        if use_onednn is None:
            use_onednn = cpu_fp32 and _onednn_works(self._pos_weight)
        elif use_onednn and not cpu_fp32:
            raise ValueError(f"use_onednn=True needs a float32 model on CPU, got {param.dtype} on {param.device}")
        self.uses_onednn = bool(use_onednn)
        self._ops = _OneDnnOps(self._pos_weight) if use_onednn else _TorchOps()

    # --- construction --------------------------------------------------------------------------------------

    @torch.no_grad()
    def _prepare(self) -> None:
        """Read the weights once into the layouts the inference loop uses."""
        model, config = self.model, self.model.config
        self._device = next(model.parameters()).device
        self._dtype = next(model.parameters()).dtype
        self._group_norm = config.feat_extract_norm == "group"
        convs = []
        for conv_layer in model.feature_extractor.conv_layers:
            conv = conv_layer.conv
            out_ch, in_ch, kernel = conv.weight.shape
            weight = conv.weight.detach().permute(0, 2, 1).reshape(out_ch, kernel * in_ch).contiguous()
            bias = None if conv.bias is None else conv.bias.detach()
            norm = None
            if isinstance(getattr(conv_layer, "layer_norm", None), torch.nn.LayerNorm):
                ln = conv_layer.layer_norm
                norm = _Norm(ln.weight.detach(), ln.bias.detach(), ln.eps)
            convs.append(_Conv(weight, bias, kernel, conv.stride[0], norm))
        self._convs = convs
        if self._group_norm:
            gn = model.feature_extractor.conv_layers[0].layer_norm
            self._gn = (gn.weight.detach(), gn.bias.detach(), float(gn.eps))
        # Geometry of the front end after conv 0, in conv-0 frames: a block of n output frames needs
        # (n - 1) * _block_step + _block_span of them.
        self._block_step = math.prod(c.stride for c in convs[1:])
        span, step = 1, 1
        for c in convs[1:]:
            span += (c.kernel - 1) * step
            step *= c.stride
        self._block_span = span
        self.min_samples = convs[0].kernel + (span - 1) * convs[0].stride
        projection = model.feature_projection
        self._proj_norm = (
            _Norm(projection.layer_norm.weight.detach(), projection.layer_norm.bias.detach(), projection.layer_norm.eps)
            if config.feat_proj_layer_norm
            else None
        )
        self._proj = (projection.projection.weight.detach(), projection.projection.bias.detach())
        encoder = model.encoder
        pos = encoder.pos_conv_embed.conv
        self._pos_weight = pos.weight.detach().clone().contiguous()  # weight norm folded: g * v / ||v||
        self._pos_bias = pos.bias.detach()
        self._pos_groups = pos.groups
        self._encoder_norm = _Norm(
            encoder.layer_norm.weight.detach(), encoder.layer_norm.bias.detach(), encoder.layer_norm.eps
        )
        self._pre_ln = bool(config.do_stable_layer_norm)
        self._heads = config.num_attention_heads
        layers = []
        for block in encoder.layers[: self.layer]:
            attn, ff = block.attention, block.feed_forward
            layers.append(
                _Layer(
                    qkv_weight=torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).detach(),
                    qkv_bias=torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]).detach(),
                    out_weight=attn.out_proj.weight.detach(),
                    out_bias=attn.out_proj.bias.detach(),
                    attn_norm=_Norm(
                        block.layer_norm.weight.detach(), block.layer_norm.bias.detach(), block.layer_norm.eps
                    ),
                    fc1_weight=ff.intermediate_dense.weight.detach(),
                    fc1_bias=ff.intermediate_dense.bias.detach(),
                    fc2_weight=ff.output_dense.weight.detach(),
                    fc2_bias=ff.output_dense.bias.detach(),
                    final_norm=_Norm(
                        block.final_layer_norm.weight.detach(),
                        block.final_layer_norm.bias.detach(),
                        block.final_layer_norm.eps,
                    ),
                )
            )
        self._layers = layers

    @classmethod
    def from_pretrained(
        cls, hf_dir: str | os.PathLike[str], layer: int = DEFAULT_LAYER, device: str | torch.device | None = None
    ) -> HubertFeatures:
        """Load a Hugging Face HuBERT folder (``config.json`` + safetensors), never downloading.

        ``device=None`` means CUDA when present, else the CPU.

        Raises:
            FileNotFoundError: if the folder or its ``config.json`` is missing.
        """
        hf_dir = Path(hf_dir)
        if not (hf_dir / "config.json").is_file():
            raise FileNotFoundError(f"{hf_dir}: not a Hugging Face model folder (no config.json)")
        model = HubertModel.from_pretrained(str(hf_dir), local_files_only=True)
        return cls(model, layer=layer, device=resolve_device(device))

    @classmethod
    def from_fairseq(
        cls,
        path: str | os.PathLike[str],
        layer: int = DEFAULT_LAYER,
        device: str | torch.device | None = None,
        *,
        verify_sha256: bool = False,
    ) -> HubertFeatures:
        """Load a fairseq HuBERT checkpoint (the released ``mhubert_base_vp_en_es_fr_it3.pt``) without fairseq.

        ``device=None`` means CUDA when present, else the CPU.

        Raises:
            FileNotFoundError: if ``path`` is not a file.
            ValueError: if it is not a supported fairseq HuBERT checkpoint (see
                :func:`speechgpt.convert.fairseq_hubert.load_fairseq_hubert`).
        """
        from speechgpt.convert.fairseq_hubert import load_fairseq_hubert

        config, state_dict = load_fairseq_hubert(path, verify_sha256=verify_sha256)
        with torch.device("meta"):
            model = HubertModel(config)
        model.load_state_dict(state_dict, strict=True, assign=True)
        left_on_meta = [name for name, t in model.state_dict().items() if t.is_meta]
        if left_on_meta:  # every tensor must have come from the checkpoint
            raise RuntimeError(f"{path}: tensors not loaded from the checkpoint: {left_on_meta}")
        return cls(model, layer=layer, device=resolve_device(device))

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], layer: int = DEFAULT_LAYER, device: str | torch.device | None = None
    ) -> HubertFeatures:
        """Load from a Hugging Face folder (a directory) or a fairseq checkpoint (a file).

        Raises:
            FileNotFoundError: if ``path`` does not exist.
        """
        path = Path(path)
        if path.is_dir():
            return cls.from_pretrained(path, layer=layer, device=device)
        if path.is_file():
            return cls.from_fairseq(path, layer=layer, device=device)
        raise FileNotFoundError(f"HuBERT model not found: {path} (expected a Hugging Face folder or a fairseq .pt)")

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write the whole model (all layers) as a Hugging Face folder with safetensors weights."""
        directory = Path(directory)
        self.model.save_pretrained(directory)
        return directory

    def __repr__(self) -> str:
        config = self.model.config
        return (
            f"HubertFeatures(layer={self.layer}, dim={self.dim}, layers={config.num_hidden_layers}, "
            f"device={self._device}, onednn={self.uses_onednn})"
        )

    # --- input checks --------------------------------------------------------------------------------------

    def _as_wave(self, wave: torch.Tensor | np.ndarray, name: str = "wave") -> torch.Tensor:
        if isinstance(wave, np.ndarray):
            if not np.issubdtype(wave.dtype, np.floating):
                raise ValueError(f"{name} has dtype {wave.dtype}; expected float samples in [-1, 1]")
            wave = torch.from_numpy(np.ascontiguousarray(wave))
        elif isinstance(wave, torch.Tensor):
            if not wave.is_floating_point():
                raise ValueError(f"{name} has dtype {wave.dtype}; expected float samples in [-1, 1]")
        else:
            raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(wave).__name__}")
        if wave.dim() != 1:
            raise ValueError(f"{name} must be 1-D (mono 16 kHz samples), got shape {tuple(wave.shape)}")
        if wave.shape[0] < self.min_samples:
            raise ValueError(
                f"{name} is too short: {wave.shape[0]} samples, at least {self.min_samples} "
                f"({1000 * self.min_samples / SAMPLE_RATE:g} ms, one analysis window) needed"
            )
        if not bool(torch.isfinite(wave).all()):
            raise ValueError(f"{name} contains NaN or infinite samples")
        return wave.to(device=self._device, dtype=self._dtype)

    # --- inference -----------------------------------------------------------------------------------------

    @torch.inference_mode()
    def __call__(self, wave: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Features of one 16 kHz mono waveform: float32 ``[T, D]`` on CPU.

        Raises:
            ValueError: if the waveform is not 1-D float, contains NaN/Inf, or is shorter than one window.
        """
        wave = self._as_wave(wave)
        return self._chunked(wave).float().cpu()

    @torch.inference_mode()
    def batch(self, waves: Sequence[torch.Tensor | np.ndarray], max_batch_size: int = 8) -> list[torch.Tensor]:
        """Features of several waveforms, equal to calling the extractor on each one.

        Waveforms of equal length run together (up to ``max_batch_size`` at a time); others run one by one.
        Padding is never used: the first convolution's GroupNorm normalises over the whole utterance, so
        padding would change every frame.

        Raises:
            ValueError: as :meth:`__call__`, naming the offending item.
        """
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        prepared = [self._as_wave(w, f"waves[{i}]") for i, w in enumerate(waves)]
        results: list[torch.Tensor | None] = [None] * len(prepared)
        by_length: dict[int, list[int]] = {}
        for index, wave in enumerate(prepared):
            if wave.shape[0] > MAX_CHUNK_SAMPLES:
                results[index] = self._chunked(wave).float().cpu()
            else:
                by_length.setdefault(wave.shape[0], []).append(index)
        for indices in by_length.values():
            for start in range(0, len(indices), max_batch_size):
                group = indices[start : start + max_batch_size]
                features = self._forward(torch.stack([prepared[i] for i in group])).float().cpu()
                for row, index in enumerate(group):
                    results[index] = features[row]
        return [r for r in results if r is not None]

    def _chunked(self, wave: torch.Tensor) -> torch.Tensor:
        """Run 100-s chunks separately and concatenate, like the release (a trailing piece < 1 window is dropped)."""
        chunk = MAX_CHUNK_SAMPLES
        if wave.shape[0] <= chunk:
            return self._forward(wave[None])[0]
        pieces = []
        for start in range(0, wave.shape[0], chunk):
            piece = wave[start : start + chunk]
            if piece.shape[0] < self.min_samples:
                logger.debug("dropping the last %d samples: shorter than one analysis window", piece.shape[0])
                continue
            pieces.append(self._forward(piece[None])[0])
        return torch.cat(pieces)

    def _forward(self, waves: torch.Tensor) -> torch.Tensor:
        """``[B, N]`` equal-length waveforms -> layer output ``[B, T, D]``."""
        x = torch.stack([self._front_end(w) for w in waves])  # [B, T, C]
        if self._proj_norm is not None:
            x = self._proj_norm(x)
        x = self._ops.linear(x, *self._proj)  # [B, T, D]
        x = x + self._ops.pos_conv(x, self._pos_weight, self._pos_bias, self._pos_groups)
        if not self._pre_ln:
            x = self._encoder_norm(x)
        for layer in self._layers:
            x = self._layer(x, layer)
        return x

    def _layer(self, x: torch.Tensor, p: _Layer) -> torch.Tensor:
        ops = self._ops
        batch, steps, dim = x.shape
        heads = self._heads
        head_dim = dim // heads
        h = p.attn_norm(x) if self._pre_ln else x
        qkv = ops.linear(h, p.qkv_weight, p.qkv_bias)  # [B, T, 3D]
        q, k, v = qkv.view(batch, steps, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, T, d]
        attn = F.scaled_dot_product_attention(q, k, v, scale=head_dim**-0.5)
        attn = attn.transpose(1, 2).reshape(batch, steps, dim)
        x = ops.linear_add(attn, x, p.out_weight, p.out_bias)
        if self._pre_ln:
            h = ops.linear(p.final_norm(x), p.fc1_weight, p.fc1_bias, gelu=True)
            return ops.linear_add(h, x, p.fc2_weight, p.fc2_bias)
        x = p.attn_norm(x)
        h = ops.linear(x, p.fc1_weight, p.fc1_bias, gelu=True)
        return p.final_norm(ops.linear_add(h, x, p.fc2_weight, p.fc2_bias))

    def _num_frames(self, num_samples: int) -> int:
        length = num_samples
        for conv in self._convs:
            length = (length - conv.kernel) // conv.stride + 1
        return length

    def _folded_first_conv(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Conv 0 with its GroupNorm folded in, from the exact per-channel mean/variance over all windows.

        GroupNorm(C, C) normalises each channel over time. For conv output ``y_t = W x_t`` (``x_t`` the
        t-th input window) the channel mean is ``W mu`` and the variance ``diag(W S W^T)`` with ``mu``, ``S``
        the mean and (biased) covariance of the windows, so ``gamma (y - mean) / sqrt(var + eps) + beta``
        is one affine map of ``x_t``. A conv bias cancels in the normalisation.
        """
        conv = self._convs[0]
        stats = torch.float32 if windows.device.type == "mps" else torch.float64
        x = windows.to(stats)
        mean = x.mean(0)
        centred = x - mean
        cov = centred.t() @ centred / x.shape[0]  # [k, k]
        weight = conv.weight.to(stats)  # [C, k]
        channel_mean = weight @ mean
        channel_var = ((weight @ cov) * weight).sum(1)
        gamma, beta, eps = self._gn
        scale = gamma.to(stats) / torch.sqrt(channel_var + eps)
        folded_weight = (weight * scale[:, None]).to(self._dtype)
        folded_bias = (beta.to(stats) - scale * channel_mean).to(self._dtype)
        return folded_weight, folded_bias

    def _front_end(self, wave: torch.Tensor) -> torch.Tensor:
        """Convolutional feature encoder, time-major: ``[N]`` samples -> ``[T, C]``, in blocks of frames."""
        ops = self._ops
        first = self._convs[0]
        windows = wave.unfold(0, first.kernel, first.stride)  # [T0, k] view of the input windows
        if self._group_norm:
            w0, b0 = self._folded_first_conv(windows)
        else:
            w0, b0 = first.weight, first.bias
        n_out = self._num_frames(wave.shape[0])
        blocks = []
        for f0 in range(0, n_out, FRONT_END_BLOCK_FRAMES):
            f1 = min(n_out, f0 + FRONT_END_BLOCK_FRAMES)
            rows = windows[f0 * self._block_step : (f1 - 1) * self._block_step + self._block_span]
            if first.norm is None:
                h = ops.linear(rows.contiguous(), w0, b0, gelu=True)
            else:
                h = F.gelu(first.norm(ops.linear(rows.contiguous(), w0, b0)))
            for conv in self._convs[1:]:
                length, channels = h.shape
                out_len = (length - conv.kernel) // conv.stride + 1
                if conv.kernel == conv.stride:  # non-overlapping windows: a free reshape
                    cols = h[: out_len * conv.stride].reshape(out_len, conv.kernel * channels)
                else:  # overlapping windows: strided view of the time-major rows, copied once
                    cols = h.as_strided((out_len, conv.kernel * channels), (conv.stride * channels, 1)).contiguous()
                if conv.norm is None:
                    h = ops.linear(cols, conv.weight, conv.bias, gelu=True)
                else:
                    h = F.gelu(conv.norm(ops.linear(cols, conv.weight, conv.bias)))
            assert h.shape[0] == f1 - f0, (h.shape, f0, f1)
            blocks.append(h)
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks)
