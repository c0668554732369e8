"""Aggregate several runs' results (e.g. one per --seed) into a markdown table: each run, then mean and spread.

    python examples/aggregate_results.py runs/voc-seed*/eval_results.json

Reads the `results.json` records that examples/train_cascade_clip.py (`eval_results.json` in its output folder) and
examples/evaluate_cascade_clip.py (`--output`) write, and prints one row per run (named by its file) and the mean
and sample standard deviation (n - 1) of mIoU, mIoU(seen), mIoU(unseen), hIoU and pixel accuracy, in percent. A
metric a run could not compute (hIoU without unseen classes) is left out of its mean.
"""

import json

from cascade_clip_hf.arguments import CommandLineParser
from cascade_clip_hf.errors import run_script
from cascade_clip_hf.evaluation import HEADLINE_METRICS, aggregate_markdown


def main(argv=None) -> str:
    parser = CommandLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="results.json files, one per run")
    args = parser.parse_args(argv)
    records = {}
    for path in args.results:
        with open(path, encoding="utf-8") as file:
            record = json.load(file)
        if not isinstance(record, dict) or not record.keys() & HEADLINE_METRICS.keys():
            raise ValueError(f"{path} is not a results.json record: it holds none of {', '.join(HEADLINE_METRICS)}")
        records[path] = record
    table = aggregate_markdown(records)
    print(table)
    return table


if __name__ == "__main__":
    run_script(main)
