"""Writes a folder that runs as a Hugging Face Space as it is uploaded: the demo app with this checkout's package.

Usage:
    python demo/build_space.py --output_dir build/space
    hf upload OWNER/SPACE build/space . --repo-type space --exclude .cascade-clip-outputs

The package goes into the folder itself (`cascade_clip_hf/`, beside `app.py`, whose folder Python searches first), and
`requirements.txt` lists only its dependencies, from `setup.cfg` (install_requires and the demo extra): the Space
installs from the package index only what is published there, so it builds whether or not a release of
cascade-clip-hf is. The card (`README.md`) is `demo/README.md` with `sdk_version` set to the Gradio version installed
here, which the requirements admit.
"""

import logging
import shutil
from configparser import ConfigParser
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement

import cascade_clip_hf
from cascade_clip_hf.arguments import CommandLineParser, check_output_argument
from cascade_clip_hf.atomic import RECORD, SPACE, atomic_directory
from cascade_clip_hf.errors import configure_logging, run_script


logger = logging.getLogger(__name__)

DEMO = Path(__file__).parent
SETUP_CFG = DEMO.parent / "setup.cfg"
PACKAGE = Path(cascade_clip_hf.__file__).parent
# Left out of the copied package: Python's caches, and the output records of this repository's writers.
NOT_SHIPPED = shutil.ignore_patterns("__pycache__", "*.pyc", RECORD)


def space_requirements(setup_cfg: Path = SETUP_CFG) -> list[str]:
    """The package's dependencies and its demo extra's, as `setup.cfg` gives them, one requirement each."""
    setup = ConfigParser()
    setup.read(setup_cfg, encoding="utf-8")
    lines = setup["options"]["install_requires"].splitlines() + setup["options.extras_require"]["demo"].splitlines()
    return [str(Requirement(line)) for line in lines if line.strip()]


def gradio_version(requirements: list[str]) -> str:
    """
    The Gradio version installed here, which the Space's card names as its `sdk_version`.

    Raises:
        ValueError: Gradio is not installed, or not a version the requirements admit.
    """
    try:
        installed = version("gradio")
    except PackageNotFoundError as error:
        raise ValueError('Gradio is not installed: pip install -e ".[demo]", then build the Space again.') from error
    gradio = next(Requirement(line) for line in requirements if Requirement(line).name == "gradio")
    if not gradio.specifier.contains(installed):
        raise ValueError(
            f"Gradio {installed} is installed, but the demo needs {gradio}: install that, then build again."
        )
    return installed


def space_card(sdk_version: str) -> str:
    """`demo/README.md` with `sdk_version` added to its metadata, after `sdk`."""
    card = (DEMO / "README.md").read_text(encoding="utf-8")
    return card.replace("\nsdk: gradio\n", f"\nsdk: gradio\nsdk_version: {sdk_version}\n", 1)


def build_space(output_dir: Path) -> None:
    """Writes the Space folder (`app.py`, `README.md`, `requirements.txt`, `cascade_clip_hf/`) as one output."""
    requirements = space_requirements()
    card = space_card(gradio_version(requirements))
    with atomic_directory(output_dir, kind=SPACE) as staging:
        shutil.copy2(DEMO / "app.py", staging / "app.py")
        (staging / "README.md").write_text(card, encoding="utf-8")
        (staging / "requirements.txt").write_text("\n".join(requirements) + "\n", encoding="utf-8")
        shutil.copytree(PACKAGE, staging / PACKAGE.name, ignore=NOT_SHIPPED)
    logger.info(
        f"Space written to {output_dir}; upload it with: hf upload OWNER/SPACE {output_dir} . --repo-type space "
        f"--exclude {RECORD}"
    )


def main(argv=None) -> None:
    parser = CommandLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output_dir", required=True, help="the Space folder to write (new, or written by this script)"
    )
    args = parser.parse_args(argv)
    check_output_argument(parser, args.output_dir, kind=SPACE)
    build_space(Path(args.output_dir))


if __name__ == "__main__":
    configure_logging(level=logging.INFO)
    run_script(main)
