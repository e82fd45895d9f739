"""The on-disk cache of probing: where it lives and how entries are published.

Tiny checkpoints, generated datasets and caption embeddings are cached under
:func:`cache_root` (``$PROBING_CACHE_DIR``, else ``~/.cache/probing``). Every
entry is built privately and then moved into place in one rename, so
concurrent builders never see a half-written entry and the first to finish
wins.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable

# Environment variable naming the cache root.
CACHE_DIR_ENV = "PROBING_CACHE_DIR"


def cache_root() -> str:
    """$PROBING_CACHE_DIR, else ~/.cache/probing."""
    return os.environ.get(CACHE_DIR_ENV) or os.path.join(
        os.path.expanduser("~"), ".cache", "probing"
    )


def publish_directory(
    target: str | os.PathLike[str],
    build: Callable[[str], None],
    is_complete: Callable[[str], bool],
    staging_prefix: str,
) -> None:
    """Builds a directory privately, then renames it to ``target``.

    ``build`` fills an empty staging directory created next to ``target``
    (named ``<staging_prefix>...``). If by then another process has published
    a complete ``target`` (``is_complete``), that copy wins and this one is
    discarded; an incomplete or stale ``target`` is replaced. The staging
    directory never outlives the call.
    """
    target = os.fspath(target)
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=staging_prefix, dir=parent)
    try:
        build(staging)
        if os.path.isdir(target):
            if is_complete(target):  # another process finished first
                return
            shutil.rmtree(target)
        try:
            os.rename(staging, target)
        except OSError:
            if not is_complete(target):
                raise
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging, ignore_errors=True)


def publish_file(path: str, write: Callable[[str], None]) -> None:
    """Writes a file through ``write`` under a private name, then replaces ``path`` with it.

    The private name keeps ``path``'s extension (``np.save`` would append one).
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}{os.path.splitext(path)[1]}"
    try:
        write(tmp)
        os.replace(tmp, path)  # atomic, so concurrent runs never read half a file
    except BaseException:
        # A full disk (or a kill raised as an exception) leaves no temporary file.
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
