import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from cascade_clip_hf.segmenter import DEMO_MODEL

from .helpers import EXAMPLES, free_port, random_image


def test_demo_app_answers_a_request_through_gradio_client(tmp_path, tiny_hub_model_dir, monkeypatch):
    from gradio_client import Client, handle_file

    from cascade_clip_hf.demo import build_demo

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    random_image(50, 80).save(tmp_path / "photo.png")
    demo = build_demo(str(tiny_hub_model_dir))
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        overlay_path, shares = client.predict(
            handle_file(tmp_path / "photo.png"), "bicycle, ocean", api_name="/segment"
        )
        overlay = PIL.Image.open(overlay_path)
        assert overlay.height >= 50 and overlay.width > 80
        fractions = {entry["label"]: entry["confidence"] for entry in shares["confidences"]}
        assert set(fractions) <= {"bicycle", "ocean"} and np.isclose(sum(fractions.values()), 1.0)
        with pytest.raises(Exception, match="Duplicate class names"):
            client.predict(handle_file(tmp_path / "photo.png"), "ocean, Ocean", api_name="/segment")
    finally:
        demo.close()


def test_demo_loads_the_model_in_the_dtype_asked(tiny_hub_model_dir, monkeypatch):
    from cascade_clip_hf import demo

    dtypes = []
    load_segmenter = demo.load_segmenter

    def recording_dtype(*args, **kwargs):
        segmenter = load_segmenter(*args, **kwargs)
        dtypes.append(segmenter.model.dtype)
        return segmenter

    monkeypatch.setattr(demo, "load_segmenter", recording_dtype)
    demo.build_demo(str(tiny_hub_model_dir), dtype="bfloat16")
    assert dtypes == [torch.bfloat16]


def test_demo_app_refuses_an_unknown_dtype_in_one_line():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CASCADE_CLIP_DTYPE": "float64"}
    command = [sys.executable, str(EXAMPLES.parent / "demo" / "app.py")]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.splitlines() == [
        "error: the environment variable CASCADE_CLIP_DTYPE is 'float64': set it to one of float32, bfloat16, "
        "float16, or leave it unset for float32."
    ]


@pytest.mark.parametrize(
    "hub, reason", [("offline", "HF_HUB_OFFLINE is set"), ("unreachable", "the Hub cannot be reached")]
)
def test_demo_app_names_a_model_it_cannot_load_in_one_line(hub, reason, tmp_path):
    # Out of reach, huggingface_hub alone would retry for about 25 seconds, logging each try twice.
    network = {"HF_HUB_OFFLINE": "1"} if hub == "offline" else {"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    env = {name: value for name, value in os.environ.items() if name != "HF_HUB_OFFLINE"}
    env.update(network, HF_HUB_CACHE=str(tmp_path / "empty_cache"), CASCADE_CLIP_MODEL="org/cascade-clip-coco")
    command = [sys.executable, str(EXAMPLES.parent / "demo" / "app.py")]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.splitlines() == [
        f"error: no model folder or Hub id 'org/cascade-clip-coco': no such folder here, and {reason}, with no copy "
        "of it in the cache; give a model folder, or download the model once while online."
    ]


def page_text(demo) -> str:
    import gradio as gr

    return "\n".join(block.value for block in demo.blocks.values() if isinstance(block, gr.Markdown))


def test_demo_page_says_when_its_model_is_the_toy(tiny_hub_model_dir):
    from cascade_clip_hf.demo import build_demo

    toy_page = page_text(build_demo(str(DEMO_MODEL)))
    assert "A toy model" in toy_page and "sand, stone, soil" in toy_page
    assert "Model: the shipped toy-world model" in toy_page and str(DEMO_MODEL) not in toy_page
    assert "toy" not in page_text(build_demo(str(tiny_hub_model_dir)))


def test_the_space_folder_runs_its_own_copy_of_the_package_and_requires_only_published_ones(tmp_path):
    from configparser import ConfigParser

    from packaging.requirements import Requirement

    space = tmp_path / "space"
    result = subprocess.run(
        [sys.executable, str(EXAMPLES.parent / "demo" / "build_space.py"), "--output-dir", str(space)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    # The record of what was written stays off the Space.
    assert "--repo-type space --exclude .cascade-clip-outputs" in result.stderr
    setup = ConfigParser()
    setup.read(EXAMPLES.parent / "setup.cfg")
    lines = (space / "requirements.txt").read_text().splitlines()
    names = {Requirement(line).name for line in lines}
    # A Space installs from the package index only: the package itself is in the folder, not required.
    assert setup["metadata"]["name"] not in names and {"torch", "transformers", "gradio"} <= names
    assert "sdk_version: " in (space / "README.md").read_text()
    assert not list(space.rglob("__pycache__"))
    # The Space runs app.py from its folder, which Python searches before the installed packages.
    check = (
        "import cascade_clip_hf; from cascade_clip_hf.demo import build_demo; "
        "from cascade_clip_hf.segmenter import DEMO_MODEL; build_demo(str(DEMO_MODEL)); "
        "print(cascade_clip_hf.__file__)"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", check], cwd=space, capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert Path(result.stdout.strip()).parent == space / "cascade_clip_hf"


def test_a_toy_model_named_explicitly_starts_from_its_own_vocabulary(tiny_hub_model_dir):
    import gradio as gr

    from cascade_clip_hf.demo import build_demo

    def names_box(demo) -> str:
        return next(block.value for block in demo.blocks.values() if isinstance(block, gr.Textbox))

    assert names_box(build_demo(str(DEMO_MODEL), example_labels="cat, grass, sky")) == ""
    assert names_box(build_demo(str(tiny_hub_model_dir), example_labels="cat, grass, sky")) == "cat, grass, sky"


def test_the_page_warns_about_class_names_the_tokenizer_cannot_read(tmp_path, monkeypatch):
    import gradio as gr

    from cascade_clip_hf.demo import build_demo

    warnings = []
    monkeypatch.setattr(gr, "Warning", warnings.append)
    demo = build_demo(str(DEMO_MODEL))
    segment = next(function.fn for function in demo.fns.values() if function.api_name == "segment")
    random_image(40, 40).save(tmp_path / "scene.png")
    segment(str(tmp_path / "scene.png"), "sand, stone")
    assert warnings == []
    segment(str(tmp_path / "scene.png"), "sand, class 7, Ωmega")
    assert len(warnings) == 1
    assert warnings[0].startswith("The tokenizer cannot read 2 of 3 class names ('class 7', 'Ωmega')")
