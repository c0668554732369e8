"""Nothing a user owns is lost: every writer refuses to write over what it did not write, never leaves a half-written
output, and writes with the permissions the umask gives (see `cascade_clip_hf.atomic`)."""

import errno
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from accelerate import Accelerator

from cascade_clip_hf import CascadeClipForZeroShotSegmentation, CascadeClipProcessor
from cascade_clip_hf.atomic import (
    BENCHMARK,
    MODEL,
    MODEL_CARD,
    RECORD,
    RECORD_FORMAT,
    SCENES,
    SPACE,
    STAGING,
    OutputFolderError,
    atomic_directory,
    check_output_folder,
    identity,
    read_record,
)
from cascade_clip_hf.cli import main
from cascade_clip_hf.segmenter import DEMO_MODEL
from cascade_clip_hf.training import DataPosition, save_checkpoint, save_final

from .helpers import EXAMPLES, OFFICIAL_TINY, conversion_flags, load_script, run_script


REPOSITORY = Path(__file__).parent.parent
CHECKPOINT = OFFICIAL_TINY / "checkpoint.pth"
SCENE = EXAMPLES / "scenes" / "scene-0.png"
SCENE_OUTPUTS = ["scene-0.png_classes.png", "scene-0.png_overlay.png", "scene-0.png.json"]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, hidden ones included, by relative path: its bytes."""
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def place(root: Path, files: dict[str, bytes]) -> dict[str, bytes]:
    """Writes the user's `files` (relative path: bytes) under `root`; returns them."""
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def cascade_clip(fixture: Callable, *argv) -> tuple[int, list[str]]:
    """Runs `cascade-clip` in this process; returns its exit code and the error lines it logged."""
    caplog = fixture("caplog")
    caplog.clear()
    code = main([str(arg) for arg in argv])
    return code, [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]


def convert(fixture: Callable, checkpoint: Path, output_dir: Path) -> tuple[int, list[str]]:
    return cascade_clip(
        fixture, "convert", checkpoint, "--output-dir", output_dir, *conversion_flags(fixture("official_meta"))
    )


def segment(fixture: Callable, output: Path) -> tuple[int, list[str]]:
    """Segments one bundled scene with the shipped demo model (the default)."""
    return cascade_clip(fixture, "segment", SCENE, "--output", output)


def training_arguments(fixture: Callable, output_dir: Path) -> list[str]:
    """Two training steps of the tiny model on the small Hub-style dataset."""
    dataset, id2label = fixture("hub_dataset")
    arguments = ["--dataset_name", dataset, "--id2label", id2label, "--init_from", fixture("tiny_hub_model_dir")]
    arguments += ["--output_dir", output_dir, "--max_train_steps", "2", "--num_workers", "0", "--skip_eval"]
    return [str(argument) for argument in arguments]


def refused_training(fixture: Callable, output_dir: Path) -> tuple[int, list[str]]:
    """The training script as a user runs it, refusing `output_dir`: its exit code and error (or traceback) lines."""
    result = run_script("train_cascade_clip.py", training_arguments(fixture, output_dir), returncode=2)
    errors = [line for line in result.stderr.splitlines() if line.startswith(("error:", "Traceback"))]
    return result.returncode, errors


