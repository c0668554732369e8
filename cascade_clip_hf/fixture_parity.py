"""Checks the port against test vectors computed by the original implementation.

A fixture folder holds an original checkpoint (`checkpoint.pth`), inputs and expected outputs (`inputs.safetensors`,
`expected.safetensors`) and every setting (`meta.json`). The checkpoint is converted with those settings, run on
the inputs, and every expected tensor is recomputed and compared.
"""

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from .calibration import calibrated_scores, upsample_mask_logits
from .convert_original_checkpoint import convert_checkpoint
from .labels import index_lookup
from .modeling_cascade_clip import CascadeClipForZeroShotSegmentation
from .vocabulary import seen_class_mask, seen_class_names


# What a faithful fp32 port meets: absolute on logits, scores and embeddings, relative on losses.
ABSOLUTE_TOLERANCE = 1e-4
RELATIVE_TOLERANCE = 1e-4
LOSS_NAMES = ("loss_mask", "loss_dice")


def read_meta(fixture_dir: str | os.PathLike) -> dict:
    return json.loads((Path(fixture_dir) / "meta.json").read_text())


def convert_fixture(fixture_dir: str | os.PathLike, output_dir: str | os.PathLike, tokenizer: str) -> Path:
    """Converts the fixture's original checkpoint with the settings of its `meta.json`."""
    meta = read_meta(fixture_dir)
    architecture = meta["architecture"]
    convert_checkpoint(
        Path(fixture_dir) / "checkpoint.pth",
        output_dir,
        class_names=meta["class_names"],
        seen_class_ids=meta["seen_class_ids"],
        extract_layers=architecture["extract_layers"],
        templates=[meta["prompt_template"]],
        tokenizer=tokenizer,
        vision_heads=architecture["vision_heads"],
        text_heads=architecture["text_heads"],
        decoder_heads=architecture["decoder_heads"],
    )
    return Path(output_dir)


@torch.no_grad()
def fixture_outputs(model: CascadeClipForZeroShotSegmentation, fixture_dir: str | os.PathLike) -> dict:
    """Recomputes every tensor of the fixture's `expected.safetensors` with `model`."""
    meta = read_meta(fixture_dir)
    inputs = load_file(str(Path(fixture_dir) / "inputs.safetensors"))
    model.eval()
    pixel_values = inputs["pixel_values"]
    class_names, seen_class_ids = meta["class_names"], meta["seen_class_ids"]
    seen_mask = seen_class_mask(class_names, seen_class_names(class_names, seen_class_ids))

    image_size = model.config.vision_config.image_size
    mask_size = (image_size, image_size)
    text_embeds = model.get_class_embeddings(inputs["input_ids"])
    outputs = model(pixel_values=pixel_values, class_embeds=text_embeds, seen_class_mask=seen_mask)
    setting = model.config.setting
    model.config.setting = "transductive"
    try:
        transductive = model(pixel_values=pixel_values, class_embeds=text_embeds, seen_class_mask=seen_mask)
    finally:
        model.config.setting = setting

    # The inductive training labels: a seen class's id becomes its index among the seen classes, the rest ignore.
    lookup_size = max(int(inputs["labels"].max()), meta["ignore_index"], *seen_class_ids) + 1
    seen_only_lookup = torch.from_numpy(index_lookup(seen_class_ids, lookup_size, meta["ignore_index"]))
    labels = seen_only_lookup[inputs["labels"]]
    seen_only = model(pixel_values=pixel_values, class_embeds=text_embeds[seen_class_ids], labels=labels)

    slide = meta["slide"]
    slide_scores = model.sliding_window_inference(
        inputs["slide_pixel_values"],
        output_size=tuple(slide["output_hw"]),
        class_embeds=text_embeds,
        seen_class_mask=seen_mask,
        crop_size=slide["crop"],
        stride=slide["stride"],
    )
    return {
        "text_embeds": text_embeds,
        "mask_logits": upsample_mask_logits(outputs.logits, mask_size),
        "scores_inductive": calibrated_scores(outputs.logits, outputs.score_shift, mask_size),
        "scores_transductive": calibrated_scores(transductive.logits, transductive.score_shift, mask_size),
        "seen_only_mask_logits": upsample_mask_logits(seen_only.logits, mask_size),
        "loss_mask": seen_only.mask_loss.reshape(1),
        "loss_dice": seen_only.dice_loss.reshape(1),
        "slide_scores": slide_scores,
        "slide_segmentation": slide_scores.argmax(dim=1),
    }


def compare_to_expected(outputs: dict, fixture_dir: str | os.PathLike) -> dict[str, dict]:
    """For every expected tensor: its error, the tolerance it must meet, and whether it does."""
    expected = load_file(str(Path(fixture_dir) / "expected.safetensors"))
    report = {}
    for name, reference in expected.items():
        if name not in outputs:
            report[name] = {"error": float("inf"), "tolerance": 0.0, "kind": "missing", "ok": False}
            continue
        actual = outputs[name].to(reference.dtype)
        if actual.shape != reference.shape:
            report[name] = {"error": float("inf"), "tolerance": 0.0, "kind": "shape", "ok": False}
        elif not reference.is_floating_point():
            mismatches = int((actual != reference).sum())
            report[name] = {"error": mismatches, "tolerance": 0, "kind": "mismatches", "ok": mismatches == 0}
        elif name in LOSS_NAMES:
            error = ((actual - reference).abs() / reference.abs().clamp_min(1e-12)).max().item()
            report[name] = {
                "error": error,
                "tolerance": RELATIVE_TOLERANCE,
                "kind": "relative",
                "ok": error <= RELATIVE_TOLERANCE,
            }
        else:
            error = (actual - reference).abs().max().item()
            report[name] = {
                "error": error,
                "tolerance": ABSOLUTE_TOLERANCE,
                "kind": "absolute",
                "ok": error <= ABSOLUTE_TOLERANCE,
            }
    return report


def format_report(report: dict[str, dict]) -> str:
    """A markdown table of the comparison."""
    lines = ["| tensor | error | tolerance | ok |", "| --- | --- | --- | --- |"]
    for name, row in report.items():
        lines.append(
            f"| {name} | {row['error']:.3g} ({row['kind']}) | {row['tolerance']:g} | {'yes' if row['ok'] else 'NO'} |"
        )
    return "\n".join(lines)
