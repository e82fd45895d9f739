"""Bad input to the entry points stops early with a message naming the culprit."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from probing.config_files import REPO_ROOT, load_config
from probing.extraction.runner import extract
from probing.models import ModelLoadError
from probing.probes.train import train_workdir
from probing.store.workdir import WorkdirError


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )


def test_missing_coco_root_names_the_path(tmp_path):
    config = load_config("configs/qwen.py")
    with config.unlocked():
        config.data.coco_root = str(tmp_path / "no_coco_here")
        # A hub id is checked before the data (and fails offline): a local model.
        config.model.name = "tiny:qwen2_vl"
    with pytest.raises(Exception, match="no_coco_here"):
        extract(config, str(tmp_path / "workdir"))
    # Nothing was written: the error came before any work.
    assert not (tmp_path / "workdir" / "manifest.json").exists()


def test_missing_annotation_file_names_the_file(tmp_path):
    (tmp_path / "coco" / "annotations").mkdir(parents=True)
    config = load_config("configs/qwen.py")
    with config.unlocked():
        config.data.coco_root = str(tmp_path / "coco")
        config.model.name = "tiny:qwen2_vl"
    with pytest.raises(Exception, match=r"train2017\.json"):
        extract(config, str(tmp_path / "workdir"))


def test_uncached_hub_id_offline_fails_before_the_task_is_built(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = load_config("configs/qwen.py")
    with config.unlocked():
        config.data.coco_root = str(tmp_path / "no_coco_here")  # would fail if built
        config.model.name = "no-such-org/no-such-model"
    with pytest.raises(ModelLoadError, match=r"no-such-org/no-such-model.*offline mode"):
        extract(config, str(tmp_path / "workdir"))
    assert not (tmp_path / "workdir").exists()


def test_unloadable_model_names_it(tmp_path):
    config = load_config("configs/demo.py")
    with config.unlocked():
        config.model.name = str(tmp_path / "not_a_checkpoint")
    with pytest.raises(ModelLoadError, match="not_a_checkpoint"):
        extract(config, str(tmp_path / "workdir"))


def test_directory_that_is_not_a_workdir(tmp_path):
    probe_config = load_config("configs/probe.py")
    with pytest.raises(WorkdirError, match=r"manifest\.json"):
        train_workdir(str(tmp_path), probe_config)


def test_unknown_config_field_is_rejected_by_the_cli(tmp_path):
    result = _run(
        "probing.extract",
        "--config=configs/demo.py",
        "--config.extract.bacth_size=4",
        f"--workdir={tmp_path / 'w'}",
    )
    assert result.returncode != 0
    assert "bacth_size" in result.stderr
    assert not (tmp_path / "w").exists()


def test_train_cli_on_non_workdir_fails_cleanly(tmp_path):
    result = _run("probing.train_all_layers", f"--workdir={tmp_path}")
    assert result.returncode != 0
    assert "manifest.json" in result.stderr
