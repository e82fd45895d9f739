"""Fault injection (issue 14): each way a workdir could lie is refused, and nothing computed is lost.

Cases: inputs edited between a run and its resume (captions, removed images,
weights, tokenizer), a second writer, overwrite beside user files, a remote
workdir that does not answer, incomplete and damaged stores before training,
mixed and repeated probe results in the report; and bad inputs, each one line
naming the culprit: undecodable and decompression-bomb images (skipped under
either skip flag), image file names leaving the image folder, an unavailable
sentence encoder, a checkpoint without tokenizer files, a full disk.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from absl import flags
from safetensors.numpy import load_file, save_file

from probing import cli
from probing.cache import publish_file
from probing.config_files import REPO_ROOT
from probing.data.coco import CocoDataset, DatasetError
from probing.data.synthetic_coco import ensure_synthetic_coco
from probing.extraction.batches import BatchSource, RejectedInput, load_rgb
from probing.extraction.runner import extract
from probing.extraction.settings import ExtractionError
from probing.models import ModelLoadError, load_model, resolve_model_path
from probing.probes.train import train_workdir
from probing.reporting.runs import ReportError, load_runs
from probing.store import layout
from probing.store.integrity import FeatureError, IncompleteWorkdirError
from probing.store.lock import LockError
from probing.store.remote import RemoteWorkdirError
from probing.store.workdir import Workdir
from probing.tasks import build_task
from probing.tasks.embeddings import EmbeddingError
from probing.testing.planted import planted_arrays, write_workdir


def _config(tmp_path, model: str = "tiny:qwen2_vl"):
    from configs.demo import get_config

    config = get_config("qwen2_vl,caption")
    config.model.name = model
    config.data.synthetic.num_images = 40
    config.data.synthetic.cache_dir = str(tmp_path / "data")  # this test's own copy
    config.task.split_sizes.val = 8
    config.task.split_sizes.test = 8
    config.extract.batch_size = 8
    config.extract.poolings = ("mean",)
    return config


def _unbuildable(tmp_path, model: str = "tiny:qwen2_vl"):
    """A config whose dataset does not exist: a step that runs before reading it must stop."""
    config = _config(tmp_path, model)
    with config.unlocked():
        config.data.source = "coco"
        config.data.coco_root = str(tmp_path / "no_coco_here")
    return config


def _features(workdir: str) -> np.ndarray:
    return Workdir(workdir).read_array(layout.features("mean"))


@pytest.fixture()
def local_checkpoint(tmp_path):
    """A copy of the tiny checkpoint at a local path that the test may edit."""
    path = str(tmp_path / "ckpt")
    shutil.copytree(resolve_model_path("tiny:qwen2_vl"), path)
    return path


# -------------------------------------------------- resume with other inputs


@pytest.mark.slow
def test_resume_refuses_edited_captions_naming_the_row(tmp_path, single_thread):
    config, workdir = _config(tmp_path), str(tmp_path / "w")
    extract(config, workdir)
    before = _features(workdir)
    (captions,) = glob.glob(str(tmp_path / "data" / "**" / "captions_*.json"), recursive=True)
    with open(captions) as f:
        data = json.load(f)
    for annotation in data["annotations"]:
        annotation["caption"] = annotation["caption"].replace("a ", "one ", 1)
    with open(captions, "w") as f:
        json.dump(data, f)
    with pytest.raises(ExtractionError) as refused:
        extract(config, workdir)
    message = str(refused.value)
    assert "the task rows (row " in message and "prompt was" in message
    assert "another --workdir" in message and "overwrite=True" in message
    np.testing.assert_array_equal(_features(workdir), before)  # nothing lost


@pytest.mark.slow
def test_resume_refuses_removed_images(tmp_path, single_thread):
    config, workdir = _config(tmp_path), str(tmp_path / "w")
    extract(config, workdir)
    with config.unlocked():
        config.data.skip_unreadable_images = True
    images = sorted(glob.glob(str(tmp_path / "data" / "**" / "*.png"), recursive=True))
    for path in images[:3]:
        os.remove(path)
    with pytest.raises(ExtractionError, match=r"the task rows \(") as refused:
        extract(config, workdir)
    # The config changed too (the skip flag), and both are named.
    assert "skip_unreadable_images" in str(refused.value)


@pytest.mark.slow
def test_resume_refuses_replaced_weights_and_tokenizer(tmp_path, local_checkpoint, single_thread):
    config, workdir = _config(tmp_path, model=local_checkpoint), str(tmp_path / "w")
    extract(config, workdir)
    (weights_file,) = glob.glob(os.path.join(local_checkpoint, "*.safetensors"))
    shutil.copy(weights_file, tmp_path / "original.safetensors")
    tensors = load_file(weights_file)
    # Same names, shapes and dtypes (an identical safetensors header), new values.
    save_file({k: v * 1.5 for k, v in tensors.items()}, weights_file, metadata={"format": "pt"})
    with pytest.raises(ExtractionError, match="the model weights"):
        extract(config, workdir)
    shutil.copy(tmp_path / "original.safetensors", weights_file)
    extract(config, workdir)  # the original weights match again: resumed

    # A tokenizer file rewritten (here only re-indented) at the same path.
    tokenizer = os.path.join(local_checkpoint, "tokenizer.json")
    with open(tokenizer) as f:
        data = json.load(f)
    with open(tokenizer, "w") as f:
        json.dump(data, f, indent=1)
    with pytest.raises(ExtractionError, match=r"checkpoint file tokenizer\.json"):
        extract(config, workdir)


# ----------------------------------------------------------- one writer only


def test_second_extraction_stops_at_once_naming_the_holder(tmp_path, monkeypatch):
    workdir = str(tmp_path / "w")
    # "At once" without a clock (timed assertions flake on a loaded machine): every
    # exclusive flock the extraction asks for must be non-blocking, so it cannot wait.
    from probing.store import lock as lock_module

    real_flock = lock_module.fcntl.flock
    requests = []

    def non_blocking_only(fd, operation):
        requests.append(operation)
        if operation & lock_module.fcntl.LOCK_EX and not operation & lock_module.fcntl.LOCK_NB:
            raise AssertionError("the workdir lock would wait for its holder (no LOCK_NB)")
        return real_flock(fd, operation)

    monkeypatch.setattr(lock_module.fcntl, "flock", non_blocking_only)
    code = (
        "import sys, time\n"
        "from probing.store.lock import WorkdirLock\n"
        "WorkdirLock(sys.argv[1], command='probing.extract (first)').acquire()\n"
        "print('locked', flush=True)\n"
        "time.sleep(120)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, workdir], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        config = _unbuildable(tmp_path)
        with pytest.raises(LockError, match=rf"pid {holder.pid}.*probing\.extract \(first\)"):
            extract(config, workdir)
        assert any(op & lock_module.fcntl.LOCK_EX for op in requests)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


# ------------------------------------------------------------------ overwrite


@pytest.mark.slow
def test_overwrite_keeps_user_files_and_resumes_a_matching_run(tmp_path, single_thread):
    config, workdir = _config(tmp_path), str(tmp_path / "w")
    extract(config, workdir)
    before = _features(workdir)
    os.makedirs(os.path.join(workdir, "report"))
    with open(os.path.join(workdir, "report", "notes.md"), "w") as f:
        f.write("my notes")
    with config.unlocked():
        config.overwrite = True
    # Same run: resumed (nothing recomputed, nothing deleted) despite overwrite=True.
    mtime = os.path.getmtime(os.path.join(workdir, "features", "mean", "zarr.json"))
    extract(config, workdir)
    assert os.path.getmtime(os.path.join(workdir, "features", "mean", "zarr.json")) == mtime
    # Another run: refused while report/ is there; nothing touched.
    with config.unlocked():
        config.extract.feature_dtype = "float16"
    with pytest.raises(ExtractionError, match=r"report/.*move them out"):
        extract(config, workdir)
    np.testing.assert_array_equal(_features(workdir), before)
    with open(os.path.join(workdir, "report", "notes.md")) as f:
        assert f.read() == "my notes"
    # Moved out: overwrite replaces the features.
    shutil.move(os.path.join(workdir, "report"), str(tmp_path / "report"))
    manifest = extract(config, workdir)
    assert manifest["complete"] and os.path.exists(os.path.join(workdir, ".lock"))


# ------------------------------------------------------------------- remote


def test_remote_workdir_that_does_not_answer_fails_before_the_task(tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    config = _unbuildable(tmp_path)
    monkeypatch.setattr("probing.store.remote.DEFAULT_TIMEOUT_S", 3.0)
    started = time.monotonic()
    with pytest.raises(RemoteWorkdirError, match=r"s3://bucket/run.*no AWS credentials found"):
        extract(config, "s3://bucket/run")
    assert time.monotonic() - started < 15


# ------------------------------------------- damaged or incomplete stores


def _planted(location, written=None, poolings=("mean", "last")):
    arrays = planted_arrays(120, 3, 4, [1], strength=5.0, seed=1)
    return write_workdir(location, arrays, poolings=poolings, written=written)


def _probe_config(**overrides):
    from configs.probe import get_config

    config = get_config()
    config.num_seeds = 1
    config.epochs = 2
    config.update(overrides)
    return config


@pytest.mark.slow
def test_training_refuses_an_incomplete_store_unless_allowed(tmp_path):
    written = np.ones(120, np.uint8)
    written[100:] = 0
    workdir = _planted(str(tmp_path / "w"), written, poolings=("mean",))
    with pytest.raises(IncompleteWorkdirError, match=r"100 of 120 rows written.*allow_partial"):
        train_workdir(workdir.location, _probe_config())
    assert not os.path.exists(os.path.join(workdir.location, "probes"))
    summary = train_workdir(workdir.location, _probe_config(allow_partial=True))["mean"]
    assert summary["partial_store"] == {"rows_written": 100, "num_examples": 120}
    with open(os.path.join(workdir.location, "probes", "mean", "results.json")) as f:
        assert json.load(f)["partial_store"]["rows_written"] == 100
    with pytest.raises(ReportError, match="allow_partial"):
        load_runs([workdir.location])
    (run,) = load_runs([workdir.location], allow_partial=True)
    assert run.label.endswith("[partial store]")


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("huge", r"features/last: layer\(s\) 2 hold values beyond .* rows 17;"),
        ("inf", r"features/last: layer\(s\) 2 hold NaN or Inf in rows 17;"),
        ("chunk", r"features/last: chunk files of written rows are missing .* rows 64, 65"),
    ],
)
def test_damage_in_the_second_pooling_stops_training_naming_it(tmp_path, damage, expected):
    workdir = _planted(str(tmp_path / "w"))
    if damage == "chunk":
        os.remove(os.path.join(workdir.location, "features", "last", "c", "1", "0", "0"))
    else:
        array = workdir.open_array(layout.features("last"))
        array[17, 2, 0].write(3e38 if damage == "huge" else np.inf).result()
    with pytest.raises(FeatureError, match=expected):
        train_workdir(workdir.location, _probe_config())
    probes = os.path.join(workdir.location, "probes")
    if damage == "chunk":
        # Chunk files are checked from the key listing before any training.
        assert not os.path.exists(probes)
    else:
        # Values are checked as each pooling loads (no separate validating read):
        # the first pooling's results are kept whole, the damaged one has none.
        assert sorted(os.listdir(probes)) == ["mean"]
        assert os.path.exists(os.path.join(probes, "mean", "summary.json"))


def test_report_reads_a_repeated_workdir_once(tmp_path):
    workdir = _planted(str(tmp_path / "w"), poolings=("mean",))
    train_workdir(workdir.location, _probe_config())
    runs = load_runs([workdir.location, workdir.location + "/", str(tmp_path / "w" / ".")])
    assert len(runs) == 1


def test_checkpoint_with_truncated_weights_is_named_before_the_task(tmp_path, local_checkpoint):
    (weights_file,) = glob.glob(os.path.join(local_checkpoint, "*.safetensors"))
    with open(weights_file, "r+b") as f:
        f.truncate(os.path.getsize(weights_file) // 2)
    config = _unbuildable(tmp_path, model=local_checkpoint)
    with pytest.raises(ValueError, match=r"model\.safetensors is truncated"):
        extract(config, str(tmp_path / "w"))
    os.remove(weights_file)
    with pytest.raises(ValueError, match="has no weights file"):
        extract(config, str(tmp_path / "w"))


# ------------------------------------------------- bad inputs, one line each


def _png_header_only(path, width: int, height: int) -> None:
    """A PNG whose header claims width x height (a decompression bomb needs no pixels)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header))
        f.write(chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.fixture()
def coco_copy(tmp_path):
    """A COCO-format dataset of 12 generated images that the test may damage."""
    root = ensure_synthetic_coco(tmp_path / "coco", num_images=12, seed=0)
    images = sorted(glob.glob(os.path.join(root, "train2017", "*.png")))
    return root, images


def _coco_config(tmp_path, root):
    config = _config(tmp_path)
    with config.unlocked():
        config.data.source = "coco"
        config.data.coco_root = str(root)
        config.task.split_sizes.val = 2
        config.task.split_sizes.test = 2
    return config


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("bomb", "too many pixels to decode safely"),  # PIL's DecompressionBombError
        ("warning_size", "too many pixels to decode safely"),  # its DecompressionBombWarning
        ("garbage", "UnidentifiedImageError"),
    ],
)
def test_undecodable_image_is_skipped_by_both_flags_or_named(tmp_path, coco_copy, damage, reason):
    root, images = coco_copy
    bad = images[5]
    if damage == "garbage":
        with open(bad, "wb") as f:
            f.write(os.urandom(2048))
    else:
        side = 20000 if damage == "bomb" else 10000
        _png_header_only(bad, side, side)
    config = _coco_config(tmp_path, root)
    with pytest.raises(DatasetError, match=re.escape(bad) + r".*" + reason) as stopped:
        build_task(config.data, config.task, config.seed)
    assert "skip_unreadable_images" in str(stopped.value)
    with config.unlocked():
        config.data.skip_unreadable_images = True
    table = build_task(config.data, config.task, config.seed)
    assert [s["path"] for s in table.skipped] == [bad]
    assert bad not in table.image_paths.values()

    # Stage 1 decodes again (data.image_check="none" leaves it to extraction).
    with pytest.raises(RejectedInput, match=r"image 6: cannot decode " + re.escape(bad)):
        load_rgb(bad, 6)
    source = BatchSource(
        [(0, [0])], [{"image_id": 6, "prompt": "p"}], {6: bad}, None, True, False, True
    )
    assert source[0].rejected == [{"row": 0, "image_id": 6, "reason": "unreadable"}]


