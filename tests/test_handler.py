"""The Inference Endpoints handler saved beside every model: its request contract, run where the package is not
importable, its answers equal to the pipeline's, its refusals one line each, and its file never over a user's."""

import base64
import importlib.util
import io
import json
import os
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from transformers.testing_utils import CaptureLogger

from cascade_clip_hf import CascadeClipForZeroShotSegmentation, CascadeClipProcessor
from cascade_clip_hf import modeling_cascade_clip as modeling
from cascade_clip_hf.atomic import MODEL, SEGMENTATION, identity, read_record, record_outputs
from cascade_clip_hf.pipeline_cascade_clip import CascadeClipZeroShotSegmentationPipeline

from .helpers import python_without_package, random_image


PACKAGE_HANDLER = Path(modeling.__file__).with_name("handler.py")
LABELS = ["bicycle", "red thing", "ocean"]
# The subprocess's limits: above the test images (80x50 pixels, three labels), far below the defaults.
MAX_IMAGE_BYTES = 100_000
MAX_IMAGE_PIXELS = 5000
MAX_LABELS = 5

# Run by a python that cannot import the package: the handler from the model's folder, a request of each kind.
CONTRACT_SCRIPT = """
import base64, importlib.util, io, json, sys
from pathlib import Path
import PIL.Image

assert importlib.util.find_spec("cascade_clip_hf") is None, "the package is importable"
model_dir, work = Path(sys.argv[1]), Path(sys.argv[2])
spec = importlib.util.spec_from_file_location("handler", model_dir / "handler.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
handler = module.EndpointHandler(str(model_dir))
png, jpeg = (work / "image.png").read_bytes(), (work / "rotated.jpg").read_bytes()
labels = json.loads(sys.argv[3])
oversized = bytes(int(sys.argv[4]) + 1)
wide = PIL.Image.new("L", (100, 60))  # a small file of more pixels than the limit
wide_png = io.BytesIO()
wide.save(wide_png, format="PNG")
requests = {
    "bytes": {"inputs": png},
    "base64": {"inputs": base64.encodebytes(png).decode(), "parameters": {"candidate_labels": labels}},
    "data URL": {
        "inputs": "data:image/jpeg;base64," + base64.b64encode(jpeg).decode(),
        "parameters": {"candidate_labels": labels, "stride": 40},
    },
    "no inputs": {"parameters": {"candidate_labels": labels}},
    "not a dict": ["inputs"],
    "not an image": {"inputs": b"GIF89a, or so it says"},
    "truncated": {"inputs": png[: len(png) // 2]},
    "bad base64": {"inputs": "this is not base64!"},
    "a path": {"inputs": str(work / "image.png")},
    "a file URL": {"inputs": (work / "image.png").as_uri()},
    "a number": {"inputs": 7},
    "a URL": {"inputs": "http://127.0.0.1:9/image.png"},
    "too large": {"inputs": oversized},
    "too large base64": {"inputs": base64.b64encode(oversized).decode()},
    "labels as a string": {"inputs": png, "parameters": {"candidate_labels": "car"}},
    "an empty label": {"inputs": png, "parameters": {"candidate_labels": ["car", " "]}},
    "a label not a string": {"inputs": png, "parameters": {"candidate_labels": ["car", 3]}},
    "no labels": {"inputs": png, "parameters": {"candidate_labels": []}},
    "duplicate labels": {"inputs": png, "parameters": {"candidate_labels": ["cat", "Cat"]}},
    "unknown parameter": {"inputs": png, "parameters": {"threshold": 0.5}},
    "bad stride": {"inputs": png, "parameters": {"stride": 0}},
    "stride over crop": {"inputs": png, "parameters": {"crop_size": 32, "stride": 48}},
    "too many pixels": {"inputs": wide_png.getvalue()},
    "too many pixels base64": {"inputs": base64.b64encode(wide_png.getvalue()).decode()},
    "too many pixels PIL": {"inputs": wide},
    "too many labels": {"inputs": png, "parameters": {"candidate_labels": [f"class {i}" for i in range(6)]}},
    "a key not a string": {"inputs": png, "parameters": {1: "car", "stride": 40}},
    "an object as stride": {"inputs": png, "parameters": {"stride": io.BytesIO()}},
}
answers = {name: handler(request) for name, request in requests.items()}
PIL.Image.MAX_IMAGE_PIXELS = 3000  # the 80x50 image is then a possible decompression bomb
answers["bomb"] = handler({"inputs": png})
(work / "answers.json").write_text(json.dumps(answers))
"""

