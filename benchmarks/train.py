"""Training speed of the four stages on the tiny demo-size Llama (CPU): tokens/s, useful tokens/s, peak memory.

Usage::

    python benchmarks/train.py            # stages 0-3; stages 2 and 3 packed with a shared prefix, packed, padded
    python benchmarks/train.py --quick    # a few steps each: a smoke run

Prints a table and writes ``benchmarks/train.json``. The data are the embedded world's training files when they
exist (``runs/world/text/corpus.txt`` for stage 0, ``runs/si/stage1.txt``, ``stage2.jsonl``, ``stage3.jsonl``),
else synthetic records in the same layouts built here. The model is the default ``tiny_llama_config`` (hidden
256, 4 layers, ~3.5M parameters): stage 0 trains it from nothing, each later stage starts from the previous one.

Every configuration runs in its own process, so its peak memory (``ru_maxrss``: torch allocates outside
``tracemalloc``) is its own. Speeds are steady-state: the first logging interval (allocator warm-up, kernel
selection) is left out. "tok/s" counts every position the model computed, padding included; "useful tok/s" counts
the tokens of the examples trained on, as if each were alone (a shared prefix counts once per example), which is
what packing improves: padding computes more positions than that, packing about as many, and packing with a shared
prefix fewer (every stage-2/3 record starts with the same meta instruction, computed once per row).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

DEFAULT_OUTPUT = Path(__file__).with_name("train.json")
ROOT = Path(__file__).resolve().parent.parent
WORLD_CORPUS = ROOT / "runs" / "world" / "text" / "corpus.txt"
WORLD_STAGE_DATA = ROOT / "runs" / "si"
NUM_UNITS = 200
"""Speech units of the embedded world's tokenizer (and of the synthetic data)."""
STEPS = {"full": 8, "quick": 3}
LOGGING_STEPS = {"full": 2, "quick": 1}
WORKER_TIMEOUT_S = 300
LAYOUTS = ("shared", "packed", "padded")
"""Rows of stages 2/3: packed with the shared prefix held once, packed, padded."""
CONFIGS: list[tuple[int, str]] = [(0, "packed"), (1, "packed")] + [(s, layout) for s in (2, 3) for layout in LAYOUTS]
"""(stage, row layout) of every measured run; stages 0 and 1 always pack blocks."""
LAYOUT_NAMES = {"shared": "packed, shared prefix", "packed": "packed", "padded": "padded"}


# ---------------------------------------------------------------------------------------------------- data


def _synthetic_data(folder: Path, seed: int = 0) -> dict[int, Path]:
    """Training files in the builders' layouts: text lines, unit lines, cross-modal and chain-of-modality JSONL."""
    from speechgpt.prompt_format import (
        META_INSTRUCTION,
        Modality,
        chain_of_modality_answer,
        chain_of_modality_question,
        cross_modal_question,
        record_text,
    )
    from speechgpt.units import units_to_string

    rng = random.Random(seed)
    words = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "plus", "minus", "is")

    def sentence() -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(4, 14))) + "."

    def speech(text: str) -> str:  # ~2.5 units per character, like deduplicated units of read speech
        return units_to_string([rng.randrange(NUM_UNITS) for _ in range(int(len(text) * rng.uniform(1.5, 3.5)))])

    corpus = [sentence() for _ in range(3000)]
    stage2, stage3 = [], []
    for i in range(2000):
        text = sentence()
        question, response = (
            (cross_modal_question("Transcribe the speech.", speech(text)), text)
            if i % 2 == 0
            else (cross_modal_question("Say this aloud.", text), speech(text))
        )
        stage2.append({"id": f"cm-{i}", "prefix": META_INSTRUCTION, "plain_text": record_text(question, response)})
        spoken, answer = sentence(), sentence()
        response = chain_of_modality_answer(
            input_modality=Modality.SPEECH,
            output_modality=Modality.SPEECH,
            transcript=spoken,
            answer_text=answer,
            answer_units=speech(answer),
        )
        question = chain_of_modality_question(speech(spoken), Modality.SPEECH, Modality.SPEECH)
        stage3.append({"id": f"com-{i}", "prefix": META_INSTRUCTION, "plain_text": record_text(question, response)})
    files = {0: folder / "corpus.txt", 1: folder / "stage1.txt", 2: folder / "stage2.jsonl", 3: folder / "stage3.jsonl"}
    files[0].write_text("".join(line + "\n" for line in corpus), encoding="utf-8")
    files[1].write_text("".join(speech(line) + "\n" for line in corpus), encoding="utf-8")
    for stage, records in ((2, stage2), (3, stage3)):
        files[stage].write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return files


def _data_files(folder: Path) -> tuple[dict[int, Path], str]:
    world = {
        0: WORLD_CORPUS,
        1: WORLD_STAGE_DATA / "stage1.txt",
        2: WORLD_STAGE_DATA / "stage2.jsonl",
        3: WORLD_STAGE_DATA / "stage3.jsonl",
    }
    if all(path.is_file() for path in world.values()):
        return world, "embedded world (runs/)"
    return _synthetic_data(folder), "synthetic"


