"""
Writing outputs so that nothing a user owns is lost and a crash part-way never leaves a damaged result.

Every folder this program writes into keeps a record, `.cascade-clip-outputs`, of the files and folders it wrote
there, the kind of output each one is (see `MODEL` and the kinds below it) and what identifies the entry written
(`identity`: its size and modification time, taken after its final rename, which keeps them). A writer
replaces only what a writer of its own kind wrote: before writing anything it refuses (`OutputFolderError`) an output
whose name is taken by a file the program did not write, wrote as another kind of output (embedding a vocabulary
never replaces a model's weights) or that is no longer the entry it wrote (the user deleted it and put a file of
theirs there, or edited it), the replacement of a whole folder that holds anything else, and any output that would
replace one of the run's inputs. Names recorded without an identity (by earlier versions, and the records shipped in
this repository, which a checkout gives new inodes and times) are taken as written, as those versions did.
Everything is written into a hidden staging file or folder beside its target, given the permissions an ordinary
write gets (those the umask leaves), then renamed into place; errors name the user's path, never the staging one.
"""

import hashlib
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
# 4: names -> kind, and names -> identity; 3: names -> kind; 2: one kind for all names; 1: one name a line.
RECORD_FORMAT = 4
# The kinds of output, one for each writer of this program.
MODEL = "model"  # a model folder's files: weights, config, processor, its card, checkpoints, training logs
SEGMENTATION = "segmentation"  # `cascade-clip segment`: class maps, overlays and class shares
VOCABULARY = "vocabulary"  # `cascade-clip embed`: class names embedded once
EVALUATION = "evaluation"  # examples/evaluate_cascade_clip.py: results of a model on a dataset
BENCHMARK = "benchmark"  # examples/benchmark_*.py: timing reports
SCENES = "scenes"  # examples/build_demo_model.py: the bundled example scenes
MODEL_CARD = "model card"  # model_cards/generate_model_cards.py: a card written without its model
SPACE = "space"  # demo/build_space.py: the demo app as a Hugging Face Space folder
# Staging entries carry this in their name; `tempfile.mkdtemp` adds random characters and never reuses an existing
# name. The program deletes only the staging it created in the same run, or names its record lists as staging.
STAGING = ".cascade-clip-staging"


class OutputFolderError(ValueError):
    """Writing an output would lose a file this program did not write, one it wrote as another kind of output, or
    one of the run's inputs, or the output folder is not a writable folder."""


@dataclass
class Record:
    """What a folder's record says: the names the program wrote there, each with its kind of output (None: recorded
    by an earlier version that did not say), what identifies the entry of each name it wrote (see `identity`; none
    for names recorded without one), and the staging names of its writes in progress."""

    names: dict[str, str | None] = field(default_factory=dict)
    staging: set[str] = field(default_factory=set)
    identities: dict[str, dict] = field(default_factory=dict)


def identity(path: Path, appended: bool = False) -> dict:
    """
    What identifies the entry `path` (a file, a folder or a link, not followed) as the one the program wrote: its
    size in bytes and modification time in nanoseconds (a folder's change with every entry added or removed), which
    a rename keeps, and so do moves and copies that keep times (`mv` to another disk, `cp -a`, `rsync -a`), unlike
    its inode; a file put in its place has another time. A file the program appends to afterwards (`appended`, a
    log), whose size and time change, is identified by its inode and what it holds now, which stays its beginning
    (see `file_start`): a file put in place of a deleted one may get its inode, not its content.
    """
    status = os.lstat(path)
    if appended:
        return {"inode": status.st_ino, "start": file_start(path, status.st_size)}
    return {"size": status.st_size, "mtime_ns": status.st_mtime_ns}


def file_start(path: Path, size: int) -> dict:
    """The first `size` bytes of the file `path` (fewer if it is shorter): their number and SHA-256 (hex)."""
    with open(path, "rb") as file:
        start = file.read(size)
    return {"size": len(start), "sha256": hashlib.sha256(start).hexdigest()}


def is_as_written(folder: Path, name: str, record: Record) -> bool:
    """Whether the entry `name` of `folder` is still the one its record identifies (always, without an identity)."""
    recorded = record.identities.get(name)
    if recorded is None:
        return True
    path = folder / name
    try:
        if "start" in recorded:
            start = file_start(path, recorded["start"]["size"])
            return os.lstat(path).st_ino == recorded["inode"] and start == recorded["start"]
        return identity(path) == recorded
    except (FileNotFoundError, IsADirectoryError):
        return False


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
    if isinstance(data, dict) and data.get("format") in (3, 4) and isinstance(data.get("names"), dict):
        return Record(dict(data["names"]), set(data.get("staging", [])), dict(data.get("identities", {})))
    if isinstance(data, dict) and data.get("format") == 2:
        # One kind for the whole folder, "model" only while every writer into it had written a model; any other
        # kind mixed the outputs of several writers.
        kind = MODEL if data.get("kind") == MODEL else None
        return Record(dict.fromkeys(data.get("names", []), kind), set(data.get("staging", [])))
    # The first format: one name a line, no kind; a last line without its newline is an interrupted append.
    return Record(dict.fromkeys(text.split("\n")[:-1]), set())


