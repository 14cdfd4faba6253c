"""Speed of one spoken turn through ``SpeechGPT`` on a random bundle: per stage, and streaming vs waiting.

Usage::

    python benchmarks/infer.py            # short and long spoken answers, fast and unit HiFi-GAN vocoders
    python benchmarks/infer.py --quick    # a short run to check that everything works

Prints tables and writes ``benchmarks/infer.json``.

The script builds its bundle from nothing: a byte-level BPE text tokenizer expanded with the unit vocabulary, the
embedded demo's LM architecture (``tiny_llama_config`` defaults: 4 layers, 256 wide) with random weights, a light
(MFCC) k-means speech tokenizer and the fast vocoder's tables fitted on espeak-ng speech, plus the full-size unit
HiFi-GAN with random weights (every unit lasts 2 frames, as in ``benchmarks/vocoder.py``).

A random LM writes noise, so the answer is forced: every step runs the real model's forward pass on the real KV
cache, and the next token is then taken from a script (``transcript; [ta] answer; [ua] <sosp>...<eosp><eoa>``
whose units are the speech tokenizer's units of espeak-ng reading the answer). Prefill, per-token decode cost,
parsing, vocoding and streaming are all real; only the choice of token is not.

Measured per answer: the stages of the turn (speech to units, prefill, decode tokens/s, vocoder RTF), and the
latency a listener sees: time to the first text and to the first audio while streaming, against the time to the
complete reply without streaming (the issue's target: first streamed audio <= 0.3x of the full reply's time on a
long answer).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from _environment import run_info
from speechgpt.data.tts import EspeakEngine, VoiceSettings
from speechgpt.fileio import atomic_write_text
from speechgpt.infer import AudioChunk, Done, GenerationOptions, SpeechGPT, TextDelta, assemble_bundle
from speechgpt.lm import (
    count_parameters,
    create_model,
    expand_vocabulary,
    save_model,
    tiny_llama_config,
    train_text_tokenizer,
)
from speechgpt.prompt_format import META_INSTRUCTION
from speechgpt.units.kmeans import KMeans
from speechgpt.units.light import LightFeatures
from speechgpt.units.tokenizer import SpeechTokenizer
from speechgpt.vocoder import FastVocoderConfig, UnitHiFiGAN, VocoderConfig
from speechgpt.vocoder.fit import FastVocoderFitArgs, fit_fast_vocoder

DEFAULT_OUTPUT = Path(__file__).with_name("infer.json")
FRAMES_PER_UNIT = 2
"""Frames per unit of the random unit HiFi-GAN (its duration predictor is pinned, as in benchmarks/vocoder.py)."""
QUESTION = "What do plants need to grow well in a small garden?"
TRANSCRIPT = "what do plants need to grow well in a small garden"
SHORT_ANSWER = "Plants need light, water and good soil."
LONG_ANSWER = (
    "Plants need plenty of light, regular water and good soil. Give them a sunny place, water them when the top "
    "of the soil is dry, and feed them with compost in the spring. Keep weeds away, because weeds take the water "
    "and the food that your plants need, and check the leaves for insects every week."
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore, and the shells she sells are surely sea shells.",
    "How much wood would a woodchuck chuck if a woodchuck could chuck wood?",
    "Please call Stella and ask her to bring these things with her from the store.",
    "Six spoons of fresh snow peas, five thick slabs of blue cheese, and maybe a snack for her brother Bob.",
    "We also need a small plastic snake and a big toy frog for the kids.",
    "The rainbow is a division of white light into many beautiful colors.",
    "These take the shape of a long round arch, with its path high above.",
    QUESTION,
    SHORT_ANSWER,
    LONG_ANSWER,
]


class ForcedLM(torch.nn.Module):
    """The real LM's forward pass (and KV cache) every step, with the next token taken from a script."""

    def __init__(self, model: torch.nn.Module, script: list[int], fallback: int) -> None:
        super().__init__()
        self.model = model
        self.config = model.config
        self.script = script
        self.fallback = fallback
        self.step = 0

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: Any = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
    ) -> Any:
        if input_ids.shape[1] > 1:  # a new prompt
            self.step = 0
        out = self.model(input_ids=input_ids, cache=cache, use_cache=use_cache, logits_to_keep=logits_to_keep)
        token = self.script[self.step] if self.step < len(self.script) else self.fallback
        self.step += 1
        logits = torch.full_like(out.logits, -1e4)
        logits[..., -1, token] = 0.0
        out.logits = logits
        return out


