"""
Writing outputs so that nothing a user owns is lost and a crash part-way never leaves a damaged result.

Every folder this program writes into keeps a record, `.cascade-clip-outputs`, of the files and folders it wrote
there. It replaces only those: before writing anything it refuses (`OutputFolderError`) an output whose name is
taken by a file it did not write, the replacement of a whole folder that holds anything it did not write, and any
output that would replace one of the run's inputs. Everything is written into a hidden staging file or folder
beside its target, given the permissions an ordinary write gets (those the umask leaves), then renamed into place.
"""

import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path


RECORD = ".cascade-clip-outputs"
# Staging and moved-aside entries of writes in progress, or left by a killed one (`tempfile.mkdtemp` adds eight
# characters; training stages checkpoints under a fixed name): the program's own, never the user's.
TEMPORARY = re.compile(r"\..+\.(tmp|old)-\w{8}|\.checkpoint-\d+\.partial")


class OutputFolderError(ValueError):
    """Writing an output would lose a file this program did not write, or one of the run's inputs."""


def recorded_names(folder: Path) -> set[str]:
    """The names of the entries of `folder` this program wrote, from its record (none without one)."""
    try:
        text = (folder / RECORD).read_text(encoding="utf-8")
    except FileNotFoundError:
        return set()
    # One name a line; a last line without its newline is an interrupted append and records nothing.
    return set(text.split("\n")[:-1])


def record_outputs(folder: str | os.PathLike, names: Iterable[str]) -> None:
    """Adds `names` (entries of `folder`) to the record of what this program wrote there."""
    folder = Path(folder)
    # A name holding a newline cannot be recorded: a later run refuses to replace it rather than guess.
    new = sorted(name for name in set(names) - recorded_names(folder) if "\n" not in name)
    if new:
        with open(folder / RECORD, "a", encoding="utf-8") as record:
            record.writelines(name + "\n" for name in new)


def foreign_entry(folder: Path) -> Path | None:
    """The first file under `folder` (in name order) this program did not write, or None."""
    record = recorded_names(folder)
    for path in sorted(folder.iterdir()):
        if path.name == RECORD or path.name in record or TEMPORARY.fullmatch(path.name):
            continue
        if path.is_symlink() or not path.is_dir():
            return path
        found = foreign_entry(path)
        if found is not None:
            return found
    return None


def check_output_folder(
    folder: str | os.PathLike, names: Iterable[str] | None = None, inputs: Iterable[str | os.PathLike] = ()
) -> None:
    """
    Checks that writing into `folder` loses nothing this program did not write. A missing or empty folder always
    passes.

    Args:
        folder: the output folder.
        names (*optional*): the entries the writer creates or replaces in `folder`; others are left alone. Without
            them `folder` may hold nothing the program did not write (it is replaced whole, or the writer cannot
            name its files in advance).
        inputs: files or folders the run reads, which must not be among what is replaced.

    Raises:
        `OutputFolderError`: with one line naming the folder, the file in the way and how to proceed.
    """
    folder = Path(folder)
    targets = [folder] if names is None else [folder / name for name in names]
    for source in map(Path, inputs):
        for target in targets:
            if target.resolve() in (source.resolve(), *source.resolve().parents):
                raise OutputFolderError(
                    f"refusing to write {target}: that would replace the input {source} (choose another output folder)"
                )
    if not os.path.lexists(folder):
        return
    if not folder.is_dir():
        raise OutputFolderError(f"refusing to write into {folder}: it is a file, not a folder (choose another one)")
    if names is None:
        found = foreign_entry(folder)
    else:
        taken = [folder / name for name in names if os.path.lexists(folder / name)]
        record = recorded_names(folder) if taken else set()
        found = next((path for path in taken if path.name not in record), None)
    if found is not None:
        name = found.relative_to(folder)
        raise OutputFolderError(
            f"refusing to write into {folder}: it holds {name}, which cascade-clip did not write "
            f"(write to another folder, or move {name} away)"
        )


def give_ordinary_modes(path: Path) -> None:
    """
    Gives `path`, and everything under it, the permissions an ordinary write would: files `0o666`, folders `0o777`,
    less the umask. (Temporary folders are private, and some savers write private files.)
    """
    umask = os.umask(0o077)  # reading the umask means setting it: a restrictive value meanwhile, restored at once
    os.umask(umask)
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if not item.is_symlink():
            item.chmod((0o777 if item.is_dir() else 0o666) & ~umask)


def publish_directory(
    staging: str | os.PathLike, target: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()
) -> None:
    """
    Moves a completely written `staging` folder to `target` with renames only, after recording its entries as the
    program's and giving them ordinary permissions. An existing `target` (which `check_output_folder` must pass) is
    moved aside first and removed after; a crash in between leaves it whole in a hidden `.NAME.old-*` folder beside
    `target`.
    """
    staging, target = Path(staging), Path(target)
    check_output_folder(target, inputs=inputs)
    (staging / RECORD).unlink(missing_ok=True)  # a copied record may name files the staging folder lacks
    record_outputs(staging, [path.name for path in staging.iterdir()])
    give_ordinary_modes(staging)
    previous = None
    if target.exists():
        previous = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, previous / target.name)
    os.replace(staging, target)
    if previous is not None:
        shutil.rmtree(previous)


@contextmanager
def atomic_directory(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()):
    """
    Yields an empty temporary folder beside `path`; when the block finishes, the folder replaces `path` (see
    `publish_directory`). If the block raises, `path` is left as it was and the temporary folder is removed.

    Raises:
        `OutputFolderError`: before the block runs, if `path` holds anything the program did not write or one of
        the `inputs` (see `check_output_folder`).
    """
    path = Path(path)
    inputs = list(inputs)
    check_output_folder(path, inputs=inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield staging
        publish_directory(staging, path, inputs)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextmanager
def output_files(folder: str | os.PathLike):
    """
    Yields an empty hidden folder inside `folder`; when the block finishes, each file written there is moved into
    `folder`, replacing the program's own earlier output of that name, and recorded. Files of other names are left
    alone. If the block raises, nothing in `folder` changes and the hidden folder is removed.

    Raises:
        `OutputFolderError`: before anything is moved, if a file of one of the new names is in `folder` and the
        program did not write it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".outputs.tmp-", dir=folder))
    try:
        yield staging
        names = sorted(path.name for path in staging.iterdir())
        check_output_folder(folder, names)
        give_ordinary_modes(staging)
        for name in names:
            os.replace(staging / name, folder / name)
        record_outputs(folder, names)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
