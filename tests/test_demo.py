import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch

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
