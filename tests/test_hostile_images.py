"""Hostile images: every entry point reads a file the same way, and a folder's bad files are named and skipped."""

import http.server
import io
import logging
import os
import socket
import struct
import threading
import zlib
from functools import partial
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import pipeline

from cascade_clip_hf import cli, image_processing_cascade_clip
from cascade_clip_hf.demo import build_demo
from cascade_clip_hf.segmenter import DEMO_MODEL, load_segmenter
from cascade_clip_hf.toy_world import CLASS_NAMES
from cascade_clip_hf.visualization import overlay_with_legend, segmentation_from_masks

from .helpers import EXAMPLES, free_port


EXIF_ORIENTATION = 0x0112
# transformers' load_image converts to RGB before any image processor sees the image, and PIL's conversion clips
# 16- and 32-bit values above 255 to white and floats in [0, 1] to black.
CLIPPED_BY_LOAD_IMAGE = {"I;16", "I", "F"}


def scene(index: int) -> np.ndarray:
    """A bundled 64x64 toy-world scene as RGB pixels."""
    return np.array(PIL.Image.open(EXAMPLES / "scenes" / f"scene-{index}.png").convert("RGB"))


def as_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


def rotated_by_exif(upright: np.ndarray) -> tuple[PIL.Image.Image, PIL.Image.Exif]:
    """`upright` stored turned a quarter to the left, with the EXIF orientation (6) that turns it back."""
    exif = PIL.Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    return PIL.Image.fromarray(upright).transpose(PIL.Image.Transpose.ROTATE_90), exif


def reading_cases() -> dict[str, tuple[str, PIL.Image.Image, dict, np.ndarray]]:
    """Per case: a file name, the image to save there, save options, and the 8-bit upright RGB it must read as."""
    rgb = scene(0)
    gray = np.asarray(PIL.Image.fromarray(rgb).convert("L"))
    alpha = np.random.default_rng(0).integers(0, 256, gray.shape, dtype=np.uint8)
    palette_image = PIL.Image.fromarray(rgb).quantize(16)
    palette = np.array(palette_image.getpalette(), dtype=np.uint8).reshape(-1, 3)
    bilevel = gray > 127
    tall = np.concatenate([scene(1), scene(2)])  # 64 wide, 128 high
    stored, exif = rotated_by_exif(tall)
    return {
        "RGB": ("rgb.png", PIL.Image.fromarray(rgb), {}, rgb),
        "L": ("gray.png", PIL.Image.fromarray(gray), {}, as_rgb(gray)),
        "I;16": ("gray16.png", PIL.Image.fromarray(gray.astype(np.uint16) * 257), {}, as_rgb(gray)),
        "I": ("gray32.tif", PIL.Image.fromarray(gray.astype(np.int32) * 257), {}, as_rgb(gray)),
        "F": ("float.tif", PIL.Image.fromarray(gray.astype(np.float32) / 255), {}, as_rgb(gray)),
        "LA": ("gray_alpha.png", PIL.Image.fromarray(np.dstack([gray, alpha])), {}, as_rgb(gray)),
        "RGBA": ("rgba.png", PIL.Image.fromarray(np.dstack([rgb, alpha])), {}, rgb),
        "P with transparency": ("palette.png", palette_image, {"transparency": 0}, palette[np.asarray(palette_image)]),
        "CMYK": ("cmyk.tif", PIL.Image.fromarray(rgb).convert("CMYK"), {}, rgb),
        "1": ("bilevel.png", PIL.Image.fromarray(bilevel), {}, as_rgb(bilevel.astype(np.uint8) * 255)),
        "EXIF-rotated": ("rotated.png", stored, {"exif": exif}, tall),
    }


READING_CASES = reading_cases()


@pytest.fixture(scope="module")
def segmenter():
    return load_segmenter(str(DEMO_MODEL))


def class_map(segmenter, image) -> np.ndarray:
    """The zero-shot pipeline's class-index map of one image, in the default vocabulary."""
    segments = segmenter(image)
    return segmentation_from_masks(segments, list(CLASS_NAMES), segments[0]["mask"].size)


@pytest.fixture(scope="module")
def reading_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reading")
    for file_name, image, options, _ in READING_CASES.values():
        image.save(folder / file_name, **options)
    return folder


