"""Segmentation datasets: the three benchmarks in the original on-disk layouts, and any Hugging Face dataset.

Every builder returns a [`SegmentationData`]: a `datasets.Dataset` with one row per image (`image`, `label`:
a path or an image; `name`), the class names in label order, and the table that turns stored label values into
training ids (`IGNORE_INDEX` for pixels without a class).
"""

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np

from .errors import counted, one_line
from .hub import check_hub_dataset
from .image_processing_cascade_clip import ImageInputError, to_label_array, to_rgb_uint8
from .labels import IGNORE_INDEX, LOOKUP_SIZE, identity_lookup, raw_coco_lookup, reduce_zero_lookup
from .presets import BENCHMARKS, benchmark_facts


logger = logging.getLogger(__name__)


# The stored values without a class when label 0 is background (see `labels.reduce_zero_label`).
REDUCED_UNLABELLED = (0, IGNORE_INDEX)


class DatasetLayoutError(ValueError):
    """A dataset folder that does not have the expected layout, with what is missing."""


@dataclass
class SegmentationData:
    """
    Images with label maps, the class names in label order, and how stored labels become training ids.

    `unlabelled_values` are the stored values that mean "no class" (ignore, a reduced background); any other value
    the lookup does not map to a class is unknown, and reported. None: not checked (raw COCO-Stuff ids, whose table
    drops some classes on purpose).
    """

    dataset: datasets.Dataset
    class_names: list[str]
    label_lookup: np.ndarray
    seen_class_ids: list[int] | None = None
    unlabelled_values: tuple[int, ...] | None = (IGNORE_INDEX,)
    warned_values: set[int] = field(default_factory=set, repr=False)

    def __post_init__(self):
        check_seen_class_ids(self.seen_class_ids, len(self.class_names))

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """
        One sample as stored: the RGB image, `uint8` of shape `(height, width, 3)`, its label map of stored values,
        `int64` of shape `(height, width)`, and where it comes from (a file or a row).

        Raises:
            ImageInputError: naming the file (or row) that cannot be read, or whose label map does not fit it.
        """
        record = self.dataset[index]
        where = record.get("name") or f"row {index}"
        try:
            image = to_rgb_uint8(record["image"])
            labels = to_label_array(record["label"])
        except ImageInputError as error:
            raise ImageInputError(f"sample {where}: {error}") from error
        if labels.shape != image.shape[:2]:
            raise ImageInputError(f"sample {where}: label map {labels.shape} and image {image.shape[:2]} differ.")
        if labels.min() < 0:
            raise ImageInputError(f"sample {where}: negative label values.")
        return image, labels, where

    def unknown_values(self, stored_labels: np.ndarray) -> list[int]:
        """The stored label values that are neither a class nor `unlabelled_values`, sorted (none when unchecked)."""
        if self.unlabelled_values is None:
            return []
        clipped = np.minimum(stored_labels, LOOKUP_SIZE - 1)
        ignored = np.unique(stored_labels[self.label_lookup[clipped] == IGNORE_INDEX])
        return [int(value) for value in ignored if value not in self.unlabelled_values]

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """
        Reads one sample; label values outside the classes are ignored, with a warning the first time each is met.

        Returns:
            The RGB image, `uint8` of shape `(height, width, 3)`, and its label map of training ids, `int64` of
            shape `(height, width)`.

        Raises:
            ImageInputError: naming the file (or row) that cannot be read.
        """
        image, labels, where = self.read(index)
        new_values = [value for value in self.unknown_values(labels) if value not in self.warned_values]
        if new_values:
            self.warned_values.update(new_values)
            logger.warning(
                f"sample {where}: label values {new_values} are not ids of the "
                f"{counted(len(self.class_names), 'class', 'classes')}: ignored (check --id2label, --reduce_labels)."
            )
        return image, self.label_lookup[np.minimum(labels, LOOKUP_SIZE - 1)]

    def check_first_sample(self, what: str) -> None:
        """
        Reads the first sample before a run relies on the split: a label map that is no image of the image's size,
        or holds values outside the classes, is found out now rather than after training.

        Raises:
            DatasetLayoutError: naming `what` (e.g. "the validation split") and the problem.
        """
        if len(self) == 0:
            raise DatasetLayoutError(f"{what} has no samples.")
        try:
            _, labels, where = self.read(0)
        except ImageInputError as error:
            raise DatasetLayoutError(f"{what}: {one_line(error)}") from error
        unknown = self.unknown_values(labels)
        if unknown:
            raise DatasetLayoutError(
                f"{what}: sample {where} has label values {unknown[:10]} that are neither class ids "
                f"(0..{len(self.class_names) - 1}) nor ignore ({IGNORE_INDEX}): check --id2label and --reduce_labels."
            )

    def __len__(self) -> int:
        return len(self.dataset)


