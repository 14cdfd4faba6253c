"""The fast vocoder on espeak-ng speech: fit time, real-time factor, and how well the units survive vocoding.

Usage (from the repository root)::

    python benchmarks/vocoder_fast.py                 # 220 training sentences, 200 units
    python benchmarks/vocoder_fast.py --quick         # a small smoke run
    python benchmarks/vocoder_fast.py --griffin-lim   # also the Griffin-Lim baseline (slow)

Steps: espeak-ng speaks generated sentences with four voices (rate and pitch varied); the light tokenizer (MFCC +
deltas, k-means) is trained on them; the fast vocoder is fitted; held-out sentences (the same four voices, and a
fifth voice never seen) are vocoded from their units and durations. Without an ASR model (the judge ASR comes
with the demo), intelligibility is estimated three ways, each against the original recording:

* **frame agreement / UER (same tokenizer)**: re-encode the vocoded audio; the share of frames with the
  original's unit, and the edit distance between the deduplicated unit sequences over the original's length;
* **frame agreement / UER (second tokenizer)**: the same with an independent log-mel tokenizer (100 units, other
  seed), which the vocoder was not fitted to imitate;
* **MCD**: mel-cepstral distortion (dB) of c1..c12 of 40-band MFCCs over frames within 40 dB of the loudest;
  it also counts the change of voice (the vocoder speaks with one average voice).

Reference rows put the numbers in scale: the original delayed by 5 ms, and the original with white noise at
20 dB SNR. Prints tables and writes ``benchmarks/vocoder_fast.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from _environment import run_info
from speechgpt.data.tts import ENGLISH_VOICES, VoiceSettings, synthesize_many
from speechgpt.fileio import atomic_write_text
from speechgpt.units.base import HOP_LENGTH
from speechgpt.units.kmeans import KMeans
from speechgpt.units.light import LightFeatureConfig, LightFeatures
from speechgpt.units.tokenizer import SpeechTokenizer, Units, dedup
from speechgpt.vocoder.fast import FastVocoder
from speechgpt.vocoder.fit import FastVocoderFitArgs, fit_fast_vocoder

DEFAULT_OUTPUT = Path(__file__).with_name("vocoder_fast.json")
SUBJECTS = ["the cat", "a small dog", "my brother", "the teacher", "our neighbour", "a tall man", "the old woman",
            "this robot", "the children", "a green frog", "the pilot", "my friend", "a young girl"]  # fmt: skip
VERBS = ["sees", "likes", "paints", "finds", "carries", "wants", "builds", "cleans", "opens", "reads", "sells"]
OBJECTS = ["a red ball", "the blue door", "seven apples", "the big house", "a yellow kite", "three books",
           "the window", "a warm coat", "the river", "some fresh bread", "the garden", "a silver coin"]  # fmt: skip
TAILS = ["today", "every morning", "in the park", "before dinner", "after school", "at night", "", "", ""]
MCD_SPEECH_RANGE_DB = 40.0
"""MCD counts frames whose energy is within this many dB of the utterance's loudest frame."""

Pair = tuple[np.ndarray, np.ndarray]


def sentences(count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    found: set[str] = set()
    while len(found) < count:
        text = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(TAILS)}".strip()
        found.add(text[0].upper() + text[1:] + ".")
    ordered = sorted(found)
    rng.shuffle(ordered)
    return ordered


def speak_all(texts: list[str], voices: tuple[str, ...], seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    settings = [
        VoiceSettings(voices[i % len(voices)], rate=int(rng.integers(150, 200)), pitch=int(rng.integers(35, 65)))
        for i in range(len(texts))
    ]
    return synthesize_many(texts, settings)


def edit_distance(a: list[int], b: list[int]) -> int:
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i] + [0] * len(b)
        for j, y in enumerate(b, 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y))
        previous = current
    return previous[-1]


