"""Evaluate a Cascade-CLIP model on a benchmark split as the original does, on one or many processes.

    python examples/evaluate_cascade_clip.py --model runs/coco-inductive --dataset coco-stuff-164k \
        --data_dir data/coco_stuff164k --split val --output results.json
    accelerate launch --num_processes 4 examples/evaluate_cascade_clip.py ...

Each image is resized keeping its aspect ratio (short side 512, long side at most 2048), segmented with the
sliding window (512 crops, stride 426, overlapping scores averaged) and resized back to its original size. The
metrics (mIoU over all, seen and unseen classes, hIoU, pixel accuracy, per-class IoU) come from the `evaluate`
module shipped in `cascade_clip_hf/metrics/zero_shot_miou` and are written in percent. A model evaluated on another
benchmark's classes (cross-dataset) embeds them with its text tower.
"""

import argparse
import json
import logging
from pathlib import Path

from accelerate import Accelerator

from cascade_clip_hf.arguments import (
    CommandLineParser,
    add_data_arguments,
    check_output_argument,
    data_source,
    positive_int,
)
from cascade_clip_hf.atomic import EVALUATION, output_files
from cascade_clip_hf.data import load_segmentation_data
from cascade_clip_hf.errors import configure_logging, counted, run_script
from cascade_clip_hf.evaluation import evaluate_split, markdown_summary, results_record
from cascade_clip_hf.presets import BENCHMARKS, benchmark_facts
from cascade_clip_hf.segmenter import load_for_inference
from cascade_clip_hf.vocabulary import load_class_embeddings


logger = logging.getLogger("evaluate_cascade_clip")


def parse_args(argv=None) -> argparse.Namespace:
    parser = CommandLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a converted or trained model: folder or Hub id")
    parser.add_argument("--split", default="val", help="the split to evaluate on")
    parser.add_argument("--output", default="results.json", help="where to write the results (JSON)")
    parser.add_argument("--batch_size", type=int, default=1, help="images per process and step")
    parser.add_argument(
        "--window_batch_size", type=positive_int, help="sliding windows per forward pass (default: all)"
    )
    parser.add_argument("--num_workers", type=int, default=2, help="data loading processes per process")
    parser.add_argument("--max_samples", type=int, help="evaluate only the first N images")
    parser.add_argument("--class_embeddings", help=".npy of the dataset classes' embeddings (cross-dataset)")
    parser.add_argument("--templates", nargs="+", help="templates for embedding the dataset's class names")
    add_data_arguments(parser)
    args = parser.parse_args(argv)
    if not args.dataset and not args.dataset_name:
        parser.error("pass --dataset (with --data_dir) or --dataset_name")
    check_output_argument(parser, Path(args.output).parent, [Path(args.output).name], kind=EVALUATION)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    configure_logging(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    accelerator = Accelerator()
    # The data first: a dataset that cannot be read stops the run before the model is loaded.
    data = load_segmentation_data(data_source(args), args.split)
    model, processor = load_for_inference(args.model)
    model = model.to(accelerator.device)

    cross_dataset = model.config.class_names != data.class_names
    if cross_dataset:
        templates = args.templates or (
            benchmark_facts(args.dataset)["templates"] if args.dataset in BENCHMARKS else None
        )
        if templates:
            processor.templates = templates
        if args.class_embeddings:
            num_classes, projection_dim = len(data.class_names), model.config.projection_dim
            embeddings = load_class_embeddings(args.class_embeddings, num_classes, projection_dim)
            model.set_vocabulary(data.class_names, embeddings, seen_class_ids=None)
        logger.info(
            f"Cross-dataset evaluation: the model's {counted(model.config.num_labels, 'class', 'classes')} differ "
            f"from the dataset's {len(data.class_names)}; every dataset class counts as seen, as in the original."
        )
    metrics = evaluate_split(
        accelerator,
        model,
        processor,
        data,
        batch_size=args.batch_size,
        window_batch_size=args.window_batch_size,
        num_workers=args.num_workers,
        max_samples=args.max_samples,
    )
    if not accelerator.is_main_process:
        return {}
    record = results_record(
        metrics,
        data.class_names,
        model=args.model,
        dataset=args.dataset or args.dataset_name,
        split=args.split,
        cross_dataset=cross_dataset,
        num_processes=accelerator.num_processes,
    )
    output = Path(args.output)
    with output_files(output.parent, EVALUATION) as staging:
        (staging / output.name).write_text(json.dumps(record, indent=2) + "\n")
    print(markdown_summary(record))
    logger.info(f"Results written to {output}")
    return record


if __name__ == "__main__":
    run_script(main)
