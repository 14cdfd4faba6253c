"""Speed of the full-size unit HiFi-GAN (random weights): real-time factor and streaming time to first audio.

Usage::

    python benchmarks/vocoder.py            # 5 s and 30 s of speech, batch 1 and 8, streaming by chunk size
    python benchmarks/vocoder.py --quick    # a short run to check that everything works

Prints a table and writes ``benchmarks/vocoder.json``. RTF = compute seconds / audio seconds (lower is faster);
the target for the released size on CPU, batch 1, is RTF <= 0.10 (fairseq: 0.14 at 2.5 s, 0.115 at 15 s).
Every unit lasts exactly 2 frames (the duration predictor still runs: its output bias is set to log 3), so the
audio length is known in advance.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from _environment import run_info
from speechgpt.fileio import atomic_write_text
from speechgpt.vocoder import StreamingSynthesizer, UnitHiFiGAN, VocoderConfig, generator_context

FRAMES_PER_UNIT = 2
"""Frames each unit lasts in the benchmark (deduplicated HuBERT units average about 2-3)."""
DEFAULT_OUTPUT = Path(__file__).with_name("vocoder.json")


def build_model(seed: int = 0) -> UnitHiFiGAN:
    """Full-size vocoder with random weights whose duration predictor always says FRAMES_PER_UNIT."""
    torch.manual_seed(seed)
    model = UnitHiFiGAN(VocoderConfig()).eval()
    with torch.no_grad():
        model.duration.proj.weight.zero_()
        model.duration.proj.bias.fill_(math.log(FRAMES_PER_UNIT + 1))
    return model


def random_units(model: UnitHiFiGAN, seconds: float, seed: int) -> list[int]:
    count = max(1, round(seconds * model.config.frame_rate / FRAMES_PER_UNIT))
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.num_units, (count,), generator=generator).tolist()


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def bench_rtf(model: UnitHiFiGAN, seconds: float, batch: int, repeats: int) -> dict[str, Any]:
    seqs = [random_units(model, seconds, seed) for seed in range(batch)]

    def run() -> int:
        """Synthesize (durations predicted, as in use); return the samples produced."""
        if batch == 1:
            return model.synthesize(seqs[0]).numel()
        return sum(wave.numel() for wave in model.synthesize_batch(seqs))

    # Warm-up (allocator, oneDNN kernel selection); RTF uses the audio really produced, whatever the predicted
    # durations of the random model are.
    audio_seconds = run() / model.sample_rate
    times = timed(run, repeats)
    best, median = min(times), statistics.median(times)
    return {
        "seconds": seconds,
        "batch": batch,
        "audio_seconds": audio_seconds,
        "best_s": best,
        "median_s": median,
        "rtf_best": best / audio_seconds,
        "rtf_median": median / audio_seconds,
    }


def bench_stream(model: UnitHiFiGAN, seconds: float, chunk: int, context: int | None) -> dict[str, Any]:
    units = random_units(model, seconds, seed=100)
    one_shot = model.synthesize(units)
    stream = StreamingSynthesizer(model, left_context=context, right_context=context)
    pieces, pending, first_audio, units_before_audio = [], [], None, None
    start = time.perf_counter()
    for i in range(0, len(units), chunk):
        piece = stream.push(units[i : i + chunk])
        pending.append(stream.units_pending)
        if piece.numel():
            pieces.append(piece)
            if first_audio is None:
                first_audio = time.perf_counter() - start
                units_before_audio = stream.units_received
    pieces.append(stream.finish())
    total = time.perf_counter() - start
    if first_audio is None:
        first_audio, units_before_audio = total, len(units)
    wave = torch.cat(pieces)
    audio_seconds = wave.numel() / model.sample_rate
    return {
        "seconds": seconds,
        "chunk_units": chunk,
        "context_frames": stream.right_context,
        "time_to_first_audio_s": first_audio,
        "units_before_first_audio": units_before_audio,
        "mean_units_held_back": statistics.mean(pending),
        "total_s": total,
        "rtf": total / audio_seconds,
        "max_abs_error_vs_one_shot": float((wave - one_shot).abs().max()) if wave.shape == one_shot.shape else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short inputs, one repeat: a smoke run")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console()
    model = build_model()
    exact = generator_context(model.config)[1]
    if args.quick:
        rtf_cases, repeats = [(1.0, 1), (1.0, 2)], 1
        stream_cases = [(2.0, 5, None), (2.0, 25, None), (2.0, 5, 10)]
    else:
        rtf_cases, repeats = [(5.0, 1), (30.0, 1), (5.0, 8), (30.0, 8)], 3
        stream_cases = [(5.0, c, None) for c in (1, 5, 10, 25, 50)] + [(5.0, 5, c) for c in (0, 5, 10, 15)]
    with torch.inference_mode():
        rtf = [bench_rtf(model, seconds, batch, repeats) for seconds, batch in rtf_cases]
    streaming = [bench_stream(model, seconds, chunk, context) for seconds, chunk, context in stream_cases]

    table = Table(title=f"Unit HiFi-GAN, full size, {torch.get_num_threads()} threads (RTF target <= 0.10)")
    for column in ("speech", "batch", "best s", "median s", "RTF best", "RTF median"):
        table.add_column(column, justify="right")
    for r in rtf:
        table.add_row(
            f"{r['seconds']:g} s",
            str(r["batch"]),
            f"{r['best_s']:.3f}",
            f"{r['median_s']:.3f}",
            f"{r['rtf_best']:.3f}",
            f"{r['rtf_median']:.3f}",
        )
    console.print(table)
    stream_table = Table(title=f"Streaming ({FRAMES_PER_UNIT} frames/unit; exact context = {exact} frames)")
    for column in ("chunk units", "context", "first audio s", "units before audio", "held back", "RTF", "max |err|"):
        stream_table.add_column(column, justify="right")
    for s in streaming:
        error = s["max_abs_error_vs_one_shot"]
        stream_table.add_row(
            str(s["chunk_units"]),
            str(s["context_frames"]),
            f"{s['time_to_first_audio_s']:.3f}",
            str(s["units_before_first_audio"]),
            f"{s['mean_units_held_back']:.1f}",
            f"{s['rtf']:.3f}",
            "length differs" if error is None else f"{error:.1e}",
        )
    console.print(stream_table)
    report = {
        **run_info("vocoder", quick=args.quick),
        "frames_per_unit": FRAMES_PER_UNIT,
        "exact_context_frames": exact,
        "rtf": rtf,
        "streaming": streaming,
    }
    atomic_write_text(args.output, json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
