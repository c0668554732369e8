"""Class vocabularies: class names and prompt templates, which classes were seen in training, and class embeddings,
embedded once and kept in files (`ClassVocabulary`, written by `cascade-clip embed`)."""

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers import CLIPTokenizer
from transformers.utils import logging

from .atomic import output_files, shown


logger = logging.get_logger(__name__)

# The original's template for a single prompt per class.
DEFAULT_TEMPLATES = ("a photo of a {}.",)
# CLIP's text tower has 77 positions.
CLIP_CONTEXT_LENGTH = 77
# Class embeddings this close (cosine similarity) are one class to the model. Distinct classes of the real CLIP stay
# well below (e.g. "table" and "dining table": 0.97); a tokenizer that cannot read the names reaches 1.
SAME_CLASS_SIMILARITY = 0.999
# What a vocabulary file's metadata says it is, and the version of its layout.
VOCABULARY_FORMAT = "cascade-clip-vocabulary/1"


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


def load_tokenizer(name_or_path: str | os.PathLike, **kwargs) -> CLIPTokenizer:
    """
    A CLIP tokenizer from a folder or Hub id, checked to have a vocabulary.

    Raises:
        ValueError: naming `name_or_path`, when it holds no tokenizer files (transformers would otherwise build a
            tokenizer of only its special tokens, which reads every class name the same).
    """
    tokenizer = CLIPTokenizer.from_pretrained(name_or_path, **kwargs)
    check_tokenizer(tokenizer, str(name_or_path))
    return tokenizer


def check_tokenizer(tokenizer, source: str) -> None:
    """Raises a clear error for a tokenizer that has nothing but special tokens (its files were missing)."""
    if tokenizer.vocab_size <= len(set(tokenizer.all_special_ids)):
        raise ValueError(
            f"{source}: no tokenizer vocabulary found (vocab.json and merges.txt, or tokenizer.json); pass the "
            "tokenizer of the CLIP the model was trained from, e.g. --tokenizer openai/clip-vit-base-patch16."
        )


# How many unreadable class names a warning quotes; it counts them all.
NAMES_QUOTED = 5


def warn_unreadable_names(tokenizer, class_names: Sequence[str]) -> None:
    """
    Warns, naming a few and counting all, about class names the tokenizer reads partly as its unknown token (its
    `unk_token_id`): words or characters outside its vocabulary. CLIP's byte-level tokenizer reads anything; a
    small vocabulary such as the shipped toy model's does not, and its unknown token is also the end of the text,
    where CLIP's text tower stops reading, so "class 0" ... "class 199" all read as "clas".
    """
    if tokenizer.unk_token_id is None:
        return
    unreadable = [
        name
        for name in class_names
        if tokenizer.unk_token_id in tokenizer(name.strip(), add_special_tokens=False)["input_ids"]
    ]
    if unreadable:
        quoted = ", ".join(repr(name) for name in unreadable[:NAMES_QUOTED])
        more = f" and {len(unreadable) - NAMES_QUOTED} more" if len(unreadable) > NAMES_QUOTED else ""
        # Once per vocabulary: a run checks its vocabulary, then tokenizes it again for every batch.
        logger.warning_once(
            f"The tokenizer cannot read {len(unreadable)} of {len(class_names)} class names ({quoted}{more}): "
            "words or characters outside its vocabulary become its unknown token, so these names lose their "
            "meaning and may all embed alike; use words the model's tokenizer knows."
        )


def tokenize_class_prompts(
    tokenizer,
    class_names: Sequence[str],
    templates: Sequence[str],
    max_length: int | None = CLIP_CONTEXT_LENGTH,
    **tokenizer_kwargs,
) -> dict:
    """
    Fills every template with every class name and tokenizes the prompts.

    Args:
        max_length (`int`, *optional*, defaults to 77): the longest prompt kept (CLIP's text tower has 77
            positions); `None` also means 77, as a tokenizer's saved `max_length: null` means unset.
        tokenizer_kwargs: the tokenizer's other arguments; by default prompts are padded to the longest,
            truncated, and returned as PyTorch tensors.

    Returns:
        `input_ids` and `attention_mask` (and whatever else the tokenizer is asked for), each of shape
        `(num_classes, num_templates, sequence_length)`: tensors or arrays, or per-class lists of per-template
        lists with `return_tensors=None`.
    """
    class_names = check_class_names(class_names)
    templates = check_templates(templates)
    warn_unreadable_names(tokenizer, class_names)
    prompts = [template.format(name.strip()) for name in class_names for template in templates]
    tokenizer_kwargs = {"padding": True, "truncation": True, "return_tensors": "pt", **tokenizer_kwargs}
    tokens = tokenizer(prompts, max_length=max_length or CLIP_CONTEXT_LENGTH, **tokenizer_kwargs)
    return {key: prompts_by_class(values, len(templates)) for key, values in tokens.items()}