# What each bad request's error says.
REFUSALS = {
    "no inputs": 'no "inputs"',
    "not a dict": 'no "inputs"',
    "not an image": "not a readable image",
    "truncated": "not a readable image",
    "bad base64": "not valid base64",
    "a path": "not valid base64",
    "a file URL": "inputs starts with 'file'",
    "a number": "got int",
    "a URL": "does not fetch image URLs: send the image itself, or set CASCADE_CLIP_ALLOW_URLS=1",
    "too large": f"over this endpoint's limit of {MAX_IMAGE_BYTES} bytes",
    "too large base64": f"over this endpoint's limit of {MAX_IMAGE_BYTES} bytes",
    "labels as a string": "candidate_labels must be a non-empty list of non-empty class names",
    "an empty label": "candidate_labels must be a non-empty list of non-empty class names",
    "a label not a string": "candidate_labels must be a non-empty list of non-empty class names",
    "no labels": "candidate_labels must be a non-empty list of non-empty class names",
    "duplicate labels": "Duplicate class names",
    "unknown parameter": "unknown parameters threshold: this endpoint takes candidate_labels, crop_size",
    "bad stride": "stride must be a positive integer",
    "stride over crop": "stride (48) is larger than crop_size (32)",
    "bomb": "possible decompression bomb",
    "too many pixels": f"100x60 pixels, over this endpoint's limit of {MAX_IMAGE_PIXELS} pixels",
    "too many pixels base64": "(CASCADE_CLIP_MAX_IMAGE_PIXELS)",
    "too many pixels PIL": "(CASCADE_CLIP_MAX_IMAGE_PIXELS)",
    "too many labels": f"6 candidate_labels, over this endpoint's limit of {MAX_LABELS} (CASCADE_CLIP_MAX_LABELS)",
    "a key not a string": "parameters must be named by strings, got the key 1",
    "an object as stride": "stride must be a positive integer (pixels, or windows per pass), got a BytesIO",
}


def rotated_jpeg(path: Path) -> PIL.Image.Image:
    """A 60x40 JPEG whose EXIF orientation (6) shows it upright as 40x60; returns the image as stored."""
    image = random_image(40, 60, seed=7)
    exif = PIL.Image.Exif()
    exif[0x0112] = 6
    image.save(path, exif=exif, quality=95)
    return image


def decoded(segments: list[dict]) -> list[tuple[str, float, np.ndarray]]:
    """The handler's answer as (label, score, mask) with each base64 PNG mask decoded (mode L)."""
    result = []
    for segment in segments:
        mask = PIL.Image.open(io.BytesIO(base64.b64decode(segment["mask"])))
        assert mask.mode == "L"
        result.append((segment["label"], segment["score"], np.asarray(mask)))
    return result


def assert_same_segments(answer: list[dict], expected: list[dict], size: tuple[int, int]) -> None:
    assert [label for label, _, _ in decoded(answer)] == [segment["label"] for segment in expected]
    for (_, score, mask), segment in zip(decoded(answer), expected, strict=True):
        assert mask.shape == size[::-1]
        np.testing.assert_array_equal(mask, np.asarray(segment["mask"]))
        assert score == pytest.approx(segment["score"], abs=1e-6)


