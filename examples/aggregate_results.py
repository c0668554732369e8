"""Aggregate several runs' results (e.g. one per --seed) into a markdown table: each run, then mean and spread.

    python examples/aggregate_results.py runs/voc-seed*/eval_results.json

Reads the `results.json` records that examples/train_cascade_clip.py (`eval_results.json` in its output folder) and
examples/evaluate_cascade_clip.py (`--output`) write, and prints one row per run (named by its file) and the mean
and sample standard deviation (n - 1) of mIoU, mIoU(seen), mIoU(unseen), hIoU and pixel accuracy, in percent. A
metric a run could not compute (hIoU without unseen classes) is left out of its mean.
"""

import json
import logging
import os

from cascade_clip_hf.arguments import CommandLineParser
from cascade_clip_hf.errors import configure_logging, one_line, run_script
from cascade_clip_hf.evaluation import HEADLINE_METRICS, aggregate_markdown
from cascade_clip_hf.training_log import is_number


logger = logging.getLogger("aggregate_results")
# What must agree for runs' numbers to be comparable.
COMPARED_FIELDS = ("dataset", "split", "num_images")


def read_record(path: str) -> dict:
    """
    One run's `results.json` record.

    Raises:
        ValueError: naming `path` when it is not JSON, holds no headline metric, or a metric that is neither a
            finite number nor null.
    """
    try:
        with open(path, encoding="utf-8") as file:
            record = json.load(file)
    except ValueError as error:
        raise ValueError(f"{path} is not JSON ({one_line(error)})") from None
    if not isinstance(record, dict) or not record.keys() & HEADLINE_METRICS.keys():
        raise ValueError(f"{path} is not a results.json record: it holds none of {', '.join(HEADLINE_METRICS)}")
    for key in HEADLINE_METRICS:
        value = record.get(key)
        if value is not None and not is_number(value):
            raise ValueError(f"{path}: {key} is {value!r}, not a finite number (or null)")
    return record


def main(argv=None) -> str:
    parser = CommandLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="results.json files, one per run")
    args = parser.parse_args(argv)
    configure_logging(level=logging.INFO, format="%(name)s: %(message)s")
    records, seen_files = {}, {}
    for path in args.results:
        real_path = os.path.realpath(path)
        if real_path in seen_files:
            raise ValueError(f"{path} is {seen_files[real_path]} again: each run's results may be counted once")
        seen_files[real_path] = path
        records[path] = read_record(path)
    differences = []
    for field in COMPARED_FIELDS:
        values = {json.dumps(record.get(field)) for record in records.values()}
        if len(values) > 1:
            differences.append(f"{field} ({', '.join(sorted(values))})")
    if differences:
        logger.warning(f"The runs differ in {'; '.join(differences)}: their numbers may not compare.")
    table = aggregate_markdown(records)
    print(table)
    return table


if __name__ == "__main__":
    run_script(main)
