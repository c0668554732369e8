"""The port reproduces the test vectors computed by the original implementation (tests/fixtures/official_tiny)."""

import pytest
import torch
from safetensors.torch import load_file

from cascade_clip_hf.fixture_parity import (
    ABSOLUTE_TOLERANCE,
    RELATIVE_TOLERANCE,
    compare_to_expected,
    fixture_outputs,
)

from .helpers import OFFICIAL_TINY


@pytest.fixture(scope="module")
def outputs_and_expected(official_model_dir):
    from cascade_clip_hf import CascadeClipForZeroShotSegmentation

    model = CascadeClipForZeroShotSegmentation.from_pretrained(official_model_dir)
    return fixture_outputs(model, OFFICIAL_TINY), load_file(str(OFFICIAL_TINY / "expected.safetensors"))


@pytest.mark.parametrize(
    "name",
    [
        "text_embeds",
        "mask_logits",
        "scores_inductive",
        "scores_transductive",
        "seen_only_mask_logits",
        "slide_scores",
    ],
)
def test_tensor_matches_original(outputs_and_expected, name):
    outputs, expected = outputs_and_expected
    assert outputs[name].shape == expected[name].shape
    torch.testing.assert_close(outputs[name], expected[name], atol=ABSOLUTE_TOLERANCE, rtol=0)


@pytest.mark.parametrize("name", ["loss_mask", "loss_dice"])
def test_loss_matches_original(outputs_and_expected, name):
    outputs, expected = outputs_and_expected
    torch.testing.assert_close(outputs[name], expected[name], atol=0, rtol=RELATIVE_TOLERANCE)


def test_sliding_window_argmax_identical(outputs_and_expected):
    outputs, expected = outputs_and_expected
    assert torch.equal(outputs["slide_segmentation"], expected["slide_segmentation"])


def test_report_covers_every_expected_tensor(outputs_and_expected):
    report = compare_to_expected(outputs_and_expected[0], OFFICIAL_TINY)
    assert set(report) == set(outputs_and_expected[1])
    assert all(row["ok"] for row in report.values()), report


def test_report_flags_a_wrong_tensor(outputs_and_expected):
    outputs = dict(outputs_and_expected[0])
    outputs["mask_logits"] = outputs["mask_logits"] + 1e-3
    report = compare_to_expected(outputs, OFFICIAL_TINY)
    assert not report["mask_logits"]["ok"]
    assert report["text_embeds"]["ok"]


def test_default_vocabulary_equals_text_tower(official_model, official_meta):
    """The converted model stores its vocabulary's embeddings, so no text is needed at inference."""
    inputs = load_file(str(OFFICIAL_TINY / "inputs.safetensors"))
    expected = load_file(str(OFFICIAL_TINY / "expected.safetensors"))
    torch.testing.assert_close(
        official_model.class_embeddings, expected["text_embeds"], atol=ABSOLUTE_TOLERANCE, rtol=0
    )
    with torch.no_grad():
        outputs = official_model(pixel_values=inputs["pixel_values"])
    logits = torch.nn.functional.interpolate(outputs.logits, size=(inputs["pixel_values"].shape[-2:]), mode="bilinear")
    scores = logits.sigmoid() - outputs.score_shift[..., None, None]
    torch.testing.assert_close(scores, expected["scores_inductive"], atol=ABSOLUTE_TOLERANCE, rtol=0)
    assert official_model.config.seen_class_ids == official_meta["seen_class_ids"]
