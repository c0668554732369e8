"""Exporting a Cascade-CLIP model to ONNX (`cascade-clip export-onnx`), for `onnx_runtime.py` to run without PyTorch.

An export folder holds:
- `image_model.onnx`, the image path: `pixel_values` `(batch_size, 3, height, width)` and `class_embeds`
  `(num_classes, projection_dim)` in, mask `logits` `(batch_size, num_classes, height // patch, width // patch)`
  out, for any batch size, number of classes and window of at least `MIN_WINDOW_PATCHES` patches a side;
- `text_model.onnx`, the text tower: `input_ids` and `attention_mask` `(num_classes, num_templates,
  sequence_length)` in, L2-normalised `class_embeds` `(num_classes, projection_dim)` out. Class embeddings rather
  than per-prompt embeddings: the averaging over templates is part of the graph, so a vocabulary is one call and
  the runtime has no step of its own to keep equal to the model's;
- with `--quantize int8`, `image_model_int8.onnx`: ONNX Runtime's dynamic int8 quantization of the image path;
- the default vocabulary's class embeddings, the model's `config.json` and processor files, a model card carrying
  the weights' licence (and the source's licence files), and `onnx_export.json`: what was exported, by which
  versions, and the largest differences ONNX Runtime showed against PyTorch on random inputs.
"""

import importlib.util
import json
import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import ModelCard, ModelCardData
from safetensors.torch import save_file
from torch import nn

from .atomic import MODEL, atomic_directory, check_output_folder, shown
from .model_card import ORIGINAL_LICENSE, ORIGINAL_LICENSE_NAME, ORIGINAL_WEIGHTS_LICENSE, card_data_of
from .modeling_cascade_clip import CascadeClipForZeroShotSegmentation, class_embeddings_of_prompts
from .onnx_runtime import (
    DEFAULT_CLASS_EMBEDDINGS,
    IMAGE_MODEL,
    IMAGE_MODEL_INT8,
    MANIFEST,
    MANIFEST_FORMAT,
    MIN_WINDOW_PATCHES,
    TEXT_MODEL,
    inference_session,
)
from .processing_cascade_clip import CascadeClipProcessor
from .segmenter import load_for_inference
from .vocabulary import text_tower_fingerprint


logger = logging.getLogger(__name__)

QUANTIZATIONS = ("int8",)
# What the export runs on: torch.onnx translates with onnxscript; ONNX Runtime checks and quantizes.
EXPORT_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
# The exported float32 graphs must reproduce PyTorch's outputs this closely (relative to the outputs' largest
# magnitude, at least 1): rounding differs between the two, nothing else may.
EXPORT_TOLERANCE = 1e-4
# Files a source model folder may hold its licence in; they are copied beside the export as they are.
LICENSE_FILES = ("LICENSE", "LICENSE.md", "LICENSE.txt", "NOTICE")


def supported_opsets() -> range:
    """
    The ONNX opsets this torch's exporter writes as asked: below its operator library's opset it converts the graph
    and, when that fails (as it does for this model), keeps its own opset instead; above `ONNX_MAX_OPSET` it is not
    tested. Read from torch's (private) constants, as no public name says it.
    """
    from torch.onnx._constants import ONNX_MAX_OPSET
    from torch.onnx._internal.exporter._constants import TORCHLIB_OPSET

    return range(TORCHLIB_OPSET, ONNX_MAX_OPSET + 1)


class CascadeClipImagePath(nn.Module):
    """The model's forward from pixel values and class embeddings to mask logits, as one graph."""

    def __init__(self, model: CascadeClipForZeroShotSegmentation):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor, class_embeds: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values, class_embeds=class_embeds).logits


class CascadeClipTextPath(nn.Module):
    """Tokenized class prompts to class embeddings: the text tower, then `class_embeddings_of_prompts`."""

    def __init__(self, model: CascadeClipForZeroShotSegmentation):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        sequence_length = input_ids.shape[-1]
        prompt_embeds = self.model.get_text_features(
            input_ids.reshape(-1, sequence_length), attention_mask.reshape(-1, sequence_length)
        ).pooler_output
        return class_embeddings_of_prompts(prompt_embeds, input_ids.shape[:-1])


@contextmanager
def position_grid_always_resized(model: CascadeClipForZeroShotSegmentation):
    """
    Within the block the vision tower resizes its position embeddings for every window, also one of the configured
    grid (bilinear resizing to the same size is exact): its shortcut for that grid would make torch.export fix the
    window's size. The export's own check compares the graph with the model as it is otherwise.
    """
    encoder = model.vision_encoder
    grid_size = encoder.grid_size
    encoder.grid_size = 0  # no window has a grid of 0 patches
    try:
        yield
    finally:
        encoder.grid_size = grid_size


