"""The training recipe and the training script: groups, schedule, labels per setting, checkpoints, processes."""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file

from cascade_clip_hf import CascadeClipForZeroShotSegmentation, CascadeClipProcessor
from cascade_clip_hf.atomic import MODEL, RECORD, record_outputs
from cascade_clip_hf.data import hub_split, read_id2label
from cascade_clip_hf.evaluation import HEADLINE_METRICS
from cascade_clip_hf.labels import HIDDEN_LABEL, IGNORE_INDEX
from cascade_clip_hf.modeling_cascade_clip import fill_pseudo_labels, segmentation_loss
from cascade_clip_hf.training import (
    DataPosition,
    parameter_groups,
    poly_schedule,
    read_training_state,
    remove_partial_checkpoints,
    resolve_checkpoint,
    training_vocabulary,
)
from cascade_clip_hf.training_log import CURVES_FILE, SCALARS_FILE, read_scalars

from .helpers import EXAMPLES, HUB_CLASSES, load_script, run_script, save_tiny_cascade
from .synthetic import write_hub_dataset


def test_parameter_groups_follow_the_original(tiny_model):
    tiny_model.freeze_pretrained()
    trainable = {id(p) for p in tiny_model.parameters() if p.requires_grad}
    groups = parameter_groups(tiny_model, learning_rate=2e-5, weight_decay=0.01)
    assert len(groups) == 1
    assert groups[0]["lr"] == pytest.approx(2e-4) and groups[0]["weight_decay"] == 0.01
    assert {id(p) for p in groups[0]["params"]} == trainable

    groups = parameter_groups(tiny_model, learning_rate=2e-5, weight_decay=0.01, no_decay_on_norms=True)
    no_decay = {id(p) for p in groups[1]["params"]}
    assert groups[1]["weight_decay"] == 0.0
    assert id(tiny_model.vision_encoder.prompt_layernorm.weight) in no_decay
    assert id(tiny_model.decode_head.decoders[0].layers[0].attention_layernorm.bias) in no_decay
    assert id(tiny_model.vision_encoder.prompts.embeddings) not in no_decay
    assert no_decay | {id(p) for p in groups[0]["params"]} == trainable


def test_text_tower_is_never_trained(tiny_model, caplog):
    tiny_model.freeze_pretrained()
    tiny_model.text_encoder.requires_grad_(True)
    groups = parameter_groups(tiny_model, learning_rate=1e-5, weight_decay=0.0)
    text = {id(p) for p in tiny_model.text_encoder.parameters()}
    assert not text & {id(p) for group in groups for p in group["params"]}
    assert "text tower trains at learning rate 0" in caplog.text


def test_last_decoder_layers_unused_parts_are_frozen(tiny_model):
    tiny_model.freeze_pretrained()
    last = tiny_model.decode_head.decoders[1].layers[-1]
    assert not last.fc1.weight.requires_grad and not last.cross_attention.v_proj.weight.requires_grad
    assert last.cross_attention.q_proj.weight.requires_grad and last.cross_attention.k_proj.weight.requires_grad
    assert tiny_model.decode_head.decoders[1].layers[0].fc1.weight.requires_grad


def test_poly_schedule_matches_mmcv():
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([{"params": [weight], "lr": 2e-4}])
    max_steps, warmup = 100, 10
    scheduler = poly_schedule(optimizer, max_steps, warmup_steps=warmup)
    learning_rates = []
    for _ in range(max_steps):
        learning_rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()

    def mmcv(step):
        regular = (2e-4 - 1e-6) * (1 - step / max_steps) ** 0.9 + 1e-6
        if step < warmup:
            k = (1 - step / warmup) * (1 - 1e-6)
            return regular * (1 - k)
        return regular

    np.testing.assert_allclose(learning_rates, [mmcv(step) for step in range(max_steps)], rtol=1e-9)
    assert learning_rates[0] == pytest.approx(2e-4 * 1e-6, rel=1e-3)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-6)


def test_inductive_vocabulary_ignores_unseen_pixels():
    vocabulary = training_vocabulary(5, [0, 2, 3], "inductive")
    assert vocabulary.class_ids == [0, 2, 3] and vocabulary.unseen_class_ids == []
    labels = torch.tensor([[0, 1, 2], [3, 4, 255]])
    assert vocabulary.labels(labels).tolist() == [[0, 255, 1], [2, 255, 255]]


