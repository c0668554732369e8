"""Class vocabularies: class names and prompt templates, which classes were seen in training, and class embeddings."""

import os
from collections.abc import Sequence

import numpy as np
import torch


# The original's template for a single prompt per class.
DEFAULT_TEMPLATES = ("a photo of a {}.",)
# CLIP's text tower has 77 positions.
CLIP_CONTEXT_LENGTH = 77


def normalize_class_name(name: str) -> str:
    """The form two class names are compared in: CLIP's tokenizer lowercases and collapses whitespace."""
    return " ".join(name.split()).lower()


def check_class_names(class_names: str | Sequence[str]) -> list[str]:
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


def check_templates(templates: str | Sequence[str]) -> list[str]:
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


def seen_class_names(class_names: Sequence[str], seen_class_ids: Sequence[int] | None) -> list[str]:
    """The names of the classes seen in training, from their ids; `None` means every class was seen."""
    if seen_class_ids is None:
        return list(class_names)
    return [class_names[class_id] for class_id in seen_class_ids]


def seen_class_mask(class_names: Sequence[str], seen_classes: Sequence[str] | None) -> torch.Tensor:
    """
    Which of `class_names` were seen in training: those among `seen_classes` (compared ignoring case and spacing);
    `None` means none.

    Returns:
        `torch.BoolTensor` of shape `(num_classes,)`.
    """
    seen = {normalize_class_name(name) for name in seen_classes or ()}
    return torch.tensor([normalize_class_name(name) in seen for name in class_names], dtype=torch.bool)


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


@torch.no_grad()
def embed_class_names(model, tokenizer, class_names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """
    Class embeddings of a vocabulary: every class name in every template through the model's text tower, each
    class's prompt embeddings L2-normalised, averaged and normalised again.

    Args:
        model ([`CascadeClipForZeroShotSegmentation`]): its text tower embeds the prompts.
        tokenizer ([`CLIPTokenizer`]): the model's tokenizer.

    Returns:
        `torch.FloatTensor` of shape `(num_classes, projection_dim)` on the model's device.
    """
    tokens = tokenize_class_prompts(tokenizer, class_names, templates)
    return model.get_text_features(**{name: tensor.to(model.device) for name, tensor in tokens.items()})


def load_class_embeddings(path: str | os.PathLike, num_classes: int, projection_dim: int) -> torch.Tensor:
    """
    Reads precomputed class embeddings from an `.npy` file, as the original release ships them.

    Returns:
        `torch.FloatTensor` of shape `(num_classes, projection_dim)`.

    Raises:
        ValueError: naming the file, when it cannot be read or its shape does not fit.
    """
    try:
        embeddings = np.load(path)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot be read as a .npy array ({error}).") from error
    if embeddings.shape != (num_classes, projection_dim):
        raise ValueError(
            f"{path} holds embeddings of shape {embeddings.shape}, but {num_classes} classes of "
            f"{projection_dim} dimensions were expected."
        )
    return torch.from_numpy(embeddings.astype(np.float32))
