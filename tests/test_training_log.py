"""What a training run leaves to look at: the scalar log, its curves, the best model, the card and seed tables."""

import json
from dataclasses import asdict

import PIL.Image
import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from cascade_clip_hf import CascadeClipConfig, CascadeClipForZeroShotSegmentation, CascadeClipProcessor
from cascade_clip_hf.atomic import MODEL, OutputFolderError, read_record, record_outputs
from cascade_clip_hf.evaluation import HEADLINE_METRICS, aggregate_metrics
from cascade_clip_hf.model_card import build_model_card
from cascade_clip_hf.training import (
    BEST_DIR,
    BEST_MODEL_FILE,
    TRAINING_STATE_FILE,
    BestModel,
    DataPosition,
    check_saved_best_model,
    read_best_model,
    save_best,
    save_checkpoint,
    saved_best_model,
)
from cascade_clip_hf.training_log import CURVES_FILE, SCALARS_FILE, ScalarLog, plot_training_curves, read_scalars

from .helpers import EXAMPLES, load_script


def headline(miou: float, hiou: float | None = 10.0) -> dict:
    return {"miou": miou, "miou_seen": 50.0, "miou_unseen": 20.0, "hiou": hiou, "pixel_accuracy": 80.0}


def write_scalars(run_dir, steps: int, eval_steps: int | None = None) -> None:
    """A run's scalar log of `steps` steps, evaluated every `eval_steps`."""
    lines = []
    for step in range(1, steps + 1):
        line = {"step": step, "loss": 3.0 / step, "loss_mask": 2.0 / step, "loss_dice": 1.0 / step, "lr": 1e-4}
        if eval_steps and step % eval_steps == 0:
            line.update({f"eval/{key}": value + step for key, value in headline(30.0).items()})
        lines.append(json.dumps(line) + "\n")
    (run_dir / SCALARS_FILE).write_text("".join(lines))
    record_outputs(run_dir, [SCALARS_FILE], MODEL, appended=True)  # as a run records it


def test_a_resumed_log_keeps_the_steps_up_to_its_checkpoint_and_appends(tmp_path):
    write_scalars(tmp_path, 4)
    with open(tmp_path / SCALARS_FILE, "a", encoding="utf-8") as file:
        file.write('{"step": 5, "lo')  # an append a kill interrupted
    assert [line["step"] for line in read_scalars(tmp_path / SCALARS_FILE)] == [1, 2, 3, 4]
    log = ScalarLog(tmp_path, resumed_step=2)
    assert [line["step"] for line in read_scalars(tmp_path / SCALARS_FILE)] == [1, 2]
    log.write(3, {"loss": 0.5})
    assert read_scalars(tmp_path / SCALARS_FILE)[-1] == {"step": 3, "loss": 0.5}  # flushed at once
    log.close()
    assert SCALARS_FILE in read_record(tmp_path).names
    ScalarLog(tmp_path, resumed_step=0).close()  # a run from the start
    assert read_scalars(tmp_path / SCALARS_FILE) == []


def test_a_log_the_user_put_in_place_of_the_runs_is_kept(tmp_path):
    """The log grows after it is recorded, yet a file put in place of a deleted one (which may even get its inode
    back) is the user's: a resumed run refuses it."""
    write_scalars(tmp_path, 4)
    ScalarLog(tmp_path, resumed_step=4).close()  # the run's own, appended since: replaced
    (tmp_path / SCALARS_FILE).unlink()
    (tmp_path / SCALARS_FILE).write_text('{"step": 1, "loss": 9.0}\n')
    with pytest.raises(OutputFolderError, match=r"it holds scalars\.jsonl, which is not the file cascade-clip wrote"):
        ScalarLog(tmp_path, resumed_step=1)
    assert read_scalars(tmp_path / SCALARS_FILE) == [{"step": 1, "loss": 9.0}]


@pytest.mark.parametrize(("eval_steps", "size"), [(2, (900, 1000)), (None, (900, 700))])
def test_plot_training_draws_a_run_folder(tmp_path, eval_steps, size):
    write_scalars(tmp_path, 6, eval_steps)
    load_script(EXAMPLES / "plot_training.py").main([str(tmp_path)])
    with PIL.Image.open(tmp_path / CURVES_FILE) as image:
        assert image.format == "PNG" and image.size == size
        # Something was drawn: far more than the white of an empty figure.
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or []) > 50
    assert CURVES_FILE in read_record(tmp_path).names


def grey_pixels(path) -> int:
    """Pixels of the grey (128, 128, 128) the best step's line is drawn in."""
    with PIL.Image.open(path) as image:
        return sum(count for count, color in image.convert("RGB").getcolors(maxcolors=1 << 16) if color == (128,) * 3)


