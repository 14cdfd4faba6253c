"""The installed `speechgpt` command (the console script of pyproject.toml), not only the Typer app."""

import subprocess
import sys
from pathlib import Path


def test_installed_console_script_runs():
    script = Path(sys.executable).parent / "speechgpt"
    assert script.exists(), "the project is not installed in this environment (pip install -e .)"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for command in (
        "units",
        "vocode",
        "vocoder",
        "data",
        "chat",
        "serve",
        "convert",
        "web",
        "eval",
        "train",
        "judge",
        "demo",
    ):
        assert command in result.stdout
    version = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout.strip() == "0.1.0"