def check_seen_class_ids(seen_class_ids: list[int] | None, num_classes: int) -> None:
    """
    Refuses seen classes that are not ids of `num_classes` classes, or name one twice: found out when the data is
    read, before a run trains on them.

    Raises:
        DatasetLayoutError: naming the offending ids and the valid range.
    """
    if seen_class_ids is None:
        return
    unknown = sorted({class_id for class_id in seen_class_ids if not 0 <= class_id < num_classes})
    if unknown:
        raise DatasetLayoutError(
            f"--seen_class_ids {unknown} are not class ids: the dataset has "
            f"{counted(num_classes, 'class', 'classes')}, ids 0..{num_classes - 1}."
        )
    if len(set(seen_class_ids)) != len(seen_class_ids):
        raise DatasetLayoutError(f"--seen_class_ids names a class twice: {list(seen_class_ids)}.")


def rows_from_pairs(pairs: list[tuple[Path, Path]], what: str) -> datasets.Dataset:
    """A dataset of image/label paths; refuses an empty list and names missing files."""
    if not pairs:
        raise DatasetLayoutError(f"No samples found for {what}.")
    missing = [str(path) for pair in pairs for path in pair if not path.is_file()]
    if missing:
        raise DatasetLayoutError(f"Missing {counted(len(missing), 'file')} of {what}, e.g. {missing[:3]}.")
    return datasets.Dataset.from_dict(
        {
            "image": [str(image) for image, _ in pairs],
            "label": [str(label) for _, label in pairs],
            "name": [str(image) for image, _ in pairs],
        }
    )


def coco_stuff_pairs(data_dir: Path, split: str) -> tuple[list[tuple[Path, Path]], bool]:
    """
    mmseg's COCO-Stuff 164k layout: `images/{split}2017/*.jpg` with `annotations/{split}2017/*_labelTrainIds.png`
    (training ids), or with the raw COCO-Stuff `annotations/{split}2017/*.png`. Returns the pairs and whether the
    labels are raw ids.
    """
    image_dir, label_dir = data_dir / "images" / f"{split}2017", data_dir / "annotations" / f"{split}2017"
    if not image_dir.is_dir() or not label_dir.is_dir():
        raise DatasetLayoutError(f"COCO-Stuff needs {image_dir} and {label_dir}.")
    images = sorted(image_dir.glob("*.jpg"))
    train_id_labels = [label_dir / f"{image.stem}_labelTrainIds.png" for image in images]
    if images and all(label.is_file() for label in train_id_labels):
        return list(zip(images, train_id_labels, strict=True)), False
    return [(image, label_dir / f"{image.stem}.png") for image in images], True


def voc_style_pairs(data_dir: Path, split_file: str, label_dir: str) -> list[tuple[Path, Path]]:
    """PASCAL layouts: names listed in a split file, `JPEGImages/{name}.jpg` with `{label_dir}/{name}.png`."""
    split_path = data_dir / split_file
    if not split_path.is_file():
        raise DatasetLayoutError(f"Split file {split_path} not found.")
    names = [line.strip() for line in split_path.read_text().splitlines() if line.strip()]
    return [(data_dir / "JPEGImages" / f"{name}.jpg", data_dir / label_dir / f"{name}.png") for name in names]