def test_the_curves_mark_the_best_step_only_when_the_log_scored_it(tmp_path):
    write_scalars(tmp_path, 6, eval_steps=2)
    best_dir = tmp_path / BEST_DIR
    best_dir.mkdir()
    scored = {key: value + 4 for key, value in headline(30.0).items()}  # as write_scalars logs step 4
    (best_dir / BEST_MODEL_FILE).write_text(json.dumps({"metric": "hiou", "step": 4, "metrics": scored}))
    marked = grey_pixels(plot_training_curves(tmp_path))
    # A best/ left by an earlier run in this folder: not this log's.
    (best_dir / BEST_MODEL_FILE).write_text(json.dumps({"metric": "hiou", "step": 5, "metrics": scored}))
    unmarked = grey_pixels(plot_training_curves(tmp_path))  # a few, where text is smoothed
    assert marked > 100 + unmarked, (marked, unmarked)


def test_plot_training_names_a_folder_without_a_log(tmp_path):
    with pytest.raises(FileNotFoundError, match="no scalars to plot"):
        plot_training_curves(tmp_path)


def test_the_best_model_is_the_first_with_the_greatest_value():
    best = BestModel("hiou")
    assert not best.improved_by(headline(40.0, hiou=None))  # a metric that could not be computed
    assert best.improved_by(headline(40.0, hiou=10.0))
    best = BestModel("hiou", 2, headline(40.0, hiou=10.0))
    assert not best.improved_by(headline(45.0, hiou=10.0))  # a tie keeps the earlier step
    assert best.improved_by(headline(5.0, hiou=10.5))


def test_a_checkpoint_records_the_best_evaluation_so_far(tmp_path):
    accelerator = Accelerator(cpu=True)
    accelerator.prepare(torch.nn.Linear(2, 2))
    best = BestModel("hiou", 2, headline(30.0))
    checkpoint = save_checkpoint(accelerator, tmp_path, 3, DataPosition(0, 3, 5), best)
    assert read_best_model(checkpoint, "hiou") == best
    assert read_best_model(checkpoint, "miou") == BestModel("miou")  # resumed with another metric: start over
    checkpoint = save_checkpoint(accelerator, tmp_path, 4, DataPosition(0, 4, 5), BestModel("hiou"))
    assert "best" not in json.loads((checkpoint / TRAINING_STATE_FILE).read_text())
    assert read_best_model(checkpoint, "hiou") == BestModel("hiou")


def test_a_better_model_replaces_the_best_folder(tmp_path, tiny_hub_model_dir):
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(CascadeClipForZeroShotSegmentation.from_pretrained(tiny_hub_model_dir))
    processor = CascadeClipProcessor.from_pretrained(tiny_hub_model_dir)
    save_best(accelerator, model, processor, tmp_path, BestModel("miou", 2, headline(30.0)))
    with torch.no_grad():
        model.vision_encoder.prompts.embeddings.add_(1.0)
    save_best(accelerator, model, processor, tmp_path, BestModel("miou", 4, headline(35.0)))
    assert saved_best_model(tmp_path) == BestModel("miou", 4, headline(35.0))
    weights = load_file(str(tmp_path / BEST_DIR / "model.safetensors"))
    assert torch.equal(weights["vision_encoder.prompts.embeddings"], model.vision_encoder.prompts.embeddings)
    assert CascadeClipConfig.from_pretrained(tmp_path / BEST_DIR).num_labels == model.config.num_labels
    assert not read_record(tmp_path).staging and [path.name for path in tmp_path.iterdir() if path.is_dir()] == [
        BEST_DIR
    ]
    assert json.loads((tmp_path / BEST_DIR / BEST_MODEL_FILE).read_text())["step"] == 4


def test_the_card_states_the_best_step_and_embeds_the_curves(tiny_model):
    best = {"metric": "hiou", "step": 40, "metrics": headline(31.25, hiou=27.5)}
    card = str(build_model_card(tiny_model.config, "org/run", best_during_training=best, curves=CURVES_FILE))
    assert "| best evaluation during training: step 40 (`best/`) | 50.0 | 20.0 | 27.5 | 31.2 |" in card
    assert "the best evaluation by `hiou` came after step 40" in card
    assert f"]({CURVES_FILE})" in card
    plain = str(build_model_card(tiny_model.config, "org/run"))
    assert "best evaluation" not in plain and CURVES_FILE not in plain