def script(fixture: Callable, path: Path, *argv) -> tuple[int, list[str]]:
    """
    A script's `main` in this process, for the refusals it makes before any work (a subprocess per case would take
    seconds of imports); its exit code and the error lines it printed.
    """
    capsys = fixture("capsys")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        load_script(path).main([str(arg) for arg in argv])
    return exit_info.value.code, [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


def converted(tmp_path: Path, fixture: Callable) -> dict[str, bytes]:
    """A conversion into tmp_path/out; the user owns none of it."""
    assert convert(fixture, CHECKPOINT, tmp_path / "out") == (0, [])
    return {}


def converted_and_edited(tmp_path: Path, fixture: Callable) -> dict[str, bytes]:
    """A conversion into tmp_path/out whose config.json the user edited in place (same inode): now theirs."""
    converted(tmp_path, fixture)
    with open(tmp_path / "out" / "config.json", "r+b") as file:
        file.seek(0, os.SEEK_END)
        file.write(b"\n")
    return {"out/config.json": (tmp_path / "out" / "config.json").read_bytes()}


def replaced_by_the_user(name: str, written: Callable[[Path, Callable], dict[str, bytes]]):
    """An output that `written` wrote, which the user then deleted and put a file of their own in place of."""

    def arrange(tmp_path: Path, fixture: Callable) -> dict[str, bytes]:
        written(tmp_path, fixture)
        (tmp_path / name).unlink()
        return place(tmp_path, {name: b"the user's own file"})

    return arrange


def recorded_without_identities(written: Callable[[Path, Callable], dict[str, bytes]], folder: str):
    """Outputs that `written` wrote, recorded as the previous version did: names and kinds, no identities."""

    def arrange(tmp_path: Path, fixture: Callable) -> dict[str, bytes]:
        user_files = written(tmp_path, fixture)
        record = tmp_path / folder / ".cascade-clip-outputs"
        record.write_text(json.dumps({"format": 3, "names": json.loads(record.read_text())["names"]}))
        return user_files

    return arrange


def identified(folder: Path, names: list[str]) -> bool:
    """Whether the record of `folder` is in the current format and identifies each of `names` as it is now."""
    record = read_record(folder)
    return json.loads((folder / RECORD).read_text())["format"] == RECORD_FORMAT and all(
        record.identities.get(name) == identity(folder / name) for name in names
    )


def segmented_once(tmp_path: Path, fixture: Callable) -> dict[str, bytes]:
    """The bundled scene segmented into tmp_path/out; the user owns none of it."""
    assert segment(fixture, tmp_path / "out") == (0, [])
    return {}


def segmented(tmp_path: Path) -> bool:
    return all((tmp_path / "out" / name).is_file() for name in SCENE_OUTPUTS)


def scenes_folder(tmp_path: Path, names: list[str]) -> dict[str, bytes]:
    """tmp_path/in holding the bundled scene under each of `names`; the user's files."""
    return place(tmp_path, {f"in/{name}": SCENE.read_bytes() for name in names})


LONG_NAME = "b" * 248 + ".png"  # its results' names are longer than a file system takes (255 bytes)
NEWLINE_NAME = "new\nline.png"


def segment_folder(fixture: Callable, folder: Path, output: Path | str) -> tuple[int, list[str]]:
    return cascade_clip(fixture, "segment", folder, "--output", output)


def segmented_with_newline(tmp_path: Path, fixture: Callable) -> dict[str, bytes]:
    user_files = scenes_folder(tmp_path, [NEWLINE_NAME])
    assert segment_folder(fixture, tmp_path / "in", tmp_path / "out") == (0, [])
    return user_files


def segmented_into_itself(tmp_path: Path, fixture: Callable) -> dict[str, bytes]:
    user_files = scenes_folder(tmp_path, ["scene-0.png"])
    assert segment_folder(fixture, tmp_path / "in", tmp_path / "in") == (0, [])
    return user_files


def in_empty_folder(tmp_path: Path, fixture: Callable) -> dict[str, bytes]:
    """Runs from tmp_path/cwd, where an empty output path would write."""
    (tmp_path / "cwd").mkdir()
    fixture("monkeypatch").chdir(tmp_path / "cwd")
    return scenes_folder(tmp_path, ["scene-0.png"])


def embed(fixture: Callable, output: Path) -> tuple[int, list[str]]:
    """Embeds two class names with the shipped demo model (the default) into the vocabulary file `output`."""
    return cascade_clip(fixture, "embed", "--labels", "cat,dog", "--output", output)


def evaluate(fixture: Callable, output: Path) -> tuple[int, list[str]]:
    """The evaluation script as far as its refusals before any work (it loads no model, reads no dataset)."""
    evaluation = EXAMPLES / "evaluate_cascade_clip.py"
    return script(fixture, evaluation, "--model", "m", "--dataset_name", "d", "--output", output)


def converted_in_the_previous_record_format(tmp_path: Path, fixture: Callable) -> dict[str, bytes]:
    """A conversion into tmp_path/out recorded as the previous version did: one kind for the whole folder."""
    converted(tmp_path, fixture)
    record = tmp_path / "out" / ".cascade-clip-outputs"
    names = sorted(json.loads(record.read_text())["names"])
    record.write_text(json.dumps({"format": 2, "kind": "model", "names": names}))
    return {}


def converted_beside_config_png(tmp_path: Path, fixture: Callable) -> dict[str, bytes]:
    """A conversion into tmp_path/out, and the user's image tmp_path/in/config.png (results: config.png.json, ...)."""
    converted(tmp_path, fixture)
    return scenes_folder(tmp_path, ["config.png"])


def embedded_into_run(tmp_path: Path, fixture: Callable) -> dict[str, bytes]:
    assert embed(fixture, tmp_path / "run" / "vocabulary.safetensors") == (0, [])
    return {}


def embedded_into_own(tmp_path: Path, fixture: Callable) -> dict[str, bytes]:
    assert embed(fixture, tmp_path / "own" / "vocab.safetensors") == (0, [])
    return {}


@dataclass
class Situation:
    """
    An output folder as a user may hand it over (`arrange` lays it out and returns the user's own files), a writer
    run on it (`act`: exit code and error lines), and what must come of it. An error line matching `message`
    is the only one printed; a refusal (exit code 2) changes nothing at all; a success, or a partial one (exit code
    1), leaves the user's files as they were and passes `written`.
    """

    arrange: Callable[[Path, Callable], dict[str, bytes]]
    act: Callable[[Path, Callable], tuple[int, list[str]]]
    exit_code: int
    message: str | None = None
    written: Callable[[Path], bool] = lambda tmp_path: True


SITUATIONS = {
    "convert into a folder holding notes.txt": Situation(
        lambda tmp, fixture: place(tmp, {"out/notes.txt": b"my notes"}),
        lambda tmp, fixture: convert(fixture, CHECKPOINT, tmp / "out"),
        2,
        r"/out: it holds notes\.txt, which cascade-clip did not write",
    ),
    "convert into the checkpoint's own folder": Situation(
        lambda tmp, fixture: place(tmp, {"folder/coco.pth": CHECKPOINT.read_bytes(), "folder/notes.txt": b"notes"}),
        lambda tmp, fixture: convert(fixture, tmp / "folder/coco.pth", tmp / "folder"),
        2,
        r"/folder: that would replace the input .*/folder/coco\.pth",
    ),
    "convert onto the checkpoint file itself": Situation(
        lambda tmp, fixture: place(tmp, {"folder/coco.pth": CHECKPOINT.read_bytes()}),
        lambda tmp, fixture: convert(fixture, tmp / "folder/coco.pth", tmp / "folder/coco.pth"),
        2,
        r"/folder/coco\.pth: that would replace the input .*/folder/coco\.pth",
    ),
    "convert over its own previous output": Situation(
        converted,
        lambda tmp, fixture: convert(fixture, CHECKPOINT, tmp / "out"),
        0,
        written=lambda tmp: identified(tmp / "out", ["config.json", "model.safetensors"]),
    ),
    "convert over its own previous output whose config.json the user edited": Situation(
        converted_and_edited,
        lambda tmp, fixture: convert(fixture, CHECKPOINT, tmp / "out"),
        2,
        r"/out: it holds config\.json, which is not the file cascade-clip wrote there \(it was replaced or changed "
        r"since\) \(choose another output, or move config\.json away\)$",
    ),
    "convert where the user put their own file in place of a deleted model.safetensors": Situation(
        replaced_by_the_user("out/model.safetensors", converted),
        lambda tmp, fixture: convert(fixture, CHECKPOINT, tmp / "out"),
        2,
        r"/out: it holds model\.safetensors, which is not the file cascade-clip wrote there",
    ),
    "convert into a folder holding the user's hidden .backup.old-20240101 folder": Situation(
        lambda tmp, fixture: place(tmp, {"out/.backup.old-20240101/thesis.tex": b"x"}),
        lambda tmp, fixture: convert(fixture, CHECKPOINT, tmp / "out"),
        2,
        r"/out: it holds \.backup\.old-20240101/thesis\.tex, which cascade-clip did not write",
    ),
    "convert into a folder holding the user's hidden .notes.tmp-abcdefgh": Situation(
        lambda tmp, fixture: place(tmp, {"out/.notes.tmp-abcdefgh": b"x"}),
        lambda tmp, fixture: convert(fixture, CHECKPOINT, tmp / "out"),
        2,
        r"/out: it holds \.notes\.tmp-abcdefgh, which cascade-clip did not write",
    ),
    "convert into a copy of the demo scenes": Situation(
        lambda tmp, fixture: place(
            tmp, {f"out/{path.name}": path.read_bytes() for path in (EXAMPLES / "scenes").iterdir()}
        ),
        lambda tmp, fixture: convert(fixture, CHECKPOINT, tmp / "out"),
        2,
        r"refusing to write into .*/out: it holds scene-0\.png, which cascade-clip wrote as scenes output, not "
        r"model output \(choose another output, or move scene-0\.png away\)",
    ),
    "convert into a folder of segment results": Situation(
        segmented_once,
        lambda tmp, fixture: convert(fixture, CHECKPOINT, tmp / "out"),
        2,
        r"/out: it holds scene-0\.png\.json, which cascade-clip wrote as segmentation output, not model output",
    ),
    "convert into a folder with a record of an earlier version": Situation(
        lambda tmp, fixture: place(tmp, {"out/.cascade-clip-outputs": b"config.json\n", "out/config.json": b"{}"}),
        lambda tmp, fixture: convert(fixture, CHECKPOINT, tmp / "out"),
        2,
        r"refusing to write into .*/out: it holds config\.json, which an earlier version of cascade-clip wrote "
        "without recording what it is",
    ),
    "train into a folder holding the user's .checkpoint-3.partial": Situation(
        lambda tmp, fixture: place(tmp, {"run/.checkpoint-3.partial/notes.txt": b"notes"}),
        lambda tmp, fixture: script(
            fixture, EXAMPLES / "train_cascade_clip.py", *training_arguments(fixture, tmp / "run")
        ),
        2,
        r"/run: it holds \.checkpoint-3\.partial/notes\.txt, which cascade-clip did not write",
    ),
    "segment an image whose results' names are too long for the file system": Situation(
        lambda tmp, fixture: scenes_folder(tmp, ["a.png", LONG_NAME, "c.png"]),
        lambda tmp, fixture: segment_folder(fixture, tmp / "in", tmp / "out"),
        1,
        r"^error: .*/in/b{248}\.png: its results cannot be written \(\[Errno 36\] File name too long",
        written=lambda tmp: (
            {"a.png_overlay.png", "c.png_overlay.png"} <= {path.name for path in (tmp / "out").iterdir()}
        ),
    ),
    "segment an image with a newline in its name twice": Situation(
        segmented_with_newline,
        lambda tmp, fixture: segment_folder(fixture, tmp / "in", tmp / "out"),
        0,
        written=lambda tmp: (tmp / "out" / "new\nline.png_overlay.png").is_file(),
    ),
    "segment a folder into itself twice": Situation(
        segmented_into_itself,
        lambda tmp, fixture: segment_folder(fixture, tmp / "in", tmp / "in"),
        0,
        written=lambda tmp: (
            sorted(path.name for path in (tmp / "in").glob("[!.]*")) == sorted(["scene-0.png", *SCENE_OUTPUTS])
        ),
    ),
    "segment with an empty --output": Situation(
        in_empty_folder,
        lambda tmp, fixture: segment_folder(fixture, tmp / "in", ""),
        2,
        r"^error: refusing to write to an empty output path",
    ),
    "segment where the user made scene-0.png_overlay.png": Situation(
        lambda tmp, fixture: place(tmp, {"out/scene-0.png_overlay.png": b"my own drawing"}),
        lambda tmp, fixture: segment(fixture, tmp / "out"),
        2,
        r"/out: it holds scene-0\.png_overlay\.png, which cascade-clip did not write",
    ),
    "segment beside unrelated user files": Situation(
        lambda tmp, fixture: place(tmp, {"out/notes.txt": b"notes", "out/holiday.jpg": b"\xff\xd8 a photo"}),
        lambda tmp, fixture: segment(fixture, tmp / "out"),
        0,
        written=segmented,
    ),
    "segment twice into the same folder": Situation(
        segmented_once,
        lambda tmp, fixture: segment(fixture, tmp / "out"),
        0,
        written=lambda tmp: segmented(tmp) and identified(tmp / "out", SCENE_OUTPUTS),
    ),
    "segment where the user put their own file in place of a deleted overlay": Situation(
        replaced_by_the_user("out/scene-0.png_overlay.png", segmented_once),
        lambda tmp, fixture: segment(fixture, tmp / "out"),
        2,
        r"^error: refusing to write into .*/out: it holds scene-0\.png_overlay\.png, which is not the file "
        r"cascade-clip wrote there",
    ),
    "segment over results recorded without identities by the previous version": Situation(
        recorded_without_identities(segmented_once, "out"),
        lambda tmp, fixture: segment(fixture, tmp / "out"),
        0,
        written=lambda tmp: segmented(tmp) and identified(tmp / "out", SCENE_OUTPUTS),
    ),
    "train into a folder holding the user's README.md": Situation(
        lambda tmp, fixture: place(tmp, {"run/README.md": b"# My experiments\n"}),
        lambda tmp, fixture: refused_training(fixture, tmp / "run"),
        2,
        r"/run: it holds README\.md, which cascade-clip did not write",
    ),
    "train into a folder holding unrelated files": Situation(
        lambda tmp, fixture: place(tmp, {"run/data/notes.txt": b"notes"}),
        lambda tmp, fixture: script(
            fixture, EXAMPLES / "train_cascade_clip.py", *training_arguments(fixture, tmp / "run")
        ),
        2,
        r"/run: it holds data/notes\.txt, which cascade-clip did not write",
    ),
    "evaluate onto the user's results.json": Situation(
        lambda tmp, fixture: place(tmp, {"results.json": b'{"mine": true}'}),
        lambda tmp, fixture: script(
            fixture,
            EXAMPLES / "evaluate_cascade_clip.py",
            "--model",
            "m",
            "--dataset_name",
            "d",
            "--output",
            tmp / "results.json",
        ),
        2,
        r": it holds results\.json, which cascade-clip did not write",
    ),
    "ship the demo model into a folder holding notes.txt": Situation(
        lambda tmp, fixture: place(tmp, {"ship/notes.txt": b"notes"}),
        lambda tmp, fixture: script(
            fixture, EXAMPLES / "build_demo_model.py", "--output_dir", tmp / "build", "--ship_to", tmp / "ship"
        ),
        2,
        r"/ship: it holds notes\.txt",
    ),
    "write the demo scenes over the user's scene-0.png": Situation(
        lambda tmp, fixture: place(tmp, {"scenes/scene-0.png": b"my scene"}),
        lambda tmp, fixture: script(
            fixture, EXAMPLES / "build_demo_model.py", "--output_dir", tmp / "build", "--scenes_dir", tmp / "scenes"
        ),
        2,
        r"/scenes: it holds scene-0\.png",
    ),
    "generate model cards over the user's README.md": Situation(
        lambda tmp, fixture: place(tmp, {"cards/cascade-clip-pascal-voc-2012-inductive/README.md": b"# Mine\n"}),
        lambda tmp, fixture: script(
            fixture, REPOSITORY / "model_cards" / "generate_model_cards.py", "--output_dir", tmp / "cards"
        ),
        2,
        r"/cascade-clip-pascal-voc-2012-inductive: it holds README\.md",
    ),
    # A file is replaced only by a writer of the kind that wrote it: no result, report or vocabulary ever replaces a
    # model's files, nor one writer's results another's.
    "embed over a converted model's weights": Situation(
        converted,
        lambda tmp, fixture: embed(fixture, tmp / "out" / "model.safetensors"),
        2,
        r"^error: refusing to write into .*/out: it holds model\.safetensors, which cascade-clip wrote as model "
        r"output, not vocabulary output \(choose another output, or move model\.safetensors away\)$",
    ),
    "embed over the weights of a model recorded by the previous version": Situation(
        converted_in_the_previous_record_format,
        lambda tmp, fixture: embed(fixture, tmp / "out" / "model.safetensors"),
        2,
        r"/out: it holds model\.safetensors, which cascade-clip wrote as model output, not vocabulary output",
    ),
    "convert over a model recorded by the previous version": Situation(
        converted_in_the_previous_record_format,
        lambda tmp, fixture: convert(fixture, CHECKPOINT, tmp / "out"),
        0,
    ),
    "segment config.png into a model folder: its results keep the suffix and miss config.json": Situation(
        converted_beside_config_png,
        lambda tmp, fixture: segment_folder(fixture, tmp / "in" / "config.png", tmp / "out"),
        0,
        written=lambda tmp: (
            (tmp / "out" / "config.png.json").is_file()
            and json.loads((tmp / "out" / "config.json").read_text())["model_type"] == "cascade_clip"
        ),
    ),
    "segment beside a model under names of its own": Situation(
        converted,
        lambda tmp, fixture: segment(fixture, tmp / "out"),
        0,
        written=segmented,
    ),
    "evaluate onto a model's config.json": Situation(
        converted,
        lambda tmp, fixture: evaluate(fixture, tmp / "out" / "config.json"),
        2,
        r"/out: it holds config\.json, which cascade-clip wrote as model output, not evaluation output",
    ),
    "evaluate onto segment results": Situation(
        segmented_once,
        lambda tmp, fixture: evaluate(fixture, tmp / "out" / "scene-0.png.json"),
        2,
        r"/out: it holds scene-0\.png\.json, which cascade-clip wrote as segmentation output, not evaluation output",
    ),
    "segment over results recorded by the first version": Situation(
        lambda tmp, fixture: place(
            tmp, {"out/.cascade-clip-outputs": b"scene-0.png.json\n", "out/scene-0.png.json": b"{}"}
        ),
        lambda tmp, fixture: segment(fixture, tmp / "out"),
        2,
        r"/out: it holds scene-0\.png\.json, which an earlier version of cascade-clip wrote without recording what "
        r"it is",
    ),
    "embed twice onto the same file": Situation(
        embedded_into_own,
        lambda tmp, fixture: embed(fixture, tmp / "own" / "vocab.safetensors"),
        0,
        written=lambda tmp: identified(tmp / "own", ["vocab.safetensors"]),
    ),
    "embed where the user put their own file in place of a deleted vocabulary": Situation(
        replaced_by_the_user("own/vocab.safetensors", embedded_into_own),
        lambda tmp, fixture: embed(fixture, tmp / "own" / "vocab.safetensors"),
        2,
        r"^error: refusing to write into .*/own: it holds vocab\.safetensors, which is not the file cascade-clip "
        r"wrote there \(it was replaced or changed since\) \(choose another output, or move vocab\.safetensors "
        r"away\)$",
    ),
    "embed over a vocabulary recorded without identities by the previous version": Situation(
        recorded_without_identities(embedded_into_own, "own"),
        lambda tmp, fixture: embed(fixture, tmp / "own" / "vocab.safetensors"),
        0,
        written=lambda tmp: identified(tmp / "own", ["vocab.safetensors"]),
    ),
    "train into a folder holding a vocabulary": Situation(
        embedded_into_run,
        lambda tmp, fixture: script(
            fixture, EXAMPLES / "train_cascade_clip.py", *training_arguments(fixture, tmp / "run")
        ),
        2,
        r"/run: it holds vocabulary\.safetensors, which cascade-clip wrote as vocabulary output, not model output",
    ),
}


@pytest.mark.parametrize("name", SITUATIONS)
def test_hostile_output_folder(name, tmp_path, request):
    situation = SITUATIONS[name]
    user_files = situation.arrange(tmp_path, request.getfixturevalue)
    before = snapshot(tmp_path)
    exit_code, errors = situation.act(tmp_path, request.getfixturevalue)
    assert exit_code == situation.exit_code, errors
    if situation.message is None:
        assert errors == []
    else:
        assert len(errors) == 1 and "\n" not in errors[0], errors
        assert re.search(situation.message, errors[0]), errors[0]
    if situation.exit_code == 2:
        assert snapshot(tmp_path) == before  # refused: no output, no record, no debris
    after = snapshot(tmp_path)
    assert {path: after.get(path) for path in user_files} == user_files
    assert situation.written(tmp_path)


def test_the_repositorys_own_outputs_may_be_rebuilt():
    """
    The shipped demo model, scenes, model cards and benchmark reports carry the record their writers check, without
    identities: a checkout gives their files new inodes and times, which would make them look like a user's.
    """
    check_output_folder(DEMO_MODEL, kind=MODEL)
    scenes = [path.name for path in (EXAMPLES / "scenes").glob("*.png")]
    check_output_folder(EXAMPLES / "scenes", scenes, kind=SCENES)
    benchmarks = [path.name for path in (REPOSITORY / "benchmarks").glob("[!.]*")]
    check_output_folder(REPOSITORY / "benchmarks", benchmarks, kind=BENCHMARK)
    cards = [card.parent for card in (REPOSITORY / "model_cards").glob("*/README.md")]
    for card in cards:
        check_output_folder(card, ["README.md"], kind=MODEL_CARD)
    for folder in [DEMO_MODEL, EXAMPLES / "scenes", REPOSITORY / "benchmarks", *cards]:
        assert read_record(folder).names and not read_record(folder).identities, folder


# Each writer of the command line, run on its output path (a folder, or embed's file).
COMMANDS = {
    "convert": lambda fixture, output: convert(fixture, CHECKPOINT, output),
    "segment": segment,
    "embed": lambda fixture, output: embed(fixture, output / "vocabulary.safetensors"),
}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_folder_that_cannot_be_written_is_named_as_the_user_gave_it(command, tmp_path, request, monkeypatch):
    """Where the file system refuses the write (read-only, no permission), the error names the user's output, not
    the hidden staging name the program made up."""
    make_folder = tempfile.mkdtemp

    def read_only(suffix=None, prefix=None, dir=None):
        if prefix and prefix.startswith(STAGING):
            raise PermissionError(errno.EACCES, "Permission denied", os.path.join(dir, f"{prefix}abcd1234"))
        return make_folder(suffix, prefix, dir)

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    output = tmp_path / "out"
    exit_code, errors = COMMANDS[command](request.getfixturevalue, output)
    assert (exit_code, errors) == (2, [f"error: [Errno 13] Permission denied: '{output}'"])


class DiskFull(OSError):
    def __init__(self):
        super().__init__(28, "No space left on device")


def fail_after_writing(path: Path):
    """A save that writes part of `path`, then fails as on a full disk."""
    path.write_text("{", encoding="utf-8")
    raise DiskFull()


def trained_model(fixture) -> tuple[Accelerator, CascadeClipForZeroShotSegmentation, CascadeClipProcessor]:
    model_dir = fixture("tiny_hub_model_dir")
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(CascadeClipForZeroShotSegmentation.from_pretrained(model_dir))
    return accelerator, model, CascadeClipProcessor.from_pretrained(model_dir)


def save_trained_model(tmp_path: Path, fixture: Callable) -> None:
    accelerator, model, processor = trained_model(fixture)
    save_final(accelerator, model, processor, tmp_path / "out")
    save_checkpoint(accelerator, tmp_path / "out", 2, DataPosition(epoch=0, batches=2, batches_per_epoch=5))


def interrupted_conversion(tmp_path: Path, fixture: Callable, monkeypatch) -> str:
    def save_pretrained(self, save_directory, **kwargs):
        fail_after_writing(Path(save_directory) / "processor_config.json")

    monkeypatch.setattr(CascadeClipProcessor, "save_pretrained", save_pretrained)
    exit_code, errors = convert(fixture, CHECKPOINT, tmp_path / "out")
    assert exit_code == 2 and len(errors) == 1, errors
    return errors[0]


def interrupted_segmentation(tmp_path: Path, fixture: Callable, monkeypatch) -> str:
    def class_fractions(*args):  # by then both images of the scene are written
        raise DiskFull()

    monkeypatch.setattr("cascade_clip_hf.visualization.class_fractions", class_fractions)
    exit_code, errors = segment(fixture, tmp_path / "out")
    assert exit_code == 2 and len(errors) == 1, errors
    return errors[0]


def interrupted_final_save(tmp_path: Path, fixture: Callable, monkeypatch) -> str:
    accelerator, model, processor = trained_model(fixture)
    monkeypatch.setattr(
        processor, "save_pretrained", lambda folder, **kwargs: fail_after_writing(Path(folder) / "tokenizer.json")
    )
    with pytest.raises(DiskFull) as error:
        save_final(accelerator, model, processor, tmp_path / "out")
    return str(error.value)


# Each writer: a successful write into tmp_path/out, and the same write failing part-way (its error message).
WRITERS = {
    "convert": (converted, interrupted_conversion),
    "segment": (segmented_once, interrupted_segmentation),
    "trained model": (save_trained_model, interrupted_final_save),
}


@pytest.mark.parametrize("writer", WRITERS)
def test_an_interrupted_write_leaves_the_previous_output_whole(writer, tmp_path, request, monkeypatch):
    write, interrupted = WRITERS[writer]
    write(tmp_path, request.getfixturevalue)
    before = snapshot(tmp_path)
    assert "No space left on device" in interrupted(tmp_path, request.getfixturevalue, monkeypatch)
    assert snapshot(tmp_path) == before  # the previous output whole, and no staging file or folder left


@pytest.fixture(params=[0o022, 0o027], ids=["umask-022", "umask-027"])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


@pytest.mark.parametrize("writer", WRITERS)
def test_outputs_get_the_permissions_of_an_ordinary_write(writer, umask, tmp_path, request):
    write, _ = WRITERS[writer]
    write(tmp_path, request.getfixturevalue)
    output = tmp_path / "out"
    modes = {
        path.relative_to(tmp_path).as_posix(): path.stat().st_mode & 0o777 for path in [output, *output.rglob("*")]
    }
    expected = {name: (0o777 if (tmp_path / name).is_dir() else 0o666) & ~umask for name in modes}
    assert modes == expected
    assert len(modes) > 3 and (writer != "trained model" or "out/checkpoint-2" in modes)


def test_a_checkpoint_is_saved_again_only_over_its_own_untouched_files(tmp_path, request):
    """Saving a checkpoint of the same step replaces the earlier one, unless a file in it is no longer the one
    written: the user's file put in place of a deleted one is kept, and the save refused in one line (its staging
    is left for the next run to remove, see `remove_partial_checkpoints`)."""
    accelerator, model, processor = trained_model(request.getfixturevalue)
    position = DataPosition(epoch=0, batches=2, batches_per_epoch=5)
    save_checkpoint(accelerator, tmp_path / "out", 2, position)
    save_checkpoint(accelerator, tmp_path / "out", 2, position)  # untouched: replaced
    (tmp_path / "out/checkpoint-2/training_state.json").unlink()
    place(tmp_path, {"out/checkpoint-2/training_state.json": b"{}"})
    before = snapshot(tmp_path / "out/checkpoint-2")
    with pytest.raises(
        OutputFolderError,
        match=r"^refusing to write into .*/checkpoint-2: it holds "
        r"training_state\.json, which is not the file cascade-clip wrote there",
    ) as error:
        save_checkpoint(accelerator, tmp_path / "out", 2, position)
    assert "\n" not in str(error.value) and snapshot(tmp_path / "out/checkpoint-2") == before


def test_a_folder_output_changed_inside_is_refused_as_a_folder(tmp_path):
    target = tmp_path / "space"
    with atomic_directory(target, kind=SPACE) as staging:
        (staging / "package").mkdir()
        (staging / "package" / "module.py").write_text("x = 1\n")
    (target / "package" / "mine.py").write_text("y = 2\n")
    with pytest.raises(OutputFolderError, match=r"it holds package, which is not the folder cascade-clip wrote there"):
        check_output_folder(target, kind=SPACE)
    assert (target / "package" / "mine.py").read_text() == "y = 2\n"
