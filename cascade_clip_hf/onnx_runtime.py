"""Segmenting with an ONNX export (see `onnx_export.py`) in ONNX Runtime: PyTorch never runs the model.

Only the two networks run in ONNX Runtime. Everything around them is the PyTorch path's own code: the processor's
preprocessing, the zero-shot pipeline, the sliding window with its float32 score sums and calibration, and the
class map made a few classes at a time (`sliding_window.sliding_window_results`). `OnnxCascadeClip` stands in for
`CascadeClipForZeroShotSegmentation` where the pipeline and the command line use the model.
"""

import json
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from safetensors.torch import load_file

from .calibration import seen_score_shift
from .configuration_cascade_clip import CascadeClipConfig
from .errors import one_line
from .modeling_cascade_clip import TEXT_TOWER_CACHE_SIZE
from .pipeline_cascade_clip import CascadeClipZeroShotSegmentationPipeline
from .processing_cascade_clip import CascadeClipProcessor
from .sliding_window import ClassMap, check_window, sliding_window_results
from .vocabulary import check_distinct_class_embeddings, digest_tensors, seen_class_mask


# The files of an export, beside the model's config.json and processor files.
IMAGE_MODEL = "image_model.onnx"
IMAGE_MODEL_INT8 = "image_model_int8.onnx"
TEXT_MODEL = "text_model.onnx"
DEFAULT_CLASS_EMBEDDINGS = "class_embeddings.safetensors"
MANIFEST = "onnx_export.json"
MANIFEST_FORMAT = 1
# Where a model folder may keep its export (`cascade-clip segment --backend onnx --model MODEL_FOLDER`).
ONNX_SUBFOLDER = "onnx"
# The exported image path takes windows of at least this many patches a side: torch.export specialises a grid
# side of one patch (a size of 1 broadcasts), so the graph cannot cover it.
MIN_WINDOW_PATCHES = 2
# The inputs each exported graph takes, by name: a file of another graph is refused when the export is opened.
GRAPH_INPUTS = {
    IMAGE_MODEL: ["pixel_values", "class_embeds"],
    IMAGE_MODEL_INT8: ["pixel_values", "class_embeds"],
    TEXT_MODEL: ["input_ids", "attention_mask"],
}
AGAIN = "export the model again with `cascade-clip export-onnx`"

Loaded = TypeVar("Loaded")


def export_folder(model: str | os.PathLike) -> Path:
    """
    The folder holding an export: `model` itself, or its `onnx` subfolder when only that holds one.

    Raises:
        ValueError: when neither holds an export, saying how to make one.
    """
    folder = Path(model).expanduser()
    for candidate in (folder, folder / ONNX_SUBFOLDER):
        if (candidate / MANIFEST).is_file():
            return candidate
    # A model folder gets its export beside its weights; any other name is where an export should be.
    command = (
        f"{model} --output {folder / ONNX_SUBFOLDER}"
        if (folder / "config.json").is_file()
        else f"MODEL --output {model}"
    )
    raise ValueError(
        f"{model}: no ONNX export here (no {MANIFEST}, nor {ONNX_SUBFOLDER}/{MANIFEST}); make one with "
        f"`cascade-clip export-onnx {command}`."
    )


def load_export_file(path: Path, load: Callable[[Path], Loaded]) -> Loaded:
    """
    `load(path)` for a file of an export, read when the export is opened rather than at the first image.

    Raises:
        ValueError: one line naming `path`, when it is missing or `load` fails on it (a truncated or damaged file).
    """
    if not path.is_file():
        raise ValueError(f"{path}: missing from the export; {AGAIN}.")
    try:
        return load(path)
    except Exception as error:  # each reader (ONNX Runtime, safetensors, json) has errors of its own
        raise ValueError(f"{path}: damaged, not readable ({one_line(error)}); {AGAIN}.") from error


def inference_session(path: Path, threads: int | None, providers: Sequence[str] | None):
    """
    An ONNX Runtime session on `path`, computing with `threads` threads (ONNX Runtime's choice when None).

    Raises:
        ValueError: one line naming `path`, when ONNX Runtime is missing, or the file is missing, damaged or not a
            graph of an export (other inputs than `GRAPH_INPUTS` names for it).
    """
    try:
        import onnxruntime
    except ImportError as error:
        raise ValueError(
            f"{path}: ONNX Runtime is not installed: pip install 'cascade-clip-hf[onnx]'. ({error})"
        ) from error
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or 0
    session = load_export_file(
        path,
        lambda path: onnxruntime.InferenceSession(
            str(path), options, providers=list(providers or ["CPUExecutionProvider"])
        ),
    )
    inputs = [value.name for value in session.get_inputs()]
    if path.name in GRAPH_INPUTS and inputs != GRAPH_INPUTS[path.name]:
        raise ValueError(f"{path}: a graph taking {inputs}, not {GRAPH_INPUTS[path.name]}; {AGAIN}.")
    return session


