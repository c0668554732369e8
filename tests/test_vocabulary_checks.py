"""Bad vocabularies are refused in one line that names what is wrong and where: prompt templates wherever they come
from, and vocabulary files (`cascade-clip embed`) whose metadata or embeddings were damaged or edited."""

import json
import logging
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from cascade_clip_hf import CascadeClipConfig, CascadeClipImageProcessor, CascadeClipProcessor
from cascade_clip_hf.cli import main
from cascade_clip_hf.vocabulary import (
    VOCABULARY_FORMAT,
    ClassVocabulary,
    check_distinct_class_embeddings,
    check_templates,
    content_digest,
    load_class_embeddings,
    load_vocabulary,
    tokenize_class_prompts,
)

from .helpers import random_image


NAMES = ["cat", "dog", "grass"]
# Each lacks exactly one plain '{}', or has a brace that str.format reads as another field or cannot read.
BAD_TEMPLATES = ["{x} {}", "{} }", "a photo", "{} and {}", "{0}", "a {{}}", "{:>9}", "{!r}", "{"]


@pytest.mark.parametrize("template", BAD_TEMPLATES)
def test_a_bad_template_is_quoted_with_what_it_needs(template, clip_tokenizer):
    expected = f"Template {re.escape(repr(template))} in my_templates needs exactly one '{{}}' where the class name"
    expected = expected.replace("{}", r"\{\}")
    with pytest.raises(ValueError, match=expected):
        check_templates(["a {}.", template], "my_templates")
    for build in (
        lambda: CascadeClipProcessor(CascadeClipImageProcessor(), clip_tokenizer, templates=[template]),
        lambda: tokenize_class_prompts(clip_tokenizer, NAMES, [template]),
    ):
        with pytest.raises(ValueError, match=r"in templates needs exactly one '\{\}'"):
            build()
    with pytest.raises(Exception, match=r"needs exactly one '\{\}'"):
        CascadeClipConfig(templates=[template])


def test_good_templates_fill_in_the_class_name(clip_tokenizer):
    templates = ["{}", "a {{curly}} {}.", "a photo of a {}."]
    assert check_templates(templates) == templates
    assert check_templates("a {}.") == ["a {}."]
    tokens = tokenize_class_prompts(clip_tokenizer, ["cat"], templates, padding=False, return_tensors=None)
    assert tokens["input_ids"][0] == clip_tokenizer(["cat", "a {curly} cat.", "a photo of a cat."])["input_ids"]


@pytest.mark.parametrize("templates, message", [([], "No templates were given in templates"), (["a {}", 3], "int 3")])
def test_missing_or_non_string_templates_are_named(templates, message):
    with pytest.raises(ValueError, match=message):
        check_templates(templates)


def test_embed_names_a_bad_template_option_in_one_line(tmp_path, tiny_hub_model_dir, caplog):
    output = tmp_path / "vocab.safetensors"
    code = main(
        ["embed", "--labels", "cat,dog", "--model", str(tiny_hub_model_dir), "--output", str(output)]
        + [
            "--templates",
            "a {}.",
            "{x} {}",
        ]
    )
    assert code == 2
    [error] = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert "'{x} {}'" in error and "--templates" in error and "exactly one '{}'" in error and "\n" not in error
    assert not output.exists()


def vocabulary_metadata(**changes) -> dict[str, str]:
    """A vocabulary file's metadata for `NAMES`, with `changes` (a value of None removes the field)."""
    metadata = {
        "format": VOCABULARY_FORMAT,
        "class_names": json.dumps(NAMES),
        "templates": json.dumps(["a photo of a {}."]),
        "seen_classes": json.dumps(["dog"]),
        "text_tower_fingerprint": "0" * 64,
        "model": "tiny",
        "tokenizer": "tiny",
    }
    metadata.update(changes)
    return {key: value for key, value in metadata.items() if value is not None}


def unit_embeds(num_classes: int = len(NAMES), seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(num_classes, 16, generator=torch.Generator().manual_seed(seed)), dim=-1)


