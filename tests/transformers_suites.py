"""transformers' common test suites for the installed transformers, importable as the package `transformers_tests`.

transformers ships its common suites (`ModelTesterMixin`, `ConfigTester`, `ImageProcessingTestMixin`,
`ProcessorTesterMixin`, `PipelineTesterMixin`, ...) in the `tests/` folder of its source distribution, not in its
wheel. `install()` downloads the sdist of the installed version with pip the first time, unpacks its `tests/` folder
into `$XDG_CACHE_HOME/cascade-clip-hf/transformers-<version>-tests` (`~/.cache` by default) and reuses it from then
on. The folder is assembled in a temporary folder beside it and renamed into place once complete, so an interrupted
download never leaves a half cache behind.

transformers imports its suites as the package `tests`, which is this project's test package too; here they are the
package `transformers_tests` instead. Their relative imports work under any package name.

The sdist lacks a few modules the suites import, which live only in transformers' repository. Stand-ins defined
below take their place, each offering only what the suites use; a future sdist that ships one is used as it is.
"""

import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import types
from pathlib import Path, PurePosixPath


PACKAGE = "transformers_tests"
# The module every suite needs; its presence tells that an unpacked sdist holds the suites.
MODELING_SUITE = "test_modeling_common.py"
# What the suites import beyond this project's own requirements.
REQUIREMENTS = ("parameterized",)
BUILTIN_MARKERS = {"parametrize", "skip", "skipif", "xfail", "usefixtures", "filterwarnings"}


class SuitesUnavailable(RuntimeError):
    """transformers' test suites are not cached and cannot be downloaded."""


def transformers_version() -> str:
    """The installed transformers' version, whose suites are the ones to run."""
    return importlib.metadata.version("transformers")


def cache_dir(version: str) -> Path:
    """Where the suites of transformers `version` are unpacked."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "cascade-clip-hf" / f"transformers-{version}-tests"


def imports_suites(source: str) -> bool:
    """Whether Python `source` imports the suites (so they must be installed before it is imported)."""
    return re.search(rf"^\s*(from|import)\s+{PACKAGE}\b", source, flags=re.MULTILINE) is not None


def markers(tests: Path) -> set[str]:
    """The pytest markers transformers' suites and test decorators apply, which its own conftest.py registers."""
    import transformers.testing_utils

    sources = [*tests.glob("test_*.py"), Path(transformers.testing_utils.__file__)]
    found = {name for path in sources for name in re.findall(r"\bmark\.(\w+)", path.read_text(encoding="utf-8"))}
    return found - BUILTIN_MARKERS


def install() -> Path:
    """Makes `transformers_tests` importable (downloading the suites on first use) and returns its folder."""
    if PACKAGE in sys.modules:
        return Path(sys.modules[PACKAGE].__path__[0])
    missing = [name for name in REQUIREMENTS if importlib.util.find_spec(name) is None]
    if missing:
        raise SuitesUnavailable(
            f"transformers' common test suites need {', '.join(missing)}: install the test extra, "
            '`pip install -e ".[test]"`.'
        )
    tests = fetch_suites(transformers_version()) / "tests"
    spec = importlib.util.spec_from_file_location(
        PACKAGE, tests / "__init__.py", submodule_search_locations=[str(tests)]
    )
    package = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = package
    spec.loader.exec_module(package)
    install_standins(tests)
    return tests


def fetch_suites(version: str) -> Path:
    """The cache folder of transformers `version`'s suites, downloaded and unpacked first if it does not exist."""
    target = cache_dir(version)
    if (target / "tests" / MODELING_SUITE).is_file():
        return target
    if target.exists():  # not built here (those are complete): emptied by hand
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # What a killed run left behind; a run in progress now is younger than an hour.
    for leftover in target.parent.glob(f".{target.name}-*"):
        if time.time() - leftover.stat().st_mtime > 3600:
            shutil.rmtree(leftover, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}-", dir=target.parent) as work:
        sdist = download_sdist(version, Path(work) / "download", target)
        build = Path(work) / "build"
        unpack_tests(sdist, build / "tests")
        add_missing_files(build)
        try:
            build.rename(target)
        except OSError:
            if not (target / "tests" / MODELING_SUITE).is_file():  # not a concurrent run that finished first
                raise
    return target


