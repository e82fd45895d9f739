"""summary.json's uncertainty: image-bootstrap intervals of the test predictions, and baselines.

`ImageIntervals` runs probing.probes.bootstrap on the arrays of predictions.npz
(task probes, and the shuffled-label control when trained) and names every
interval as metrics.csv names the metric: plain for the task probe,
`control_<metric>` for the control, `selectivity` for the paired difference
headline - control headline. `compare_layers` gives the paired difference of
two layers on the same resamples ("p (peak > last)"). `trivial_baselines`
scores the baselines of probing.probes.baselines on the test split
(`fold_baselines`: averaged over folds).

With folds (predictions.npz has a `fold` per row) every interval is the
folds × bootstrap one (probing.probes.bootstrap): the statistic is the mean
over folds, as summary.json's `mean`, and one resample of the images of all
folds' test parts moves every fold at once. It is the interval to quote; the
`fold_interval` (Student-t over the folds' means, probing.probes.fold_results)
says how far single re-splits scatter and is not added to it: with K folds the
scatter between folds is itself mostly test-image sampling, which the
bootstrap already counts over all images, so adding it would count it twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from probing.probes import bootstrap as bs
from probing.probes.baselines import baseline_metrics, strongest_baselines
from probing.probes.metrics import SELECTIVITY, control_metric
from probing.probes.stats import CI_LABEL, CONFIDENCE, FOLD_CI_LABEL
from probing.probes.summary import SEED_SPREAD
from probing.store.layout import HEADLINE_METRIC

BASELINES_NOTE = (
    "fitted on the train split's label frequencies, scored on the test labels; `prior` "
    "(random guessing at the train prior) is the metric of its expected confusion counts "
    "(probing/probes/baselines.py)"
)


class ImageIntervals:
    """Bootstrap intervals of one probes/<pooling>/predictions.npz, per layer and metric."""

    def __init__(
        self, predictions: Mapping[str, Any], num_resamples: int = bs.NUM_RESAMPLES, seed: int = 0
    ):
        self.label_kind = str(predictions["label_kind"])
        self.headline = HEADLINE_METRIC[self.label_kind]
        self.layers = [int(x) for x in np.asarray(predictions["layers"])]
        self.result = bs.predictions_bootstrap(predictions, num_resamples, seed)
        self.with_control = len(self.result.sets) > 1

    def _position(self, layer: int) -> int:
        return self.layers.index(int(layer))

    def ci95(self) -> dict[int, dict[str, list[float]]]:
        """layer -> metric (metrics.csv name) -> [low, high]."""
        task = self.result.sets[0]
        out: dict[int, dict[str, list[float]]] = {}
        for i, layer in enumerate(self.layers):
            entry = {m: _interval(task.samples[m][:, i]) for m in bs.METRICS[self.label_kind]}
            if self.with_control:
                control = self.result.sets[1]
                for m in bs.METRICS[self.label_kind]:
                    entry[control_metric(m)] = _interval(control.samples[m][:, i])
                entry[SELECTIVITY] = _interval(
                    task.samples[self.headline][:, i] - control.samples[self.headline][:, i]
                )
            out[layer] = entry
        return out

    def compare_layers(self, layer_a: int, layer_b: int) -> dict[str, Any]:
        """Headline of layer a - layer b, paired on the same resamples (bootstrap.compare)."""
        return bs.layer_difference(
            self.result, self.headline, self._position(layer_a), self._position(layer_b)
        )

    def describe(self) -> dict[str, Any]:
        """What summary.json's "intervals" field says about `ci95`."""
        metrics = list(bs.METRICS[self.label_kind])
        if self.with_control:
            metrics += [control_metric(m) for m in bs.METRICS[self.label_kind]] + [SELECTIVITY]
        if self.result.num_folds > 1:
            label, method = (
                FOLD_CI_LABEL,
                (
                    "percentile interval of the fold-mean metric (each fold's metric on its "
                    "own test rows by its own probes, mean over seeds, then over folds) over "
                    "resamples of the images of every fold's test part with replacement (all "
                    "rows of an image together, one weight per image in every fold that tests "
                    "it), every metric, layer and probe on the same resamples; the resampled "
                    "deviations widened to the folds' scatter (variance over folds / K) where "
                    "that is larger (probing/probes/bootstrap.py)"
                ),
            )
        else:
            label, method = (
                CI_LABEL,
                (
                    "percentile interval of the seed-mean metric over resamples of the test "
                    "images with replacement (all rows of an image together), every metric, "
                    "layer and probe on the same resamples (probing/probes/bootstrap.py)"
                ),
            )
        return {
            "ci95": label,
            "method": method,
            "confidence": CONFIDENCE,
            "num_resamples": self.result.num_resamples,
            "resample_seed": self.result.seed,
            "num_test_images": self.result.num_images,
            "split": "test",
            "metrics": metrics,
            "seed_spread": SEED_SPREAD,
            **({"num_folds": self.result.num_folds} if self.result.num_folds > 1 else {}),
        }


def _interval(samples: np.ndarray) -> list[float]:
    low, high = bs.percentile_interval(samples)
    return [float(low), float(high)]


def trivial_baselines(
    label_kind: str,
    train_labels: np.ndarray,
    train_mask: np.ndarray,
    test_labels: np.ndarray,
    test_mask: np.ndarray,
) -> dict[str, Any]:
    """summary.json's "baselines": every baseline's test metrics and the strongest per metric."""
    multilabel = label_kind == "multilabel"
    values = baseline_metrics(
        label_kind,
        train_labels if multilabel else train_labels[:, 0],
        test_labels if multilabel else test_labels[:, 0],
        train_mask if multilabel else None,
        test_mask if multilabel else None,
    )
    strongest = strongest_baselines(values)
    return {
        "split": "test",
        "definition": BASELINES_NOTE,
        "values": values,
        "strongest": {m: strongest[m] for m in bs.METRICS[label_kind] if m in strongest},
    }


def fold_baselines(label_kind: str, folds: list[tuple[np.ndarray, ...]]) -> dict[str, Any]:
    """summary.json's "baselines" with folds: each fold's baselines (fitted on its train
    labels, scored on its test labels) averaged over folds, as the probes' means are.

    Args:
      folds: per fold (train_labels, train_mask, test_labels, test_mask), the
        arguments of `trivial_baselines`.
    """
    per_fold = [trivial_baselines(label_kind, *arrays)["values"] for arrays in folds]
    values = {
        name: {
            metric: float(np.nanmean([fold[name][metric] for fold in per_fold]))
            for metric in per_fold[0][name]
        }
        for name in per_fold[0]
    }
    strongest = strongest_baselines(values)
    return {
        "split": "test",
        "definition": BASELINES_NOTE + "; with folds, the mean over folds of each fold's value",
        "values": values,
        "strongest": {m: strongest[m] for m in bs.METRICS[label_kind] if m in strongest},
    }
