"""
Writing outputs so that nothing a user owns is lost and a crash part-way never leaves a damaged result.

Every folder this program writes into keeps a record, `.cascade-clip-outputs`, of the files and folders it wrote
there. It replaces only those: before writing anything it refuses (`OutputFolderError`) an output whose name is
taken by a file it did not write, the replacement of a whole folder that holds anything it did not write, and any
output that would replace one of the run's inputs. Everything is written into a hidden staging file or folder
beside its target, given the permissions an ordinary write gets (those the umask leaves), then renamed into place.
"""

import json
import os
import shutil
import tempfile
import unicodedata
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


RECORD = ".cascade-clip-outputs"
RECORD_FORMAT = 2
# What a record says its folder holds. A writer that replaces a folder whole replaces only one recorded as its kind;
# files written beside the user's (segmentation results, reports, model cards, scenes) are never replaced whole.
MODEL, FILES = "model", "files"
# Staging entries carry this in their name; `tempfile.mkdtemp` adds random characters and never reuses an existing
# name. The program deletes only the staging it created in the same run, or names its record lists as staging.
STAGING = ".cascade-clip-staging"


class OutputFolderError(ValueError):
    """Writing an output would lose a file this program did not write or one of the run's inputs, or the output
    folder is not a writable folder."""


@dataclass
class Record:
    """What a folder's record says: the kind of output the folder is (None: a record of an earlier version that
    does not say), the names the program wrote there, and the staging names of its writes in progress."""

    kind: str | None = None
    names: set[str] = field(default_factory=set)
    staging: set[str] = field(default_factory=set)
    exists: bool = False


def shown(name: str | os.PathLike) -> str:
    """A name for a one-line message: as it is, or as Python writes it (`repr`) when it holds control characters."""
    text = str(name)
    return repr(text) if any(unicodedata.category(char) == "Cc" for char in text) else text


def read_record(folder: str | os.PathLike) -> Record:
    """The record of `folder` (an empty one without a record)."""
    try:
        text = (Path(folder) / RECORD).read_text(encoding="utf-8")
    except FileNotFoundError:
        return Record()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict) and data.get("format") == RECORD_FORMAT:
        return Record(data.get("kind"), set(data.get("names", [])), set(data.get("staging", [])), True)
    # The earlier format: one name a line, no kind; a last line without its newline is an interrupted append.
    return Record(None, set(text.split("\n")[:-1]), set(), True)


def write_record(folder: Path, record: Record) -> None:
    """Replaces the record of `folder` with `record`, by a rename: a crash leaves the old or the new one whole."""
    data = {"format": RECORD_FORMAT, "kind": record.kind, "names": sorted(record.names)}
    if record.staging:
        data["staging"] = sorted(record.staging)
    handle, temporary = tempfile.mkstemp(prefix=f"{STAGING}-record.", dir=folder)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(json.dumps(data, indent=1, ensure_ascii=True) + "\n")
        os.chmod(temporary, 0o666 & ~current_umask())
        os.replace(temporary, folder / RECORD)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def merged_kind(existing: Record, kind: str) -> str | None:
    """The kind of a folder after a writer of `kind` adds to it: a folder stays replaceable whole only while every
    writer into it wrote that kind of output."""
    if not existing.exists:
        return kind
    return existing.kind if existing.kind == kind else existing.kind and FILES


def recorded_names(folder: Path) -> set[str]:
    """The names of the entries of `folder` this program wrote, from its record (none without one)."""
    record = read_record(folder)
    return record.names | record.staging


def record_outputs(folder: str | os.PathLike, names: Iterable[str], kind: str = FILES) -> None:
    """Adds `names` (entries of `folder`) to the record of what this program wrote there, as a writer of `kind`."""
    folder = Path(folder)
    record = read_record(folder)
    names = set(names) - {RECORD}
    kind = merged_kind(record, kind)
    if names - record.names or (record.exists and kind != record.kind):
        write_record(folder, Record(kind, record.names | names, record.staging))


def record_staging(folder: str | os.PathLike, name: str, kind: str, add: bool = True) -> None:
    """Records (or, with `add=False`, forgets) `name` in `folder` as staging of a write in progress, which a later
    run may remove after a kill."""
    folder = Path(folder)
    record = read_record(folder)
    staging = record.staging | {name} if add else record.staging - {name}
    kind = record.kind if record.exists else kind
    write_record(folder, Record(kind, record.names, staging))


def foreign_entry(folder: Path) -> Path | None:
    """The first file under `folder` (in name order) this program did not write, or None."""
    record = recorded_names(folder)
    for path in sorted(folder.iterdir()):
        if path.name == RECORD or path.name in record:
            continue
        if path.is_symlink() or not path.is_dir():
            return path
        found = foreign_entry(path)
        if found is not None:
            return found
    return None