def download_sdist(version: str, destination: Path, target: Path) -> Path:
    """Downloads the source distribution of transformers `version` from the package index into `destination`."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        f"transformers=={version}",
        "--no-binary",
        ":all:",
        "--no-deps",
        "--disable-pip-version-check",
        "--dest",
        str(destination),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    archives = sorted(destination.glob("transformers-*.tar.gz")) if result.returncode == 0 else []
    if not archives:
        errors = [line.strip() for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        reason = errors[-1] if errors else f"pip exited with {result.returncode} and no source archive"
        raise SuitesUnavailable(
            f"transformers' common test suites for transformers {version} are not cached in {target} and could not "
            f"be downloaded from the package index ({reason}). Run the tests once with access to PyPI (the suites "
            "are cached from then on), or leave the suites out with --ignore-glob='*test_common_suite_*'."
        )
    return archives[0]


def unpack_tests(sdist: Path, destination: Path):
    """Unpacks the sdist's top-level `tests/` folder (its files only: no links, no paths leaving the folder)."""
    with tarfile.open(sdist) as archive:
        for member in archive:
            parts = PurePosixPath(member.name).parts
            if not member.isfile() or len(parts) < 3 or parts[1] != "tests":
                continue
            if parts[0] in ("/", "..") or ".." in parts:
                raise SuitesUnavailable(f"{sdist.name} holds a file outside its folder: {member.name}")
            path = destination.joinpath(*parts[2:])
            path.parent.mkdir(parents=True, exist_ok=True)
            with archive.extractfile(member) as source, path.open("wb") as copy:
                shutil.copyfileobj(source, copy)
    if not (destination / MODELING_SUITE).is_file():
        raise SuitesUnavailable(f"{sdist.name} has no tests/{MODELING_SUITE}: no common suites to run.")


def add_missing_files(root: Path):
    """The files the suites open or import by path that the sdist does not ship."""
    files = {
        # test_configuration_common runs `direct_transformers_import` on the folder it lies in, which executes that
        # folder's __init__.py as a throwaway module and returns the `transformers` already imported.
        "tests/__init__.py": "",
        # test_pipeline_mixin does the same with src/transformers (transformers' source tree, not in the cache):
        # empty, it returns the installed transformers without running its __init__ a second time.
        "src/transformers/__init__.py": "",
        # test_pipeline_mixin reads at import the Hub's tiny checkpoints per architecture; there are none for this
        # model, which is what an empty summary says.
        "tests/utils/tiny_model_summary.json": "{}\n",
    }
    for name, text in files.items():
        path = root / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")


# ---- stand-ins for the modules the suites import from transformers' repository, which its sdist does not ship ----


class ExportTesterMixin:
    """Stand-in for `tests/exporters/test_export.py`: `ModelTesterMixin` derives from it. The export tests
    (torch.export, ONNX, ExecuTorch) that the real mixin adds are not in the sdist, so they are not run."""


class GenerationTesterMixin:
    """Stand-in for `tests/generation/test_utils.py`. `ModelTesterMixin` only checks whether a test class derives
    from it; a model that cannot `generate`, like Cascade-CLIP, must not."""


# Stand-in for `tests/utils/test_configuration_utils.py`: for every argument that `PreTrainedConfig` itself takes, a
# value other than its default; `ConfigTester.check_config_arguments_init` checks that a configuration keeps them.
CONFIG_COMMON_KWARGS = {
    "architectures": ["PreTrainedModel"],
    "output_hidden_states": True,
    "return_dict": False,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "is_encoder_decoder": True,
    "id2label": {0: "label"},
    "label2id": {"label": 0},
    "problem_type": "regression",
}


def url_to_local_path(url: str, return_url_if_not_found: bool = True) -> str:
    """Stand-in for `utils/fetch_hub_objects_for_ci.py`, which maps the Hub files a test names to copies that
    transformers' CI fetches beforehand. No such copies exist here: the URL stays a URL."""
    return url if return_url_if_not_found else url.rsplit("/", 1)[-1]


STANDINS = {
    f"{PACKAGE}.exporters.test_export": {"ExportTesterMixin": ExportTesterMixin},
    f"{PACKAGE}.generation.test_utils": {"GenerationTesterMixin": GenerationTesterMixin},
    f"{PACKAGE}.utils.test_configuration_utils": {"config_common_kwargs": CONFIG_COMMON_KWARGS},
}


def install_standins(tests: Path):
    """Registers each stand-in module whose file `tests` lacks, with the packages above it that `tests` lacks."""
    for name, attributes in STANDINS.items():
        parts = name.split(".")[1:]
        if tests.joinpath(*parts[:-1], f"{parts[-1]}.py").is_file():
            continue
        for depth in range(1, len(parts)):
            package = ".".join([PACKAGE, *parts[:depth]])
            if package not in sys.modules and not tests.joinpath(*parts[:depth], "__init__.py").is_file():
                module = types.ModuleType(package, "Stand-in package for a folder the sdist does not ship.")
                module.__path__ = []
                sys.modules[package] = module
        module = types.ModuleType(
            name, f"Stand-in for a module the transformers {transformers_version()} sdist lacks."
        )
        vars(module).update(attributes)
        sys.modules[name] = module
    # Imported as a top-level module from the `utils/` folder beside transformers' `tests/`.
    if importlib.util.find_spec("fetch_hub_objects_for_ci") is None:
        module = types.ModuleType("fetch_hub_objects_for_ci", url_to_local_path.__doc__)
        module.url_to_local_path = url_to_local_path
        sys.modules["fetch_hub_objects_for_ci"] = module