@pytest.fixture(scope="module")
def cli_output(reading_folder, tmp_path_factory):
    output = tmp_path_factory.mktemp("segmented")
    assert cli.main(["segment", str(reading_folder), "--output", str(output), "--batch-size", "4"]) == 0
    return output


@pytest.fixture(scope="module")
def demo_client():
    from gradio_client import Client

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        demo = build_demo(str(DEMO_MODEL))
        port = free_port()
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        try:
            yield Client(f"http://127.0.0.1:{port}/", verbose=False)
        finally:
            demo.close()


@pytest.mark.parametrize("case", list(READING_CASES))
def test_every_entry_point_reads_an_image_as_its_upright_8_bit_version(
    case, segmenter, reading_folder, cli_output, demo_client
):
    from gradio_client import handle_file

    file_name, _, _, expected = READING_CASES[case]
    path = reading_folder / file_name
    expected_map = class_map(segmenter, expected)

    processor = segmenter.image_processor
    for given in (str(path), PIL.Image.open(path)):
        torch.testing.assert_close(processor(given)["pixel_values"], processor(expected)["pixel_values"])
    np.testing.assert_array_equal(class_map(segmenter, str(path)), expected_map)
    np.testing.assert_array_equal(np.asarray(PIL.Image.open(cli_output / f"{path.name}_classes.png")), expected_map)

    overlay_path, shares = demo_client.predict(handle_file(path), "", api_name="/segment")
    expected_overlay = overlay_with_legend(PIL.Image.fromarray(expected), expected_map, list(CLASS_NAMES))
    np.testing.assert_array_equal(
        np.asarray(PIL.Image.open(overlay_path).convert("RGB")), np.asarray(expected_overlay)
    )
    counts = np.bincount(expected_map.ravel(), minlength=len(CLASS_NAMES)) / expected_map.size
    fractions = {entry["label"]: entry["confidence"] for entry in shares["confidences"]}
    assert fractions == pytest.approx({CLASS_NAMES[index]: share for index, share in enumerate(counts) if share})


@pytest.fixture(scope="module")
def image_segmenter():
    return pipeline("image-segmentation", model=str(DEMO_MODEL))


@pytest.mark.parametrize("case", list(READING_CASES))
def test_transformers_image_segmentation_pipeline_reads_all_but_high_bit_depths_alike(
    case, reading_folder, image_segmenter, request
):
    if case in CLIPPED_BY_LOAD_IMAGE:
        request.applymarker(pytest.mark.xfail(strict=True, reason="transformers' load_image clips the pixels"))
    file_name, _, _, expected = READING_CASES[case]
    size = expected.shape[1::-1]
    from_file = segmentation_from_masks(image_segmenter(str(reading_folder / file_name)), list(CLASS_NAMES), size)
    upright = segmentation_from_masks(image_segmenter(PIL.Image.fromarray(expected)), list(CLASS_NAMES), size)
    np.testing.assert_array_equal(from_file, upright)


def test_the_zero_shot_pipeline_reads_a_url_as_the_file(tmp_path, segmenter):
    file_name, image, options, _ = READING_CASES["I;16"]
    image.save(tmp_path / file_name, **options)
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    with http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}/"
            np.testing.assert_array_equal(
                class_map(segmenter, url + file_name), class_map(segmenter, str(tmp_path / file_name))
            )
            with pytest.raises(ValueError, match="missing.png: cannot download"):
                segmenter(url + "missing.png", timeout=10)
        finally:
            server.shutdown()


