"""Processor for Cascade-CLIP: images through the image processor, class names through templates and the tokenizer."""

import warnings
from collections.abc import Sequence

import torch
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import ImageInput
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin, Unpack
from transformers.tokenization_utils_base import TextInput

from .image_processing_cascade_clip import CascadeClipImageProcessorKwargs
from .vocabulary import (
    CLIP_CONTEXT_LENGTH,
    DEFAULT_TEMPLATES,
    check_class_names,
    check_seen_classes,
    check_templates,
    check_tokenizer,
    seen_class_mask,
    tokenize_class_prompts,
)


class CascadeClipProcessorKwargs(ProcessingKwargs, total=False):
    images_kwargs: CascadeClipImageProcessorKwargs


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

    valid_processor_kwargs = CascadeClipProcessorKwargs
    # The original's tokenization: prompts padded to the longest, cut at CLIP's 77 positions, as tensors.
    text_kwargs = {"padding": True, "truncation": True, "max_length": CLIP_CONTEXT_LENGTH, "return_tensors": "pt"}

    def __init__(self, image_processor=None, tokenizer=None, templates=None, seen_classes=None, **kwargs):
        super().__init__(image_processor, tokenizer)
        if tokenizer is not None:
            check_tokenizer(tokenizer, type(tokenizer).__name__)
        self.templates = check_templates(templates or DEFAULT_TEMPLATES)
        self.seen_classes = check_seen_classes(seen_classes) if seen_classes is not None else None

    def check_class_names(self, class_names: str | Sequence[str], source: str = "text") -> list[str]:
        """
        The class names as a list, checked as `text` is (see `vocabulary.check_class_names`): for callers that
        embed them otherwise, e.g. the zero-shot pipeline given `class_embeds`.

        Raises:
            ValueError: naming `source`, for empty, non-string or duplicate names.
        """
        return check_class_names(class_names, source)

    def seen_class_mask(self, class_names: Sequence[str]) -> torch.Tensor:
        """`(num_classes,)` booleans: which of `class_names` were seen in training."""
        return seen_class_mask(class_names, self.seen_classes)

    def __call__(
        self,
        images: ImageInput | None = None,
        text: TextInput | list[TextInput] | None = None,
        segmentation_maps: ImageInput | None = None,
        **kwargs: Unpack[CascadeClipProcessorKwargs],
    ) -> BatchFeature:
        """
        Args:
            images (*optional*): what [`CascadeClipImageProcessor`] takes.
            text (`str` or `list[str]`, *optional*): class names, e.g. `["cat", "grass", "sky"]`: one vocabulary
                for all the images. Without them the model segments into its default vocabulary.
            segmentation_maps (*optional*): label maps for the images.
            kwargs: the image processor's settings (e.g. `do_reduce_labels=True`) and the tokenizer's arguments,
                flat or as `images_kwargs` / `text_kwargs`; `return_tensors` (`"pt"` by default, `"np"` or `None`)
                applies to both. Passing `templates` here is deprecated: set `processor.templates`.

        Returns:
            [`BatchFeature`] with `pixel_values` (and `labels`, `pixel_mask`) from the image processor and, with
            `text`, `input_ids` and `attention_mask` of shape `(num_classes, num_templates, sequence_length)` and
            `seen_class_mask` of shape `(num_classes,)`.
        """
        templates = kwargs.pop("templates", None)
        if templates is not None:
            warnings.warn(
                "Passing `templates` to CascadeClipProcessor.__call__ is deprecated and will stop working in the "
                "next release: set `processor.templates` (or build the processor with `templates=...`) instead.",
                FutureWarning,
                stacklevel=2,
            )
        if images is None and text is None:
            raise ValueError("Pass images, text (class names), or both.")
        output_kwargs = self._merge_kwargs(
            CascadeClipProcessorKwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs
        )

        data = {}
        if images is not None:
            data.update(
                self.image_processor(images, segmentation_maps=segmentation_maps, **output_kwargs["images_kwargs"])
            )
        if text is not None:
            text_kwargs = output_kwargs["text_kwargs"]
            class_names = self.check_class_names(text)
            data.update(
                tokenize_class_prompts(self.tokenizer, class_names, templates or self.templates, **text_kwargs)
            )
            mask = self.seen_class_mask(class_names)
            return_tensors = text_kwargs.get("return_tensors")
            data["seen_class_mask"] = (
                mask if return_tensors == "pt" else mask.numpy() if return_tensors else mask.tolist()
            )
        return BatchFeature(data=data)

    def post_process_semantic_segmentation(self, outputs, target_sizes=None, return_segmentation_scores=False):
        """See [`CascadeClipImageProcessor.post_process_semantic_segmentation`]."""
        return self.image_processor.post_process_semantic_segmentation(
            outputs, target_sizes=target_sizes, return_segmentation_scores=return_segmentation_scores
        )

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "input_ids", "attention_mask", "seen_class_mask"]


__all__ = ["CascadeClipProcessor"]
