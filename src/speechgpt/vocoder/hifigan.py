"""The unit HiFi-GAN: unit ids -> durations -> 16 kHz waveform, compatible with the released SpeechGPT vocoder.

The computation is the one fairseq's ``CodeHiFiGANVocoder`` runs (``FAIRSEQ_COMPAT.md`` section A): embed each unit,
predict its duration in 20 ms frames, repeat every embedding that many times, and turn the frames into samples with
a HiFi-GAN generator whose stages multiply the length by 5·4·4·2·2 = 320. Weights are plain tensors at run time;
the released file's weight norm is folded away by :mod:`speechgpt.convert.fairseq_hifigan`.

State-dict keys (shapes for the released configuration; ``i`` = stage 0..4, ``n`` = ``3*i + j`` for the three
parallel residual blocks ``j`` of stage ``i``, ``m`` = 0..2 the pairs inside a block):

====================================================  ==================================================
``embed.weight``                                       ``[num_units, E]`` = ``[1000, 128]``
``speaker_embed.weight`` (only if ``num_speakers``)    ``[num_speakers, E]``
``duration.conv1.{weight,bias}``                       ``[128, 128, 3]``, ``[128]``
``duration.norm1.{weight,bias}``                       ``[128]`` (LayerNorm)
``duration.conv2.{weight,bias}``, ``duration.norm2.*``  as above
``duration.proj.{weight,bias}``                        ``[1, 128]``, ``[1]``
``generator.conv_pre.{weight,bias}``                   ``[512, 128, 7]``, ``[512]``
``generator.ups.{i}.{weight,bias}``                    ConvTranspose1d ``[C_in, C_out, k]``, ``[C_out]``
``generator.blocks.{n}.convs1.{m}.{weight,bias}``      dilated conv ``[ch, ch, k]``
``generator.blocks.{n}.convs2.{m}.{weight,bias}``      plain conv ``[ch, ch, k]``
``generator.conv_post.{weight,bias}``                  ``[1, 16, 7]``, ``[1]``
====================================================  ==================================================

Shape notation: ``B`` batch, ``T`` units, ``F`` frames (after durations), ``E`` embedding width, ``S = F * hop``
samples.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from speechgpt.devices import resolve_device
from speechgpt.fileio import atomic_write_bytes, atomic_write_text
from speechgpt.vocoder._fast_ops import FastGenerator, onednn_available
from speechgpt.vocoder.base import UnitsLike, as_durations, as_unit_ids, check_batch, check_speaker, durations_from_log
from speechgpt.vocoder.config import VocoderConfig
from speechgpt.weights import check_weights

logger = logging.getLogger(__name__)

__all__ = [
    "CONFIG_NAME",
    "FINAL_LRELU_SLOPE",
    "LRELU_SLOPE",
    "VOCODER_FORMAT",
    "WEIGHTS_NAME",
    "DurationPredictor",
    "HiFiGANGenerator",
    "ResBlock",
    "UnitHiFiGAN",
    "VocoderOutput",
    "durations_from_log",
]

LRELU_SLOPE = 0.1
"""Leaky-ReLU slope before every transposed convolution and inside the residual blocks (HiFi-GAN's value)."""
FINAL_LRELU_SLOPE = 0.01
"""Slope of the last leaky ReLU before ``conv_post``: the release calls ``F.leaky_relu`` with its default."""
LAYER_NORM_EPS = 1e-5
"""Epsilon of the duration predictor's LayerNorms (fairseq's default)."""
PRE_POST_KERNEL = 7
"""Kernel of ``conv_pre`` and ``conv_post``."""
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
VOCODER_FORMAT = "speechgpt-unit-hifigan"
"""``format`` value in our ``config.json``; tells our folders apart from fairseq's ``config.json``."""
VOCODER_VERSION = 1


def _masked(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Zero the padded tail of each item, so a convolution sees exactly the zero padding it sees alone."""
    return x if mask is None else x * mask


def _length_mask(lengths: torch.Tensor, size: int, dtype: torch.dtype) -> torch.Tensor:
    """``[B, 1, size]`` mask: 1 inside each item's length, 0 in its padding."""
    positions = torch.arange(size, device=lengths.device)
    return (positions[None, :] < lengths[:, None]).to(dtype).unsqueeze(1)


class DurationPredictor(nn.Module):
    """Predicts ``log(1 + frames)`` for each unit from its embedding and its neighbours' (FastSpeech 2 style).

    conv → ReLU → LayerNorm → dropout → conv → ReLU → LayerNorm → dropout → linear. With kernel 3 each prediction
    depends on the units two to the left and two to the right.
    """

    def __init__(
        self, config: VocoderConfig, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ):
        super().__init__()
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        channels, kernel = config.duration_channels, config.duration_kernel_size
        self.conv1 = nn.Conv1d(config.embedding_dim, channels, kernel, padding=kernel // 2, **kw)
        self.norm1 = nn.LayerNorm(channels, eps=LAYER_NORM_EPS, **kw)
        self.conv2 = nn.Conv1d(channels, channels, kernel, padding=kernel // 2, **kw)
        self.norm2 = nn.LayerNorm(channels, eps=LAYER_NORM_EPS, **kw)
        self.proj = nn.Linear(channels, 1, **kw)
        self.dropout = nn.Dropout(config.duration_dropout)

    @property
    def context(self) -> int:
        """Units on each side that one prediction depends on."""
        return 2 * (self.conv1.kernel_size[0] // 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Log durations ``[B, T]`` of unit embeddings ``x: [B, E, T]``; ``mask: [B, 1, T]`` marks real units."""
        h = F.relu(self.conv1(_masked(x, mask)))
        h = self.dropout(self.norm1(h.transpose(1, 2))).transpose(1, 2)
        h = F.relu(self.conv2(_masked(h, mask)))
        h = self.dropout(self.norm2(h.transpose(1, 2)))
        return self.proj(h).squeeze(-1)


class ResBlock(nn.Module):
    """HiFi-GAN residual block type 1: for each dilation d, ``x += conv2(lrelu(conv_d(lrelu(x))))``."""

    def __init__(
        self,
        channels: int,
        kernel_size: int,
        dilations: Sequence[int],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=(kernel_size * d - d) // 2, **kw)
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2, **kw) for _ in dilations
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, C, L] -> [B, C, L]``.

        In-place ops touch only fresh convolution outputs that no backward needs (about 10% faster on CPU).
        """
        for conv1, conv2 in zip(self.convs1, self.convs2, strict=True):
            h = F.leaky_relu_(conv1(_masked(F.leaky_relu(x, LRELU_SLOPE), mask)), LRELU_SLOPE)
            x = conv2(_masked(h, mask)).add_(x)
        return x


class HiFiGANGenerator(nn.Module):
    """Frame embeddings ``[B, E, F]`` -> waveform ``[B, F * hop]`` in [-1, 1]."""

    fast_inference: bool = True
    """Use the fused oneDNN inference path when it applies (see :meth:`forward`); False forces the plain modules."""

    def __init__(
        self, config: VocoderConfig, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ):
        super().__init__()
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.rates = tuple(config.upsample_rates)
        self.num_kernels = len(config.resblock_kernel_sizes)
        pad = PRE_POST_KERNEL // 2
        self.conv_pre = nn.Conv1d(
            config.embedding_dim, config.upsample_initial_channel, PRE_POST_KERNEL, padding=pad, **kw
        )
        self.ups = nn.ModuleList()
        self.blocks = nn.ModuleList()
        for i, (rate, kernel) in enumerate(zip(config.upsample_rates, config.upsample_kernel_sizes, strict=True)):
            c_in, c_out = config.upsample_initial_channel >> i, config.stage_channels(i)
            self.ups.append(nn.ConvTranspose1d(c_in, c_out, kernel, stride=rate, padding=(kernel - rate) // 2, **kw))
            for block_kernel, dilations in zip(
                config.resblock_kernel_sizes, config.resblock_dilation_sizes, strict=True
            ):
                self.blocks.append(ResBlock(c_out, block_kernel, dilations, **kw))
        self.conv_post = nn.Conv1d(config.stage_channels(config.num_stages - 1), 1, PRE_POST_KERNEL, padding=pad, **kw)

    def convolutions(self) -> Iterator[nn.Module]:
        """Every (transposed) convolution, in the order the signal meets them; these carry weight norm in training."""
        yield self.conv_pre
        for i, up in enumerate(self.ups):
            yield up
            for block in self.blocks[i * self.num_kernels : (i + 1) * self.num_kernels]:
                for conv1, conv2 in zip(block.convs1, block.convs2, strict=True):
                    yield conv1
                    yield conv2
        yield self.conv_post

    def _fast_path_applies(self, x: torch.Tensor, frame_lengths: torch.Tensor | None) -> bool:
        """Whether :class:`~speechgpt.vocoder._fast_ops.FastGenerator` may run instead of the modules.

        Only without gradients (training keeps the plain, differentiable forward), on CPU in
        float32 with plain weights, and without padding (a batch whose items all have the full length has none).
        """
        if not self.fast_inference or torch.is_grad_enabled():
            return False
        if x.device.type != "cpu" or x.dtype != torch.float32 or self.conv_pre.weight.dtype != torch.float32:
            return False
        if frame_lengths is not None and not bool((frame_lengths == x.shape[-1]).all()):
            return False
        if any(parametrize.is_parametrized(conv) for conv in self.convolutions()):
            return False
        return onednn_available()

    def forward(self, x: torch.Tensor, frame_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Waveform ``[B, F * hop]`` from frame embeddings ``x: [B, E, F]``.

        Without gradients on CPU this runs the fused oneDNN path of :mod:`speechgpt.vocoder._fast_ops` (same
        output within float rounding, about 10-25% faster); set ``fast_inference = False`` to run the modules.

        Args:
            x: Frame embeddings, channels first.
            frame_lengths: ``[B]`` real frames per item when the batch is padded; every convolution input is then
                masked so each item's samples ``[:length * hop]`` equal what it gives alone. None: no padding.
        """
        if self._fast_path_applies(x, frame_lengths):
            return FastGenerator.for_generator(self)(x, LRELU_SLOPE, FINAL_LRELU_SLOPE)
        mask = None if frame_lengths is None else _length_mask(frame_lengths, x.shape[-1], x.dtype)
        x = self.conv_pre(_masked(x, mask))
        scale = 1
        for i, up in enumerate(self.ups):
            x = up(_masked(F.leaky_relu_(x, LRELU_SLOPE), mask))  # x is a fresh conv/average output
            if frame_lengths is not None:
                scale *= self.rates[i]
                mask = _length_mask(frame_lengths * scale, x.shape[-1], x.dtype)
            blocks = self.blocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            total = blocks[0](x, mask)
            for block in blocks[1:]:
                total = total.add_(block(x, mask))
            x = total.div_(self.num_kernels)
        x = self.conv_post(_masked(F.leaky_relu_(x, FINAL_LRELU_SLOPE), mask))
        return torch.tanh(x).squeeze(1)


@dataclass
class VocoderOutput:
    """What the training forward returns.

    Attributes:
        wave: ``[B, S_max]`` waveforms; item ``b`` is valid up to ``frame_lengths[b] * hop`` samples.
        log_durations: ``[B, T]`` predicted ``log(1 + frames)`` per unit (train against the given durations).
        frame_lengths: ``[B]`` frames per item (sum of its durations).
    """

    wave: torch.Tensor
    log_durations: torch.Tensor
    frame_lengths: torch.Tensor


class UnitHiFiGAN(nn.Module):
    """Unit ids to waveform: unit embedding, duration predictor and HiFi-GAN generator.

    Build it from a :class:`VocoderConfig`; load weights with :meth:`from_pretrained` (our folders),
    :meth:`from_fairseq` (the released checkpoint) or :meth:`load` (either).

    Args:
        config: Architecture; the released one when None.
        device: Where parameters are created (``"meta"`` builds a full-size model without memory).
        dtype: Parameter dtype.
    """

    def __init__(
        self,
        config: VocoderConfig | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.config = config = config if config is not None else VocoderConfig()
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.embed = nn.Embedding(config.num_units, config.embedding_dim, **kw)
        self.speaker_embed = (
            nn.Embedding(config.num_speakers, config.embedding_dim, **kw) if config.num_speakers else None
        )
        self.duration = DurationPredictor(config, **kw)
        self.generator = HiFiGANGenerator(config, **kw)

    # --- basic properties -------------------------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def num_units(self) -> int:
        return self.config.num_units

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def num_speakers(self) -> int:
        """Speakers of a multi-speaker vocoder; 0 when single-speaker."""
        return self.config.num_speakers

    @property
    def frame_context(self) -> tuple[int, int]:
        """Frames ``(left, right)`` of context that one frame's samples depend on (the generator's receptive field)."""
        from speechgpt.vocoder.streaming import generator_context

        return generator_context(self.config)

    # --- pieces -----------------------------------------------------------------------------------------------

    def embed_frames(self, frame_ids: torch.Tensor, speakers: torch.Tensor | None = None) -> torch.Tensor:
        """Generator input ``[B, E, F]`` for frame-level ids ``[B, F]`` (and speaker ids ``[B]``)."""
        x = self.embed(frame_ids)
        if self.speaker_embed is not None:
            if speakers is None:
                raise ValueError("speakers are required by a multi-speaker vocoder")
            x = x + self.speaker_embed(speakers)[:, None, :]
        return x.transpose(1, 2)

    def log_durations(self, units: torch.Tensor, unit_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted ``log(1 + frames)`` ``[B, T]`` for unit ids ``[B, T]`` (padded items need ``unit_lengths``)."""
        x = self.embed(units).transpose(1, 2)
        mask = None if unit_lengths is None else _length_mask(unit_lengths, units.shape[1], x.dtype)
        return self.duration(x, mask)

    def render_frames(self, frame_ids: torch.Tensor, first_frame: int = 0, speaker: int | None = None) -> torch.Tensor:
        """Waveform ``[F * hop]`` for frame-level ids ``[F]``: the generator alone, as streaming windows need it.

        ``first_frame`` (a window's offset in the stream) is accepted for the streaming protocol and unused: the
        generator is shift-invariant.
        """
        speakers = None if speaker is None else torch.tensor([speaker], device=self.device)
        return self.generator(self.embed_frames(frame_ids[None], speakers))[0]

    def forward(
        self,
        units: torch.Tensor,
        durations: torch.Tensor,
        unit_lengths: torch.Tensor | None = None,
        speakers: torch.Tensor | None = None,
    ) -> VocoderOutput:
        """Training forward: waveform from given (ground-truth) durations, plus the duration prediction.

        Args:
            units: ``[B, T]`` unit ids (padding positions may hold any valid id).
            durations: ``[B, T]`` frames per unit (>= 1 for real units; padding is ignored).
            unit_lengths: ``[B]`` real units per item; None when no item is padded.
            speakers: ``[B]`` speaker ids for a multi-speaker vocoder.

        Returns:
            :class:`VocoderOutput` with ``wave [B, S_max]``, ``log_durations [B, T]``, ``frame_lengths [B]``.
        """
        length = units.shape[1]
        if unit_lengths is not None:
            durations = durations * _length_mask(unit_lengths, length, torch.long)[:, 0]
        log_durations = self.log_durations(units, unit_lengths)
        frame_lengths = durations.sum(dim=1)
        frame_ids = torch.repeat_interleave(units.reshape(-1), durations.reshape(-1))
        pieces = torch.split(frame_ids, frame_lengths.tolist())
        frames = nn.utils.rnn.pad_sequence(list(pieces), batch_first=True)
        padded = bool((frame_lengths != frames.shape[1]).any())
        wave = self.generator(self.embed_frames(frames, speakers), frame_lengths if padded else None)
        return VocoderOutput(wave=wave, log_durations=log_durations, frame_lengths=frame_lengths)

    # --- inference --------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def predict_durations(self, units: UnitsLike) -> torch.Tensor:
        """Frames per unit that duration prediction gives, ``LongTensor [T]`` on CPU (negative ids dropped).

        Raises:
            ValueError: empty input, non-integer ids, or an id outside ``0..num_units-1``.
        """
        ids, _ = as_unit_ids(units, self.num_units)
        return durations_from_log(self.log_durations(ids[None].to(self.device)))[0].cpu()

    @torch.inference_mode()
    def synthesize(
        self,
        units: UnitsLike,
        dur_prediction: bool = True,
        durations: UnitsLike | None = None,
        speaker: int | None = None,
    ) -> torch.Tensor:
        """Waveform ``[hop * sum(durations)]`` in [-1, 1] for one unit sequence, on the model's device.

        Args:
            units: Unit ids ``[T]``; negative ids are dropped (as the release does).
            dur_prediction: Predict each unit's frames; when False each unit lasts one frame (the input is then
                frame-level units, e.g. before deduplication).
            durations: Frames per unit ``[T]``, e.g. from ``speechgpt units encode``; overrides ``dur_prediction``.
            speaker: Speaker id of a multi-speaker vocoder; must be None for a single-speaker one.

        Raises:
            ValueError: empty input, non-integer ids, an id outside ``0..num_units-1``, bad durations or speaker.
        """
        ids, keep = as_unit_ids(units, self.num_units)
        check_speaker(speaker, self.num_speakers)
        ids = ids.to(self.device)
        if durations is not None:
            frames_per_unit = as_durations(durations, keep).to(self.device)
        elif dur_prediction:
            frames_per_unit = durations_from_log(self.log_durations(ids[None]))[0]
        else:
            frames_per_unit = None
        frame_ids = ids if frames_per_unit is None else torch.repeat_interleave(ids, frames_per_unit)
        return self.render_frames(frame_ids, speaker=speaker)

    @torch.inference_mode()
    def synthesize_batch(
        self,
        unit_seqs: Sequence[UnitsLike],
        dur_prediction: bool = True,
        durations: Sequence[UnitsLike] | None = None,
        speakers: Sequence[int] | None = None,
    ) -> list[torch.Tensor]:
        """Synthesize several sequences in one padded batch; item ``b`` equals ``synthesize(unit_seqs[b], ...)``.

        Padding is masked at every convolution input, so results match one-by-one synthesis up to float rounding.

        Returns:
            One waveform per input, each ``[hop * sum(its durations)]``.

        Raises:
            ValueError: as :meth:`synthesize`, naming the item; or mismatched ``durations``/``speakers`` counts.
        """
        ids, given = check_batch(unit_seqs, self.num_units, durations, speakers, self.num_speakers)
        unit_lengths = torch.tensor([len(x) for x in ids], device=self.device)
        units = nn.utils.rnn.pad_sequence(ids, batch_first=True).to(self.device)
        if given is not None:
            frames_per_unit = nn.utils.rnn.pad_sequence(given, batch_first=True).to(self.device)
        elif dur_prediction:
            frames_per_unit = durations_from_log(self.log_durations(units, unit_lengths))
        else:
            frames_per_unit = torch.ones_like(units)
        frames_per_unit = frames_per_unit * _length_mask(unit_lengths, units.shape[1], torch.long)[:, 0]
        frame_lengths = frames_per_unit.sum(dim=1)
        frame_ids = torch.repeat_interleave(units.reshape(-1), frames_per_unit.reshape(-1))
        frames = nn.utils.rnn.pad_sequence(list(torch.split(frame_ids, frame_lengths.tolist())), batch_first=True)
        speaker_ids = None if speakers is None else torch.tensor(list(speakers), device=self.device)
        waves = self.generator(self.embed_frames(frames, speaker_ids), frame_lengths)
        return [waves[b, : int(n) * self.hop_length] for b, n in enumerate(frame_lengths)]

    def synthesize_stream(
        self,
        unit_chunks: Iterable[UnitsLike],
        dur_prediction: bool = True,
        left_context: int | None = None,
        right_context: int | None = None,
        speaker: int | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield audio while unit chunks arrive; the concatenation equals :meth:`synthesize` of all units.

        See :func:`speechgpt.vocoder.streaming.synthesize_stream` for the contexts and the latency they cost.
        """
        from speechgpt.vocoder.streaming import synthesize_stream

        return synthesize_stream(
            self,
            unit_chunks,
            dur_prediction=dur_prediction,
            left_context=left_context,
            right_context=right_context,
            speaker=speaker,
        )

    # --- weight norm (training) -------------------------------------------------------------------------------

    def apply_weight_norm(self) -> UnitHiFiGAN:
        """Reparametrise every generator convolution as ``g * v / ||v||`` (dim 0), as HiFi-GAN trains."""
        for conv in self.generator.convolutions():
            if not parametrize.is_parametrized(conv, "weight"):
                weight_norm(conv, name="weight", dim=0)
        return self

    def remove_weight_norm(self) -> UnitHiFiGAN:
        """Fold weight norm back into plain weights (inference runs on plain weights)."""
        for conv in self.generator.convolutions():
            if parametrize.is_parametrized(conv, "weight"):
                parametrize.remove_parametrizations(conv, "weight", leave_parametrized=True)
        return self

    def inference_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict with plain ``weight`` keys even under weight norm: what :meth:`save_pretrained` writes."""
        state = {}
        for name, module in self.named_modules():
            if "parametrizations" in name.split("."):
                continue  # g and v live here; the folded weight is taken from the parametrized module below
            prefix = f"{name}." if name else ""
            if parametrize.is_parametrized(module, "weight"):
                state[prefix + "weight"] = module.weight.detach()
            for key, param in module.named_parameters(recurse=False):
                state[prefix + key] = param.detach()
        return state

    # --- persistence ------------------------------------------------------------------------------------------

    def load_weights(
        self, state_dict: dict[str, torch.Tensor], source: str = "<state_dict>", *, assign: bool = False
    ) -> UnitHiFiGAN:
        """Copy plain weights in, checking names and shapes first.

        ``assign=True`` takes the given tensors as the parameters (no copy), which is how a model built on
        ``"meta"`` gets real weights.

        Raises:
            ValueError: keys missing or unexpected (listed), or a shape mismatch (key and both shapes), naming
                ``source``.
        """
        check_weights(
            state_dict, self.inference_state_dict(), source, target=" this vocoder", expects="the model expects"
        )
        if any(parametrize.is_parametrized(m, "weight") for m in self.modules()):
            raise ValueError("remove_weight_norm() before loading plain weights")
        self.load_state_dict(state_dict, strict=True, assign=assign)
        return self

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (plain weights) to ``directory``, atomically per file."""
        from safetensors.torch import save

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.inference_state_dict().items()}
        atomic_write_bytes(directory / WEIGHTS_NAME, save(state, metadata={"format": VOCODER_FORMAT}))
        config = {"format": VOCODER_FORMAT, "version": VOCODER_VERSION, **self.config.to_dict()}
        atomic_write_text(directory / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, device: str | torch.device | None = None) -> UnitHiFiGAN:
        """Load a folder written by :meth:`save_pretrained`, in eval mode.

        Raises:
            FileNotFoundError: the folder, its ``config.json`` or its weights are missing.
            ValueError: the config is not ours (e.g. a fairseq ``config.json``), or the weights do not fit it.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory}: no such vocoder folder")
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        if not config_path.is_file():
            raise FileNotFoundError(f"{directory}: not a vocoder folder (no {CONFIG_NAME})")
        try:
            data = json.loads(config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{config_path}: not valid JSON ({e})") from e
        if not isinstance(data, dict) or data.get("format") != VOCODER_FORMAT:
            hint = ""
            if isinstance(data, dict) and "num_embeddings" in data:
                hint = "; it looks like a fairseq config.json: pass the checkpoint file (and this file as its config)"
            raise ValueError(f"{config_path}: not a speechgpt vocoder config (format is not {VOCODER_FORMAT!r}){hint}")
        if data.get("version") != VOCODER_VERSION:
            raise ValueError(f"{config_path}: unsupported vocoder config version {data.get('version')!r}")
        fields = {k: v for k, v in data.items() if k not in ("format", "version")}
        try:
            config = VocoderConfig.from_dict(fields)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{config_path}: {e}") from e
        if not weights_path.is_file():
            raise FileNotFoundError(f"{directory}: vocoder weights {WEIGHTS_NAME} are missing")
        try:
            state = load_file(weights_path)
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{weights_path}: unreadable safetensors file ({e})") from e
        model = cls(config, device="meta")  # no random init: every tensor is replaced by the file's
        model.load_weights(state, source=str(weights_path), assign=True)
        return model.to(resolve_device(device)).eval()

    @classmethod
    def from_fairseq(
        cls,
        checkpoint_path: str | os.PathLike,
        config_json_path: str | os.PathLike | None = None,
        *,
        device: str | torch.device | None = None,
    ) -> UnitHiFiGAN:
        """Load the released fairseq checkpoint (``{"generator": state_dict}``, e.g. ``g_00500000``).

        Delegates to :func:`speechgpt.convert.fairseq_hifigan.load_fairseq_hifigan`.
        """
        from speechgpt.convert.fairseq_hifigan import load_fairseq_hifigan

        return load_fairseq_hifigan(checkpoint_path, config_json_path, device=device)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        config_json_path: str | os.PathLike | None = None,
        *,
        device: str | torch.device | None = None,
    ) -> UnitHiFiGAN:
        """Load either format: a folder is ours (:meth:`from_pretrained`), a file is fairseq's (:meth:`from_fairseq`).

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: ``config_json_path`` given with a folder (ours carries its own config), or bad files.
        """
        path = Path(path)
        if path.is_dir():
            if config_json_path is not None:
                raise ValueError(
                    f"{path} is a vocoder folder with its own {CONFIG_NAME}; "
                    "a separate config is only for a fairseq checkpoint file"
                )
            return cls.from_pretrained(path, device=device)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such vocoder checkpoint file or folder")
        return cls.from_fairseq(path, config_json_path, device=device)
