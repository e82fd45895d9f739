"""One writer per workdir: an exclusive lock on a local directory or a bucket prefix.

A local workdir is locked with `fcntl.flock` on `<workdir>/.lock` (the kernel
drops it when the holder dies, so a local lock is never stale); a gs:// or
s3:// workdir with a lock object written only if absent (a conditional write),
which outlives a killed holder and is broken with

    python -m probing.store.lock break WORKDIR

(`show WORKDIR` prints the holder). Ranks of one torchrun job are one writer:
rank 0 holds the lock with the job's id and the other ranks call
`check_job_member` to confirm the holder is their job.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import tensorstore as ts

from probing.store.workdir import Workdir, WorkdirError

LOCK_NAME = ".lock"
# How long a lock object's read or write may take on a bucket before giving up.
REMOTE_TIMEOUT_S = 30.0
KINDS = ("auto", "flock", "object")
# TensorStore's generation of an absent key: a write conditioned on it only
# creates, never replaces (gcs: ifGenerationMatch=0; s3: If-None-Match).
_ABSENT = b"\x02"


class LockError(WorkdirError):
    """The workdir is held by another writer (or the lock cannot be taken)."""


def job_id_from_env() -> str | None:
    """An id shared by every process of one launch (torchrun or SLURM), else None.

    torchrun's run id alone is "none" unless --rdzv-id is given, so the
    rendezvous address (unique per live job on a host) is part of it.
    """
    env = os.environ
    if "TORCHELASTIC_RUN_ID" in env or "MASTER_ADDR" in env:
        return (
            f"torchrun:{env.get('TORCHELASTIC_RUN_ID', 'none')}@"
            f"{env.get('MASTER_ADDR', '?')}:{env.get('MASTER_PORT', '?')}"
        )
    for name in ("SLURM_ARRAY_JOB_ID", "SLURM_JOB_ID"):
        if name in env:
            return f"slurm:{env[name]}"
    return None


def _owner(command: str | None, job_id: str | None) -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "start": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command if command is not None else " ".join(sys.argv),
        "job": job_id,
        "token": uuid.uuid4().hex,
    }


def describe(owner: dict[str, Any] | None) -> str:
    """The holder in a few words: host, pid, start time and command."""
    if not owner:
        return "an unknown holder (the lock record is empty or unreadable)"
    text = f"host {owner.get('host')} pid {owner.get('pid')} since {owner.get('start')}"
    if owner.get("job"):
        text += f" (job {owner['job']})"
    if owner.get("command"):
        text += f" running {owner['command']!r}"
    return text


def _parse(data: bytes) -> dict[str, Any] | None:
    try:
        owner = json.loads(data.decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return owner if isinstance(owner, dict) else None


def _kind(workdir: Workdir, kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"lock kind must be one of {KINDS}, got {kind!r}")
    if kind == "auto":
        return "flock" if workdir.is_local else "object"
    if kind == "flock" and not workdir.is_local:
        raise ValueError(f"workdir {workdir.location}: a flock lock needs a local directory")
    return kind


def _kv(workdir: Workdir) -> ts.KvStore:
    return _result(ts.KvStore.open(workdir.kvstore("")), workdir)


def _result(future: Any, workdir: Workdir) -> Any:
    """A lock operation's result, or LockError after REMOTE_TIMEOUT_S (never hang)."""
    try:
        return future.result(timeout=REMOTE_TIMEOUT_S)
    except TimeoutError:
        future.cancel()
        raise LockError(
            f"workdir {workdir.location}: the lock object could not be read or written within "
            f"{REMOTE_TIMEOUT_S:.0f} s; check the bucket, the network and the credentials"
        ) from None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkdirLock:
    """An exclusive lock on one workdir; use as a context manager or acquire/release.

    Args:
      location: the workdir (local path, file://, gs:// or s3://).
      command: recorded as the holder's command (default: this process's argv).
      job_id: recorded so that the other ranks of the job can check membership.
      name: the lock's key inside the workdir (another name = another lock).
      break_lock: remove a remote lock left by a dead holder before acquiring.
      kind: "flock" (local default), "object" (gs:// / s3:// default; also
        works on a local directory through TensorStore's file driver).
    """

    def __init__(
        self,
        location: str | Workdir,
        *,
        command: str | None = None,
        job_id: str | None = None,
        name: str = LOCK_NAME,
        break_lock: bool = False,
        kind: str = "auto",
    ):
        self.workdir = location if isinstance(location, Workdir) else Workdir(location)
        self.name = name
        self.owner = _owner(command, job_id)
        self.break_lock = break_lock
        self.kind = _kind(self.workdir, kind)
        self._fd: int | None = None
        self._generation: bytes | None = None

    def _refusal(self, holder: dict[str, Any] | None) -> LockError:
        how = (
            "wait for it to finish or stop it"
            if self.kind == "flock"
            else "wait for it to finish; if it is dead, run "
            f"`python -m probing.store.lock break {self.workdir.location}`"
        )
        return LockError(
            f"workdir {self.workdir.location} is in use by {describe(holder)}; {how}, "
            "or use another --workdir"
        )

    # ----------------------------------------------------------------- local
    def _acquire_local(self) -> None:
        path = os.path.join(self.workdir.local_path, self.name)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except (NotADirectoryError, FileExistsError) as e:
            raise LockError(
                f"workdir {self.workdir.location} is not a directory (a file is in the "
                "way); pass a directory path as --workdir"
            ) from e
        except OSError as e:
            raise LockError(f"cannot create the lock file {path}: {e.strerror}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _parse(os.pread(fd, 65536, 0))
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise self._refusal(holder) from None
            raise LockError(f"cannot lock {path}: {e.strerror}") from e
        # The file is kept (never deleted): unlinking it would let a newcomer
        # lock a fresh file while an older waiter still holds the old inode.
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self.owner).encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def _release_local(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    # ---------------------------------------------------------------- remote
    def _acquire_remote(self) -> None:
        kv = _kv(self.workdir)
        if self.break_lock:
            break_lock(self.workdir, name=self.name, kind="object")
        data = json.dumps(self.owner).encode()
        stamp = _result(kv.write(self.name, data, if_equal=_ABSENT), self.workdir)
        if not stamp.generation:
            holder = _parse(_result(kv.read(self.name), self.workdir).value)
            # A holder on this very host whose process is gone is stale for sure.
            here = bool(holder) and holder.get("host") == socket.gethostname()
            if here and not _pid_alive(int(holder.get("pid", -1))):
                break_lock(self.workdir, name=self.name, kind="object")
                stamp = _result(kv.write(self.name, data, if_equal=_ABSENT), self.workdir)
            if not stamp.generation:
                raise self._refusal(holder)
        # Read back: a store whose conditional write is check-then-put (s3)
        # could let two writers both "succeed"; only the one whose token is
        # there holds the lock.
        current = _parse(_result(kv.read(self.name), self.workdir).value)
        if not current or current.get("token") != self.owner["token"]:
            raise self._refusal(current)
        self._generation = stamp.generation

    def _release_remote(self) -> None:
        if self._generation is not None:
            # Conditional: never delete a lock someone else took after a break.
            _result(
                _kv(self.workdir).write(self.name, None, if_equal=self._generation), self.workdir
            )
            self._generation = None

    # ------------------------------------------------------------------- api
    def acquire(self) -> WorkdirLock:
        """Takes the lock or raises LockError naming the holder; never waits."""
        if self.kind == "flock":
            self._acquire_local()
        else:
            self._acquire_remote()
        return self

    def release(self) -> None:
        if self.kind == "flock":
            self._release_local()
        else:
            self._release_remote()

    @property
    def held(self) -> bool:
        return self._fd is not None or self._generation is not None

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def read_holder(
    location: str | Workdir, name: str = LOCK_NAME, kind: str = "auto"
) -> dict[str, Any] | None:
    """The lock record of a workdir, or None when it is not locked.

    A local lock file left by a finished or killed process is not a holder:
    a record counts only while its flock is held.
    """
    workdir = location if isinstance(location, Workdir) else Workdir(location)
    if _kind(workdir, kind) == "flock":
        path = os.path.join(workdir.local_path, name)
        try:
            fd = os.open(path, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return _parse(os.pread(fd, 65536, 0)) or {}
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)
    result = _result(_kv(workdir).read(name), workdir)
    return (_parse(result.value) or {}) if result.state == "value" else None


def break_lock(
    location: str | Workdir, name: str = LOCK_NAME, kind: str = "auto"
) -> dict[str, Any] | None:
    """Removes a remote workdir's lock object; returns the record it held.

    Only for a holder known to be dead: the lock does not stop a live one
    from writing on. A local lock cannot be stale (the kernel frees it).
    """
    workdir = location if isinstance(location, Workdir) else Workdir(location)
    if _kind(workdir, kind) == "flock":
        holder = read_holder(workdir, name)
        if holder is not None:
            raise LockError(
                f"workdir {workdir.location} is locked by a live process, {describe(holder)}; "
                "a local lock ends with its process, stop that process instead"
            )
        return None
    kv = _kv(workdir)
    result = _result(kv.read(name), workdir)
    if result.state != "value":
        return None
    _result(kv.write(name, None, if_equal=result.stamp.generation), workdir)
    return _parse(result.value) or {}


def check_job_member(
    location: str | Workdir, job_id: str | None, name: str = LOCK_NAME, kind: str = "auto"
) -> None:
    """Raises LockError unless the workdir's lock is held by job `job_id` (ranks > 0)."""
    holder = read_holder(location, name, kind)
    where = location.location if isinstance(location, Workdir) else location
    if holder is None:
        raise LockError(
            f"workdir {where} is not locked, but this rank expects its rank 0 to hold it; "
            "start every rank with the same torchrun command"
        )
    if job_id is None or holder.get("job") != job_id:
        raise LockError(
            f"workdir {where} is held by {describe(holder)}, not by this job ({job_id}); "
            "another run is writing it: use another --workdir"
        )


@contextlib.contextmanager
def locked(location: str | Workdir, **kwargs: Any) -> Iterator[WorkdirLock]:
    """`with locked(workdir): ...` holds the workdir's lock for the block."""
    lock = WorkdirLock(location, **kwargs).acquire()
    try:
        yield lock
    finally:
        lock.release()


def main(argv: list[str]) -> int:
    """`python -m probing.store.lock show|break WORKDIR`."""
    if len(argv) != 3 or argv[1] not in ("show", "break"):
        print("usage: python -m probing.store.lock show|break WORKDIR", file=sys.stderr)
        return 2
    try:
        if argv[1] == "show":
            holder = read_holder(argv[2])
            print("not locked" if holder is None else f"locked by {describe(holder)}")
        else:
            holder = break_lock(argv[2])
            print("not locked" if holder is None else f"broke the lock of {describe(holder)}")
    except ValueError as error:
        print(f"probing.store.lock: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
