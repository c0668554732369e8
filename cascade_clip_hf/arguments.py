"""Argument types shared by the command line and the example scripts."""

import argparse
import json
import os
from collections.abc import Iterable
from pathlib import Path

from .atomic import OutputFolderError, check_output_folder
from .configuration_cascade_clip import SETTINGS
from .presets import BENCHMARKS


def comma_separated_ints(text: str) -> list[int]:
    """`"0,1,2"` -> `[0, 1, 2]`."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def class_names_argument(text: str) -> list[str]:
    """Class names as `"cat,dog,sky"`, or a `.txt` (one per line) or `.json` (a list) file."""
    path = Path(text)
    if path.suffix in (".txt", ".json") and path.is_file():
        if path.suffix == ".json":
            names = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(names, list):
                raise argparse.ArgumentTypeError(f"{path} must hold a JSON list of class names")
            return names
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [name.strip() for name in text.split(",")]


def check_output_argument(
    parser: argparse.ArgumentParser, folder: str | os.PathLike, names: Iterable[str] | None = None
) -> None:
    """
    Ends a script before any work, with one line and exit code 2 as `cascade-clip` does, when writing `names` (or,
    without them, the whole folder) into `folder` would lose a file this program did not write (see
    `cascade_clip_hf.atomic.check_output_folder`).
    """
    try:
        check_output_folder(folder, names)
    except OutputFolderError as error:
        parser.exit(2, f"error: {error}\n")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The dataset options the training and evaluation scripts share; `data_source` turns them into a source."""
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", choices=BENCHMARKS, help="a benchmark: its layout, classes and seen/unseen split")
    group.add_argument("--data_dir", help="the benchmark's folder in its original on-disk layout")
    group.add_argument(
        "--label_dir", help="a PASCAL benchmark's label folder instead of its default, e.g. SegmentationClassAug"
    )
    group.add_argument("--dataset_name", help="a Hugging Face dataset (name, or a folder written by save_to_disk)")
    group.add_argument("--id2label", help="id2label.json with the class names of --dataset_name")
    group.add_argument("--image_column", default="image")
    group.add_argument("--label_column", default="label")
    group.add_argument("--reduce_labels", action="store_true", help="label 0 is background: ignore it, shift the rest")
    group.add_argument("--seen_class_ids", type=comma_separated_ints, help="classes seen in training, e.g. 0,1,2")
    group.add_argument("--setting", choices=SETTINGS, default="inductive")


def data_source(args: argparse.Namespace):
    """The [`DataSource`] the options of `add_data_arguments` name."""
    # The data module needs `datasets`, which only the training extra installs; the command line must not.
    from .data import DataSource

    return DataSource(
        benchmark=args.dataset,
        data_dir=args.data_dir,
        dataset_name=args.dataset_name,
        id2label_file=args.id2label,
        image_column=args.image_column,
        label_column=args.label_column,
        reduce_labels=args.reduce_labels,
        seen_class_ids=args.seen_class_ids,
        setting=args.setting,
        label_dir=args.label_dir,
    )
