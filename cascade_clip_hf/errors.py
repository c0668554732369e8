"""What the command line, the scripts and the demo tell a user about bad input: one line, never a traceback."""

from huggingface_hub.errors import StrictDataclassError


# What bad input raises (files, options, model folders, configurations), as opposed to faults of the program.
INPUT_ERRORS = (ValueError, OSError, StrictDataclassError)


def one_line(error: BaseException) -> str:
    """The first line of what went wrong; a configuration validator's error is unwrapped to its cause."""
    if isinstance(error, StrictDataclassError) and error.__cause__ is not None:
        error = error.__cause__
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