def write_record(folder: Path, record: Record) -> None:
    """Replaces the record of `folder` with `record`, by a rename: a crash leaves the old or the new one whole."""
    data = {"format": RECORD_FORMAT, "names": dict(sorted(record.names.items()))}
    identities = {name: value for name, value in sorted(record.identities.items()) if name in record.names}
    if identities:
        data["identities"] = identities
    if record.staging:
        data["staging"] = sorted(record.staging)
    with naming_user_paths(folder):
        handle, temporary = tempfile.mkstemp(prefix=f"{STAGING}-record.", dir=folder)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                file.write(json.dumps(data, indent=1, ensure_ascii=True) + "\n")
            os.chmod(temporary, 0o666 & ~current_umask())
            os.replace(temporary, folder / RECORD)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def forget_identities(folder: str | os.PathLike) -> None:
    """
    Drops what identifies each output from the record of `folder`, keeping names and kinds: for outputs committed
    to a repository (the shipped demo model, the bundled scenes, benchmark reports, model cards), whose files a clone
    gives new times. Their names are then replaced as those of records without identities are.
    """
    folder = Path(folder)
    record = read_record(folder)
    if record.identities:
        write_record(folder, Record(record.names, record.staging))


def recorded_names(folder: Path) -> set[str]:
    """The names of the entries of `folder` this program wrote and that are still as written, from its record (none
    without one), and its staging names."""
    record = read_record(folder)
    return {name for name in record.names if is_as_written(folder, name, record)} | record.staging


def record_outputs(folder: str | os.PathLike, names: Iterable[str], kind: str, appended: bool = False) -> None:
    """
    Adds `names` (entries of `folder`, as they are now: call it after their final rename) to the record of what this
    program wrote there, as outputs of `kind`, each with its `identity` (`appended`: files the program appends to
    afterwards, identified by their inode and what they hold now).
    """
    folder = Path(folder)
    record = read_record(folder)
    written = dict.fromkeys(set(names) - {RECORD}, kind)
    identities = {name: identity(folder / name, appended) for name in written}
    if any(record.names.get(name) != kind or record.identities.get(name) != identities[name] for name in written):
        write_record(folder, Record({**record.names, **written}, record.staging, {**record.identities, **identities}))


def record_staging(folder: str | os.PathLike, name: str, add: bool = True) -> None:
    """Records (or, with `add=False`, forgets) `name` in `folder` as staging of a write in progress, which a later
    run may remove after a kill."""
    folder = Path(folder)
    record = read_record(folder)
    staging = record.staging | {name} if add else record.staging - {name}
    write_record(folder, Record(record.names, staging, record.identities))


def refusal(folder: Path, record: Record, name: str, kind: str) -> str | None:
    """
    Why a writer of `kind` may not replace the entry `name` of `folder`, whose record is `record` (a clause to
    follow the entry's name), or None when the program wrote it as that kind of output and it is still as written.
    """
    if name not in record.names:
        return "which cascade-clip did not write"
    written_as = record.names[name]
    if written_as is None:
        return "which an earlier version of cascade-clip wrote without recording what it is"
    if written_as != kind:
        return f"which cascade-clip wrote as {written_as} output, not {kind} output"
    if not is_as_written(folder, name, record):
        if (folder / name).is_dir() and not (folder / name).is_symlink():
            return "which is not the folder cascade-clip wrote there (what it holds was replaced or changed since)"
        return "which is not the file cascade-clip wrote there (it was replaced or changed since)"
    return None


def first_refusal(folder: Path, root: Path, kind: str) -> tuple[str, str] | None:
    """
    The first entry under `folder` (in name order) a writer of `kind` may not replace: its name relative to `root`,
    as a message shows it, and the clause of `refusal`; None when there is none.
    """
    record = read_record(folder)
    for path in sorted(folder.iterdir()):
        if path.name == RECORD or path.name in record.staging:
            continue
        if path.name in record.names or path.is_symlink() or not path.is_dir():
            reason = refusal(folder, record, path.name, kind)
            if reason is not None:
                return shown(path.relative_to(root)), reason
            continue
        found = first_refusal(path, root, kind)  # a folder the record does not name may hold recorded outputs
        if found is not None:
            return found
    return None