def test_transductive_pseudo_labels_fill_only_hidden_pixels_with_unseen_classes():
    vocabulary = training_vocabulary(5, [0, 2, 3], "transductive")
    assert vocabulary.class_ids == [0, 1, 2, 3, 4] and vocabulary.unseen_class_ids == [1, 4]
    dataset_labels = torch.tensor([[[0, 1, 2, 4], [255, 1, 3, 4]]])
    labels = vocabulary.labels(dataset_labels)
    assert labels.tolist() == [[[0, HIDDEN_LABEL, 2, HIDDEN_LABEL], [255, HIDDEN_LABEL, 3, HIDDEN_LABEL]]]

    torch.manual_seed(0)
    logits = torch.randn(1, 5, 2, 4)
    logits[:, [0, 2, 3]] += 10  # seen classes score far higher: pseudo-labels must still be unseen
    filled = fill_pseudo_labels(logits, labels, vocabulary.unseen_class_ids, IGNORE_INDEX)
    hidden = labels == HIDDEN_LABEL
    assert torch.equal(filled[~hidden], labels[~hidden])  # seen and ignored pixels untouched
    assert set(filled[hidden].tolist()) <= {1, 4}
    best_unseen = torch.tensor([1, 4])[logits[:, [1, 4]].argmax(dim=1)]
    assert torch.equal(filled[hidden], best_unseen[hidden])
    assert vocabulary.seen_class_mask.tolist() == [True, False, True, True, False]


def test_the_model_pseudo_labels_hidden_pixels_before_its_loss(tiny_model):
    """Training reaches the loss by one route, the model's forward, which pseudo-labels hidden pixels first."""
    vocabulary = training_vocabulary(tiny_model.config.num_labels, tiny_model.config.seen_class_ids, "transductive")
    torch.manual_seed(0)
    pixel_values = torch.randn(2, 3, 64, 64)
    labels = vocabulary.labels(torch.randint(0, tiny_model.config.num_labels, (2, 48, 40)))
    assert (labels == HIDDEN_LABEL).any()
    outputs = tiny_model(
        pixel_values=pixel_values,
        class_embeds=tiny_model.class_embeddings[vocabulary.class_ids],
        seen_class_mask=vocabulary.seen_class_mask,
        labels=labels,
    )
    upsampled = tiny_model.upsample_logits(outputs.logits, labels.shape[-2:])
    filled = fill_pseudo_labels(upsampled, labels, vocabulary.unseen_class_ids, IGNORE_INDEX)
    mask_loss, dice_loss = segmentation_loss(outputs.logits, filled, tiny_model.config)
    assert torch.equal(outputs.mask_loss, mask_loss) and torch.equal(outputs.dice_loss, dice_loss)
    ignored = labels.masked_fill(labels == HIDDEN_LABEL, IGNORE_INDEX)
    ignored_mask_loss, _ = segmentation_loss(outputs.logits, ignored, tiny_model.config)
    assert not torch.equal(ignored_mask_loss, mask_loss)


def test_resolve_checkpoint(tmp_path):
    assert resolve_checkpoint(tmp_path, "latest") is None
    for step in (2, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "training_state.json").write_text("{}")
    (tmp_path / "checkpoint-12").mkdir()  # incomplete: no training state
    assert resolve_checkpoint(tmp_path, "latest").name == "checkpoint-10"
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        resolve_checkpoint(tmp_path, str(tmp_path / "checkpoint-12"))


def train_args(dataset, output_dir, init_from, steps, batch_size=2, extra=()):
    """The training script's arguments for a tiny run; `init_from` None builds the model from `--clip_model`."""
    path, id2label = dataset
    return [
        "--dataset_name",
        str(path),
        "--id2label",
        str(id2label),
        "--eval_split",
        "validation",
        *(["--init_from", str(init_from)] if init_from else []),
        "--output_dir",
        str(output_dir),
        "--max_train_steps",
        str(steps),
        "--train_batch_size",
        str(batch_size),
        "--crop_size",
        "64",
        "--train_scale",
        "256,64",
        "--warmup_steps",
        "2",
        "--learning_rate",
        "5e-4",
        "--num_workers",
        "0",
        *extra,
    ]


def dataset_loss(model_dir, dataset) -> float:
    """The model's loss on every validation image at the test scale, all classes labelled."""
    path, id2label = dataset
    model = CascadeClipForZeroShotSegmentation.from_pretrained(model_dir).eval()
    processor = CascadeClipProcessor.from_pretrained(model_dir)
    data = hub_split(str(path), "train", read_id2label(id2label))
    losses = []
    with torch.no_grad():
        for index in range(len(data)):
            image, labels = data.load(index)
            inputs = processor.image_processor(image, segmentation_maps=labels)
            losses.append(model(pixel_values=inputs["pixel_values"], labels=inputs["labels"]).loss.item())
    return float(np.mean(losses))


