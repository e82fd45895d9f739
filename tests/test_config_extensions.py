"""Configs a researcher can live with: field help, comma lists, their own adapters and tasks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from probing.config_files import accept_comma_lists, flatten, load_config
from probing.config_help import describe
from probing.models import default_model_config, load_model
from probing.models.qwen2_vl import Qwen2VLAdapter
from probing.models.registry import UnknownFamilyError
from probing.tasks import build_task, default_data_config, default_task_config
from probing.tasks.custom import TaskRows

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ help


@pytest.mark.parametrize("spec", ["configs/qwen.py:category", "configs/probe.py"])
def test_help_lists_every_field_with_value_and_comment(spec):
    text = describe(spec)
    fields = flatten(load_config(spec))
    for field, value in fields.items():
        assert f"\n{field} = {value!r}\n" in text + "\n", field
    assert "(undocumented)" not in text


def test_help_takes_the_definition_comment_over_a_setup_override():
    text = describe("configs/qwen.py:category")
    # Defined with its comment in probing.tasks.config; configs/qwen.py's setup
    # overrides it with a comment about the command line.
    entry = text.split("\ndata.coco_root = ", 1)[1].split("\n", 2)[1]
    assert entry.strip().startswith("Directory holding annotations/")
    poolings = text.split("\nextract.poolings = ", 1)[1].split("\n", 2)[1]
    assert poolings.strip().startswith("Poolings written in one pass")


def test_config_help_flag_prints_the_probe_config_and_exits():
    run = subprocess.run(
        [sys.executable, "-m", "probing.train_all_layers", "--workdir=unused", "--config.help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "\nnum_seeds = 3\n    Probes trained per layer" in run.stdout


# ------------------------------------------------------------ comma lists


def _parse(monkeypatch, *args):
    # ml_collections reads overrides from sys.argv while it loads the config file.
    argv = ["prog", *args]
    monkeypatch.setattr(sys, "argv", argv)
    accept_comma_lists()
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "test", flag_values=values)
    values(argv)
    return values.config


def test_tuple_fields_accept_comma_separated_values(monkeypatch):
    config = _parse(
        monkeypatch,
        "--config=configs/demo.py:qwen2_vl,caption",
        "--config.extract.poolings=mean,max",
    )
    assert config.extract.poolings == ("mean", "max")
    config = _parse(
        monkeypatch,
        "--config=configs/probe.py",
        "--config.layers=1,2",
        "--config.grid.learning_rate=1e-3,1e-2",
        "--config.grid.dropout=(0.1,)",  # the literal form still works
    )
    assert config.layers == (1, 2)
    assert config.grid.learning_rate == (1e-3, 1e-2)
    assert config.grid.dropout == (0.1,)


# ------------------------------------------------- a user's model adapter


class ShoutingQwenAdapter(Qwen2VLAdapter):
    """A user's adapter, defined outside probing: a family of its own."""

    family = "shouting_qwen"
    model_types = ()


def _model_config(**overrides):
    config = default_model_config()
    config.name = "tiny:qwen2_vl"
    config.device = "cpu"
    config.update(overrides)
    return config


def test_model_adapter_by_import_path_is_used(single_thread):
    _, _, adapter = load_model(_model_config(adapter=f"{__name__}:ShoutingQwenAdapter"))
    assert type(adapter) is ShoutingQwenAdapter and adapter.family == "shouting_qwen"


def test_bad_adapter_paths_are_one_clear_line():
    with pytest.raises(ValueError, match=r"model.adapter='nodots' is not an import path"):
        load_model(_model_config(adapter="nodots"))
    with pytest.raises(UnknownFamilyError, match="not a subclass of"):
        load_model(_model_config(adapter=f"{__name__}:_model_config"))


# ------------------------------------------------------- a user's task


def parity_rows(dataset, splits, task, seed):
    """A user's task: does the image have an even number of instance annotations?"""
    examples, split_names, labels = [], [], []
    for split, ids in splits.items():
        for image_id in ids:
            count = len(dataset.instance_annotations(image_id))
            examples.append({"image_id": int(image_id), "prompt": "Count the objects.", "n": count})
            split_names.append(split)
            labels.append(int(count) % 2 == 0)
    return TaskRows(
        examples=examples,
        split_names=split_names,
        labels=np.asarray(labels, np.int8),
        label_names=["even"],
        label_kind="binary",
        prompt_template="Count the objects.",
        stats={"seed_seen": seed},
    )


def wrong_split_rows(dataset, splits, task, seed):
    rows = parity_rows(dataset, splits, task, seed)
    rows.split_names[0] = "test" if rows.split_names[0] != "test" else "train"
    return rows


def _data(tmp_path):
    data = default_data_config()
    data.synthetic.num_images = 40
    data.synthetic.cache_dir = str(tmp_path)
    return data


def _task(builder):
    task = default_task_config()
    task.kind = "parity"
    task.builder = builder
    task.split_sizes.val = 8
    task.split_sizes.test = 8
    return task


def test_task_builder_by_import_path_writes_the_rows(tmp_path):
    table = build_task(_data(tmp_path), _task(f"{__name__}:parity_rows"), seed=3)
    assert table.task == "parity" and table.label_kind == "binary"
    assert table.num_rows == 40 and table.stats["seed_seen"] == 3
    assert [e["row"] for e in table.examples] == list(range(40))
    by_split = {name: set(ids) for name, ids in table.splits.items()}
    for example, code in zip(table.examples, table.split, strict=True):
        assert example["image_id"] in by_split[("train", "val", "test")[code]]
        assert example["split"] == ("train", "val", "test")[code]
    assert table.labels.dtype == np.int8 and set(np.unique(table.labels)) <= {0, 1}


def test_task_builder_rows_are_checked(tmp_path):
    with pytest.raises(ValueError, match=r"wrong_split_rows.*row 0 is in split .* its image"):
        build_task(_data(tmp_path), _task(f"{__name__}:wrong_split_rows"), seed=0)
    with pytest.raises(ValueError, match="has no 'missing'"):
        build_task(_data(tmp_path), _task(f"{__name__}:missing"), seed=0)


@pytest.mark.slow
def test_user_task_and_adapter_extract_and_train(tmp_path, single_thread):
    """Both plugged in by import path, end to end: a workdir every later stage reads."""
    from probing.extraction.runner import extract

    config = load_config("configs/demo.py:qwen2_vl,caption")
    config.unlock()
    config.model.adapter = f"{__name__}:ShoutingQwenAdapter"
    config.task = _task(f"{__name__}:parity_rows")
    config.data = _data(tmp_path)
    config.extract.poolings = ("mean",)
    manifest = extract(config, str(tmp_path / "wd"))
    assert manifest["complete"] and manifest["task"] == "parity"
    assert manifest["model"]["family"] == "shouting_qwen"
    with open(tmp_path / "wd" / "examples.jsonl") as f:
        assert json.loads(f.readline())["prompt"] == "Count the objects."
