"""Writing a folder so that a crash part-way never leaves a damaged or half-replaced result."""

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


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
        previous = None
        if path.exists():
            previous = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, previous / path.name)
        os.replace(staging, path)
        if previous is not None:
            shutil.rmtree(previous)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
