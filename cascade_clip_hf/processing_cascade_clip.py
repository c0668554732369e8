"""Processor for Cascade-CLIP: images through the image processor, class names through templates and the tokenizer."""

from collections.abc import Sequence

import torch
from transformers.image_processing_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .vocabulary import (
    DEFAULT_TEMPLATES,
    check_class_names,
    check_templates,
    check_tokenizer,
    seen_class_mask,
    tokenize_class_prompts,
)


class CascadeClipProcessor(ProcessorMixin):
    r"""
    Prepares images and class names for [`CascadeClipForZeroShotSegmentation`].

    Args:
        image_processor ([`CascadeClipImageProcessor`]): prepares images and label maps.
        tokenizer ([`CLIPTokenizer`]): CLIP's tokenizer.
        templates (`list[str]`, *optional*): prompt templates with one `{}` for the class name; a class is
            described by the average of its templates' embeddings. Defaults to `["a photo of a {}."]`.
        seen_classes (`list[str]`, *optional*): the classes the model was trained on. A class of this list counts
            as seen (inductive models lower its score) wherever it appears in `text`.
    """

    def __init__(self, image_processor=None, tokenizer=None, templates=None, seen_classes=None, **kwargs):
        super().__init__(image_processor, tokenizer)
        if tokenizer is not None:
            check_tokenizer(tokenizer, type(tokenizer).__name__)
        self.templates = check_templates(templates or DEFAULT_TEMPLATES)
        self.seen_classes = list(seen_classes) if seen_classes is not None else None

    def seen_class_mask(self, class_names: Sequence[str]) -> torch.Tensor:
        """`(num_classes,)` booleans: which of `class_names` were seen in training."""
        return seen_class_mask(class_names, self.seen_classes)

    def __call__(
        self,
        images=None,
        text: str | Sequence[str] | None = None,
        segmentation_maps=None,
        templates: Sequence[str] | None = None,
        return_tensors: str = "pt",
        **image_kwargs,
    ) -> BatchFeature:
        """
        Args:
            images (*optional*): what [`CascadeClipImageProcessor`] takes.
            text (`str` or `list[str]`, *optional*): class names, e.g. `["cat", "grass", "sky"]`. Without them the
                model segments into its default vocabulary.
            segmentation_maps (*optional*): label maps for the images.
            templates (`list[str]`, *optional*): overrides the processor's templates for this call.
            image_kwargs: passed to the image processor.

        Returns:
            [`BatchFeature`] with `pixel_values` (and `labels`) from the image processor and, with
            `text`, `input_ids` and `attention_mask` of shape `(num_classes, num_templates, sequence_length)` and
            `seen_class_mask` of shape `(num_classes,)`.
        """
        if images is None and text is None:
            raise ValueError("Pass images, text (class names), or both.")
        data = {}
        if images is not None:
            data.update(
                self.image_processor(
                    images, segmentation_maps=segmentation_maps, return_tensors=return_tensors, **image_kwargs
                )
            )
        if text is not None:
            class_names = check_class_names(text)
            data.update(tokenize_class_prompts(self.tokenizer, class_names, templates or self.templates))
            data["seen_class_mask"] = self.seen_class_mask(class_names)
        return BatchFeature(data=data)

    def post_process_semantic_segmentation(self, outputs, target_sizes=None):
        """See [`CascadeClipImageProcessor.post_process_semantic_segmentation`]."""
        return self.image_processor.post_process_semantic_segmentation(outputs, target_sizes=target_sizes)

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "input_ids", "attention_mask", "seen_class_mask"]


__all__ = ["CascadeClipProcessor"]
