"""A saved probe applies to features outside the sweep (issue 15, item 5).

probing.probes.apply reads weights.npz and, with WORKSPACE.md's formula,
reproduces the test logits of predictions.npz from the workdir's own test
features: binary and multilabel, one seed or all, and with folds.
"""

from __future__ import annotations

import numpy as np
import pytest

from configs.probe import get_config
from probing.probes.apply import apply_probe, load_probes
from probing.probes.train import train_workdir
from probing.store import layout
from probing.store.workdir import Workdir, WorkdirError
from probing.testing.planted import planted_arrays, write_workdir


def _config(**overrides):
    # The settings of test_probes_train.py (the compiled sweep is shared), without intervals.
    config = get_config()
    config.update(dict(num_seeds=2, epochs=4, batch_size=16, learning_rate=3e-2))
    config.update(dict(bootstrap_resamples=0, **overrides))
    return config


def _trained(folder, num_labels=0, feature_dtype="float32", **overrides):
    # 300 rows, 4 layers, D = 8, as in test_probes_train.py (compiled sweeps are reused).
    arrays = planted_arrays(300, 4, 8, [2], num_labels=num_labels, strength=4.0, seed=3)
    location = str(folder / "w")
    write_workdir(location, arrays, feature_dtype=feature_dtype)
    train_workdir(location, _config(**overrides), poolings=["mean"])
    wd = Workdir(location)
    predictions = np.load(f"{location}/probes/mean/predictions.npz")
    return wd, predictions


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory):
    return _trained(tmp_path_factory.mktemp("binary"))


def test_applied_probes_reproduce_predictions(binary_run):
    _check_reproduces(*binary_run)


@pytest.mark.slow
@pytest.mark.parametrize("num_labels,feature_dtype", [(3, "float32"), (0, "float16")])
def test_applied_probes_reproduce_predictions_multilabel_and_float16(
    tmp_path, num_labels, feature_dtype
):
    _check_reproduces(*_trained(tmp_path, num_labels, feature_dtype))


def _check_reproduces(wd, predictions):
    features = wd.read_array(layout.features("mean"))[predictions["rows"]]
    probes = load_probes(wd, "mean")
    for li, layer in enumerate(predictions["layers"]):
        for si, seed in enumerate(predictions["seeds"]):
            got = probes.logits(features[:, layer], int(layer), int(seed))
            np.testing.assert_allclose(got, predictions["logits"][li, si], atol=1e-5, rtol=0)
        # All seeds at once, from whole feature rows [n, L+1, D].
        np.testing.assert_allclose(
            apply_probe(wd.location, "mean", features, int(layer)),
            predictions["logits"][li],
            atol=1e-5,
            rtol=0,
        )


@pytest.mark.slow
def test_fold_probes_apply_to_their_fold(tmp_path):
    wd, predictions = _trained(tmp_path, folds=3)
    features = wd.read_array(layout.features("mean"))[predictions["rows"]]
    probes = load_probes(wd, "mean")
    assert probes.folds is not None and probes.folds.tolist() == [0, 1, 2]
    for fold in probes.folds:
        rows = predictions["fold"] == fold
        for li, layer in enumerate(predictions["layers"]):
            got = probes.logits(features[rows], int(layer), fold=int(fold))
            np.testing.assert_allclose(got, predictions["logits"][li][:, rows], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"trained with 3 folds.*fold= one of \[0, 1, 2\]"):
        probes.logits(features, 0)


def test_bad_requests_name_what_exists(binary_run):
    wd, _ = binary_run
    features = wd.read_array(layout.features("mean"))[:5]
    with pytest.raises(ValueError, match=r"no probe for layer 9; it holds layers \[0, 1, 2, 3\]"):
        apply_probe(wd, "mean", features, 9)
    with pytest.raises(ValueError, match=r"no probe for seed 7"):
        apply_probe(wd, "mean", features, 1, seed=7)
    with pytest.raises(ValueError, match=r"expected \[n, 8\]"):
        apply_probe(wd, "mean", features[:, 1, :5], 1)
    with pytest.raises(ValueError, match="these probes have no folds"):
        apply_probe(wd, "mean", features, 1, fold=0)
    with pytest.raises(WorkdirError, match=r"no probes were trained for 'last'.*holds mean"):
        apply_probe(wd, "last", features, 1)
