"""Writing a probe results directory as one unit, and checking that one was.

Locally the files go to a hidden sibling folder that replaces the old one in
one rename (an atomic exchange where Linux offers it), so a reader or a kill
sees the old run or the new one, never a mix. On a bucket, where no rename
exists, `results.json` is first marked "writing", the files follow, and the
listing of every file's sha256 is written last; `verify_probe_dir` refuses a
directory whose files do not match that listing.
"""

from __future__ import annotations

import ctypes
import datetime
import hashlib
import json
import os
import shutil
import socket
from collections.abc import Iterable, Mapping
from typing import Any

from probing.store import layout
from probing.store.workdir import Workdir, WorkdirError

RESULTS_MANIFEST = layout.RESULTS_JSON
# Files the probe writer owns; anything else found in an old results folder is
# a user's and is carried over into the new one.
OWNED_FILES = (
    layout.METRICS_CSV,
    layout.CURVES_CSV,
    layout.SUMMARY_JSON,
    layout.PROBE_CONFIG_JSON,
    layout.WEIGHTS_NPZ,
    layout.PREDICTIONS_NPZ,
    RESULTS_MANIFEST,
)
_RENAME_EXCHANGE = 2  # linux/fs.h


class MixedResultsError(WorkdirError):
    """A probe results directory whose files come from different runs (or an unfinished one)."""


def _manifest(files: Mapping[str, bytes], meta: Mapping[str, Any] | None) -> dict[str, Any]:
    return {
        "state": "complete",
        "files": {
            name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            for name, data in sorted(files.items())
        },
        "writer": {"host": socket.gethostname(), "pid": os.getpid()},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **dict(meta or {}),
    }


def _write_file(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: str, b: str) -> bool:
    """Atomically swaps two paths (Linux renameat2); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    result = renameat2(at_fdcwd, a.encode(), at_fdcwd, b.encode(), _RENAME_EXCHANGE)
    return result == 0


def _clean_stale(parent: str, base: str) -> None:
    """Removes temporary folders of earlier writers of `base` that are gone."""
    for entry in os.listdir(parent):
        for marker in (f".{base}.tmp-", f".{base}.old-"):
            if entry.startswith(marker):
                pid = entry[len(marker) :]
                alive = pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid))
                if not alive:
                    shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_local(target: str, files: Mapping[str, bytes], manifest: bytes) -> None:
    parent, base = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    _clean_stale(parent, base)
    tmp = os.path.join(parent, f".{base}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        for name, data in files.items():
            _write_file(os.path.join(tmp, name), data)
        if os.path.isdir(target):
            # Keep what the writer does not own (a user's notes) in the new folder.
            for entry in os.listdir(target):
                if entry not in files and entry not in OWNED_FILES:
                    source = os.path.join(target, entry)
                    copy = shutil.copytree if os.path.isdir(source) else shutil.copy2
                    copy(source, os.path.join(tmp, entry))
        _write_file(os.path.join(tmp, RESULTS_MANIFEST), manifest)
        _fsync_dir(tmp)
        if not os.path.isdir(target):
            os.rename(tmp, target)
        elif _exchange(tmp, target):
            shutil.rmtree(tmp)  # now the old run
        else:
            # Without an atomic exchange a kill between the two renames leaves
            # no folder (never a mixed one); the next write cleans up.
            old = os.path.join(parent, f".{base}.old-{os.getpid()}")
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old)
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_probe_dir(
    workdir: Workdir | str,
    directory: str,
    files: Mapping[str, bytes],
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Writes `files` ({name: bytes}) as the folder `directory` of the workdir, as one unit.

    Args:
      workdir: the workdir.
      directory: workdir-relative folder, e.g. `layout.probes_dir("mean")`.
      files: every file of the run; old files of the writer not in it are dropped.
      meta: extra fields for results.json (e.g. {"partial": true}).

    Returns:
      the content of results.json.
    """
    workdir = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
    if RESULTS_MANIFEST in files:
        raise ValueError(f"{RESULTS_MANIFEST} is written by write_probe_dir itself")
    manifest = _manifest(files, meta)
    encoded = (json.dumps(manifest, indent=2) + "\n").encode()
    directory = directory.strip("/")
    if workdir.is_local:
        _write_local(os.path.join(workdir.local_path, directory), files, encoded)
        return manifest
    # A bucket has no rename: mark the folder unfinished, write, then list digests.
    writing = json.dumps({"state": "writing", "writer": manifest["writer"]}).encode()
    workdir.write_bytes(f"{directory}/{RESULTS_MANIFEST}", writing)
    for name, data in files.items():
        workdir.write_bytes(f"{directory}/{name}", data)
    workdir.write_bytes(f"{directory}/{RESULTS_MANIFEST}", encoded)
    return manifest


def verify_probe_dir(
    workdir: Workdir | str,
    directory: str,
    deep: bool = True,
    known_files: Iterable[str] = OWNED_FILES,
) -> dict[str, Any] | None:
    """Checks a probe results folder against its results.json; returns it (None if absent).

    A folder without results.json (written before it existed, or by hand as
    WORKSPACE.md allows) is not refused here: None says it could not be checked.

    Raises:
      MixedResultsError: results.json says the write did not finish, a listed
        file is missing or differs (size, or sha256 with `deep`), or a known
        result file is present but not listed.
    """
    workdir = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
    directory = directory.strip("/")
    where = f"{workdir.location}/{directory}"
    name = f"{directory}/{RESULTS_MANIFEST}"
    if not workdir.exists(name):
        return None
    manifest = workdir.read_json(name)
    rerun = "rerun `python -m probing.train_all_layers` on this workdir to rewrite it"
    if manifest.get("state") != "complete" or not isinstance(manifest.get("files"), dict):
        raise MixedResultsError(
            f"{where}: the probe results were being written when their writer stopped "
            f"({RESULTS_MANIFEST} state {manifest.get('state')!r}); {rerun}"
        )
    listed = manifest["files"]
    for file_name, entry in listed.items():
        path = f"{directory}/{file_name}"
        if not workdir.exists(path):
            raise MixedResultsError(
                f"{where}: {file_name} is listed in {RESULTS_MANIFEST} but missing; {rerun}"
            )
        if deep or not workdir.is_local:
            data = workdir.read_bytes(path)
            same = len(data) == entry.get("bytes") and (
                not deep or hashlib.sha256(data).hexdigest() == entry.get("sha256")
            )
        else:
            same = os.path.getsize(os.path.join(workdir.local_path, path)) == entry.get("bytes")
        if not same:
            raise MixedResultsError(
                f"{where}: {file_name} does not match {RESULTS_MANIFEST} (it was replaced by "
                f"another run after these results were written); {rerun}"
            )
    for file_name in known_files:
        unlisted = file_name not in listed and file_name != RESULTS_MANIFEST
        if unlisted and workdir.exists(f"{directory}/{file_name}"):
            raise MixedResultsError(
                f"{where}: {file_name} is not part of the run {RESULTS_MANIFEST} lists "
                f"(it comes from another run); {rerun}"
            )
    return manifest
