"""The shipped metric module and the evaluation script."""

import json

import numpy as np
import pytest

from cascade_clip_hf.evaluation import load_metric
from cascade_clip_hf.presets import benchmark_facts

from .helpers import HUB_CLASSES, run_script, save_tiny_cascade


PREDICTIONS = [np.array([[0, 0, 1, 1], [2, 2, 2, 1]]), np.array([[1, 1], [0, 3]])]
REFERENCES = [np.array([[0, 1, 1, 1], [2, 2, 255, 255]]), np.array([[1, 1], [0, 0]])]


def test_metric_agrees_with_ious_by_hand():
    # class 0: intersect 1+1, predicted 2+1, labelled 1+2 -> 2 / (3 + 3 - 2) = 0.5
    # class 1: intersect 2+2, predicted 2+2 (labelled pixels only), labelled 3+2 -> 4 / (4 + 5 - 4) = 0.8
    # class 2: intersect 2, predicted 2, labelled 2 -> 1.0;  class 3: predicted 1, labelled 0 -> 0.0
    expected_iou = [0.5, 0.8, 1.0, 0.0]
    results = load_metric().compute(
        predictions=PREDICTIONS, references=REFERENCES, num_labels=4, ignore_index=255, seen_class_ids=[0, 1]
    )
    np.testing.assert_allclose(results["per_category_iou"], expected_iou)
    assert results["mean_iou"] == pytest.approx(np.mean(expected_iou))
    assert results["mean_iou_seen"] == pytest.approx(0.65)
    assert results["mean_iou_unseen"] == pytest.approx(0.5)
    assert results["harmonic_iou"] == pytest.approx(2 * 0.65 * 0.5 / 1.15)
    assert results["pixel_accuracy"] == pytest.approx(8 / 10)


def test_metric_from_areas_equals_metric_from_maps():
    metric = load_metric("areas")
    areas = np.stack([metric.class_areas(p, r, 5) for p, r in zip(PREDICTIONS, REFERENCES, strict=True)])
    metric.add_batch(area_intersect=areas[:, 0], area_prediction=areas[:, 1], area_label=areas[:, 2])
    from_areas = metric.compute(num_labels=5, seen_class_ids=[0, 1])
    from_maps = load_metric().compute(
        predictions=PREDICTIONS, references=REFERENCES, num_labels=5, seen_class_ids=[0, 1]
    )
    assert np.isnan(from_maps["per_category_iou"][4])  # absent everywhere: left out of the means
    np.testing.assert_equal(from_areas["per_category_iou"], from_maps["per_category_iou"])
    assert from_areas["mean_iou"] == from_maps["mean_iou"]


def test_metric_without_a_split_reports_no_unseen():
    results = load_metric().compute(predictions=PREDICTIONS, references=REFERENCES, num_labels=4)
    assert results["mean_iou_seen"] == results["mean_iou"]
    assert results["mean_iou_unseen"] is None and results["harmonic_iou"] is None


@pytest.fixture(scope="module")
def voc_model_dir(tmp_path_factory, tiny_clip_dir):
    facts = benchmark_facts("pascal-voc-2012", "inductive")
    return save_tiny_cascade(
        tiny_clip_dir,
        tmp_path_factory.mktemp("voc_model") / "model",
        facts["class_names"],
        seen_class_ids=facts["seen_class_ids"],
    )


def evaluate_args(model_dir, voc_root, output, extra=()):
    return [
        "--model",
        str(model_dir),
        "--dataset",
        "pascal-voc-2012",
        "--data_dir",
        str(voc_root),
        "--split",
        "val",
        "--output",
        str(output),
        "--num_workers",
        "0",
        *extra,
    ]


def test_evaluation_on_two_processes_equals_one(tmp_path, voc_model_dir, voc_root):
    one = run_script(
        "evaluate_cascade_clip.py",
        evaluate_args(voc_model_dir, voc_root, tmp_path / "one.json", ["--max_samples", "3"]),
    )
    run_script(
        "evaluate_cascade_clip.py",
        evaluate_args(voc_model_dir, voc_root, tmp_path / "two.json", ["--max_samples", "3", "--batch_size", "1"]),
        num_processes=2,
    )
    results_one = json.loads((tmp_path / "one.json").read_text())
    results_two = json.loads((tmp_path / "two.json").read_text())
    assert results_one["num_images"] == results_two["num_images"] == 3  # uneven split: no image counted twice
    assert results_two["num_processes"] == 2
    for key in ("miou", "miou_seen", "miou_unseen", "hiou", "pixel_accuracy", "per_class_iou"):
        assert results_two[key] == results_one[key], key
    assert set(results_one["per_class_iou"]) == set(benchmark_facts("pascal-voc-2012")["class_names"])
    assert results_one["units"] == "percent" and not results_one["cross_dataset"]
    assert "| mIoU | mIoU(seen) | mIoU(unseen) | hIoU |" in one.stdout


def test_cross_dataset_evaluation(tmp_path, tiny_hub_model_dir, voc_root):
    run_script("evaluate_cascade_clip.py", evaluate_args(tiny_hub_model_dir, voc_root, tmp_path / "cross.json"))
    results = json.loads((tmp_path / "cross.json").read_text())
    assert results["cross_dataset"] and len(results["per_class_iou"]) == 20
    assert results["num_images"] == 4 and HUB_CLASSES[0] not in results["per_class_iou"]


def test_unreadable_evaluation_images_are_counted_and_named(tmp_path, voc_model_dir, voc_root):
    import shutil

    copy = tmp_path / "VOC2012"
    shutil.copytree(voc_root, copy)
    (copy / "JPEGImages" / "val_0002.jpg").write_bytes(b"\xff\xd8 truncated")
    result = run_script("evaluate_cascade_clip.py", evaluate_args(voc_model_dir, copy, tmp_path / "r.json"))
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["num_unreadable"] == 1 and results["num_images"] == 3
    assert "val_0002.jpg" in result.stderr


def test_a_dataset_that_cannot_be_read_stops_evaluation_before_the_model_loads(tmp_path):
    # The model folder is damaged too: the run must stop at the dataset, which is read first.
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    empty = tmp_path / "VOC2012"
    empty.mkdir()
    result = run_script("evaluate_cascade_clip.py", evaluate_args(model, empty, tmp_path / "r.json"), returncode=2)
    [error] = [line for line in result.stderr.splitlines() if "error:" in line]
    assert str(empty) in error and "model" not in error.split(str(empty))[-1]
