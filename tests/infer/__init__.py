"""A tiny random SpeechGPT bundle for the inference and chat tests, built from nothing in about a second."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from speechgpt.infer.bundle import assemble_bundle
from speechgpt.lm import create_model, expand_vocabulary, save_model, tiny_llama_config, train_text_tokenizer
from speechgpt.prompt_format import META_INSTRUCTION, OUTPUT_MODALITY_CUES
from speechgpt.units.kmeans import KMeans
from speechgpt.units.light import LightFeatures
from speechgpt.units.tokenizer import SpeechTokenizer
from speechgpt.vocoder import FastVocoderConfig, UnitHiFiGAN, VocoderConfig
from speechgpt.vocoder.fit import FastVocoderFitArgs, fit_fast_vocoder
from tests.synth import SAMPLE_RATE, random_utterance

NUM_UNITS = 50
TEXT_LINES = [
    META_INSTRUCTION,
    *OUTPUT_MODALITY_CUES.values(),
    "[Human]: What is the capital of France?<eoh>. [SpeechGPT]: [ta] Paris is the capital of France.<eoa>",
    "Transcribe the speech. This is input: hello there; [ta] The answer is seven; [ua] done",
    "the quick brown fox jumps over the lazy dog, twice and then again.",
    "One two three four five six seven eight nine ten; how are you today?",
] * 3


@dataclass
class TinyBundle:
    path: Path
    question_wav: Path
    """A short synthetic 'spoken question' (16 kHz WAV)."""


def build_tiny_bundle(root: Path, *, with_lora: bool = False) -> TinyBundle:
    """Write a complete random bundle (50 units) under ``root/bundle`` with its parts under ``root/parts``."""
    parts = root / "parts"
    tokenizer = train_text_tokenizer(TEXT_LINES, vocab_size=300)
    expand_vocabulary(None, tokenizer, NUM_UNITS)
    config = tiny_llama_config(len(tokenizer), hidden_size=32, num_layers=2, num_heads=2, max_position_embeddings=1024)
    model = create_model(config, seed=0)
    save_model(model, tokenizer, parts / "lm")

    waves = [random_utterance(seed) for seed in range(8)]
    extractor = LightFeatures()
    kmeans = KMeans.train(torch.cat([extractor(w) for w in waves]), NUM_UNITS, seed=0, niter=5)
    speech_tokenizer = SpeechTokenizer(extractor, kmeans)
    speech_tokenizer.save_pretrained(parts / "tokenizer")

    # The fast vocoder's tables fitted on the same audio (no network training): realistic levels in a blink.
    units = [speech_tokenizer.encode(w, sample_rate=SAMPLE_RATE) for w in waves]
    vocoder_config = FastVocoderConfig(
        num_units=NUM_UNITS, embed_dim=8, channels=16, duration_embed_dim=8, duration_channels=8, dilations=(1,)
    )
    args = FastVocoderFitArgs(refiner_steps=0, duration_steps=0)
    fit_fast_vocoder(waves, units, NUM_UNITS, config=vocoder_config, args=args, centers=kmeans.centers).save_pretrained(
        parts / "vocoder"
    )

    lora_dir = None
    if with_lora:
        from speechgpt.lm import LoraSettings, add_lora, save_lora

        peft_model = add_lora(create_model(config, seed=0), LoraSettings(r=2, alpha=4, dropout=0.0))
        lora_dir = save_lora(peft_model, parts / "lora")

    bundle = assemble_bundle(
        root / "bundle",
        tokenizer_dir=parts / "tokenizer",
        lm_dir=parts / "lm",
        vocoder_dir=parts / "vocoder",
        lora_dir=lora_dir,
    )
    question = root / "question.wav"
    sf.write(question, random_utterance(100), SAMPLE_RATE)
    return TinyBundle(path=bundle, question_wav=question)


def small_hifigan(seed: int = 0) -> UnitHiFiGAN:
    """A random unit HiFi-GAN with the released rates and one small resblock (cheap enough to stream in tests)."""
    config = VocoderConfig.tiny(num_units=NUM_UNITS, resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1,),))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UnitHiFiGAN(config).eval()


def speech_like(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    """Synthetic 16 kHz float32 'speech' of about ``seconds``."""
    wave = np.concatenate([random_utterance(seed + i) for i in range(max(1, round(seconds / 1.44)))])
    return wave[: int(seconds * SAMPLE_RATE)].astype(np.float32)


class ScriptedLM(torch.nn.Module):
    """A stand-in LM that writes a fixed sequence of token ids (then ``fallback`` forever), whatever the prompt.

    Every prompt it is given is kept in :attr:`prompts`, and :attr:`steps` counts forward calls of the current
    answer, so tests can check what the model saw and when events came out.
    """

    def __init__(self, script: list[int], vocab_size: int, fallback: int) -> None:
        super().__init__()
        self.script = list(script)
        self.vocab_size = vocab_size
        self.fallback = fallback
        self.prompts: list[list[int]] = []
        self.steps = 0
        self.anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)  # gives the module a device

    def forward(self, input_ids: torch.Tensor, **kwargs: object) -> object:
        from types import SimpleNamespace

        if input_ids.shape[1] > 1:  # a prompt (prefill): a new answer starts
            self.prompts.append(input_ids[0].tolist())
            self.steps = 0
        token = self.script[self.steps] if self.steps < len(self.script) else self.fallback
        self.steps += 1
        logits = torch.full((1, input_ids.shape[1], self.vocab_size), -1e4)
        logits[0, -1, token] = 0.0
        return SimpleNamespace(logits=logits, cache=None)


class RandomLM(torch.nn.Module):
    """A stand-in LM whose next-token logits are seeded noise: it writes any id of the vocabulary, in any order."""

    def __init__(self, vocab_size: int, seed: int = 0, favour: list[int] | None = None, bias: float = 4.0) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.generator = torch.Generator().manual_seed(seed)
        self.bias = torch.zeros(vocab_size)
        self.bias[list(favour or [])] = bias  # make some ids (tags, units) common, so spans and tags are exercised
        self.anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)

    def forward(self, input_ids: torch.Tensor, **kwargs: object) -> object:
        from types import SimpleNamespace

        logits = 3 * torch.randn(1, input_ids.shape[1], self.vocab_size, generator=self.generator) + self.bias
        return SimpleNamespace(logits=logits, cache=None)
