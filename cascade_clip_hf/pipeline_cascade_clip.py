"""The `zero-shot-image-segmentation` pipeline: Cascade-CLIP segmenting images into any class names.

This file is also saved beside every model (see `CascadeClipForZeroShotSegmentation.save_pretrained`) and loaded
from there with `trust_remote_code=True`, so it imports nothing from its own package.
"""

from collections.abc import Sequence

import numpy as np
import PIL.Image
import torch
from transformers import Pipeline


PIPELINE_TASK = "zero-shot-image-segmentation"


class CascadeClipZeroShotSegmentationPipeline(Pipeline):
    """
    Segments images into the classes you name (or the model's default vocabulary), with the original's test-time
    path: the processor's resize, then overlapping windows whose scores are averaged.

    ```python
    >>> segmenter = pipeline("zero-shot-image-segmentation", model="org/cascade-clip-coco", trust_remote_code=True)
    >>> segmenter("street.jpg", candidate_labels=["car", "road", "sky"])
    [{"label": "car", "score": 0.61, "mask": <PIL.Image.Image image mode=L>}, ...]
    ```

    Each image gives one dict per class that wins at least one pixel: `label`, `mask` (a PIL image of the image's
    size, 255 where the class wins, 0 elsewhere) and `score` (the class's mean calibrated score over its mask).
    A list of images gives a list of such lists; `batch_size` images go through the model together.
    """

    _load_processor = True
    _load_image_processor = False
    _load_tokenizer = False
    _load_feature_extractor = False

    def _sanitize_parameters(
        self,
        candidate_labels=None,
        class_embeds=None,
        crop_size=None,
        stride=None,
        window_batch_size=None,
        timeout=None,
        **kwargs,
    ):
        preprocess_params = {"candidate_labels": candidate_labels, "class_embeds": class_embeds, "timeout": timeout}
        forward_params = {"crop_size": crop_size, "stride": stride, "window_batch_size": window_batch_size}
        return preprocess_params, forward_params, {}

    def __call__(self, images, candidate_labels: Sequence[str] | None = None, batch_size: int | None = None, **kwargs):
        """
        Args:
            images (`str`, `PIL.Image.Image`, `np.ndarray`, or a list of them): paths, URLs or images, read by
                the image processor's `read_image` (any PIL mode, EXIF orientation applied).
            candidate_labels (`list[str]`, *optional*): class names; the model's default vocabulary when not given.
            class_embeds (`torch.FloatTensor` or `np.ndarray` of floats, of shape `(num_classes, projection_dim)`,
                *optional*): the embeddings of `candidate_labels`, one row per name, computed once (e.g.
                `ClassVocabulary.class_embeds`, from `cascade-clip embed`) instead of running the text tower; which
                classes were seen still comes from the processor.
            batch_size (`int`, *optional*): images per forward pass (the pipeline's own `batch_size`, else 1).
            crop_size, stride, window_batch_size (`int`, *optional*): sliding-window options (model defaults).
            timeout (`float`, *optional*): seconds to wait for an image URL.
        """
        preprocess_params, forward_params, postprocess_params = self._sanitize_parameters(
            candidate_labels=candidate_labels, **kwargs
        )
        batch_size = batch_size or self._batch_size or 1
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        single = not isinstance(images, (list, tuple))
        images = [images] if single else list(images)
        results = []
        for start in range(0, len(images), batch_size):
            model_inputs = self.preprocess(images[start : start + batch_size], **preprocess_params)
            model_outputs = self.forward(model_inputs, **forward_params)
            results += self.postprocess(model_outputs, **postprocess_params)
        return results[0] if single else results

    def preprocess(self, images: list, candidate_labels=None, class_embeds=None, timeout=None) -> dict:
        # Not transformers' load_image: it converts to RGB first, which turns 16-bit and float pixels white or black.
        loaded = []
        for image in images:
            try:
                loaded.append(self.processor.image_processor.read_image(image, timeout=timeout))
            except (OSError, ValueError) as error:
                raise ValueError(f"Cannot read image: {error}") from error
        self.check_image_sizes(loaded)
        if candidate_labels is None:
            if class_embeds is not None:
                raise ValueError("class_embeds need their class names: pass candidate_labels too, one per row.")
            class_names = self.model.config.class_names
            inputs = self.processor(images=loaded)
        else:
            # Checked the same way with or without class_embeds.
            class_names = self.processor.check_class_names(candidate_labels, "candidate_labels")
            if class_embeds is None:
                inputs = self.processor(images=loaded, text=class_names)
            else:
                inputs = self.processor(images=loaded)
                inputs["class_embeds"] = check_class_embeds(
                    class_embeds, len(class_names), self.model.config.projection_dim
                )
                inputs["seen_class_mask"] = self.processor.seen_class_mask(class_names)
        inputs["output_sizes"] = [image.shape[:2] for image in loaded]
        inputs["class_names"] = class_names
        return dict(inputs)

    def check_image_sizes(self, images: list[np.ndarray]) -> None:
        """
        Refuses, naming its size as given, an image that the processor's resizing would make smaller than one patch
        of the vision tower on a side (a panorama strip of 2000x8 pixels is 256x1 at 256 pixels on the long side).

        Args:
            images: `(height, width, channels)` arrays, as `read_image` gives them.
        """
        image_processor = self.processor.image_processor
        patch_size = self.model.config.vision_config.patch_size
        for image in images:
            height, width = image.shape[:2]
            resized = (
                image_processor.target_size(height, width, image_processor.size)
                if image_processor.do_resize
                else (height, width)
            )
            if min(resized) < patch_size:
                raise ValueError(
                    f"an image of {width}x{height} pixels (width x height) would be {resized[1]}x{resized[0]} once "
                    f"resized for the model, less than one {patch_size}x{patch_size} patch on a side: it is too "
                    "thin; crop it to a less elongated part."
                )

    def _forward(self, model_inputs: dict, crop_size=None, stride=None, window_batch_size=None) -> dict:
        class_embeds = model_inputs.get("class_embeds")
        if "input_ids" in model_inputs:
            # Embedded here rather than inside the model, so that an error names the classes it cannot tell apart.
            class_embeds = self.model.get_class_embeddings(
                model_inputs["input_ids"], model_inputs["attention_mask"], class_names=model_inputs["class_names"]
            )
        # The class map and each pixel's winning score, not every class's scores at the image's size.
        class_maps = self.model.sliding_window_inference(
            [image.to(self.model.dtype) for image in model_inputs["pixel_values"]],
            output_size=model_inputs["output_sizes"],
            class_embeds=class_embeds,
            seen_class_mask=model_inputs.get("seen_class_mask"),
            crop_size=crop_size,
            stride=stride,
            window_batch_size=window_batch_size,
            output="segmentation",
        )
        # Plain tensors in lists, which the pipeline moves to the CPU.
        return {
            "segmentations": [class_map.segmentation for class_map in class_maps],
            "winning_scores": [class_map.scores for class_map in class_maps],
            "class_names": model_inputs["class_names"],
        }

    def postprocess(self, model_outputs: dict) -> list[list[dict]]:
        results = []
        for segmentation, winning_scores in zip(
            model_outputs["segmentations"], model_outputs["winning_scores"], strict=True
        ):
            segments = []
            for class_index in segmentation.unique().tolist():
                region = segmentation == class_index
                segments.append(
                    {
                        "label": model_outputs["class_names"][class_index],
                        # A class's scores over its own region are the winning scores there.
                        "score": winning_scores[region].mean().item(),
                        "mask": PIL.Image.fromarray(region.numpy().astype(np.uint8) * 255),
                    }
                )
            results.append(segments)
        return results