class Judge:
    """Unit agreement under two tokenizers, and MCD."""

    def __init__(self, tokenizer: SpeechTokenizer, second: SpeechTokenizer) -> None:
        self.tokenizers = {"": tokenizer, "2": second}
        self.mfcc = LightFeatures(LightFeatureConfig(deltas=0, cmvn=False, preemphasis=0.0))

    def mcd(self, original: np.ndarray, vocoded: np.ndarray) -> float:
        a, b = self.mfcc(original), self.mfcc(vocoded)
        count = min(len(a), len(b))
        frames = torch.as_tensor(original[: (count - 1) * HOP_LENGTH + 400]).unfold(0, 400, HOP_LENGTH)
        energy = 10 * torch.log10(frames.pow(2).mean(1) + 1e-10)
        speech = energy > energy.max() - MCD_SPEECH_RANGE_DB
        diff = (a[:count, 1:] - b[:count, 1:])[speech] / 2  # log power -> log amplitude
        return float(10 / math.log(10) * torch.sqrt(2 * diff.pow(2).sum(1)).mean())

    def score(self, pairs: list[Pair]) -> dict[str, float]:
        result: dict[str, list[float]] = {}
        for original, vocoded in pairs:
            for suffix, tokenizer in self.tokenizers.items():
                reference, again = tokenizer.frame_ids(original), tokenizer.frame_ids(vocoded)
                count = min(len(reference), len(again))
                result.setdefault("frame_agreement" + suffix, []).append(
                    float((reference[:count] == again[:count]).float().mean())
                )
                units, units_again = dedup(reference).ids.tolist(), dedup(again).ids.tolist()
                result.setdefault("uer" + suffix, []).append(edit_distance(units, units_again) / len(units))
            result.setdefault("mcd_db", []).append(self.mcd(original, vocoded))
        return {key: float(np.mean(values)) for key, values in result.items()}


