"""Argument types shared by the command line and the example scripts."""

import argparse
import json
import math
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from .atomic import OutputFolderError, check_output_folder
from .configuration_cascade_clip import SETTINGS
from .errors import counted, one_line
from .presets import BENCHMARKS


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """
    Help that ends each option's text with its default, where there is one worth reading: not for options without
    a default (None), switches, empty lists, or texts that already say what happens by default.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text, default = action.help, action.default  # argparse asks only for options with a help text
        if (
            default in (None, argparse.SUPPRESS)
            or isinstance(default, bool)
            or (isinstance(default, (list, tuple, dict)) and not default)
            or "default" in text.lower()
            or (not action.option_strings and action.nargs not in (argparse.OPTIONAL, argparse.ZERO_OR_MORE))
        ):
            return text
        if isinstance(default, (list, tuple)):
            # Several values are typed apart; a list that one value holds is typed with commas (`2048,512`).
            separator = "," if action.nargs in (None, argparse.OPTIONAL) else " "
            shown_default = separator.join(map(str, default))
        else:
            shown_default = str(default)
        # The help text is a %-format string (argparse fills in %(default)s and the like).
        return f"{text} (default: {shown_default.replace('%', '%%')})"


class CommandLineParser(argparse.ArgumentParser):
    """
    The argument parser of `cascade-clip` and the example scripts: usage errors are one line, like every other
    error of the command line; the help shows defaults; and every long option is accepted spelled with dashes or
    with underscores (`--output-dir` and `--output_dir`), whichever of the two the parser names it by. The command
    line names its options with dashes, the scripts with underscores, as transformers' scripts do.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        # Subcommands' parsers (of this class too) respell their own options when the main parser hands them over.
        args = sys.argv[1:] if args is None else list(args)
        end = args.index("--") if "--" in args else len(args)
        respelled = [self.known_spelling(argument) for argument in args[:end]] + args[end:]
        return super().parse_known_args(respelled, namespace)

    def known_spelling(self, argument: str) -> str:
        """
        `argument` (`--name` or `--name=value`) with `name` spelled as this parser knows it, when it knows only the
        other spelling (dashes for underscores or the reverse); any other argument as it is.
        """
        if not argument.startswith("--"):
            return argument
        option, equals, value = argument.partition("=")
        known = self._option_string_actions  # argparse's table of this parser's options, its groups' included
        if option in known:
            return argument
        for respelled in ("--" + option[2:].replace("_", "-"), "--" + option[2:].replace("-", "_")):
            if respelled in known:
                return respelled + equals + value
        return argument


def whole_number_of_at_least(text: str, minimum: int) -> int:
    """`text` as a whole number of at least `minimum`, or argparse's error saying which it is not."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    """A whole number of at least 1 (sizes, counts)."""
    return whole_number_of_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """A whole number of at least 0 (counts where 0 means none or never)."""
    return whole_number_of_at_least(text, 0)


def finite_float(text: str) -> float:
    """A number that is neither infinite nor NaN."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
    return value


def positive_float(text: str) -> float:
    """A finite number greater than 0 (a learning rate)."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number of at least 0 (a weight decay)."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def unit_interval(text: str) -> float:
    """A number in [0, 1] (an opacity)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
    return value


def torch_device(text: str) -> str:
    """
    A device this torch can run on: `cpu`, `cuda`, `cuda:N` or `mps` where present, or `auto`, which picks the
    first CUDA GPU if there is one, else Apple's MPS if there is, else the CPU (the name it picks is returned).
    """
    import torch

    if text == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; use auto, cpu, cuda, cuda:1 or mps") from None
    if device.type == "cuda":
        check_cuda_device(text, device.index)
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text}: MPS is not available on this machine; use --device cpu or auto")
    elif device.type != "cpu":
        raise argparse.ArgumentTypeError(f"{text}: use auto, cpu, cuda, cuda:N or mps")
    return text


def check_cuda_device(text: str, index: int | None) -> None:
    """Refuses (`ArgumentTypeError`) the CUDA device `text`, of index `index`, when this torch cannot use it."""
    import torch

    if not torch.backends.cuda.is_built():
        raise argparse.ArgumentTypeError(
            f"{text}: CUDA is not available in this torch build (a CPU-only build); use --device cpu or auto"
        )
    if not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(
            f"{text}: CUDA is not available on this machine (no GPU or driver found); use --device cpu or auto"
        )
    count = torch.cuda.device_count()
    if index is not None and index >= count:
        devices = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
        raise argparse.ArgumentTypeError(
            f"{text}: this machine has {counted(count, 'CUDA device')} ({devices}); use one of them, or auto"
        )


