"""espeak-ng synthesis throughput on the speech world's sentences, and the time to build the default world.

Usage (from the repository root)::

    python benchmarks/tts.py            # 1,000 utterances per setting, then the default `build-world`
    python benchmarks/tts.py --quick    # 200 utterances, no world build

The utterances are the first ones of the default world's plan (its texts, voices, rates and pitches), spoken by
:class:`speechgpt.data.tts.EspeakEngine` through :func:`speechgpt.data.tts.synthesize_many` in this process
(0 workers) and in 1 and 2 worker processes; pool start-up is included, writing WAVs is not. The world build is
:func:`speechgpt.data.world_speech.build_world` with the default config into a temporary folder (synthesis plus
WAV writing, manifests and text files). Prints a table and writes ``benchmarks/tts.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from _environment import run_info
from speechgpt.constants import SAMPLE_RATE
from speechgpt.data.tts import VoiceSettings, synthesize_many
from speechgpt.data.world import WorldConfig, build_text_world
from speechgpt.data.world_speech import build_world, plan_utterances
from speechgpt.fileio import atomic_write_text

DEFAULT_OUTPUT = Path(__file__).with_name("tts.json")
WORKER_COUNTS = (0, 1, 2)


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the synthesis workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def throughput(texts: list[str], voices: list[VoiceSettings], workers: int) -> dict[str, float]:
    cpu, start = cpu_seconds(), time.perf_counter()
    waves = synthesize_many(texts, voices, num_workers=workers)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    audio = sum(w.size for w in waves) / SAMPLE_RATE
    return {
        "workers": workers,
        "utterances": len(texts),
        "seconds": seconds,
        "cpu_seconds": cpu,
        "audio_seconds": audio,
        "utterances_per_minute": len(texts) / seconds * 60,
        "x_real_time": audio / seconds,
        "mean_utterance_seconds": audio / len(texts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 utterances per setting and no world build")
    parser.add_argument("--utterances", type=int, default=1000, help="utterances per setting")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    args = parser.parse_args()
    console = Console(width=150)
    count = 200 if args.quick else args.utterances
    plan = plan_utterances(build_text_world(WorldConfig()))[:count]
    texts, voices = [u.text for u in plan], [u.voice for u in plan]
    synthesize_many(texts[:5], voices[:5])  # load the library once, outside the timings
    rows = [throughput(texts, voices, workers) for workers in WORKER_COUNTS]

    table = Table(title=f"espeak-ng via synthesize_many: {count} world utterances, {os.cpu_count()} CPUs")
    for column in ("workers", "seconds", "CPU s", "utterances/min", "× real time", "mean utterance s"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            "in-process" if r["workers"] == 0 else str(r["workers"]),
            f"{r['seconds']:.2f}",
            f"{r['cpu_seconds']:.2f}",
            f"{r['utterances_per_minute']:,.0f}",
            f"{r['x_real_time']:.0f}",
            f"{r['mean_utterance_seconds']:.2f}",
        )
    console.print(table)

    world = None
    if not args.quick:
        with tempfile.TemporaryDirectory() as folder:
            cpu, start = cpu_seconds(), time.perf_counter()
            summary = build_world(WorldConfig(), Path(folder) / "world")
            world = {
                "seconds": time.perf_counter() - start,
                "cpu_seconds": cpu_seconds() - cpu,
                "utterances": {"train": summary.counts["speech_train"]["total"],
                               "test": summary.counts["speech_test"]["total"]},
                "hours": summary.hours,
                "qa": summary.counts["qa"],
                "corpus_lines": summary.counts["corpus_lines"],
                "bytes": sum(p.stat().st_size for p in (Path(folder) / "world").rglob("*") if p.is_file()),
            }  # fmt: skip
        build_table = Table(title="Default `speechgpt data build-world` (all CPUs)")
        for column in ("seconds", "CPU s", "train utt.", "test utt.", "train h", "test h", "QA train/held-out", "MB"):
            build_table.add_column(column, justify="right")
        build_table.add_row(
            f"{world['seconds']:.1f}",
            f"{world['cpu_seconds']:.1f}",
            str(world["utterances"]["train"]),
            str(world["utterances"]["test"]),
            f"{world['hours']['train']:.2f}",
            f"{world['hours']['test']:.2f}",
            f"{world['qa']['train']}/{world['qa']['heldout']}",
            f"{world['bytes'] / 1e6:.0f}",
        )
        console.print(build_table)

    report = {**run_info("tts", quick=args.quick), "synthesis": rows, "default_world": world}
    atomic_write_text(args.output, json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
