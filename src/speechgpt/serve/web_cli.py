"""``speechgpt web``: the browser UI (Gradio) over a bundle: speak or type, read and hear the answers."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from speechgpt.serve._console import fail, stderr, user_errors, warn
from speechgpt.serve.chat_cli import USER_ERRORS, DType, _load
from speechgpt.serve.web_app import DEFAULT_MAX_NEW_TOKENS_LIMIT, DEFAULT_MAX_QUEUE, DEFAULT_OPTIONS, DEFAULT_TITLE

if TYPE_CHECKING:
    from types import ModuleType

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
DEFAULT_PORT = 7860
INSTALL_HINT = "the web UI needs Gradio, which is not installed: pip install 'speechgpt[web]'"


def _require_gradio() -> ModuleType:
    """Import Gradio, or exit 2 telling the user to install the ``web`` extra (it is not a core dependency)."""
    try:
        import gradio
    except ImportError:
        fail(INSTALL_HINT)
    return gradio


def _check_port_free(host: str, port: int) -> None:
    """Fail at once, before the (slow) model load, when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.create_server((host, port), family=family):
            pass
    except OSError as e:
        fail(f"cannot listen on {host}:{port}: {e.strerror or e}")


def web_command(
    bundle: Annotated[
        Path,
        typer.Option("--bundle", "-b", help="Bundle folder (with `speechgpt.json`).", show_default=False),
    ],
    host: Annotated[
        str,
        typer.Option("--host", help="Address to listen on; 0.0.0.0 opens the page to the network (no login)."),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.", min=1, max=65535)] = DEFAULT_PORT,
    max_queue: Annotated[
        int, typer.Option("--max-queue", help="Visitors that may wait for the model; more are turned away.", min=1)
    ] = DEFAULT_MAX_QUEUE,
    max_new_tokens: Annotated[
        int,
        typer.Option(
            "--max-new-tokens",
            help=f"Default tokens per answer; the page's setting goes up to this or {DEFAULT_MAX_NEW_TOKENS_LIMIT}, "
            "whichever is more.",
            min=1,
        ),
    ] = DEFAULT_OPTIONS.max_new_tokens,
    title: Annotated[str, typer.Option("--title", help="Page title.")] = DEFAULT_TITLE,
    device: Annotated[
        str | None, typer.Option("--device", help="Torch device, e.g. cpu or cuda:0 (default: cuda when present).")
    ] = None,
    dtype: Annotated[
        DType | None, typer.Option("--dtype", help="LM weights' dtype (default: float32).", show_default=False)
    ] = None,
) -> None:
    """Talk to SpeechGPT in the browser: record or upload a question, or type one; read and hear the answer.

    The page shows the conversation (what the model heard in your speech, and its answers), plays each spoken
    answer, lets you choose text, speech or automatic replies, and has the generation settings in an accordion.
    One answer is generated at a time; other visitors wait in a bounded queue. Gradio is an optional extra:
    `pip install 'speechgpt[web]'`. Gradio's public share links are not offered.

    Example:

      `speechgpt web --bundle runs/demo/bundle --port 7860`

    then open http://127.0.0.1:7860 in a browser.
    """
    gradio = _require_gradio()
    from speechgpt.serve.web_app import build_demo, launch_demo

    if not bundle.is_dir():
        fail(f"{bundle}: no such bundle folder")
    if not title.strip():
        fail("--title is empty")
    if host not in LOOPBACK_HOSTS:
        warn(f"serving on {host}: anyone who can reach port {port} can use the model (the page has no login)")
    _check_port_free(host, port)
    with user_errors(*USER_ERRORS):
        options = dataclasses.replace(DEFAULT_OPTIONS, max_new_tokens=max_new_tokens)
    pipeline = _load(bundle, device, dtype)
    with user_errors(*USER_ERRORS):
        demo = build_demo(
            pipeline,
            title=title,
            options=options,
            max_queue=max_queue,
            max_new_tokens_limit=max(DEFAULT_MAX_NEW_TOKENS_LIMIT, max_new_tokens),
        )
    try:
        url = launch_demo(demo, host=host, port=port, prevent_thread_lock=True)
    except OSError as e:
        fail(f"cannot serve on {host}:{port}: {e}")
    stderr.print(f"SpeechGPT web UI (Gradio {gradio.__version__}) at {url} ; Ctrl+C stops")
    try:
        threading.Event().wait()  # serve until interrupted
    except KeyboardInterrupt:
        stderr.print("stopping")
    finally:
        with contextlib.redirect_stdout(sys.stderr):  # Gradio says goodbye on stdout; stdout is for data
            demo.close()
