"""Hostile models, vocabularies and options: each is refused with one line that names it, and nothing is lost.

Every command-line case runs `cascade-clip` as a user would, on the shipped demo model and a bundled scene, and
checks the exit code, that exactly one error line names the problem, that no traceback is printed and that no file
the user owns changed.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub.constants
import pytest
import torch
from huggingface_hub.errors import (
    GatedRepoError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
)
from safetensors.torch import load_file, save_file
from transformers import CLIPConfig, CLIPModel, pipeline

from cascade_clip_hf import CascadeClipForZeroShotSegmentation, CascadeClipImageProcessor
from cascade_clip_hf import hub as hub_module
from cascade_clip_hf.cli import main
from cascade_clip_hf.segmenter import DEMO_MODEL, load_segmenter
from cascade_clip_hf.vocabulary import SAME_CLASS_SIMILARITY, check_distinct_class_embeddings

from .helpers import (
    CLIP_TOKENIZER,
    EXAMPLES,
    OFFICIAL_TINY,
    TINY_TEXT_CONFIG,
    TINY_VISION_CONFIG,
    conversion_flags,
)


SCENE = EXAMPLES / "scenes" / "scene-0.png"


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by relative path, with its bytes."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def broken_model(tmp_path: Path, damage: str) -> Path:
    """A copy of the demo model with its weights damaged in one way."""
    folder = tmp_path / f"model-{damage}"
    shutil.copytree(DEMO_MODEL, folder)
    weights = folder / "model.safetensors"
    if damage == "no-weights":
        weights.unlink()
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:100_000])
    elif damage == "zero-bytes":
        weights.write_bytes(b"")
    else:
        tensors = load_file(weights)
        if damage == "no-decoders":
            tensors = {name: tensor for name, tensor in tensors.items() if not name.startswith("decoders.")}
        elif damage == "unexpected":
            tensors["decoders.9.extra.weight"] = torch.zeros(2)
        elif damage == "wrong-shape":
            name = "decoders.0.query_projection.bias"
            tensors[name] = torch.zeros(tensors[name].shape[0] + 1)
        save_file(tensors, weights, metadata={"format": "pt"})
    return folder


def model_case(damage: str, phrase: str):
    def arguments(tmp_path: Path) -> list[str]:
        return ["--model", str(broken_model(tmp_path, damage))]

    return arguments, phrase


def option_case(options: list[str], phrase: str):
    def arguments(tmp_path: Path) -> list[str]:
        return list(options)

    return arguments, phrase


def labels_file_case(name: str, content: str | None, phrase: str):
    def arguments(tmp_path: Path) -> list[str]:
        path = tmp_path / name
        if content is not None:
            path.write_text(content, encoding="utf-8")
        return ["--labels", str(path)]

    return arguments, phrase


CLI_CASES = {
    "weights-without-decoders": model_case("no-decoders", "the weights lack"),
    "weights-with-unexpected-tensors": model_case("unexpected", "the weights hold unexpected"),
    "weights-of-the-wrong-shape": model_case("wrong-shape", "the weights hold wrongly shaped 1 tensor,"),
    "truncated-weights": model_case("truncated", "model.safetensors: damaged or incomplete weights file"),
    "zero-byte-weights": model_case("zero-bytes", "model.safetensors: damaged or incomplete weights file"),
    "missing-model-folder": option_case(["--model", "./no/such/model"], "no model folder './no/such/model': no such"),
    "model-neither-folder-nor-hub-id": option_case(
        ["--model", "my_model/"], "no model folder or Hub id 'my_model/': no such folder here, and not a Hub id"
    ),
    "model-is-a-weights-file": option_case(["--model", str(DEMO_MODEL / "model.safetensors")], "a file; pass"),
    "labels-longer-than-the-text-tower": option_case(
        ["--labels", "sand," + " ".join(["plain"] * 40)], "but the text tower reads at most"
    ),
    "folder-without-config": option_case(["--model", str(EXAMPLES / "scenes")], "not a model folder (no config.json)"),
    "folder-without-weights": model_case("no-weights", "cannot load the model"),
    "stride-larger-than-window": option_case(["--crop-size", "32", "--stride", "80"], "stride (80) is larger"),
    "missing-labels-file": labels_file_case("missing.txt", None, "missing.txt: no such file of class names"),
    "labels-in-a-csv": labels_file_case("names.csv", "sand,stone", "names.csv: class names are read from"),
    "empty-labels-file": labels_file_case("empty.txt", "\n  \n", "No class names were given"),
    "labels-json-not-a-list": labels_file_case("names.json", '{"a": 1}', "must hold a list of strings"),
    "labels-file-not-utf8": labels_file_case("latin.txt", None, "latin.txt: cannot be read as class names"),
    "labels-only-whitespace": option_case(["--labels", " , "], "are empty"),
    "duplicate-labels-by-case-and-space": option_case(["--labels", "sand,Sand ,stone"], "Duplicate class names"),
    "labels-the-tokenizer-cannot-read": option_case(["--labels", "class 0,class 1,class 2"], "same text embedding"),
    "zero-batch-size": option_case(["--batch-size", "0"], "argument --batch-size: must be at least 1"),
    "negative-window-batch-size": option_case(["--window-batch-size", "-1"], "must be at least 1, got -1"),
    "zero-stride": option_case(["--stride", "0"], "argument --stride: must be at least 1"),
    "window-smaller-than-a-patch": option_case(["--crop-size", "1", "--stride", "1"], "smaller than one 8x8 patch"),
    "alpha-above-one": option_case(["--alpha", "1.5"], "argument --alpha: must lie in [0, 1]"),
    "alpha-not-a-number": option_case(["--alpha", "nan"], "must lie in [0, 1]"),
    "device-without-cuda": option_case(["--device", "cuda"], "CUDA is not available in this torch build"),
    "device-nonsense": option_case(["--device", "nonsense"], "'nonsense' is not a device; use auto, cpu"),
    "batch-size-not-a-number": option_case(["--batch-size", "two"], "expected a whole number"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_refuses_with_one_line_and_loses_nothing(case, tmp_path, capsys, caplog):
    arguments, phrase = CLI_CASES[case]
    extra = arguments(tmp_path)
    if case == "labels-file-not-utf8":
        (tmp_path / "latin.txt").write_bytes("caf\xe9,th\xe9".encode("latin-1"))
    inputs = tmp_path / "photos"
    inputs.mkdir()
    shutil.copy(SCENE, inputs / "scene.png")
    before = snapshot(tmp_path)

    with caplog.at_level("ERROR", logger="cascade_clip_hf"):
        try:
            code = main(["segment", str(inputs), "--output", str(tmp_path / "out"), *extra])
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code
    captured = capsys.readouterr()

    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    errors += [line for line in captured.err.splitlines() if "error:" in line]
    assert code == 2
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert phrase in errors[0]
    assert "Traceback" not in captured.err + captured.out
    after = snapshot(tmp_path)
    assert {name: after.get(name) for name in before} == before
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_strict_loading_accepts_the_intact_model():
    segmenter = load_segmenter(str(DEMO_MODEL))
    assert segmenter.model.config.num_labels == 21


def test_sliding_window_refuses_a_stride_larger_than_the_window(tiny_model):
    with pytest.raises(ValueError, match=r"stride \(80\) is larger than crop_size \(32\)"):
        tiny_model.sliding_window_inference(torch.randn(1, 3, 64, 256), crop_size=32, stride=80)
    segmenter = load_segmenter(str(DEMO_MODEL))
    with pytest.raises(ValueError, match="leave pixels"):
        segmenter(str(SCENE), crop_size=32, stride=80)
    scores = tiny_model.sliding_window_inference(torch.randn(1, 3, 64, 256), crop_size=32, stride=32)
    assert torch.isfinite(scores).all()


def test_image_segmentation_pipeline_batches_equal_one_image_at_a_time():
    scenes = sorted((EXAMPLES / "scenes").glob("*.png"))
    segmenter = pipeline("image-segmentation", model=str(DEMO_MODEL))
    alone = [segmenter(str(path)) for path in scenes]
    for batch_size in (2, 3, 4):
        together = segmenter([str(path) for path in scenes], batch_size=batch_size)
        for one, many in zip(alone, together, strict=True):
            assert [segment["label"] for segment in one] == [segment["label"] for segment in many]
            for first, second in zip(one, many, strict=True):
                assert first["mask"].tobytes() == second["mask"].tobytes()


def test_post_processing_takes_each_images_own_shift(tiny_model):
    image_processor = CascadeClipImageProcessor()
    with torch.no_grad():
        outputs = tiny_model(pixel_values=torch.randn(3, 3, 64, 64))
    together = image_processor.post_process_semantic_segmentation(outputs)
    for index in range(3):
        sliced = type(outputs)(
            logits=outputs.logits[index : index + 1], score_shift=outputs.score_shift[index : index + 1]
        )
        assert torch.equal(image_processor.post_process_semantic_segmentation(sliced)[0], together[index])


def test_set_vocabulary_keeps_its_own_copy(tiny_model, tmp_path):
    embeddings = torch.nn.functional.normalize(torch.randn(2, tiny_model.config.projection_dim), dim=-1)
    tiny_model.set_vocabulary(["a", "b"], embeddings)
    embeddings.zero_()
    assert tiny_model.class_embeddings.abs().sum() > 0
    weight_rows = tiny_model.decode_head.decoders[0].query_projection.weight[:3, : tiny_model.config.projection_dim]
    tiny_model.set_vocabulary(["a", "b", "c"], weight_rows)
    assert tiny_model.class_embeddings.data_ptr() != weight_rows.data_ptr()
    tiny_model.save_pretrained(tmp_path / "saved")
    reloaded = CascadeClipForZeroShotSegmentation.from_pretrained(tmp_path / "saved")
    assert torch.equal(reloaded.class_embeddings, weight_rows.detach())


def save_clip(path: Path, vision_layers: int = 12, tokenizer: bool = True) -> Path:
    """A tiny CLIP whose towers keep their default projection_dim (512): CLIPModel projects to the top-level 32."""
    vision = {key: value for key, value in TINY_VISION_CONFIG.items() if key != "projection_dim"}
    text = {key: value for key, value in TINY_TEXT_CONFIG.items() if key != "projection_dim"}
    torch.manual_seed(0)
    config = CLIPConfig(
        projection_dim=32, vision_config={**vision, "num_hidden_layers": vision_layers}, text_config=text
    )
    CLIPModel(config).save_pretrained(path)
    if tokenizer:
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(CLIP_TOKENIZER / name, path / name)
    return path


def test_from_clip_pretrained_takes_every_clip_checkpoint(tmp_path):
    clip = save_clip(tmp_path / "clip")
    assert CLIPModel.from_pretrained(clip).config.projection_dim == 32
    model = CascadeClipForZeroShotSegmentation.from_clip_pretrained(str(clip), image_size=64, id2label={0: "cat"})
    assert model.config.projection_dim == 32 and model.class_embeddings.shape == (1, 32)
    assert model.config.num_prompt_layers == 12


def test_shallow_clip_follows_its_depth_or_names_the_option(tmp_path):
    clip = save_clip(tmp_path / "clip", vision_layers=4)
    with pytest.raises(ValueError, match=r"12 vision layers, not this tower.s 4: set cascade_stages"):
        CascadeClipForZeroShotSegmentation.from_clip_pretrained(str(clip), image_size=64)
    model = CascadeClipForZeroShotSegmentation.from_clip_pretrained(
        str(clip), image_size=64, cascade_stages=[[1], [2]]
    )
    assert model.config.num_prompt_layers == 4


def test_a_clip_folder_without_tokenizer_is_an_error(tmp_path):
    clip = save_clip(tmp_path / "clip", tokenizer=False)
    with pytest.raises(ValueError, match="no tokenizer vocabulary found"):
        CascadeClipForZeroShotSegmentation.from_clip_pretrained(str(clip), image_size=64, id2label={0: "cat"})


def test_convert_without_a_readable_tokenizer_exits_with_one_line(tmp_path, caplog):
    meta = json.loads((OFFICIAL_TINY / "meta.json").read_text(encoding="utf-8"))
    empty_tokenizer = tmp_path / "tokenizer"
    empty_tokenizer.mkdir()
    arguments = [
        "convert",
        str(OFFICIAL_TINY / "checkpoint.pth"),
        "--output-dir",
        str(tmp_path / "out"),
        "--class-names",
        ",".join(meta["class_names"]),
        "--tokenizer",
        str(empty_tokenizer),
        "--vision-heads",
        str(meta["architecture"]["vision_heads"]),
        "--text-heads",
        str(meta["architecture"]["text_heads"]),
        "--decoder-heads",
        str(meta["architecture"]["decoder_heads"]),
    ]
    with caplog.at_level("ERROR", logger="cascade_clip_hf"):
        assert main(arguments) == 2
    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 1 and "no tokenizer vocabulary found" in errors[0]
    assert not (tmp_path / "out").exists()


def test_identical_class_embeddings_are_refused_by_name():
    embeddings = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    check_distinct_class_embeddings(embeddings, ["a", "b", "c"])
    close = torch.nn.functional.normalize(embeddings[0] + 1e-3 * torch.randn(8), dim=-1)
    assert float(close @ embeddings[0]) >= SAME_CLASS_SIMILARITY
    with pytest.raises(ValueError, match="'a' and 'c'"):
        check_distinct_class_embeddings(torch.stack([embeddings[0], embeddings[1], close]), ["a", "b", "c"])


def test_names_the_tokenizer_cannot_read_are_named_in_a_warning(caplog):
    segmenter = load_segmenter(str(DEMO_MODEL))
    with caplog.at_level("WARNING"):
        segmenter.processor(text=["sand", "stone 7"])
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert any("'stone 7'" in message and "sand'" not in message for message in warnings)


def test_training_script_names_the_option_a_shallow_clip_needs(tmp_path, hub_dataset):
    dataset, id2label = hub_dataset
    clip = save_clip(tmp_path / "clip", vision_layers=4)
    command = [
        sys.executable,
        str(EXAMPLES / "train_cascade_clip.py"),
        "--dataset_name",
        str(dataset),
        "--id2label",
        str(id2label),
        "--clip_model",
        str(clip),
        "--image_size",
        "64",
        "--max_train_steps",
        "1",
        "--output_dir",
        str(tmp_path / "run"),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False
    )
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(errors) == 1 and "set cascade_stages" in errors[0]
    assert "Traceback" not in result.stderr


def hub_error(error_class: type) -> Exception:
    """An error of huggingface_hub's as a download raises it (with a response, as its HTTP errors need)."""
    return error_class("404 from the Hub", response=SimpleNamespace(headers={}, status_code=404, request=None))