def write_vocabulary(path, class_embeds: torch.Tensor | None = None, **changes):
    """A vocabulary file as `cascade-clip embed` writes one, its content digest included, then `changes`."""
    class_embeds = unit_embeds() if class_embeds is None else class_embeds
    try:
        written = ClassVocabulary(NAMES, class_embeds, ["a photo of a {}."], ["dog"], "0" * 64, "tiny", "tiny")
        digest = content_digest(written)
    except ValueError:  # embeddings no vocabulary holds: refused before their digest is read
        digest = "0" * 64
    metadata = vocabulary_metadata(**{"content_digest": digest, **changes})
    save_file({"class_embeds": class_embeds}, path, metadata)
    return path


def test_an_untouched_vocabulary_file_loads(tmp_path):
    vocabulary = load_vocabulary(write_vocabulary(tmp_path / "vocab.safetensors"))
    assert vocabulary.class_names == NAMES and vocabulary.seen_classes == ["dog"]
    assert vocabulary.seen_class_mask.tolist() == [False, True, False]


@pytest.mark.parametrize(
    "changes",
    [
        {"class_names": json.dumps(NAMES[::-1])},  # each name now beside another's embedding
        {"templates": json.dumps(["a {}."])},
        {"content_digest": None},
    ],
)
def test_a_vocabulary_file_edited_by_hand_is_refused(tmp_path, changes):
    path = write_vocabulary(tmp_path / "vocab.safetensors", **changes)
    with pytest.raises(ValueError) as error:
        load_vocabulary(path)
    assert str(error.value).startswith(f"{path}: not a readable class vocabulary (its ")


with_nan = unit_embeds()
with_nan[1, 3] = float("nan")
with_inf = unit_embeds()
with_inf[2, 0] = float("inf")

DAMAGED = {
    "seen classes a JSON number": ({"seen_classes": "5"}, None, "seen_classes must be a list of strings"),
    "seen classes a string": ({"seen_classes": '"5"'}, None, "seen_classes names classes that are not class names"),
    "seen classes not among the names": ({"seen_classes": '["sky"]'}, None, r"not class names: \['sky'\]"),
    "names a number": ({"class_names": "7"}, None, "class_names must be a list of strings"),
    "names an object": ({"class_names": '{"cat": 1}'}, None, "class_names must be a list of strings"),
    "names not strings": ({"class_names": "[1, 2, 3]"}, None, "entries of class_names must be strings"),
    "names repeated": ({"class_names": '["cat", "Cat", "grass"]'}, None, "Duplicate class names in class_names"),
    "names not JSON": ({"class_names": "cat,dog,grass"}, None, "field class_names is not JSON"),
    "templates missing": ({"templates": None}, None, "has no templates field"),
    "template without a field": ({"templates": '["a photo"]'}, None, "Template 'a photo' in templates"),
    "templates a number": ({"templates": "3"}, None, "templates must be a list of strings"),
    "fingerprint missing": ({"text_tower_fingerprint": None}, None, "has no text_tower_fingerprint field"),
    "fingerprint empty": ({"text_tower_fingerprint": ""}, None, "text_tower_fingerprint must be"),
    "integer embeddings": ({}, torch.ones(3, 16, dtype=torch.int64), "class_embeds must hold floating-point"),
    "boolean embeddings": ({}, torch.ones(3, 16, dtype=torch.bool), "class_embeds must hold floating-point"),
    "NaN": ({}, with_nan, r"class_embeds holds NaN or infinite values \(rows \[1\]\)"),
    "infinity": ({}, with_inf, r"class_embeds holds NaN or infinite values \(rows \[2\]\)"),
    "one row too many": ({}, unit_embeds(4), r"shape \(3, embed_dim\).*got shape \(4, 16\)"),
    "a vector": ({}, unit_embeds()[0], r"shape \(3, embed_dim\).*got shape \(16,\)"),
    "three dimensions": ({}, unit_embeds()[None], r"shape \(3, embed_dim\).*got shape \(1, 3, 16\)"),
}


