"""
The `cascade-clip` console command. It lives outside the `cascade_clip_hf` package, whose import loads torch and
transformers for seconds: importing this module loads nothing else, so that `main` catches Ctrl-C at any point of
the command, those imports included.
"""

import logging
import sys
from importlib import import_module


# What a shell reports for a command stopped by Ctrl-C (128 + SIGINT).
INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    """
    Runs `cascade-clip` with `argv` (default: the process's arguments) and returns its exit code; Ctrl-C, while it
    imports or while it works, ends it with one line and exit code 130, never a traceback.
    """
    try:
        return import_module("cascade_clip_hf.cli").main(argv)
    except KeyboardInterrupt:
        logging.getLogger("cascade_clip_hf").error(
            "interrupted: outputs written so far are complete; nothing half-written is left"
        )
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