def build_bundle(root: Path, num_units: int, speech: list[np.ndarray]) -> tuple[Path, UnitHiFiGAN]:
    """The random bundle (fast vocoder) under ``root``, and a full-size random unit HiFi-GAN for the same units."""
    parts = root / "parts"
    tokenizer = train_text_tokenizer([META_INSTRUCTION, *CORPUS] * 4, vocab_size=512)
    expand_vocabulary(None, tokenizer, num_units)
    save_model(create_model(tiny_llama_config(len(tokenizer)), seed=0), tokenizer, parts / "lm")
    extractor = LightFeatures()
    kmeans = KMeans.train(torch.cat([extractor(w) for w in speech]), num_units, seed=0, niter=10)
    speech_tokenizer = SpeechTokenizer(extractor, kmeans)
    speech_tokenizer.save_pretrained(parts / "tokenizer")
    units = [speech_tokenizer.encode(w, sample_rate=16_000) for w in speech]
    args = FastVocoderFitArgs(refiner_steps=0, duration_steps=0)  # tables only: the timing does not depend on them
    vocoder = fit_fast_vocoder(
        speech, units, num_units, config=FastVocoderConfig(num_units=num_units), args=args, centers=kmeans.centers
    )
    vocoder.save_pretrained(parts / "vocoder")
    bundle = assemble_bundle(
        root / "bundle", tokenizer_dir=parts / "tokenizer", lm_dir=parts / "lm", vocoder_dir=parts / "vocoder"
    )
    torch.manual_seed(0)
    hifigan = UnitHiFiGAN(VocoderConfig(num_units=num_units)).eval()
    with torch.no_grad():
        hifigan.duration.proj.weight.zero_()
        hifigan.duration.proj.bias.fill_(math.log(FRAMES_PER_UNIT + 1))
    return bundle, hifigan


def run_turn(model: SpeechGPT, question: np.ndarray, stream: bool) -> dict[str, Any]:
    """One spoken turn; seconds from the call to the first text, the first audio and the end."""
    messages = [{"role": "user", "content": question}]
    options = GenerationOptions(temperature=0, max_new_tokens=2000)
    start = time.perf_counter()
    if not stream:
        reply = model.chat(messages, options)
        total = time.perf_counter() - start
        return {"first_text_s": total, "first_audio_s": total, "total_s": total, "reply": reply}
    first_text = first_audio = None
    for event in model.chat_stream(messages, options):
        now = time.perf_counter() - start
        if isinstance(event, TextDelta) and first_text is None:
            first_text = now
        elif isinstance(event, AudioChunk) and first_audio is None:
            first_audio = now
        elif isinstance(event, Done):
            reply = event.reply
    total = time.perf_counter() - start
    return {"first_text_s": first_text, "first_audio_s": first_audio, "total_s": total, "reply": reply}


