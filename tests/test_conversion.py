"""Conversion of original checkpoints: full-size key coverage, damaged checkpoints, the command line."""

import json
import re

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard

from cascade_clip_hf import CascadeClipForZeroShotSegmentation, CascadeClipProcessor
from cascade_clip_hf.cli import main
from cascade_clip_hf.convert_original_checkpoint import (
    DROPPED_KEY_PATTERNS,
    CheckpointError,
    convert_checkpoint,
    convert_state_dict,
    infer_config,
)
from cascade_clip_hf.model_card import ORIGINAL_LICENSE, ORIGINAL_LICENSE_NAME
from cascade_clip_hf.onnx_export import export_card
from cascade_clip_hf.presets import benchmark_facts

from .helpers import CLIP_TOKENIZER, OFFICIAL_TINY, conversion_flags


def full_size_state_dict() -> dict[str, torch.Tensor]:
    shapes = json.loads((OFFICIAL_TINY / "full_size_keys.json").read_text())
    return {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}


def test_every_full_size_key_is_converted_or_knowingly_dropped():
    state_dict = full_size_state_dict()
    facts = benchmark_facts("coco-stuff-164k", "inductive")
    config = infer_config(
        state_dict,
        class_names=facts["class_names"],
        seen_class_ids=facts["seen_class_ids"],
        setting="inductive",
        extract_layers=facts["extract_layers"],
        templates=facts["templates"],
    )
    converted, report = convert_state_dict(state_dict)
    with torch.device("meta"):
        model = CascadeClipForZeroShotSegmentation(config)
    expected = {key: tuple(tensor.shape) for key, tensor in model.state_dict().items() if key != "class_embeddings"}
    assert {key: tuple(tensor.shape) for key, tensor in converted.items()} == expected
    assert all(any(re.fullmatch(pattern, key) for pattern in DROPPED_KEY_PATTERNS) for key in report.dropped)
    assert report.mapped + len(report.dropped) == len(state_dict)
    assert len(report.dropped) == 3 * 3 * 6 + 1  # self-attention (4) and norm1 (2) per decoder layer, loss buffer
    vision, text = config.vision_config, config.text_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads) == (768, 12, 12)
    assert (vision.image_size, vision.patch_size) == (512, 16)
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (512, 12, 8)
    assert (config.num_prompt_tokens, config.num_prompt_layers) == (50, 12)
    assert (config.decoder_num_layers, config.decoder_intermediate_size) == (3, 2048)


def test_fused_attention_is_split_and_class_token_folded():
    state_dict = torch.load(OFFICIAL_TINY / "checkpoint.pth", weights_only=True)["state_dict"]
    converted, _ = convert_state_dict(state_dict)
    in_proj = state_dict["backbone.transformer.resblocks.3.attn.in_proj_weight"]
    layer = "vision_encoder.clip.vision_model.encoder.layers.3.self_attn."
    torch.testing.assert_close(torch.cat([converted[layer + n + "_proj.weight"] for n in "qkv"]), in_proj)
    positions = converted["vision_encoder.clip.vision_model.embeddings.position_embedding.weight"]
    original = state_dict["backbone.positional_embedding"]
    torch.testing.assert_close(positions[0], original[0] + state_dict["backbone.class_embedding"])
    torch.testing.assert_close(positions[1:], original[1:])
    torch.testing.assert_close(
        converted["vision_encoder.taps.2.projection.weight"], state_dict["backbone.proj_layers"][2].t()
    )


@pytest.fixture
def tiny_checkpoint() -> dict:
    return torch.load(OFFICIAL_TINY / "checkpoint.pth", weights_only=True)


def convert_tiny(path, output_dir, official_meta, **overrides):
    architecture = official_meta["architecture"]
    kwargs = {
        "class_names": official_meta["class_names"],
        "seen_class_ids": official_meta["seen_class_ids"],
        "extract_layers": architecture["extract_layers"],
        "templates": [official_meta["prompt_template"]],
        "tokenizer": str(CLIP_TOKENIZER),
        "vision_heads": architecture["vision_heads"],
        "text_heads": architecture["text_heads"],
        "decoder_heads": architecture["decoder_heads"],
    }
    return convert_checkpoint(path, output_dir, **{**kwargs, **overrides})


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda sd: sd.update({"backbone.mystery.weight": torch.zeros(3)}), "does not understand.*backbone.mystery"),
        (lambda sd: sd.pop("backbone.ln_post.bias"), "missing.*post_layernorm.bias"),
        (lambda sd: sd.pop("backbone.proj"), "lacks 'backbone.proj'"),
        (lambda sd: sd.update({"backbone.ln_post.weight": torch.zeros(7)}), "(?s)shapes do not fit.*post_layernorm"),
        (lambda sd: sd.update({"backbone.conv1.weight": torch.zeros(3, 3)}), "should have 4 dimensions"),
        (lambda sd: sd.pop("text_encoder.transformer.resblocks.0.attn.in_proj_weight"), "skip indices"),
        (
            lambda sd: sd.update({"backbone.positional_embedding": sd["backbone.positional_embedding"][:-1]}),
            "not 1 \\+ a square grid",
        ),
        (lambda sd: sd.update({"decode_head.weights_s2": torch.ones(2)}), "stage weights have sizes"),
    ],
)
def test_damaged_checkpoints_are_refused(tmp_path, tiny_checkpoint, official_meta, damage, message):
    damage(tiny_checkpoint["state_dict"])
    path = tmp_path / "damaged.pth"
    torch.save(tiny_checkpoint, path)
    with pytest.raises(CheckpointError, match=message):
        convert_tiny(path, tmp_path / "out", official_meta)
    assert not (tmp_path / "out").exists()


