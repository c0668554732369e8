"""Datasets in the original layouts and from Hugging Face, and the original training augmentation."""

import json

import numpy as np
import PIL.Image
import pytest
import torch

from cascade_clip_hf.augmentation import (
    ORIGINAL_IMAGE_MEAN,
    ORIGINAL_IMAGE_STD,
    CategoryBalancedRandomCrop,
    PhotometricDistortion,
    RandomRescale,
    training_augmentation,
)
from cascade_clip_hf.data import (
    DatasetLayoutError,
    DataSource,
    SegmentationData,
    benchmark_split,
    evaluation_split,
    hub_split,
    read_id2label,
)
from cascade_clip_hf.labels import IGNORE_INDEX, identity_lookup, reduce_zero_lookup
from cascade_clip_hf.presets import benchmark_facts
from cascade_clip_hf.training import AugmentedSegmentation

from .synthetic import write_coco_stuff, write_context


def test_voc_layout_reduces_zero(voc_root):
    data = benchmark_split("pascal-voc-2012", voc_root, "train")
    assert len(data) == 8 and len(data.class_names) == 20
    assert data.seen_class_ids == benchmark_facts("pascal-voc-2012", "inductive")["seen_class_ids"]
    stored = np.array(PIL.Image.open(voc_root / "SegmentationClass" / "train_0000.png"))
    _, labels = data.load(0)
    assert (labels[stored == 0] == 255).all()  # background
    assert (labels[stored == 255] == 255).all()  # boundaries
    classes = (stored > 0) & (stored < 255)
    assert np.array_equal(labels[classes], stored[classes].astype(np.int64) - 1)


def test_context_layout(tmp_path):
    root = write_context(tmp_path / "VOC2010")
    data = benchmark_split("pascal-context-59", root, "val")
    assert len(data) == 2 and len(data.class_names) == 59
    stored = np.array(PIL.Image.open(root / "SegmentationClassContext" / "2008_val000.png"))
    assert np.array_equal(data.load(0)[1], stored.astype(np.int64) - 1)


@pytest.mark.parametrize("raw_ids", [False, True])
def test_coco_stuff_layouts(tmp_path, raw_ids):
    facts = benchmark_facts("coco-stuff-164k")
    root = write_coco_stuff(tmp_path / "coco", raw_ids=raw_ids, raw_to_train=facts["raw_label_to_train_id"])
    train_ids = write_coco_stuff(tmp_path / "reference", raw_ids=False)
    data = benchmark_split("coco-stuff-164k", root, "train")
    reference = benchmark_split("coco-stuff-164k", train_ids, "train")
    assert len(data) == 4 and len(data.class_names) == 171
    for index in range(len(data)):
        assert np.array_equal(data.load(index)[1], reference.load(index)[1])


def test_missing_layout_parts_are_named(tmp_path, voc_root):
    with pytest.raises(DatasetLayoutError, match="Split file"):
        benchmark_split("pascal-voc-2012", tmp_path, "train")
    with pytest.raises(DatasetLayoutError, match="COCO-Stuff needs"):
        benchmark_split("coco-stuff-164k", tmp_path, "val")
    (voc_root / "JPEGImages" / "val_0001.jpg").rename(voc_root / "moved.jpg")
    try:
        with pytest.raises(DatasetLayoutError, match="Missing 1 file of pascal-voc-2012 val .*val_0001.jpg"):
            benchmark_split("pascal-voc-2012", voc_root, "val")
    finally:
        (voc_root / "moved.jpg").rename(voc_root / "JPEGImages" / "val_0001.jpg")


def test_hub_dataset_from_disk(hub_dataset):
    path, id2label = hub_dataset
    names = read_id2label(id2label)
    data = hub_split(str(path), "validation", names)
    image, labels = data.load(0)
    assert image.shape == (48, 64, 3) and labels.shape == (48, 64)
    assert set(np.unique(labels)) <= set(range(len(names)))
    with pytest.raises(DatasetLayoutError, match="no column 'mask' in its 'validation' split"):
        hub_split(str(path), "validation", names, label_column="mask")
    with pytest.raises(DatasetLayoutError, match="has no split 'val'; its splits are train, validation"):
        hub_split(str(path), "val", names)


