"""Stage 2 for a workdir: trains the probe sweep of each pooling and writes probes/<run>/.

train_workdir validates every input (settings, a complete store unless
config.allow_partial, labels, folds, poolings, every pooling's feature
shape and chunk files, from the store's key listing) before anything is
compiled or trained, then runs probing.probes.sweep's streaming sweep per
pooling (with folds when settings.folds asks for them), reading each layer
group once, straight into the sweep's device buffers (data.FeatureReader),
and checking the values as they pass: NaN, Inf or an overflowing magnitude
stops the run there, with the earlier poolings' results written. It writes
metrics.csv, curves.csv, summary.json, probe_config.json, weights.npz and
predictions.npz through probing.probes.results (probing.probes.fold_results
with folds), as one unit (probing.store.atomic), logging the probes that did
not converge. On several hosts every process trains, process 0 writes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from absl import logging

from probing.probes.data import FeatureReader, check_pooling, load_labels
from probing.probes.fold_results import write_fold_results
from probing.probes.folds import make_folds
from probing.probes.results import write_results
from probing.probes.run_names import resolve_run, run_key
from probing.probes.settings import SweepSettings
from probing.probes.sweep import run_streaming_sweep
from probing.store.integrity import check_feature_chunks, require_complete
from probing.store.layout import SCORING_SPLIT, SPLIT_NAMES, WRITTEN, probes_dir
from probing.store.remote import check_remote_reachable
from probing.store.workdir import Workdir, WorkdirError


def _layers_to_probe(config: Any, num_layers: int) -> list[int]:
    layers = [int(x) for x in (config.get("layers") or ())]
    if not layers:
        return list(range(num_layers))
    bad = [x for x in layers if not 0 <= x < num_layers]
    if bad:
        raise ValueError(
            f"config.layers: {bad} do not exist; the workdir has layers 0..{num_layers - 1}"
        )
    return layers


def _check_bootstrap(workdir: Workdir, label_data, settings: SweepSettings) -> None:
    """The image bootstrap of summary.json needs two test images; say so before training."""
    if not settings.bootstrap_resamples:
        return
    test = label_data.split_rows(SPLIT_NAMES.index(SCORING_SPLIT))
    groups = label_data.rows[test] if label_data.groups is None else label_data.groups[test]
    count = np.unique(groups).size
    if count < 2:
        raise ValueError(
            f"{workdir.location}: the {SCORING_SPLIT} split has {count} image(s); the cluster "
            "bootstrap over test images behind summary.json's ci95 needs at least 2. Re-split "
            "the task or set --config.bootstrap_resamples=0 (no intervals)"
        )


def _partial(workdir: Workdir, config: Any) -> dict[str, Any] | None:
    """Refuses an incomplete store unless config.allow_partial; then says how partial it is."""
    manifest = require_complete(workdir, bool(config.get("allow_partial", False)))
    if manifest.get("complete") is True:
        return None
    written = int((workdir.read_array(WRITTEN) == 1).sum())
    return {"rows_written": written, "num_examples": int(manifest["num_examples"])}


def _written(workdir: Workdir, label_data) -> np.ndarray:
    """bool [num_examples]: the rows whose features are written (label_data.rows)."""
    written = np.zeros(int(workdir.manifest()["num_examples"]), bool)
    written[label_data.rows] = True
    return written


def _resolve_run(workdir: Workdir, config: Any, pooling: str, layers: list[int]) -> str:
    """The probes/<run>/ folder of this pooling's run (probing.probes.run_names)."""
    return resolve_run(
        workdir,
        pooling,
        run_key(SweepSettings.from_config(config), layers),
        str(config.get("run_name") or ""),
        bool(config.get("replace_run", False)),
    )


