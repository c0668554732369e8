"""The ONNX export (`cascade-clip export-onnx`) and the segmenter that runs it in ONNX Runtime."""

import json
import shutil

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import CLIPModel

from cascade_clip_hf import CascadeClipForZeroShotSegmentation
from cascade_clip_hf.atomic import MODEL, RECORD, atomic_directory
from cascade_clip_hf.cli import main
from cascade_clip_hf.onnx_export import export_card, export_onnx
from cascade_clip_hf.onnx_runtime import (
    DEFAULT_CLASS_EMBEDDINGS,
    IMAGE_MODEL,
    IMAGE_MODEL_INT8,
    MANIFEST,
    ONNX_SUBFOLDER,
    TEXT_MODEL,
    OnnxCascadeClip,
    load_onnx_segmenter,
)
from cascade_clip_hf.segmenter import load_segmenter
from cascade_clip_hf.visualization import segmentation_from_masks

from .helpers import HUB_CLASSES, random_image, reference_segmentation, save_tiny_cascade, tiny_clip_config


for module in ("onnx", "onnxscript", "onnxruntime"):
    pytest.importorskip(module, reason=f"{module} is not installed (pip install 'cascade-clip-hf[onnx]')")

LABELS = ["red thing", "ocean", "blue thing"]


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory, clip_tokenizer):
    """
    A tiny model of four vision layers (two cascade stages and the last layer: an export a third as long as with
    twelve) whose classes are partly seen, so that calibration shifts some scores and not others.
    """
    clip_dir = tmp_path_factory.mktemp("onnx_clip")
    clip_config = tiny_clip_config()
    clip_config.vision_config.num_hidden_layers = 4
    torch.manual_seed(0)
    CLIPModel(clip_config).save_pretrained(clip_dir)
    clip_tokenizer.save_pretrained(clip_dir)
    path = tmp_path_factory.mktemp("onnx_source") / "model"
    return save_tiny_cascade(clip_dir, path, HUB_CLASSES, seen_class_ids=[0, 2], cascade_stages=[[1], [2]])


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, source_dir):
    """The tiny model exported once for the module, with the int8 image model."""
    path = tmp_path_factory.mktemp("onnx_export") / "export"
    export_onnx(str(source_dir), path, quantize="int8")
    return path


def test_export_writes_graphs_processor_config_and_its_own_check(export_dir):
    manifest = json.loads((export_dir / MANIFEST).read_text())
    for name in (IMAGE_MODEL, TEXT_MODEL, IMAGE_MODEL_INT8, "config.json", "processor_config.json", "README.md"):
        assert (export_dir / name).is_file() and name in manifest["files"]
    assert manifest["checks"][IMAGE_MODEL]["max_abs_logit_difference"] < 1e-4
    assert manifest["checks"][TEXT_MODEL]["max_abs_class_embedding_difference"] < 1e-5
    assert manifest["checks"][IMAGE_MODEL_INT8]["argmax_agreement"] > 0.5
    # The tiny source has no card: the export says so rather than claim a licence.
    assert manifest["license"] is None
    assert "records no licence" in (export_dir / "README.md").read_text()


def test_export_card_carries_the_source_licence(tmp_path):
    (tmp_path / "README.md").write_text(
        "---\nlicense: other\nlicense_name: cascade-clip-non-commercial\n---\n\n# a converted model\n"
    )
    (tmp_path / "LICENSE").write_text("non-commercial terms")
    card, license = export_card(str(tmp_path), ["LICENSE"])
    assert license == "other"
    assert card.data.license == "other" and card.data.license_name == "cascade-clip-non-commercial"
    assert "non-commercial use only" in card.text and "LICENSE is copied here" in card.text


