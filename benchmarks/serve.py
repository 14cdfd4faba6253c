"""Throughput of the OpenAI-compatible server (`speechgpt serve`) with 1, 4 and 16 concurrent clients on loopback.

Usage::

    python benchmarks/serve.py                 # 10 s per client count, then the 16-client 30 s soak
    python benchmarks/serve.py --quick         # 2 s per client count, 5 s soak: a smoke run
    python benchmarks/serve.py --bundle DIR    # a real bundle instead of the random one built here

Prints a table and writes ``benchmarks/serve.json``. The server runs in its own process (so the clients'
Python does not share its interpreter lock) with the real pipeline over a bundle: by default a random one of the
embedded demo's LM size (Llama, 4 layers, 256 wide, 1000 units; ~3.5M parameters plus unit embeddings). Each
client sends a text question with ``max_tokens`` fixed and ``temperature`` 0, so every request does the same work
(a random LM rarely stops early; the answer's length is reported). Latency is per successful request, from send
to last byte. Throughput rows use a queue as long as the number of clients, so every request is served and the
latency shows the waiting; the soak row keeps the server's default queue, so extra clients get 429 and it shows
that nothing else goes wrong (the acceptance check: no 5xx, server still healthy). The server uses one torch
thread by default: with two on a shared 2-core machine, OpenMP's spinning threads made one request 10x slower.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from _environment import run_info
from speechgpt.fileio import atomic_write_text

DEFAULT_OUTPUT = Path(__file__).with_name("serve.json")
MODEL_NAME = "bench"
NUM_UNITS = 1000
CLIENT_COUNTS = (1, 4, 16)
QUESTION = "What is the capital of France, and how many people live there?"
TEXT_LINES = [
    "What is the capital of France? Paris is the capital of France.",
    "the quick brown fox jumps over the lazy dog, twice and then again.",
    "One two three four five six seven eight nine ten; how are you today?",
] * 4


def build_bundle(root: Path, seed: int = 0) -> Path:
    """A random bundle with the embedded demo's LM size (weights are random: speed does not depend on them)."""
    from speechgpt.constants import SAMPLE_RATE
    from speechgpt.infer import assemble_bundle
    from speechgpt.lm import create_model, expand_vocabulary, save_model, tiny_llama_config, train_text_tokenizer
    from speechgpt.units.kmeans import KMeans
    from speechgpt.units.light import LightFeatures
    from speechgpt.units.tokenizer import SpeechTokenizer
    from speechgpt.vocoder import UnitHiFiGAN, VocoderConfig

    tokenizer = train_text_tokenizer(TEXT_LINES, vocab_size=300)
    expand_vocabulary(None, tokenizer, NUM_UNITS)
    save_model(create_model(tiny_llama_config(len(tokenizer)), seed=seed), tokenizer, root / "lm")
    rng = np.random.default_rng(seed)
    extractor = LightFeatures()
    noise = rng.standard_normal(40 * SAMPLE_RATE).astype(np.float32) * 0.1  # 2000 frames for 1000 clusters
    SpeechTokenizer(extractor, KMeans.train(extractor(noise), NUM_UNITS, seed=seed, niter=2)).save_pretrained(
        root / "tokenizer"
    )
    torch.manual_seed(seed)
    UnitHiFiGAN(VocoderConfig.tiny(num_units=NUM_UNITS)).eval().save_pretrained(root / "vocoder")
    return assemble_bundle(
        root / "bundle", tokenizer_dir=root / "tokenizer", lm_dir=root / "lm", vocoder_dir=root / "vocoder"
    )


def serve(bundle: str, port: int, max_queue: int, threads: int | None) -> None:
    """The server process: load the bundle and serve it until terminated."""
    import uvicorn

    from speechgpt.infer import SpeechGPT
    from speechgpt.serve.http_app import ServerLimits, create_app

    if threads:
        torch.set_num_threads(threads)
    pipeline = SpeechGPT.from_pretrained(bundle, device="cpu")
    app = create_app(pipeline, model_name=MODEL_NAME, limits=ServerLimits(max_queue=max_queue))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error")