def test_training_lowers_the_loss_and_writes_a_model(tmp_path, hub_dataset, tiny_hub_model_dir):
    output = tmp_path / "run"
    result = run_script(
        "train_cascade_clip.py",
        train_args(hub_dataset, output, tiny_hub_model_dir, 30, extra=["--checkpointing_steps", "0"]),
    )
    assert dataset_loss(output, hub_dataset) < 0.8 * dataset_loss(tiny_hub_model_dir, hub_dataset)
    assert (output / "model.safetensors").is_file() and (output / "processor_config.json").is_file()
    results = json.loads((output / "eval_results.json").read_text())
    assert set(results) >= {"miou", "miou_seen", "miou_unseen", "hiou", "pixel_accuracy", "per_class_iou"}
    assert results["num_images"] == 4
    card = (output / "README.md").read_text()
    assert "pipeline_tag: image-segmentation" in card and f"{results['miou']}" in card
    # Continued from a model without a card: no base model claimed, the original weights' terms assumed.
    assert "base_model" not in card and "license: other" in card
    assert "Training: 100%" in result.stderr  # the progress bar


def assert_refused_before_training(result, output, expected: str, started: float) -> None:
    """Exit code 2 (checked by `run_script`), one line naming the problem, fast, and nothing trained or written."""
    lines = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and expected in lines[0], result.stderr[-3000:]
    assert "Training" not in result.stderr
    assert not (output / "model.safetensors").exists() and not list(output.glob("checkpoint-*"))
    assert time.monotonic() - started < 60


def test_a_missing_evaluation_split_is_refused_before_the_first_step(tmp_path, hub_dataset, tiny_hub_model_dir):
    """The split is read before training: a run of days no longer ends in a KeyError after its last step."""
    output = tmp_path / "run"
    started = time.monotonic()
    args = train_args(hub_dataset, output, tiny_hub_model_dir, 2, extra=["--eval_split", "val"])
    result = run_script("train_cascade_clip.py", args, returncode=2)
    assert_refused_before_training(result, output, "has no split 'val'; its splits are train, validation", started)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--report_to", "tensorbord"], "unknown tracker 'tensorbord'"),
        (["--push_to_hub"], "--push_to_hub needs --hub_model_id"),
        (["--push_to_hub", "--hub_model_id", "org/bad name"], "'org/bad name' is not a Hub repository id"),
        (["--output_dir", "{tmp_path}/a_file/run"], "a_file is a file, not a folder"),
        (["--eval_steps", "2", "--skip_eval"], "--eval_steps evaluates during training, --skip_eval not at all"),
        (["--metric_for_best_model", "loss"], "argument --metric_for_best_model: invalid choice: 'loss'"),
        (["--logging_steps", "0"], "argument --logging_steps: must be at least 1, got 0"),
        (["--gradient_accumulation_steps", "0"], "argument --gradient_accumulation_steps: must be at least 1"),
        (["--max_train_steps", "-3"], "argument --max_train_steps: must be at least 1, got -3"),
        (["--train_batch_size", "0"], "argument --train_batch_size: must be at least 1, got 0"),
        (["--learning_rate=-1e-4"], "argument --learning_rate: must be greater than 0, got -1e-4"),
        (["--learning_rate", "nan"], "argument --learning_rate: expected a finite number, got nan"),
        (["--weight_decay", "-0.1"], "argument --weight_decay: must be at least 0, got -0.1"),
        (["--warmup_steps", "-1"], "argument --warmup_steps: must be at least 0, got -1"),
        (["--checkpointing_steps", "-2"], "argument --checkpointing_steps: must be at least 0, got -2"),
        (["--eval_steps", "0"], "argument --eval_steps: must be at least 1, got 0"),
        (["--train_scale", "256"], "--train_scale takes two sides of at least 1 pixel"),
    ],
)
def test_options_a_run_cannot_finish_with_are_refused_in_one_line(
    tmp_path, hub_dataset, tiny_hub_model_dir, capsys, extra, expected
):
    (tmp_path / "a_file").write_text("mine")
    argv = train_args(hub_dataset, tmp_path / "run", tiny_hub_model_dir, 2, extra=extra)
    with pytest.raises(SystemExit) as exit_info:
        load_script(EXAMPLES / "train_cascade_clip.py").parse_args([arg.format(tmp_path=tmp_path) for arg in argv])
    lines = capsys.readouterr().err.splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and expected in lines[0], lines
    assert (tmp_path / "a_file").read_text() == "mine"