@pytest.mark.parametrize("num_classes", [2, 7])
def test_onnx_logits_equal_torch_for_any_batch_classes_and_window(export_dir, source_dir, num_classes):
    model = CascadeClipForZeroShotSegmentation.from_pretrained(source_dir).eval()
    onnx_model = OnnxCascadeClip(export_dir)
    generator = torch.Generator().manual_seed(num_classes)
    class_embeds = torch.nn.functional.normalize(torch.randn(num_classes, 16, generator=generator), dim=-1)
    for height, width in ((64, 64), (48, 32)):  # the crop, and a window smaller than it
        pixel_values = torch.randn(2, 3, height, width, generator=generator)
        with torch.no_grad():
            expected = model(pixel_values=pixel_values, class_embeds=class_embeds).logits.numpy()
        logits = onnx_model.window_logits(pixel_values, class_embeds.numpy())
        assert logits.shape == expected.shape == (2, num_classes, height // 16, width // 16)
        np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)


def test_onnx_refuses_windows_below_two_patches(export_dir):
    onnx_model = OnnxCascadeClip(export_dir)
    with pytest.raises(ValueError, match="windows of at least 32 pixels a side"):
        onnx_model.sliding_window_inference(torch.randn(1, 3, 64, 64), crop_size=16, stride=16)


def test_onnx_segmenter_equals_torch_over_several_windows(export_dir, source_dir):
    torch_segmenter = load_segmenter(str(source_dir))
    onnx_segmenter = load_onnx_segmenter(export_dir)
    image = random_image(50, 200, seed=3)  # processed to 64x256: four windows of 64 at stride 53
    for labels in (None, LABELS):
        names = labels or HUB_CLASSES
        expected = segmentation_from_masks(torch_segmenter(image, candidate_labels=labels), names, image.size)
        actual = segmentation_from_masks(onnx_segmenter(image, candidate_labels=labels), names, image.size)
        np.testing.assert_array_equal(actual, expected)
    # Every class's calibrated scores, not only the winners'.
    pixel_values = torch_segmenter.processor(images=image)["pixel_values"]
    with torch.no_grad():
        expected = torch_segmenter.model.sliding_window_inference(pixel_values, output_size=(50, 200))
    actual = onnx_segmenter.model.sliding_window_inference(pixel_values, output_size=(50, 200))
    assert actual.shape == expected.shape == (1, len(HUB_CLASSES), 50, 200)
    np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=0, atol=1e-5)
    assert (expected[0, 0] != expected[0, 1]).any()  # seen and unseen classes are shifted apart


def test_int8_segmenter_mostly_agrees_with_torch(export_dir, source_dir):
    image = random_image(50, 200, seed=3)
    expected = segmentation_from_masks(load_segmenter(str(source_dir))(image), HUB_CLASSES, image.size)
    actual = segmentation_from_masks(load_onnx_segmenter(export_dir, quantized=True)(image), HUB_CLASSES, image.size)
    assert (actual == expected).mean() > 0.5


def test_segment_command_runs_onnx_from_a_model_folders_subfolder(tmp_path, export_dir, source_dir):
    model_dir = tmp_path / "model"
    shutil.copytree(source_dir, model_dir)
    shutil.copytree(export_dir, model_dir / ONNX_SUBFOLDER)
    image = random_image(70, 90, seed=4)
    image.save(tmp_path / "photo.png")
    arguments = ["segment", str(tmp_path / "photo.png"), "--labels", ",".join(LABELS), "--output"]
    assert main([*arguments, str(tmp_path / "out"), "--model", str(model_dir), "--backend", "onnx"]) == 0
    class_ids = np.asarray(PIL.Image.open(tmp_path / "out" / "photo.png_classes.png"))
    np.testing.assert_array_equal(class_ids, reference_segmentation(source_dir, image, LABELS))


def test_segment_command_takes_a_vocabulary_embedded_by_torch(tmp_path, export_dir, source_dir):
    image = random_image(70, 90, seed=4)
    image.save(tmp_path / "photo.png")
    vocabulary = tmp_path / "vocabulary.safetensors"
    assert main(["embed", "--model", str(source_dir), "--labels", ",".join(LABELS), "--output", str(vocabulary)]) == 0
    command = ["segment", str(tmp_path / "photo.png"), "--vocabulary", str(vocabulary), "--backend", "onnx-int8"]
    assert main([*command, "--model", str(export_dir), "--output", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "photo.png.json").read_text())["class_names"] == LABELS


