"""End to end: every real-model config's smoke variant, extraction → probes → report.

Also checks that the workdir the extractor writes follows WORKSPACE.md to the
letter, since train_all_layers and the report accept any workdir that does.
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from probing.config_files import load_config
from probing.extraction.runner import extract
from probing.probes.train import train_workdir
from probing.reporting import build_report
from probing.store import layout
from probing.store.workdir import Workdir

# Every test here extracts with tiny models first (a minute of setup).
pytestmark = pytest.mark.slow

SMOKE_RUNS = {
    "qwen2_vl_caption": "configs/qwen.py:smoke",
    "fast_vlm_category": "configs/fastvlm.py:category,smoke",
    # Tao et al.'s construction: all categories, WithCat prompts, prefix sharing.
    "qwen2_vl_category_tao_withcat": "configs/qwen.py:category,tao,withcat,smoke",
}
MANIFEST_FIELDS = {
    "format_version",
    "model",
    "library_versions",
    "dtype",
    "num_examples",
    "num_layers",
    "hidden_size",
    "poolings",
    "label_kind",
    "label_names",
    "prompt_template",
    "complete",
}


@pytest.fixture(scope="module")
def probed_workdirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    probe_config = load_config("configs/probe.py")
    with probe_config.unlocked():
        probe_config.num_seeds = 2
        probe_config.epochs = 3
    workdirs = {}
    for name, spec in SMOKE_RUNS.items():
        workdir = str(root / name)
        extract(load_config(spec), workdir)
        train_workdir(workdir, probe_config)
        workdirs[name] = workdir
    return workdirs


def _check_contract(workdir: str) -> dict:
    wd = Workdir(workdir)
    manifest = wd.read_json("manifest.json")
    assert set(manifest) >= MANIFEST_FIELDS, MANIFEST_FIELDS - set(manifest)
    assert manifest["complete"] is True
    n, layers, dim = manifest["num_examples"], manifest["num_layers"], manifest["hidden_size"]
    examples = wd.read_jsonl("examples.jsonl")
    assert len(examples) == n
    assert [row["row"] for row in examples] == list(range(n))
    assert {"image_id", "prompt", "split"} <= set(examples[0])

    written = wd.read_array("arrays/written")
    assert written.dtype == np.uint8 and written.shape == (n,) and written.all()
    split = wd.read_array("arrays/split")
    group = wd.read_array("arrays/group")
    labels = wd.read_array("arrays/labels")
    assert split.dtype == np.int8 and set(np.unique(split)) == {0, 1, 2}
    assert group.dtype == np.int64 and group.shape == (n,)
    assert labels.dtype == np.int8 and set(np.unique(labels)) <= {0, 1}
    # Splits are grouped by image: no image id in two splits.
    for image_id in np.unique(group):
        assert len(np.unique(split[group == image_id])) == 1
    if manifest["label_kind"] == "multilabel":
        mask = wd.read_array("arrays/label_mask")
        k = len(manifest["label_names"])
        assert labels.shape == (n, k) and mask.shape == (n, k) and mask.dtype == np.uint8
    else:
        assert labels.shape == (n,)

    batch_size = wd.read_json("config.json")["extract"]["batch_size"]
    for pooling in manifest["poolings"]:
        arr = wd.open_array(f"features/{pooling}")
        assert tuple(arr.shape) == (n, layers, dim)
        # A chunk (shard) per batch of every layer, read one layer at a time.
        assert tuple(arr.chunk_layout.write_chunk.shape) == (batch_size, layers, dim)
        assert tuple(arr.chunk_layout.read_chunk.shape) == (batch_size, 1, dim)
        features = np.asarray(arr.read().result())
        assert np.isfinite(features).all()
        # Different rows give different features (the store is not all zeros).
        assert np.abs(features[0] - features[-1]).max() > 0
        # A zarr hierarchy with named axes (WORKSPACE.md), as zarr-python reads it.
        with open(os.path.join(workdir, "features", pooling, "zarr.json")) as f:
            assert json.load(f)["dimension_names"] == ["row", "layer", "dim"]
    for group in layout.ZARR_GROUPS:
        with open(os.path.join(workdir, group, layout.ZARR_JSON)) as f:
            assert json.load(f)["node_type"] == "group"
    return manifest


@pytest.mark.parametrize("name", list(SMOKE_RUNS))
def test_smoke_workdir_follows_contract_and_is_probed(probed_workdirs, name):
    workdir = probed_workdirs[name]
    manifest = _check_contract(workdir)
    for pooling in manifest["poolings"]:
        probe_dir = os.path.join(workdir, "probes", pooling)
        with open(os.path.join(probe_dir, "metrics.csv")) as f:
            rows = list(csv.DictReader(f))
        assert list(rows[0]) == [*layout.RUN_COLUMNS, *layout.METRICS_COLUMNS]
        layers = {int(r["layer"]) for r in rows if r["split"] == "test"}
        assert layers == set(range(manifest["num_layers"]))
        seeds = {int(r["seed"]) for r in rows if r["seed"] not in ("", "-1")}
        assert len(seeds) == 2
        with open(os.path.join(probe_dir, "curves.csv")) as f:
            assert next(csv.reader(f)) == [*layout.RUN_COLUMNS, *layout.CURVES_COLUMNS]
        with open(os.path.join(probe_dir, "summary.json")) as f:
            summary = json.load(f)
        assert len(summary["layers"]) == manifest["num_layers"]
        assert 0 <= summary["best_layer"]["layer"] < manifest["num_layers"]


def test_report_over_smoke_runs(probed_workdirs, tmp_path):
    report = build_report(list(probed_workdirs.values()), str(tmp_path / "report"))
    with open(report) as f:
        text = f.read()
    # Smoke variants run the checkpoints trained on the generated world.
    assert "trained:qwen2_vl" in text and "trained:fast_vlm" in text
    figures = os.listdir(tmp_path / "report" / "figures")
    assert any(f.startswith("caption") and f.endswith(".png") for f in figures)
    assert any(f.startswith("category") and f.endswith(".png") for f in figures)


def test_rerun_resumes_without_recomputing(probed_workdirs, caplog):
    workdir = probed_workdirs["qwen2_vl_caption"]
    before = Workdir(workdir).read_array("features/mean")
    with caplog.at_level("INFO"):
        extract(load_config(SMOKE_RUNS["qwen2_vl_caption"]), workdir)
    assert "Extracting 0 of" in caplog.text
    np.testing.assert_array_equal(Workdir(workdir).read_array("features/mean"), before)


@pytest.mark.parametrize("arg", ["qwen2_vl,caption", "fast_vlm,category"])
def test_demo_config_loads(arg):
    config = load_config(f"configs/demo.py:{arg}")
    family, task = arg.split(",")
    assert config.model.name == f"trained:{family}" and config.task.kind == task
    assert not config.model.random_init
    # Category runs also pool the image tokens alone (what the image features hold).
    assert ("image_mean" in config.extract.poolings) == (task == "category")
    untrained = load_config(f"configs/demo.py:{arg},untrained")
    assert untrained.model.name == f"trained:{family}" and untrained.model.random_init
    assert load_config(f"configs/demo.py:{arg},tiny").model.name == f"tiny:{family}"


@pytest.mark.parametrize("spec", ["configs/qwen.py:smoke", "configs/fastvlm.py:category,smoke"])
def test_smoke_variants_run_the_trained_checkpoints(spec):
    config = load_config(spec)
    family = "qwen2_vl" if "qwen" in spec else "fast_vlm"
    assert config.model.name == f"trained:{family}" and not config.model.random_init


def test_demo_family_without_trained_checkpoint_says_what_to_do():
    with pytest.raises(ValueError, match=r"'llava' has no trained checkpoint.*',tiny'"):
        load_config("configs/demo.py:llava")
    assert load_config("configs/demo.py:llava,tiny").model.name == "tiny:llava"