@pytest.mark.parametrize("file_name", ["../../etc/passwd", "/etc/passwd", "a/../../b.png"])
def test_image_file_name_outside_the_image_folder_is_refused(tmp_path, coco_copy, file_name):
    root, _ = coco_copy
    instances = os.path.join(root, "annotations", "instances_train2017.json")
    with open(instances) as f:
        data = json.load(f)
    data["images"][3]["file_name"] = file_name
    with open(instances, "w") as f:
        json.dump(data, f)
    expected = f"{instances}: images[3].file_name = {file_name!r} is not a relative path inside"
    with pytest.raises(DatasetError, match=re.escape(expected)):
        CocoDataset(root, ["train2017"])


def test_unavailable_embedding_model_stops_before_the_dataset_is_read(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = _unbuildable(tmp_path)
    with config.unlocked():
        config.task.negatives = "hard"
        config.task.hard_negatives.embedding_model = "no-such-org/no-such-encoder"
    with pytest.raises(EmbeddingError, match=r"'no-such-org/no-such-encoder' is neither a local"):
        build_task(config.data, config.task, config.seed)
    with config.unlocked():
        config.task.hard_negatives.embedding_model = str(tmp_path / "missing_encoder")
    with pytest.raises(EmbeddingError, match="is not a directory"):
        build_task(config.data, config.task, config.seed)
    assert issubclass(EmbeddingError, cli.USER_ERRORS)  # so the CLI prints one line


def test_checkpoint_without_tokenizer_files_says_so_before_the_task(tmp_path, local_checkpoint):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        os.remove(os.path.join(local_checkpoint, name))
    config = _unbuildable(tmp_path, model=local_checkpoint)
    with pytest.raises(ModelLoadError, match=r"the checkpoint has no tokenizer files"):
        extract(config, str(tmp_path / "w"))
    # A hub checkpoint is not listed beforehand: the empty tokenizer it loads is named.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("probing.models.loading._check_tokenizer_files", lambda name, path: None)
        with pytest.raises(ModelLoadError, match=r"its tokenizer is empty \(1 tokens\)"):
            load_model(config.model)


def test_full_disk_is_one_line_and_leaves_no_temporary_file(tmp_path, monkeypatch, capsys):
    target = str(tmp_path / "cache" / "vectors.npy")

    def write_half(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", tmp)

    with pytest.raises(OSError):
        publish_file(target, write_half)
    assert os.listdir(tmp_path / "cache") == []

    def main(argv):
        publish_file(target, write_half)

    monkeypatch.delenv("PROBING_TRACEBACK", raising=False)
    argv = ["probing.extract"]
    if "workdir" in flags.FLAGS:
        # An entry point imported by an earlier test registered --workdir as
        # required in absl's global flags; give it, so parsing reaches main.
        argv.append(f"--workdir={tmp_path / 'w'}")
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exited:
        cli.run_main(main, "probing.extract")
    assert exited.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("probing.extract: error: No space left on device while writing ")
    assert "free space and rerun the same command" in line
    assert os.listdir(tmp_path / "cache") == []
