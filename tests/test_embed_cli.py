"""`cascade-clip embed`: where it writes is named as the user gave it, and its counts agree with their nouns."""

import logging

from cascade_clip_hf.cli import main
from cascade_clip_hf.errors import counted


def embed(*argv) -> int:
    return main(["embed", *map(str, argv)])


def lines(caplog, level: int) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno == level]


def test_an_output_folder_is_refused_asking_for_a_safetensors_file_in_it(tmp_path, tiny_hub_model_dir, caplog):
    folder = tmp_path / "vocabularies"
    folder.mkdir()
    assert embed("--model", tiny_hub_model_dir, "--labels", "cat,dog", "--output", folder) == 2
    assert lines(caplog, logging.ERROR) == [
        f"error: --output {folder} is a folder: name the .safetensors file to write the vocabulary to, e.g. "
        f"{folder / 'vocabulary.safetensors'}."
    ]
    assert list(folder.iterdir()) == []


def test_a_count_of_one_takes_the_singular(tmp_path, tiny_hub_model_dir, caplog):
    caplog.set_level(logging.INFO)
    output = tmp_path / "cat.safetensors"
    assert embed("--model", tiny_hub_model_dir, "--labels", "cat", "--templates", "a {}.", "--output", output) == 0
    assert f"Embedded 1 class in 1 template into {output}." in lines(caplog, logging.INFO)


def test_counted_words_a_count_with_its_noun():
    assert [counted(count, "template") for count in (0, 1, 2)] == ["0 templates", "1 template", "2 templates"]
    assert [counted(count, "class", "classes") for count in (1, 171)] == ["1 class", "171 classes"]