def hub_license(text: str) -> str:
    """A licence id the Hub's model cards take (`model_card.HUB_LICENSES`: apache-2.0, mit, cc-by-4.0, other...)."""
    from .model_card import HUB_LICENSES

    if text not in HUB_LICENSES:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a Hub licence id; use one such as apache-2.0, mit, cc-by-4.0, cc-by-nc-4.0, or other "
            "(huggingface.co/docs/hub/repositories-licenses)"
        )
    return text


def comma_separated_ints(text: str) -> list[int]:
    """`"0,1,2"` -> `[0, 1, 2]`."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def trackers_argument(text: str) -> list[str]:
    """
    `--report_to`: `none`, `all` (every installed tracker), or Accelerate trackers separated by commas
    (`tensorboard,wandb`), each of which must be installed: a run finds out now, not after its first steps.
    """
    # Accelerate comes with the training extra only; the command line must not need it.
    from accelerate import utils
    from accelerate.utils import LoggerType

    names = [name.strip() for name in text.split(",") if name.strip()]
    if names in (["none"], ["all"]):
        return names
    known = [tracker.value for tracker in LoggerType if tracker != LoggerType.ALL]
    for name in names:
        if name not in known:
            raise argparse.ArgumentTypeError(f"unknown tracker {name!r}; use none, all, or some of {', '.join(known)}")
        if not getattr(utils, f"is_{name}_available")():
            raise argparse.ArgumentTypeError(f"{name} is not installed: pip install {name}, or report to another")
    return names


# Files of class names the command line reads, and suffixes that name a file rather than a class.
CLASS_NAME_FILE_SUFFIXES = (".txt", ".json")
FILE_LIKE_SUFFIXES = (".csv", ".tsv", ".lst", ".yaml", ".yml", ".names")


def class_names_argument(text: str) -> list[str]:
    """
    Class names as `"cat,dog,sky"`, or a `.txt` (one per line; lines starting with `#` are comments) or `.json`
    (a list) file. A value that names such a file must be one: a missing or unreadable file is an error, never a
    class named after it.
    """
    path = Path(text)
    suffix = path.suffix.lower()
    if "," in text or suffix not in CLASS_NAME_FILE_SUFFIXES + FILE_LIKE_SUFFIXES:
        return [name.strip() for name in text.split(",")]
    if suffix in FILE_LIKE_SUFFIXES:
        raise argparse.ArgumentTypeError(f"{text}: class names are read from a .txt (one per line) or .json file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: no such file of class names")
    try:
        # utf-8-sig: files saved by Windows editors start with a byte-order mark, which is not part of a name.
        content = path.read_text(encoding="utf-8-sig")
        names = json.loads(content) if suffix == ".json" else content.splitlines()
    except (OSError, ValueError) as error:
        raise argparse.ArgumentTypeError(f"{text}: cannot be read as class names ({one_line(error)})") from error
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise argparse.ArgumentTypeError(f"{text}: a .json file of class names must hold a list of strings")
    if suffix == ".txt":
        names = [name for name in names if not name.lstrip().startswith("#")]
    return [name.strip() for name in names if name.strip()]


def check_output_argument(
    parser: argparse.ArgumentParser, folder: str | os.PathLike, names: Iterable[str] | None = None, *, kind: str
) -> None:
    """
    Ends a script before any work, with one line and exit code 2 as `cascade-clip` does, when writing `names` (or,
    without them, the whole folder) into `folder` as outputs of `kind` would lose a file this program did not write
    as such an output (see `cascade_clip_hf.atomic.check_output_folder`).
    """
    try:
        check_output_folder(folder, names, kind=kind)
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
    group.add_argument("--image_column", default="image", help="the dataset's column of images")
    group.add_argument("--label_column", default="label", help="the dataset's column of label maps")
    group.add_argument("--reduce_labels", action="store_true", help="label 0 is background: ignore it, shift the rest")
    group.add_argument(
        "--seen_class_ids",
        type=comma_separated_ints,
        help="classes seen in training, e.g. 0,1,2; default: a benchmark's split, else the --init_from model's own "
        "when its classes are the dataset's, else all",
    )
    group.add_argument(
        "--setting",
        choices=SETTINGS,
        default="inductive",
        help="zero-shot setting: unseen classes' pixels ignored or used",
    )


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