@contextmanager
def exporter_progress_hidden():
    """
    Within the block, the exporter's and the quantizer's progress lines are not shown: torch.onnx, onnxscript and
    onnx_ir log every step, and ONNX Runtime's quantizer every tensor it leaves alone (on the root logger, so
    nothing else should log meanwhile).
    """
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir", "")]
    levels = [each.level for each in loggers]
    for each in loggers:
        each.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for each, level in zip(loggers, levels, strict=True):
            each.setLevel(level)


def export_graph(
    module: nn.Module,
    example: dict[str, torch.Tensor],
    dynamic_axes: dict[str, dict[int, torch.export.Dim]],
    output_name: str,
    path: Path,
    opset: int | None,
) -> int:
    """
    Exports `module` (called with `example` as keyword arguments) to the single-file ONNX model `path` with
    `torch.onnx.export(..., dynamo=True)`, each input's `dynamic_axes` left free. Returns the opset written.

    Raises:
        ValueError: when the exporter fixed one of the dynamic axes.
    """
    with exporter_progress_hidden():
        program = torch.onnx.export(
            module.eval(),
            (),
            kwargs=example,
            dynamo=True,
            input_names=list(example),
            output_names=[output_name],
            dynamic_shapes=dynamic_axes,
            opset_version=opset,
            verbose=False,
        )
    for value in program.model.graph.inputs:
        fixed = [axis for axis in dynamic_axes[value.name] if isinstance(value.shape[axis], int)]
        if fixed:
            raise ValueError(
                f"{path.name}: the exporter fixed axes {fixed} of {value.name} to {list(value.shape)}; this torch "
                "version cannot export the model with them free."
            )
    program.save(path, external_data=False)
    return program.model.opset_imports[""]


def largest_difference(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual.astype(np.float64) - expected.astype(np.float64)).max())


def check_difference(name: str, difference: float, expected: np.ndarray) -> None:
    """Refuses an export whose float32 outputs are farther from PyTorch's than `EXPORT_TOLERANCE` allows."""
    tolerance = EXPORT_TOLERANCE * max(1.0, float(np.abs(expected).max()))
    if not difference <= tolerance:
        raise ValueError(
            f"{name}: ONNX Runtime's outputs differ from PyTorch's by up to {difference:.3g}, more than the "
            f"{tolerance:.3g} rounding allows; the export is wrong (please report it with the torch and onnxscript "
            "versions)."
        )


