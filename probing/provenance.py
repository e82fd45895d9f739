"""How and where a stage ran: the exact command line, library versions, devices, date.

Both stages record it so that a report can show the commands that were
actually run, overrides included, instead of reconstructing them:
manifest.json's "command" (extraction) and probe_config.json's "environment"
(probe training, `probe_environment`). The command is the process's own
argv (`sys.orig_argv`), shell-quoted. When a stage runs inside another
program (probing.demo, probing.pipeline, a notebook), that program says which
stand-alone command the stage is equivalent to with `recorded_as`, and the
record keeps both: `<equivalent>  # run by: <argv>`.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import importlib.metadata
import shlex
import sys
from collections.abc import Iterator, Sequence
from typing import Any

# The stage libraries whose versions a probe run records.
PROBE_LIBRARIES = ("jax", "jaxlib", "flax", "optax", "numpy", "tensorstore", "probing")

_EQUIVALENT: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "probing_equivalent_command", default=None
)


def process_command() -> str:
    """The command that started this process, shell-quoted (the interpreter's own argv)."""
    argv = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
    return shlex.join(argv)


def stage_command(module: str, *args: str) -> str:
    """`python -m <module> <args>` shell-quoted: a stage's stand-alone command."""
    return shlex.join(["python", "-m", module, *args])


@contextlib.contextmanager
def recorded_as(command: str) -> Iterator[None]:
    """Stages run inside this block record `command` as the one they are equivalent to."""
    token = _EQUIVALENT.set(command)
    try:
        yield
    finally:
        _EQUIVALENT.reset(token)


def command_line() -> str:
    """What a stage records as its command (see the module docstring)."""
    equivalent = _EQUIVALENT.get()
    if equivalent is None:
        return process_command()
    return f"{equivalent}  # run by: {process_command()}"


def versions(names: Sequence[str]) -> dict[str, str]:
    """Installed version of each distribution ("not installed" when absent)."""
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def jax_devices() -> dict[str, Any]:
    """The JAX backend, device kinds and counts the probes ran on."""
    import jax

    devices = jax.devices()
    return {
        "backend": jax.default_backend(),
        "count": len(devices),
        "kinds": sorted({d.device_kind for d in devices}),
        "process_count": jax.process_count(),
    }


def utc_now() -> str:
    """The current time, ISO 8601 in UTC (e.g. 2025-01-31T12:00:00+00:00)."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def probe_environment() -> dict[str, Any]:
    """probe_config.json's "environment": command, date, library versions, devices."""
    return {
        "command": command_line(),
        "date": utc_now(),
        "library_versions": versions(PROBE_LIBRARIES),
        "devices": jax_devices(),
    }