def check_output_folder(
    folder: str | os.PathLike,
    names: Iterable[str] | None = None,
    inputs: Iterable[str | os.PathLike] = (),
    *,
    kind: str,
) -> None:
    """
    Checks that writing into `folder` loses nothing this program did not write as outputs of `kind`, and that it
    can be written (the folder, or where it will be created, is a writable folder). A missing or empty writable
    folder always passes.

    Args:
        folder: the output folder.
        names (*optional*): the entries the writer creates or replaces in `folder`; others are left alone. Each one
            that exists must have been written by the program as an output of `kind`. Without them `folder` is
            replaced whole: everything in it must have been (a model folder is never replaced by a folder of
            results, nor the reverse).
        inputs: files or folders the run reads, which must not be among what is replaced.
        kind: the kind of output the writer writes (`MODEL`, `SEGMENTATION`, ...).

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
        found = first_refusal(folder, folder, kind)
    else:
        record = read_record(folder)
        reasons = [
            (shown(name), refusal(folder, record, name, kind)) for name in names if os.path.lexists(folder / name)
        ]
        found = next((reason for reason in reasons if reason[1] is not None), None)
    if found is not None:
        name, reason = found
        raise OutputFolderError(
            f"refusing to write into {shown(folder)}: it holds {name}, {reason} (choose another output, or move "
            f"{name} away)"
        )


def current_umask() -> int:
    umask = os.umask(0o077)  # reading the umask means setting it: a restrictive value meanwhile, restored at once
    os.umask(umask)
    return umask


def write_unless_taken(folder: str | os.PathLike, name: str, content: bytes, kind: str) -> bool:
    """
    Writes `content` as the file `name` in `folder` (a staging file, renamed into place), unless that name holds
    something else that a writer of `kind` did not write, or that is no longer as written (see its record), which is
    kept. Unlike `output_files`, it records nothing new, so that it can write into a folder another writer is
    staging; a name the record identifies gets the new file's identity.

    Returns:
        `bool`: whether `folder / name` holds `content` afterwards.
    """
    folder = Path(folder)
    target = folder / name
    record = read_record(folder)
    if os.path.lexists(target):
        if target.is_file() and not target.is_symlink() and target.read_bytes() == content:
            return True
        if refusal(folder, record, name, kind) is not None:
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
    if record.names.get(name) == kind and name in record.identities:
        record_outputs(folder, [name], kind)
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


def user_path(filename, target: Path) -> str | None:
    """
    The path a user knows for `filename`, when it lies in a staging entry (see `STAGING`): the same path inside
    `target`, the output the user named; None for any other path.
    """
    if not isinstance(filename, (str, os.PathLike)):
        return None
    parts = Path(filename).parts
    index = next((index for index, part in enumerate(parts) if part.startswith(STAGING)), None)
    return None if index is None else str(target.joinpath(*parts[index + 1 :]))


@contextmanager
def naming_user_paths(target: str | os.PathLike):
    """Within the block, an `OSError` naming a staging path is raised again, of the same errno, naming the user's
    path instead (see `user_path`): the output the user asked for, not a hidden name they never gave."""
    try:
        yield
    except OSError as error:
        renamed = [user_path(name, Path(target)) for name in (error.filename, error.filename2)]
        if error.errno is None or renamed == [None, None]:
            raise
        raise OSError(error.errno, error.strerror, renamed[0] or error.filename) from error


def publish_directory(
    staging: str | os.PathLike, target: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), *, kind: str
) -> None:
    """
    Moves a completely written `staging` folder to `target` with renames only, after recording its entries as the
    program's output of `kind` and giving them ordinary permissions. An existing `target` (which
    `check_output_folder` must pass for `kind`) is moved aside first and removed after; a crash in between leaves
    it whole in a hidden `.cascade-clip-staging-old.*` folder beside `target`.
    """
    staging, target = Path(staging), Path(target)
    check_output_folder(target, inputs=inputs, kind=kind)
    with naming_user_paths(target):
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
def atomic_directory(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), *, kind: str):
    """
    Yields an empty temporary folder beside `path`; when the block finishes, the folder replaces `path` (see
    `publish_directory`) as an output of `kind`. If the block raises, `path` is left as it was and the temporary
    folder is removed.

    Raises:
        `OutputFolderError`: before the block runs, if `path` holds anything the program did not write as an output
        of `kind`, or holds one of the `inputs` (see `check_output_folder`).
    """
    path = Path(path)
    inputs = list(inputs)
    check_output_folder(path, inputs=inputs, kind=kind)
    with naming_user_paths(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{STAGING}.", dir=path.parent))
        try:
            yield staging
            publish_directory(staging, path, inputs, kind=kind)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


@contextmanager
def output_files(folder: str | os.PathLike, kind: str):
    """
    Yields an empty hidden folder inside `folder`; when the block finishes, each file written there is moved into
    `folder`, replacing the program's own earlier output of that name and `kind`, and recorded as of `kind`. Files
    of other names are left alone. If the block raises, nothing in `folder` changes and the hidden folder is
    removed.

    Raises:
        `OutputFolderError`: before anything is moved, if a file of one of the new names is in `folder` and the
        program did not write it as an output of `kind`.
    """
    folder = Path(folder)
    with naming_user_paths(folder):
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{STAGING}.", dir=folder))
        try:
            yield staging
            names = sorted(path.name for path in staging.iterdir())
            check_output_folder(folder, names, kind=kind)
            give_ordinary_modes(staging)
            for name in names:
                os.replace(staging / name, folder / name)
            record_outputs(folder, names, kind)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
