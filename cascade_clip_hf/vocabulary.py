"""Class vocabularies: class names and prompt templates, which classes were seen in training, and class embeddings,
embedded once and kept in files (`ClassVocabulary`, written by `cascade-clip embed`)."""

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Formatter

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers import CLIPTokenizer
from transformers.utils import logging

from .atomic import VOCABULARY, output_files, shown
from .errors import counted
from .hub import pretrained_options
from .pipeline_cascade_clip import check_class_embeds


logger = logging.get_logger(__name__)

# The original's template for a single prompt per class.
DEFAULT_TEMPLATES = ("a photo of a {}.",)
# CLIP's text tower has 77 positions.
CLIP_CONTEXT_LENGTH = 77
# Class embeddings this close (cosine similarity) are one class to the model. Distinct classes of the real CLIP stay
# well below (e.g. "table" and "dining table": 0.97); a tokenizer that cannot read the names reaches 1.
SAME_CLASS_SIMILARITY = 0.999
# The similarities of this many classes to all others are computed at a time.
SIMILARITY_BLOCK_ROWS = 1024
# What a vocabulary file's metadata says it is, and the version of its layout.
VOCABULARY_FORMAT = "cascade-clip-vocabulary/1"


def normalize_class_name(name: str) -> str:
    """The form two class names are compared in: CLIP's tokenizer lowercases and collapses whitespace."""
    return " ".join(name.split()).lower()


def string_list(values, source: str, example: str) -> list[str]:
    """
    `values` as a list of strings (one string is a list of one), or a clear error naming `source` and giving
    `example` of what it should hold.
    """
    if isinstance(values, str):
        return [values]
    if not isinstance(values, Iterable) or isinstance(values, Mapping):
        raise ValueError(f"{source} must be a list of strings, e.g. {example}; got {shown_value(values)}.")
    values = list(values)
    not_strings = [value for value in values if not isinstance(value, str)]
    if not_strings:
        raise ValueError(
            f"The entries of {source} must be strings, e.g. {example}; got {shown_value(not_strings[0])} among them."
        )
    return values


def shown_value(value) -> str:
    """A value as an error shows it: its type, and its start when it is long."""
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def check_class_names(class_names: str | Sequence[str], source: str = "class_names") -> list[str]:
    """
    Returns the class names as a list, or raises a clear error naming `source` (the argument, option or field
    they came from) for empty, non-string or duplicate names.
    """
    class_names = string_list(class_names, source, "['cat', 'grass']")
    if not class_names:
        raise ValueError(f"No class names were given in {source}: pass at least one, e.g. ['cat', 'grass'].")
    empty = [index for index, name in enumerate(class_names) if not name.strip()]
    if empty:
        raise ValueError(f"Class names at positions {empty} of {source} are empty: name those classes or drop them.")
    seen, duplicates = set(), []
    for name in class_names:
        key = normalize_class_name(name)
        if key in seen:
            duplicates.append(name)
        seen.add(key)
    if duplicates:
        raise ValueError(
            f"Duplicate class names in {source} (compared ignoring case and spacing): {duplicates}; keep one of each."
        )
    return class_names


def check_templates(templates: str | Sequence[str], source: str = "templates") -> list[str]:
    """
    Returns the prompt templates as a list, or raises a clear error naming `source` and the first bad template:
    each needs exactly one `{}` where the class name goes, and no other replacement field (`{0}`, `{x}`) or lone
    brace (a literal brace is written twice, `{{`).
    """
    templates = string_list(templates, source, "['a photo of a {}.']")
    if not templates:
        raise ValueError(f"No templates were given in {source}: pass at least one, e.g. ['a photo of a {{}}.'].")
    for template in templates:
        try:
            fields = [field[1:] for field in Formatter().parse(template) if field[1] is not None]
        except ValueError:  # a lone '{' or '}'
            fields = None
        if fields != [("", "", None)]:
            raise ValueError(
                f"Template {template!r} in {source} needs exactly one '{{}}' where the class name goes and no other "
                "braces (write a literal brace twice, '{{' or '}}'), e.g. 'a photo of a {}.'."
            )
    return templates