@pytest.mark.parametrize("left", ["checkpoint-4", "best", "eval_results.json", SCALARS_FILE])
def test_a_fresh_run_into_an_earlier_runs_folder_is_refused(tmp_path, hub_dataset, tiny_hub_model_dir, capsys, left):
    output = tmp_path / "run"
    output.mkdir()
    (output / left).mkdir() if "." not in left else (output / left).write_text("{}")
    record_outputs(output, {left}, MODEL)  # as the earlier run recorded it
    script = load_script(EXAMPLES / "train_cascade_clip.py")
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(train_args(hub_dataset, output, tiny_hub_model_dir, 2))
    lines = capsys.readouterr().err.splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1, lines
    assert f"holds an earlier run's checkpoints ({left}): resume it with --resume_from_checkpoint latest" in lines[0]
    resuming = ["--resume_from_checkpoint", "latest"]
    assert script.parse_args(train_args(hub_dataset, output, tiny_hub_model_dir, 2, extra=resuming)).output_dir


@pytest.mark.parametrize("inside", ["", "models/init"])
def test_a_model_to_continue_from_inside_the_output_folder_is_refused(
    tmp_path, hub_dataset, tiny_hub_model_dir, capsys, inside
):
    output = tmp_path / "run"
    shutil.copytree(tiny_hub_model_dir, output / inside)
    with pytest.raises(SystemExit) as exit_info:
        load_script(EXAMPLES / "train_cascade_clip.py").parse_args(train_args(hub_dataset, output, output / inside, 2))
    lines = capsys.readouterr().err.splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and "is inside --output_dir" in lines[0], lines


def train_in_process(argv: list[str], monkeypatch) -> None:
    """
    The training script's `main` in this process, on the CPU and one thread as `run_script` runs it: its sums come
    out bit for bit as a run's in a process of its own, without the seconds a new process takes to start.
    """
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        load_script(EXAMPLES / "train_cascade_clip.py").main(argv)
    finally:
        torch.set_num_threads(threads)


def test_a_best_model_by_unseen_classes_needs_some(tmp_path, hub_dataset, tiny_hub_model_dir, monkeypatch):
    output = tmp_path / "run"
    argv = train_args(hub_dataset, output, tiny_hub_model_dir, 2, extra=["--eval_steps", "2"])
    with pytest.raises(ValueError, match="--metric_for_best_model hiou needs unseen classes, but every class of"):
        train_in_process(argv, monkeypatch)
    assert not output.exists()


def test_a_tracker_that_is_not_installed_is_refused(tmp_path, hub_dataset, tiny_hub_model_dir, capsys):
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    argv = train_args(hub_dataset, tmp_path / "run", tiny_hub_model_dir, 2, extra=["--report_to", "wandb"])
    with pytest.raises(SystemExit):
        load_script(EXAMPLES / "train_cascade_clip.py").parse_args(argv)
    assert "wandb is not installed: pip install wandb" in capsys.readouterr().err


@pytest.fixture(scope="module")
def five_image_dataset(tmp_path_factory) -> tuple:
    """A save_to_disk dataset of 5 training images: no batch of 2 or accumulation of 2 or 3 divides an epoch."""
    root = tmp_path_factory.mktemp("five_images")
    id2label = root / "id2label.json"
    id2label.write_text(json.dumps({str(i): name for i, name in enumerate(HUB_CLASSES)}))
    sizes = (("train", 5), ("validation", 1))
    return write_hub_dataset(root / "data", num_classes=len(HUB_CLASSES), sizes=sizes), id2label


