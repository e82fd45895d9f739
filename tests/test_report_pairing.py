"""The results table's p (peak > last) resamples test images when predictions.npz exists.

The workdir is trained for real (planted signal in layer 2 of 4, the last
layer is noise), so metrics.csv and predictions.npz come from the trainer.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from configs.probe import get_config
from probing.probes.stats import image_bootstrap
from probing.probes.train import train_workdir
from probing.reporting import tables
from probing.reporting.runs import load_runs
from probing.testing.planted import planted_arrays, write_workdir


@pytest.fixture(scope="module")
def trained_location(tmp_path_factory):
    location = str(tmp_path_factory.mktemp("pairing"))
    # Same shapes as tests/test_probes_train.py, so the compiled sweep is reused.
    write_workdir(location, planted_arrays(300, 4, 8, [2], strength=5.0, seed=11))
    config = get_config()
    config.update(num_seeds=2, epochs=4, batch_size=16, learning_rate=3e-2)
    train_workdir(location, config)
    return location


def test_p_resamples_images_when_predictions_exist(trained_location):
    (run,) = load_runs([trained_location])
    assert run.predictions is not None
    row = tables.result_row(run)
    assert (row.best_layer, row.last_layer, row.p_unit) == (2, 3, tables.IMAGE_UNIT)
    # ~60 test images, peak ~0.98 vs last ~0.5: every resample agrees.
    assert row.p_peak_better_than_last == pytest.approx(1 / (1 + tables.BOOTSTRAP_RESAMPLES))
    (cells,) = tables.results_cells([row])
    assert cells[-1].endswith("(image)")
    # It is summary.json's paired bootstrap, on the resamples behind every ci95.
    assert row.p_peak_better_than_last == run.summary["best_layer"]["vs_last"]["p_a_better"]
    assert row.ci_source == "bootstrap"
    # The bootstrap scores the same logits metrics.csv was computed from.
    predictions = run.predictions
    observed = image_bootstrap(
        predictions["logits"][2],
        predictions["logits"][3],
        predictions["labels"],
        predictions["group"],
        "binary",
        num_resamples=10,
    )["difference"]
    assert observed == pytest.approx(row.drop_from_peak, abs=1e-12)


def _without_results_json(location, tmp_path):
    """A folder as trainers before results.json wrote it (or a hand-written one)."""
    os.rename(os.path.join(location, "probes", "mean", "results.json"), tmp_path / "results.json")


def _restore_results_json(location, tmp_path):
    os.replace(tmp_path / "results.json", os.path.join(location, "probes", "mean", "results.json"))


def test_p_falls_back_to_images_then_seeds_for_older_runs(trained_location, tmp_path):
    directory = os.path.join(trained_location, "probes", "mean")
    os.rename(os.path.join(directory, "summary.json"), tmp_path / "summary.json")
    _without_results_json(trained_location, tmp_path)
    try:
        # A run trained before summary.json held the bootstrap: images of predictions.npz.
        (run,) = load_runs([trained_location])
        row = tables.result_row(run)
        assert (row.p_unit, row.ci_source) == (tables.IMAGE_UNIT, "seeds")
        assert row.p_peak_better_than_last == pytest.approx(1 / (1 + tables.BOOTSTRAP_RESAMPLES))
        os.rename(os.path.join(directory, "predictions.npz"), tmp_path / "kept.npz")
        # ... and without predictions.npz either: probe seeds.
        (run,) = load_runs([trained_location])
        assert run.predictions is None
        row = tables.result_row(run)
        assert row.p_unit == tables.SEED_UNIT
        # Both seeds favour the peak, so every resample of seeds does too.
        assert row.p_peak_better_than_last < 0.01
        assert "(seed)" in tables.results_cells([row])[0][-1]
    finally:
        os.rename(tmp_path / "summary.json", os.path.join(directory, "summary.json"))
        if os.path.exists(tmp_path / "kept.npz"):
            os.rename(tmp_path / "kept.npz", os.path.join(directory, "predictions.npz"))
        _restore_results_json(trained_location, tmp_path)


def test_unreadable_predictions_are_reported_with_the_file(trained_location, tmp_path):
    path = os.path.join(trained_location, "probes", "mean", "predictions.npz")
    _without_results_json(trained_location, tmp_path)
    os.rename(path, tmp_path / "kept.npz")
    try:
        with open(path, "wb") as f:
            f.write(b"not an npz")
        with pytest.raises(ValueError, match=r"predictions\.npz is not a readable \.npz"):
            load_runs([trained_location])
        np.savez(path, layers=np.arange(4))
        with pytest.raises(ValueError, match="lacks group, labels, logits"):
            load_runs([trained_location])
    finally:
        os.replace(tmp_path / "kept.npz", path)
        _restore_results_json(trained_location, tmp_path)


def test_a_replaced_result_file_is_refused(trained_location, tmp_path):
    # With results.json, any file replaced after the run was written is refused.
    path = os.path.join(trained_location, "probes", "mean", "predictions.npz")
    os.rename(path, tmp_path / "kept.npz")
    try:
        np.savez(path, layers=np.arange(4))
        with pytest.raises(ValueError, match=r"predictions\.npz does not match results\.json"):
            load_runs([trained_location])
    finally:
        os.replace(tmp_path / "kept.npz", path)
