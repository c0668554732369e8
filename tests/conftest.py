"""The tests' shared pytest fixtures and hooks; the builders and constants they use live in helpers.py."""

import json
from pathlib import Path

import pytest
import torch
from transformers import CLIPModel, CLIPTokenizer

from cascade_clip_hf import CascadeClipForZeroShotSegmentation
from cascade_clip_hf.fixture_parity import convert_fixture

from . import transformers_suites
from .helpers import CLIP_TOKENIZER, HUB_CLASSES, OFFICIAL_TINY, save_tiny_cascade, tiny_cascade, tiny_clip_config
from .synthetic import write_hub_dataset, write_voc


def pytest_collectstart(collector):
    """Before a module that imports transformers' common suites is imported, make them importable: downloaded from
    PyPI for the installed transformers on the first run, cached from then on. Without them the run stops here, with
    one message, instead of failing every such module."""
    if isinstance(collector, pytest.Module) and transformers_suites.imports_suites(collector.path.read_text("utf-8")):
        try:
            tests = transformers_suites.install()
        except transformers_suites.SuitesUnavailable as error:
            pytest.exit(str(error))
        known = {line.split(":")[0].split("(")[0].strip() for line in collector.config.getini("markers")}
        for name in sorted(transformers_suites.markers(tests) - known):
            collector.config.addinivalue_line("markers", f"{name}: a marker of transformers' test suites")


@pytest.fixture(scope="session")
def official_meta() -> dict:
    return json.loads((OFFICIAL_TINY / "meta.json").read_text())


@pytest.fixture(scope="session")
def official_model_dir(tmp_path_factory) -> Path:
    """The fixture's original checkpoint converted with the settings of its meta.json."""
    return convert_fixture(OFFICIAL_TINY, tmp_path_factory.mktemp("official") / "model", str(CLIP_TOKENIZER))


@pytest.fixture
def official_model(official_model_dir) -> CascadeClipForZeroShotSegmentation:
    return CascadeClipForZeroShotSegmentation.from_pretrained(official_model_dir).eval()


@pytest.fixture(scope="session")
def clip_tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(CLIP_TOKENIZER)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory, clip_tokenizer) -> Path:
    """A tiny random transformers CLIP checkpoint (224-style 2x2 grid at 32 pixels) with the real tokenizer."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_clip")
    CLIPModel(tiny_clip_config()).save_pretrained(path)
    clip_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_clip_dir) -> Path:
    """A tiny Cascade-CLIP built from the tiny CLIP, with a default vocabulary of four classes."""
    torch.manual_seed(0)
    model = tiny_cascade(
        tiny_clip_dir,
        id2label={0: "cat", 1: "dog", 2: "grass", 3: "sky"},
        seen_class_ids=[0, 2],
        templates=["a photo of a {}.", "a {} in the scene."],
    )
    path = tmp_path_factory.mktemp("tiny_cascade") / "model"
    model.save_pretrained(path)
    return path


@pytest.fixture
def tiny_model(tiny_model_dir) -> CascadeClipForZeroShotSegmentation:
    return CascadeClipForZeroShotSegmentation.from_pretrained(tiny_model_dir).eval()


@pytest.fixture(scope="session")
def hub_dataset(tmp_path_factory) -> tuple[Path, Path]:
    """A save_to_disk dataset of four fully labelled classes, and its id2label.json."""
    root = tmp_path_factory.mktemp("hub_dataset")
    id2label = root / "id2label.json"
    id2label.write_text(json.dumps({str(i): name for i, name in enumerate(HUB_CLASSES)}))
    return write_hub_dataset(root / "data", num_classes=len(HUB_CLASSES)), id2label


@pytest.fixture(scope="session")
def voc_root(tmp_path_factory) -> Path:
    return write_voc(tmp_path_factory.mktemp("voc") / "VOCdevkit" / "VOC2012")


@pytest.fixture(scope="session")
def tiny_hub_model_dir(tmp_path_factory, tiny_clip_dir) -> Path:
    return save_tiny_cascade(tiny_clip_dir, tmp_path_factory.mktemp("tiny_hub") / "model", HUB_CLASSES)