def test_the_evaluation_split_by_default(tmp_path, hub_dataset):
    assert evaluation_split(DataSource(benchmark="pascal-voc-2012", data_dir=tmp_path)) == "val"
    assert evaluation_split(DataSource(dataset_name=str(hub_dataset[0]))) == "validation"
    import datasets

    both = datasets.load_from_disk(str(hub_dataset[0]))
    both["val"] = both["validation"]
    both.save_to_disk(str(tmp_path / "both"))
    with pytest.raises(DatasetLayoutError, match="splits train, validation, val: name the one to evaluate on"):
        evaluation_split(DataSource(dataset_name=str(tmp_path / "both")))


def in_memory_data(label: np.ndarray, num_classes: int = 4, **fields) -> SegmentationData:
    """One sample of a 6x8 image with `label` as its label map."""
    import datasets

    image = np.zeros((6, 8, 3), dtype=np.uint8)
    rows = datasets.Dataset.from_dict({"image": [image], "label": [label], "name": ["sample-a"]})
    return SegmentationData(rows, [f"class {i}" for i in range(num_classes)], identity_lookup(num_classes), **fields)


def test_the_first_sample_is_checked_before_a_run_relies_on_the_split():
    in_memory_data(np.full((6, 8), IGNORE_INDEX)).check_first_sample("the split 'val'")
    with pytest.raises(DatasetLayoutError, match=r"the split 'val': sample sample-a: label map \(5, 8\) and image"):
        in_memory_data(np.zeros((5, 8), dtype=np.int64)).check_first_sample("the split 'val'")
    with pytest.raises(DatasetLayoutError, match=r"sample-a has label values \[4, 7\] that are neither class ids"):
        in_memory_data(np.tile([0, 4, 7, 255], (6, 2))).check_first_sample("the split 'val'")
    reduced = in_memory_data(np.tile([0, 1, 255, 6], (6, 2)), unlabelled_values=(0, IGNORE_INDEX))
    reduced.label_lookup = reduce_zero_lookup(4)
    with pytest.raises(DatasetLayoutError, match=r"label values \[6\]"):  # 0 is background, 6 is class 5
        reduced.check_first_sample("the split 'val'")


def test_label_values_outside_the_classes_are_ignored_with_one_warning_each(caplog):
    data = in_memory_data(np.tile([0, 9, 255, 1], (6, 2)))
    for _ in range(3):
        _, labels = data.load(0)
    assert set(np.unique(labels)) == {0, 1, IGNORE_INDEX}
    warnings = [record.getMessage() for record in caplog.records if "not ids of the 4 classes" in record.getMessage()]
    assert warnings == [
        "sample sample-a: label values [9] are not ids of the 4 classes: ignored (check --id2label, --reduce_labels)."
    ]


def test_seen_classes_must_be_ids_of_the_classes():
    with pytest.raises(DatasetLayoutError, match=r"--seen_class_ids \[4, 9\] are not class ids"):
        in_memory_data(np.zeros((6, 8)), seen_class_ids=[0, 9, 4])
    with pytest.raises(DatasetLayoutError, match="names a class twice"):
        in_memory_data(np.zeros((6, 8)), seen_class_ids=[1, 1])


def test_id2label_must_be_complete(tmp_path):
    path = tmp_path / "id2label.json"
    path.write_text(json.dumps({"0": "cat", "2": "dog"}))
    with pytest.raises(DatasetLayoutError, match="without gaps"):
        read_id2label(path)
    with pytest.raises(DatasetLayoutError, match=r"missing.json: cannot read class names \(no such file\)"):
        read_id2label(tmp_path / "missing.json")
    path.write_text("cat,dog")
    with pytest.raises(DatasetLayoutError, match="id2label.json: cannot read class names"):
        read_id2label(path)


