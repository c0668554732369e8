"""Writes the model cards of the six paper settings (three benchmarks, inductive and transductive).

    python model_cards/generate_model_cards.py --org cascade-clip-hf --output_dir model_cards \
        --results coco-stuff-164k/inductive=runs/coco-inductive/eval_results.json

Each card is `OUTPUT_DIR/cascade-clip-{benchmark}-{setting}/README.md`, built from the package's template
(`cascade_clip_hf/templates/model_card.md`) on huggingface_hub's ModelCard: YAML metadata with the model-index of
our measured results where `--results` gives them, the original authors' reported numbers (marked as theirs),
usage, training recipe, limitations, license and citation.
"""

import argparse
import json
import logging
from pathlib import Path

from cascade_clip_hf import CascadeClipConfig
from cascade_clip_hf.arguments import CommandLineParser, check_output_argument
from cascade_clip_hf.atomic import MODEL_CARD, forget_identities
from cascade_clip_hf.model_card import build_model_card, write_model_card
from cascade_clip_hf.presets import BENCHMARKS


logger = logging.getLogger("generate_model_cards")
SETTINGS = ("inductive", "transductive")


def results_argument(text: str) -> tuple[tuple[str, str], Path]:
    """`benchmark/setting=path/to/results.json`."""
    key, _, path = text.partition("=")
    benchmark, _, setting = key.partition("/")
    if benchmark not in BENCHMARKS or setting not in SETTINGS or not path:
        raise argparse.ArgumentTypeError(f"expected BENCHMARK/SETTING=results.json, got {text!r}")
    return (benchmark, setting), Path(path)


def card_name(benchmark: str, setting: str) -> str:
    """The card's folder, and its Hub repository's name."""
    return f"cascade-clip-{benchmark}-{setting}"


def parse_args(argv=None) -> argparse.Namespace:
    parser = CommandLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--org", default="cascade-clip-hf", help="the Hub namespace of the repositories")
    parser.add_argument(
        "--output_dir",
        default=str(Path(__file__).parent),
        help="folder for the cards, one subfolder per model (default: this script's folder)",
    )
    parser.add_argument("--results", type=results_argument, action="append", default=[], help="measured results")
    args = parser.parse_args(argv)
    for benchmark in BENCHMARKS:
        for setting in SETTINGS:
            card_folder = Path(args.output_dir) / card_name(benchmark, setting)
            check_output_argument(parser, card_folder, ["README.md"], kind=MODEL_CARD)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    measured = {key: json.loads(path.read_text()) for key, path in args.results}
    for benchmark in BENCHMARKS:
        for setting in SETTINGS:
            name = card_name(benchmark, setting)
            results = measured.get((benchmark, setting))
            card = build_model_card(
                CascadeClipConfig.from_preset(benchmark, setting),
                repo_id=f"{args.org}/{name}",
                dataset=benchmark,
                results=results,
                split=results.get("split", "val") if results else "val",
            )
            logger.info(f"Wrote {write_model_card(Path(args.output_dir) / name, card, MODEL_CARD)}")
            forget_identities(Path(args.output_dir) / name)  # committed to the repository


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
