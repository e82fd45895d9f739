"""Probe results written as one unit: a crash, a kill or another run never leaves a mixed folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from probing.config_files import REPO_ROOT
from probing.store import atomic, layout
from probing.store.workdir import Workdir

# ------------------------------------------------------------ probe results


def _files(run: str) -> dict[str, bytes]:
    return {name: f"{run} {name}\n".encode() * 1000 for name in atomic.OWNED_FILES[:-1]}


def _runs_in(directory: str) -> set[str]:
    return {
        open(os.path.join(directory, n), "rb").read().split(b" ")[0].decode()
        for n in atomic.OWNED_FILES[:-1]
        if os.path.exists(os.path.join(directory, n))
    }


def test_probe_dir_written_as_one_unit(tmp_path, monkeypatch):
    wd = Workdir(str(tmp_path / "w"))
    directory = layout.probes_dir("mean")
    target = os.path.join(wd.local_path, directory)
    atomic.write_probe_dir(wd, directory, _files("run1"))
    with open(os.path.join(target, "notes.md"), "w") as f:
        f.write("mine")
    assert atomic.verify_probe_dir(wd, directory)["state"] == "complete"

    # A crash after two of six files: the old run stays whole, no temp folder is left.
    real_write = atomic._write_file
    calls = []

    def failing_write(path, data):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(atomic, "_write_file", failing_write)
    with pytest.raises(OSError):
        atomic.write_probe_dir(wd, directory, _files("run2"))
    monkeypatch.setattr(atomic, "_write_file", real_write)
    assert _runs_in(target) == {"run1"}
    assert sorted(os.listdir(os.path.dirname(target))) == ["mean"]
    atomic.verify_probe_dir(wd, directory)

    # A kill between the two renames of the fallback (no atomic exchange): none or old.
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    real_rename = os.rename

    def dying_rename(a, b):
        if a.endswith(".tmp-" + str(os.getpid())):
            raise KeyboardInterrupt  # stands for the kill
        real_rename(a, b)

    monkeypatch.setattr(atomic.os, "rename", dying_rename)
    with pytest.raises(KeyboardInterrupt):
        atomic.write_probe_dir(wd, directory, _files("run3"))
    monkeypatch.setattr(atomic.os, "rename", real_rename)
    assert not os.path.exists(target) or _runs_in(target) == {"run1"}

    atomic.write_probe_dir(wd, directory, _files("run4"))  # cleans up, writes whole
    assert _runs_in(target) == {"run4"}
    assert sorted(os.listdir(os.path.dirname(target))) == ["mean"]


def test_user_files_in_a_probe_dir_survive_a_rewrite(tmp_path):
    wd = Workdir(str(tmp_path / "w"))
    directory = layout.probes_dir("mean")
    atomic.write_probe_dir(wd, directory, _files("run1"))
    with open(os.path.join(wd.local_path, directory, "notes.md"), "w") as f:
        f.write("mine")
    atomic.write_probe_dir(wd, directory, _files("run2"))
    with open(os.path.join(wd.local_path, directory, "notes.md")) as f:
        assert f.read() == "mine"


def test_a_mixed_probe_dir_is_refused(tmp_path):
    wd = Workdir(str(tmp_path / "w"))
    directory = layout.probes_dir("mean")
    atomic.write_probe_dir(wd, directory, _files("run1"))
    # Another run replaces one file in place (what the old writer did file by file).
    wd.write_bytes(f"{directory}/{layout.METRICS_CSV}", b"run2 metrics\n")
    with pytest.raises(atomic.MixedResultsError, match=r"metrics\.csv does not match"):
        atomic.verify_probe_dir(wd, directory)
    # A bucket write that was killed before results.json was final.
    wd.write_bytes(f"{directory}/{atomic.RESULTS_MANIFEST}", b'{"state": "writing"}')
    with pytest.raises(atomic.MixedResultsError, match="being written"):
        atomic.verify_probe_dir(wd, directory)
    # Folders written before results.json existed cannot be checked this way.
    os.remove(os.path.join(wd.local_path, directory, atomic.RESULTS_MANIFEST))
    assert atomic.verify_probe_dir(wd, directory) is None


_WRITER = """
import sys
from probing.store import atomic
i = 0
while True:
    files = {n: (f"run{i} {n}\\n" * 20000).encode() for n in atomic.OWNED_FILES[:-1]}
    atomic.write_probe_dir(sys.argv[1], "probes/mean", files)
    print(i, flush=True)
    i += 1
"""


def test_sigkill_during_probe_writes_never_leaves_a_mix(tmp_path):
    workdir = str(tmp_path / "w")
    target = os.path.join(workdir, "probes", "mean")
    rng = np.random.default_rng(0)
    for attempt in range(6):
        child = subprocess.Popen(
            [sys.executable, "-c", _WRITER, workdir], cwd=REPO_ROOT, stdout=subprocess.PIPE
        )
        child.stdout.readline()  # one whole run exists
        time.sleep(float(rng.uniform(0.0, 0.3)))
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert len(_runs_in(target)) == 1, f"attempt {attempt}: {_runs_in(target)}"
        atomic.verify_probe_dir(workdir, "probes/mean")


def test_a_failed_metadata_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    wd = Workdir(str(tmp_path / "w"))
    wd.write_json("manifest.json", {"v": 1})

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        wd.write_json("manifest.json", {"v": 2})
    assert os.listdir(wd.local_path) == ["manifest.json"]
    assert wd.read_json("manifest.json") == {"v": 1}