def test_the_contract_without_the_package(tmp_path, tiny_hub_model_dir):
    python = python_without_package(tmp_path)
    image = random_image(50, 80, seed=5)
    image.save(tmp_path / "image.png")
    rotated_jpeg(tmp_path / "rotated.jpg")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "CASCADE_CLIP_MAX_IMAGE_BYTES": str(MAX_IMAGE_BYTES),
        "CASCADE_CLIP_MAX_IMAGE_PIXELS": str(MAX_IMAGE_PIXELS),
        "CASCADE_CLIP_MAX_LABELS": str(MAX_LABELS),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("CASCADE_CLIP_ALLOW_URLS", None)
    arguments = [str(tiny_hub_model_dir), str(tmp_path), json.dumps(LABELS), str(MAX_IMAGE_BYTES)]
    result = subprocess.run(
        [*python, "-c", CONTRACT_SCRIPT, *arguments], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    answers = json.loads((tmp_path / "answers.json").read_text())

    segmenter = CascadeClipZeroShotSegmentationPipeline(
        model=CascadeClipForZeroShotSegmentation.from_pretrained(tiny_hub_model_dir).eval(),
        processor=CascadeClipProcessor.from_pretrained(tiny_hub_model_dir),
    )
    assert_same_segments(answers["bytes"], segmenter(image), image.size)
    assert_same_segments(answers["base64"], segmenter(image, candidate_labels=LABELS), image.size)
    upright = PIL.Image.open(tmp_path / "rotated.jpg")
    assert_same_segments(answers["data URL"], segmenter(upright, candidate_labels=LABELS, stride=40), (40, 60))
    assert {label for label, _, _ in decoded(answers["base64"])} <= set(LABELS)

    for name, message in REFUSALS.items():
        assert set(answers[name]) == {"error"}, name
        error = answers[name]["error"]
        assert message in error and "\n" not in error and "Traceback" not in error, (name, error)
        assert " at 0x" not in error, (name, error)  # PIL names an unreadable in-memory file by its repr


def handler_module(model_dir: Path):
    """The handler module saved beside the model in `model_dir`, imported in this process."""
    spec = importlib.util.spec_from_file_location("cascade_clip_handler", model_dir / "handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ImageServer(BaseHTTPRequestHandler):
    """Serves `image` at /image.png, more bytes than the limit at /endless, a redirect to a file: URL at
    /elsewhere, at /stalled a body it never finishes, and at /dripping one byte at a time, each within a socket's
    timeout but all of them far past the download's."""

    image = b""
    release = threading.Event()

    def do_GET(self):
        if self.path == "/elsewhere":
            self.send_response(302)
            self.send_header("Location", "ftp://127.0.0.1/image.png")
            self.end_headers()
            return
        self.send_response(200 if self.path in ("/image.png", "/endless", "/stalled", "/dripping") else 404)
        self.end_headers()
        try:
            if self.path == "/image.png":
                self.wfile.write(self.image)
            elif self.path == "/endless":  # no Content-Length: only counting what arrives can stop it
                for _ in range(64):
                    self.wfile.write(bytes(2**14))
            elif self.path == "/stalled":
                self.wfile.write(self.image[:10])
                self.wfile.flush()
                self.release.wait(timeout=10)
            elif self.path == "/dripping":
                for byte in self.image[:100]:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    if self.release.wait(timeout=0.1):
                        break
        except ConnectionError:  # the handler hung up, as it should
            pass

    def log_message(self, *args):
        pass


def test_urls_when_allowed_stream_within_the_limits(tmp_path, tiny_hub_model_dir, monkeypatch):
    image = random_image(50, 80, seed=6)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    ImageServer.image = buffer.getvalue()
    server = ThreadingHTTPServer(("127.0.0.1", 0), ImageServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    monkeypatch.setenv("CASCADE_CLIP_ALLOW_URLS", "1")
    monkeypatch.setenv("CASCADE_CLIP_MAX_IMAGE_BYTES", str(2**18))
    monkeypatch.setenv("CASCADE_CLIP_URL_TIMEOUT", "0.5")
    try:
        handler = handler_module(tiny_hub_model_dir).EndpointHandler(str(tiny_hub_model_dir))
        answer = handler({"inputs": f"{base}/image.png", "parameters": {"candidate_labels": LABELS}})
        refusals = {
            path: handler({"inputs": f"{base}/{path}"})["error"]
            for path in ("endless", "elsewhere", "stalled", "missing")
        }
        started = time.monotonic()
        refusals["dripping"] = handler({"inputs": f"{base}/dripping"})["error"]
        dripping_s = time.monotonic() - started
    finally:
        ImageServer.release.set()
        server.shutdown()
        server.server_close()
    assert_same_segments(answer, handler.segmenter(image, candidate_labels=LABELS), image.size)
    assert "over this endpoint's limit of 262144 bytes" in refusals["endless"]
    assert "redirects to 'ftp://127.0.0.1/image.png', which is not http(s)" in refusals["elsewhere"]
    assert "cannot download the image URL (timed out)" in refusals["stalled"]
    assert "cannot download the image URL (HTTP Error 404" in refusals["missing"]
    assert "the image URL took more than 0.5 s" in refusals["dripping"] and dripping_s < 3


def test_pil_images_the_default_folder_and_failures_inside_the_model(tiny_hub_model_dir, monkeypatch):
    module = handler_module(tiny_hub_model_dir)
    handler = module.EndpointHandler()  # the folder the handler lies in
    image = random_image(30, 20, seed=8)
    answer = handler({"inputs": image, "parameters": {"candidate_labels": LABELS}})  # as the toolkit passes files
    assert_same_segments(answer, handler.segmenter(image, candidate_labels=LABELS), image.size)

    png = io.BytesIO()
    image.save(png, format="PNG")
    handler.segmenter.model.config.id2label = {}  # a model without a default vocabulary
    assert handler({"inputs": png.getvalue()}) == {
        "error": 'this model has no default vocabulary: pass the class names, as in {"inputs": <image>, '
        '"parameters": {"candidate_labels": ["car", "road"]}}'
    }

    def fail(*args, **kwargs):
        raise RuntimeError("out of memory\nwhile segmenting")

    handler.segmenter = fail
    assert handler({"inputs": png.getvalue(), "parameters": {"candidate_labels": LABELS}}) == {
        "error": "segmentation failed (RuntimeError: out of memory while segmenting); see the endpoint's logs"
    }
    monkeypatch.setenv("CASCADE_CLIP_MAX_IMAGE_BYTES", "lots")
    with pytest.raises(ValueError, match="CASCADE_CLIP_MAX_IMAGE_BYTES='lots' is not a positive int"):
        module.EndpointHandler(str(tiny_hub_model_dir))


def test_save_pretrained_writes_the_handler_but_never_over_a_users(tmp_path, tiny_model, tiny_hub_model_dir):
    assert (tiny_hub_model_dir / "handler.py").read_bytes() == PACKAGE_HANDLER.read_bytes()

    users = tmp_path / "users"
    users.mkdir()
    (users / "handler.py").write_text("class EndpointHandler: ...\n")
    with CaptureLogger(modeling.logger) as captured:
        tiny_model.save_pretrained(users)
    assert (users / "handler.py").read_text() == "class EndpointHandler: ...\n"
    assert f"Kept the handler.py in {users}, which cascade-clip did not write" in captured.out
    assert (users / "config.json").is_file()

    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "handler.py").write_text("an earlier version of the package's handler\n")
    record_outputs(ours, ["handler.py"], MODEL)
    tiny_model.save_pretrained(ours)
    assert (ours / "handler.py").read_bytes() == PACKAGE_HANDLER.read_bytes()
    assert not [path.name for path in ours.iterdir() if "staging" in path.name]
    # The record identifies the new handler: the user's file put in its place later is theirs.
    assert read_record(ours).identities["handler.py"] == identity(ours / "handler.py")
    (ours / "handler.py").unlink()
    (ours / "handler.py").write_text("the user's own handler\n")
    tiny_model.save_pretrained(ours)
    assert (ours / "handler.py").read_text() == "the user's own handler\n"

    # A handler.py another of the program's writers made is not a model file either.
    other = tmp_path / "other"
    other.mkdir()
    (other / "handler.py").write_text("written by segment\n")
    record_outputs(other, ["handler.py"], SEGMENTATION)
    tiny_model.save_pretrained(other)
    assert (other / "handler.py").read_text() == "written by segment\n"