@pytest.mark.parametrize(
    "error, phrase",
    [
        (hub_error(RepositoryNotFoundError), "no such folder here, and no such model on the Hub (if it is private"),
        (hub_error(GatedRepoError), "the Hub model 'org/model' is gated: accept its conditions"),
        (hub_error(RemoteEntryNotFoundError), "the Hub repository 'org/model' holds no config.json"),
        (LocalEntryNotFoundError("offline"), "no such folder here, and HF_HUB_OFFLINE is set, with no copy of it"),
        (
            ConnectionError("[Errno 111] Connection refused"),
            "no such folder here, and the Hub cannot be reached, with",
        ),
    ],
    ids=["not-on-the-hub", "gated", "not-a-model-repository", "offline-and-not-cached", "unreachable-and-not-cached"],
)
def test_a_hub_id_that_cannot_be_loaded_is_refused_saying_why(error, phrase, monkeypatch):
    def hub_answer(url):
        raise error

    monkeypatch.setattr(hub_module, "get_hf_file_metadata", hub_answer)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", isinstance(error, LocalEntryNotFoundError))
    with pytest.raises(ValueError, match=re.escape(phrase)) as refusal:
        load_segmenter("org/model")
    assert "\n" not in str(refusal.value)


def test_a_hub_id_of_another_kind_of_model_is_refused_before_its_weights(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    monkeypatch.setattr(hub_module, "get_hf_file_metadata", lambda url: None)
    monkeypatch.setattr(hub_module, "hf_hub_download", lambda repo_id, filename: str(tmp_path / filename))
    with pytest.raises(ValueError, match=r"^org/bert: not a Cascade-CLIP model .*model_type 'bert'"):
        load_segmenter("org/bert")


def test_a_clip_folder_is_not_taken_for_a_cascade_clip_model(tmp_path):
    clip = save_clip(tmp_path / "clip")
    with pytest.raises(ValueError, match="not a Cascade-CLIP model .*model_type 'clip'"):
        load_segmenter(str(clip))


def test_label_files_drop_byte_order_marks_and_comments(tmp_path):
    from cascade_clip_hf.arguments import class_names_argument

    names = tmp_path / "names.txt"
    names.write_bytes("\ufeffcat\r\n# animals above, ground below\r\n grass \r\n".encode())
    assert class_names_argument(str(names)) == ["cat", "grass"]
    listed = tmp_path / "names.json"
    listed.write_bytes('\ufeff["cat", "grass"]'.encode())
    assert class_names_argument(str(listed)) == ["cat", "grass"]


@pytest.mark.parametrize("heads", ["--vision-heads", "--text-heads", "--decoder-heads"])
def test_convert_refuses_zero_attention_heads_in_one_line(heads, tmp_path, caplog):
    meta = json.loads((OFFICIAL_TINY / "meta.json").read_text(encoding="utf-8"))
    arguments = ["convert", str(OFFICIAL_TINY / "checkpoint.pth"), "--output-dir", str(tmp_path / "out")]
    arguments += [*conversion_flags(meta), heads, "0"]  # the last value of a flag wins
    with caplog.at_level("ERROR", logger="cascade_clip_hf"):
        assert main(arguments) == 2
    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 1 and "at least" in errors[0] and "1" in errors[0], errors
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("script", ["evaluate", "demo"])
def test_scripts_refuse_a_damaged_model_in_one_line(script, tmp_path, hub_dataset):
    model = broken_model(tmp_path, "truncated")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CASCADE_CLIP_MODEL": str(model)}
    if script == "demo":
        command = [sys.executable, str(EXAMPLES.parent / "demo" / "app.py")]
    else:
        dataset, id2label = hub_dataset
        command = [sys.executable, str(EXAMPLES / "evaluate_cascade_clip.py"), "--model", str(model)]
        command += ["--dataset_name", str(dataset), "--id2label", str(id2label), "--split", "validation"]
        command += ["--output", str(tmp_path / "results.json"), "--num_workers", "0"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False, timeout=120)
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(errors) == 1 and "damaged or incomplete weights file" in errors[0]
    assert "Traceback" not in result.stderr