def check_seen_classes(
    seen_classes: Sequence[str], class_names: Sequence[str] | None = None, source: str = "seen_classes"
) -> list[str]:
    """
    Returns the names of the classes seen in training as a list, or raises a clear error naming `source` when they
    are not strings or, given `class_names`, not among them (compared ignoring case and spacing).
    """
    seen_classes = string_list(seen_classes, source, "['cat', 'grass']")
    if class_names is not None:
        known = {normalize_class_name(name) for name in class_names}
        unknown = [name for name in seen_classes if normalize_class_name(name) not in known]
        if unknown:
            raise ValueError(f"{source} names classes that are not class names: {unknown[:5]}.")
    return seen_classes


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
    options = {**pretrained_options(name_or_path, "tokenizer_config.json"), **kwargs}
    tokenizer = CLIPTokenizer.from_pretrained(name_or_path, **options)
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


def unreadable_names_warning(tokenizer, class_names: Sequence[str]) -> str | None:
    """
    The warning, naming a few and counting all, about class names the tokenizer reads partly as its unknown token
    (its `unk_token_id`): words or characters outside its vocabulary; None when it reads them all. CLIP's byte-level
    tokenizer reads anything; a small vocabulary such as the shipped toy model's does not, and its unknown token is
    also the end of the text, where CLIP's text tower stops reading, so "class 0" ... "class 199" all read as "clas".
    """
    if tokenizer.unk_token_id is None:
        return None
    unreadable = [
        name
        for name in class_names
        if tokenizer.unk_token_id in tokenizer(name.strip(), add_special_tokens=False)["input_ids"]
    ]
    if not unreadable:
        return None
    quoted = ", ".join(repr(name) for name in unreadable[:NAMES_QUOTED])
    more = f" and {len(unreadable) - NAMES_QUOTED} more" if len(unreadable) > NAMES_QUOTED else ""
    return (
        f"The tokenizer cannot read {len(unreadable)} of {len(class_names)} class names ({quoted}{more}): words or "
        "characters outside its vocabulary become its unknown token, so these names lose their meaning and may all "
        "embed alike; use words the model's tokenizer knows."
    )


def warn_unreadable_names(tokenizer, class_names: Sequence[str]) -> None:
    """Logs `unreadable_names_warning`, if any."""
    warning = unreadable_names_warning(tokenizer, class_names)
    if warning:
        # Once per vocabulary: a run checks its vocabulary, then tokenizes it again for every batch.
        logger.warning_once(warning)


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


def same_class_pairs(class_embeds: torch.Tensor, class_names: Sequence[str] | None = None) -> list[str]:
    """
    The pairs of classes whose embeddings the model cannot tell apart (cosine similarity of at least
    `SAME_CLASS_SIMILARITY`), as `"'a' and 'b'"`.

    Args:
        class_embeds (`torch.Tensor` of shape `(num_classes, projection_dim)`).
        class_names (`list[str]`, *optional*): to name the classes; their positions otherwise.
    """
    unit_embeds = torch.nn.functional.normalize(class_embeds.float(), dim=-1)
    num_classes = len(unit_embeds)
    names = list(class_names) if class_names is not None else [f"class {index}" for index in range(num_classes)]
    pairs = []
    # Row blocks of the similarity matrix: memory stays bounded for vocabularies of tens of thousands of names.
    for start in range(0, num_classes, SIMILARITY_BLOCK_ROWS):
        similarity = unit_embeds[start : start + SIMILARITY_BLOCK_ROWS] @ unit_embeds.T
        same = torch.triu(similarity >= SAME_CLASS_SIMILARITY, diagonal=start + 1)
        pairs += [(start + i, j) for i, j in same.nonzero().tolist()]
    return [f"{names[i]!r} and {names[j]!r}" for i, j in pairs]