def encoded(pixels: np.ndarray, image_format: str) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, image_format)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` pixels, around the data of a single pixel."""
    data = bytearray(encoded(np.zeros((1, 1), np.uint8), "PNG"))
    data[16:24] = struct.pack(">II", width, height)  # IHDR's width and height, then its checksum
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def save(pixels: np.ndarray, path) -> np.ndarray:
    PIL.Image.fromarray(pixels).save(path)
    return pixels


def save_16_bit(gray: np.ndarray, path) -> np.ndarray:
    """`gray` saved as a 16-bit PNG (each value times 257); returns the 8-bit RGB it stands for."""
    PIL.Image.fromarray(gray.astype(np.uint16) * 257).save(path)
    return as_rgb(gray)


def save_rotated_jpeg(upright: np.ndarray, path) -> np.ndarray:
    """A phone photo: JPEG pixels stored sideways with EXIF orientation 6; returns the decoded pixels upright."""
    stored, exif = rotated_by_exif(upright)
    stored.save(path, exif=exif, quality=95)
    return np.rot90(np.asarray(PIL.Image.open(path).convert("RGB")), k=-1)


# Per case: the file written between a.png and c.png (two good scenes), how to write it (returning the upright
# pixels it must be segmented as, or None), and the reason its error line must give (None: segmented).
FOLDER_CASES = {
    "corrupt bytes": (
        "b.png",
        lambda path: path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256))),
        "not a readable",
    ),
    "zero-byte file": ("b.jpg", lambda path: path.touch(), "not a readable image"),
    "truncated JPEG": ("b.jpg", lambda path: path.write_bytes(encoded(scene(1), "JPEG")[:900]), "truncated"),
    "truncated PNG": ("b.png", lambda path: path.write_bytes(encoded(scene(1), "PNG")[:-300]), "not a readable"),
    "header claims 16384x16384": ("b.png", lambda path: path.write_bytes(png_claiming(16384, 16384)), "bomb"),
    "header claims 10000x10000 (PIL only warns)": (
        "b.png",
        lambda path: path.write_bytes(png_claiming(10000, 10000)),
        "decompression bomb",
    ),
    # Named by the size the user gave, not the resized one the model sees.
    "too thin to resize": (
        "b_thin.png",
        lambda path: PIL.Image.new("RGB", (20000, 20)).save(path),
        "20000x20 pixels (width x height) would be 256x0 once resized",
    ),
    "thinner than a patch after resizing": (
        "b_narrow.png",
        lambda path: PIL.Image.new("RGB", (20, 2000)).save(path),
        "20x2000 pixels (width x height) would be 3x256 once resized for the model, less than one 8x8 patch",
    ),
    "1x1 image": ("b.png", lambda path: save(np.full((1, 1, 3), (200, 30, 30), np.uint8), path), None),
    "unicode file name": ("b_ünïcødé_图像.png", lambda path: save(scene(1), path), None),
    "16-bit PNG": ("b.png", lambda path: save_16_bit(scene(1)[..., 0], path), None),
    "rotated phone photo": ("b.jpg", lambda path: save_rotated_jpeg(np.concatenate([scene(1), scene(3)]), path), None),
    "rotated square photo": ("b.jpg", lambda path: save_rotated_jpeg(scene(1), path), None),
}


def assert_segmented_upright(output, name: str, pixels: np.ndarray, segmenter) -> None:
    """The class map and overlay of the image `name` are those of its upright pixels, at their size."""
    expected_map = class_map(segmenter, pixels)
    np.testing.assert_array_equal(np.asarray(PIL.Image.open(output / f"{name}_classes.png")), expected_map)
    overlay = overlay_with_legend(PIL.Image.fromarray(pixels), expected_map, list(CLASS_NAMES))
    np.testing.assert_array_equal(np.asarray(PIL.Image.open(output / f"{name}_overlay.png")), np.asarray(overlay))


def run_segment(folder, output, batch_size: int, caplog, capsys) -> tuple[int, list[str]]:
    """Runs `cascade-clip segment` on a folder; its exit code and error lines, after checking nothing dumped a
    traceback."""
    code = cli.main(["segment", str(folder), "--output", str(output), "--batch-size", str(batch_size)])
    assert "Traceback" not in caplog.text + capsys.readouterr().err
    return code, [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("case", list(FOLDER_CASES))
def test_segment_names_and_skips_each_bad_file_and_segments_the_others(
    case, batch_size, tmp_path, segmenter, caplog, capsys
):
    file_name, write, reason = FOLDER_CASES[case]
    folder, output = tmp_path / "photos", tmp_path / "segmented"
    folder.mkdir()
    good = {"a.png": save(scene(0), folder / "a.png"), "c.png": save(scene(2), folder / "c.png")}
    pixels = write(folder / file_name)

    code, errors = run_segment(folder, output, batch_size, caplog, capsys)
    if reason is None:
        assert (code, errors) == (0, [])
        good[file_name] = pixels
    else:
        assert code == 1 and len(errors) == 1
        assert errors[0].startswith(f"error: {folder / file_name}: ") and reason in errors[0], errors[0]
        assert not list(output.glob(f"{file_name}*"))
    for name, upright in good.items():
        assert_segmented_upright(output, name, upright, segmenter)


def test_a_file_deleted_after_listing_is_named_and_skipped(tmp_path, segmenter, caplog, capsys, monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    good = save(scene(0), folder / "a.png")
    save(scene(1), folder / "b.png")
    listed = cli.image_sources

    def list_then_delete(*arguments):
        paths = listed(*arguments)
        (folder / "b.png").unlink()
        return paths

    monkeypatch.setattr(cli, "image_sources", list_then_delete)
    code, errors = run_segment(folder, tmp_path / "segmented", 2, caplog, capsys)
    assert code == 1 and errors == [f"error: {folder / 'b.png'}: no such file."]
    assert_segmented_upright(tmp_path / "segmented", "a.png", good, segmenter)


def finished(function, *args):
    """
    `function(*args)`'s result or the exception it raised, failing the test instead of hanging when it waits
    forever, as opening a named pipe does until a writer comes.
    """
    outcome = []

    def run():
        try:
            outcome.append(function(*args))
        except BaseException as error:  # handed to the test
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), f"{function.__name__} still waits after 60 s"
    return outcome[0]


def unix_socket(path: Path) -> None:
    """A socket file at `path` (which stays after the socket closes), bound from its folder: a socket's path may
    hold only about 100 bytes."""
    working_folder = os.getcwd()
    os.chdir(path.parent)
    try:
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(path.name)
    finally:
        os.chdir(working_folder)


def without_read_permission(path: Path, monkeypatch) -> None:
    """`path`, a file, made unreadable (root reads any file: then `os.access` says what it would say to a user)."""
    save(scene(1), path)
    path.chmod(0)
    if os.geteuid() == 0:
        access = os.access
        monkeypatch.setattr(
            os, "access", lambda name, mode: access(name, mode) and not (Path(name) == path and mode & os.R_OK)
        )


# Per case: how to make b.png something that is not a readable regular file, and what the warning calls it.
NOT_REGULAR_FILES = {
    "named pipe": (lambda path, monkeypatch: os.mkfifo(path), "a named pipe, not an image file."),
    "socket": (lambda path, monkeypatch: unix_socket(path), "a socket, not an image file."),
    "link to a device": (lambda path, monkeypatch: path.symlink_to(os.devnull), "a device, not an image file."),
    "broken link": (
        lambda path, monkeypatch: path.symlink_to(path.with_name("gone.png")),
        "a link to {folder}/gone.png, which does not exist.",
    ),
    "folder named like an image": (lambda path, monkeypatch: path.mkdir(), "a folder, not an image file."),
    "file without read permission": (without_read_permission, "cannot be read (permission denied)."),
}


@pytest.mark.parametrize("case", list(NOT_REGULAR_FILES))
def test_a_folder_entry_that_is_not_a_readable_regular_file_is_skipped_with_a_warning(
    case, tmp_path, segmenter, caplog, capsys, monkeypatch
):
    make, reason = NOT_REGULAR_FILES[case]
    folder, output = tmp_path / "photos", tmp_path / "segmented"
    folder.mkdir()
    good = {"a.png": save(scene(0), folder / "a.png"), "c.png": save(scene(2), folder / "c.png")}
    make(folder / "b.png", monkeypatch)

    code = finished(cli.main, ["segment", str(folder), "--output", str(output), "--batch-size", "2"])
    assert code == 0
    assert "Traceback" not in caplog.text + capsys.readouterr().err
    warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert warnings == [f"warning: skipping {folder / 'b.png'}: {reason.format(folder=folder)}"]
    assert not list(output.glob("b*"))
    for name, upright in good.items():
        assert_segmented_upright(output, name, upright, segmenter)


@pytest.mark.parametrize("case", [case for case in NOT_REGULAR_FILES if case != "folder named like an image"])
def test_every_entry_point_refuses_a_path_that_is_not_a_readable_regular_file(
    case, tmp_path, segmenter, caplog, monkeypatch
):
    make, reason = NOT_REGULAR_FILES[case]
    path = tmp_path / "b.png"
    make(path, monkeypatch)
    expected = f"{path}: {reason.format(folder=tmp_path)}"

    error = finished(segmenter.image_processor.read_image, str(path))
    assert isinstance(error, image_processing_cascade_clip.ImageInputError) and str(error) == expected
    error = finished(segmenter, str(path))
    assert isinstance(error, ValueError) and expected in str(error)
    code = finished(cli.main, ["segment", str(path), "--output", str(tmp_path / "segmented")])
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert (code, errors) == (1, [f"error: {expected}"])