@pytest.mark.parametrize("changes, class_embeds, message", DAMAGED.values(), ids=DAMAGED.keys())
def test_a_damaged_vocabulary_file_is_named_with_its_bad_field(tmp_path, changes, class_embeds, message):
    path = write_vocabulary(tmp_path / "vocab.safetensors", class_embeds, **changes)
    with pytest.raises(ValueError, match=message) as error:
        load_vocabulary(path)
    text = str(error.value)
    assert text.startswith(f"{path}: not a readable class vocabulary (") and "\n" not in text
    assert text.endswith("write it again with `cascade-clip embed`.")


def test_classes_with_the_same_embedding_only_warn(tmp_path, caplog):
    class_embeds = unit_embeds()
    class_embeds[2] = class_embeds[0]
    with caplog.at_level(logging.WARNING):
        vocabulary = load_vocabulary(write_vocabulary(tmp_path / "vocab.safetensors", class_embeds))
    assert torch.equal(vocabulary.class_embeds, class_embeds)
    [warning] = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert "'cat' and 'grass'" in warning and "vocab.safetensors" in warning


def test_a_vocabulary_made_in_code_is_checked_too():
    fields = {
        "class_names": NAMES,
        "class_embeds": unit_embeds(),
        "templates": ["a {}."],
        "text_tower_fingerprint": "f",
    }
    assert ClassVocabulary(**fields, seen_classes=[]).seen_class_mask.tolist() == [False] * 3
    with pytest.raises(ValueError, match="seen_classes must be a list of strings"):
        ClassVocabulary(**fields, seen_classes=5)
    with pytest.raises(ValueError, match=r"class_embeds must be a tensor of shape \(3, embed_dim\)"):
        ClassVocabulary(**{**fields, "class_embeds": unit_embeds(2)}, seen_classes=[])


def test_segment_refuses_an_edited_vocabulary_of_its_own_model_in_one_line(tmp_path, tiny_hub_model_dir, caplog):
    """The seen classes edited in a file that otherwise fits the model: once a TypeError from deep inside."""
    vocabulary_file = tmp_path / "vocab.safetensors"
    model = ["--model", str(tiny_hub_model_dir)]
    assert main(["embed", "--labels", "bicycle,red thing", *model, "--output", str(vocabulary_file)]) == 0
    with safe_open(vocabulary_file, framework="pt") as file:
        metadata, class_embeds = file.metadata(), file.get_tensor("class_embeds")
    edited = tmp_path / "edited.safetensors"
    save_file({"class_embeds": class_embeds}, edited, {**metadata, "seen_classes": "5"})
    image = tmp_path / "image.png"
    random_image(20, 30, seed=1).save(image)
    code = main(["segment", str(image), *model, "--vocabulary", str(edited), "--output", str(tmp_path / "out")])
    assert code == 2
    [error] = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert error.startswith(f"error: {edited}: ") and "seen_classes" in error and "\n" not in error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "array, message",
    [
        (np.ones((3, 16), dtype=np.int32), "must hold floating-point numbers .* got a numpy array of int32"),
        (np.full((3, 16), np.nan, dtype=np.float32), "holds NaN or infinite values"),
        (np.ones((3, 15), dtype=np.float32), r"must be a tensor of shape \(3, 16\)"),
    ],
)
def test_npy_class_embeddings_are_checked_alike(tmp_path, array, message):
    path = tmp_path / "embeddings.npy"
    np.save(path, array)
    with pytest.raises(ValueError, match=f"{path} {message}"):
        load_class_embeddings(path, 3, 16)
    np.save(path, np.ones((3, 16), dtype=np.float16))
    assert load_class_embeddings(path, 3, 16).dtype == torch.float32


@pytest.mark.parametrize(("duplicates", "expected"), [(1, "1 pair of classes has"), (2, "2 pairs of classes have")])
def test_classes_with_one_embedding_are_counted_in_words_that_agree(duplicates, expected):
    class_embeds = unit_embeds(4)
    class_embeds[3] = class_embeds[0]
    if duplicates == 2:
        class_embeds[2] = class_embeds[1]
    with pytest.raises(ValueError, match=f"^{expected} the same text embedding"):
        check_distinct_class_embeddings(class_embeds, ["a", "b", "c", "d"])