def prompts_by_class(values, num_templates: int):
    """Per-prompt values (classes times templates, class-major) grouped by class."""
    if isinstance(values, (torch.Tensor, np.ndarray)):
        return values.reshape(-1, num_templates, *values.shape[1:])
    return [list(values[start : start + num_templates]) for start in range(0, len(values), num_templates)]


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
    tokens = {name: tensor.to(model.device) for name, tensor in tokens.items()}
    return model.get_class_embeddings(**tokens, class_names=list(class_names))


def check_distinct_class_embeddings(class_embeds: torch.Tensor, class_names: Sequence[str] | None = None) -> None:
    """
    Refuses a vocabulary in which two classes have the same embedding (cosine similarity of at least
    `SAME_CLASS_SIMILARITY`): the model could not tell them apart, and one would win every pixel of both.

    Args:
        class_embeds (`torch.Tensor` of shape `(num_classes, projection_dim)`): L2-normalised.
        class_names (`list[str]`, *optional*): to name the classes; their positions otherwise.

    Raises:
        ValueError: naming up to five such pairs.
    """
    similarity = class_embeds.float() @ class_embeds.float().T
    first, second = torch.triu(similarity >= SAME_CLASS_SIMILARITY, diagonal=1).nonzero(as_tuple=True)
    if first.numel() == 0:
        return
    names = list(class_names) if class_names is not None else [f"class {index}" for index in range(len(similarity))]
    pairs = [f"{names[i]!r} and {names[j]!r}" for i, j in zip(first.tolist(), second.tolist(), strict=True)]
    raise ValueError(
        f"{len(pairs)} pairs of classes have the same text embedding (cosine similarity of at least "
        f"{SAME_CLASS_SIMILARITY}), e.g. {'; '.join(pairs[:5])}: the model cannot tell them apart. Most often the "
        "tokenizer reads their names the same (unknown characters, or a tokenizer without its vocabulary files): "
        "rename them, or use the model's own tokenizer."
    )


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