def test_unreadable_files_are_refused(tmp_path, official_meta):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((OFFICIAL_TINY / "checkpoint.pth").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="cannot be read as a PyTorch checkpoint"):
        convert_tiny(truncated, tmp_path / "out", official_meta)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "meta": {"hook": object()}}, unsafe)
    with pytest.raises(CheckpointError, match="cannot be read"):
        convert_tiny(unsafe, tmp_path / "out", official_meta)
    not_a_state_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_a_state_dict)
    with pytest.raises(CheckpointError, match="expected an mmseg checkpoint"):
        convert_tiny(not_a_state_dict, tmp_path / "out", official_meta)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        convert_tiny(tmp_path / "absent.pth", tmp_path / "out", official_meta)


def test_settings_the_shapes_contradict_are_refused(tmp_path, official_meta):
    checkpoint = OFFICIAL_TINY / "checkpoint.pth"
    architecture = official_meta["architecture"]
    num_taps = len(architecture["extract_layers"])
    given = architecture["extract_layers"][:-2]
    with pytest.raises(
        CheckpointError, match=re.escape(f"taps {num_taps} layers, but the tapped layers given are {given}")
    ):
        convert_tiny(checkpoint, tmp_path / "out", official_meta, extract_layers=given)
    with pytest.raises(CheckpointError, match="heads do not divide"):
        convert_tiny(checkpoint, tmp_path / "out", official_meta, vision_heads=architecture["vision_width"] + 1)
    embeddings = tmp_path / "embeddings.npy"
    num_classes = len(official_meta["class_names"])
    np.save(embeddings, np.zeros((num_classes - 1, architecture["projection_dim"]), np.float16))
    with pytest.raises(ValueError, match=rf"embeddings.npy must be a tensor of shape \({num_classes}, "):
        convert_tiny(checkpoint, tmp_path / "out", official_meta, class_embeddings=embeddings)


def test_failed_conversion_keeps_the_previous_output(tmp_path, official_meta):
    output = tmp_path / "model"
    convert_tiny(OFFICIAL_TINY / "checkpoint.pth", output, official_meta)
    before = {path.name: path.read_bytes() for path in output.iterdir()}
    bad_heads = official_meta["architecture"]["vision_width"] + 1
    with pytest.raises(CheckpointError):
        convert_tiny(OFFICIAL_TINY / "checkpoint.pth", output, official_meta, vision_heads=bad_heads)
    assert {path.name: path.read_bytes() for path in output.iterdir()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]


def test_cli_convert_with_precomputed_embeddings(tmp_path, official_meta):
    shape = (len(official_meta["class_names"]), official_meta["architecture"]["projection_dim"])
    embeddings = np.random.default_rng(0).standard_normal(shape).astype(np.float16)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    np.save(tmp_path / "embeddings.npy", embeddings)
    arguments = ["convert", str(OFFICIAL_TINY / "checkpoint.pth"), "--output-dir", str(tmp_path / "model")]
    arguments += [*conversion_flags(official_meta), "--class-embeddings", str(tmp_path / "embeddings.npy")]
    exit_code = main(arguments)
    assert exit_code == 0
    model = CascadeClipForZeroShotSegmentation.from_pretrained(tmp_path / "model")
    torch.testing.assert_close(model.class_embeddings, torch.from_numpy(embeddings.astype(np.float32)))
    assert model.config.class_names == official_meta["class_names"]
    processor = CascadeClipProcessor.from_pretrained(tmp_path / "model")
    seen_names = [official_meta["class_names"][i] for i in official_meta["seen_class_ids"]]
    assert processor.seen_classes == seen_names
    assert processor.templates == [official_meta["prompt_template"]]
    # The converted weights keep the original release's non-commercial terms, in the card's metadata.
    card = ModelCard.load(tmp_path / "model" / "README.md")
    assert (card.data.license, card.data.license_name) == (ORIGINAL_LICENSE, ORIGINAL_LICENSE_NAME)
    assert "non-commercial use only" in card.text and "checkpoint.pth" in card.text
    assert export_card(str(tmp_path / "model"), [])[1] == ORIGINAL_LICENSE  # what export-onnx records


def test_cli_reports_errors_in_one_line(tmp_path, caplog):
    exit_code = main(["convert", str(tmp_path / "absent.pth"), "--output-dir", str(tmp_path / "out")])
    assert exit_code == 2
    assert "no such checkpoint file" in caplog.text


def test_cli_parity_passes_on_the_official_fixture(capsys):
    assert main(["parity", str(OFFICIAL_TINY), "--tokenizer", str(CLIP_TOKENIZER)]) == 0
    table = capsys.readouterr().out
    assert "| mask_logits |" in table and "NO" not in table
