"""Recipe: train the unit HiFi-GAN on (audio, units, durations) from a ``speechgpt units encode`` manifest.

HiFi-GAN's GAN training (Kong et al., 2020) with the unit vocoder's duration loss: each step updates the
multi-period and multi-scale discriminators on real and generated segments (least squares), then the generator
on ``adversarial + fm_weight * feature matching + mel_weight * log-mel L1 + duration_weight * log-duration MSE``.
The generator trains with weight norm on and is exported without it.

Output folder::

    OUT/train_config.json          the run's settings
    OUT/metrics.jsonl              one line of losses per step (and one per validation)
    OUT/val/step-XXXXXX/*.wav      generated validation samples (real ones once, in val/real/)
    OUT/ckpt-XXXXXX/               periodic checkpoints (last ``keep_last`` kept), written to ``.tmp`` then renamed
        vocoder/                   the generator as a loadable vocoder (``UnitHiFiGAN.from_pretrained``)
        generator.safetensors      training weights (weight-norm parameters), discriminators.safetensors
        optimizers.pt              both optimizers, both schedulers, the fp16 grad scaler
        rng-{rank}.pt              python, numpy, torch (and CUDA) RNG states of each process
        trainer_state.json         step, epoch, data position, architectures
    OUT/final/                     the trained vocoder (plain weights)

A run started again with the same output folder resumes from its newest checkpoint, and continues exactly as if it
had never stopped: same batches, same crops, same dropout masks, same learning rates.

Run it with ``speechgpt vocoder train`` (or ``accelerate launch -m speechgpt.serve.cli vocoder train ...`` on
several GPUs), or from Python with :func:`recipe_main`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from speechgpt.audio import write_wav
from speechgpt.fileio import atomic_write_text
from speechgpt.progress import progress_bar
from speechgpt.vocoder.config import VocoderConfig
from speechgpt.vocoder.data import SegmentCollator, SegmentSampler, UnitAudioDataset, read_unit_manifest
from speechgpt.vocoder.discriminators import DiscriminatorConfig, Discriminators
from speechgpt.vocoder.hifigan import UnitHiFiGAN
from speechgpt.vocoder.losses import (
    MelConfig,
    MelSpectrogram,
    discriminator_loss,
    duration_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    mel_l1_loss,
)

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_FORMAT",
    "MIXED_PRECISION",
    "MODEL_PRESETS",
    "VocoderTrainConfig",
    "VocoderTrainer",
    "find_checkpoints",
    "load_model_config",
    "recipe_main",
]

MODEL_PRESETS = ("released", "tiny")
"""Named generator architectures (:meth:`VocoderConfig.from_name`)."""
MIXED_PRECISION = ("no", "bf16", "fp16")
"""Values of :attr:`VocoderTrainConfig.mixed_precision` (passed to ``accelerate``)."""
CHECKPOINT_FORMAT = "speechgpt-vocoder-train-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_PATTERN = re.compile(r"^ckpt-(\d{6,})$")
TMP_SUFFIX = ".tmp"
FINAL_NAME = "final"
METRICS_NAME = "metrics.jsonl"
TRAIN_CONFIG_NAME = "train_config.json"
STATE_NAME = "trainer_state.json"
GENERATOR_NAME = "generator.safetensors"
DISCRIMINATORS_NAME = "discriminators.safetensors"
OPTIMIZERS_NAME = "optimizers.pt"
VOCODER_DIR = "vocoder"
MAX_PREDICTED_LENGTH_RATIO = 4
"""A validation sample with predicted durations is skipped when it would be this many times the real length."""
VAL_DIR = "val"


@dataclass
class VocoderTrainConfig:
    """Settings of one vocoder training run (defaults: the released vocoder's recipe)."""

    manifest: Path
    """JSON Lines from ``speechgpt units encode`` (``audio``, ``units``, ``durations`` per record)."""
    output_dir: Path
    """Run folder: checkpoints, metrics, validation samples and ``final/``."""
    model: str | None = None
    """Generator architecture: ``"released"``, ``"tiny"`` or a JSON file (our ``config.json``, a dict of
    :class:`VocoderConfig` fields, or fairseq's vocoder ``config.json``). None: ``"released"``, or the architecture
    of ``init_from``."""
    init_from: Path | None = None
    """Start the generator from these weights: a vocoder folder or the released fairseq checkpoint file."""
    discriminator: str | None = None
    """Discriminator sizes: ``"released"`` (HiFi-GAN V1) or ``"tiny"``. None: ``"tiny"`` when ``model`` is
    ``"tiny"``, else ``"released"``."""
    val_manifest: Path | None = None
    """Validation records; None: the first ``num_val_items`` training records (a fit check, not held out)."""
    num_val_items: int = 4
    """Whole recordings scored at each validation."""
    num_val_samples: int = 2
    """Validation recordings written as WAV at each validation."""
    steps: int = 500_000
    """Training steps (generator updates) in total, counting those of resumed runs."""
    batch_size: int = 16
    """Segments per step on each process."""
    segment_frames: int = 28
    """Unit frames per training segment (28 x 320 = 8960 samples, the release's ``segment_size``)."""
    learning_rate: float = 2e-4
    """AdamW learning rate of the generator and of the discriminators."""
    betas: tuple[float, float] = (0.8, 0.99)
    """AdamW betas of both optimizers."""
    weight_decay: float = 0.01
    """AdamW weight decay of both optimizers (PyTorch's default, as HiFi-GAN uses)."""
    lr_decay: float = 0.999
    """Both learning rates are multiplied by this after every epoch."""
    mel_weight: float = 45.0
    """Weight of the log-mel L1 loss."""
    fm_weight: float = 2.0
    """Weight of the feature-matching loss."""
    duration_weight: float = 1.0
    """Weight of the log-duration MSE."""
    checkpoint_every: int = 5000
    """Write a checkpoint every this many steps (and at the end)."""
    validate_every: int = 1000
    """Validate every this many steps; 0 never."""
    keep_last: int = 3
    """Checkpoints kept; older ones are deleted."""
    seed: int = 1234
    """Seed of the initial weights, the data order and crops, and dropout."""
    mixed_precision: str = "no"
    """``"no"``, ``"bf16"`` or ``"fp16"`` (autocast through ``accelerate``; losses stay float32)."""
    num_workers: int = 0
    """Data-loading worker processes."""
    resume: bool = True
    """Continue from the newest checkpoint in ``output_dir`` if there is one; False deletes the run's old outputs
    (checkpoints, ``final/``, metrics, samples) and starts over."""
    cpu: bool = False
    """Train on the CPU even when an accelerator is present."""
    progress: bool = True
    """Show a progress bar on stderr (main process only)."""
    cache_max_bytes: int = 2 * 1024**3
    """Keep all training audio in memory when it needs at most this many bytes."""

    def __post_init__(self) -> None:
        self.manifest = Path(self.manifest)
        self.output_dir = Path(self.output_dir)
        self.init_from = None if self.init_from is None else Path(self.init_from)
        self.val_manifest = None if self.val_manifest is None else Path(self.val_manifest)
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        positive = {
            "steps": self.steps,
            "batch_size": self.batch_size,
            "checkpoint_every": self.checkpoint_every,
            "keep_last": self.keep_last,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        non_negative = {
            "validate_every": self.validate_every,
            "num_val_items": self.num_val_items,
            "num_val_samples": self.num_val_samples,
            "num_workers": self.num_workers,
            "cache_max_bytes": self.cache_max_bytes,
        }
        for name, value in non_negative.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        # The loss's mel frames need more samples than their reflection padding (384): two unit frames at least.
        if not isinstance(self.segment_frames, int) or self.segment_frames < 2:
            raise ValueError(f"segment_frames must be an int >= 2, got {self.segment_frames!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate!r}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if not 0.0 < self.lr_decay <= 1.0:
            raise ValueError(f"lr_decay must be in (0, 1], got {self.lr_decay!r}")
        for name in ("weight_decay", "mel_weight", "fm_weight", "duration_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {list(MIXED_PRECISION)}, got {self.mixed_precision!r}")
        if self.model is not None and self.init_from is not None:
            raise ValueError(
                f"give either model={self.model!r} or init_from={str(self.init_from)!r}, not both: "
                "a starting checkpoint brings its own architecture"
            )
        if self.discriminator is not None and self.discriminator not in ("released", "tiny"):
            raise ValueError(f"discriminator must be 'released' or 'tiny', got {self.discriminator!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (paths as strings)."""
        data = asdict(self)
        return {k: str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v for k, v in data.items()}


def load_model_config(spec: str) -> VocoderConfig:
    """The generator architecture named by ``spec``: a preset name or a JSON file.

    A JSON file may be a folder's ``config.json`` written by :meth:`UnitHiFiGAN.save_pretrained`, a plain dict of
    :class:`VocoderConfig` fields, or fairseq's vocoder ``config.json`` (recognised by ``num_embeddings``).

    Raises:
        FileNotFoundError: ``spec`` is neither a preset nor an existing file.
        ValueError: the file is not valid JSON or not a vocoder config.
    """
    if spec in MODEL_PRESETS:
        return VocoderConfig.from_name(spec)
    path = Path(spec)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{spec}: not a model preset {list(MODEL_PRESETS)} and no such config file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a vocoder config must be a JSON object")
    try:
        if "num_embeddings" in data:
            return VocoderConfig.from_fairseq_json(data)
        return VocoderConfig.from_dict({k: v for k, v in data.items() if k not in ("format", "version")})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from e


def find_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest step first (``.tmp`` folders of interrupted saves excluded)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for path in output_dir.iterdir():
        match = CHECKPOINT_PATTERN.match(path.name)
        if match and path.is_dir() and (path / STATE_NAME).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def _checkpoint_name(step: int) -> str:
    return f"ckpt-{step:06d}"


def _rng_state() -> dict[str, Any]:
    """Every global RNG a training step may draw from, in a form ``torch.load(weights_only=True)`` reads."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.copy()), int(position), int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy(), position, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def _deferred_interrupt() -> Iterator[Callable[[], bool]]:
    """Hold back the first SIGINT until the caller asks (between steps); a second one interrupts at once.

    Outside the main thread signals cannot be caught; there Ctrl-C keeps its ordinary effect.
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    received: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if received:
            raise KeyboardInterrupt
        received.append(signum)
        logger.warning("interrupt received: stopping after this step (Ctrl-C again to stop now)")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(received)
    finally:
        signal.signal(signal.SIGINT, previous)


def _save_safetensors(module: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}, str(path))


def _load_safetensors(module: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    module.load_state_dict(load_file(str(path)), strict=True)


class VocoderTrainer:
    """The vocoder recipe: :meth:`setup`, :meth:`train`, :meth:`save_checkpoint`, :meth:`cleanup`.

    Args:
        config: The run's settings.
    """

    def __init__(self, config: VocoderTrainConfig):
        if not isinstance(config, VocoderTrainConfig):
            raise TypeError(f"config must be a VocoderTrainConfig, got {type(config).__name__}")
        self.config = config
        self.step = 0
        self.epoch = 0
        self.consumed = 0  # training keys this process has consumed in the current epoch
        self.last_saved_step = -1
        self._mid_step = False  # inside train_step: weights partly updated for a step not yet counted
        self._ready = False

    # --- setup ------------------------------------------------------------------------------------------------

    def setup(self) -> None:
        """Build everything: accelerator, models, optimizers, data; then resume from a checkpoint or start fresh.

        Raises:
            FileNotFoundError: the manifest, ``init_from`` or a model config file is missing.
            ValueError: bad records (naming file and line), or a checkpoint made for another architecture.
        """
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        config = self.config
        self.accelerator = accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=config.cpu)
        self.is_main = accelerator.is_main_process
        out = config.output_dir

        set_seed(config.seed)
        generator = self._build_generator()
        self.model_config = generator.config
        disc_name = config.discriminator or ("tiny" if config.model == "tiny" else "released")
        self.disc_config = DiscriminatorConfig.from_name(disc_name)
        generator.apply_weight_norm().train()
        discriminators = Discriminators(self.disc_config).train()
        self.mel = MelSpectrogram(MelConfig(sample_rate=self.model_config.sample_rate)).to(accelerator.device)

        records = read_unit_manifest(config.manifest, num_units=self.model_config.num_units)
        data_kw: dict[str, Any] = {
            "hop_length": self.model_config.hop_length,
            "sample_rate": self.model_config.sample_rate,
            "cache_max_bytes": config.cache_max_bytes,
        }
        self.train_set = UnitAudioDataset(records, segment_frames=config.segment_frames, **data_kw)
        if config.val_manifest is not None:
            val_records = read_unit_manifest(config.val_manifest, num_units=self.model_config.num_units)
        else:
            val_records = records
        val_records = val_records[: config.num_val_items]
        self.val_set = UnitAudioDataset(val_records, **data_kw) if val_records else None
        # Only now that the inputs are known to be good may an old run be touched (--fresh deletes it).
        if self.is_main:
            out.mkdir(parents=True, exist_ok=True)
            self._remove_stale_tmp()
            if not config.resume:
                self._remove_previous_run()
        accelerator.wait_for_everyone()
        self.sampler = SegmentSampler(
            len(self.train_set),
            seed=config.seed,
            num_replicas=accelerator.num_processes,
            rank=accelerator.process_index,
        )
        self.loader = torch.utils.data.DataLoader(
            self.train_set,
            batch_size=config.batch_size,
            sampler=self.sampler,
            collate_fn=SegmentCollator(self.model_config.hop_length, config.segment_frames),
            num_workers=config.num_workers,
            persistent_workers=config.num_workers > 0,
            pin_memory=accelerator.device.type == "cuda",
            # Each new iterator draws a worker seed; from its own generator, not the global RNG that dropout uses
            # (a resumed run creates one more iterator than the run it continues). The dataset draws no randomness.
            generator=torch.Generator().manual_seed(config.seed),
        )

        opt_kw: dict[str, Any] = {
            "lr": config.learning_rate,
            "betas": config.betas,
            "weight_decay": config.weight_decay,
        }
        optimizer_g = torch.optim.AdamW(generator.parameters(), **opt_kw)
        optimizer_d = torch.optim.AdamW(discriminators.parameters(), **opt_kw)
        # Schedulers stay outside accelerate.prepare: its wrapper would step them once per process per call.
        self.scheduler_g = torch.optim.lr_scheduler.ExponentialLR(optimizer_g, gamma=config.lr_decay)
        self.scheduler_d = torch.optim.lr_scheduler.ExponentialLR(optimizer_d, gamma=config.lr_decay)
        self.generator, self.discriminators, self.optimizer_g, self.optimizer_d = accelerator.prepare(
            generator, discriminators, optimizer_g, optimizer_d
        )

        checkpoints = find_checkpoints(out) if config.resume else []
        if checkpoints:
            self.load_checkpoint(checkpoints[-1])
        if self.is_main:
            atomic_write_text(out / TRAIN_CONFIG_NAME, json.dumps(self._run_description(), indent=2) + "\n")
            self._truncate_metrics()
        accelerator.wait_for_everyone()
        self._ready = True
        logger.info(
            "vocoder training: %d records, %s generator parameters, %s discriminator parameters, device %s",
            len(self.train_set),
            f"{sum(p.numel() for p in generator.parameters()):,}",
            f"{sum(p.numel() for p in discriminators.parameters()):,}",
            accelerator.device,
        )

    def _build_generator(self) -> UnitHiFiGAN:
        config = self.config
        if config.init_from is not None:
            logger.info("initialising the generator from %s", config.init_from)
            return UnitHiFiGAN.load(config.init_from, device="cpu")
        return UnitHiFiGAN(load_model_config(config.model or "released"))

    def _run_description(self) -> dict[str, Any]:
        return {
            "train": self.config.to_dict(),
            "model": self.model_config.to_dict(),
            "discriminator": self.disc_config.to_dict(),
        }

    def _remove_stale_tmp(self) -> None:
        for path in self.config.output_dir.iterdir():
            stem = path.name.removesuffix(TMP_SUFFIX)
            ours = stem == FINAL_NAME or CHECKPOINT_PATTERN.match(stem)
            if path.name.endswith(TMP_SUFFIX) and ours and path.is_dir():
                logger.warning("removing %s, left by an interrupted save", path)
                shutil.rmtree(path)

    def _remove_previous_run(self) -> None:
        out = self.config.output_dir
        for path in out.iterdir():
            if path.is_dir() and (CHECKPOINT_PATTERN.match(path.name) or path.name in (FINAL_NAME, VAL_DIR)):
                shutil.rmtree(path)
        (out / METRICS_NAME).unlink(missing_ok=True)

    def _truncate_metrics(self) -> None:
        """Drop metric lines past the resumed step (written after the checkpoint by the run that stopped)."""
        path = self.config.output_dir / METRICS_NAME
        if not path.is_file():
            return
        lines = path.read_text(encoding="utf-8").splitlines()
        kept = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break  # a torn last line of a killed run
            if not isinstance(record, dict) or record.get("step", math.inf) > self.step:
                break
            kept.append(line)
        if len(kept) != len(lines):
            atomic_write_text(path, "".join(line + "\n" for line in kept))

    # --- checkpoints ------------------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        """Write ``ckpt-{step}/`` (atomically: into ``.tmp``, then renamed) and delete checkpoints beyond ``keep_last``.

        Returns:
            The checkpoint folder.
        """
        accelerator = self.accelerator
        out = self.config.output_dir
        final = out / _checkpoint_name(self.step)
        tmp = out / (final.name + TMP_SUFFIX)
        if self.is_main:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        torch.save(_rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
        if self.is_main:
            generator = accelerator.unwrap_model(self.generator)
            generator.save_pretrained(tmp / VOCODER_DIR)
            _save_safetensors(generator, tmp / GENERATOR_NAME)
            _save_safetensors(accelerator.unwrap_model(self.discriminators), tmp / DISCRIMINATORS_NAME)
            optimizers = {
                "generator": self.optimizer_g.state_dict(),
                "discriminators": self.optimizer_d.state_dict(),
                "scheduler_generator": self.scheduler_g.state_dict(),
                "scheduler_discriminators": self.scheduler_d.state_dict(),
            }
            if accelerator.scaler is not None:
                optimizers["scaler"] = accelerator.scaler.state_dict()
            torch.save(optimizers, tmp / OPTIMIZERS_NAME)
        accelerator.wait_for_everyone()
        if self.is_main:
            state = {
                "format": CHECKPOINT_FORMAT,
                "version": CHECKPOINT_VERSION,
                "step": self.step,
                "epoch": self.epoch,
                "sampler": self.sampler.state_dict(self.consumed),
                "num_processes": accelerator.num_processes,
                **self._run_description(),
            }
            # The state file is written last: a folder holding it is complete.
            atomic_write_text(tmp / STATE_NAME, json.dumps(state, indent=2) + "\n")
            if final.exists():
                shutil.rmtree(final)
            tmp.replace(final)
            for old in find_checkpoints(out)[: -self.config.keep_last]:
                shutil.rmtree(old)
            logger.info("saved checkpoint %s", final)
        accelerator.wait_for_everyone()
        self.last_saved_step = self.step
        return final

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore everything :meth:`save_checkpoint` wrote, so training continues bit for bit.

        Raises:
            ValueError: the checkpoint is not ours, or was made with another architecture, seed or process count.
        """
        path = Path(path)
        state = json.loads((path / STATE_NAME).read_text(encoding="utf-8"))
        if state.get("format") != CHECKPOINT_FORMAT or state.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"{path}: not a vocoder training checkpoint of version {CHECKPOINT_VERSION}")
        for key, ours in (("model", self.model_config.to_dict()), ("discriminator", self.disc_config.to_dict())):
            if state[key] != ours:
                raise ValueError(
                    f"{path}: the checkpoint's {key} architecture differs from this run's; start over with --fresh "
                    f"or use another output folder (checkpoint: {state[key]}, run: {ours})"
                )
        if state["num_processes"] != self.accelerator.num_processes:
            raise ValueError(
                f"{path}: saved by {state['num_processes']} process(es), resumed with "
                f"{self.accelerator.num_processes}; the data order would differ, so resume with the same count"
            )
        self.sampler.load_state_dict(state["sampler"])
        _load_safetensors(self.accelerator.unwrap_model(self.generator), path / GENERATOR_NAME)
        _load_safetensors(self.accelerator.unwrap_model(self.discriminators), path / DISCRIMINATORS_NAME)
        optimizers = torch.load(path / OPTIMIZERS_NAME, map_location="cpu", weights_only=True)
        self.optimizer_g.load_state_dict(optimizers["generator"])
        self.optimizer_d.load_state_dict(optimizers["discriminators"])
        self.scheduler_g.load_state_dict(optimizers["scheduler_generator"])
        self.scheduler_d.load_state_dict(optimizers["scheduler_discriminators"])
        if "scaler" in optimizers and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(optimizers["scaler"])
        rng_path = path / f"rng-{self.accelerator.process_index}.pt"
        _set_rng_state(torch.load(rng_path, map_location="cpu", weights_only=True))
        self.step = self.last_saved_step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.consumed = self.sampler.start
        logger.info("resumed from %s (step %d, epoch %d)", path, self.step, self.epoch)

    # --- training ---------------------------------------------------------------------------------------------

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One discriminator update and one generator update on a batch from the loader; returns the losses."""
        config, accelerator = self.config, self.accelerator
        self._mid_step = True
        real = batch["audio"]
        size = real.shape[0]
        output = self.generator(batch["units"], batch["durations"], batch["unit_lengths"])
        fake = self._fit_to(output.wave.float(), real.shape[1], output.frame_lengths)

        scores_real, scores_fake = self.discriminators(torch.cat([real, fake.detach()])).split([size, size])
        loss_d = discriminator_loss(scores_real, scores_fake)
        self.optimizer_d.zero_grad(set_to_none=True)
        accelerator.backward(loss_d)
        self.optimizer_d.step()

        scores_real, scores_fake = self.discriminators(torch.cat([real, fake])).split([size, size])
        adversarial = generator_adversarial_loss(scores_fake)
        matching = feature_matching_loss(scores_real, scores_fake)
        mel = mel_l1_loss(fake, real, self.mel)
        duration = duration_loss(output.log_durations, batch["target_durations"], batch["unit_lengths"])
        loss_g = adversarial + config.fm_weight * matching + config.mel_weight * mel + config.duration_weight * duration
        self.optimizer_g.zero_grad(set_to_none=True)
        accelerator.backward(loss_g)
        self.optimizer_g.step()
        self._mid_step = False
        return {
            "loss_g": loss_g.item(),
            "loss_d": loss_d.item(),
            "mel": mel.item(),
            "dur": duration.item(),
            "adv": adversarial.item(),
            "fm": matching.item(),
        }

    def _fit_to(self, wave: torch.Tensor, length: int, frame_lengths: torch.Tensor) -> torch.Tensor:
        """Generated ``[B, S']`` padded to ``length`` samples, zero after each item's real samples (as the audio)."""
        if wave.shape[1] < length:
            wave = F.pad(wave, (0, length - wave.shape[1]))
        wave = wave[:, :length]
        ends = frame_lengths * self.model_config.hop_length
        return wave * (torch.arange(length, device=wave.device)[None, :] < ends[:, None])

    def train(self) -> Path:
        """Train until ``config.steps``, checkpointing and validating on schedule; then write ``final/``.

        Ctrl-C (SIGINT) stops after the step in progress, which is checkpointed before ``KeyboardInterrupt`` is
        raised; a second Ctrl-C stops at once (the run then resumes from its last periodic checkpoint).

        Returns:
            The ``final/`` vocoder folder.
        """
        if not self._ready:
            self.setup()
        config = self.config
        progress = self._progress()
        try:
            with progress, _deferred_interrupt() as interrupted:
                task = progress.add_task("training", total=config.steps, completed=self.step, status="")
                started, start_step = time.perf_counter(), self.step
                while self.step < config.steps:
                    self.sampler.set_epoch(self.epoch, self.consumed)
                    for batch in self.loader:
                        tic = time.perf_counter()
                        losses = self.train_step(self._to_device(batch))
                        self.step += 1
                        self.consumed += batch["audio"].shape[0]
                        self._log(losses, time.perf_counter() - tic)
                        rate = (self.step - start_step) / max(time.perf_counter() - started, 1e-9)
                        status = (
                            f"g {losses['loss_g']:.3f}  d {losses['loss_d']:.3f}  mel {losses['mel']:.3f}  "
                            f"dur {losses['dur']:.3f}  {rate:.2f} steps/s"
                        )
                        progress.update(task, completed=self.step, status=status)
                        if config.validate_every and self.step % config.validate_every == 0:
                            self.validate()
                        if self.step % config.checkpoint_every == 0:
                            self.save_checkpoint()
                        if self._any_process(interrupted()):
                            raise KeyboardInterrupt
                        if self.step >= config.steps:
                            break
                    else:  # the epoch ran out: decay the learning rates and start the next one
                        self.epoch += 1
                        self.consumed = 0
                        self.scheduler_g.step()
                        self.scheduler_d.step()
        except KeyboardInterrupt:
            # A step cut short has updated some weights but not the step count: saving it would break exact resume.
            if self.step > self.last_saved_step and not self._mid_step:
                logger.warning("interrupted: saving step %d before stopping", self.step)
                self.save_checkpoint()
            raise
        if self.last_saved_step != self.step:
            self.save_checkpoint()
        return self.save_final()

    def _any_process(self, flag: bool) -> bool:
        """``flag`` OR-ed over all processes, so that every process stops after the same step."""
        if self.accelerator.num_processes == 1:
            return flag
        value = torch.tensor([float(flag)], device=self.accelerator.device)
        return bool(self.accelerator.reduce(value, reduction="sum").item() > 0)

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        device = self.accelerator.device
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}

    def _progress(self) -> Any:
        return progress_bar(disable=not (self.config.progress and self.is_main))

    def _log(self, values: dict[str, Any], seconds: float | None = None) -> None:
        if not self.is_main:
            return
        record: dict[str, Any] = {"step": self.step}
        if seconds is not None:
            record.update(epoch=self.epoch, lr=self.optimizer_g.param_groups[0]["lr"])
        record.update(values)
        if seconds is not None:
            record["seconds"] = round(seconds, 4)
        with (self.config.output_dir / METRICS_NAME).open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mel L1 and duration loss on whole validation recordings; writes ``val/step-XXXXXX/*.wav`` samples.

        Runs on the main process; dropout is off, so it draws nothing from any RNG.
        """
        result: dict[str, float] = {}
        if self.val_set is not None and self.is_main:
            generator = self.accelerator.unwrap_model(self.generator)
            generator.eval()
            collate = SegmentCollator(self.model_config.hop_length)
            mel_total = duration_total = 0.0
            folder = self.config.output_dir / VAL_DIR / f"step-{self.step:06d}"
            for index in range(len(self.val_set)):
                batch = self._to_device(collate([self.val_set[index]]))
                output = generator(batch["units"], batch["durations"])
                fake = output.wave.float()
                mel_total += mel_l1_loss(fake, batch["audio"], self.mel).item()
                duration_total += duration_loss(output.log_durations, batch["durations"]).item()
                if index < self.config.num_val_samples:
                    rate = self.model_config.sample_rate
                    write_wav(folder / f"{index:02d}_generated.wav", fake[0], rate)
                    frames = generator.predict_durations(batch["units"][0])
                    # An early or diverged predictor can ask for absurd lengths; such a sample is not worth the time.
                    if int(frames.sum()) <= MAX_PREDICTED_LENGTH_RATIO * int(batch["frame_lengths"][0]):
                        predicted = generator.synthesize(batch["units"][0], durations=frames)
                        write_wav(folder / f"{index:02d}_predicted_durations.wav", predicted, rate)
                    real_path = self.config.output_dir / VAL_DIR / "real" / f"{index:02d}.wav"
                    if not real_path.exists():
                        write_wav(real_path, batch["audio"][0], rate)
            generator.train()
            result = {"val_mel": mel_total / len(self.val_set), "val_dur": duration_total / len(self.val_set)}
            self._log(result)
            logger.info("step %d: validation mel L1 %.4f, duration MSE %.4f", self.step, *result.values())
        self.accelerator.wait_for_everyone()
        return result

    def save_final(self) -> Path:
        """Write the trained generator to ``final/`` (plain weights: weight norm folded), loadable by
        :meth:`UnitHiFiGAN.from_pretrained`."""
        out = self.config.output_dir
        final = out / FINAL_NAME
        if self.is_main:
            tmp = out / (FINAL_NAME + TMP_SUFFIX)
            if tmp.exists():
                shutil.rmtree(tmp)
            self.accelerator.unwrap_model(self.generator).save_pretrained(tmp)
            if final.exists():
                shutil.rmtree(final)
            tmp.replace(final)
            logger.info("wrote the trained vocoder to %s", final)
        self.accelerator.wait_for_everyone()
        return final

    def cleanup(self) -> None:
        """Release the accelerator, so the process can run another recipe (e.g. with another precision)."""
        from accelerate.state import AcceleratorState

        if hasattr(self, "accelerator"):
            self.accelerator.free_memory()
            # accelerate keeps one global state per process and refuses a second Accelerator with other settings.
            AcceleratorState._reset_state()
        self._ready = False


def recipe_main(config: VocoderTrainConfig) -> Path:
    """Run the whole recipe and return the ``final/`` vocoder folder."""
    trainer = VocoderTrainer(config)
    try:
        trainer.setup()
        return trainer.train()
    finally:
        trainer.cleanup()
