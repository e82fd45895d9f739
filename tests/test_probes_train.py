"""Tests of probing.probes.train on workdirs written by hand: outputs, reruns, bad input, CLI."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs.probe import get_config
from probing.probes.data import load_features, load_labels
from probing.probes.intervals import ImageIntervals
from probing.probes.stats import seed_summary
from probing.probes.train import train_workdir
from probing.store.layout import GROUP, LABEL_MASK, LABELS, RUN_COLUMNS, SPLIT, WRITTEN
from probing.store.workdir import Workdir, WorkdirError
from probing.testing.planted import planted_arrays, write_workdir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIGNAL_LAYER = 2


def _config(**overrides):
    config = get_config()
    config.num_seeds = 2
    config.epochs = 4
    config.batch_size = 16
    config.learning_rate = 3e-2
    config.update(overrides)
    return config


def _binary_arrays(seed=0):
    # 300 rows, 4 layers, D = 8, as in test_probes_sweep.py: same shapes, so
    # the compiled sweep is reused within one pytest process.
    return planted_arrays(300, 4, 8, [SIGNAL_LAYER], strength=5.0, seed=seed)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    location = str(tmp_path_factory.mktemp("binary"))
    arrays = _binary_arrays()
    # Two extra unwritten rows hold NaN: a reader must skip them, not fail on them.
    extra = {
        "features": np.full((2, 4, 8), np.nan, np.float32),
        "labels": np.array([0, 1], np.int8),
        "split": np.array([0, 2], np.int8),
        "group": np.array([1000, 1001]),
    }
    arrays = {k: np.concatenate([arrays[k], extra[k]]) for k in extra}
    written = np.ones(302, np.uint8)
    written[300:] = 0
    write_workdir(location, arrays, poolings=("mean", "last"), written=written)
    # Not every row is written, so the store is partial: probing it must be asked for.
    summaries = train_workdir(location, _config(allow_partial=True), poolings=["mean"])
    return location, summaries


def _read_text(path):
    with open(path) as f:
        return f.read()


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_outputs_follow_the_contract(trained):
    location, summaries = trained
    directory = os.path.join(location, "probes", "mean")
    assert sorted(os.listdir(directory)) == [
        "curves.csv",
        "metrics.csv",
        "predictions.npz",
        "probe_config.json",
        "results.json",
        "summary.json",
        "weights.npz",
    ]
    assert not os.path.exists(os.path.join(location, "probes", "last"))
    rows = _read_csv(os.path.join(directory, "metrics.csv"))
    assert list(rows[0]) == [*RUN_COLUMNS, "layer", "seed", "split", "metric", "value"]
    metrics = {r["metric"] for r in rows}
    for name in ("accuracy", "precision", "recall", "f1", "roc_auc", "tp", "fp", "tn", "fn"):
        assert {name, f"control_{name}", f"majority_{name}"} <= metrics
    assert {"loss", "selectivity", "best_epoch"} <= metrics
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    counts = [
        int(float(r["value"]))
        for r in rows
        if r["split"] == "test" and r["layer"] == "0" and r["seed"] == "0"
        and r["metric"] in ("tp", "fp", "tn", "fn")
    ]  # fmt: skip
    assert sum(counts) == load_labels(location).split_rows(2).size

    curves = _read_csv(os.path.join(directory, "curves.csv"))
    assert list(curves[0]) == [*RUN_COLUMNS, "layer", "seed", "epoch", "split", "loss"]
    assert len(curves) == 4 * 2 * 4 * 2  # layers x seeds x epochs x (train, val)

    summary = json.loads(_read_text(os.path.join(directory, "summary.json")))
    assert summary == json.loads(json.dumps(summaries["mean"]))
    assert summary["headline_metric"] == "accuracy" and summary["num_seeds"] == 2
    assert [entry["layer"] for entry in summary["layers"]] == [0, 1, 2, 3]
    accuracy = summary["layers"][SIGNAL_LAYER]["test"]["accuracy"]
    assert set(accuracy) == {"mean", "ci95", "seed_spread", "std", "n"} and accuracy["n"] == 2
    assert accuracy["ci95"][0] <= accuracy["mean"] <= accuracy["ci95"][1]
    # ci95 is the image bootstrap of predictions.npz, seed_spread the t interval over seeds.
    with np.load(os.path.join(directory, "predictions.npz")) as archive:
        predictions = {key: archive[key] for key in archive.files}
    boot = ImageIntervals(predictions, num_resamples=10_000)
    assert accuracy["ci95"] == boot.ci95()[SIGNAL_LAYER]["accuracy"]
    values = [float(r["value"]) for r in rows if (r["layer"], r["split"], r["metric"]) == (str(SIGNAL_LAYER), "test", "accuracy")]  # fmt: skip
    assert accuracy["seed_spread"] == seed_summary(np.array(values))["ci95"]
    assert summary["intervals"]["ci95"] == "95% CI: cluster bootstrap over test images"
    assert summary["intervals"]["num_test_images"] == len(np.unique(predictions["group"]))
    assert "selectivity" in summary["intervals"]["metrics"]
    assert summary["best_layer"]["vs_last"]["ci95"][0] > 0  # layer 2 beats noise layer 3
    strongest = summary["baselines"]["strongest"]["accuracy"]
    majority = [float(r["value"]) for r in rows if (r["split"], r["metric"]) == ("test", "majority_accuracy")]  # fmt: skip
    assert strongest["baseline"] == "majority" and strongest["value"] == pytest.approx(majority[0])
    beats = [entry["beats_strongest_baseline"] for entry in summary["layers"]]
    assert beats[SIGNAL_LAYER] is True and beats.count(True) == 1
    assert summary["best_layer"]["layer"] == SIGNAL_LAYER
    assert summary["best_layer"]["selected_on"] == "val"
    assert summary["best_layer"]["mean"] > 0.9
    # 4 epochs with patience 5: no probe can have converged, and all are named.
    convergence = summary["convergence"]
    assert convergence["max_epochs"] == 4 and convergence["probes"] == 4 * 2 * 2
    assert convergence["not_converged"] == len(convergence["not_converged_probes"]) == 16
    noise = [summary["layers"][i]["test"]["accuracy"]["mean"] for i in (0, 1, 3)]
    assert max(noise) < 0.7
    selectivity = summary["layers"][SIGNAL_LAYER]["test"]["selectivity"]["mean"]
    assert selectivity > 0.3


def test_weights_reproduce_the_logged_test_accuracy(trained):
    location, summaries = trained
    weights = np.load(os.path.join(location, "probes", "mean", "weights.npz"))
    assert weights["kernel"].shape == (4, 2, 8, 1)
    labels = load_labels(location)
    features = load_features(location, "mean", labels, [SIGNAL_LAYER])[0]
    test = labels.split_rows(2)
    standardized = (features[test] - weights["mean"][SIGNAL_LAYER]) / weights["scale"][SIGNAL_LAYER]
    accuracies = []
    for seed in range(2):
        logits = (
            standardized @ weights["kernel"][SIGNAL_LAYER, seed]
            + weights["bias"][SIGNAL_LAYER, seed]
        )
        accuracies.append(((logits[:, 0] > 0) == labels.labels[test, 0]).mean())
    expected = summaries["mean"]["layers"][SIGNAL_LAYER]["test"]["accuracy"]["mean"]
    assert np.mean(accuracies) == pytest.approx(expected)


def test_predictions_hold_the_scored_test_logits_with_rows_and_images(trained):
    location, summaries = trained
    predictions = np.load(os.path.join(location, "probes", "mean", "predictions.npz"))
    labels = load_labels(location)
    test = labels.split_rows(2)
    assert predictions["logits"].shape == (4, 2, test.size)
    assert predictions["control_logits"].shape == (4, 2, test.size)
    np.testing.assert_array_equal(predictions["rows"], labels.rows[test])
    np.testing.assert_array_equal(predictions["group"], labels.groups[test])
    np.testing.assert_array_equal(predictions["labels"], labels.labels[test, 0])
    assert predictions["layers"].tolist() == [0, 1, 2, 3]
    assert str(predictions["label_kind"]) == "binary"
    # The unwritten rows 300 and 301 are left out; row 301 was a test row.
    assert 301 not in predictions["rows"]
    for layer in range(4):
        accuracy = ((predictions["logits"][layer] > 0) == predictions["labels"]).mean()
        expected = summaries["mean"]["layers"][layer]["test"]["accuracy"]["mean"]
        assert accuracy == pytest.approx(expected, abs=1e-12)


@pytest.mark.slow
def test_rerun_gives_identical_metrics(trained, tmp_path):
    location, _ = trained
    before = _read_text(os.path.join(location, "probes", "mean", "metrics.csv"))
    train_workdir(location, _config(allow_partial=True), poolings=["mean"])
    after = _read_text(os.path.join(location, "probes", "mean", "metrics.csv"))
    assert before == after
    # Other settings are another run (probing.probes.run_names): probes/mean stays.
    different_seed = train_workdir(location, _config(seed=1, allow_partial=True), poolings=["mean"])
    other = [name for name in os.listdir(os.path.join(location, "probes")) if name != "mean"]
    assert different_seed["mean"]["num_seeds"] == 2 and len(other) == 1
    after_seed = _read_text(os.path.join(location, "probes", other[0], "metrics.csv"))
    assert after_seed != before
    assert _read_text(os.path.join(location, "probes", "mean", "metrics.csv")) == before


def test_multilabel_workdir_trains_and_reports_macro_f1(tmp_path):
    arrays = planted_arrays(300, 4, 8, [1], num_labels=4, strength=5.0, seed=4)
    write_workdir(str(tmp_path), arrays, label_names=["cat", "dog", "car", "cup"])
    summary = train_workdir(str(tmp_path), _config(num_seeds=1))["mean"]
    predictions = np.load(os.path.join(str(tmp_path), "probes", "mean", "predictions.npz"))
    num_test = int((arrays["split"] == 2).sum())
    assert predictions["logits"].shape == (4, 1, num_test, 4)
    assert predictions["mask"].shape == predictions["labels"].shape == (num_test, 4)
    assert summary["headline_metric"] == "macro_f1"
    assert summary["best_layer"]["layer"] == 1
    layer = summary["layers"][1]["test"]
    assert layer["macro_f1"]["mean"] > 0.85
    assert {"f1/cat", "precision/dog", "recall/car", "micro_f1"} <= set(layer)
    assert {"control_macro_f1", "majority_macro_f1", "selectivity"} <= set(layer)
    assert "control_f1/cat" not in layer


# ------------------------------------------------------------------ bad input
@pytest.fixture()
def valid_workdir(tmp_path):
    arrays = planted_arrays(60, 3, 4, [1], seed=5)
    return write_workdir(str(tmp_path), arrays), arrays


def _expect_error(location, match):
    with pytest.raises(WorkdirError, match=match):
        train_workdir(location, _config())


def test_missing_array_is_named(valid_workdir):
    workdir, _ = valid_workdir
    os.remove(os.path.join(workdir.local_path, SPLIT, "zarr.json"))
    _expect_error(workdir.location, "array arrays/split is missing")


def test_missing_manifest_is_reported(tmp_path):
    _expect_error(str(tmp_path), "no manifest.json")


def test_split_without_positives_is_rejected(valid_workdir):
    workdir, arrays = valid_workdir
    labels = arrays["labels"].copy()
    labels[arrays["split"] == 1] = 0
    workdir.write_array(LABELS, labels)
    _expect_error(workdir.location, "the val split has no positive label")


def test_nan_features_name_layer_and_rows(valid_workdir):
    workdir, arrays = valid_workdir
    features = arrays["features"].copy()
    features[[3, 7], 2, 0] = np.inf
    features[7, 2, 1] = np.nan
    workdir.write_array("features/mean", features)
    _expect_error(workdir.location, r"layer\(s\) 2 hold NaN or Inf in rows 3, 7;")


def test_labels_outside_zero_one_are_rejected(valid_workdir):
    workdir, arrays = valid_workdir
    labels = arrays["labels"].copy()
    labels[4] = 2
    workdir.write_array(LABELS, labels)
    _expect_error(workdir.location, "labels must be 0 or 1; rows 4")


def test_mask_that_scores_nothing_is_rejected(tmp_path):
    arrays = planted_arrays(60, 3, 4, [1], num_labels=2, seed=6)
    workdir = write_workdir(str(tmp_path), arrays)
    mask = arrays["label_mask"].copy()
    mask[arrays["split"] == 2] = 0
    workdir.write_array(LABEL_MASK, mask)
    _expect_error(workdir.location, "the test split has no scored label entry")


def test_no_written_rows_and_unknown_pooling_are_rejected(valid_workdir):
    workdir, _ = valid_workdir
    with pytest.raises(WorkdirError, match=r"pooling 'max' is not in manifest\.json"):
        train_workdir(workdir.location, _config(), poolings=["max"])
    workdir.write_array(WRITTEN, np.zeros(60, np.uint8))
    _expect_error(workdir.location, "no row is marked written")


def test_bad_config_value_is_rejected_before_training(valid_workdir):
    workdir, _ = valid_workdir
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        train_workdir(workdir.location, _config(batch_size=0))


def test_one_test_image_is_an_error_before_training(valid_workdir):
    workdir, arrays = valid_workdir
    group = arrays["group"].copy()
    group[arrays["split"] == 2] = 999  # every test row one image
    workdir.write_array(GROUP, group)
    with pytest.raises(ValueError, match="the test split has 1 image"):
        train_workdir(workdir.location, _config())
    assert not os.path.exists(os.path.join(workdir.local_path, "probes"))


@pytest.mark.slow
def test_command_line_runs_from_another_directory(tmp_path):
    location = str(tmp_path / "wd")
    write_workdir(location, planted_arrays(60, 2, 4, [1], seed=7))
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    command = [
        sys.executable, "-m", "probing.train_all_layers", f"--workdir={location}",
        "--config.num_seeds=1", "--config.epochs=1", "--config.controls=False",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=str(tmp_path), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    # A one-epoch sweep is too short for a progress line (probing.progress): the log
    # has the compilation step, stdout the one-screen summary.
    assert "probe config:" in done.stderr and "set up and compiled in" in done.stderr
    assert "best layer" in done.stdout and f"{location}/probes/mean/" in done.stdout
    summary = json.loads(_read_text(os.path.join(location, "probes", "mean", "summary.json")))
    assert summary["num_seeds"] == 1
    bad = subprocess.run(
        [*command[:4], "--config.no_such_field=1"],
        cwd=str(tmp_path), env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode != 0 and "no_such_field" in bad.stderr


def test_workdir_class_reads_what_was_written(valid_workdir):
    workdir, arrays = valid_workdir
    assert isinstance(workdir, Workdir)
    labels = load_labels(workdir.location)
    np.testing.assert_array_equal(labels.labels[:, 0], arrays["labels"])
