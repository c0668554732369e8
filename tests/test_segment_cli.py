import configparser
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from transformers import CLIPTokenizer

import cascade_clip_command
from cascade_clip_hf.cli import main
from cascade_clip_hf.segmenter import DEMO_MODEL
from cascade_clip_hf.vocabulary import warn_unreadable_names

from .helpers import CLIP_TOKENIZER, EXAMPLES, random_image, reference_segmentation


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    random_image(50, 80, seed=1).save(folder / "street.png")
    random_image(64, 40, seed=2).save(folder / "beach.jpg", quality=95)
    (folder / "notes.txt").write_text("not an image, and not picked up from a folder")
    return folder


def test_segment_writes_maps_overlays_and_fractions(tmp_path, photos, tiny_hub_model_dir):
    labels = ["bicycle", "red thing", "ocean"]
    output = tmp_path / "out"
    code = main(
        [
            "segment",
            str(photos),
            "--model",
            str(tiny_hub_model_dir),
            "--labels",
            ",".join(labels),
            "--output",
            str(output),
            "--batch-size",
            "2",
        ]
    )
    assert code == 0
    for name in ("street.png", "beach.jpg"):
        image = PIL.Image.open(photos / name).convert("RGB")
        class_map = np.asarray(PIL.Image.open(output / f"{name}_classes.png"))
        np.testing.assert_array_equal(class_map, reference_segmentation(tiny_hub_model_dir, image, labels))
        record = json.loads((output / f"{name}.json").read_text())
        assert record["class_names"] == labels
        assert (record["source"], record["input"]) == (name, str(photos))
        expected = np.bincount(class_map.ravel(), minlength=3) / class_map.size
        np.testing.assert_allclose([record["fractions"][label] for label in labels], expected)
        overlay = PIL.Image.open(output / f"{name}_overlay.png")
        assert overlay.height >= image.height and overlay.width > image.width  # the legend sits on the right


def test_segment_reports_bad_files_and_processes_the_others(tmp_path, photos, tiny_hub_model_dir, caplog):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    code = main(
        [
            "segment",
            str(photos / "street.png"),
            str(tmp_path / "broken.jpg"),
            str(tmp_path / "missing.png"),
            str(photos / "notes.txt"),
            "--model",
            str(tiny_hub_model_dir),
            "--output",
            str(tmp_path / "out"),
        ]
    )
    assert code == 1
    assert (tmp_path / "out" / "street.png_classes.png").is_file()
    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 3
    assert any("broken.jpg: not a readable image" in error for error in errors)
    assert any("missing.png: no such file" in error for error in errors)
    assert any("notes.txt: not a readable image" in error for error in errors)
    # Without --labels the model's own vocabulary is used.
    record = json.loads((tmp_path / "out" / "street.png.json").read_text())
    assert record["class_names"][0] == "red thing"
    assert (record["source"], record["input"]) == ("street.png", str(photos / "street.png"))


@pytest.mark.parametrize("labels, message", [("cat,,sky", "are empty"), ("cat,Cat", "Duplicate class names")])
def test_segment_rejects_bad_labels(tmp_path, photos, tiny_hub_model_dir, caplog, labels, message):
    code = main(
        [
            "segment",
            str(photos),
            "--model",
            str(tiny_hub_model_dir),
            "--labels",
            labels,
            "--output",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2
    assert message in caplog.text
    assert not (tmp_path / "out").exists()


def test_segment_names_an_unknown_model_in_one_line(tmp_path, photos):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty_cache")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cascade_clip_hf.cli",
            "segment",
            str(photos),
            "--model",
            "org/no-such-model",
            "--output",
            str(tmp_path / "out"),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: no model folder or Hub id 'org/no-such-model': no such folder here, and HF_HUB_OFFLINE is set, with "
        "no copy of it in the cache; give a model folder, or download the model once while online."
    ]
    assert "Traceback" not in result.stderr


def test_ctrl_c_while_the_command_imports_torch_ends_it_in_one_line_with_130(monkeypatch, caplog, capsys):
    def interrupted_import(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(cascade_clip_command, "import_module", interrupted_import)
    assert cascade_clip_command.main(["segment", "photo.png", "--output", "out"]) == 130
    assert "Traceback" not in capsys.readouterr().err
    assert [record.getMessage() for record in caplog.records] == [
        "interrupted: outputs written so far are complete; nothing half-written is left"
    ]


def test_the_shipped_toy_model_is_called_a_toy_once_and_other_models_are_not(tmp_path, tiny_hub_model_dir, caplog):
    logging.Logger.warning_once.cache_clear()  # a notice given earlier in this process is given again
    scenes = [str(EXAMPLES / "scenes" / f"scene-{index}.png") for index in range(2)]
    with caplog.at_level("WARNING"):
        assert main(["segment", *scenes, "--output", str(tmp_path / "toy")]) == 0
        assert main(["segment", scenes[0], "--output", str(tmp_path / "toy-again")]) == 0
    notices = [record.getMessage() for record in caplog.records if "toy model" in record.getMessage()]
    assert len(notices) == 1 and "\n" not in notices[0] and "photos mean nothing" in notices[0]

    caplog.clear()
    logging.Logger.warning_once.cache_clear()
    with caplog.at_level("WARNING"):
        assert main(["segment", scenes[0], "--model", str(tiny_hub_model_dir), "--output", str(tmp_path / "o")]) == 0
    assert not [record for record in caplog.records if "toy model" in record.getMessage()]


def test_labels_the_tokenizer_cannot_read_are_named_and_counted(tmp_path, caplog):
    """The toy model's tokenizer knows only toy-world words: "class 0" and "dog" become its unknown token in part."""
    logging.Logger.warning_once.cache_clear()
    labels = ["plain blue", "class 0", "dog", "sand", "class 1", "class 2", "class 3", "class 4 "]
    with caplog.at_level("WARNING"):
        main(
            [
                "segment",
                str(EXAMPLES / "scenes" / "scene-0.png"),
                "--labels",
                ",".join(labels),
                "--output",
                str(tmp_path),
            ]
        )
    warnings = [record.getMessage() for record in caplog.records if "cannot read" in record.getMessage()]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(
        "The tokenizer cannot read 6 of 8 class names ('class 0', 'dog', 'class 1', 'class 2', 'class 3' and 1 more)"
    )


def test_the_real_clip_tokenizer_reads_any_label_and_the_toy_one_does_not(caplog):
    names = ["class 0", "dog", "café", "plain blue"]
    logging.Logger.warning_once.cache_clear()
    with caplog.at_level("WARNING"):
        warn_unreadable_names(CLIPTokenizer.from_pretrained(CLIP_TOKENIZER), names)
    assert not caplog.records
    with caplog.at_level("WARNING"):
        warn_unreadable_names(CLIPTokenizer.from_pretrained(DEMO_MODEL), names)
    assert [record.getMessage()[:48] for record in caplog.records] == [
        "The tokenizer cannot read 3 of 4 class names ('c"
    ]


def test_the_console_command_imports_nothing_before_it_can_catch_ctrl_c():
    setup = configparser.ConfigParser()
    setup.read(Path(__file__).parent.parent / "setup.cfg")
    assert setup["options.entry_points"]["console_scripts"].split() == [
        "cascade-clip",
        "=",
        "cascade_clip_command:main",
    ]
    heavy = ("torch", "transformers", "cascade_clip_hf")
    imported = f"import sys, cascade_clip_command; print([name for name in {heavy} if name in sys.modules])"
    result = subprocess.run([sys.executable, "-c", imported], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