def digest_tensors(named_tensors: Iterable[tuple[str, torch.Tensor | None]]) -> str:
    """A sha256 (hex) of named tensors: each name, dtype, shape and the bytes of its values; `None` counts as such."""
    digest = hashlib.sha256()
    for name, tensor in named_tensors:
        if tensor is None:
            digest.update(f"{name}:none;".encode())
            continue
        digest.update(f"{name}:{tensor.dtype}{tuple(tensor.shape)};".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def text_tower_fingerprint(model) -> str:
    """
    A sha256 (hex) of the text tower's weights: their names, dtypes, shapes and bytes. Computed once for each state
    of the weights (see `CascadeClipForZeroShotSegmentation.text_tower_memo`): equal fingerprints, equal embeddings.
    """
    return model.text_tower_memo(
        ("text_tower_fingerprint",), lambda: digest_tensors(sorted(model.text_encoder.state_dict().items()))
    )


@dataclass(frozen=True)
class ClassVocabulary:
    """
    A vocabulary embedded once, for a model whose text tower has the weights `text_tower_fingerprint` names.

    Args:
        class_names (`list[str]`): the classes, in the order of the embeddings' rows.
        class_embeds (`torch.FloatTensor` of shape `(num_classes, projection_dim)`): L2-normalised.
        templates (`list[str]`): the prompt templates the names were embedded in.
        seen_classes (`list[str]`): those of `class_names` the model was trained on (its processor's word).
        text_tower_fingerprint (`str`): see `text_tower_fingerprint`.
        model_name (`str`): the model it was embedded with, for information.
        tokenizer_name (`str`): its tokenizer, for information.
    """

    class_names: list[str]
    class_embeds: torch.Tensor
    templates: list[str]
    seen_classes: list[str]
    text_tower_fingerprint: str
    model_name: str = ""
    tokenizer_name: str = ""

    @property
    def seen_class_mask(self) -> torch.Tensor:
        """`(num_classes,)` booleans: which classes were seen in training."""
        return seen_class_mask(self.class_names, self.seen_classes)


@torch.no_grad()
def embed_vocabulary(
    model, processor, class_names: Sequence[str], templates: Sequence[str] | None = None, model_name: str = ""
) -> ClassVocabulary:
    """
    Embeds class names with a model's text tower, in its processor's templates unless `templates` are given.

    Raises:
        ValueError: for bad names or templates, or classes the model cannot tell apart.
    """
    class_names = check_class_names(class_names)
    templates = check_templates(templates or processor.templates)
    class_embeds = embed_class_names(model, processor.tokenizer, class_names, templates)
    seen = processor.seen_class_mask(class_names).tolist()
    return ClassVocabulary(
        class_names=class_names,
        class_embeds=class_embeds.cpu(),
        templates=templates,
        seen_classes=[name for name, is_seen in zip(class_names, seen, strict=True) if is_seen],
        text_tower_fingerprint=text_tower_fingerprint(model),
        model_name=model_name,
        tokenizer_name=str(processor.tokenizer.name_or_path),
    )


def save_vocabulary(vocabulary: ClassVocabulary, path: str | os.PathLike) -> None:
    """
    Writes a vocabulary to a safetensors file: the tensor `class_embeds` and the rest as metadata. The write is
    atomic and replaces only a file this program wrote (see `cascade_clip_hf.atomic.output_files`).

    Raises:
        `OutputFolderError`: when `path` is a file this program did not write.
    """
    path = Path(path)
    metadata = {
        "format": VOCABULARY_FORMAT,
        "class_names": json.dumps(vocabulary.class_names),
        "templates": json.dumps(vocabulary.templates),
        "seen_classes": json.dumps(vocabulary.seen_classes),
        "text_tower_fingerprint": vocabulary.text_tower_fingerprint,
        "model": vocabulary.model_name,
        "tokenizer": vocabulary.tokenizer_name,
    }
    with output_files(path.parent) as staging:
        save_file({"class_embeds": vocabulary.class_embeds.contiguous()}, staging / path.name, metadata=metadata)


def load_vocabulary(path: str | os.PathLike) -> ClassVocabulary:
    """
    Reads a vocabulary written by `save_vocabulary` (`cascade-clip embed`).

    Raises:
        ValueError: one line naming the file, when it is missing, damaged, or not such a vocabulary.
    """
    name = shown(path)
    if not Path(path).is_file():
        raise ValueError(f"{name}: no such vocabulary file (write one with `cascade-clip embed`).")
    try:
        with safe_open(path, framework="pt") as file:
            metadata = file.metadata() or {}
            if metadata.get("format") != VOCABULARY_FORMAT:
                raise ValueError("not written by `cascade-clip embed`")
            class_embeds = file.get_tensor("class_embeds")
        vocabulary = ClassVocabulary(
            class_names=check_class_names(json.loads(metadata["class_names"])),
            class_embeds=class_embeds,
            templates=check_templates(json.loads(metadata["templates"])),
            seen_classes=json.loads(metadata["seen_classes"]),
            text_tower_fingerprint=metadata["text_tower_fingerprint"],
            model_name=metadata.get("model", ""),
            tokenizer_name=metadata.get("tokenizer", ""),
        )
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as error:
        reason = f"no {error} entry" if isinstance(error, KeyError) else " ".join(str(error).split())
        raise ValueError(
            f"{name}: not a readable class vocabulary ({reason}); write it again with `cascade-clip embed`."
        ) from error
    if class_embeds.dim() != 2 or class_embeds.shape[0] != len(vocabulary.class_names):
        raise ValueError(
            f"{name}: holds class embeddings of shape {tuple(class_embeds.shape)} for "
            f"{len(vocabulary.class_names)} class names; write it again with `cascade-clip embed`."
        )
    return vocabulary


def check_vocabulary_fits(vocabulary: ClassVocabulary, model, processor, source: str | os.PathLike) -> None:
    """
    Refuses a vocabulary made for another model: its embeddings must have the model's `projection_dim` and come
    from the same text-tower weights (fingerprint), and its seen classes must be those the model's processor names.
    Templates other than the processor's only warn: the embeddings are still the model's own.

    Raises:
        ValueError: one line naming `source` and how to make a vocabulary that fits.
    """
    name = shown(source)
    redo = "re-run `cascade-clip embed` with this model (and the --dtype it runs in)"
    projection_dim = model.config.projection_dim
    if vocabulary.class_embeds.shape[-1] != projection_dim:
        raise ValueError(
            f"{name}: its class embeddings have {vocabulary.class_embeds.shape[-1]} dimensions, this model's "
            f"{projection_dim}: it was made for another model; {redo}."
        )
    if vocabulary.text_tower_fingerprint != text_tower_fingerprint(model):
        dtype = str(vocabulary.class_embeds.dtype).removeprefix("torch.")
        raise ValueError(
            f"{name}: embedded by other text-tower weights than this model's (made with "
            f"{vocabulary.model_name or 'an unknown model'} in {dtype}); {redo}, or load the model in {dtype} if it "
            "is the one the vocabulary was made with."
        )
    expected = processor.seen_class_mask(vocabulary.class_names)
    if not torch.equal(vocabulary.seen_class_mask, expected):
        expected_names = [n for n, seen in zip(vocabulary.class_names, expected.tolist(), strict=True) if seen]
        raise ValueError(
            f"{name}: counts {vocabulary.seen_classes[:5]} as seen classes, this model's processor "
            f"{expected_names[:5]}; {redo}."
        )
    if list(vocabulary.templates) != list(processor.templates):
        logger.warning(
            f"{name}: embedded in other templates ({len(vocabulary.templates)}) than this model's processor uses "
            f"({len(processor.templates)}); used as it is."
        )
