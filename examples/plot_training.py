"""Plot a training run's loss, learning rate and evaluation metrics over steps into RUN_DIR/training_curves.png.

    python examples/plot_training.py runs/coco-inductive

Reads RUN_DIR/scalars.jsonl, which every run of examples/train_cascade_clip.py writes as it trains (also while it
is still running, or after it was killed), and marks the step of the best model in RUN_DIR/best when there is one.
"""

import logging

from cascade_clip_hf.arguments import CommandLineParser
from cascade_clip_hf.errors import configure_logging, run_script
from cascade_clip_hf.training_log import plot_training_curves


logger = logging.getLogger("plot_training")


def main(argv=None) -> None:
    parser = CommandLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="the --output_dir of a training run")
    args = parser.parse_args(argv)
    configure_logging(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logger.info(f"Curves written to {plot_training_curves(args.run_dir)}")


if __name__ == "__main__":
    run_script(main)
