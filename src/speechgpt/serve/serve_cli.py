"""``speechgpt serve``: the OpenAI-compatible HTTP API over a bundle, served by uvicorn."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Annotated

import typer

from speechgpt.audio import AudioError
from speechgpt.serve._console import fail, stderr, user_errors, warn

logger = logging.getLogger(__name__)

API_KEY_ENV = "SPEECHGPT_API_KEY"
"""Environment variable read when ``--api-key`` is not given (keeps the key out of the process list)."""
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
MIB = 2**20

# What can go wrong because of what the user gave (bundle folder, flags): one line, no traceback.
USER_ERRORS = (AudioError, FileNotFoundError, NotADirectoryError, ValueError)


def _listen(host: str, port: int) -> socket.socket:
    """Bind the port before the (slow) model load, so a taken port fails at once and clearly."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as e:
        fail(f"cannot listen on {host}:{port}: {e.strerror or e}")


def serve_command(
    bundle: Annotated[
        Path,
        typer.Option("--bundle", help="A SpeechGPT bundle folder (with speechgpt.json).", show_default=False),
    ],
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on; 0.0.0.0 opens it to the network.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.", min=0, max=65535)] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar=API_KEY_ENV,
            help=f"Require 'Authorization: Bearer KEY' on every route but /health (or set {API_KEY_ENV}).",
            show_default=False,
        ),
    ] = None,
    model_name: Annotated[
        str | None,
        typer.Option("--model-name", help="The model id clients send (default: the bundle folder's name)."),
    ] = None,
    max_queue: Annotated[
        int | None,
        typer.Option("--max-queue", help="Requests that may wait for the model; more get 429.", min=0),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", help="Seconds one request may take, queueing included; then 504.", min=0.1),
    ] = None,
    max_body_mb: Annotated[
        float | None,
        typer.Option("--max-body-mb", help="Largest request body in MiB (audio included); then 413.", min=0.001),
    ] = None,
    max_audio_seconds: Annotated[
        float | None, typer.Option("--max-audio-seconds", help="Longest input recording, in seconds.", min=0.1)
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option("--max-tokens", help="Most new tokens per answer (and the default).", min=1)
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="Torch device, e.g. cpu or cuda:0 (default: cuda when present).")
    ] = None,
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="LM dtype, e.g. bfloat16 (default: the checkpoint's).")
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help=f"One of {', '.join(LOG_LEVELS)}.")] = "info",
) -> None:
    """Serve a bundle over HTTP with OpenAI's API: chat (text and speech), transcription, speech, models.

    Routes: `POST /v1/chat/completions` (text and `input_audio` in; text and, with `modalities: ["text",
    "audio"]`, a WAV answer out; `stream: true` for server-sent events), `POST /v1/audio/transcriptions`,
    `POST /v1/audio/speech`, `GET /v1/models` and `GET /health`. The model runs one request at a time; others
    wait in a bounded queue (429 with Retry-After when it is full). Limits left out take the server's defaults,
    printed at start. Logs go to stderr.

    Examples:

      speechgpt serve --bundle runs/demo/bundle --port 8000

      SPEECHGPT_API_KEY=secret speechgpt serve --bundle runs/demo/bundle --host 0.0.0.0

    Then, from Python: `openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="secret")`.
    """
    import uvicorn

    from speechgpt.infer import SpeechGPT
    from speechgpt.serve.http_app import ServerLimits, create_app

    if log_level not in LOG_LEVELS:
        fail(f"--log-level {log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    if not bundle.is_dir():
        fail(f"{bundle}: no such bundle folder")
    if api_key is not None and not api_key.strip():
        fail(f"--api-key (or {API_KEY_ENV}) is empty")
    given = {
        "max_body_bytes": None if max_body_mb is None else max(1, round(max_body_mb * MIB)),
        "max_audio_seconds": max_audio_seconds,
        "request_timeout_s": timeout,
        "max_queue": max_queue,
        "max_tokens": max_tokens,
    }
    # One generation at a time: a SpeechGPT instance is not re-entrant (ServerLimits.max_concurrent stays 1).
    with user_errors(*USER_ERRORS):
        limits = ServerLimits(**{name: value for name, value in given.items() if value is not None})
    if host not in LOOPBACK_HOSTS and api_key is None:
        warn(f"serving on {host} without --api-key: anyone who can reach port {port} can use the model")
    listener = _listen(host, port)
    try:
        stderr.print(f"loading {bundle} ...")
        with user_errors(*USER_ERRORS):
            pipeline = SpeechGPT.from_pretrained(bundle, device=device, dtype=dtype)
        name = model_name or getattr(pipeline, "model_name", None) or bundle.resolve().name
        app = create_app(pipeline, model_name=name, api_key=api_key, limits=limits)
        bound_port = listener.getsockname()[1]
        stderr.print(
            f"serving {name!r} at http://{host}:{bound_port}/v1 (OpenAI-compatible); Ctrl+C stops\n"
            f"limits: queue {limits.max_queue}, timeout {limits.request_timeout_s:g} s, body "
            f"{limits.max_body_bytes / MIB:g} MiB, audio {limits.max_audio_seconds:g} s, {limits.max_tokens} tokens"
        )
        config = uvicorn.Config(app, host=host, port=bound_port, log_level=log_level, timeout_graceful_shutdown=5)
        uvicorn.Server(config).run(sockets=[listener])
    finally:
        listener.close()
