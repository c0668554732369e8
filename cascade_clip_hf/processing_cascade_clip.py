"""Processor for Cascade-CLIP: images through the image processor, class names through templates and the tokenizer."""

from collections.abc import Sequence

import torch
from transformers.image_processing_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin


# CLIP's text tower has 77 positions.
CLIP_CONTEXT_LENGTH = 77


def normalize_class_name(name: str) -> str:
    """The form two class names are compared in: CLIP's tokenizer lowercases and collapses whitespace."""
    return " ".join(name.split()).lower()


def check_class_names(class_names) -> list[str]:
    """Returns the class names as a list, or raises a clear error for empty, non-string or duplicate names."""
    if isinstance(class_names, str):
        class_names = [class_names]
    class_names = list(class_names)
    if not class_names:
        raise ValueError("No class names were given: pass at least one, e.g. text=['cat', 'grass'].")
    not_strings = [name for name in class_names if not isinstance(name, str)]
    if not_strings:
        raise ValueError(f"Class names must be strings, got {not_strings[:5]}.")
    empty = [index for index, name in enumerate(class_names) if not name.strip()]
    if empty:
        raise ValueError(f"Class names at positions {empty} are empty.")
    seen, duplicates = set(), []
    for name in class_names:
        key = normalize_class_name(name)
        if key in seen:
            duplicates.append(name)
        seen.add(key)
    if duplicates:
        raise ValueError(f"Duplicate class names (compared ignoring case and spacing): {duplicates}.")
    return class_names


def check_templates(templates) -> list[str]:
    """Returns the templates as a list, or raises a clear error if one lacks exactly one '{}'."""
    if isinstance(templates, str):
        templates = [templates]
    templates = list(templates)
    if not templates:
        raise ValueError("At least one template is needed, e.g. ['a photo of a {}.'].")
    bad = [template for template in templates if not isinstance(template, str) or template.count("{}") != 1]
    if bad:
        raise ValueError(f"Every template needs exactly one '{{}}' where the class name goes: {bad}.")
    return templates


def tokenize_class_prompts(
    tokenizer, class_names: Sequence[str], templates: Sequence[str], max_length: int = CLIP_CONTEXT_LENGTH
) -> dict[str, torch.Tensor]:
    """
    Fills every template with every class name and tokenizes the prompts.

    Returns:
        `input_ids` and `attention_mask`, each of shape `(num_classes, num_templates, sequence_length)`.
    """
    class_names = check_class_names(class_names)
    templates = check_templates(templates)
    prompts = [template.format(name.strip()) for name in class_names for template in templates]
    tokens = tokenizer(prompts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    shape = (len(class_names), len(templates), -1)
    return {"input_ids": tokens["input_ids"].view(shape), "attention_mask": tokens["attention_mask"].view(shape)}


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
        self.templates = check_templates(templates or ["a photo of a {}."])
        self.seen_classes = list(seen_classes) if seen_classes is not None else None

    def seen_class_mask(self, class_names: Sequence[str]) -> torch.Tensor:
        """`(num_classes,)` booleans: which of `class_names` were seen in training."""
        seen = {normalize_class_name(name) for name in self.seen_classes or ()}
        return torch.tensor([normalize_class_name(name) in seen for name in class_names], dtype=torch.bool)

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