def image_check_inputs(model: CascadeClipForZeroShotSegmentation) -> list[dict[str, torch.Tensor]]:
    """
    Random inputs the image graph is checked on: two full windows with 3 classes (the example it is exported with:
    torch.export would fix an axis of size 1), and one window smaller than the crop with 5 classes.
    """
    config = model.config
    patch = config.vision_config.patch_size
    crop = config.slide_crop_size
    small = (max(crop - patch, MIN_WINDOW_PATCHES * patch), max(crop // 2, MIN_WINDOW_PATCHES * patch))
    generator = torch.Generator().manual_seed(0)
    inputs = []
    for batch_size, size, num_classes in ((2, (crop, crop), 3), (1, small, 5)):
        embeds = torch.randn(num_classes, config.projection_dim, generator=generator)
        inputs.append(
            {
                "pixel_values": torch.randn(batch_size, 3, *size, generator=generator),
                "class_embeds": nn.functional.normalize(embeds, dim=-1),
            }
        )
    return inputs


@torch.no_grad()
def export_image_path(model, path: Path, opset: int | None) -> tuple[list[dict], int]:
    """
    Exports the image path to `path`; returns the random inputs to check it on, with PyTorch's logits, and the
    opset written.
    """
    checks = image_check_inputs(model)
    for check in checks:
        check["expected"] = model(**check).logits.numpy()
    patch = model.config.vision_config.patch_size
    dynamic_axes = {
        "pixel_values": {
            0: torch.export.Dim("batch_size", min=1),
            2: torch.export.Dim("height", min=MIN_WINDOW_PATCHES * patch),
            3: torch.export.Dim("width", min=MIN_WINDOW_PATCHES * patch),
        },
        "class_embeds": {0: torch.export.Dim("num_classes", min=1)},
    }
    example = {name: checks[0][name] for name in dynamic_axes}
    with position_grid_always_resized(model):
        opset = export_graph(CascadeClipImagePath(model), example, dynamic_axes, "logits", path, opset)
    return checks, opset


@torch.no_grad()
def export_text_path(model, processor: CascadeClipProcessor, path: Path, opset: int | None) -> dict:
    """Exports the text tower to `path`; returns the tokens of a vocabulary to check it on, with PyTorch's result."""
    class_names = model.config.class_names or ["cat", "grass", "sky"]
    tokens = processor(text=class_names)
    check = {name: tokens[name] for name in ("input_ids", "attention_mask")}
    check["expected"] = model.get_class_embeddings(**check).numpy()
    # Two classes in two templates at least: torch.export would fix an axis of size 1.
    example = {name: tokens[name][:2].repeat(1, 2, 1) for name in ("input_ids", "attention_mask")}
    if len(class_names) < 2:
        example = {name: tensor.repeat(2, 1, 1) for name, tensor in example.items()}
    context_length = model.config.text_config.max_position_embeddings
    axes = {
        0: torch.export.Dim("num_classes", min=1),
        1: torch.export.Dim("num_templates", min=1),
        2: torch.export.Dim("sequence_length", min=2, max=context_length),
    }
    export_graph(CascadeClipTextPath(model), example, dict.fromkeys(example, axes), "class_embeds", path, opset)
    return check


def run_image_checks(path: Path, checks: list[dict]) -> tuple[float, float]:
    """
    The image graph `path` in ONNX Runtime on the check inputs: the largest absolute logit difference from PyTorch,
    and the share of (image, patch) positions where both pick the same class.
    """
    session = inference_session(path, None, None)
    difference, agreeing, positions = 0.0, 0, 0
    for check in checks:
        feed = {name: check[name].numpy() for name in ("pixel_values", "class_embeds")}
        logits = session.run(None, feed)[0]
        difference = max(difference, largest_difference(logits, check["expected"]))
        agreeing += int((logits.argmax(axis=1) == check["expected"].argmax(axis=1)).sum())
        positions += logits.shape[0] * logits[0, 0].size
    return difference, agreeing / positions


def quantize_int8(source: Path, target: Path) -> None:
    """ONNX Runtime's dynamic quantization: int8 weights, activations quantized on the fly."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with exporter_progress_hidden():
        quantize_dynamic(source, target, weight_type=QuantType.QInt8)


def export_card(model_name: str, license_files: list[str]) -> tuple[ModelCard, str | None]:
    """
    The export's model card: the source's licence metadata carried over, with a note on its terms. Returns the
    card and the licence (None when the source's card records none).
    """
    source = card_data_of(model_name)
    license = source.license if source is not None else None
    license_name = source.get("license_name") if source is not None else None
    if license == ORIGINAL_LICENSE and license_name == ORIGINAL_LICENSE_NAME:
        note = ORIGINAL_WEIGHTS_LICENSE
    elif license:
        note = f"The weights keep the licence of the source model: {license_name or license}."
    else:
        note = (
            "The source model's card records no licence: the weights keep whatever terms the source has; check "
            "them before use."
        )
    if license_files:
        note += f" The source's {', '.join(license_files)} {'is' if len(license_files) == 1 else 'are'} copied here."
    data = ModelCardData(
        license=license,
        license_name=license_name,
        license_link=source.get("license_link") if source is not None else None,
        library_name="onnx",
        pipeline_tag="image-segmentation",
        base_model=model_name if not Path(model_name).exists() else None,
        tags=["cascade-clip", "onnx", "zero-shot-semantic-segmentation", "image-segmentation"],
    )
    text = (
        f"---\n{data.to_yaml()}\n---\n\n# {Path(model_name).name} (ONNX)\n\n"
        f"Cascade-CLIP `{model_name}` exported to ONNX by `cascade-clip export-onnx`: `{IMAGE_MODEL}` (pixel values "
        f"and class embeddings to mask logits) and `{TEXT_MODEL}` (class prompts to class embeddings), with the "
        "config and processor. Segment with ONNX Runtime, without PyTorch running the model:\n\n"
        "```bash\ncascade-clip segment photo.jpg --backend onnx --model THIS_FOLDER --labels cat,grass,sky "
        "--output out\n```\n\n"
        f"`{MANIFEST}` records the versions used and how closely ONNX Runtime reproduced PyTorch.\n\n"
        f"## Licence\n\n{note}\n"
    )
    return ModelCard(text), license


def export_onnx(
    model_name: str, output_dir: str | os.PathLike, quantize: str | None = None, opset: int | None = None
) -> dict:
    """
    Exports a model (see the module's docstring) into `output_dir` and checks it: ONNX Runtime must reproduce
    PyTorch's float32 logits and class embeddings on random inputs within `EXPORT_TOLERANCE`; the int8 model's
    difference and class agreement are recorded. The export replaces `output_dir` whole, so nothing of an earlier
    export stays beside it; a folder holding anything cascade-clip did not write as a model is refused before
    anything is exported, and so is an output folder that would replace the source model's files.

    Args:
        model_name (`str`): a model folder or Hub id (loaded strictly, see `segmenter.load_for_inference`).
        output_dir: the folder to write, created if needed.
        quantize (`str`, *optional*): `"int8"` to also write the image path quantized.
        opset (`int`, *optional*): the ONNX opset, one of `supported_opsets()` (torch's default when None).

    Returns:
        The manifest written as `onnx_export.json`.

    Raises:
        ValueError: one line naming the problem (model, output folder, an unknown quantization, an export that
            does not reproduce the model, an opset torch's exporter cannot write).
    """
    if opset is not None and opset not in supported_opsets():
        opsets = supported_opsets()
        raise ValueError(
            f"--opset {opset}: torch {torch.__version__} exports opsets {opsets[0]} to {opsets[-1]} only (choose one "
            "of them, or leave it out for torch's default)."
        )
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantize!r}: use one of {', '.join(QUANTIZATIONS)}.")
    missing = [package for package in EXPORT_PACKAGES if importlib.util.find_spec(package) is None]
    if missing:
        raise ValueError(f"exporting {model_name} needs {', '.join(missing)}: pip install 'cascade-clip-hf[onnx]'.")
    output = Path(output_dir)
    source = Path(model_name).expanduser()
    inputs = sorted(path for path in source.iterdir() if path.is_file()) if source.is_dir() else []
    onnx_files = [IMAGE_MODEL, TEXT_MODEL] + ([IMAGE_MODEL_INT8] if quantize else [])
    check_output_folder(output_dir, inputs=inputs, kind=MODEL)
    model, processor = load_for_inference(model_name)
    license_files = [name for name in LICENSE_FILES if (source / name).is_file()] if source.is_dir() else []
    with atomic_directory(output, inputs, kind=MODEL) as staging:
        model.config.save_pretrained(staging)
        processor.save_pretrained(staging)
        for name in license_files:
            shutil.copyfile(source / name, staging / name)
        card, license = export_card(model_name, license_files)
        card.save(staging / "README.md")
        files = sorted([path.name for path in staging.iterdir()] + onnx_files + [MANIFEST])
        if model.config.num_labels:
            files = sorted([*files, DEFAULT_CLASS_EMBEDDINGS])
            save_file(
                {"class_embeddings": model.class_embeddings.float().contiguous()}, staging / DEFAULT_CLASS_EMBEDDINGS
            )

        logger.info(f"Exporting the image path of {model_name} ...")
        image_checks, opset = export_image_path(model, staging / IMAGE_MODEL, opset)
        image_difference, _ = run_image_checks(staging / IMAGE_MODEL, image_checks)
        check_difference(IMAGE_MODEL, image_difference, np.concatenate([c["expected"].ravel() for c in image_checks]))
        logger.info(f"{IMAGE_MODEL}: largest absolute logit difference from PyTorch {image_difference:.3g}")

        logger.info(f"Exporting the text tower of {model_name} ...")
        text_check = export_text_path(model, processor, staging / TEXT_MODEL, opset)
        text_session = inference_session(staging / TEXT_MODEL, None, None)
        feed = {name: text_check[name].numpy() for name in ("input_ids", "attention_mask")}
        text_difference = largest_difference(text_session.run(None, feed)[0], text_check["expected"])
        check_difference(TEXT_MODEL, text_difference, text_check["expected"])
        logger.info(f"{TEXT_MODEL}: largest absolute class-embedding difference from PyTorch {text_difference:.3g}")

        checks = {
            IMAGE_MODEL: {"max_abs_logit_difference": image_difference},
            TEXT_MODEL: {"max_abs_class_embedding_difference": text_difference},
        }
        if quantize:
            quantize_int8(staging / IMAGE_MODEL, staging / IMAGE_MODEL_INT8)
            int8_difference, agreement = run_image_checks(staging / IMAGE_MODEL_INT8, image_checks)
            checks[IMAGE_MODEL_INT8] = {"max_abs_logit_difference": int8_difference, "argmax_agreement": agreement}
            logger.info(
                f"{IMAGE_MODEL_INT8}: largest absolute logit difference from PyTorch {int8_difference:.3g}, same "
                f"class at {agreement:.1%} of the patches (random inputs)"
            )
        manifest = manifest_of(model, model_name, files, license, quantize, opset, checks)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    logger.info(f"Exported {model_name} to {shown(output)}.")
    return manifest


def manifest_of(model, model_name: str, files: list[str], license, quantize, opset, checks: dict) -> dict:
    """What `onnx_export.json` records of an export."""
    import onnx
    import onnxruntime
    import onnxscript

    return {
        "format": MANIFEST_FORMAT,
        "source": model_name,
        "license": license,
        "files": files,
        "quantization": quantize,
        "opset": opset,
        "min_window": MIN_WINDOW_PATCHES * model.config.vision_config.patch_size,
        "text_tower_fingerprint": text_tower_fingerprint(model),
        "checks": checks,
        "versions": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxscript": onnxscript.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
    }