def bench_answer(
    base: SpeechGPT, vocoder_name: str, vocoder: Any, answer: str, units: list[int], question: np.ndarray, repeats: int
) -> dict[str, Any]:
    layout = f"{TRANSCRIPT}; [ta] {answer}; [ua] <sosp>" + "".join(f"<{u}>" for u in units) + "<eosp><eoa>"
    script = base.encoder.encode_trusted(layout)
    lm = ForcedLM(base.model, script, base.vocab.eos_id)
    # No units cache: every run encodes the question, as a new question is.
    model = SpeechGPT(lm, base.tokenizer, speech_tokenizer=base.speech_tokenizer, vocoder=vocoder, units_cache_size=0)
    run_turn(model, question, stream=True)  # warm-up: allocator, oneDNN kernels, caches
    plain = [run_turn(model, question, stream=False) for _ in range(repeats)]
    streamed = [run_turn(model, question, stream=True) for _ in range(repeats)]
    reply = plain[0]["reply"]
    assert reply.units == units and reply.text == answer.rstrip("."), "the forced answer did not come back intact"
    timings = {key: statistics.median(r["reply"].timings[key] for r in plain) for key in reply.timings}
    audio_seconds = reply.duration
    decode_tokens = reply.completion_tokens - 1  # the first token comes out of the prefill
    median = {
        mode: {key: statistics.median(r[key] for r in runs) for key in ("first_text_s", "first_audio_s", "total_s")}
        for mode, runs in (("plain", plain), ("stream", streamed))
    }
    stream_wave = streamed[0]["reply"].waveform
    return {
        "vocoder": vocoder_name,
        "answer_words": len(answer.split()),
        "answer_units": len(units),
        "answer_tokens": reply.completion_tokens,
        "prompt_tokens": reply.prompt_tokens,
        "audio_seconds": audio_seconds,
        "stages": {
            "speech_to_units_s": timings["speech_to_units"],
            "prefill_s": timings["prefill"],
            "decode_s": timings["decode"],
            "decode_tokens_per_s": decode_tokens / timings["decode"],
            "vocoder_s": timings["vocoder"],
            "vocoder_rtf": timings["vocoder"] / audio_seconds,
        },
        "no_streaming": median["plain"],
        "streaming": median["stream"],
        "first_audio_ratio": median["stream"]["first_audio_s"] / median["plain"]["total_s"],
        "max_abs_diff_stream_vs_plain": float(np.abs(stream_wave - reply.waveform).max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short answers, one repeat: a smoke run")
    parser.add_argument("--units", type=int, default=1000, help="speech units (k-means clusters); released: 1000")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console()
    engine = EspeakEngine()
    voices = [VoiceSettings(rate=rate, pitch=pitch) for rate in (150, 175, 200) for pitch in (40, 60)]
    speech = [engine.synthesize(text, voice) for text in CORPUS for voice in voices]
    question = engine.synthesize(QUESTION)
    repeats = 1 if args.quick else 3
    answers = [("short", SHORT_ANSWER)] if args.quick else [("short", SHORT_ANSWER), ("long", LONG_ANSWER)]
    with tempfile.TemporaryDirectory() as tmp:
        bundle, hifigan = build_bundle(Path(tmp), args.units, speech)
        base = SpeechGPT.from_pretrained(bundle, device="cpu")
    vocoders = [("fast", base.vocoder), ("hifigan", hifigan)]
    results = []
    for vocoder_name, vocoder in vocoders:
        for _, answer in answers:
            units = base.speech_tokenizer.encode(engine.synthesize(answer), sample_rate=16_000).ids.tolist()
            results.append(bench_answer(base, vocoder_name, vocoder, answer, units, question, repeats))

    threads = torch.get_num_threads()
    lm_params = count_parameters(base.model)
    stages = Table(title=f"One spoken turn, per stage ({lm_params / 1e6:.1f}M-param LM, {threads} threads)")
    for column in ("vocoder", "answer", "audio s", "speech->units s", "prefill s", "decode tok/s", "vocoder s", "RTF"):
        stages.add_column(column, justify="right")
    for r in results:
        s = r["stages"]
        stages.add_row(
            r["vocoder"],
            f"{r['answer_tokens']} tok ({r['answer_units']} units)",
            f"{r['audio_seconds']:.1f}",
            f"{s['speech_to_units_s']:.3f}",
            f"{s['prefill_s']:.3f} ({r['prompt_tokens']} tok)",
            f"{s['decode_tokens_per_s']:.0f}",
            f"{s['vocoder_s']:.3f}",
            f"{s['vocoder_rtf']:.3f}",
        )
    console.print(stages)
    latency = Table(title="Time to first text / first audio: streaming vs waiting for the full reply (seconds)")
    for column in ("vocoder", "answer", "full reply (no stream)", "stream: first text", "stream: first audio",
                   "stream: done", "first audio / full"):  # fmt: skip
        latency.add_column(column, justify="right")
    for r in results:
        latency.add_row(
            r["vocoder"],
            f"{r['audio_seconds']:.1f} s speech",
            f"{r['no_streaming']['total_s']:.3f}",
            f"{r['streaming']['first_text_s']:.3f}",
            f"{r['streaming']['first_audio_s']:.3f}",
            f"{r['streaming']['total_s']:.3f}",
            f"{r['first_audio_ratio']:.2f}",
        )
    console.print(latency)
    report = {
        **run_info("infer", quick=args.quick),
        "lm_parameters": lm_params,
        "vocabulary": len(base.tokenizer),
        "num_units": args.units,
        "question_seconds": len(question) / 16_000,
        "hifigan_frames_per_unit": FRAMES_PER_UNIT,
        "answers": results,
    }
    atomic_write_text(args.output, json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
