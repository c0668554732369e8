import json
import os
import subprocess
import sys

import huggingface_hub.constants
import numpy as np
import PIL.Image
import pytest
import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForSemanticSegmentation,
    AutoProcessor,
    AutoTokenizer,
    CLIPTokenizer,
    ImageSegmentationPipeline,
    pipeline,
)

from cascade_clip_hf import (
    CascadeClipConfig,
    CascadeClipForZeroShotSegmentation,
    CascadeClipImageProcessor,
    CascadeClipProcessor,
    CascadeClipZeroShotSegmentationPipeline,
)
from cascade_clip_hf.configuration_cascade_clip import pipelines_to_load_from_the_model
from cascade_clip_hf.pipeline_cascade_clip import zero_shot_pipeline_entry
from cascade_clip_hf.segmenter import DEMO_MODEL

from .helpers import EXAMPLES, HUB_CLASSES, python_without_package, random_image, reference_segmentation


# What each Auto class gives for a Cascade-CLIP folder where the package is imported: its own classes, never copies
# of them loaded as remote code.
AUTO_CLASSES = {
    AutoConfig: CascadeClipConfig,
    AutoModel: CascadeClipForZeroShotSegmentation,
    AutoModelForSemanticSegmentation: CascadeClipForZeroShotSegmentation,
    AutoImageProcessor: CascadeClipImageProcessor,
    AutoProcessor: CascadeClipProcessor,
    AutoTokenizer: CLIPTokenizer,
}


def index_map(segments, class_names, size) -> np.ndarray:
    segmentation = np.full(size[::-1], -1)
    for segment in segments:
        mask = np.asarray(segment["mask"])
        assert mask.shape == size[::-1] and set(np.unique(mask)) <= {0, 255}
        assert (segmentation[mask > 0] == -1).all(), "masks overlap"
        segmentation[mask > 0] = class_names.index(segment["label"])
    assert (segmentation >= 0).all(), "masks leave pixels uncovered"
    return segmentation


def test_auto_classes_resolve_to_the_package(tiny_hub_model_dir):
    assert isinstance(AutoConfig.from_pretrained(tiny_hub_model_dir), CascadeClipConfig)
    assert isinstance(
        AutoModelForSemanticSegmentation.from_pretrained(tiny_hub_model_dir), CascadeClipForZeroShotSegmentation
    )
    assert isinstance(AutoImageProcessor.from_pretrained(tiny_hub_model_dir), CascadeClipImageProcessor)
    assert isinstance(AutoProcessor.from_pretrained(tiny_hub_model_dir), CascadeClipProcessor)


