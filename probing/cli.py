"""Running an absl entry point so that bad input reads as one line, not a traceback.

Every error raised for bad input in `probing` (a missing COCO root, a workdir
that is not a store, an unknown model family, a bad config value, ...) is a
ValueError (or FileNotFoundError) whose message names the culprit and says
what to do. `run_main` prints that message as one line,
`<program>: error: <message>`, and exits with status 2; so do bad flags: a
config file that does not exist or fails to load, a bad config argument, a
misspelt config field (with the "did you mean" suggestion in the line). A
write that finds the disk full is one line too.
Set PROBING_TRACEBACK=1 to see the full traceback instead.
"""

from __future__ import annotations

import ast
import errno
import os
import re
import sys
from collections.abc import Callable, Sequence

from absl import app, flags

from probing import config_files

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError)


# A full disk or an exhausted quota is the user's to fix, not a bug: one line.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full_line(error: OSError) -> str:
    """The one line for a write that ran out of space."""
    where = f" while writing {error.filename}" if error.filename else ""
    return (
        f"{error.strerror or 'no space left on device'}{where}; free space and rerun the same "
        "command (writes are atomic: files already written are whole, and an extraction "
        "resumes where it stopped)"
    )


def _fail(program: str, message: str) -> None:
    # One line, so that logs and launch scripts show the whole message.
    print(f"{program}: error: {message} (PROBING_TRACEBACK=1 shows the traceback)", file=sys.stderr)
    sys.exit(2)


def _unquote(text: str) -> str:
    """ml_collections nests repr()s in its AttributeError message; undo them."""
    for _ in range(3):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            break
        if not isinstance(value, str):
            break
        text = value
    return text


def flag_error_line(error: BaseException, argv: Sequence[str]) -> str:
    """One line for an error raised while parsing the flags (and the config they name)."""
    if isinstance(error, AttributeError | KeyError):
        lines = [line.strip() for line in _unquote(str(error)).splitlines() if line.strip()]
        field = lines[0].strip("'\"") if lines else "?"
        culprit = next(
            (a.split("=")[0] for a in argv if a.startswith("--config.") and field in a), None
        )
        where = f"{culprit}: " if culprit else ""
        hint = " ".join(lines[1:]) or "check the spelling against the config file"
        return f"{where}the config has no field {field!r}. {hint}"
    text = str(error)
    if "Traceback (most recent call last)" in text:
        # A config file's own exception, wrapped with its traceback: keep the
        # flag and the exception's last line.
        head = text.split(": Error whilst parsing", 1)[0].splitlines()[0]
        last = [line for line in text.splitlines() if line.strip()][-1].strip()
        last = re.sub(r"^[A-Za-z_.]*(Error|Exception): ", "", last)
        return f"{head}: {last}"
    return " ".join(text.split())


def _check_loaded_configs(program: str) -> None:
    """A config file that failed to load surfaces only on first use; surface it now."""
    for name in list(flags.FLAGS):
        value = flags.FLAGS[name].value
        if type(value).__name__ == "_ErrorConfig":
            try:
                value._ReportError()
            except Exception as error:
                text = " ".join(str(error).split())
                text = text.replace("Failed loading config file config_config ", "")
                _fail(program, f"--{name}={flags.FLAGS[name].config_filename}: {text}")


_HELP_FLAGS = ("--config.help", "--config.help=True", "--config.help=true")
# `--config.help` leaves argv before any config flag is defined: ml_collections reads
# --config.* overrides while loading a default config, and `help` is no field.
_HELP_REQUESTED = any(a in _HELP_FLAGS for a in sys.argv[1:])
sys.argv[1:] = [a for a in sys.argv[1:] if a not in _HELP_FLAGS]


def _config_help(argv: Sequence[str]) -> str | None:
    """The config `--config.help` asks about (the --config given, else the default), or None."""
    if not _HELP_REQUESTED:
        return None
    given = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")]
    if given:
        return given[-1]
    if "config" in flags.FLAGS:
        return getattr(flags.FLAGS["config"], "config_filename", None) or None
    return None


def run_main(main: Callable[[list[str]], None], program: str) -> None:
    """`app.run(main)`, turning user errors into `program: error: message`.

    `--config.help` prints every field of the config with its value and comment
    (probing.config_help) instead of running; `--config.<tuple field>=a,b`
    reads as the tuple ("a", "b") (probing.config_files.CommaTupleParser).
    """
    config_files.accept_comma_lists()

    def parse(argv: list[str]) -> list[str]:
        spec = _config_help(argv)
        if _HELP_REQUESTED and spec is None:
            _fail(program, "--config.help: this program takes no config file; see --help")
        if spec is not None:
            from probing.config_help import describe

            try:
                print(describe(spec))
            except (*USER_ERRORS, AttributeError) as error:
                _fail(program, f"--config={spec}: {' '.join(str(error).split())}")
            sys.exit(0)
        try:
            rest = flags.FLAGS(argv)
        except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as error:
            if os.environ.get("PROBING_TRACEBACK"):
                raise
            _fail(program, flag_error_line(error, argv))
        if not os.environ.get("PROBING_TRACEBACK"):
            _check_loaded_configs(program)
        return rest

    def guarded(argv: list[str]) -> None:
        try:
            main(argv)
        except USER_ERRORS as error:
            if os.environ.get("PROBING_TRACEBACK"):
                raise
            _fail(program, " ".join(str(error).split()))
        except OSError as error:
            if error.errno not in DISK_FULL or os.environ.get("PROBING_TRACEBACK"):
                raise
            _fail(program, disk_full_line(error))

    app.run(guarded, flags_parser=parse)
