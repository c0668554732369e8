"""The tree is clean under the project's ruff configuration (pyproject.toml), so CI fails on a finding; and test
modules share code through tests/helpers.py, never by importing `conftest.py` or one another. transformers' common
suites, the package `transformers_tests` (tests/transformers_suites.py), are not this project's test modules."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from .transformers_suites import PACKAGE as TRANSFORMERS_SUITES


ROOT = Path(__file__).parent.parent
TESTS = Path(__file__).parent


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff_finds_nothing(command):
    result = subprocess.run(
        [sys.executable, "-m", "ruff", *command, "."], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"ruff {' '.join(command)} found:\n{result.stdout}{result.stderr}"


def imported_modules(source: str) -> list[str]:
    """Every module `source` imports, dotted as written (relative ones with their leading dots)."""
    modules = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            package = "." * node.level + (node.module or "")
            modules.append(package)
            if node.module in (None, "tests"):  # `from . import x` and `from tests import x` may import modules
                modules += [f"{package.rstrip('.')}.{alias.name}" for alias in node.names]
    return modules


def forbidden_imports(source: str) -> list[str]:
    """The imports of `source` that name `conftest` or a `test_*` module of this project."""
    return [
        module
        for module in imported_modules(source)
        if module.split(".")[0] != TRANSFORMERS_SUITES
        and any(part == "conftest" or part.startswith("test_") for part in module.split("."))
    ]


@pytest.mark.parametrize(
    "source, forbidden",
    [
        ("from .conftest import HUB_CLASSES", True),
        ("from tests.test_pipelines import random_image", True),
        ("from . import conftest", True),
        ("from tests import test_pipelines", True),
        ("import tests.conftest", True),
        ("def build():\n    from .test_hub import hub_cache_with", True),
        ("from .helpers import random_image, tiny_config", False),
        ("from . import helpers, synthetic", False),
        ("from cascade_clip_hf.training import parameter_groups", False),
        ("from transformers_tests.test_modeling_common import ModelTesterMixin", False),
        ("import transformers_tests.test_processing_common", False),
        ("from .transformers_tests.test_modeling_common import ModelTesterMixin", True),
    ],
)
def test_the_import_rule_sees_every_spelling(source, forbidden):
    assert bool(forbidden_imports(source)) == forbidden


def test_no_module_imports_conftest_or_a_test_module():
    offenders = {
        path.name: found
        for path in sorted(TESTS.glob("*.py"))
        if (found := forbidden_imports(path.read_text(encoding="utf-8")))
    }
    assert not offenders, f"import shared code from tests/helpers.py instead: {offenders}"