def load_default_class_embeddings(path: Path, config: CascadeClipConfig) -> torch.Tensor:
    """
    The default vocabulary's class embeddings `(num_labels, projection_dim)` from `path`.

    Raises:
        ValueError: one line naming `path` when it is missing, damaged or of another shape.
    """
    class_embeddings = load_export_file(path, lambda path: load_file(path)["class_embeddings"])
    expected = (config.num_labels, config.projection_dim)
    if tuple(class_embeddings.shape) != expected:
        raise ValueError(
            f"{path}: class embeddings of shape {tuple(class_embeddings.shape)}, the config says {expected}; {AGAIN}."
        )
    return class_embeddings


class OnnxCascadeClip:
    """
    A Cascade-CLIP export run by ONNX Runtime, with the methods of [`CascadeClipForZeroShotSegmentation`] the
    zero-shot pipeline and the command line call: `get_class_embeddings`, `sliding_window_inference` and
    `text_tower_memo` (which `vocabulary.text_tower_fingerprint` reads: the fingerprint of the text tower's weights
    is recorded at export).

    Args:
        folder: an export written by `onnx_export.export_onnx`.
        quantized (`bool`): run the int8 image model (`--quantize int8` at export) instead of the float32 one.
        threads (`int`, *optional*): threads of each ONNX Runtime session.
        providers (`list[str]`, *optional*): ONNX Runtime execution providers; the CPU's by default.

    Raises:
        ValueError: one line naming the file, for a folder that is not a complete export of this format or holds a
            missing or damaged file: every file is read here, none at the first image.
    """

    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(
        self,
        folder: str | os.PathLike,
        quantized: bool = False,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
    ):
        self.folder = Path(folder)
        manifest = load_export_file(self.folder / MANIFEST, lambda path: json.loads(path.read_text(encoding="utf-8")))
        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
            found = manifest.get("format") if isinstance(manifest, dict) else None
            raise ValueError(
                f"{self.folder / MANIFEST}: an export of format {found!r}, this version reads {MANIFEST_FORMAT}; "
                "export the model again."
            )
        self.manifest = manifest
        self.config = load_export_file(
            self.folder / "config.json", lambda path: CascadeClipConfig.from_pretrained(path.parent)
        )
        image_model = IMAGE_MODEL_INT8 if quantized else IMAGE_MODEL
        if quantized and image_model not in manifest.get("files", []):
            raise ValueError(
                f"{self.folder}: exported without an int8 image model; export with `--quantize int8` for it."
            )
        self.image_session = inference_session(self.folder / image_model, threads, providers)
        self.text_session = inference_session(self.folder / TEXT_MODEL, threads, providers)
        self.class_embeddings = (
            load_default_class_embeddings(self.folder / DEFAULT_CLASS_EMBEDDINGS, self.config)
            if self.config.num_labels
            else None
        )
        self.default_seen_class_mask = seen_class_mask(self.config.class_names, self.config.seen_class_names)
        # What the export recorded of the text tower's weights, and the results computed since (they never change).
        self.recorded_text_results = {("text_tower_fingerprint",): manifest.get("text_tower_fingerprint")}
        self.text_tower_results = OrderedDict()
        self.min_window = MIN_WINDOW_PATCHES * self.config.vision_config.patch_size

    def text_tower_memo(self, key, compute: Callable[[], object]):
        """`compute()`, remembered under `key` (the last `TEXT_TOWER_CACHE_SIZE` keys); tensors copied out."""
        if key in self.recorded_text_results:
            return self.recorded_text_results[key]
        results = self.text_tower_results
        if key in results:
            results.move_to_end(key)
        else:
            results[key] = compute()
            if len(results) > TEXT_TOWER_CACHE_SIZE:
                results.popitem(last=False)
        value = results[key]
        return value.clone() if isinstance(value, torch.Tensor) else value

    def get_class_embeddings(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        class_names: list[str] | None = None,
    ) -> torch.Tensor:
        """
        Class embeddings from tokenized class prompts, by the exported text tower (see
        `CascadeClipForZeroShotSegmentation.get_class_embeddings`, whose results they equal within float rounding).

        Args:
            input_ids (`torch.LongTensor` of shape `(num_classes, num_templates, sequence_length)` or
                `(num_classes, sequence_length)`).
            attention_mask (`torch.LongTensor` of the same shape, *optional*).
            class_names (`list[str]`, *optional*): with them, classes whose embeddings coincide are refused.

        Returns:
            `torch.FloatTensor` of shape `(num_classes, projection_dim)`, L2-normalised.
        """
        if input_ids.dim() not in (2, 3):
            raise ValueError(
                "input_ids must have shape (num_classes, sequence_length) or (num_classes, num_templates, "
                f"sequence_length), got {tuple(input_ids.shape)}."
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if input_ids.dim() == 2:  # one template: averaging over it changes nothing
            input_ids, attention_mask = input_ids[:, None], attention_mask[:, None]

        def compute() -> torch.Tensor:
            feed = {"input_ids": input_ids.long().numpy(), "attention_mask": attention_mask.long().numpy()}
            return torch.from_numpy(self.text_session.run(None, feed)[0])

        tokens = digest_tensors([("input_ids", input_ids), ("attention_mask", attention_mask)])
        class_embeds = self.text_tower_memo(("class_embeds", tokens), compute)
        if class_names is not None:
            check_distinct_class_embeddings(class_embeds, class_names)
        return class_embeds

    def window_logits(self, crops: torch.Tensor, class_embeds: np.ndarray) -> np.ndarray:
        """Mask logits `(num_windows, num_classes, grid_height, grid_width)` of `(num_windows, 3, h, w)` crops."""
        feed = {"pixel_values": crops.float().contiguous().numpy(), "class_embeds": class_embeds}
        return self.image_session.run(None, feed)[0]

    def check_windows(self, images: list[torch.Tensor], crop_size: int) -> None:
        """Refuses images whose windows would be narrower than the exported graph takes (see `MIN_WINDOW_PATCHES`)."""
        for image in images:
            height, width = image.shape[-2:]
            if min(height, width, crop_size) < self.min_window:
                raise ValueError(
                    f"{self.folder}: the ONNX image model takes windows of at least {self.min_window} pixels a side; "
                    f"this image is {height}x{width} pixels after preprocessing with crop_size {crop_size}: use the "
                    "PyTorch backend for it."
                )

    def sliding_window_inference(
        self,
        pixel_values: torch.Tensor | list[torch.Tensor],
        output_size: tuple[int, int] | list[tuple[int, int]] | None = None,
        class_embeds: torch.Tensor | None = None,
        seen_class_mask: torch.Tensor | None = None,
        crop_size: int | None = None,
        stride: int | None = None,
        window_batch_size: int | None = None,
        output: str = "scores",
    ) -> torch.Tensor | list[torch.Tensor] | list[ClassMap]:
        """
        [`CascadeClipForZeroShotSegmentation.sliding_window_inference`] with the windows scored by ONNX Runtime;
        classes come as `class_embeds` (with `seen_class_mask`) or from the default vocabulary.

        Raises:
            ValueError: for a bad window, no default vocabulary, or images narrower than the smallest window.
        """
        crop_size = crop_size if crop_size is not None else self.config.slide_crop_size
        stride = stride if stride is not None else self.config.slide_stride
        check_window(crop_size, stride, self.config.vision_config.patch_size)
        self.check_windows(list(pixel_values), crop_size)
        if class_embeds is None:
            if self.class_embeddings is None:
                raise ValueError(f"{self.folder}: this model has no default vocabulary: pass class names.")
            class_embeds = self.class_embeddings
            if seen_class_mask is None:
                seen_class_mask = self.default_seen_class_mask
        if seen_class_mask is None:
            seen_class_mask = torch.zeros(len(class_embeds), dtype=torch.bool)
        score_shift = seen_score_shift(seen_class_mask, self.config.setting, self.config.seen_score_shift)
        class_embeds = class_embeds.float().contiguous().numpy()
        return sliding_window_results(
            pixel_values,
            lambda crops: self.window_logits(crops, class_embeds),
            score_shift,
            output_size,
            crop_size,
            stride,
            self.config.vision_config.image_size,
            window_batch_size,
            output,
        )


def load_onnx_segmenter(
    model: str | os.PathLike,
    quantized: bool = False,
    threads: int | None = None,
    providers: Sequence[str] | None = None,
) -> CascadeClipZeroShotSegmentationPipeline:
    """
    The zero-shot pipeline on an export run by ONNX Runtime: the same call and results as
    `segmenter.load_segmenter`'s.

    Args:
        model: an export folder, or a model folder with its export in an `onnx` subfolder.
        quantized, threads, providers: see [`OnnxCascadeClip`].

    Raises:
        ValueError: one line naming the folder and what is missing.
    """
    folder = export_folder(model)
    onnx_model = OnnxCascadeClip(folder, quantized, threads, providers)
    processor = load_export_file(
        folder / "processor_config.json", lambda path: CascadeClipProcessor.from_pretrained(folder)
    )
    return CascadeClipZeroShotSegmentationPipeline(model=onnx_model, processor=processor, device="cpu")