def test_aggregate_results_prints_each_run_then_mean_and_sample_deviation(tmp_path, capsys):
    runs = {"seed0": headline(40.0, hiou=30.0), "seed1": headline(44.0, hiou=None)}
    paths = []
    for name, record in runs.items():
        paths.append(str(tmp_path / f"{name}.json"))
        (tmp_path / f"{name}.json").write_text(json.dumps({**record, "num_images": 4}))
    aggregated = aggregate_metrics(list(runs.values()))
    assert aggregated["miou"] == (42.0, pytest.approx(2**1.5), 2)  # sample deviation: sqrt(8 / (2 - 1))
    assert aggregated["hiou"] == (30.0, None, 1) and aggregated["miou_seen"] == (50.0, 0.0, 2)
    load_script(EXAMPLES / "aggregate_results.py").main(paths)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| run | " + " | ".join(HEADLINE_METRICS.values()) + " |"
    assert lines[2] == f"| {paths[0]} | 40.00 | 50.00 | 20.00 | 30.00 | 80.00 |"
    assert lines[3] == f"| {paths[1]} | 44.00 | 50.00 | 20.00 | n/a | 80.00 |"
    assert lines[4] == "| mean | 42.00 | 50.00 | 20.00 | 30.00 | 80.00 |"
    assert lines[5] == "| std. dev. (n - 1) | 2.83 | 0.00 | 0.00 | n/a | 0.00 |"


def test_aggregate_results_refuses_a_file_that_is_not_a_results_record(tmp_path):
    (tmp_path / "other.json").write_text(json.dumps({"step": 3}))
    with pytest.raises(ValueError, match="other.json is not a results.json record"):
        load_script(EXAMPLES / "aggregate_results.py").main([str(tmp_path / "other.json")])


def test_aggregate_results_refuses_a_file_twice_and_metrics_that_are_not_numbers(tmp_path, caplog):
    aggregate = load_script(EXAMPLES / "aggregate_results.py").main
    run = tmp_path / "run.json"
    run.write_text(json.dumps({**headline(40.0), "num_images": 4}))
    with pytest.raises(ValueError, match=r"run/\.\./run\.json is .*run\.json again: each run's results"):
        aggregate([str(run), str(tmp_path / "run" / ".." / "run.json")])
    for value, shown in (("NaN", "nan"), ("true", "True"), ('"41.2"', "'41.2'")):
        (tmp_path / "bad.json").write_text(f'{{"miou": 40.0, "hiou": {value}}}')
        with pytest.raises(ValueError, match=f"bad.json: hiou is {shown}, not a finite number"):
            aggregate([str(run), str(tmp_path / "bad.json")])
    (tmp_path / "other.json").write_text(json.dumps({**headline(42.0), "num_images": 5, "dataset": "voc"}))
    aggregate([str(run), str(tmp_path / "other.json")])
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert warnings == ['The runs differ in dataset ("voc", null); num_images (4, 5): their numbers may not compare.']


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("[1, 2]", "line 2: not an object with a whole-number step"),
        ("{not json", "line 2: not JSON"),
        ('{"step": 2, "loss": "high"}', "line 2: 'loss' is 'high', not a finite number"),
        ('{"step": 2, "loss": NaN}', "line 2: 'loss' is nan, not a finite number"),
        ('{"loss": 1.0}', "line 2: not an object with a whole-number step"),
    ],
)
def test_plot_training_names_the_line_of_a_malformed_log(tmp_path, line, expected):
    (tmp_path / SCALARS_FILE).write_text('{"step": 1, "loss": 1.0}\n' + line + "\n")
    with pytest.raises(ValueError, match=f"{SCALARS_FILE}, {expected}"):
        load_script(EXAMPLES / "plot_training.py").main([str(tmp_path)])


def test_resuming_refuses_a_best_model_that_its_checkpoint_does_not_record(tmp_path):
    """A run went past checkpoint-5 and kept step 8 in best/: resuming from checkpoint-5 would keep and misname it."""
    checkpoint = tmp_path / "checkpoint-5"
    (tmp_path / BEST_DIR).mkdir()
    saved = BestModel("hiou", 8, {"hiou": 40.0})
    (tmp_path / BEST_DIR / BEST_MODEL_FILE).write_text(json.dumps(asdict(saved)))
    with pytest.raises(ValueError, match=r"holds the best model of step 8 by hiou, but checkpoint-5 records step 2"):
        check_saved_best_model(tmp_path, BestModel("hiou", 2, {"hiou": 30.0}), checkpoint)
    with pytest.raises(ValueError, match="records no best model by miou"):
        check_saved_best_model(tmp_path, BestModel("miou"), checkpoint)
    check_saved_best_model(tmp_path, saved, tmp_path / "checkpoint-9")  # the checkpoint that records it
    check_saved_best_model(tmp_path / "elsewhere", BestModel("hiou"), checkpoint)  # no best/ at all
