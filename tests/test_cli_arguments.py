"""The options of `cascade-clip` and the example scripts: both spellings of every option (the old names kept), the
defaults in the help, `--version`, and `--device` (auto, and devices this torch cannot use refused in one line)."""

import argparse
import re

import pytest
import torch
import transformers

import cascade_clip_hf
from cascade_clip_hf.arguments import CommandLineParser, torch_device
from cascade_clip_hf.cli import build_parser, main

from .helpers import EXAMPLES, load_script


@pytest.mark.parametrize(
    "argv",
    [
        ["segment", "photos", "--output", "out", "--batch-size", "2"],  # the old name of --output-dir
        ["segment", "photos", "--output-dir", "out", "--batch_size", "2"],
        ["segment", "photos", "--output_dir=out", "--batch_size=2"],
    ],
    ids=["old-name", "dashes", "underscores-with-equals"],
)
def test_segment_takes_every_spelling_of_its_options(argv):
    args = build_parser().parse_args(argv)
    assert (args.output, args.batch_size, args.inputs) == ("out", 2, ["photos"])


def test_convert_and_embed_take_both_spellings():
    parser = build_parser()
    for spelling in ("--output-dir", "--output_dir"):
        args = parser.parse_args(["convert", "x.pth", spelling, "model", "--class_names", "a,b"])
        assert (args.output_dir, args.class_names) == ("model", ["a", "b"])
    args = parser.parse_args(["embed", "--labels", "a,b", "--output", "v.safetensors", "--device", "cpu"])
    assert args.output == "v.safetensors"


def test_the_scripts_take_dashes_for_their_underscores(tmp_path):
    train = load_script(EXAMPLES / "train_cascade_clip.py")
    argv = ["--dataset-name", "data", "--max-train-steps", "3", "--output-dir", str(tmp_path / "run")]
    args = train.parse_args(argv)
    assert (args.dataset_name, args.max_train_steps, args.output_dir) == ("data", 3, str(tmp_path / "run"))
    underscores = ["--dataset_name", "data", "--max_train_steps", "3", "--output_dir", str(tmp_path / "run")]
    assert train.parse_args(underscores) == args
    evaluate = load_script(EXAMPLES / "evaluate_cascade_clip.py")
    args = evaluate.parse_args(["--model", "m", "--dataset-name", "d", "--output", str(tmp_path / "r.json")])
    assert args.dataset_name == "d"


def test_only_options_are_respelled():
    parser = CommandLineParser(prog="tool")
    parser.add_argument("--class_names")
    parser.add_argument("names", nargs="*")
    args = parser.parse_args(["--class-names", "a-b_c", "--", "--class-names"])
    assert (args.class_names, args.names) == ("a-b_c", ["--class-names"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--class--names", "x"])


def help_of(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", ["convert", "parity", "segment", "embed", "info"])
def test_every_subcommand_shows_its_defaults_and_no_empty_ones(command, capsys):
    text = " ".join(help_of([command], capsys).split())  # the help's lines joined, as wrapping cuts them
    assert "default: None" not in text and "default: False" not in text
    expected = {
        "convert": ["(default: openai/clip-vit-base-patch16)"],
        "parity": ["(default: openai/clip-vit-base-patch16)"],
        "segment": ["(default: auto)", "(default: 1)", "(default: 0.5)", "--output-dir DIR, --output DIR"],
        "embed": ["(default: auto)", "(default: float32"],
        "info": ["(default: the shipped toy-world demo model)"],
    }[command]
    assert all(phrase in text for phrase in expected), text


def test_a_list_default_is_shown_as_it_is_typed(capsys):
    parser = CommandLineParser(prog="tool")
    parser.add_argument("--scale", default=[2048, 512], help="long,short")
    parser.add_argument("--ratios", nargs=2, default=[0.5, 2.0], help="low high")
    parser.add_argument("--share", default="50%", help="a share")
    parser.add_argument("--quick", action="store_true", help="fast")
    text = " ".join(parser.format_help().split())
    assert "long,short (default: 2048,512)" in text and "low high (default: 0.5 2.0)" in text
    assert "a share (default: 50%)" in text and "fast (default" not in text


def test_version_names_the_package_torch_and_transformers(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == (
        f"cascade-clip-hf {cascade_clip_hf.__version__} (torch {torch.__version__}, "
        f"transformers {transformers.__version__})"
    )


def without_cuda(monkeypatch, built: bool) -> None:
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: built)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def with_gpus(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_auto_picks_a_gpu_then_mps_then_the_cpu(monkeypatch):
    with_gpus(monkeypatch, 2)
    assert torch_device("auto") == "cuda"
    without_cuda(monkeypatch, built=True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert torch_device("auto") == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert torch_device("auto") == "cpu"


@pytest.mark.parametrize(
    "machine, device, message",
    [
        (lambda patch: without_cuda(patch, built=False), "cuda", "cuda: CUDA is not available in this torch build"),
        (lambda patch: without_cuda(patch, built=True), "cuda:0", "cuda:0: CUDA is not available on this machine"),
        (lambda patch: with_gpus(patch, 2), "cuda:3", "cuda:3: this machine has 2 CUDA devices (cuda:0 to cuda:1)"),
        (lambda patch: with_gpus(patch, 1), "cuda:1", "cuda:1: this machine has 1 CUDA device (cuda:0); use one"),
    ],
    ids=["cpu-only-build", "no-gpu", "index-beyond-two", "index-beyond-one"],
)
def test_a_cuda_device_this_torch_cannot_use_is_refused_in_one_line(machine, device, message, monkeypatch, capsys):
    machine(monkeypatch)
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(message)):
        torch_device(device)
    with pytest.raises(SystemExit) as exit_info:
        main(["segment", "photo.png", "--output-dir", "out", "--device", device])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in error and "auto" in error
    assert len(error.strip().splitlines()) == 1 and "Traceback" not in error


def test_a_gpu_that_is_there_is_taken(monkeypatch):
    with_gpus(monkeypatch, 2)
    assert torch_device("cuda:1") == "cuda:1"
