"""Tiny synthetic segmentation datasets written in the benchmarks' original on-disk layouts."""

from pathlib import Path

import numpy as np
import PIL.Image


# One colour per class, so that a tiny model can learn something from a handful of images.
def class_colour(class_id: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(1000 + class_id)
    return tuple(int(v) for v in rng.integers(30, 226, 3))


def scene(rng: np.random.Generator, class_ids: list[int], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """An image of vertical bands, one class each, with a little noise; and its label map of class ids."""
    labels = np.zeros((height, width), dtype=np.int64)
    chosen = rng.choice(class_ids, size=min(3, len(class_ids)), replace=False)
    edges = np.linspace(0, width, len(chosen) + 1).astype(int)
    image = np.zeros((height, width, 3), dtype=np.float64)
    for class_id, left, right in zip(chosen, edges[:-1], edges[1:], strict=True):
        labels[:, left:right] = class_id
        image[:, left:right] = class_colour(int(class_id))
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels


def write_voc(root: Path, num_classes: int = 20, sizes=(("train", 8), ("val", 4)), seed: int = 0, height=48, width=64):
    """VOCdevkit/VOC2012 layout: 0 = background, class k stored as k + 1, 255 boundaries, palette PNGs."""
    rng = np.random.default_rng(seed)
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for split, count in sizes:
        names = []
        for index in range(count):
            name = f"{split}_{index:04d}"
            image, labels = scene(rng, list(range(num_classes)), height, width)
            stored = (labels + 1).astype(np.uint8)
            stored[:4, :4] = 0  # background
            stored[:, ::17] = 255  # boundaries
            PIL.Image.fromarray(image).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
            label_image = PIL.Image.fromarray(stored, mode="L").convert("P")
            label_image.save(root / "SegmentationClass" / f"{name}.png")
            names.append(name)
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


def write_context(root: Path, num_classes: int = 59, sizes=(("train", 4), ("val", 2)), seed: int = 1):
    """VOCdevkit/VOC2010 layout for PASCAL Context 59: 0 = background, class k stored as k + 1."""
    rng = np.random.default_rng(seed)
    for folder in ("JPEGImages", "SegmentationClassContext", "ImageSets/SegmentationContext"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for split, count in sizes:
        names = []
        for index in range(count):
            name = f"2008_{split}{index:03d}"
            image, labels = scene(rng, list(range(num_classes)), 40, 56)
            PIL.Image.fromarray(image).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
            PIL.Image.fromarray((labels + 1).astype(np.uint8)).save(root / "SegmentationClassContext" / f"{name}.png")
            names.append(name)
        (root / "ImageSets/SegmentationContext" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


def write_coco_stuff(
    root: Path, raw_ids: bool = False, sizes=(("train", 4), ("val", 2)), seed: int = 2, raw_to_train=None
):
    """mmseg COCO-Stuff 164k layout: `*_labelTrainIds.png` with training ids, or raw COCO-Stuff ids in `*.png`."""
    rng = np.random.default_rng(seed)
    train_to_raw = {train: int(raw) for raw, train in (raw_to_train or {}).items() if train != 255}
    for split, count in sizes:
        image_dir, label_dir = root / "images" / f"{split}2017", root / "annotations" / f"{split}2017"
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            name = f"{index:012d}"
            image, labels = scene(rng, list(range(171)), 40, 48)
            PIL.Image.fromarray(image).save(image_dir / f"{name}.jpg", quality=95)
            if raw_ids:
                raw = np.vectorize(train_to_raw.get)(labels).astype(np.uint8)
                PIL.Image.fromarray(raw).save(label_dir / f"{name}.png")
            else:
                PIL.Image.fromarray(labels.astype(np.uint8)).save(label_dir / f"{name}_labelTrainIds.png")
    return root


def write_hub_dataset(
    path: Path, num_classes: int = 4, sizes=(("train", 8), ("validation", 4)), seed: int = 3
) -> Path:
    """A `save_to_disk` DatasetDict with `image` and `label` image columns; every pixel labelled."""
    import datasets

    rng = np.random.default_rng(seed)
    splits = {}
    for split, count in sizes:
        images, labels = [], []
        for _ in range(count):
            image, label = scene(rng, list(range(num_classes)), 48, 64)
            images.append(PIL.Image.fromarray(image))
            labels.append(PIL.Image.fromarray(label.astype(np.uint8)))
        features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
        splits[split] = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
    datasets.DatasetDict(splits).save_to_disk(str(path))
    return path