def benchmark_split(
    benchmark: str,
    data_dir: str | os.PathLike,
    split: str,
    setting: str = "inductive",
    label_dir: str | None = None,
    split_file: str | None = None,
) -> SegmentationData:
    """
    One split of a benchmark in the original on-disk layout.

    Args:
        benchmark: `"coco-stuff-164k"` (`data_dir` holds `images/` and `annotations/`), `"pascal-voc-2012"`
            (`data_dir` is `VOCdevkit/VOC2012`) or `"pascal-context-59"` (`data_dir` is `VOCdevkit/VOC2010`).
        split: `"train"` or `"val"`.
        setting: which seen/unseen split of the benchmark to attach.
        label_dir, split_file: override the PASCAL label folder (e.g. `SegmentationClassAug`) and split file.
    """
    facts = benchmark_facts(benchmark, setting)
    data_dir = Path(data_dir)
    num_classes = len(facts["class_names"])
    if benchmark == "coco-stuff-164k":
        pairs, raw = coco_stuff_pairs(data_dir, split)
        lookup = raw_coco_lookup(facts["raw_label_to_train_id"]) if raw else identity_lookup(num_classes)
        unlabelled = None if raw else (IGNORE_INDEX,)
    elif benchmark == "pascal-voc-2012":
        pairs = voc_style_pairs(
            data_dir, split_file or f"ImageSets/Segmentation/{split}.txt", label_dir or "SegmentationClass"
        )
        lookup, unlabelled = reduce_zero_lookup(num_classes), REDUCED_UNLABELLED
    else:
        pairs = voc_style_pairs(
            data_dir,
            split_file or f"ImageSets/SegmentationContext/{split}.txt",
            label_dir or "SegmentationClassContext",
        )
        lookup, unlabelled = reduce_zero_lookup(num_classes), REDUCED_UNLABELLED
    return SegmentationData(
        dataset=rows_from_pairs(pairs, f"{benchmark} {split} in {data_dir}"),
        class_names=list(facts["class_names"]),
        label_lookup=lookup,
        seen_class_ids=list(facts["seen_class_ids"]),
        unlabelled_values=unlabelled,
    )


def read_id2label(path: str | os.PathLike) -> list[str]:
    """
    Class names from an `id2label.json` (`{"0": "cat", ...}`), in id order; ids must run from 0 without gaps.

    Raises:
        DatasetLayoutError: naming `path` when it is missing, not such a JSON object, or has gaps in its ids.
    """
    try:
        mapping = json.loads(Path(path).read_text(encoding="utf-8"))
        ids = sorted(int(key) for key in mapping)
    except (OSError, ValueError, TypeError) as error:
        reason = "no such file" if isinstance(error, FileNotFoundError) else one_line(error)
        raise DatasetLayoutError(
            f'{path}: cannot read class names ({reason}); expected a JSON object {{"0": "cat", ...}}'
        ) from error
    if ids != list(range(len(ids))):
        raise DatasetLayoutError(f"{path}: ids must run 0..{len(ids) - 1} without gaps, got {ids[:10]}...")
    return [mapping[str(class_id)] for class_id in ids]


def hub_split(
    dataset_name_or_path: str,
    split: str,
    class_names: list[str],
    image_column: str = "image",
    label_column: str = "label",
    reduce_labels: bool = False,
    seen_class_ids: list[int] | None = None,
) -> SegmentationData:
    """
    One split of a Hugging Face dataset with an image column and a label-map column: a Hub name (through the
    local cache) or a folder written by `save_to_disk`.
    """
    if Path(dataset_name_or_path).is_dir():
        loaded = datasets.load_from_disk(dataset_name_or_path)
        if isinstance(loaded, datasets.DatasetDict) and split not in loaded:
            raise DatasetLayoutError(
                f"{dataset_name_or_path} has no split {split!r}; its splits are {', '.join(loaded)}."
            )
        dataset = loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    else:
        check_hub_dataset(dataset_name_or_path)
        dataset = datasets.load_dataset(dataset_name_or_path, split=split)
    for column in (image_column, label_column):
        if column not in dataset.column_names:
            raise DatasetLayoutError(
                f"{dataset_name_or_path} has no column {column!r} in its {split!r} split: {dataset.column_names}."
            )
    dataset = dataset.select_columns([image_column, label_column])
    dataset = dataset.rename_columns({image_column: "image", label_column: "label"})
    dataset = dataset.add_column(
        "name", [f"{dataset_name_or_path}[{split}][{index}]" for index in range(len(dataset))]
    )
    num_classes = len(class_names)
    return SegmentationData(
        dataset=dataset,
        class_names=list(class_names),
        label_lookup=reduce_zero_lookup(num_classes) if reduce_labels else identity_lookup(num_classes),
        seen_class_ids=seen_class_ids,
        unlabelled_values=REDUCED_UNLABELLED if reduce_labels else (IGNORE_INDEX,),
    )