# ---------------------------------------------------------------------------------------------------- worker


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one stage configuration in this process; return its speeds and memory."""
    import psutil
    import torch

    import speechgpt.train.stages as stages
    from speechgpt.train.config import STAGE_CONFIGS, load_config
    from speechgpt.train.data import USEFUL_TOKENS_KEY

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    computed: list[int] = []
    useful: list[int] = []

    class CountingCollator(stages.RowCollator):
        """Records the positions each batch computes (padding included) next to its real tokens."""

        def __call__(self, rows: Any) -> dict[str, Any]:
            batch = super().__call__(rows)
            computed.append(int(batch["input_ids"].numel()))
            useful.append(int(batch[USEFUL_TOKENS_KEY]))
            return batch

    stages.RowCollator = CountingCollator  # type: ignore[misc]  # benchmark-only instrumentation
    rss_before = psutil.Process().memory_info().rss
    config = load_config(STAGE_CONFIGS[spec["stage"]], None, spec["settings"])
    start = time.perf_counter()
    result = stages.run_stage(config)
    wall = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    curve = result.loss_curve[1:]  # the first logging interval holds the warm-up
    steady_tokens = sum(e["useful_tokens"] for e in curve)
    steady_seconds = sum(e["useful_tokens"] / e["tokens_per_second"] for e in curve if e["tokens_per_second"] > 0)
    useful_per_s = steady_tokens / steady_seconds if steady_seconds else 0.0
    pad_factor = sum(computed) / sum(useful) if useful else 1.0
    return {
        "stage": spec["stage"],
        "layout": spec["layout"],
        "packing": config.packing,
        "share_prefix": config.share_prefix,
        "steps": result.steps,
        "batch_size": config.batch_size,
        "max_length": config.max_length,
        "parameters": _parameters(result.model_dir),
        "rows_per_epoch": result.data.rows,
        "examples_per_epoch": result.data.examples,
        "fill_per_epoch": result.data.fill,
        "computed_per_useful_token": pad_factor,
        "useful_tokens_per_s": useful_per_s,
        "tokens_per_s": useful_per_s * pad_factor,
        "examples_per_s": (
            useful_per_s * result.data.examples / result.data.example_tokens if result.data.example_tokens else 0.0
        ),
        "train_runtime_s": result.metrics.get("train_runtime"),
        "wall_s": wall,
        "first_loss": result.first_loss,
        "final_loss": result.final_loss,
        "rss_before_mib": rss_before / 2**20,
        "peak_rss_mib": peak_kib / 1024,
        "model_dir": str(result.model_dir),
    }


def _parameters(model_dir: Path) -> int:
    """Weights in the saved model (tied embeddings counted once, as stored)."""
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f:
        return sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())  # noqa: SIM118 (safe_open is not iterable)


def _run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, __file__, "--worker", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"stage {spec['stage']} worker failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------- main


def _settings(stage: int, layout: str, data: Path, base: str | None, output: Path, mode: str) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "data": str(data),
        "output_dir": str(output),
        "device": "cpu",
        "progress": False,
        "max_steps": STEPS[mode],
        "logging_steps": LOGGING_STEPS[mode],
        "save_steps": 10_000,
        "resume": False,
        "packing": layout != "padded",
        "share_prefix": layout == "shared",
        "warmup": 0,
    }
    if stage == 0:
        settings["max_position_embeddings"] = 2048
    else:
        settings["base_model"] = base
    if stage == 1:
        settings["num_units"] = NUM_UNITS
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps per configuration: a smoke run")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        sys.stdout.write(json.dumps(_worker(json.loads(args.worker))) + "\n")
        return

    import torch

    from _environment import run_info
    from speechgpt.fileio import atomic_write_text

    console = Console()
    mode = "quick" if args.quick else "full"
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="speechgpt-bench-train-") as tmp:
        folder = Path(tmp)
        files, source = _data_files(folder)
        bases: dict[int, str] = {}
        for stage, layout in CONFIGS:
            spec = {
                "stage": stage,
                "layout": layout,
                "threads": args.threads,
                "settings": _settings(
                    stage, layout, files[stage], bases.get(stage - 1), folder / f"s{stage}-{layout}", mode
                ),
            }
            console.print(f"[dim]stage {stage}, {LAYOUT_NAMES[layout]}...[/dim]")
            result = _run_worker(spec)
            results.append(result)
            bases.setdefault(stage, result["model_dir"])  # the next stage starts from the packed run
        for r in results:
            r.pop("model_dir")

    table = Table(title=f"Training on CPU, tiny Llama, {torch.get_num_threads()} threads, data: {source}")
    columns = ("stage", "rows", "params", "batch x len", "steps", "tok/s", "useful tok/s", "useful %", "peak RSS MiB")
    # useful % above 100: fewer positions computed than the examples hold (their shared prefix once per row)
    for column in columns:
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(
            f"{r['stage']} {LAYOUT_NAMES[r['layout']]}",
            str(r["rows_per_epoch"]),
            f"{r['parameters'] / 1e6:.2f}M",
            f"{r['batch_size']} x {r['max_length']}",
            str(r["steps"]),
            f"{r['tokens_per_s']:,.0f}",
            f"{r['useful_tokens_per_s']:,.0f}",
            f"{100 / r['computed_per_useful_token']:.0f}",
            f"{r['peak_rss_mib']:,.0f}",
        )
    console.print(table)
    speedups: dict[str, dict[str, float]] = {}
    for stage in (2, 3):
        runs = {r["layout"]: r for r in results if r["stage"] == stage}
        padded = runs["padded"]["useful_tokens_per_s"]
        speedups[f"stage{stage}"] = {
            layout: runs[layout]["useful_tokens_per_s"] / padded for layout in ("shared", "packed")
        }
        console.print(
            f"stage {stage}: useful tokens/s over padding: {speedups[f'stage{stage}']['shared']:.2f}x packed with the "
            f"shared prefix, {speedups[f'stage{stage}']['packed']:.2f}x packed"
        )
    report = {
        **run_info("train", quick=args.quick),
        "data": source,
        "steps_per_run": STEPS[mode],
        "runs": results,
        "packing_speedup_useful_tokens": speedups,
    }
    atomic_write_text(args.output, json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
