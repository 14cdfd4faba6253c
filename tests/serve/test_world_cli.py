"""``build_world_command`` (``speechgpt data build-world``), run through Typer's runner on a one-command app."""

import json

import pytest
import typer
from typer.testing import CliRunner

from speechgpt.data.world import WorldConfig
from speechgpt.serve import world_cli
from speechgpt.serve.world_cli import build_world_command

runner = CliRunner()
app = typer.Typer(rich_markup_mode="markdown")
app.command()(build_world_command)
TINY_ARGS = ["--size", "tiny", "--questions-per-family", "3", "--train-utterances", "12", "--test-utterances", "6"]


def test_help_explains_the_command_with_an_example():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for text in ("--output", "--seed", "--size", "--workers", "--overwrite", "speechgpt data build-world"):
        assert text in result.output, text


def test_builds_prints_stats_and_a_json_summary_then_does_nothing_again(tmp_path):
    out = tmp_path / "world"
    result = runner.invoke(app, ["-o", str(out), "--seed", "4", "--workers", "0", *TINY_ARGS])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1  # stdout holds only the summary; the table and progress went to stderr
    summary = json.loads(lines[0])
    assert summary["seed"] == 4 and summary["out_dir"] == str(out) and not summary["already_built"]
    assert summary["counts"]["speech_train"]["total"] == 12 and summary["counts"]["speech_test"]["total"] == 6
    assert summary["synthesized"] == 18 and summary["hours"]["train"] > 0
    for text in ("utterances", "hours of speech", "voices", "arithmetic", "time taken"):
        assert text in result.stderr, text
    recorded = json.loads((out / "world.json").read_text())
    assert (
        recorded["config"]
        == WorldConfig.from_preset(
            "tiny", seed=4, questions_per_family=3, train_utterances=12, test_utterances=6
        ).to_dict()
    )
    assert len((out / "speech_train.jsonl").read_text().splitlines()) == 12

    again = runner.invoke(app, ["-o", str(out), "--seed", "4", "--workers", "0", *TINY_ARGS])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["already_built"] is True and "nothing to do" in again.stderr


def test_another_config_in_the_same_folder_needs_overwrite(tmp_path):
    out = tmp_path / "world"
    assert runner.invoke(app, ["-o", str(out), "--workers", "0", *TINY_ARGS]).exit_code == 0
    refused = runner.invoke(app, ["-o", str(out), "--seed", "1", "--workers", "0", *TINY_ARGS])
    assert refused.exit_code == 2
    assert "error:" in refused.stderr and "differs in: seed" in refused.stderr and "--overwrite" in refused.stderr
    assert "Traceback" not in refused.output and refused.stdout == ""
    replaced = runner.invoke(app, ["-o", str(out), "--seed", "1", "--workers", "0", "--overwrite", *TINY_ARGS])
    assert replaced.exit_code == 0, replaced.output
    assert json.loads((out / "world.json").read_text())["seed"] == 1


@pytest.mark.parametrize(
    "args",
    [
        ["--size", "huge"],
        ["--workers", "-1"],
        ["--seed", "-3"],
        ["--train-utterances", "0"],
        ["--heldout-fraction", "1.5"],
        ["--no-such-option"],
    ],
    ids=lambda a: " ".join(a),
)
def test_bad_options_exit_2(args, tmp_path):
    result = runner.invoke(app, ["-o", str(tmp_path / "w"), *args])
    assert result.exit_code == 2
    assert not (tmp_path / "w").exists()


def test_output_that_is_a_file_is_a_one_line_user_error(tmp_path):
    target = tmp_path / "taken"
    target.write_text("not a folder")
    result = runner.invoke(app, ["-o", str(target), "--workers", "0", *TINY_ARGS])
    assert result.exit_code == 2
    assert "exists and is not a folder" in result.stderr and "Traceback" not in result.output


def test_interruption_exits_130_and_says_how_to_resume(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        kwargs["progress"](3, 18)  # the bar is showing when the interruption comes
        raise KeyboardInterrupt

    monkeypatch.setattr(world_cli, "build_world", interrupted)
    result = runner.invoke(app, ["-o", str(tmp_path / "w"), *TINY_ARGS])
    assert result.exit_code == 130
    assert "interrupted" in result.stderr and "run the same command to resume" in result.stderr
    assert result.stdout == ""
