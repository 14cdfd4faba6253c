"""``speechgpt convert``, run in-process with Typer's runner on the released-format stand-ins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from speechgpt.infer import GenerationOptions, SpeechGPT
from speechgpt.infer.bundle import BundleManifest
from speechgpt.serve.convert_cli import convert_command
from tests.convert.test_released import NUM_UNITS, Released, released_tokens, write_lm, write_released

runner = CliRunner()
app = typer.Typer(rich_markup_mode="markdown")
app.command()(convert_command)

# The legacy (peft 0.3 era) adapter_config.json of the released adapter has keys today's peft ignores with a warning.
pytestmark = pytest.mark.filterwarnings("ignore:Unexpected keyword arguments:UserWarning")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> Released:
    return write_released(tmp_path_factory.mktemp("released"))


def args(files: Released, out: Path, *extra: str, lm: Path | None = None, lora: bool = True) -> list[str]:
    """The command line for the stand-ins (a tiny system: ``--num-units 50``)."""
    line = ["--lm", str(lm or files.lm), "--hubert", str(files.hubert), "--kmeans", str(files.kmeans)]
    line += ["--vocoder", str(files.vocoder), "--vocoder-config", str(files.vocoder_config), "-o", str(out)]
    line += ["--lora", str(files.lora)] if lora else []
    return [*line, "--num-units", str(NUM_UNITS), *extra]


def test_help_shows_an_example():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "speechgpt convert --lm SpeechGPT-7B-cm --lora SpeechGPT-7B-com" in result.output
    for option in ("--lm", "--lora", "--hubert", "--kmeans", "--vocoder-config", "--merge-lora", "--overwrite"):
        assert option in result.output


def test_convert_writes_a_bundle_and_a_json_summary(released, tmp_path):
    out = tmp_path / "speechgpt-7b"
    result = runner.invoke(app, args(released, out))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["bundle"] == str(out) and summary["num_units"] == NUM_UNITS
    assert summary["lora"]["mode"] == "adapter" and summary["lm"]["files"] == "copy"
    assert summary["sources"]["vocoder"] == str(released.vocoder.resolve())
    assert "[1/6] checking the released files" in result.stderr and "[6/6] bundle manifest" in result.stderr
    assert BundleManifest.read(out).lora == "lora"
    reply = SpeechGPT.from_pretrained(out, device="cpu").chat(
        [{"role": "user", "content": "hello there"}], GenerationOptions(temperature=0, max_new_tokens=8)
    )
    assert 0 < reply.completion_tokens <= 8

    again = runner.invoke(app, args(released, out))
    assert again.exit_code == 2 and again.stdout == ""
    assert again.stderr.startswith("error:") and again.stderr.count("\n") == 1  # one line, nothing else
    assert "pass overwrite=True (--overwrite)" in again.stderr
    merged = runner.invoke(app, args(released, out, "--merge-lora", "--overwrite"))
    assert merged.exit_code == 0, merged.output
    assert json.loads(merged.stdout)["lora"]["mode"] == "merged" and BundleManifest.read(out).lora is None


def test_mismatched_files_fail_with_one_line_and_exit_2(released, tmp_path):
    tokens = released_tokens()
    tokens[50], tokens[51] = tokens[51], tokens[50]
    write_lm(tmp_path / "lm", tokens)
    result = runner.invoke(app, args(released, tmp_path / "out", lm=tmp_path / "lm", lora=False))
    assert result.exit_code == 2 and result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.rstrip().endswith(errors[0]) and "Traceback" not in result.stderr
    assert "2 speech token(s) are out of the released order" in errors[0]
    assert "'<sosp>' at id 351, expected 350" in errors[0]
    assert not (tmp_path / "out").exists()


def test_the_released_unit_count_is_the_default(released, tmp_path):
    line = args(released, tmp_path / "out", lora=False)
    result = runner.invoke(app, line[: line.index("--num-units")])
    assert result.exit_code == 2
    assert "speech unit counts differ from the release's 1000" in result.stderr
    assert "--num-units 50" in result.stderr


def test_bad_arguments_are_named(released, tmp_path):
    line = args(released, tmp_path / "out")
    line[line.index("--hubert") + 1] = str(tmp_path / "absent.pt")
    missing = runner.invoke(app, line)
    assert missing.exit_code == 2 and f"missing input(s): hubert file {tmp_path / 'absent.pt'}" in missing.stderr
    no_lora = runner.invoke(app, [*args(released, tmp_path / "out", lora=False), "--merge-lora"])
    assert no_lora.exit_code == 2 and "--merge-lora needs --lora DIR" in no_lora.stderr
    bad_link = runner.invoke(app, [*args(released, tmp_path / "out"), "--link", "move"])
    assert bad_link.exit_code == 2 and "Invalid value for '--link'" in bad_link.output and "move" in bad_link.output
    assert not (tmp_path / "out").exists()
