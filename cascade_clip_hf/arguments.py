"""Argument types shared by the command line and the example scripts."""

import argparse
import json
from pathlib import Path


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
