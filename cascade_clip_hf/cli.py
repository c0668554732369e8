"""The `cascade-clip` command line."""

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from transformers.utils import logging as transformers_logging

from .arguments import class_names_argument, comma_separated_ints
from .convert_original_checkpoint import DEFAULT_TOKENIZER, convert_checkpoint
from .presets import BENCHMARKS


logger = logging.getLogger("cascade_clip_hf")


def add_convert_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert an original Cascade-CLIP checkpoint to a Hugging Face folder",
        description="Converts a checkpoint of the original release into a save_pretrained folder (safetensors "
        "weights, config, processor). Sizes are read from the tensors; what they cannot tell comes from --preset "
        "or the flags.",
    )
    parser.add_argument("checkpoint", help="the original .pth checkpoint")
    parser.add_argument("--output-dir", required=True, help="where to write the converted model")
    parser.add_argument("--preset", choices=BENCHMARKS, help="the benchmark the checkpoint was trained on")
    parser.add_argument("--setting", choices=("inductive", "transductive"), help="default: inductive")
    parser.add_argument("--class-names", type=class_names_argument, help='"cat,dog,..." or a .txt/.json file')
    parser.add_argument("--class-embeddings", help="a .npy of precomputed class embeddings, one row per class")
    parser.add_argument("--seen-class-ids", type=comma_separated_ints, help="ids of the classes seen in training")
    parser.add_argument("--extract-layers", type=comma_separated_ints, help="tapped layers, default 5,6,7,8,9,10")
    parser.add_argument("--templates", nargs="+", help='prompt templates, e.g. "a photo of a {}."')
    parser.add_argument("--tokenizer", default=DEFAULT_TOKENIZER, help="name or path of a CLIP tokenizer")
    parser.add_argument("--vision-heads", type=int, help="attention heads of the vision tower (default width/64)")
    parser.add_argument("--text-heads", type=int, help="attention heads of the text tower (default width/64)")
    parser.add_argument("--decoder-heads", type=int, help="attention heads of the decoders (default 8)")
    parser.set_defaults(run=run_convert)


def run_convert(args) -> int:
    report = convert_checkpoint(
        args.checkpoint,
        args.output_dir,
        preset=args.preset,
        setting=args.setting,
        class_names=args.class_names,
        class_embeddings=args.class_embeddings,
        seen_class_ids=args.seen_class_ids,
        extract_layers=args.extract_layers,
        templates=args.templates,
        tokenizer=args.tokenizer,
        vision_heads=args.vision_heads,
        text_heads=args.text_heads,
        decoder_heads=args.decoder_heads,
    )
    logger.info(report.summary())
    return 0


def add_parity_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "parity",
        help="check the port against test vectors of the original implementation",
        description="Converts a fixture's original checkpoint with the settings of its meta.json, recomputes "
        "every expected tensor and prints the errors against the tolerances of a faithful fp32 port.",
    )
    parser.add_argument("fixture_dir", help="a folder with checkpoint.pth, inputs/expected.safetensors, meta.json")
    parser.add_argument("--tokenizer", default=DEFAULT_TOKENIZER, help="name or path of a CLIP tokenizer")
    parser.set_defaults(run=run_parity)


def run_parity(args) -> int:
    from .fixture_parity import compare_to_expected, convert_fixture, fixture_outputs, format_report
    from .modeling_cascade_clip import CascadeClipForZeroShotSegmentation

    with tempfile.TemporaryDirectory() as workdir:
        model_dir = convert_fixture(args.fixture_dir, Path(workdir) / "model", args.tokenizer)
        model = CascadeClipForZeroShotSegmentation.from_pretrained(model_dir)
    report = compare_to_expected(fixture_outputs(model, args.fixture_dir), args.fixture_dir)
    print(format_report(report))
    failed = [name for name, row in report.items() if not row["ok"]]
    if failed:
        logger.error(f"Outside tolerance: {', '.join(failed)}")
        return 1
    logger.info(f"All {len(report)} tensors match the original implementation.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cascade-clip", description="Cascade-CLIP zero-shot segmentation tools.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_convert_parser(subparsers)
    add_parity_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    transformers_logging.set_verbosity_error()
    try:
        return args.run(args)
    except (ValueError, OSError) as error:
        logger.error(f"error: {error}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