class ServerProcess:
    """A `serve` child process on a free loopback port, stopped on exit."""

    def __init__(self, bundle: Path, max_queue: int, threads: int | None) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        context = multiprocessing.get_context("spawn")
        self.process = context.Process(target=serve, args=(str(bundle), self.port, max_queue, threads), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerProcess:
        self.process.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx2.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx2.TransportError:
                pass
            if not self.process.is_alive():
                break
            time.sleep(0.2)
        self.process.terminate()
        raise RuntimeError("the server process did not come up")

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.join(10)


def load(url: str, clients: int, seconds: float, max_tokens: int) -> dict[str, Any]:
    """``clients`` threads, each sending one request after another for ``seconds``; statuses and latencies."""
    body = {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    tokens: list[int] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client() -> None:
        with httpx2.Client(base_url=url, timeout=300) as http:
            while time.monotonic() < stop_at:
                start = time.perf_counter()
                try:
                    response = http.post("/v1/chat/completions", json=body)
                except httpx2.TransportError as e:
                    with lock:
                        statuses[type(e).__name__] += 1
                    continue
                elapsed = time.perf_counter() - start
                with lock:
                    statuses[str(response.status_code)] += 1
                    if response.status_code == 200:
                        latencies.append(elapsed)
                        tokens.append(response.json()["usage"]["completion_tokens"])
                    elif response.status_code == 429:
                        time.sleep(float(response.headers.get("Retry-After", 1)))  # as a polite client does

    start = time.perf_counter()
    workers = [threading.Thread(target=client) for _ in range(clients)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall = time.perf_counter() - start  # includes the requests still in flight at the deadline
    ok = len(latencies)
    return {
        "clients": clients,
        "seconds": wall,
        "ok": ok,
        "statuses": dict(statuses),
        "server_errors": sum(n for status, n in statuses.items() if status.startswith("5")),
        "requests_per_s": ok / wall,
        "tokens_per_s": sum(tokens) / wall,
        "mean_completion_tokens": statistics.mean(tokens) if tokens else 0.0,
        "p50_latency_s": float(np.percentile(latencies, 50)) if latencies else None,
        "p95_latency_s": float(np.percentile(latencies, 95)) if latencies else None,
        "load_average_1min_after": os.getloadavg()[0],  # other processes on a shared machine distort everything
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs: a smoke test")
    parser.add_argument("--bundle", type=Path, default=None, help="serve this bundle instead of a random one")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens generated per request")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of the server (1: fastest for a small LM on 2 cores)"
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    args = parser.parse_args()
    seconds, soak_seconds = (2.0, 5.0) if args.quick else (10.0, 30.0)
    console = Console(width=120)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or build_bundle(Path(tmp))
        pipeline = "given bundle" if args.bundle else "random bundle (demo-size LM, 1000 units)"
        rows = []
        for clients in CLIENT_COUNTS:
            with ServerProcess(bundle, max_queue=clients, threads=args.threads) as server:
                load(server.url, 1, 1.0, args.max_tokens)  # warm-up: first-call allocations, oneDNN kernels
                rows.append(load(server.url, clients, seconds, args.max_tokens))
        from speechgpt.serve.http_app import ServerLimits

        default_queue = ServerLimits().max_queue
        with ServerProcess(bundle, max_queue=default_queue, threads=args.threads) as server:
            soak = load(server.url, 16, soak_seconds, args.max_tokens)
            soak["max_queue"] = default_queue
            soak["healthy_after"] = httpx2.get(f"{server.url}/health", timeout=5).status_code == 200

    table = Table(title=f"speechgpt serve on loopback: {pipeline}, {args.max_tokens} tokens per request")
    for column in ("clients", "queue", "seconds", "ok", "req/s", "tok/s", "p50 s", "p95 s", "429", "5xx", "load"):
        table.add_column(column, justify="right")
    for row, queue in [*((r, r["clients"]) for r in rows), (soak, default_queue)]:
        table.add_row(
            str(row["clients"]),
            str(queue),
            f"{row['seconds']:.1f}",
            str(row["ok"]),
            f"{row['requests_per_s']:.2f}",
            f"{row['tokens_per_s']:.0f}",
            f"{row['p50_latency_s']:.3f}" if row["p50_latency_s"] is not None else "-",
            f"{row['p95_latency_s']:.3f}" if row["p95_latency_s"] is not None else "-",
            str(row["statuses"].get("429", 0)),
            str(row["server_errors"]),
            f"{row['load_average_1min_after']:.1f}",
        )
    console.print(table)
    console.print(
        f"soak: {soak['clients']} clients for {soak['seconds']:.0f} s, statuses {soak['statuses']}, "
        f"healthy after: {soak['healthy_after']}"
    )
    report = {
        **run_info("serve", quick=args.quick),
        "pipeline": pipeline,
        "max_tokens": args.max_tokens,
        "server_threads": args.threads,
        "throughput": rows,
        "soak": soak,
    }
    atomic_write_text(args.output, json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