def griffin_lim_baseline(waves: list[np.ndarray], units: list[Units], num_units: int) -> Callable[[Units], np.ndarray]:
    """The plain design: mean STFT magnitude per unit, Griffin-Lim (32 iterations, n_fft 512, hop 64)."""
    n_fft, hop, iterations = 512, 64, 32
    window = torch.hann_window(n_fft)
    total, counts = torch.zeros(num_units, n_fft // 2 + 1), torch.zeros(num_units)
    for wave, item in zip(waves, units, strict=True):
        stft = torch.stft(torch.as_tensor(wave), n_fft, HOP_LENGTH, window=window, return_complex=True)
        frames = item.frames()
        count = min(len(frames), stft.shape[1] - 1)
        total.index_add_(0, frames[:count], stft[:, 1 : count + 1].abs().T)  # column f+1 is centred at 320(f+1)
        counts.index_add_(0, frames[:count], torch.ones(count))
    table = total / counts.clamp(min=1)[:, None]

    def synthesize(item: Units) -> np.ndarray:
        frames = item.frames()
        length = frames.numel() * HOP_LENGTH
        position = ((torch.arange(length // hop + 1) * hop - HOP_LENGTH // 2) / HOP_LENGTH).clamp(0, len(frames) - 1)
        lower = position.floor().long()
        upper, weight = (lower + 1).clamp(max=len(frames) - 1), (position - lower)[:, None]
        magnitude = (table[frames[lower]] * (1 - weight) + table[frames[upper]] * weight).T
        phase = torch.exp(2j * math.pi * torch.rand(magnitude.shape, generator=torch.Generator().manual_seed(0)))
        spectrum = magnitude * phase
        for _ in range(iterations):
            wave = torch.istft(spectrum, n_fft, hop, window=window, length=length)
            spectrum = magnitude * torch.exp(
                1j * torch.angle(torch.stft(wave, n_fft, hop, window=window, return_complex=True))
            )
        return torch.istft(spectrum, n_fft, hop, window=window, length=length).clamp(-1, 1).numpy()

    return synthesize


def timed_synthesis(fn: Callable[[Units], torch.Tensor | np.ndarray], items: list[tuple[np.ndarray, Units]]):
    pairs, seconds, audio = [], 0.0, 0.0
    for wave, item in items:
        start = time.perf_counter()
        out = fn(item)
        seconds += time.perf_counter() - start
        out = out.numpy() if isinstance(out, torch.Tensor) else out
        audio += out.size / 16_000
        pairs.append((wave, np.asarray(out, dtype=np.float32)))
    return pairs, seconds / audio


def streaming_check(model: FastVocoder, items: list[tuple[np.ndarray, Units]], chunk: int) -> dict[str, Any]:
    worst, first, total, audio = 0.0, [], 0.0, 0.0
    for _, item in items:
        one_shot = model.synthesize(item.ids)
        start = time.perf_counter()
        pieces = []
        for piece in model.synthesize_stream([item.ids[i : i + chunk] for i in range(0, len(item), chunk)]):
            if not pieces:
                first.append(time.perf_counter() - start)
            pieces.append(piece)
        total += time.perf_counter() - start
        wave = torch.cat(pieces)
        audio += wave.numel() / model.sample_rate
        worst = max(worst, float((wave - one_shot).abs().max()))
    return {"chunk_units": chunk, "max_abs_error_vs_one_shot": worst, "first_audio_s": float(np.mean(first)),
            "rtf": total / audio, "lookahead_frames": model.frame_context[1]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="60 training sentences, 50 units: a smoke run")
    parser.add_argument("--units", type=int, default=200, help="k-means clusters of the light tokenizer")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--griffin-lim", action="store_true", help="also score the Griffin-Lim baseline")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console(width=150)
    num_train, num_test, num_units = (60, 10, 50) if args.quick else (220, 40, args.units)
    texts = sentences(num_train + num_test, seed=0)
    voices, held_voice = ENGLISH_VOICES[:4], ENGLISH_VOICES[4:5]
    start = time.perf_counter()
    train = speak_all(texts[:num_train], voices, seed=1)
    test_seen = speak_all(texts[num_train:], voices, seed=2)
    test_held = speak_all(texts[num_train : num_train + num_test // 2], held_voice, seed=3)
    speech_seconds = time.perf_counter() - start
    hours = sum(w.size for w in train) / 16_000 / 3600

    start = time.perf_counter()
    extractor = LightFeatures()
    features = [extractor(w) for w in train]
    tokenizer = SpeechTokenizer(extractor, KMeans.train(torch.cat(features), num_units, seed=0, niter=30))
    second_extractor = LightFeatures(LightFeatureConfig(kind="logmel", deltas=1))
    second_km = KMeans.train(torch.cat([second_extractor(w) for w in train]), 100, seed=1, niter=30)
    judge = Judge(tokenizer, SpeechTokenizer(second_extractor, second_km))
    train_units = [dedup(tokenizer.kmeans.assign(f)) for f in features]
    tokenizer_seconds = time.perf_counter() - start

    fits: dict[str, FastVocoder] = {}
    fit_report = []
    for name, fit_args in (
        ("fast (table only)", FastVocoderFitArgs(refiner_steps=0, duration_steps=0)),
        ("fast (default)", FastVocoderFitArgs()),
    ):
        start = time.perf_counter()
        fits[name] = fit_fast_vocoder(train, train_units, num_units, args=fit_args, centers=tokenizer.kmeans.centers)
        fit_report.append({"name": name, "fit_s": time.perf_counter() - start, **fits[name].info})
    model = fits["fast (default)"]

    rows = []
    for split, waves in (("seen voices", test_seen), ("held-out voice", test_held)):
        items = [(w, tokenizer.encode(w, sample_rate=16_000)) for w in waves]
        rng = np.random.default_rng(0)
        references: dict[str, list[Pair]] = {
            "original, 5 ms later": [(w, np.concatenate([np.zeros(80, np.float32), w[:-80]])) for w, _ in items],
            "original + noise, 20 dB SNR": [
                (w, w + (rng.standard_normal(w.size) * np.sqrt((w**2).mean()) * 0.1).astype(np.float32))
                for w, _ in items
            ],
        }
        for name, pairs in references.items():
            rows.append({"split": split, "system": name, "rtf": None, **judge.score(pairs)})
        systems: dict[str, Callable[[Units], Any]] = {
            name: (lambda item, m=m: m.synthesize(item.ids, durations=item.durations)) for name, m in fits.items()
        }
        if args.griffin_lim:
            systems["Griffin-Lim (unit mean magnitude)"] = griffin_lim_baseline(train, train_units, num_units)
        for name, fn in systems.items():
            pairs, rtf = timed_synthesis(fn, items)
            rows.append({"split": split, "system": name, "rtf": rtf, **judge.score(pairs)})
        # Predicted durations: the output no longer lines up with the original, so compare unit sequences only.
        errors, ratios, absolute = [], [], []
        for _, item in items:
            predicted = model.predict_durations(item.ids)
            vocoded = model.synthesize(item.ids)
            again = dedup(tokenizer.frame_ids(vocoded.numpy())).ids.tolist()
            errors.append(edit_distance(item.ids.tolist(), again) / len(item))
            ratios.append(float(predicted.sum() / item.durations.sum()))
            absolute.append(float((predicted - item.durations).abs().float().mean()))
        table_mae = [
            float((fits["fast (table only)"].predict_durations(i.ids) - i.durations).abs().float().mean())
            for _, i in items
        ]
        rows.append({"split": split, "system": "fast (default), predicted durations", "uer": float(np.mean(errors)),
                     "length_ratio": float(np.mean(ratios)), "duration_mae_frames": float(np.mean(absolute)),
                     "duration_mae_frames_table_only": float(np.mean(table_mae))})  # fmt: skip
    stream_items = [(w, tokenizer.encode(w, sample_rate=16_000)) for w in test_seen[:10]]
    streaming = [streaming_check(model, stream_items, chunk) for chunk in (1, 5, 25)]

    threads = torch.get_num_threads()
    fit_table = Table(title=f"Fit on {len(train)} utterances ({hours * 60:.1f} min of speech), {threads} threads")
    for column in ("fit", "seconds", "frames", "units seen", "duration loss", "refiner loss"):
        fit_table.add_column(column, justify="right")
    for f in fit_report:
        fit_table.add_row(f["name"], f"{f['fit_s']:.1f}", f["frames"], f["units_seen"], f["duration_loss"],
                          f["refiner_loss"])  # fmt: skip
    console.print(fit_table)
    table = Table(title=f"Vocoded from units + true durations ({num_units} units); higher agreement, lower UER/MCD")
    for column in ("split", "system", "RTF", "frames =", "UER", "frames = (2nd)", "UER (2nd)", "MCD dB"):
        table.add_column(column, justify="right")
    for r in rows:
        if "frame_agreement" not in r:
            continue
        table.add_row(r["split"], r["system"], "-" if r["rtf"] is None else f"{r['rtf']:.4f}",
                      f"{r['frame_agreement']:.3f}", f"{r['uer']:.3f}", f"{r['frame_agreement2']:.3f}",
                      f"{r['uer2']:.3f}", f"{r['mcd_db']:.2f}")  # fmt: skip
    console.print(table)
    duration_table = Table(title="Predicted durations (fast, default)")
    for column in ("split", "UER", "length ratio", "MAE frames/unit", "MAE, table only"):
        duration_table.add_column(column, justify="right")
    for r in rows:
        if "length_ratio" in r:
            duration_table.add_row(r["split"], f"{r['uer']:.3f}", f"{r['length_ratio']:.3f}",
                                   f"{r['duration_mae_frames']:.3f}",
                                   f"{r['duration_mae_frames_table_only']:.3f}")  # fmt: skip
    console.print(duration_table)
    stream_table = Table(title="Streaming vs one-shot (predicted durations)")
    for column in ("chunk units", "lookahead frames", "first audio s", "RTF", "max |err|"):
        stream_table.add_column(column, justify="right")
    for s in streaming:
        stream_table.add_row(str(s["chunk_units"]), str(s["lookahead_frames"]), f"{s['first_audio_s']:.4f}",
                             f"{s['rtf']:.4f}", f"{s['max_abs_error_vs_one_shot']:.1e}")  # fmt: skip
    console.print(stream_table)
    report = {
        **run_info("vocoder_fast", quick=args.quick),
        "train_utterances": len(train),
        "train_minutes": hours * 60,
        "units": num_units,
        "espeak_seconds": speech_seconds,
        "tokenizers_seconds": tokenizer_seconds,
        "fits": fit_report,
        "results": rows,
        "streaming": streaming,
    }
    atomic_write_text(args.output, json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