@pytest.mark.parametrize(
    ("dataset", "num_processes", "batch_size", "accumulation", "steps", "checkpoint_step"),
    [
        ("hub_dataset", 1, 2, 1, 6, 3),  # mid-epoch
        ("five_image_dataset", 1, 1, 2, 6, 4),  # after an epoch that ended on an incomplete accumulation
        ("five_image_dataset", 1, 2, 3, 3, 2),  # accumulation longer than an epoch, saved at an epoch's end
        ("hub_dataset", 2, 1, 3, 4, 3),  # 4 batches per process: 3, then 1 at the epoch's end
    ],
)
def test_resuming_continues_exactly(
    tmp_path, request, tiny_hub_model_dir, dataset, num_processes, batch_size, accumulation, steps, checkpoint_step
):
    dataset = request.getfixturevalue(dataset)
    extra = [
        "--gradient_accumulation_steps",
        str(accumulation),
        "--checkpointing_steps",
        str(checkpoint_step),
        "--logging_steps",
        "1",
    ]
    straight = tmp_path / "straight"
    run_script(
        "train_cascade_clip.py",
        train_args(dataset, straight, tiny_hub_model_dir, steps, batch_size, extra=[*extra, "--skip_eval"]),
        num_processes=num_processes,
    )
    checkpoint = f"checkpoint-{checkpoint_step}"
    state = json.loads((straight / checkpoint / "training_state.json").read_text())
    num_images = len(hub_split(str(dataset[0]), "train", read_id2label(dataset[1])))
    position = DataPosition.after_steps(checkpoint_step, num_images // batch_size // num_processes, accumulation)
    settings = state.pop("settings")
    assert state == {"step": checkpoint_step, **asdict(position)}
    assert settings["train_batch_size"] == batch_size and settings["gradient_accumulation_steps"] == accumulation
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(straight / checkpoint, resumed / checkpoint)
    # The scalar log as the uninterrupted run left it, steps after the checkpoint included (the same file: a link),
    # with the record that says the program wrote it: as if the run had been killed after its last step.
    os.link(straight / SCALARS_FILE, resumed / SCALARS_FILE)
    shutil.copy(straight / RECORD, resumed / RECORD)
    saved_optimizer = torch.load(resumed / checkpoint / "optimizer.bin", weights_only=False)
    assert all(state["step"] == checkpoint_step for state in saved_optimizer["state"].values())
    result = run_script(
        "train_cascade_clip.py",
        train_args(
            dataset,
            resumed,
            tiny_hub_model_dir,
            steps,
            batch_size,
            extra=[*extra, "--skip_eval", "--resume_from_checkpoint", "latest"],
        ),
        num_processes=num_processes,
    )
    assert f"at step {checkpoint_step}, epoch {position.epoch}, batch {position.batches}." in result.stderr
    expected, actual = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert expected.keys() == actual.keys()
    differences = {key: (actual[key] - expected[key]).abs().max().item() for key in expected}
    assert max(differences.values()) == 0.0, differences
    # Each step logged once, with the uninterrupted run's values: the lines after the checkpoint were dropped.
    straight_scalars = read_scalars(straight / SCALARS_FILE)
    assert [line["step"] for line in straight_scalars] == list(range(1, steps + 1))
    assert read_scalars(resumed / SCALARS_FILE) == straight_scalars
    reference = load_file(str(tiny_hub_model_dir / "model.safetensors"))
    assert not torch.equal(
        expected["vision_encoder.prompts.embeddings"], reference["vision_encoder.prompts.embeddings"]
    )


def test_resuming_refuses_settings_that_change_the_result_and_allows_a_longer_run(
    tmp_path, hub_dataset, tiny_hub_model_dir, monkeypatch, caplog
):
    output = tmp_path / "run"
    first = ["--checkpointing_steps", "1", "--skip_eval", "--seen_class_ids", "0,1,2"]
    train_in_process(train_args(hub_dataset, output, tiny_hub_model_dir, 1, extra=first), monkeypatch)
    settings = json.loads((output / "checkpoint-1" / "training_state.json").read_text())["settings"]
    assert settings["seen_class_ids"] == [0, 1, 2] and settings["learning_rate"] == 5e-4
    assert settings["dataset"] == str(hub_dataset[0]) and settings["max_train_steps"] == 1
    resume = ["--resume_from_checkpoint", "latest"]
    changes = [
        (["--train_batch_size", "1"], "--train_batch_size 2, this one has 1"),
        (["--gradient_accumulation_steps", "2"], "--gradient_accumulation_steps 1, this one has 2"),
        (["--seed", "3"], "--seed 0, this one has 3"),
        (["--learning_rate", "1e-3"], "--learning_rate 0.0005, this one has 0.001"),
        (["--setting", "transductive"], '--setting "inductive", this one has "transductive"'),
    ]
    for change, expected in changes:
        argv = train_args(hub_dataset, output, tiny_hub_model_dir, 2, extra=[*first, *resume, *change])
        with pytest.raises(ValueError, match=f"checkpoint-1 was saved by a run with {expected}: resuming would not"):
            train_in_process(argv, monkeypatch)
    with pytest.raises(ValueError, match=r"--seen_class_ids \[0, 1, 2\], this one has null"):
        extra = ["--checkpointing_steps", "1", "--skip_eval", *resume]
        train_in_process(train_args(hub_dataset, output, tiny_hub_model_dir, 2, extra=extra), monkeypatch)
    caplog.set_level("INFO")
    train_in_process(train_args(hub_dataset, output, tiny_hub_model_dir, 2, extra=[*first, *resume]), monkeypatch)
    assert "--max_train_steps changed on resuming: 1 -> 2." in caplog.text
    assert (output / "checkpoint-2").is_dir()


KILLED_SAVE = textwrap.dedent(
    """
    import os, signal, sys, torch
    from accelerate import Accelerator
    from cascade_clip_hf.training import DataPosition, save_checkpoint

    output_dir, weights_file = sys.argv[1:]
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(64, 64)
    optimizer = torch.optim.AdamW(model.parameters())
    model, optimizer = accelerator.prepare(model, optimizer)
    model(torch.randn(2, 64)).sum().backward()
    optimizer.step()
    save_checkpoint(accelerator, output_dir, 2, DataPosition(epoch=0, batches=2, batches_per_epoch=5))
    torch.save(model.state_dict(), weights_file)
    real_save = accelerator.save_state

    def save_then_die(path):
        real_save(path)  # the model and optimizer files are written...
        os.kill(os.getpid(), signal.SIGKILL)  # ...and the process is killed before the save completes

    accelerator.save_state = save_then_die
    optimizer.step()
    save_checkpoint(accelerator, output_dir, 4, DataPosition(epoch=0, batches=4, batches_per_epoch=5))
    """
)


def test_a_killed_save_leaves_the_last_checkpoint_to_resume_from(tmp_path):
    script = tmp_path / "killed_save.py"
    script.write_text(KILLED_SAVE)
    output, weights_at_2 = tmp_path / "run", tmp_path / "weights-2.pt"
    command = [sys.executable, str(script), str(output), str(weights_at_2)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert not (output / "checkpoint-4").exists()
    assert (output / ".checkpoint-4.partial").is_dir()
    latest = resolve_checkpoint(output, "latest")
    assert latest.name == "checkpoint-2"
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(64, 64))
    accelerator.load_state(str(latest))
    expected = torch.load(weights_at_2)
    assert all(torch.equal(value, expected[key]) for key, value in model.state_dict().items())
    assert read_training_state(latest, batches_per_epoch=5, accumulation=1) == (2, DataPosition(0, 2, 5))
    remove_partial_checkpoints(output)
    assert not (output / ".checkpoint-4.partial").exists()


def test_transductive_training_runs_from_an_inductive_model(tmp_path, voc_root, tiny_clip_dir):
    from cascade_clip_hf.presets import benchmark_facts

    facts = benchmark_facts("pascal-voc-2012", "inductive")
    inductive = save_tiny_cascade(
        tiny_clip_dir, tmp_path / "inductive", facts["class_names"], seen_class_ids=facts["seen_class_ids"]
    )
    output = tmp_path / "transductive"
    run_script(
        "train_cascade_clip.py",
        [
            "--dataset",
            "pascal-voc-2012",
            "--data_dir",
            str(voc_root),
            "--setting",
            "transductive",
            "--init_from",
            str(inductive),
            "--output_dir",
            str(output),
            "--max_train_steps",
            "3",
            "--train_batch_size",
            "2",
            "--crop_size",
            "64",
            "--train_scale",
            "256,64",
            "--warmup_steps",
            "1",
            "--num_workers",
            "0",
            "--checkpointing_steps",
            "0",
            "--max_eval_samples",
            "2",
        ],
    )
    model = CascadeClipForZeroShotSegmentation.from_pretrained(output)
    assert model.config.setting == "transductive"
    assert json.loads((output / "eval_results.json").read_text())["num_images"] == 2


def test_two_processes_train_and_evaluate_like_one(tmp_path, hub_dataset, tiny_hub_model_dir):
    """1 process x 2 images and 2 processes x 1 image see the same batches and reach the same model."""
    one, two = tmp_path / "one", tmp_path / "two"
    run_script(
        "train_cascade_clip.py",
        train_args(hub_dataset, one, tiny_hub_model_dir, 8, batch_size=2, extra=["--checkpointing_steps", "0"]),
    )
    result = run_script(
        "train_cascade_clip.py",
        train_args(hub_dataset, two, tiny_hub_model_dir, 8, batch_size=1, extra=["--checkpointing_steps", "0"]),
        num_processes=2,
    )
    assert result.stderr.count("Training inductive on 8 images") == 1  # logged by the main process only
    assert result.stderr.count("Evaluation:") == 1
    weights_one, weights_two = load_file(str(one / "model.safetensors")), load_file(str(two / "model.safetensors"))
    for key in weights_one:
        torch.testing.assert_close(weights_two[key], weights_one[key], atol=1e-5, rtol=0)
    results_one = json.loads((one / "eval_results.json").read_text())
    results_two = json.loads((two / "eval_results.json").read_text())
    for key in ("miou", "miou_seen", "pixel_accuracy", "per_class_iou", "num_images"):
        assert results_two[key] == results_one[key], key


def test_evaluation_during_training_is_logged_everywhere_and_keeps_the_best_model(
    tmp_path, hub_dataset, tiny_hub_model_dir, monkeypatch
):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output = tmp_path / "run"
    extra = [
        *("--seen_class_ids", "0,1,2", "--eval_steps", "2", "--metric_for_best_model", "miou"),
        *("--max_eval_samples", "2", "--report_to", "tensorboard", "--logging_steps", "1"),
        *("--checkpointing_steps", "0", "--learning_rate", "2e-4"),
    ]
    result = run_script("train_cascade_clip.py", train_args(hub_dataset, output, tiny_hub_model_dir, 8, extra=extra))
    lines = read_scalars(output / SCALARS_FILE)
    assert [line["step"] for line in lines] == list(range(1, 9))
    metric_tags = {f"eval/{key}" for key in HEADLINE_METRICS}
    evaluations = {line["step"]: line for line in lines if metric_tags <= line.keys()}
    assert list(evaluations) == [2, 4, 6, 8] and all({"loss", "lr"} <= line.keys() for line in lines)

    events = EventAccumulator(str(output / "cascade_clip"))
    events.Reload()
    assert metric_tags | {"loss", "lr"} <= set(events.Tags()["scalars"])
    for tag in metric_tags:
        logged = {event.step: event.value for event in events.Scalars(tag)}
        assert logged == pytest.approx({step: line[tag] for step, line in evaluations.items()}, abs=1e-4), tag

    # best/: the first step with the greatest mIoU, its metrics as logged, and the model that scored them.
    best = json.loads((output / "best" / "best_model.json").read_text())
    mious = {step: line["eval/miou"] for step, line in evaluations.items()}
    assert best["metric"] == "miou" and best["step"] == next(s for s in mious if mious[s] == max(mious.values()))
    assert best["metrics"] == {key: evaluations[best["step"]][f"eval/{key}"] for key in HEADLINE_METRICS}
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    path, id2label = hub_dataset
    rescored = load_script(EXAMPLES / "evaluate_cascade_clip.py").main(
        [
            *("--model", str(output / "best"), "--dataset_name", str(path), "--id2label", str(id2label)),
            *("--split", "validation", "--seen_class_ids", "0,1,2", "--max_samples", "2", "--num_workers", "0"),
            *("--output", str(tmp_path / "best_results.json")),
        ]
    )
    assert {key: rescored[key] for key in HEADLINE_METRICS} == best["metrics"]
    final = json.loads((output / "eval_results.json").read_text())
    assert {f"eval/{key}": final[key] for key in HEADLINE_METRICS} == {tag: evaluations[8][tag] for tag in metric_tags}

    # Evaluating draws nothing from the run's random streams (stochastic depth is on): the weights are those of a
    # run that does not evaluate.
    unevaluated = tmp_path / "unevaluated"
    quiet = ["--seen_class_ids", "0,1,2", "--checkpointing_steps", "0", "--learning_rate", "2e-4", "--skip_eval"]
    train_in_process(train_args(hub_dataset, unevaluated, tiny_hub_model_dir, 8, extra=quiet), monkeypatch)
    evaluated_weights = load_file(str(output / "model.safetensors"))
    unevaluated_weights = load_file(str(unevaluated / "model.safetensors"))
    assert all(torch.equal(evaluated_weights[key], unevaluated_weights[key]) for key in evaluated_weights)

    with PIL.Image.open(output / CURVES_FILE) as curves:
        assert curves.format == "PNG" and curves.size == (900, 1000)
    card = (output / "README.md").read_text()
    assert f"![Loss, learning rate and evaluation metrics over training steps]({CURVES_FILE})" in card
    assert f"| best evaluation during training: step {best['step']} (`best/`) |" in card
    assert "hIoU=0.00" in result.stderr  # the progress bar shows the last hIoU


def test_the_same_seed_trains_the_same_weights_and_another_seed_others(
    tmp_path, hub_dataset, tiny_clip_dir, monkeypatch
):
    """From CLIP with dropout: the seed decides the prompts' initialisation, the data order, augmentation, dropout."""
    tiny = json.dumps({"num_prompt_tokens": 3, "decoder_num_attention_heads": 2, "decoder_intermediate_size": 32})
    extra = ["--clip_model", str(tiny_clip_dir), "--image_size", "64", "--model_config", tiny, "--skip_eval"]

    def trained_weights(name: str, seed: int) -> dict:
        output = tmp_path / name
        train_in_process(train_args(hub_dataset, output, None, 2, extra=[*extra, "--seed", str(seed)]), monkeypatch)
        return load_file(str(output / "model.safetensors"))

    first, again, other = trained_weights("first", 1), trained_weights("again", 1), trained_weights("other", 2)
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not torch.equal(first["vision_encoder.prompts.embeddings"], other["vision_encoder.prompts.embeddings"])
    assert sum(not torch.equal(first[key], other[key]) for key in first) > 10


def test_seen_classes_out_of_range_are_refused_before_anything_is_written(
    tmp_path, hub_dataset, tiny_hub_model_dir, monkeypatch
):
    output = tmp_path / "run"
    argv = train_args(hub_dataset, output, tiny_hub_model_dir, 2, extra=["--seen_class_ids", "0,9"])
    with pytest.raises(ValueError, match=r"--seen_class_ids \[9\] are not class ids: the dataset has 4 classes"):
        train_in_process(argv, monkeypatch)
    assert not output.exists()


@pytest.mark.parametrize(("flag", "expected_seen"), [(None, [0, 1]), ("0,1,2", [0, 1, 2])])
def test_training_and_evaluation_share_one_set_of_seen_classes(
    tmp_path, hub_dataset, tiny_clip_dir, monkeypatch, flag, expected_seen
):
    """From a model with its own split: the flag wins over it, else the model's is used, and evaluations agree."""
    model_dir = save_tiny_cascade(tiny_clip_dir, tmp_path / "model", HUB_CLASSES, seen_class_ids=[0, 1])
    output = tmp_path / "run"
    extra = ["--checkpointing_steps", "0", "--max_eval_samples", "1", "--eval_steps", "1"]
    extra += ["--seen_class_ids", flag] if flag else []
    train_in_process(train_args(hub_dataset, output, model_dir, 1, extra=extra), monkeypatch)
    assert CascadeClipForZeroShotSegmentation.from_pretrained(output).config.seen_class_ids == expected_seen
    results = json.loads((output / "eval_results.json").read_text())
    best = json.loads((output / "best" / "best_model.json").read_text())
    assert results["hiou"] is not None and best["metrics"]["hiou"] == results["hiou"]
    unseen_iou = [results["per_class_iou"][HUB_CLASSES[i]] for i in range(4) if i not in expected_seen]
    assert results["miou_unseen"] == pytest.approx(np.mean(unseen_iou), abs=0.01)


def test_the_card_states_the_run_that_ran_and_its_licence(tmp_path, hub_dataset, tiny_hub_model_dir, monkeypatch):
    output = tmp_path / "run"
    extra = ["--skip_eval", "--checkpointing_steps", "0", "--no_decay_on_norms", "--weight_decay", "0.05"]
    extra += ["--scale_ratio_range", "1", "1.5", "--license", "mit"]
    train_in_process(train_args(hub_dataset, output, tiny_hub_model_dir, 1, extra=extra), monkeypatch)
    card = (output / "README.md").read_text()
    assert "license: mit" in card
    assert "resize to scale (256,64) with ratio 1.0-1.5 keeping aspect; random crop 64;" in card
    assert "AdamW lr 0.0005 weight_decay 0.05;" in card and "; no weight decay on norm layers." in card
    assert "linear warmup 2 steps from ratio 1e-6; 1 step of 2 x 1 x 1 images" in card
    assert "2048" not in card and "lr 2e-5" not in card and "1500" not in card  # not the original recipe's


def test_a_licence_the_hub_does_not_know_is_refused(tmp_path, hub_dataset, tiny_hub_model_dir, capsys):
    argv = train_args(hub_dataset, tmp_path / "run", tiny_hub_model_dir, 2, extra=["--license", "Apache 2"])
    with pytest.raises(SystemExit):
        load_script(EXAMPLES / "train_cascade_clip.py").parse_args(argv)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "argument --license: 'Apache 2' is not a Hub licence id" in lines[0], lines