def test_segment_command_names_a_folder_without_an_export(tmp_path, source_dir, caplog):
    image = random_image(40, 40)
    image.save(tmp_path / "photo.png")
    command = ["segment", str(tmp_path / "photo.png"), "--model", str(source_dir), "--backend", "onnx"]
    assert main([*command, "--output", str(tmp_path / "out")]) == 2
    assert "no ONNX export here" in caplog.text and "cascade-clip export-onnx" in caplog.text


def test_reexport_replaces_the_earlier_export_whole(tmp_path, source_dir):
    output = tmp_path / "export"
    with atomic_directory(output, kind=MODEL) as staging:  # an earlier export, of another source, with int8
        for name in (IMAGE_MODEL_INT8, DEFAULT_CLASS_EMBEDDINGS, "LICENSE", "NOTICE", "config.json"):
            (staging / name).write_text("stale")
    export_onnx(str(source_dir), output)
    names = {path.name for path in output.iterdir()}
    assert not names & {IMAGE_MODEL_INT8, "LICENSE", "NOTICE"}
    assert (output / DEFAULT_CLASS_EMBEDDINGS).read_bytes() != b"stale"
    assert json.loads((output / "config.json").read_text())["model_type"] == "cascade_clip"
    assert {*json.loads((output / MANIFEST).read_text())["files"], RECORD} == names


@pytest.mark.parametrize("opset", [1, 17, 99])
def test_export_refuses_an_opset_torch_cannot_write_before_exporting(tmp_path, source_dir, caplog, opset):
    output = tmp_path / "export"
    assert main(["export-onnx", str(source_dir), "--output", str(output), "--opset", str(opset)]) == 2
    assert f"--opset {opset}: torch" in caplog.text and "exports opsets 18 to" in caplog.text
    assert "Traceback" not in caplog.text and not output.exists()
    assert list(tmp_path.iterdir()) == []


def truncated(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garbage(path):
    path.write_bytes(b"\x08\x07garbage" * 100)


@pytest.mark.parametrize(
    ("name", "damage", "backend"),
    [
        (IMAGE_MODEL, truncated, "onnx"),
        (IMAGE_MODEL_INT8, garbage, "onnx-int8"),
        (TEXT_MODEL, truncated, "onnx"),
        (DEFAULT_CLASS_EMBEDDINGS, garbage, "onnx"),
        (DEFAULT_CLASS_EMBEDDINGS, lambda path: path.unlink(), "onnx"),
        ("config.json", lambda path: path.unlink(), "onnx"),
        (MANIFEST, garbage, "onnx"),
    ],
)
def test_segment_refuses_a_damaged_export_in_one_line_naming_the_file(
    tmp_path, export_dir, caplog, name, damage, backend
):
    damaged = tmp_path / "export"
    shutil.copytree(export_dir, damaged)
    damage(damaged / name)
    random_image(40, 40).save(tmp_path / "photo.png")
    command = ["segment", str(tmp_path / "photo.png"), "--model", str(damaged), "--backend", backend]
    assert main([*command, "--output", str(tmp_path / "out")]) == 2
    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 1 and str(damaged / name) in errors[0] and "export-onnx" in errors[0]
    assert "\n" not in errors[0] and not (tmp_path / "out").exists()


def test_export_refuses_a_users_file_and_the_source_folder(tmp_path, source_dir, caplog, monkeypatch):
    output = tmp_path / "export"
    output.mkdir()
    (output / "notes.txt").write_text("the user's own file")
    assert main(["export-onnx", str(source_dir), "--output", str(output)]) == 2
    assert "it holds notes.txt, which cascade-clip did not write" in caplog.text
    assert (output / "notes.txt").read_text() == "the user's own file"
    assert sorted(path.name for path in output.iterdir()) == ["notes.txt"]
    config = (source_dir / "config.json").read_bytes()
    assert main(["export-onnx", str(source_dir), "--output", str(source_dir)]) == 2
    assert "would replace the input" in caplog.text
    assert (source_dir / "config.json").read_bytes() == config
    monkeypatch.chdir(tmp_path / "export")
    assert main(["export-onnx", str(source_dir), "--output", ""]) == 2  # not the folder it runs in
    assert "refusing to write to an empty output path" in caplog.text
    assert sorted(path.name for path in output.iterdir()) == ["notes.txt"]
