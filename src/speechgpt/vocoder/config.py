"""Configuration of the unit HiFi-GAN vocoder (:class:`~speechgpt.vocoder.hifigan.UnitHiFiGAN`).

The defaults are the released SpeechGPT vocoder (fairseq ``CodeHiFiGANVocoder`` checkpoint ``g_00500000``,
``FAIRSEQ_COMPAT.md`` section A): 1000 units embedded in 128 dimensions, a two-layer duration predictor, and a
HiFi-GAN generator with upsample rates 5·4·4·2·2 = 320 samples per 20 ms unit frame at 16 kHz.

This module imports no torch: its constants come from :mod:`speechgpt.constants`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from speechgpt.constants import HOP_LENGTH, RELEASED_NUM_UNITS, SAMPLE_RATE

__all__ = ["RELEASED_NUM_UNITS", "SUPPORTED_RESBLOCKS", "VocoderConfig"]

"""Units of the released speech tokenizer (mHuBERT layer 11, k-means with 1000 clusters)."""
SUPPORTED_RESBLOCKS = ("1",)
"""HiFi-GAN residual block types implemented (type "1": dilated conv then plain conv, three times)."""
FAIRSEQ_DEFAULT_MODEL_IN_DIM = 80
"""What fairseq's generator uses for ``conv_pre``'s input channels when ``model_in_dim`` is absent (mel bins)."""

# fairseq config keys that add modules we do not implement (f0 conditioning, speaker embedder/table).
_FAIRSEQ_UNSUPPORTED = ("f0", "f0_quant_num_bin", "multispkr", "embedder_params")
_FAIRSEQ_REQUIRED = (
    "num_embeddings",
    "embedding_dim",
    "upsample_rates",
    "upsample_kernel_sizes",
    "upsample_initial_channel",
    "resblock",
    "resblock_kernel_sizes",
    "resblock_dilation_sizes",
    "dur_predictor_params",
)
# fairseq's residual block type 1 reads exactly three dilations (ResBlock1 indexes dilation[0..2]).
_FAIRSEQ_DILATIONS_PER_BLOCK = 3
# fairseq's duration predictor hard-codes the second conv's padding to 1, so only kernel 3 keeps the length.
_FAIRSEQ_DURATION_KERNEL = 3


def _int_tuple(value: Any, name: str) -> tuple[int, ...]:
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        raise ValueError(f"{name} must be a list of ints, got {value!r}")
    items = tuple(value)
    if not items or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise ValueError(f"{name} must be a non-empty list of ints, got {value!r}")
    return items


@dataclass(frozen=True)
class VocoderConfig:
    """Architecture of a unit HiFi-GAN: unit embedding, duration predictor and HiFi-GAN generator.

    Attributes:
        num_units: Size of the unit vocabulary (ids ``0 .. num_units-1``).
        embedding_dim: Width of the unit embedding, the duration predictor's input and ``conv_pre``'s input.
        num_speakers: 0 for one voice (like the release). With ``n > 0`` a speaker table ``[n, embedding_dim]`` is
            **added** to the frame embeddings fed to the generator, after the duration predictor, so durations stay
            speaker-independent (as in fairseq's multi-speaker model) and ``conv_pre`` keeps the released shape,
            which lets a released checkpoint initialise a multi-speaker model.
        duration_channels: Hidden width of the duration predictor's two convolutions.
        duration_kernel_size: Kernel of both duration convolutions (odd; "same" padding).
        duration_dropout: Dropout after each duration LayerNorm (training only).
        upsample_initial_channel: Channels after ``conv_pre``; stage ``i`` has ``upsample_initial_channel >> (i+1)``.
        upsample_rates: Factor by which each stage's transposed convolution lengthens the signal.
        upsample_kernel_sizes: Kernel of each transposed convolution.
        resblock: Residual block type; only ``"1"`` (the released one) is implemented.
        resblock_kernel_sizes: Kernel of each of the parallel residual blocks in every stage.
        resblock_dilation_sizes: Dilations of each residual block's dilated convolutions.
        hop_length: Samples per unit frame; must equal the product of ``upsample_rates``.
        sample_rate: Output sample rate in Hz.
    """

    num_units: int = RELEASED_NUM_UNITS
    embedding_dim: int = 128
    num_speakers: int = 0
    duration_channels: int = 128
    duration_kernel_size: int = 3
    duration_dropout: float = 0.5
    upsample_initial_channel: int = 512
    upsample_rates: tuple[int, ...] = (5, 4, 4, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (11, 8, 8, 4, 4)
    resblock: str = "1"
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = field(default=((1, 3, 5), (1, 3, 5), (1, 3, 5)))
    hop_length: int = HOP_LENGTH
    sample_rate: int = SAMPLE_RATE

    def __post_init__(self) -> None:
        # Accept lists (from JSON) but store tuples, so configs are hashable and cannot change under a model.
        object.__setattr__(self, "upsample_rates", _int_tuple(self.upsample_rates, "upsample_rates"))
        object.__setattr__(
            self, "upsample_kernel_sizes", _int_tuple(self.upsample_kernel_sizes, "upsample_kernel_sizes")
        )
        object.__setattr__(
            self, "resblock_kernel_sizes", _int_tuple(self.resblock_kernel_sizes, "resblock_kernel_sizes")
        )
        if isinstance(self.resblock_dilation_sizes, str) or not hasattr(self.resblock_dilation_sizes, "__iter__"):
            raise ValueError(
                f"resblock_dilation_sizes must be a list of lists of ints, got {self.resblock_dilation_sizes!r}"
            )
        dilations = tuple(
            _int_tuple(d, f"resblock_dilation_sizes[{i}]") for i, d in enumerate(self.resblock_dilation_sizes)
        )
        object.__setattr__(self, "resblock_dilation_sizes", dilations)
        self._validate()

    def _validate(self) -> None:
        positive = {
            "num_units": self.num_units,
            "embedding_dim": self.embedding_dim,
            "duration_channels": self.duration_channels,
            "duration_kernel_size": self.duration_kernel_size,
            "upsample_initial_channel": self.upsample_initial_channel,
            "hop_length": self.hop_length,
            "sample_rate": self.sample_rate,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(self.num_speakers, int) or isinstance(self.num_speakers, bool) or self.num_speakers < 0:
            raise ValueError(f"num_speakers must be an int >= 0 (0 = single speaker), got {self.num_speakers!r}")
        if self.duration_kernel_size % 2 == 0:
            raise ValueError(
                f"duration_kernel_size must be odd to keep one prediction per unit, got {self.duration_kernel_size}"
            )
        if not 0.0 <= self.duration_dropout < 1.0:
            raise ValueError(f"duration_dropout must be in [0, 1), got {self.duration_dropout!r}")
        if self.resblock not in SUPPORTED_RESBLOCKS:
            raise ValueError(
                f"resblock type {self.resblock!r} is not supported; supported: {list(SUPPORTED_RESBLOCKS)}"
            )
        if len(self.upsample_kernel_sizes) != len(self.upsample_rates):
            raise ValueError(
                f"upsample_kernel_sizes {list(self.upsample_kernel_sizes)} and upsample_rates "
                f"{list(self.upsample_rates)} must have the same length (one per stage)"
            )
        for i, (rate, kernel) in enumerate(zip(self.upsample_rates, self.upsample_kernel_sizes, strict=True)):
            # Output length is L*u + (k-u) - 2*((k-u)//2): exactly L*u only when k-u is even and non-negative.
            if rate <= 0 or kernel < rate or (kernel - rate) % 2:
                raise ValueError(
                    f"stage {i}: upsample kernel {kernel} and rate {rate} must satisfy kernel >= rate > 0 with "
                    "kernel - rate even, so the stage lengthens the signal by exactly its rate"
                )
        if math.prod(self.upsample_rates) != self.hop_length:
            raise ValueError(
                f"the product of upsample_rates {list(self.upsample_rates)} is {math.prod(self.upsample_rates)}, "
                f"but hop_length is {self.hop_length}: each unit frame must become exactly hop_length samples"
            )
        if self.upsample_initial_channel % (2 ** len(self.upsample_rates)):
            raise ValueError(
                f"upsample_initial_channel {self.upsample_initial_channel} must be divisible by "
                f"2**{len(self.upsample_rates)} (channels halve at every stage)"
            )
        if len(self.resblock_dilation_sizes) != len(self.resblock_kernel_sizes):
            raise ValueError(
                f"resblock_dilation_sizes has {len(self.resblock_dilation_sizes)} entries but resblock_kernel_sizes "
                f"has {len(self.resblock_kernel_sizes)}; give one dilation list per residual block"
            )
        for kernel in self.resblock_kernel_sizes:
            if kernel <= 0 or kernel % 2 == 0:
                raise ValueError(
                    f"resblock_kernel_sizes must be odd positive ints, got {list(self.resblock_kernel_sizes)}"
                )
        for i, dilations in enumerate(self.resblock_dilation_sizes):
            if any(d <= 0 for d in dilations):
                raise ValueError(f"resblock_dilation_sizes[{i}] must hold positive ints, got {list(dilations)}")

    # --- derived ------------------------------------------------------------------------------------------------

    @property
    def num_stages(self) -> int:
        """Upsampling stages of the generator."""
        return len(self.upsample_rates)

    @property
    def frame_rate(self) -> float:
        """Unit frames per second (50 for the release)."""
        return self.sample_rate / self.hop_length

    def stage_channels(self, stage: int) -> int:
        """Channels after the transposed convolution of ``stage`` (0-based)."""
        return self.upsample_initial_channel >> (stage + 1)

    # --- presets and (de)serialisation ---------------------------------------------------------------------------

    @classmethod
    def released(cls) -> VocoderConfig:
        """The released SpeechGPT vocoder (``g_00500000``)."""
        return cls()

    @classmethod
    def tiny(cls, **overrides: Any) -> VocoderConfig:
        """A few-thousand-parameter model with the released rates, for tests: same framing, tiny widths."""
        values: dict[str, Any] = {
            "num_units": 50,
            "embedding_dim": 16,
            "duration_channels": 16,
            "upsample_initial_channel": 32,
        }
        values.update(overrides)
        return cls(**values)

    @classmethod
    def from_name(cls, name: str) -> VocoderConfig:
        """A named preset: ``"released"`` or ``"tiny"``.

        Raises:
            ValueError: ``name`` is not a preset (the message lists them).
        """
        presets = {"released": cls.released, "tiny": cls.tiny}
        if name not in presets:
            raise ValueError(f"unknown vocoder preset {name!r}; available: {sorted(presets)}")
        return presets[name]()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, tuple):
                data[key] = [list(v) if isinstance(v, tuple) else v for v in value]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VocoderConfig:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: unknown keys (listed) or invalid values.
        """
        if not isinstance(data, dict):
            raise ValueError(f"a vocoder config must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown vocoder config keys {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**data)

    @classmethod
    def from_fairseq_json(cls, data: dict[str, Any]) -> VocoderConfig:
        """Read the ``config.json`` that fairseq's ``CodeHiFiGANVocoder`` ships beside a checkpoint.

        Only model fields are read; training fields (``segment_size``, ``num_mels``, ``lr``...) are ignored.

        Raises:
            ValueError: a required key is missing, or the config asks for something this model does not implement
                (f0 or speaker conditioning, no duration predictor, another residual block type), or values
                disagree with each other (``model_in_dim`` vs ``embedding_dim``, ``code_hop_size`` vs rates).
        """
        if not isinstance(data, dict):
            raise ValueError(f"a fairseq vocoder config must be a JSON object, got {type(data).__name__}")
        enabled = [key for key in _FAIRSEQ_UNSUPPORTED if data.get(key)]
        if enabled:
            raise ValueError(
                f"unsupported fairseq vocoder options {enabled}: only unit-only vocoders (f0 false, no speaker "
                "embedder, no multispkr) are implemented, like the released SpeechGPT vocoder"
            )
        missing = [key for key in _FAIRSEQ_REQUIRED if key not in data or data[key] is None]
        if missing:
            hint = (
                " (a vocoder without a duration predictor is not supported)"
                if "dur_predictor_params" in missing
                else ""
            )
            raise ValueError(f"fairseq vocoder config lacks required keys {missing}{hint}")
        embedding_dim = data["embedding_dim"]
        model_in_dim = data.get("model_in_dim", FAIRSEQ_DEFAULT_MODEL_IN_DIM)
        if model_in_dim != embedding_dim:
            shown = "absent, fairseq default " if "model_in_dim" not in data else ""
            raise ValueError(
                f"model_in_dim ({shown}{model_in_dim}) must equal embedding_dim ({embedding_dim}) "
                "for a unit-only vocoder"
            )
        dur = data["dur_predictor_params"]
        if not isinstance(dur, dict):
            raise ValueError(f"dur_predictor_params must be an object, got {dur!r}")
        dur_missing = [k for k in ("encoder_embed_dim", "var_pred_hidden_dim", "var_pred_kernel_size") if k not in dur]
        if dur_missing:
            raise ValueError(f"dur_predictor_params lacks required keys {dur_missing}")
        if dur["encoder_embed_dim"] != embedding_dim:
            raise ValueError(
                f"dur_predictor_params.encoder_embed_dim ({dur['encoder_embed_dim']}) must equal embedding_dim "
                f"({embedding_dim}): the duration predictor reads the unit embedding"
            )
        if dur["var_pred_kernel_size"] != _FAIRSEQ_DURATION_KERNEL:
            raise ValueError(
                f"dur_predictor_params.var_pred_kernel_size is {dur['var_pred_kernel_size']}; fairseq hard-codes the "
                f"second conv's padding to 1, so only {_FAIRSEQ_DURATION_KERNEL} is a working released configuration"
            )
        if str(data["resblock"]) not in SUPPORTED_RESBLOCKS:
            raise ValueError(
                f"resblock type {data['resblock']!r} is not supported; supported: {list(SUPPORTED_RESBLOCKS)}"
            )
        for i, dilations in enumerate(data["resblock_dilation_sizes"]):
            if len(dilations) != _FAIRSEQ_DILATIONS_PER_BLOCK:
                raise ValueError(
                    f"resblock_dilation_sizes[{i}] = {dilations}: fairseq's type-1 residual block uses exactly "
                    f"{_FAIRSEQ_DILATIONS_PER_BLOCK} dilations"
                )
        config = cls(
            num_units=data["num_embeddings"],
            embedding_dim=embedding_dim,
            duration_channels=dur["var_pred_hidden_dim"],
            duration_kernel_size=dur["var_pred_kernel_size"],
            duration_dropout=float(dur.get("var_pred_dropout", 0.5)),
            upsample_initial_channel=data["upsample_initial_channel"],
            upsample_rates=data["upsample_rates"],
            upsample_kernel_sizes=data["upsample_kernel_sizes"],
            resblock=str(data["resblock"]),
            resblock_kernel_sizes=data["resblock_kernel_sizes"],
            resblock_dilation_sizes=data["resblock_dilation_sizes"],
            hop_length=math.prod(_int_tuple(data["upsample_rates"], "upsample_rates")),
            sample_rate=data.get("sampling_rate", SAMPLE_RATE),
        )
        if "code_hop_size" in data and data["code_hop_size"] != config.hop_length:
            raise ValueError(
                f"code_hop_size ({data['code_hop_size']}) disagrees with the product of upsample_rates "
                f"{list(config.upsample_rates)} = {config.hop_length}"
            )
        return config

    def to_fairseq_json(self) -> dict[str, Any]:
        """The model fields of a fairseq ``config.json`` describing this architecture (single speaker only).

        Raises:
            ValueError: when ``num_speakers > 0`` (fairseq's speaker models are built differently).
        """
        if self.num_speakers:
            raise ValueError("a multi-speaker vocoder has no fairseq equivalent (fairseq concatenates speakers)")
        return {
            "resblock": self.resblock,
            "upsample_rates": list(self.upsample_rates),
            "upsample_kernel_sizes": list(self.upsample_kernel_sizes),
            "upsample_initial_channel": self.upsample_initial_channel,
            "resblock_kernel_sizes": list(self.resblock_kernel_sizes),
            "resblock_dilation_sizes": [list(d) for d in self.resblock_dilation_sizes],
            "num_embeddings": self.num_units,
            "embedding_dim": self.embedding_dim,
            "model_in_dim": self.embedding_dim,
            "f0": False,
            "code_hop_size": self.hop_length,
            "sampling_rate": self.sample_rate,
            "dur_prediction_weight": 1.0,
            "dur_predictor_params": {
                "encoder_embed_dim": self.embedding_dim,
                "var_pred_hidden_dim": self.duration_channels,
                "var_pred_kernel_size": self.duration_kernel_size,
                "var_pred_dropout": self.duration_dropout,
            },
        }
