"""What the command line, the scripts and the demo tell a user: about bad input, one line, never a traceback; and
counts, in words that agree with them."""

import logging
import sys
from collections.abc import Callable

from huggingface_hub.errors import StrictDataclassError
from huggingface_hub.utils import logging as hub_logging


# What bad input raises (files, options, model folders, configurations), as opposed to faults of the program.
INPUT_ERRORS = (ValueError, OSError, StrictDataclassError)


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """`count` and `noun`, in the plural (`plural`, by default `noun` + "s") unless the count is one: "1 template",
    "3 classes"."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def one_line(error: BaseException, spellings: dict[str, str] | None = None) -> str:
    """
    The first line of what went wrong; a configuration validator's error is unwrapped to its cause.

    Args:
        spellings (`dict[str, str]`, *optional*): text to write otherwise before the cut, e.g. a file name that
            holds a newline, as `repr` writes it, so that the line still names it.
    """
    if isinstance(error, StrictDataclassError) and error.__cause__ is not None:
        error = error.__cause__
    text = str(error)
    for original, spelling in (spellings or {}).items():
        text = text.replace(original, spelling)
    text = text.strip()
    return text.splitlines()[0] if text else type(error).__name__


def configure_logging(level: int = logging.WARNING, format: str = "%(message)s") -> None:
    """
    Logging for a command, a script or the demo app: the root logger's handler at `level`, with `format`.
    huggingface_hub logs through a handler of its own and also passes its records on to the root logger, which
    would print each of them twice; they stay with its own handler. Its HTTP client's log of each request is left out.
    """
    logging.basicConfig(level=level, format=format)
    hub_logging.disable_propagation()
    # huggingface_hub's HTTP client (httpx, httpx2 in its later versions) logs every request at INFO.
    for client in ("httpx", "httpx2"):
        logging.getLogger(client).setLevel(logging.WARNING)


def run_script(main: Callable[[], object]) -> None:
    """Runs a script's `main`; bad input ends it with one `error:` line (on the root logger) and exit code 2."""
    try:
        main()
    except INPUT_ERRORS as error:
        logging.getLogger().error(f"error: {one_line(error)}")
        sys.exit(2)
