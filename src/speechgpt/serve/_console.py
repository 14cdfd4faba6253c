"""What every command shares: a stderr console, one-line user errors, progress bars on stderr."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

from speechgpt.progress import progress_bar as make_progress_bar

# Data goes to stdout; everything meant for a person (progress, logs, warnings, errors) goes here.
stderr = Console(stderr=True, highlight=False, soft_wrap=True)

EXIT_USER_ERROR = 2
EXIT_PARTIAL_FAILURE = 1
EXIT_INTERRUPTED = 130


def fail(message: str, code: int = EXIT_USER_ERROR) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code``; no traceback for a user's mistake.

    The message is printed literally (``speechgpt[web]`` or ``<sosp>`` in it stay as written).
    """
    stderr.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def warn(message: str) -> None:
    stderr.print(f"[yellow]warning:[/] {escape(message)}", markup=True, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def user_errors(*types: type[Exception]) -> Iterator[None]:
    """Turn the given exception types into :func:`fail` messages (their text names the input and the reason)."""
    try:
        yield
    except types as e:
        fail(str(e))


def progress_bar() -> Progress:
    """A progress display on stderr with count, elapsed time and ETA."""
    return make_progress_bar(stderr)
