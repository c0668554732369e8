"""`cascade-clip segment` over folders: reading ahead and writing behind the model change nothing in the results,
skip only the images they must, stop cleanly, and take the run's threads and number format."""

import json
import logging
from pathlib import Path, PurePosixPath

import numpy as np
import PIL.Image
import pytest
import torch

import cascade_clip_command
from cascade_clip_hf import cli
from cascade_clip_hf.atomic import STAGING, read_record
from cascade_clip_hf.modeling_cascade_clip import CascadeClipForZeroShotSegmentation
from cascade_clip_hf.segmenter import load_segmenter
from cascade_clip_hf.visualization import overlay_with_legend, segmentation_from_masks

from .helpers import EXAMPLES, random_image


LABELS = ["bicycle", "red thing", "ocean"]
SIZES = [(50, 80), (64, 40), (33, 90), (70, 70), (41, 52)]


@pytest.fixture
def photos(tmp_path):
    """Five images of different sizes, in the order the command line lists them."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for index, (height, width) in enumerate(SIZES):
        random_image(height, width, seed=index).save(folder / f"photo-{index}.png")
    return folder


def segment(*argv) -> int:
    return cli.main(["segment", *map(str, argv)])


def error_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]


def test_a_folder_gives_the_results_of_one_image_at_a_time(tmp_path, photos, tiny_hub_model_dir):
    model, labels = str(tiny_hub_model_dir), ",".join(LABELS)
    batched, single = tmp_path / "batched", tmp_path / "single"
    assert segment(photos, "--model", model, "--labels", labels, "--output", batched, "--batch-size", "3") == 0
    assert segment(photos, "--model", model, "--labels", labels, "--output", single, "--batch-size", "1") == 0
    # The results as the command wrote them before it read ahead and wrote behind: one image after the other.
    segmenter = load_segmenter(model)
    for index in range(len(SIZES)):
        stem = f"photo-{index}.png"
        for name in (f"{stem}_classes.png", f"{stem}.json", f"{stem}_overlay.png"):
            assert (batched / name).read_bytes() == (single / name).read_bytes(), name
        image = PIL.Image.open(photos / stem)
        expected = segmentation_from_masks(segmenter(image, candidate_labels=LABELS), LABELS, image.size)
        np.testing.assert_array_equal(np.asarray(PIL.Image.open(batched / f"{stem}_classes.png")), expected)
        overlay = np.asarray(overlay_with_legend(image, expected, LABELS))
        np.testing.assert_array_equal(np.asarray(PIL.Image.open(batched / f"{stem}_overlay.png")), overlay)
        shares = json.loads((batched / f"{stem}.json").read_text())
        assert shares["class_names"] == LABELS
        np.testing.assert_allclose(
            list(shares["fractions"].values()), np.bincount(expected.ravel(), minlength=3) / expected.size
        )


def test_a_bad_image_amid_a_folder_is_skipped_in_order(tmp_path, photos, tiny_hub_model_dir, caplog):
    (photos / "photo-1.png").write_bytes(b"\x89PNG truncated")
    (photos / "photo-3.png").write_bytes(b"")
    output = tmp_path / "out"
    assert segment(photos, "--model", tiny_hub_model_dir, "--output", output, "--batch-size", "2") == 1
    errors = error_lines(caplog)
    assert len(errors) == 2
    assert errors[0].startswith(f"error: {photos / 'photo-1.png'}: ") and "not a readable image" in errors[0]
    assert errors[1].startswith(f"error: {photos / 'photo-3.png'}: ")
    written = {path.name for path in output.iterdir() if not path.name.startswith(".")}
    assert written == {
        f"photo-{index}.png{suffix}" for index in (0, 2, 4) for suffix in ("_classes.png", "_overlay.png", ".json")
    }


def test_an_image_whose_results_cannot_be_named_is_skipped(tmp_path, photos, tiny_hub_model_dir, caplog):
    long_name = "b" * 248 + ".png"
    random_image(20, 30, seed=9).save(photos / long_name)  # listed first, in the batch of photo-0
    output = tmp_path / "out"
    assert segment(photos, "--model", tiny_hub_model_dir, "--output", output, "--batch-size", "2") == 1
    errors = error_lines(caplog)
    assert len(errors) == 1
    assert errors[0].startswith(f"error: {photos / long_name}: its results cannot be written ([Errno 36] File name")
    assert all((output / f"photo-{index}.png_overlay.png").is_file() for index in range(len(SIZES)))


def test_threads_are_set_for_the_run_and_restored(tmp_path, photos, tiny_hub_model_dir, monkeypatch):
    before = torch.get_num_threads()
    wanted = before + 1
    seen = []
    segment_each = cli.segment_each

    def counting_threads(segmenter, images, **options):
        seen.append(torch.get_num_threads())
        return segment_each(segmenter, images, **options)

    monkeypatch.setattr(cli, "segment_each", counting_threads)
    output = tmp_path / "out"
    assert segment(photos, "--model", tiny_hub_model_dir, "--output", output, "--threads", wanted) == 0
    assert seen == [wanted] * len(SIZES)
    assert torch.get_num_threads() == before


def test_zero_threads_are_refused(tmp_path, photos, capsys):
    with pytest.raises(SystemExit) as exit_code:
        segment(photos, "--output", tmp_path / "out", "--threads", "0")
    assert exit_code.value.code == 2
    assert "--threads: must be at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def class_maps(folder) -> dict[str, np.ndarray]:
    return {path.name: np.asarray(PIL.Image.open(path)) for path in sorted(folder.glob("*_classes.png"))}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_agrees_with_float32_on_the_demo_model(dtype, tmp_path, monkeypatch):
    name = str(dtype).removeprefix("torch.")
    scenes = EXAMPLES / "scenes"
    assert segment(scenes, "--output", tmp_path / "float32") == 0
    dtypes = []
    segment_each = cli.segment_each

    def recording_dtype(segmenter, images, **options):
        dtypes.append(segmenter.model.dtype)
        return segment_each(segmenter, images, **options)

    monkeypatch.setattr(cli, "segment_each", recording_dtype)
    assert segment(scenes, "--output", tmp_path / name, "--dtype", name) == 0
    assert set(dtypes) == {dtype}
    reference, half = class_maps(tmp_path / "float32"), class_maps(tmp_path / name)
    assert list(half) == list(reference) and len(reference) == len(list(scenes.glob("*.png")))
    agreement = np.mean(np.concatenate([(half[key] == reference[key]).ravel() for key in reference]))
    assert agreement >= 0.99


def test_an_interrupt_mid_folder_leaves_only_whole_results(tmp_path, photos, tiny_hub_model_dir, monkeypatch, caplog):
    calls = []
    inference = CascadeClipForZeroShotSegmentation.sliding_window_inference

    def interrupted_on_the_third(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return inference(self, *args, **kwargs)

    monkeypatch.setattr(CascadeClipForZeroShotSegmentation, "sliding_window_inference", interrupted_on_the_third)
    output = tmp_path / "out"
    argv = ["segment", str(photos), "--model", str(tiny_hub_model_dir), "--output", str(output)]
    assert cascade_clip_command.main(argv) == 130
    assert "interrupted" in caplog.text
    names = {path.name for path in output.iterdir()}
    assert not [name for name in names if STAGING in name]
    assert not read_record(output).staging
    for index in range(len(SIZES)):
        written = {name for name in names if name.startswith(f"photo-{index}")}
        assert written in (set(), set(cli.segmentation_files(f"photo-{index}.png"))), written
    assert "photo-0.png.json" in names and "photo-2.png.json" not in names


def test_recursive_mirrors_the_subfolders_and_records_each_source(tmp_path, tiny_hub_model_dir, capsys):
    photos, output = tmp_path / "photos", tmp_path / "out"
    for index, name in enumerate(["a.png", "a.jpg", "sub/a.png", "sub/deeper/b.png", ".hidden/c.png"]):
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        random_image(20, 30, seed=index).save(photos / name)
    (photos / "link").symlink_to(photos / "sub")
    assert segment(photos, "--recursive", "--model", tiny_hub_model_dir, "--output_dir", output) == 0

    written = {path.relative_to(output).as_posix() for path in output.rglob("*") if path.name.endswith(".json")}
    assert written == {"a.png.json", "a.jpg.json", "sub/a.png.json", "sub/deeper/b.png.json"}
    assert {path.name for path in (output / "sub" / "deeper").iterdir()} == {
        ".cascade-clip-outputs",
        *cli.segmentation_files("b.png"),
    }
    shares = json.loads((output / "sub" / "deeper" / "b.png.json").read_text())
    assert (shares["source"], shares["input"]) == ("sub/deeper/b.png", str(photos))
    # transformers' "Loading weights" bar is silenced; the command's own progress bar is not.
    errors = capsys.readouterr().err
    assert "Loading weights" not in errors and "Segmenting" in errors


def test_recursion_skips_the_output_folder_and_plain_listing_stays_in_the_folder(tmp_path):
    photos = tmp_path / "photos"
    for name in ["a.png", "sub/b.png", "segmented/c.png"]:
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        random_image(8, 8).save(photos / name)
    listed = cli.image_sources([str(photos)], True, photos / "segmented")
    assert [(source.relative.as_posix(), source.given) for source in listed] == [
        ("a.png", str(photos)),
        ("sub/b.png", str(photos)),
    ]
    assert [source.path for source in cli.image_sources([str(photos)])] == [photos / "a.png"]


def test_a_file_reached_twice_is_segmented_once(tmp_path):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    random_image(8, 8).save(photos / "sub" / "a.png")
    given = [str(photos / "sub" / "a.png"), str(photos), str(photos / "sub" / ".." / "sub" / "a.png")]
    listed = cli.image_sources(given, recursive=True)
    assert [(source.path, source.given) for source in listed] == [(photos / "sub" / "a.png", given[0])]


def test_result_names_keep_suffixes_apart_and_number_only_a_name_taken_by_another_input():
    sources = [
        cli.ImageSource(Path(path), given, PurePosixPath(relative))
        for path, given, relative in [
            ("p/astronaut.jpg", "p", "astronaut.jpg"),
            ("p/astronaut.png", "p", "astronaut.png"),
            ("q/astronaut.jpg", "q", "astronaut.jpg"),
            ("q/Astronaut.JPG", "q", "Astronaut.JPG"),
            ("q/sub/astronaut.jpg", "q", "sub/astronaut.jpg"),
        ]
    ]
    assert [name.as_posix() for name in cli.result_names(sources)] == [
        "astronaut.jpg",
        "astronaut.png",
        "astronaut.jpg-2",
        "Astronaut.JPG-3",
        "sub/astronaut.jpg",
    ]
