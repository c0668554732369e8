import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub.constants
import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import CommitInfo, HfApi, ModelCard
from huggingface_hub.errors import HfHubHTTPError
from transformers.testing_utils import CaptureLogger

from cascade_clip_hf import CascadeClipConfig, CascadeClipForZeroShotSegmentation, CascadeClipProcessor, hub
from cascade_clip_hf.hub import push_model_to_hub
from cascade_clip_hf.model_card import build_model_card, card_data_of, training_provenance

from .helpers import free_port, random_image


REPOSITORY = Path(__file__).parent.parent


def hub_cache_with(model_dir: Path, cache: Path, repo_id: str) -> Path:
    """A Hugging Face cache in its documented layout holding `model_dir` as `repo_id`'s main revision."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return cache


def test_from_pretrained_offline_through_the_hub_cache(tmp_path, tiny_hub_model_dir):
    cache = hub_cache_with(tiny_hub_model_dir, tmp_path / "cache", "org/cascade-clip-tiny")
    random_image(50, 80).save(tmp_path / "image.png")
    script = """
import numpy as np, torch
from PIL import Image
from transformers import AutoModelForSemanticSegmentation, AutoProcessor
import cascade_clip_hf
model = AutoModelForSemanticSegmentation.from_pretrained("org/cascade-clip-tiny").eval()
processor = AutoProcessor.from_pretrained("org/cascade-clip-tiny")
with torch.no_grad():
    np.save("logits.npy", model(**processor(images=Image.open("image.png"))).logits.numpy())
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    model = CascadeClipForZeroShotSegmentation.from_pretrained(tiny_hub_model_dir).eval()
    processor = CascadeClipProcessor.from_pretrained(tiny_hub_model_dir)
    with torch.no_grad():
        expected = model(**processor(images=random_image(50, 80))).logits.numpy()
    np.testing.assert_array_equal(np.load(tmp_path / "logits.npy"), expected)


