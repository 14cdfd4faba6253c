"""The ``speechgpt`` command: one Typer app with a sub-app per pipeline stage."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

from speechgpt.serve.chat_cli import chat_command
from speechgpt.serve.convert_cli import convert_command
from speechgpt.serve.data_cli import data_app
from speechgpt.serve.demo_cli import demo_command
from speechgpt.serve.eval_cli import eval_app
from speechgpt.serve.judge_cli import judge_app
from speechgpt.serve.serve_cli import serve_command
from speechgpt.serve.train_cli import train_app
from speechgpt.serve.units_cli import units_app
from speechgpt.serve.vocode_cli import vocode
from speechgpt.serve.vocoder_cli import vocoder_app
from speechgpt.serve.web_cli import web_command

app = typer.Typer(
    name="speechgpt",
    help="SpeechGPT without fairseq: speech units, training, inference. Every command takes --help.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(units_app, name="units")
app.command("vocode")(vocode)
app.add_typer(vocoder_app, name="vocoder")
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")
app.add_typer(judge_app, name="judge")
app.command("chat")(chat_command)
app.command("serve")(serve_command)
app.command("web")(web_command)
app.command("convert")(convert_command)
app.command("demo")(demo_command)


def _version_callback(value: bool) -> None:
    if value:
        try:
            typer.echo(version("speechgpt"))
        except PackageNotFoundError:
            typer.echo("unknown")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", callback=_version_callback, is_eager=True)
    ] = False,
) -> None:
    """SpeechGPT without fairseq: speech units, training, inference."""


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
