import json

import numpy as np

from cascade_clip_hf.segmenter import load_segmenter
from cascade_clip_hf.toy_world import (
    CLASS_NAMES, EXAMPLE_SCENES, OBJECTS, UNSEEN_OBJECTS, caption_words, pretraining_objects, scenes
)

from .conftest import run_script


def test_toy_world_is_deterministic_and_holds_out_word_combinations():
    first, second = list(scenes(7, 20, pretraining_objects())), list(scenes(7, 20, pretraining_objects()))
    for (image, class_map, caption), (image_again, class_map_again, caption_again) in zip(first, second):
        np.testing.assert_array_equal(image, image_again)
        np.testing.assert_array_equal(class_map, class_map_again)
        assert caption == caption_again
        assert not any(name in caption for name in UNSEEN_OBJECTS)
        for value in np.unique(class_map):
            assert CLASS_NAMES[value] in caption  # every visible class is named
    assert set(UNSEEN_OBJECTS) < set(OBJECTS)
    for name in UNSEEN_OBJECTS:
        assert set(name.split()) <= caption_words()


def test_build_script_runs_end_to_end_in_quick_mode(tmp_path):
    run_script(
        "build_demo_model.py",
        ["--output_dir", str(tmp_path / "build"), "--quick", "--ship_to", str(tmp_path / "shipped"),
         "--scenes_dir", str(tmp_path / "scenes")],
        timeout=480,
    )
    report = json.loads((tmp_path / "build" / "report.json").read_text())
    assert report["quick"] and report["cascade"]["num_images"] == 16
    assert set(report) >= {"cascade", "single_decoder", "best_constant_baseline"}
    assert (tmp_path / "shipped" / "model.safetensors").is_file() and (tmp_path / "shipped" / "README.md").is_file()
    assert len(list((tmp_path / "scenes").glob("scene-*.png"))) == len(EXAMPLE_SCENES)
    assert load_segmenter(str(tmp_path / "shipped")).model.config.cascade_stages == [[1, 2], [3, 4]]
