"""Writing a folder so that a crash part-way never leaves a damaged or half-replaced result."""

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def publish_directory(staging: str | os.PathLike, target: str | os.PathLike) -> None:
    """
    Moves a completely written `staging` folder to `target` with renames only. An existing `target` is moved aside
    first and removed after; a crash in between leaves it whole in a hidden `.NAME.old-*` folder beside `target`.
    """
    staging, target = Path(staging), Path(target)
    previous = None
    if target.exists():
        previous = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, previous / target.name)
    os.replace(staging, target)
    if previous is not None:
        shutil.rmtree(previous)


@contextmanager
def atomic_directory(path: str | os.PathLike):
    """
    Yields an empty temporary folder beside `path`; when the block finishes, the folder replaces `path`. If the
    block raises, `path` is left as it was and the temporary folder is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield staging
        publish_directory(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