def train_pooling(
    workdir: str | Workdir,
    config: Any,
    pooling: str,
    features_checked: bool = False,
    run: str | None = None,
) -> dict[str, Any]:
    """Trains and writes the probes of one pooling; returns its summary.json content.

    `features_checked`: `check_feature_chunks` already passed for this pooling
    (train_workdir checks every pooling's chunks before training any; values
    are checked as they load). `run`: the
    probes/<run>/ folder, resolved by train_workdir (default: resolved here).
    """
    workdir = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
    settings = SweepSettings.from_config(config)
    partial = _partial(workdir, config)
    label_data = load_labels(workdir)
    check_pooling(workdir, pooling)
    if not features_checked:
        check_feature_chunks(workdir, pooling, _written(workdir, label_data))
    layers = _layers_to_probe(config, label_data.num_layers)
    run = run or _resolve_run(workdir, config, pooling, layers)

    # Values (NaN, Inf, overflow, lost chunks) are checked as each layer group
    # is read into the sweep's buffers: no separate validating read.
    reader = FeatureReader(workdir, pooling, label_data)
    start_time = time.perf_counter()
    result = run_streaming_sweep(
        reader.layers,
        layers,
        label_data.labels,
        label_data.mask,
        label_data.split,
        settings,
        groups=label_data.groups,
        what=f"probe sweep ({pooling})",
        layer_bytes=reader.layer_bytes,
    )
    logging.info(
        "%s: %d rows checked as they loaded, largest |x| %.3g (limit %.3g)",
        reader.name,
        label_data.rows.size,
        reader.max_abs,
        reader.limit,
    )
    writer = write_results if result.folds is None else write_fold_results
    summary = writer(
        workdir, pooling, result, label_data, settings, jax.process_index() == 0, partial, run
    )
    _warn_not_converged(pooling, summary["convergence"])
    best = summary["best_layer"]
    logging.info(
        "%s: %d layers x %d seeds in %.1fs; best layer %d (%s on test %.4f, chosen on val); "
        "results in %s/%s",
        pooling,
        len(layers),
        settings.num_seeds,
        time.perf_counter() - start_time,
        best["layer"],
        best["metric"],
        best["mean"] if best["mean"] is not None else float("nan"),
        workdir.location,
        probes_dir(run),
    )
    return summary


def _warn_not_converged(pooling: str, convergence: dict[str, Any]) -> None:
    """Logs the probes whose best epoch is their last or whose patience never ran out."""
    flagged = convergence["not_converged_probes"]
    if not flagged:
        return
    layers = sorted({probe["layer"] for probe in flagged})
    logging.warning(
        "%s: %d of %d probes did not converge within epochs = %d (best epoch = last epoch, "
        "or still improving by > min_delta = %g within patience = %d), in layers %s; raise "
        "epochs or the learning rate. They are listed in summary.json (convergence).",
        pooling,
        convergence["not_converged"],
        convergence["probes"],
        convergence["max_epochs"],
        convergence["min_delta"],
        convergence["patience"],
        layers,
    )


def resolve_runs(
    workdir: str | Workdir, config: Any, poolings: Sequence[str] | None = None
) -> dict[str, str]:
    """pooling -> the probes/<run>/ folder its run with `config` writes (or wrote: the
    same settings resolve to the same folder after training)."""
    workdir = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
    manifest = workdir.manifest()
    layers = _layers_to_probe(config, int(manifest["num_layers"]))
    return {
        pooling: _resolve_run(workdir, config, pooling, layers)
        for pooling in (poolings or manifest["poolings"])
    }


def train_workdir(
    workdir: str | Workdir, config: Any, poolings: Sequence[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Trains the probes of every pooling (default: all in the manifest).

    Returns:
      pooling name -> its summary (the content of probes/<run>/summary.json).
    """
    workdir = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
    # A bucket that does not answer fails in seconds, not after minutes of retries.
    check_remote_reachable(workdir, write=jax.process_index() == 0)
    manifest = workdir.manifest()
    poolings = list(poolings or manifest["poolings"])
    if not poolings:
        raise WorkdirError(f"{workdir.location}/manifest.json lists no poolings")
    # Validate everything up front: a bad second pooling (or NaN, Inf, a huge
    # value or a lost chunk in its features) should not surface after the
    # first one has trained.
    settings = SweepSettings.from_config(config)
    _partial(workdir, config)
    label_data = load_labels(workdir)
    _check_bootstrap(workdir, label_data, settings)
    make_folds(label_data.split, label_data.groups, label_data.labels, label_data.mask, settings)
    for pooling in poolings:
        check_pooling(workdir, pooling)
    # Every run's folder is named (and a bad name or a clash refused) before the
    # features are read.
    runs = resolve_runs(workdir, config, poolings)
    # The cheap checks of every pooling's features (shape, chunk files present)
    # come before any training; their values are checked as each is loaded
    # (a bad value then stops the run after the poolings before it are written).
    written = _written(workdir, label_data)
    for pooling in poolings:
        FeatureReader(workdir, pooling, label_data)  # shape and dtype against the manifest
        check_feature_chunks(workdir, pooling, written)
    return {
        pooling: train_pooling(workdir, config, pooling, features_checked=True, run=runs[pooling])
        for pooling in poolings
    }
