"""Checking that a workdir location can be used, in seconds, before any long work.

TensorStore retries an unreachable bucket, or one it has no credentials for,
for minutes with little to show for it. `check_remote_reachable` reads and
(optionally) writes a probe key under a short deadline and turns a timeout or
a refusal into one line naming the URL and what is likely missing.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import tensorstore as ts

from probing.store.workdir import Workdir, WorkdirError

DEFAULT_TIMEOUT_S = 15.0


class RemoteWorkdirError(WorkdirError):
    """A gs:// or s3:// workdir is unreachable, unauthenticated or read-only."""


def _credentials_hint(driver: str) -> str:
    """Where credentials would come from, or what to set when none are found."""
    env = os.environ
    home = os.path.expanduser("~")
    if driver == "gcs":
        path = env.get("GOOGLE_APPLICATION_CREDENTIALS")
        if path:
            exists = "" if os.path.isfile(path) else " (that file does not exist)"
            return f"credentials from GOOGLE_APPLICATION_CREDENTIALS={path}{exists}"
        adc = os.path.join(home, ".config", "gcloud", "application_default_credentials.json")
        if os.path.isfile(adc):
            return f"credentials from {adc}"
        return (
            "no Google credentials found (set GOOGLE_APPLICATION_CREDENTIALS or run "
            "`gcloud auth application-default login`; only a GCE metadata server is left)"
        )
    if driver == "s3":
        if env.get("AWS_ACCESS_KEY_ID"):
            return "credentials from AWS_ACCESS_KEY_ID"
        if env.get("AWS_PROFILE") or os.path.isfile(os.path.join(home, ".aws", "credentials")):
            return "credentials from the AWS profile (~/.aws/credentials)"
        if env.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
            return "credentials from AWS_WEB_IDENTITY_TOKEN_FILE"
        return (
            "no AWS credentials found (set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or "
            "AWS_PROFILE; only an EC2 instance role is left)"
        )
    return ""


def _wait(future: Any, deadline: float, location: str, step: str, driver: str, spec) -> Any:
    remaining = deadline - time.monotonic()
    try:
        return future.result(timeout=max(remaining, 0.001))
    except TimeoutError:
        future.cancel()  # stops TensorStore's background retries
        endpoint = f" at endpoint {spec['endpoint']}" if spec.get("endpoint") else ""
        raise RemoteWorkdirError(
            f"workdir {location}: no answer{endpoint} within the time allowed while {step}; "
            f"{_credentials_hint(driver)}; check the network, the bucket name and the "
            "credentials, or use a local --workdir"
        ) from None
    except ValueError as error:
        # TensorStore states the HTTP status (PERMISSION_DENIED, NOT_FOUND, ...).
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise RemoteWorkdirError(
            f"workdir {location}: {step} failed: {first_line}; {_credentials_hint(driver)}"
        ) from None


def _check_local(workdir: Workdir, write: bool) -> None:
    path = workdir.local_path
    if os.path.exists(path) and not os.path.isdir(path):
        raise WorkdirError(
            f"workdir {workdir.location} is a file, not a directory; pass a directory path"
        )
    if not write:
        return
    # The nearest existing ancestor must let us create the directory.
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise WorkdirError(
            f"workdir {workdir.location}: {parent} is a file, so the directory cannot be created"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise WorkdirError(f"workdir {workdir.location}: {parent} is not writable")


def check_remote_reachable(
    location: str | Workdir, timeout_s: float | None = None, write: bool = True
) -> None:
    """Raises WorkdirError within about `timeout_s` (default 15 s) unless the workdir can be used.

    Local: the path is a directory (or can be created) and writable.
    gs:// / s3://: the store answers a read, and with `write` accepts and
    deletes a small probe object, each before the deadline.
    """
    workdir = location if isinstance(location, Workdir) else Workdir(location)
    if workdir.is_local:
        _check_local(workdir, write)
        return
    spec = workdir.kvstore("")
    driver = spec["driver"]
    deadline = time.monotonic() + float(DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s)
    where = workdir.location
    kv = _wait(ts.KvStore.open(spec), deadline, where, "opening the bucket", driver, spec)
    _wait(kv.read("manifest.json"), deadline, where, "reading", driver, spec)
    if write:
        key = f".probing-write-check-{socket.gethostname()}-{os.getpid()}"
        _wait(kv.write(key, b"ok"), deadline, where, "writing a probe object", driver, spec)
        _wait(kv.write(key, None), deadline, where, "deleting the probe object", driver, spec)
