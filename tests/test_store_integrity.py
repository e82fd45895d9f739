"""A workdir that cannot lie: locks, input digests, damaged or incomplete stores, remote checks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import save_file

from probing.config_files import REPO_ROOT
from probing.store import digests, integrity, layout, lock, remote
from probing.store.workdir import Workdir, WorkdirError

# ------------------------------------------------------------------- locks


def _hold_lock_in_child(path: str) -> subprocess.Popen:
    code = (
        "import sys, time\n"
        "from probing.store.lock import WorkdirLock\n"
        "WorkdirLock(sys.argv[1], command='child-extract').acquire()\n"
        "print('locked', flush=True)\n"
        "time.sleep(120)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, path], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout.readline().strip() == "locked"
    return child


def test_second_writer_fails_at_once_naming_the_holder(tmp_path):
    workdir = str(tmp_path / "w")
    child = _hold_lock_in_child(workdir)
    try:
        started = time.monotonic()
        with pytest.raises(lock.LockError) as refused:
            lock.WorkdirLock(workdir).acquire()
        assert time.monotonic() - started < 2.0
        message = str(refused.value)
        assert f"pid {child.pid}" in message and socket.gethostname() in message
        assert "child-extract" in message and "\n" not in message
        assert lock.read_holder(workdir)["pid"] == child.pid
    finally:
        # SIGKILL: the kernel frees a local lock with its holder, so it never goes stale.
        child.send_signal(signal.SIGKILL)
        child.wait()
    with lock.locked(workdir, command="second") as held:
        assert held.held and lock.read_holder(workdir)["command"] == "second"
    assert lock.read_holder(workdir) is None


def test_lock_refuses_a_workdir_that_is_a_file(tmp_path):
    path = tmp_path / "not_a_dir"
    path.write_text("x")
    with pytest.raises(lock.LockError, match="not a directory"):
        lock.WorkdirLock(str(path)).acquire()


def test_object_lock_conditional_write_and_stale_break(tmp_path):
    # The bucket code path, run on a local directory through TensorStore's file driver.
    workdir = str(tmp_path / "w")
    os.makedirs(workdir)
    first = lock.WorkdirLock(workdir, kind="object", command="first").acquire()
    with pytest.raises(lock.LockError, match=r"first.*probing\.store\.lock break"):
        lock.WorkdirLock(workdir, kind="object").acquire()
    first.release()
    assert lock.read_holder(workdir, kind="object") is None

    # A holder on another host cannot be proven dead: refused until broken.
    record = {"host": "elsewhere", "pid": 1, "start": "2024-01-01T00:00:00+00:00"}
    (tmp_path / "w" / ".lock").write_text(json.dumps(record))
    with pytest.raises(lock.LockError, match="host elsewhere pid 1"):
        lock.WorkdirLock(workdir, kind="object").acquire()
    assert lock.break_lock(workdir, kind="object")["host"] == "elsewhere"
    lock.WorkdirLock(workdir, kind="object").acquire().release()

    # break_lock=True in the config does the same in one step.
    (tmp_path / "w" / ".lock").write_text(json.dumps(record))
    lock.WorkdirLock(workdir, kind="object", break_lock=True).acquire().release()

    # A holder on this host whose process is gone is stale for sure: taken over.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    record = {"host": socket.gethostname(), "pid": int(dead.stdout), "start": "x"}
    (tmp_path / "w" / ".lock").write_text(json.dumps(record))
    lock.WorkdirLock(workdir, kind="object").acquire().release()


def test_torchrun_ranks_check_they_belong_to_the_holding_job(tmp_path, monkeypatch):
    workdir = str(tmp_path / "w")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    job = lock.job_id_from_env()
    with pytest.raises(lock.LockError, match="not locked"):
        lock.check_job_member(workdir, job)
    with lock.locked(workdir, job_id=job, kind="object"):
        lock.check_job_member(workdir, job, kind="object")
        monkeypatch.setenv("MASTER_PORT", "29501")  # another job on the same host
        with pytest.raises(lock.LockError, match="not by this job"):
            lock.check_job_member(workdir, lock.job_id_from_env(), kind="object")


def test_lock_cli_show_and_break(tmp_path):
    workdir = str(tmp_path / "w")
    run = [sys.executable, "-m", "probing.store.lock"]
    shown = subprocess.run([*run, "show", workdir], cwd=REPO_ROOT, capture_output=True, text=True)
    assert shown.returncode == 0 and "not locked" in shown.stdout
    child = _hold_lock_in_child(workdir)
    try:
        shown = subprocess.run(
            [*run, "show", workdir], cwd=REPO_ROOT, capture_output=True, text=True
        )
        assert f"pid {child.pid}" in shown.stdout
        # A live local holder is not broken: the message says to stop it instead.
        broken = subprocess.run(
            [*run, "break", workdir], cwd=REPO_ROOT, capture_output=True, text=True
        )
        assert broken.returncode == 2 and "stop that process" in broken.stderr
    finally:
        child.kill()
        child.wait()


# ------------------------------------------------------------------ remote


def _refusing_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: connections are refused


def test_unreachable_s3_workdir_fails_fast_naming_the_url(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_refusing_port()}")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    started = time.monotonic()
    with pytest.raises(remote.RemoteWorkdirError) as refused:
        remote.check_remote_reachable("s3://no-such-bucket/run1", timeout_s=3)
    assert time.monotonic() - started < 8
    message = str(refused.value)
    assert "s3://no-such-bucket/run1" in message and "127.0.0.1" in message
    assert isinstance(refused.value, ValueError) and "\n" not in message


def test_local_workdir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(WorkdirError, match="is a file"):
        remote.check_remote_reachable(str(tmp_path / "f"))
    with pytest.raises(WorkdirError, match="is a file"):
        remote.check_remote_reachable(str(tmp_path / "f" / "sub"))
    remote.check_remote_reachable(str(tmp_path / "new" / "workdir"))


# ----------------------------------------------------------------- digests


def _checkpoint(path, weights: np.ndarray) -> str:
    os.makedirs(path, exist_ok=True)
    save_file({"w": weights}, os.path.join(path, "model.safetensors"))
    for name, text in (("config.json", "{}"), ("tokenizer.json", '{"v": 1}'), ("README.md", "a")):
        with open(os.path.join(path, name), "w") as f:
            f.write(text)
    return str(path)


def test_checkpoint_digest_sees_weights_and_tokenizer_changes(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    path = _checkpoint(tmp_path / "ckpt", rng.normal(size=(64, 64)).astype(np.float32))
    before = digests.digest_checkpoint(path, revision="main")
    assert digests.digest_checkpoint(path, revision="main") == before
    # Same shapes, new values: the safetensors header is unchanged, the samples are not.
    _checkpoint(path, rng.normal(size=(64, 64)).astype(np.float32))
    after = digests.digest_checkpoint(path, revision="main")
    assert (
        after["weights"]["model.safetensors"]["header_sha256"]
        == (before["weights"]["model.safetensors"]["header_sha256"])
    )
    assert after != before
    # Also for files above the sampling size (only spread blocks are read then).
    monkeypatch.setattr(digests, "BLOCK_BYTES", 256)
    sampled = digests.digest_checkpoint(path)
    weights = np.ones((64, 64), np.float32)
    _checkpoint(path, weights)
    assert digests.digest_checkpoint(path) != sampled

    state = digests.digest_checkpoint(path)
    with open(os.path.join(path, "tokenizer.json"), "w") as f:
        f.write('{"v": 2}')
    assert digests.digest_checkpoint(path)["files"] != state["files"]
    state = digests.digest_checkpoint(path)
    with open(os.path.join(path, "README.md"), "w") as f:
        f.write("edited")
    assert digests.digest_checkpoint(path) == state  # docs do not change features


def test_checkpoint_without_or_with_truncated_weights_is_one_clear_error(tmp_path):
    path = _checkpoint(tmp_path / "ckpt", np.zeros((256, 256), np.float32))
    weights = os.path.join(path, "model.safetensors")
    with open(weights, "r+b") as f:
        f.truncate(os.path.getsize(weights) // 2)
    with pytest.raises(digests.InputError, match=r"model\.safetensors is truncated"):
        digests.digest_checkpoint(path)
    os.remove(weights)
    with pytest.raises(digests.InputError, match="has no weights file"):
        digests.digest_checkpoint(path)
    # A hub id that is not local can only be named by id and revision.
    assert digests.digest_checkpoint("Qwen/Qwen2-VL-2B-Instruct", revision="abc") == {
        "id": "Qwen/Qwen2-VL-2B-Instruct",
        "revision": "abc",
    }


def test_annotation_and_row_digests(tmp_path):
    captions = tmp_path / "annotations" / "captions_train2017.json"
    captions.parent.mkdir()
    captions.write_text('{"annotations": [{"image_id": 1, "caption": "a cat"}]}')
    before = digests.digest_files([captions])
    assert list(before) == ["captions_train2017.json"]
    captions.write_text('{"annotations": [{"image_id": 1, "caption": "a dog"}]}')
    assert digests.digest_files([captions]) != before

    rows = [{"image_id": i, "prompt": f"p{i}", "label": i % 2, "split": "train"} for i in range(5)]
    labels = np.array([r["label"] for r in rows], np.int8)
    base = digests.digest_rows(rows, arrays={"labels": labels})
    edited = [dict(r) for r in rows]
    edited[3]["prompt"] = "other"
    assert digests.digest_rows(edited, arrays={"labels": labels}) != base
    assert digests.digest_rows(rows[:4], arrays={"labels": labels[:4]})["num_rows"] == 4
    assert digests.first_row_difference(rows, edited) == "row 3: prompt was 'p3', now 'other'"
    assert digests.first_row_difference(rows, rows[:4]) == "the task had 5 rows, now 4"
    assert digests.first_row_difference(rows, rows) is None


# ------------------------------------------------- damaged or partial stores


def _store(tmp_path, rows=16, layers=3, dim=4, chunk=4, dtype="float32", complete=True) -> Workdir:
    wd = Workdir(str(tmp_path / "w"))
    rng = np.random.default_rng(0)
    features = wd.create_array(
        layout.features("mean"), dtype, (rows, layers, dim), (chunk, layers, dim)
    )
    features.write(rng.normal(size=(rows, layers, dim)).astype(dtype)).result()
    wd.write_array(layout.WRITTEN, np.ones(rows, np.uint8), (chunk,))
    wd.write_json(
        layout.MANIFEST_JSON,
        layout.new_manifest(
            model={"id": "m"},
            library_versions={},
            dtype=dtype,
            feature_dtype=dtype,
            num_examples=rows,
            num_layers=layers,
            hidden_size=dim,
            poolings=["mean"],
            label_kind="binary",
            label_names=["yes"],
            task="caption",
            prompt_template="{caption}",
            complete=complete,
        ),
    )
    return wd


def _poke(wd: Workdir, row: int, layer: int, value: float) -> None:
    array = wd.open_array(layout.features("mean"))
    array[row, layer, 1].write(value).result()


def test_clean_features_pass(tmp_path):
    wd = _store(tmp_path)
    (report,) = integrity.check_all_features(wd)
    assert report.rows_checked == 16 and 0 < report.max_abs < 10


@pytest.mark.parametrize("check", [integrity.check_features, integrity.check_feature_chunks])
def test_written_of_another_length_than_the_features_is_refused(tmp_path, check):
    wd = _store(tmp_path)
    wd.write_array(layout.WRITTEN, np.ones(12, np.uint8), (4,))
    with pytest.raises(integrity.FeatureError, match=r"features/mean has 16 rows but .* has 12;"):
        check(wd, "mean")


@pytest.mark.parametrize(
    ("value", "what"),
    [(float("nan"), "NaN or Inf"), (float("-inf"), "NaN or Inf"), (3e38, "standardisation")],
)
def test_bad_values_are_named_by_layer_and_row(tmp_path, value, what):
    wd = _store(tmp_path)
    _poke(wd, 9, 2, value)
    with pytest.raises(integrity.FeatureError) as refused:
        integrity.check_features(wd, "mean")
    message = str(refused.value)
    assert what in message and "features/mean" in message
    assert "layer(s) 2 " in message and "rows 9;" in message


def test_huge_values_do_overflow_a_float32_standardisation():
    # Why the threshold exists: one 3e38 among ordinary values makes the scale inf.
    x = np.random.default_rng(0).normal(size=16).astype(np.float32)
    x[3] = 3e38
    with np.errstate(over="ignore"):
        scale = np.sqrt(np.mean(np.square(x - x.mean())))
    assert not np.isfinite(scale)
    assert 3e38 > integrity.overflow_threshold(16) > 1e4


def test_bad_values_in_unwritten_rows_and_float16_inf(tmp_path):
    wd = _store(tmp_path, dtype="float16")
    _poke(wd, 5, 0, float("inf"))
    written = np.ones(16, bool)
    written[5] = False
    integrity.check_features(wd, "mean", written)  # an unwritten row is never read
    with pytest.raises(integrity.FeatureError, match="rows 5;"):
        integrity.check_features(wd, "mean")


def test_missing_chunk_of_written_rows_is_an_error_naming_them(tmp_path):
    wd = _store(tmp_path)
    chunk_file = os.path.join(wd.local_path, "features", "mean", "c", "1", "0", "0")
    assert os.path.exists(chunk_file)
    os.remove(chunk_file)
    # A plain read sees fill-value zeros: what the probes were trained on before.
    assert not wd.read_array(layout.features("mean"))[4:8].any()
    with pytest.raises(integrity.FeatureError, match=r"missing .* rows 4, 5, 6, 7;"):
        integrity.check_features(wd, "mean")
    written = np.ones(16, bool)
    written[4:8] = False
    integrity.check_features(wd, "mean", written)  # unwritten rows may lack chunks


def test_chunks_of_zeros_are_stored(tmp_path):
    # An all-zero chunk must exist on disk, or it would look missing.
    wd = Workdir(str(tmp_path / "w"))
    array = wd.create_array("a", "float32", (8, 2), (4, 2))
    array[0:4].write(np.zeros((4, 2), np.float32)).result()
    assert os.path.exists(os.path.join(wd.local_path, "a", "c", "0", "0"))


def test_incomplete_workdir_is_refused_unless_allowed(tmp_path):
    wd = _store(tmp_path, complete=False)
    written = np.zeros(16, np.uint8)
    written[:10] = 1
    wd.write_array(layout.WRITTEN, written)
    with pytest.raises(integrity.IncompleteWorkdirError) as refused:
        integrity.require_complete(wd)
    message = str(refused.value)
    assert "10 of 16 rows written" in message and "allow_partial" in message
    assert integrity.require_complete(wd, allow_partial=True)["complete"] is False
    complete = _store(tmp_path / "b")
    assert integrity.require_complete(complete)["complete"] is True
