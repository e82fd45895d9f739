"""`python -m probing.extract` as real processes: SIGKILL and resume, torchrun with 2 ranks.

Both must end with a store bit-identical to an uninterrupted in-process run of
the same config: windows of rows are fixed, so every process forms the same
forward batches. All processes run single-threaded (OMP_NUM_THREADS=1, and
torch.set_num_threads(1) here) so that CPU kernels reduce in the same order.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from probing.extraction.runner import extract
from probing.store.layout import REJECTED
from probing.store.workdir import Workdir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The random tiny checkpoint: these tests are about processes, not what a model knows.
CONFIG = "configs/demo.py:qwen2_vl,tiny"
# 100 images -> 200 caption rows: a second or two of extraction, long enough
# to kill a run halfway.
OVERRIDES = {
    "data.synthetic.num_images": 100,
    "task.split_sizes.val": 10,
    "task.split_sizes.test": 10,
    "task.similarity_stats": False,
    "extract.batch_size": 4,
    "extract.bucket_window": 2,
    "extract.poolings": ("mean", "last"),
    "extract.first_token_topk": 2,
    "extract.log_every_s": 0.2,
}
PROGRESS = re.compile(r"Extracting (\d+) of (\d+) rows \((\d+) already written\)")


def _config():
    from configs.demo import get_config

    config = get_config(CONFIG.split(":")[1])
    for path, value in OVERRIDES.items():
        *sections, field = path.split(".")
        node = config
        for section in sections:
            node = node[section]
        node[field] = value
    return config


def _flags() -> list[str]:
    flags = []
    for path, value in OVERRIDES.items():
        text = f"({','.join(repr(v) for v in value)},)" if isinstance(value, tuple) else value
        flags.append(f"--config.{path}={text}")
    return flags


@pytest.fixture(scope="module")
def environment(single_thread):
    # Subprocesses share the session's private cache (tests/conftest.py).
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=REPO)


@pytest.fixture(scope="module")
def reference(environment, tmp_path_factory) -> Workdir:
    """The uninterrupted single-process run (also builds the checkpoint and data)."""
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    assert extract(_config(), workdir)["complete"]
    return Workdir(workdir)


def _command(workdir: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "probing.extract",
        f"--config={CONFIG}",
        f"--workdir={workdir}",
        *_flags(),
    ]


def _assert_same_store(actual: Workdir, expected: Workdir) -> None:
    manifest = actual.manifest()
    assert manifest["complete"] is True
    assert manifest["fingerprint"] == expected.manifest()["fingerprint"]
    for pooling in manifest["poolings"]:
        assert np.array_equal(
            actual.read_array(f"features/{pooling}"), expected.read_array(f"features/{pooling}")
        ), pooling
    assert actual.read_array("arrays/written").all()
    assert not actual.read_array(REJECTED).any()
    assert actual.read_jsonl("examples.jsonl") == expected.read_jsonl("examples.jsonl")


@pytest.mark.slow
def test_sigkill_then_rerun_recomputes_only_unwritten_rows(environment, reference, tmp_path):
    workdir = str(tmp_path / "killed")
    wd = Workdir(workdir)
    run = subprocess.Popen(
        _command(workdir),
        cwd=REPO,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    written = None
    try:
        deadline = time.monotonic() + 120
        while run.poll() is None and time.monotonic() < deadline:
            if wd.exists("manifest.json"):
                written = wd.read_array("arrays/written").astype(bool)
                # At least one whole window (2 chunks of 4 rows) durable.
                if written.reshape(-1, 8).all(axis=1).any():
                    run.send_signal(signal.SIGKILL)
                    break
            time.sleep(0.01)
    finally:
        if run.poll() is None:
            run.kill()
        run.wait()
    assert run.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    written = wd.read_array("arrays/written").astype(bool)  # final state after the kill
    num_rows = len(written)
    assert 0 < written.sum() < num_rows
    # Whole windows (2 chunks of 4 rows) are computed again if any row is missing.
    windows = written.reshape(-1, 8).all(axis=1)
    expected_todo = int((~windows).sum() * 8)

    resumed = subprocess.run(
        _command(workdir), cwd=REPO, env=environment, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    todo, total, already = map(int, PROGRESS.search(resumed.stderr).groups())
    assert (total, already) == (num_rows, int(written.sum()))
    assert todo == expected_todo < num_rows
    assert "Resuming extraction" in resumed.stderr
    _assert_same_store(wd, reference)


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one_process(environment, reference, tmp_path):
    workdir = str(tmp_path / "two_ranks")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        *_command(workdir)[1:],
    ]
    run = subprocess.run(
        command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    counts = {}
    for rank in (0, 1):
        match = re.search(rf"Extracting (\d+) of (\d+) rows .*\(rank {rank}/2\)", run.stderr)
        assert match, f"no progress line of rank {rank}"
        counts[rank] = int(match.group(1))
    # Each rank did its own half of the windows, and together all of them.
    assert counts[0] > 0 and counts[1] > 0
    assert counts[0] + counts[1] == reference.manifest()["num_examples"]
    _assert_same_store(Workdir(workdir), reference)
    assert Workdir(workdir).manifest()["hardware"]["world_size"] == 2
