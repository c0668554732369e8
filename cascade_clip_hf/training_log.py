"""A training run's scalars in its output folder, whatever the trackers: a JSON-lines log and a plot of its curves."""

import json
import math
import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .atomic import MODEL, output_files, record_outputs
from .evaluation import HEADLINE_METRICS
from .training import saved_best_model


# One JSON object a line: `step` (optimizer steps done) and the scalars logged after it.
SCALARS_FILE = "scalars.jsonl"
CURVES_FILE = "training_curves.png"
# The training scalars the curves show, with their names in the legend.
LOSSES = {"loss": "loss (total)", "loss_mask": "focal (mask) loss", "loss_dice": "dice loss"}
LEARNING_RATE = "lr"
# Evaluation metrics are logged under this prefix, beside the training scalars.
EVAL_PREFIX = "eval/"
# One marker per evaluation metric, so that metrics of equal values (hIoU and mIoU(seen) at 0) stay apart.
METRIC_MARKERS = "osv^D"


def is_number(value) -> bool:
    """Whether `value` is a finite int or float (JSON's numbers; not a boolean, NaN or infinity)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_scalars(path: str | os.PathLike) -> list[dict]:
    """
    The lines of a scalar log, oldest first; none for a missing file. A last line without its newline is an append
    that a kill interrupted and is left out.

    Raises:
        ValueError: naming the file and line number of a line that is not a JSON object of a whole `step` and
            numbers (or null).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    lines = []
    for number, line in enumerate(text.split("\n")[:-1], start=1):
        if not line.strip():
            continue
        try:
            scalars = json.loads(line)
        except ValueError:
            raise ValueError(f"{path}, line {number}: not JSON (a scalar log holds one JSON object a line)") from None
        if not isinstance(scalars, dict) or not isinstance(scalars.get("step"), int) or scalars["step"] is True:
            raise ValueError(f"{path}, line {number}: not an object with a whole-number step")
        wrong = [key for key, value in scalars.items() if value is not None and not is_number(value)]
        if wrong:
            raise ValueError(f"{path}, line {number}: {wrong[0]!r} is {scalars[wrong[0]]!r}, not a finite number")
        lines.append(scalars)
    return lines


class ScalarLog:
    """
    `output_dir/scalars.jsonl`, appended one line per logged step and flushed at once, so that a run killed at any
    moment keeps every line logged before. Opening it keeps only the lines of steps up to `resumed_step` (0 for a
    run from the start), rewritten by a rename: a resumed run repeats no step. Write from one process only.
    """

    def __init__(self, output_dir: str | os.PathLike, resumed_step: int):
        self.path = Path(output_dir) / SCALARS_FILE
        kept = [line for line in read_scalars(self.path) if line["step"] <= resumed_step]
        with output_files(output_dir, MODEL) as staging:
            (staging / SCALARS_FILE).write_text("".join(json.dumps(line) + "\n" for line in kept), encoding="utf-8")
        record_outputs(output_dir, [SCALARS_FILE], MODEL, appended=True)  # it grows as the run logs
        self.file = open(self.path, "a", encoding="utf-8")

    def write(self, step: int, scalars: dict[str, float]) -> None:
        self.file.write(json.dumps({"step": step, **scalars}) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def series(lines: list[dict], key: str) -> tuple[list[int], list[float]]:
    """The steps and values of the lines that hold `key`."""
    points = [(line["step"], line[key]) for line in lines if line.get(key) is not None]
    return [step for step, _ in points], [value for _, value in points]


def plot_training_curves(run_dir: str | os.PathLike) -> Path:
    """
    Plots the losses, the learning rate and (when the run evaluated during training) the evaluation metrics of
    `run_dir/scalars.jsonl` over optimizer steps into `run_dir/training_curves.png` (900 x 1000 pixels, 900 x 700
    without evaluations), with the step of the best model (`run_dir/best`) marked. Written with matplotlib's Agg
    canvas, through a rename.

    Raises:
        `FileNotFoundError`: if `run_dir` holds no scalar log, or one without a line.
    """
    run_dir = Path(run_dir)
    lines = read_scalars(run_dir / SCALARS_FILE)
    if not lines:
        raise FileNotFoundError(
            f"{run_dir / SCALARS_FILE}: no scalars to plot (is {run_dir} a training run's folder?)"
        )
    evaluated = any(key.startswith(EVAL_PREFIX) for line in lines for key in line)
    figure = Figure(figsize=(9, 10 if evaluated else 7), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(3 if evaluated else 2, 1, sharex=True)
    loss_axes, rate_axes = axes[0], axes[1]
    for key, name in LOSSES.items():
        loss_axes.plot(*series(lines, key), label=name, linewidth=1.5 if key == "loss" else 1.0)
    loss_axes.set(title="Training loss", ylabel="loss")
    rate_axes.plot(*series(lines, LEARNING_RATE), label="learning rate (prompts and decoders)", color="tab:purple")
    rate_axes.set(title="Learning rate", ylabel="learning rate")
    rate_axes.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    if evaluated:
        metric_axes = axes[2]
        for (key, name), marker in zip(HEADLINE_METRICS.items(), METRIC_MARKERS, strict=True):
            steps, values = series(lines, EVAL_PREFIX + key)
            if steps:
                emphasis = (
                    {"linewidth": 2.0, "markersize": 7} if key == "hiou" else {"linewidth": 1.2, "markersize": 5}
                )
                metric_axes.plot(steps, values, marker=marker, fillstyle="none", label=name, **emphasis)
        best = saved_best_model(run_dir)
        # Marked only when this log scored it: a run started afresh in an old run's folder finds its best/ there.
        if best is not None and any(
            line["step"] == best.step and line.get(EVAL_PREFIX + best.metric) == best.metrics[best.metric]
            for line in lines
        ):
            metric_axes.axvline(
                best.step,
                color="grey",
                linestyle="--",
                linewidth=1,
                label=f"best by {HEADLINE_METRICS[best.metric]} (step {best.step})",
            )
        metric_axes.set(title="Evaluation on the validation split", ylabel="metric (%)")
    for panel in axes:
        panel.grid(alpha=0.3)
        panel.legend(loc="best", fontsize="small")
    axes[-1].set_xlabel("step")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    with output_files(run_dir, MODEL) as staging:
        figure.savefig(staging / CURVES_FILE)
    return run_dir / CURVES_FILE