def check_distinct_class_embeddings(class_embeds: torch.Tensor, class_names: Sequence[str] | None = None) -> None:
    """
    Refuses a vocabulary in which two classes have the same embedding (see `same_class_pairs`): the model could
    not tell them apart, and one would win every pixel of both.

    Raises:
        ValueError: naming up to five such pairs.
    """
    pairs = same_class_pairs(class_embeds, class_names)
    if not pairs:
        return
    raise ValueError(
        f"{counted(len(pairs), 'pair')} of classes {'has' if len(pairs) == 1 else 'have'} the same text embedding "
        "(cosine similarity of at least "
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
        ValueError: naming the file, when it cannot be read or does not hold such embeddings (see
            `check_class_embeds`).
    """
    try:
        embeddings = np.load(path)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot be read as a .npy array ({error}).") from error
    return check_class_embeds(embeddings, num_classes, projection_dim, source=f"{path}").float()


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

    def __post_init__(self):
        """
        Checks every field, whatever made the vocabulary (`embed_vocabulary`, a file, a caller).

        Raises:
            ValueError: one line naming the field that is wrong.
        """
        class_names = check_class_names(self.class_names)
        checked = {
            "class_names": class_names,
            "class_embeds": check_class_embeds(self.class_embeds, len(class_names)),
            "templates": check_templates(self.templates),
            "seen_classes": check_seen_classes(self.seen_classes, class_names),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)
        if not isinstance(self.text_tower_fingerprint, str) or not self.text_tower_fingerprint:
            raise ValueError(
                "text_tower_fingerprint must be the text tower's fingerprint (see `text_tower_fingerprint`), got "
                f"{shown_value(self.text_tower_fingerprint)}."
            )

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
        "content_digest": content_digest(vocabulary),
    }
    with output_files(path.parent, VOCABULARY) as staging:
        save_file({"class_embeds": vocabulary.class_embeds.contiguous()}, staging / path.name, metadata=metadata)


def content_digest(vocabulary: ClassVocabulary) -> str:
    """A sha256 (hex) of a vocabulary's names, templates, seen classes and embeddings together: what ties each name
    to its row, so that a file edited by hand (names reordered, say) is not read as the vocabulary it was."""
    listed = json.dumps([vocabulary.class_names, vocabulary.templates, vocabulary.seen_classes])
    return digest_tensors([(listed, vocabulary.class_embeds)])


def load_vocabulary(path: str | os.PathLike) -> ClassVocabulary:
    """
    Reads a vocabulary written by `save_vocabulary` (`cascade-clip embed`), every field checked (see
    `ClassVocabulary`). Classes the model cannot tell apart only warn: the file holds what the model made.

    Raises:
        ValueError: one line naming the file and what is wrong in it (the field, for metadata or embeddings that do
            not make a vocabulary), when it is missing, damaged, or not such a vocabulary.
    """
    name = shown(path)
    if not Path(path).is_file():
        raise ValueError(f"{name}: no such vocabulary file (write one with `cascade-clip embed`).")
    try:
        with safe_open(path, framework="pt") as file:
            metadata = file.metadata() or {}
            if metadata.get("format") != VOCABULARY_FORMAT:
                raise ValueError("not written by `cascade-clip embed`")
            if "class_embeds" not in file.keys():
                raise ValueError("it has no class_embeds tensor")
            class_embeds = file.get_tensor("class_embeds")
        vocabulary = ClassVocabulary(
            class_names=metadata_json(metadata, "class_names"),
            class_embeds=class_embeds,
            templates=metadata_json(metadata, "templates"),
            seen_classes=metadata_json(metadata, "seen_classes"),
            text_tower_fingerprint=metadata_text(metadata, "text_tower_fingerprint"),
            model_name=metadata.get("model", ""),
            tokenizer_name=metadata.get("tokenizer", ""),
        )
        if metadata_text(metadata, "content_digest") != content_digest(vocabulary):
            raise ValueError(
                "its names, templates, seen classes or embeddings were changed after `cascade-clip embed` wrote them"
            )
    except (SafetensorError, OSError, ValueError) as error:
        reason = " ".join(str(error).split()).rstrip(".")
        raise ValueError(
            f"{name}: not a readable class vocabulary ({reason}); write it again with `cascade-clip embed`."
        ) from error
    pairs = same_class_pairs(vocabulary.class_embeds, vocabulary.class_names)
    if pairs:
        logger.warning(
            f"{name}: {counted(len(pairs), 'pair')} of classes {'has' if len(pairs) == 1 else 'have'} the same "
            f"embedding, e.g. {'; '.join(pairs[:5])}: the model "
            "cannot tell them apart; embed them again with the model's own tokenizer, or rename them."
        )
    return vocabulary


def metadata_text(metadata: dict[str, str], field: str) -> str:
    """A field of a vocabulary file's metadata, which must be there."""
    if field not in metadata:
        raise ValueError(f"its metadata has no {field} field")
    return metadata[field]


def metadata_json(metadata: dict[str, str], field: str):
    """A JSON field of a vocabulary file's metadata, decoded."""
    try:
        return json.loads(metadata_text(metadata, field))
    except json.JSONDecodeError as error:
        raise ValueError(f"its metadata field {field} is not JSON ({error})") from error


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
