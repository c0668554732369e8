"""The tree is clean under the project's ruff configuration (pyproject.toml), so CI fails on a finding."""

import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).parent.parent


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff_finds_nothing(command):
    result = subprocess.run(
        [sys.executable, "-m", "ruff", *command, "."], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"ruff {' '.join(command)} found:\n{result.stdout}{result.stderr}"
