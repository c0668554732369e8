"""Bad vocabularies are refused in one line that names what is wrong and where: prompt templates wherever they come
from."""

import re

import pytest

from cascade_clip_hf import CascadeClipConfig, CascadeClipImageProcessor, CascadeClipProcessor
from cascade_clip_hf.cli import main
from cascade_clip_hf.vocabulary import check_templates, tokenize_class_prompts


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
