import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image

from cascade_clip_hf.cli import main
from cascade_clip_hf.segmenter import DEMO_MODEL, load_segmenter
from cascade_clip_hf.toy_world import (
    CLASS_NAMES,
    EXAMPLE_SCENES,
    OBJECTS,
    UNSEEN_OBJECTS,
    caption_words,
    example_scene,
    pretraining_objects,
    scenes,
)
from cascade_clip_hf.visualization import segmentation_from_masks

from .helpers import EXAMPLES, run_script


SCENES = Path(__file__).parent.parent / "examples" / "scenes"


def test_toy_world_is_deterministic_and_holds_out_word_combinations():
    first, second = list(scenes(7, 20, pretraining_objects())), list(scenes(7, 20, pretraining_objects()))
    for (image, class_map, caption), (image_again, class_map_again, caption_again) in zip(first, second, strict=True):
        np.testing.assert_array_equal(image, image_again)
        np.testing.assert_array_equal(class_map, class_map_again)
        assert caption == caption_again
        assert not any(name in caption for name in UNSEEN_OBJECTS)
        for value in np.unique(class_map):
            assert CLASS_NAMES[value] in caption  # every visible class is named
    assert set(UNSEEN_OBJECTS) < set(OBJECTS)
    for name in UNSEEN_OBJECTS:
        assert set(name.split()) <= caption_words()


def test_bundled_scenes_are_the_generators():
    for index in range(len(EXAMPLE_SCENES)):
        image, _, _ = example_scene(index)
        np.testing.assert_array_equal(np.asarray(PIL.Image.open(SCENES / f"scene-{index}.png")), image)


def test_shipped_model_gives_each_object_of_a_scene_its_class():
    segmenter = load_segmenter(str(DEMO_MODEL))
    assert segmenter.model.config.class_names == list(CLASS_NAMES)
    shown_unseen = set()
    for index, (_, placements) in enumerate(EXAMPLE_SCENES):
        image = PIL.Image.open(SCENES / f"scene-{index}.png")
        _, class_map, _ = example_scene(index)
        prediction = segmentation_from_masks(segmenter(image), list(CLASS_NAMES), image.size)
        for name, _, _ in placements:
            predicted = prediction[class_map == CLASS_NAMES.index(name)]
            dominant = CLASS_NAMES[np.bincount(predicted, minlength=len(CLASS_NAMES)).argmax()]
            assert dominant == name, f"scene-{index}: the {name} is mostly segmented as {dominant}"
            shown_unseen.update({name} & set(UNSEEN_OBJECTS))
    assert shown_unseen == set(UNSEEN_OBJECTS)


def test_shipped_model_is_small_and_beats_the_trivial_baseline_on_unseen_classes():
    assert (DEMO_MODEL / "model.safetensors").stat().st_size < 10 * 2**20
    assert not list(DEMO_MODEL.glob("*.py"))
    report = json.loads((DEMO_MODEL / "build_report.json").read_text())
    assert not report["quick"]
    assert report["cascade"]["miou_unseen"] > report["best_constant_baseline"]["miou_unseen"] + 10
    assert f"{report['cascade']['hiou']:.1f}" in (DEMO_MODEL / "README.md").read_text()


def test_segment_defaults_to_the_shipped_model(tmp_path):
    assert main(["segment", str(SCENES), "--output", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "scene-0.png.json").read_text())
    assert record["class_names"] == list(CLASS_NAMES)
    assert len(list(tmp_path.glob("scene-*_overlay.png"))) == len(EXAMPLE_SCENES)


def test_demo_tokenizer_is_the_same_in_every_process():
    # The byte-pair trainer's hash maps are seeded per process, so only separate processes can show a difference.
    code = (
        f"import json, sys; sys.path.insert(0, {str(EXAMPLES)!r}); from build_demo_model import train_tokenizer; "
        "from cascade_clip_hf.toy_world import scenes; "
        "print(json.dumps(train_tokenizer([caption for *_, caption in scenes(3, 300)]).get_vocab(), sort_keys=True))"
    )
    vocabularies = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        for _ in range(3)
    }
    assert len(vocabularies) == 1


def test_build_script_runs_end_to_end_in_quick_mode(tmp_path):
    run_script(
        "build_demo_model.py",
        [
            "--output_dir",
            str(tmp_path / "build"),
            "--quick",
            "--ship_to",
            str(tmp_path / "shipped"),
            "--scenes_dir",
            str(tmp_path / "scenes"),
        ],
        timeout=480,
    )
    report = json.loads((tmp_path / "build" / "report.json").read_text())
    assert report["quick"] and report["cascade"]["num_images"] == 16
    assert set(report) >= {"cascade", "single_decoder", "best_constant_baseline"}
    assert (tmp_path / "shipped" / "model.safetensors").is_file() and (tmp_path / "shipped" / "README.md").is_file()
    assert not list((tmp_path / "shipped").glob("*.py"))  # the package's own modules serve the shipped model
    shipped_config = json.loads((tmp_path / "shipped" / "config.json").read_text())
    assert shipped_config["toy_world"] and "auto_map" not in shipped_config
    assert "auto_map" in json.loads((tmp_path / "build" / "cascade" / "config.json").read_text())  # for the Hub
    for index in range(len(EXAMPLE_SCENES)):
        written = np.asarray(PIL.Image.open(tmp_path / "scenes" / f"scene-{index}.png"))
        np.testing.assert_array_equal(written, example_scene(index)[0])
    assert load_segmenter(str(tmp_path / "shipped")).model.config.cascade_stages == [[1, 2], [3, 4]]