@dataclass
class DataSource:
    """
    Where a script's segmentation data comes from: a benchmark in its original layout (`benchmark` and `data_dir`),
    or a Hugging Face dataset (`dataset_name`, with `id2label_file` or a benchmark's class names).

    Args:
        benchmark: one of `BENCHMARKS`: the layout, class names and seen/unseen split.
        data_dir: the benchmark's folder in its original on-disk layout.
        dataset_name: a Hugging Face dataset, by name or as a folder written by `save_to_disk`.
        id2label_file: an `id2label.json` with the class names of `dataset_name`.
        image_column, label_column: the columns of `dataset_name` holding images and label maps.
        reduce_labels: label 0 of `dataset_name` is background: ignore it and shift the other labels down.
        seen_class_ids: the classes seen in training; the benchmark's split by default.
        setting: `"inductive"` or `"transductive"`, which of the benchmark's seen/unseen splits to attach.
        label_dir: a PASCAL benchmark's label folder instead of its default (e.g. `SegmentationClassAug`).
    """

    benchmark: str | None = None
    data_dir: str | os.PathLike | None = None
    dataset_name: str | None = None
    id2label_file: str | os.PathLike | None = None
    image_column: str = "image"
    label_column: str = "label"
    reduce_labels: bool = False
    seen_class_ids: list[int] | None = None
    setting: str = "inductive"
    label_dir: str | None = None


def load_segmentation_data(source: DataSource, split: str) -> SegmentationData:
    """One split of `source`: a benchmark folder, or a Hugging Face dataset."""
    if source.dataset_name:
        if source.id2label_file:
            class_names = read_id2label(source.id2label_file)
        elif source.benchmark in BENCHMARKS:
            class_names = benchmark_facts(source.benchmark)["class_names"]
        else:
            raise DatasetLayoutError(
                "--dataset_name needs --id2label (or --dataset naming a benchmark) for class names."
            )
        seen = None
        if source.benchmark in BENCHMARKS:
            seen = benchmark_facts(source.benchmark, source.setting)["seen_class_ids"]
        return hub_split(
            source.dataset_name,
            split,
            class_names,
            image_column=source.image_column,
            label_column=source.label_column,
            reduce_labels=source.reduce_labels,
            seen_class_ids=source.seen_class_ids or seen,
        )
    if not source.data_dir:
        raise DatasetLayoutError("Pass --data_dir with --dataset, or --dataset_name.")
    return benchmark_split(
        source.benchmark, source.data_dir, split, setting=source.setting, label_dir=source.label_dir
    )


# The names Hugging Face datasets give the split to evaluate on; a benchmark folder's is `val`.
EVALUATION_SPLITS = ("validation", "val")


def evaluation_split(source: DataSource) -> str:
    """
    The split to evaluate on when none is named: `val` for a benchmark folder; for a Hugging Face dataset, the one
    of `validation` and `val` it has.

    Raises:
        DatasetLayoutError: a Hugging Face dataset with both or neither, listing its splits.
    """
    if not source.dataset_name:
        return "val"
    if Path(source.dataset_name).is_dir():
        loaded = datasets.load_from_disk(source.dataset_name)
        if not isinstance(loaded, datasets.DatasetDict):
            return "val"  # one split, which `hub_split` serves under any name
        names = list(loaded)
    else:
        check_hub_dataset(source.dataset_name)
        names = datasets.get_dataset_split_names(source.dataset_name)
    found = [name for name in EVALUATION_SPLITS if name in names]
    if len(found) != 1:
        raise DatasetLayoutError(
            f"{source.dataset_name} has the splits {', '.join(names)}: name the one to evaluate on "
            "(--eval_split, or --skip_eval)."
        )
    return found[0]