def check_output_folder(
    folder: str | os.PathLike,
    names: Iterable[str] | None = None,
    inputs: Iterable[str | os.PathLike] = (),
    kind: str = MODEL,
) -> None:
    """
    Checks that writing into `folder` loses nothing this program did not write, and that it can be written (the
    folder, or where it will be created, is a writable folder). A missing or empty writable folder always passes.

    Args:
        folder: the output folder.
        names (*optional*): the entries the writer creates or replaces in `folder`; others are left alone. Without
            them `folder` is replaced whole: it may hold nothing the program did not write, and its record must say
            it is an output of the same `kind` (a model folder is never replaced by a folder of results, nor the
            reverse).
        inputs: files or folders the run reads, which must not be among what is replaced.
        kind: without `names`, the kind of folder the writer writes.

    Raises:
        `OutputFolderError`: with one line naming the folder, the file in the way and how to proceed.
    """
    if not str(folder).strip():
        raise OutputFolderError("refusing to write to an empty output path (name a folder)")
    folder = Path(folder)
    targets = [folder] if names is None else [folder / name for name in names]
    for source in map(Path, inputs):
        for target in targets:
            if target.resolve() in (source.resolve(), *source.resolve().parents):
                raise OutputFolderError(
                    f"refusing to write {shown(target)}: that would replace the input {shown(source)} "
                    "(choose another output folder)"
                )
    existing = next(path for path in (folder, *folder.absolute().parents) if os.path.lexists(path))
    if not existing.is_dir():
        raise OutputFolderError(
            f"refusing to write into {shown(folder)}: {shown(existing)} is a file, not a folder (choose another one)"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputFolderError(
            f"cannot write into {shown(folder)}: {shown(existing)} is not writable (choose another)"
        )
    if existing != folder:
        return
    if names is None:
        found = foreign_entry(folder)
        record = read_record(folder)
        if found is None and record.exists and record.kind != kind:
            what = "an earlier version of cascade-clip" if record.kind is None else f"cascade-clip as {record.kind}"
            raise OutputFolderError(
                f"refusing to replace {shown(folder)} whole: its record {RECORD}, written by {what}, does not "
                f"say it is a {kind} folder (write to another folder, or delete {shown(folder)} or its record)"
            )
    else:
        taken = [folder / name for name in names if os.path.lexists(folder / name)]
        record = recorded_names(folder) if taken else set()
        found = next((path for path in taken if path.name not in record), None)
    if found is not None:
        name = shown(found.relative_to(folder))
        raise OutputFolderError(
            f"refusing to write into {shown(folder)}: it holds {name}, which cascade-clip did not write "
            f"(write to another folder, or move {name} away)"
        )


def current_umask() -> int:
    umask = os.umask(0o077)  # reading the umask means setting it: a restrictive value meanwhile, restored at once
    os.umask(umask)
    return umask


def write_unless_taken(folder: str | os.PathLike, name: str, content: bytes) -> bool:
    """
    Writes `content` as the file `name` in `folder` (a staging file, renamed into place), unless that name holds
    something else this program did not write (see its record), which is kept. Unlike `output_files`, it leaves
    the folder's record as it is, so that it can write into a folder another writer is staging.

    Returns:
        `bool`: whether `folder / name` holds `content` afterwards.
    """
    target = Path(folder) / name
    if os.path.lexists(target):
        if target.is_file() and not target.is_symlink() and target.read_bytes() == content:
            return True
        if name not in recorded_names(Path(folder)):
            return False
    handle, temporary = tempfile.mkstemp(prefix=f"{STAGING}-file.", dir=folder)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(content)
        os.chmod(temporary, 0o666 & ~current_umask())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return True


def give_ordinary_modes(path: Path) -> None:
    """
    Gives `path`, and everything under it, the permissions an ordinary write would: files `0o666`, folders `0o777`,
    less the umask. (Temporary folders are private, and some savers write private files.)
    """
    umask = current_umask()
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if not item.is_symlink():
            item.chmod((0o777 if item.is_dir() else 0o666) & ~umask)


def publish_directory(
    staging: str | os.PathLike, target: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), kind: str = MODEL
) -> None:
    """
    Moves a completely written `staging` folder to `target` with renames only, after recording its entries as the
    program's output of `kind` and giving them ordinary permissions. An existing `target` (which
    `check_output_folder` must pass for `kind`) is moved aside first and removed after; a crash in between leaves
    it whole in a hidden `.cascade-clip-staging-old.*` folder beside `target`.
    """
    staging, target = Path(staging), Path(target)
    check_output_folder(target, inputs=inputs, kind=kind)
    (staging / RECORD).unlink(missing_ok=True)  # a copied record may name files the staging folder lacks
    record_outputs(staging, [path.name for path in staging.iterdir()], kind)
    give_ordinary_modes(staging)
    previous = None
    if target.exists():
        previous = Path(tempfile.mkdtemp(prefix=f"{STAGING}-old.", dir=target.parent))
        os.replace(target, previous / target.name)
    os.replace(staging, target)
    if previous is not None:
        shutil.rmtree(previous)


@contextmanager
def atomic_directory(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), kind: str = MODEL):
    """
    Yields an empty temporary folder beside `path`; when the block finishes, the folder replaces `path` (see
    `publish_directory`) as an output of `kind`. If the block raises, `path` is left as it was and the temporary
    folder is removed.

    Raises:
        `OutputFolderError`: before the block runs, if `path` holds anything the program did not write, is not
        recorded as an output of `kind`, or holds one of the `inputs` (see `check_output_folder`).
    """
    path = Path(path)
    inputs = list(inputs)
    check_output_folder(path, inputs=inputs, kind=kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING}.", dir=path.parent))
    try:
        yield staging
        publish_directory(staging, path, inputs, kind)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextmanager
def output_files(folder: str | os.PathLike, kind: str = FILES):
    """
    Yields an empty hidden folder inside `folder`; when the block finishes, each file written there is moved into
    `folder`, replacing the program's own earlier output of that name, and recorded. Files of other names are left
    alone. If the block raises, nothing in `folder` changes and the hidden folder is removed. `kind` is what the
    files are part of: `MODEL` for the files of a model folder (a trained model, its card), `FILES` for results
    written beside the user's; the folder stays replaceable whole only while every writer into it wrote a model.

    Raises:
        `OutputFolderError`: before anything is moved, if a file of one of the new names is in `folder` and the
        program did not write it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING}.", dir=folder))
    try:
        yield staging
        names = sorted(path.name for path in staging.iterdir())
        check_output_folder(folder, names)
        give_ordinary_modes(staging)
        for name in names:
            os.replace(staging / name, folder / name)
        record_outputs(folder, names, kind)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