def check_class_embeds(
    class_embeds, num_classes: int | None = None, embed_dim: int | None = None, source: str = "class_embeds"
) -> torch.Tensor:
    """
    Class embeddings as a tensor, checked: one row of `embed_dim` finite floats per class. A numpy array of floats
    is taken as the tensor it holds.

    The one check of class embeddings: vocabulary files and the model use it too. It lives here, not in the
    package's vocabulary module, because this file is saved beside models as remote code and imports nothing
    from its package.

    Args:
        class_embeds (`torch.Tensor` or `np.ndarray` of shape `(num_classes, embed_dim)`).
        num_classes, embed_dim (`int`, *optional*): the shape expected; any size where not given.
        source (`str`): what errors call `class_embeds`: an argument, or a file and its field.

    Returns:
        `torch.Tensor` of shape `(num_classes, embed_dim)`, of a floating-point dtype.

    Raises:
        ValueError: one line naming `source`, for another type, integers or booleans, another shape, NaN or
            infinite values.
    """
    if isinstance(class_embeds, np.ndarray):
        if not np.issubdtype(class_embeds.dtype, np.floating):
            raise ValueError(
                f"{source} must hold floating-point numbers (the class embeddings themselves), got a numpy array of "
                f"{class_embeds.dtype}."
            )
        if class_embeds.dtype not in (np.float16, np.float32, np.float64):  # e.g. longdouble, which torch lacks
            class_embeds = class_embeds.astype(np.float64)
        class_embeds = torch.from_numpy(np.ascontiguousarray(class_embeds))
    if not isinstance(class_embeds, torch.Tensor):
        raise ValueError(
            f"{source} must be a torch.Tensor (or a numpy array) of floats, got "
            f"{type(class_embeds).__module__}.{type(class_embeds).__qualname__}."
        )
    if not class_embeds.is_floating_point():
        raise ValueError(
            f"{source} must hold floating-point numbers (the class embeddings themselves), got {class_embeds.dtype}."
        )
    rows, width = class_embeds.shape if class_embeds.dim() == 2 else (None, None)
    if rows is None or num_classes not in (None, rows) or embed_dim not in (None, width):
        expected = f"({'num_classes' if num_classes is None else num_classes}, "
        expected += f"{'embed_dim' if embed_dim is None else embed_dim})"
        raise ValueError(
            f"{source} must be a tensor of shape {expected}: one row per class name, each the model's "
            f"projection_dim long; got shape {tuple(class_embeds.shape)}."
        )
    if torch.compiler.is_compiling():  # values are data: a traced or exported graph checks the shape only
        return class_embeds
    not_finite = (~torch.isfinite(class_embeds)).any(dim=1).nonzero().flatten().tolist()
    if not_finite:
        raise ValueError(
            f"{source} holds NaN or infinite values (rows {not_finite[:5]}): embed the class names again."
        )
    return class_embeds


def zero_shot_pipeline_entry() -> dict:
    """How `config.custom_pipelines` names this pipeline, for loading it from a model folder with remote code."""
    return {
        PIPELINE_TASK: {
            "impl": f"{__name__.split('.')[-1]}.{CascadeClipZeroShotSegmentationPipeline.__name__}",
            "pt": ["AutoModelForSemanticSegmentation"],
            "type": "multimodal",
        }
    }


__all__ = ["CascadeClipZeroShotSegmentationPipeline", "PIPELINE_TASK", "check_class_embeds"]
