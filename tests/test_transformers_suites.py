"""How tests/transformers_suites.py fetches transformers' common suites: whole or not at all, only the sdist's
tests/ folder, and one clear message when the package index cannot be reached. No network: the sdist is faked."""

import io
import os
import tarfile

import pytest

from . import transformers_suites


def write_sdist(path, files: dict[str, bytes]):
    """A .tar.gz holding `files` (names relative to the archive, e.g. `transformers-9.9.9/tests/x.py`)."""
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            member = tarfile.TarInfo(name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "cascade-clip-hf"


def fake_download(files: dict[str, bytes]):
    def download(version, destination, target):
        destination.mkdir(parents=True)
        return write_sdist(destination / f"transformers-{version}.tar.gz", files)

    return download


def test_the_suites_are_unpacked_with_the_files_they_need(cache, monkeypatch):
    monkeypatch.setattr(
        transformers_suites,
        "download_sdist",
        fake_download(
            {
                "transformers-9.9.9/tests/test_modeling_common.py": b"SUITE = 1\n",
                "transformers-9.9.9/tests/models/bert/test_modeling_bert.py": b"",
                "transformers-9.9.9/src/transformers/__init__.py": b"import torch\n",
                "transformers-9.9.9/setup.py": b"",
            }
        ),
    )
    root = transformers_suites.fetch_suites("9.9.9")
    assert root == cache / "transformers-9.9.9-tests"
    files = sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())
    assert files == [
        "src/transformers/__init__.py",
        "tests/__init__.py",
        "tests/models/bert/test_modeling_bert.py",
        "tests/test_modeling_common.py",
        "tests/utils/tiny_model_summary.json",
    ]
    assert (root / "src/transformers/__init__.py").read_text() == ""  # a stand-in, not the sdist's
    assert [path.name for path in cache.iterdir()] == [root.name]  # no work folders left
    monkeypatch.setattr(transformers_suites, "download_sdist", None)  # cached: never downloads again
    assert transformers_suites.fetch_suites("9.9.9") == root


@pytest.mark.parametrize(
    "files",
    [
        {"transformers-9.9.9/README.md": b""},  # no suites at all
        {"transformers-9.9.9/tests/../../evil.py": b"", "transformers-9.9.9/tests/test_modeling_common.py": b""},
    ],
    ids=["no-suites", "path-outside-the-folder"],
)
def test_a_bad_sdist_leaves_no_cache(cache, monkeypatch, files):
    monkeypatch.setattr(transformers_suites, "download_sdist", fake_download(files))
    with pytest.raises(transformers_suites.SuitesUnavailable):
        transformers_suites.fetch_suites("9.9.9")
    assert list(cache.iterdir()) == []
    assert not (cache.parent.parent / "evil.py").exists()


def test_an_unreachable_index_gives_one_clear_message(cache, monkeypatch):
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no find-links or index of the machine's pip config
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    with pytest.raises(transformers_suites.SuitesUnavailable) as error:
        transformers_suites.fetch_suites("9.9.9")
    message = str(error.value)
    assert "\n" not in message
    assert "transformers 9.9.9" in message and str(cache / "transformers-9.9.9-tests") in message
    assert "No matching distribution found for transformers==9.9.9" in message
    assert list(cache.iterdir()) == []
