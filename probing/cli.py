"""Running an absl entry point so that bad input reads as a message, not a traceback.

Every error raised for bad input in `probing` (a missing COCO root, a workdir
that is not a store, an unknown model family, a bad config value, ...) is a
ValueError (or FileNotFoundError) whose message names the culprit and says
what to do. `run_main` prints that message as one line and exits with status
2; set PROBING_TRACEBACK=1 to see the full traceback instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from absl import app

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError)


def run_main(main: Callable[[list[str]], None], program: str) -> None:
    """`app.run(main)`, turning user errors into `program: error: message`."""

    def guarded(argv: list[str]) -> None:
        try:
            main(argv)
        except USER_ERRORS as error:
            if os.environ.get("PROBING_TRACEBACK"):
                raise
            print(f"{program}: error: {error}", file=sys.stderr)
            print("(set PROBING_TRACEBACK=1 to see the traceback)", file=sys.stderr)
            sys.exit(2)

    app.run(guarded)