def test_a_cached_model_loads_at_once_when_the_hub_cannot_be_reached(tmp_path, tiny_hub_model_dir):
    cache = hub_cache_with(tiny_hub_model_dir, tmp_path / "cache", "org/cascade-clip-tiny")
    random_image(50, 80).save(tmp_path / "image.png")
    env = {name: value for name, value in os.environ.items() if name != "HF_HUB_OFFLINE"}
    env.update(HF_HUB_CACHE=str(cache), HF_ENDPOINT=f"http://127.0.0.1:{free_port()}")
    command = [sys.executable, "-m", "cascade_clip_hf.cli", "segment", "image.png", "--model", "org/cascade-clip-tiny"]
    command += ["--output", "out"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    # Unread, every optional file the loading looks for (chat_template.jinja, ...) was retried for about 25 seconds.
    assert "Retry" not in result.stderr
    assert json.loads((tmp_path / "out" / "image.png.json").read_text())["fractions"]


def test_a_cached_clip_and_its_tokenizer_load_at_once_when_the_hub_cannot_be_reached(tmp_path, tiny_clip_dir):
    cache = hub_cache_with(tiny_clip_dir, tmp_path / "cache", "org/tiny-clip")
    script = """
from cascade_clip_hf import CascadeClipForZeroShotSegmentation
from cascade_clip_hf.vocabulary import load_tokenizer
load_tokenizer("org/tiny-clip")
CascadeClipForZeroShotSegmentation.from_clip_pretrained("org/tiny-clip", image_size=64, id2label={0: "cat"})
try:
    load_tokenizer("org/not-cached")
except ValueError as error:
    print(error)
"""
    env = {name: value for name, value in os.environ.items() if name != "HF_HUB_OFFLINE"}
    env.update(HF_HUB_CACHE=str(cache), HF_ENDPOINT=f"http://127.0.0.1:{free_port()}")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Retry" not in result.stderr
    assert result.stdout.splitlines() == [
        "org/not-cached: no such folder here, and the Hub cannot be reached, with no copy of its "
        "tokenizer_config.json in the cache; give a folder, or download it once while online."
    ]


@pytest.fixture
def hub_repository() -> dict[str, bytes]:
    """The files the intercepted Hub's repository holds before an upload, by name."""
    return {}


@pytest.fixture
def intercepted_hub(monkeypatch, hub_repository):
    """Replaces the Hub's repository, file and commit endpoints (the repository holds `hub_repository`); records
    each commit's files and their bytes."""
    commits = []

    def file_exists(self, repo_id, filename, **kwargs):
        return filename in hub_repository

    def hf_hub_download(self, repo_id, filename, local_dir, **kwargs):
        path = Path(local_dir) / filename
        path.write_bytes(hub_repository[filename])
        return str(path)

    def create_repo(self, repo_id, **kwargs):
        return f"https://huggingface.co/{repo_id}"

    def create_commit(self, repo_id, operations, commit_message, **kwargs):
        files = {}
        for operation in operations:
            source = operation.path_or_fileobj
            files[operation.path_in_repo] = Path(source).read_bytes() if isinstance(source, (str, Path)) else source
        commits.append({"repo_id": repo_id, "message": commit_message, "files": files})
        return CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/{len(commits)}",
            commit_message=commit_message,
            commit_description="",
            oid=f"{len(commits):040d}",
        )

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "file_exists", file_exists)
    monkeypatch.setattr(HfApi, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    return commits


def test_push_to_hub_uploads_everything_in_one_commit(tiny_hub_model_dir, intercepted_hub):
    model = CascadeClipForZeroShotSegmentation.from_pretrained(tiny_hub_model_dir)
    processor = CascadeClipProcessor.from_pretrained(tiny_hub_model_dir)
    results = {"miou": 50.0, "miou_seen": 60.0, "miou_unseen": 40.0, "hiou": 48.0, "num_images": 3}
    card = build_model_card(model.config, "org/cascade-clip-tiny", dataset="pascal-voc-2012", results=results)
    url = push_model_to_hub(model, processor, "org/cascade-clip-tiny", card=card)

    assert url == "https://huggingface.co/org/cascade-clip-tiny/commit/1"
    assert len(intercepted_hub) == 1
    files = intercepted_hub[0]["files"]
    assert {
        "config.json",
        "model.safetensors",
        "processor_config.json",
        "tokenizer.json",
        "README.md",
        "modeling_cascade_clip.py",
        "configuration_cascade_clip.py",
        "pipeline_cascade_clip.py",
        "handler.py",
    } <= set(files)
    assert files["handler.py"] == (REPOSITORY / "cascade_clip_hf" / "handler.py").read_bytes()
    from safetensors.torch import load

    uploaded = load(files["model.safetensors"])
    # Saved weights keep the earlier layout, with the decode head's parameters at the top level.
    stored = {
        name.replace("decode_head.aggregation.", "").replace("decode_head.", ""): tensor
        for name, tensor in model.state_dict().items()
    }
    assert set(uploaded) == set(stored)
    for name, tensor in stored.items():
        torch.testing.assert_close(uploaded[name], tensor, rtol=0, atol=0)
    assert json.loads(files["config.json"])["id2label"]["0"] == "red thing"
    assert (
        files["modeling_cascade_clip.py"] == (REPOSITORY / "cascade_clip_hf" / "modeling_cascade_clip.py").read_bytes()
    )
    metadata = yaml.safe_load(files["README.md"].decode().split("---")[1])
    assert metadata["model-index"][0]["results"][0]["metrics"][0]["value"] == 50.0


def test_training_pushes_its_output_folder_in_one_commit(tmp_path, tiny_hub_model_dir, intercepted_hub):
    from cascade_clip_hf.hub import push_folder

    output = tmp_path / "run"
    shutil.copytree(tiny_hub_model_dir, output)
    (output / "checkpoint-2").mkdir()
    (output / "checkpoint-2" / "optimizer.bin").write_bytes(b"state")
    push_folder(output, "org/run")
    assert len(intercepted_hub) == 1
    assert "model.safetensors" in intercepted_hub[0]["files"]
    assert not any(name.startswith("checkpoint-") for name in intercepted_hub[0]["files"])


def test_push_keeps_a_handler_the_repository_holds(tiny_hub_model_dir, intercepted_hub, hub_repository):
    model = CascadeClipForZeroShotSegmentation.from_pretrained(tiny_hub_model_dir)
    processor = CascadeClipProcessor.from_pretrained(tiny_hub_model_dir)
    hub_repository["handler.py"] = (REPOSITORY / "cascade_clip_hf" / "handler.py").read_bytes()
    push_model_to_hub(model, processor, "org/same-handler")
    hub_repository["handler.py"] = b"class EndpointHandler: ...\n"
    with CaptureLogger(hub.logger) as captured:
        push_model_to_hub(model, processor, "org/own-handler")
    assert "handler.py" in intercepted_hub[0]["files"]
    assert "handler.py" not in intercepted_hub[1]["files"] and "config.json" in intercepted_hub[1]["files"]
    assert "Kept the handler.py in org/own-handler" in captured.out


def test_model_cards_of_the_six_settings(tmp_path):
    results = {"miou": 51.0, "miou_seen": 55.5, "miou_unseen": 44.5, "hiou": 49.4, "num_images": 7, "split": "val"}
    (tmp_path / "results.json").write_text(json.dumps(results))
    command = [
        sys.executable,
        str(REPOSITORY / "model_cards" / "generate_model_cards.py"),
        "--org",
        "org",
        "--output_dir",
        str(tmp_path / "cards"),
        "--results",
        f"pascal-voc-2012/inductive={tmp_path / 'results.json'}",
    ]
    subprocess.run(command, check=True, capture_output=True)
    cards = sorted(path.parent.name for path in (tmp_path / "cards").glob("*/README.md"))
    assert len(cards) == 6 and "cascade-clip-pascal-voc-2012-transductive" in cards

    card = ModelCard.load(tmp_path / "cards" / "cascade-clip-pascal-voc-2012-inductive" / "README.md")
    assert card.data.pipeline_tag == "image-segmentation"
    assert card.data.library_name == "transformers"
    assert card.data.base_model == "openai/clip-vit-base-patch16"
    assert card.data.datasets == ["pascal-voc-2012"]
    assert card.data.widget and card.data.widget[0]["src"].endswith(".jpg")
    measured = {result.metric_type: result.metric_value for result in card.data.eval_results}
    assert measured == {"miou": 51.0, "miou_seen": 55.5, "miou_unseen": 44.5, "hiou": 49.4}
    assert "| reported by the original authors (not measured here) | 92.5 | 83.0 | 87.5 |" in card.text
    assert "non-commercial" in card.text and "@inproceedings" in card.text

    unmeasured = ModelCard.load(tmp_path / "cards" / "cascade-clip-coco-stuff-164k-transductive" / "README.md")
    assert unmeasured.data.eval_results is None
    assert "41.7 | 62.5" in unmeasured.text and "measured with this checkpoint" not in unmeasured.text


def test_shipped_model_cards_are_the_generators_output(tmp_path):
    subprocess.run(
        [sys.executable, str(REPOSITORY / "model_cards" / "generate_model_cards.py"), "--output_dir", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    for card in tmp_path.glob("*/README.md"):
        shipped = REPOSITORY / "model_cards" / card.parent.name / "README.md"
        assert shipped.read_text() == card.read_text(), (
            f"{shipped} is stale: rerun model_cards/generate_model_cards.py"
        )
    assert CascadeClipConfig.from_preset("pascal-voc-2012", "inductive").setting == "inductive"


def card_yaml(provenance: dict) -> dict:
    card = build_model_card(CascadeClipConfig.from_preset("pascal-voc-2012", "inductive"), "org/run", **provenance)
    return yaml.safe_load(str(card).split("---")[1]), card.text


def test_cards_of_trained_models_name_their_clip_and_licence(tmp_path, tiny_clip_dir):
    metadata, text = card_yaml(training_provenance(str(tiny_clip_dir)))
    assert "base_model" not in metadata  # a local CLIP folder that names no Hub model
    assert metadata["license"] == "apache-2.0" and "license_name" not in metadata
    assert f"local folder `{tiny_clip_dir}`" in text and "non-commercial" not in text

    saved_from_hub = tmp_path / "clip"
    shutil.copytree(tiny_clip_dir, saved_from_hub)
    config = json.loads((saved_from_hub / "config.json").read_text())
    (saved_from_hub / "config.json").write_text(
        json.dumps({**config, "_name_or_path": "openai/clip-vit-large-patch14"})
    )
    metadata, _ = card_yaml(training_provenance(str(saved_from_hub), license="mit"))
    assert metadata["base_model"] == "openai/clip-vit-large-patch14" and metadata["license"] == "mit"

    metadata, _ = card_yaml(training_provenance("openai/clip-vit-base-patch16"))
    assert metadata["base_model"] == "openai/clip-vit-base-patch16" and metadata["license"] == "apache-2.0"


def test_continued_models_keep_their_parents_licence(tmp_path, tiny_model_dir):
    metadata, text = card_yaml(training_provenance("openai/clip-vit-base-patch16", init_from=str(tiny_model_dir)))
    assert metadata["license"] == "other" and metadata["license_name"] == "cascade-clip-non-commercial"
    assert "base_model" not in metadata and "non-commercial" in text  # no card: converted weights' terms assumed

    parent = tmp_path / "parent"
    shutil.copytree(tiny_model_dir, parent)
    card = build_model_card(CascadeClipConfig(), "org/parent", **training_provenance("openai/clip-vit-base-patch16"))
    card.save(parent / "README.md")
    metadata, text = card_yaml(training_provenance("openai/clip-vit-base-patch16", init_from=str(parent)))
    assert metadata["license"] == "apache-2.0" and metadata["base_model"] == "openai/clip-vit-base-patch16"
    assert f"the licence of `{parent}`" in text


def test_the_card_of_a_hub_parent_is_read_from_the_cache_when_the_hub_is_out_of_reach(tmp_path, monkeypatch):
    def out_of_reach(url):
        raise ConnectionError("[Errno 111] Connection refused")

    def no_download(*args, **kwargs):
        raise AssertionError("hf_hub_download retries for 25 seconds when the Hub is out of reach")

    monkeypatch.setattr(hub, "get_hf_file_metadata", out_of_reach)
    monkeypatch.setattr(hub, "hf_hub_download", no_download)
    monkeypatch.setattr(hub, "try_to_load_from_cache", lambda repo_id, filename: None)
    assert card_data_of("org/parent") is None
    card = build_model_card(CascadeClipConfig(), "org/parent", **training_provenance("openai/clip-vit-base-patch16"))
    card.save(tmp_path / "README.md")
    monkeypatch.setattr(hub, "try_to_load_from_cache", lambda repo_id, filename: str(tmp_path / filename))
    assert card_data_of("org/parent").license == "apache-2.0"


@pytest.mark.parametrize(
    "answer, refused",
    [
        (ConnectionError("[Errno 111] Connection refused"), True),
        (
            HfHubHTTPError("500 Server Error", response=SimpleNamespace(status_code=500, headers={}, request=None)),
            True,
        ),
        (HfHubHTTPError("404 Not Found", response=SimpleNamespace(status_code=404, headers={}, request=None)), False),
        (None, False),
    ],
    ids=["no-connection", "server-error", "answered-not-found", "answered"],
)
def test_a_hub_dataset_out_of_reach_is_refused_at_once(answer, refused, monkeypatch):
    def hub_answer(url):
        if answer is not None:
            raise answer

    monkeypatch.setattr(hub, "get_hf_file_metadata", hub_answer)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    if refused:
        with pytest.raises(ValueError, match=r"^the dataset org/ds: the Hub cannot be reached .*HF_HUB_OFFLINE=1"):
            hub.check_hub_dataset("org/ds")
    else:
        hub.check_hub_dataset("org/ds")
    # Offline, datasets reads its cache alone: nothing to ask.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    hub.check_hub_dataset("org/ds")
