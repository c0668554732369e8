"""`cascade-clip info [MODEL] [--json]`: a model's vocabulary and settings, read without its weights."""

import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cascade_clip_hf import CascadeClipConfig, CascadeClipForZeroShotSegmentation, CascadeClipProcessor
from cascade_clip_hf.cli import main

from .helpers import EXAMPLES, HUB_CLASSES


def test_info_shows_the_shipped_models_classes_and_settings_by_default(capsys):
    assert main(["info"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("demo_model")
    settings = dict(line.split(":", 1) for line in lines[1 : lines.index("")])
    settings = {name: value.strip() for name, value in settings.items()}
    assert settings["toy world"].startswith("yes")
    assert settings["vocabulary"] == "21 classes: 18 seen in training, 3 unseen (marked below)"
    assert settings["templates"] == '3 templates, e.g. "a {} on sand"'
    assert settings["sliding window"] == "64-pixel crops, stride 53"
    assert settings["cascade stages"] == "[1, 2], [3, 4], then the last layer: 3 decoders"
    assert (settings["dtype"], settings["license"]) == ("float32", "apache-2.0")
    assert "   0: sand" in lines and "   4: striped red  (unseen)" in lines and "  20: checked purple" in lines


def test_info_json_reads_no_weights_and_counts_the_parameters(tmp_path, tiny_hub_model_dir, capsys):
    without_weights = tmp_path / "model"
    shutil.copytree(tiny_hub_model_dir, without_weights, ignore=shutil.ignore_patterns("*.safetensors"))
    assert main(["info", str(without_weights), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)

    config = CascadeClipConfig.from_pretrained(tiny_hub_model_dir)
    model = CascadeClipForZeroShotSegmentation.from_pretrained(tiny_hub_model_dir)
    assert info["parameters"] == sum(parameter.numel() for parameter in model.parameters())
    assert info["classes"] == [{"id": index, "name": name, "seen": True} for index, name in enumerate(HUB_CLASSES)]
    assert info["templates"] == CascadeClipProcessor.from_pretrained(tiny_hub_model_dir).templates
    assert (info["slide_crop_size"], info["slide_stride"]) == (config.slide_crop_size, config.slide_stride)
    assert (info["cascade_stages"], info["num_decoders"]) == (config.cascade_stages, len(config.cascade_stages) + 1)
    assert (info["toy_world"], info["license"], info["model"]) == (False, None, str(without_weights))


def test_info_on_a_folder_that_is_no_model_is_one_line(capsys, caplog):
    assert main(["info", str(EXAMPLES / "scenes")]) == 2
    assert capsys.readouterr().out == ""
    assert [record.getMessage() for record in caplog.records] == [
        f"error: {EXAMPLES / 'scenes'}: not a model folder (no config.json); pass a folder written by "
        "save_pretrained or `cascade-clip convert`."
    ]


class NotFoundHandler(BaseHTTPRequestHandler):
    """Answers every request with 404, as the Hub answers for a model it does not have."""

    def do_HEAD(self):
        self.send_response(404)
        self.end_headers()

    do_GET = do_HEAD

    def log_message(self, format, *args):
        pass


def test_a_hub_that_answers_no_such_model_is_reported_in_one_line(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFoundHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {name: value for name, value in os.environ.items() if name != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{server.server_port}", HF_HUB_CACHE=str(tmp_path / "cache"))
    try:
        command = [sys.executable, "-m", "cascade_clip_hf.cli", "info", "org/x"]
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    finally:
        server.shutdown()
    assert result.returncode == 2
    # Neither the HTTP client's log of each request nor retries: one line, which says the Hub answered.
    [line] = result.stderr.splitlines()
    assert line.startswith("error: no model folder or Hub id 'org/x': the Hub cannot give it (") and "404" in line