def labelled_image(height=120, width=160):
    """Class k fills a band and the image's red channel is 40 * k there: colour and label can be checked together."""
    labels = np.zeros((height, width), dtype=np.uint16)
    for k, left in enumerate(range(0, width, width // 4)):
        labels[:, left:] = k
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[..., 0] = labels * 40
    return image, labels


@pytest.mark.parametrize("seed", range(5))
def test_geometric_steps_keep_image_and_labels_aligned(seed):
    import albumentations as A

    image, labels = labelled_image()
    pipeline = A.Compose(
        [RandomRescale(scale=(400, 100)), CategoryBalancedRandomCrop(crop_size=64), A.HorizontalFlip()]
    )
    pipeline.set_random_seed(seed)
    out = pipeline(image=image, mask=labels)
    assert out["image"].shape[:2] == out["mask"].shape
    agreement = (out["image"][..., 0].astype(int) == out["mask"].astype(int) * 40).mean()
    assert agreement > 0.9  # only bilinear edges between bands may differ


def test_rescale_keeps_the_aspect_ratio_within_the_scale():
    image, labels = labelled_image(100, 300)
    for seed in range(10):
        step = RandomRescale(scale=(2048, 512), ratio_range=(0.5, 2.0))
        step.set_random_seed(seed)
        out = step(image=image, mask=labels)
        height, width = out["mask"].shape
        assert abs(width / height - 3) < 0.05
        # the short side binds here: 512 times a ratio in [0.5, 2]
        assert 256 <= height <= 1024


def test_crop_avoids_one_class_dominating():
    labels = np.zeros((200, 200), dtype=np.uint16)
    labels[:, 150:] = 1  # class 0 fills 75%
    image = np.zeros((200, 200, 3), dtype=np.uint8)
    ratios = []
    for seed in range(20):
        crop = CategoryBalancedRandomCrop(crop_size=100, cat_max_ratio=0.75)
        crop.set_random_seed(seed)
        out = crop(image=image, mask=labels)["mask"]
        ratios.append(np.bincount(out.ravel(), minlength=2).max() / out.size)
    # a crop with both classes under 75% exists (x in 76..149); ten tries find one almost always
    assert np.mean(np.array(ratios) < 0.75) >= 0.9


def test_photometric_distortion_is_seeded_and_eight_bit():
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    outputs = []
    for seed in (3, 3, 4):
        step = PhotometricDistortion()
        step.set_random_seed(seed)
        outputs.append(step(image=image)["image"])
    assert outputs[0].dtype == np.uint8 and outputs[0].shape == image.shape
    assert np.array_equal(outputs[0], outputs[1])
    assert not np.array_equal(outputs[0], outputs[2])


def test_training_pipeline_pads_with_ignore():
    image, labels = labelled_image(20, 30)
    pipeline = training_augmentation(crop_size=64, scale=(60, 15))  # rescaled below the crop size
    pipeline.set_random_seed(0)
    out = pipeline(image=image, mask=labels)
    assert out["image"].shape == (64, 64, 3) and out["image"].dtype == np.float32
    assert out["mask"].shape == (64, 64)
    assert (out["mask"][-1] == 255).all() and (out["image"][-1] == 0).all()


def test_training_pipeline_can_keep_scale_and_colours():
    image, labels = labelled_image(64, 64)
    pipeline = training_augmentation(crop_size=64, scale=(64, 64), ratio_range=(1, 1), photometric_distortion=False)
    for seed in range(8):
        pipeline.set_random_seed(seed)
        out = pipeline(image=image, mask=labels)
        flipped = not np.array_equal(out["mask"], labels)
        assert np.array_equal(out["mask"][:, ::-1] if flipped else out["mask"], labels)
        expected = (image[..., 0].astype(np.float32) - ORIGINAL_IMAGE_MEAN[0]) / ORIGINAL_IMAGE_STD[0]
        np.testing.assert_allclose(out["image"][..., 0], expected[:, ::-1] if flipped else expected, rtol=1e-6)


def test_unreadable_training_samples_are_reported_and_replaced(tmp_path, voc_root, caplog):
    data = benchmark_split("pascal-voc-2012", voc_root, "train")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    data.dataset = data.dataset.map(
        lambda row, i: {"image": str(broken) if i == 2 else row["image"]}, with_indices=True
    )
    dataset = AugmentedSegmentation(data, training_augmentation(crop_size=32, scale=(128, 32)), seed=0)
    sample = dataset[2]
    assert sample["pixel_values"].shape == (3, 32, 32) and sample["labels"].dtype == torch.int64
    assert "broken.jpg" in caplog.text


def test_augmentation_depends_only_on_seed_epoch_and_index(voc_root):
    data = benchmark_split("pascal-voc-2012", voc_root, "train")
    first = AugmentedSegmentation(data, training_augmentation(crop_size=32, scale=(128, 32)), seed=7)
    second = AugmentedSegmentation(data, training_augmentation(crop_size=32, scale=(128, 32)), seed=7)
    _ = second[5]  # another sample first: no hidden state carries over
    assert torch.equal(first[3]["pixel_values"], second[3]["pixel_values"])
    second.set_epoch(1)
    assert not torch.equal(first[3]["pixel_values"], second[3]["pixel_values"])