@pytest.mark.parametrize("trust_remote_code", [None, True, False], ids=["unset", "trusted", "untrusted"])
@pytest.mark.parametrize("folder", ["shipped", "saved"])
def test_every_auto_class_and_both_pipelines_open_a_folder_by_path(
    folder, trust_remote_code, tiny_hub_model_dir, monkeypatch
):
    """The shipped demo model (no code files) and a save_pretrained folder (code files, auto_map, custom_pipelines)
    open alike, offline, with or without trust_remote_code; an interactive question would fail under pytest."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    model_dir = str(DEMO_MODEL if folder == "shipped" else tiny_hub_model_dir)
    options = {} if trust_remote_code is None else {"trust_remote_code": trust_remote_code}
    for auto_class, expected in AUTO_CLASSES.items():
        assert type(auto_class.from_pretrained(model_dir, **options)) is expected, auto_class.__name__

    image = PIL.Image.open(EXAMPLES / "scenes" / "scene-2.png") if folder == "shipped" else random_image(40, 60)
    labels = ["plain blue", "plain red", "soil"] if folder == "shipped" else ["bicycle", "ocean"]
    segmenter = pipeline("zero-shot-image-segmentation", model=model_dir, **options)
    assert type(segmenter) is CascadeClipZeroShotSegmentationPipeline
    expected = reference_segmentation(model_dir, image, labels)
    np.testing.assert_array_equal(index_map(segmenter(image, candidate_labels=labels), labels, image.size), expected)
    default_vocabulary = pipeline("image-segmentation", model=model_dir, **options)
    assert type(default_vocabulary) is ImageSegmentationPipeline
    assert type(default_vocabulary.model) is CascadeClipForZeroShotSegmentation
    assert {segment["label"] for segment in default_vocabulary(image)} <= set(
        default_vocabulary.model.config.class_names
    )


def test_the_auto_classes_know_the_shipped_model_once_the_package_is_imported():
    """As README's table says: before `import cascade_clip_hf`, transformers does not know the model type (its own
    error); after it, the Auto classes give the package's classes."""
    script = f"""
from transformers import AutoConfig, AutoImageProcessor, AutoProcessor, pipeline
for load, message in [
    (AutoConfig.from_pretrained, "does not recognize this architecture"),
    (lambda folder: pipeline("image-segmentation", model=folder), "does not recognize this architecture"),
    (AutoImageProcessor.from_pretrained, "Unrecognized image processor"),
]:
    try:
        load({str(DEMO_MODEL)!r})
    except ValueError as error:
        print("before:", message in str(error))
import cascade_clip_hf
print("after:", type(AutoConfig.from_pretrained({str(DEMO_MODEL)!r})).__name__,
      type(AutoProcessor.from_pretrained({str(DEMO_MODEL)!r})).__name__)
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == ["before: True"] * 3 + ["after: CascadeClipConfig CascadeClipProcessor"]


def test_only_pipelines_registered_under_another_class_are_loaded_from_the_model():
    ours = zero_shot_pipeline_entry()
    assert pipelines_to_load_from_the_model(ours) == {}
    foreign = {"zero-shot-image-segmentation": {**ours["zero-shot-image-segmentation"], "impl": "other.OtherPipeline"}}
    unregistered = {"custom-task": {"impl": "pipeline_cascade_clip.CascadeClipZeroShotSegmentationPipeline"}}
    assert pipelines_to_load_from_the_model({**foreign, **unregistered}) == {**foreign, **unregistered}
    # What the file says is kept for machines without the package; only the loaded config drops it.
    config = json.loads((DEMO_MODEL / "config.json").read_text())
    loaded = CascadeClipConfig.from_dict({**config, "custom_pipelines": {**ours, **unregistered}})
    assert loaded.custom_pipelines == unregistered


def test_saved_folder_carries_code_auto_map_and_custom_pipeline(tiny_hub_model_dir):
    config = json.loads((tiny_hub_model_dir / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_cascade_clip.CascadeClipConfig",
        "AutoModel": "modeling_cascade_clip.CascadeClipForZeroShotSegmentation",
        "AutoModelForSemanticSegmentation": "modeling_cascade_clip.CascadeClipForZeroShotSegmentation",
    }
    assert config["custom_pipelines"]["zero-shot-image-segmentation"]["impl"] == (
        "pipeline_cascade_clip.CascadeClipZeroShotSegmentationPipeline"
    )
    processor_config = json.loads((tiny_hub_model_dir / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_cascade_clip.CascadeClipProcessor"
    for name in ("configuration", "modeling", "processing", "image_processing", "pipeline"):
        assert (tiny_hub_model_dir / f"{name}_cascade_clip.py").is_file()


def test_image_segmentation_pipeline_uses_the_default_vocabulary(tiny_hub_model_dir):
    image = random_image(50, 80)
    segments = pipeline("image-segmentation", model=str(tiny_hub_model_dir))(image)
    model = CascadeClipForZeroShotSegmentation.from_pretrained(tiny_hub_model_dir).eval()
    processor = CascadeClipProcessor.from_pretrained(tiny_hub_model_dir)
    with torch.no_grad():
        outputs = model(**processor(images=image))
    expected = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0].numpy()
    np.testing.assert_array_equal(index_map(segments, HUB_CLASSES, image.size), expected)
    assert all(set(segment) == {"label", "score", "mask"} for segment in segments)


def test_zero_shot_pipeline_with_any_class_names_batched(tiny_hub_model_dir):
    images = [random_image(50, 80, seed=1), random_image(70, 40, seed=2), random_image(64, 64, seed=3)]
    labels = ["bicycle", "red thing", "ocean"]
    segmenter = pipeline("zero-shot-image-segmentation", model=str(tiny_hub_model_dir), trust_remote_code=True)
    batched = segmenter(images, candidate_labels=labels, batch_size=2)
    assert len(batched) == 3
    for image, segments in zip(images, batched, strict=True):
        expected = reference_segmentation(tiny_hub_model_dir, image, labels)
        np.testing.assert_array_equal(index_map(segments, labels, image.size), expected)
        assert all(-1 <= segment["score"] <= 1 for segment in segments)
    assert segmenter(images[1], candidate_labels=labels)[0]["label"] == batched[1][0]["label"]


def test_zero_shot_pipeline_from_the_package_class(tiny_hub_model_dir):
    segmenter = CascadeClipZeroShotSegmentationPipeline(
        model=CascadeClipForZeroShotSegmentation.from_pretrained(tiny_hub_model_dir).eval(),
        processor=CascadeClipProcessor.from_pretrained(tiny_hub_model_dir),
    )
    image = random_image(40, 60, seed=4)
    segments = segmenter(image)  # the default vocabulary
    expected = reference_segmentation(tiny_hub_model_dir, image)
    np.testing.assert_array_equal(index_map(segments, HUB_CLASSES, image.size), expected)
    with pytest.raises(ValueError, match="Duplicate class names"):
        segmenter(image, candidate_labels=["cat", "Cat"])
    with pytest.raises(ValueError, match="Cannot read image"):
        segmenter("no/such/image.png")


def test_remote_code_without_the_package_gives_the_same_outputs(tmp_path, tiny_hub_model_dir):
    """A virtualenv that sees this environment's libraries but not the package loads the model as remote code."""
    python = python_without_package(tmp_path)
    image = random_image(50, 80, seed=5)
    image.save(tmp_path / "image.png")
    script = f"""
import importlib.util, json
import numpy as np, torch
from PIL import Image
from transformers import AutoModel, AutoModelForSemanticSegmentation, AutoProcessor, pipeline
assert importlib.util.find_spec("cascade_clip_hf") is None, "the package is importable"
model = AutoModelForSemanticSegmentation.from_pretrained({str(tiny_hub_model_dir)!r}, trust_remote_code=True).eval()
base = AutoModel.from_pretrained({str(tiny_hub_model_dir)!r}, trust_remote_code=True)
assert type(base).__name__ == "CascadeClipForZeroShotSegmentation", type(base)
processor = AutoProcessor.from_pretrained({str(tiny_hub_model_dir)!r}, trust_remote_code=True)
image = Image.open({str(tmp_path / "image.png")!r})
with torch.no_grad():
    logits = model(**processor(images=image, text=["bicycle", "red thing"])).logits
np.save({str(tmp_path / "logits.npy")!r}, logits.numpy())
segmenter = pipeline("zero-shot-image-segmentation", model={str(tiny_hub_model_dir)!r}, trust_remote_code=True)
print(json.dumps([segment["label"] for segment in segmenter(image, candidate_labels=["bicycle", "red thing"])]))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([*python, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]

    model = CascadeClipForZeroShotSegmentation.from_pretrained(tiny_hub_model_dir).eval()
    processor = CascadeClipProcessor.from_pretrained(tiny_hub_model_dir)
    with torch.no_grad():
        logits = model(**processor(images=image, text=["bicycle", "red thing"])).logits
    np.testing.assert_array_equal(np.load(tmp_path / "logits.npy"), logits.numpy())
    remote_labels = json.loads(result.stdout.strip().splitlines()[-1])
    expected = reference_segmentation(tiny_hub_model_dir, image, ["bicycle", "red thing"])
    assert sorted(remote_labels) == sorted(["bicycle", "red thing"][index] for index in np.unique(expected))


@pytest.fixture(scope="module")
def hub_segmenter(tiny_hub_model_dir) -> CascadeClipZeroShotSegmentationPipeline:
    return CascadeClipZeroShotSegmentationPipeline(
        model=CascadeClipForZeroShotSegmentation.from_pretrained(tiny_hub_model_dir).eval(),
        processor=CascadeClipProcessor.from_pretrained(tiny_hub_model_dir),
    )


@pytest.mark.parametrize(
    "labels, message",
    [
        (["cat", "Cat "], "Duplicate class names in candidate_labels"),
        (["cat", " "], "Class names at positions \\[1\\] of candidate_labels are empty"),
        (["cat", 3], "entries of candidate_labels must be strings"),
        (5, "candidate_labels must be a list of strings"),
    ],
)
def test_bad_labels_are_refused_alike_with_or_without_class_embeds(hub_segmenter, labels, message):
    image = random_image(20, 24, seed=1)
    two_classes = torch.nn.functional.normalize(torch.randn(2, 16), dim=-1)
    for class_embeds in (None, two_classes, two_classes.numpy()):
        with pytest.raises(ValueError, match=message):
            hub_segmenter(image, candidate_labels=labels, class_embeds=class_embeds)


def test_class_embeds_as_numpy_floats_segment_as_the_tensor_does(hub_segmenter):
    image = random_image(24, 30, seed=2)
    names = ["bicycle", "red thing", "ocean"]
    class_embeds = torch.nn.functional.normalize(
        torch.randn(3, 16, generator=torch.Generator().manual_seed(0)), dim=-1
    )
    from_tensor = hub_segmenter(image, candidate_labels=names, class_embeds=class_embeds)
    from_numpy = hub_segmenter(image, candidate_labels=names, class_embeds=class_embeds.numpy())
    assert [(s["label"], s["score"]) for s in from_numpy] == [(s["label"], s["score"]) for s in from_tensor]
    for numpy_segment, tensor_segment in zip(from_numpy, from_tensor, strict=True):
        assert np.array_equal(np.asarray(numpy_segment["mask"]), np.asarray(tensor_segment["mask"]))


@pytest.mark.parametrize(
    "class_embeds, message",
    [
        (np.ones((3, 16), dtype=np.int64), "class_embeds must hold floating-point numbers .* numpy array of int64"),
        (torch.ones(3, 16, dtype=torch.int64), "class_embeds must hold floating-point numbers .* torch.int64"),
        ([[0.0] * 16] * 3, "class_embeds must be a torch.Tensor \\(or a numpy array\\) of floats, got builtins.list"),
        (
            np.ones((5, 16), dtype=np.float32),
            "class_embeds must be a tensor of shape \\(3, 16\\).* got shape \\(5, 16\\)",
        ),
        (torch.ones(3, 15), "class_embeds must be a tensor of shape \\(3, 16\\).* got shape \\(3, 15\\)"),
        (torch.full((3, 16), float("nan")), "class_embeds holds NaN or infinite values"),
    ],
)
def test_bad_class_embeds_are_named_with_what_they_must_be(hub_segmenter, class_embeds, message):
    with pytest.raises(ValueError, match=message):
        hub_segmenter(random_image(20, 24, seed=1), candidate_labels=["a", "b", "c"], class_embeds=class_embeds)
