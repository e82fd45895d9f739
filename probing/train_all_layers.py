"""Stage 2: train linear probes for every layer and seed of a workdir (JAX).

  python -m probing.train_all_layers --workdir=DIR [--config=configs/probe.py]
      [--config.num_seeds=5] [--pooling=mean]

Reads any workdir that follows WORKSPACE.md, trains the sweep of
probing.probes.sweep for each pooling and writes probes/<pooling>/
(metrics.csv, curves.csv, summary.json, probe_config.json, weights.npz,
predictions.npz). All inputs are validated before anything is compiled or
trained.

Devices: the sweep's layer axis is sharded over `config.devices` devices (0 =
all JAX sees). On several hosts (a TPU VM slice, a multi-node GPU job) run the
same command on every host with `--config.distributed=True`; see
launch/train_tpu_vm.sh. Every host reads the workdir, only process 0 writes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from probing.cli import run_main
from probing.probes.data import check_pooling, load_features, load_labels
from probing.probes.results import write_results
from probing.probes.sweep import SweepSettings, run_streaming_sweep
from probing.store.layout import probes_dir
from probing.store.workdir import Workdir, WorkdirError

_DEFAULT_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "probe.py"
)

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir written by probing.extract.")
_POOLING = flags.DEFINE_list(
    "pooling", None, "Poolings to probe (comma-separated); default: all in the manifest."
)
_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG, "Probe config file (configs/probe.py).", lock_config=True
)
flags.mark_flag_as_required("workdir")


def _layers_to_probe(config: Any, num_layers: int) -> list[int]:
    layers = [int(x) for x in (config.get("layers", ()) or ())]
    if not layers:
        return list(range(num_layers))
    bad = [x for x in layers if not 0 <= x < num_layers]
    if bad:
        raise ValueError(
            f"config.layers: {bad} do not exist; the workdir has layers 0..{num_layers - 1}"
        )
    return layers


def train_pooling(workdir: str | Workdir, config: Any, pooling: str) -> dict[str, Any]:
    """Trains and writes the probes of one pooling; returns its summary.json content."""
    workdir = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
    settings = SweepSettings.from_config(config)
    label_data = load_labels(workdir)
    check_pooling(workdir, pooling)
    layers = _layers_to_probe(config, label_data.num_layers)

    if settings.layer_group_size and settings.layer_group_size < len(layers):
        # Streaming reads groups lazily; check every layer first so bad features
        # stop the run before training instead of after the first groups.
        for start in range(0, len(layers), settings.layer_group_size):
            load_features(
                workdir, pooling, label_data, layers[start : start + settings.layer_group_size]
            )

    start_time = time.perf_counter()
    result = run_streaming_sweep(
        lambda group: load_features(workdir, pooling, label_data, group),
        layers,
        label_data.labels,
        label_data.mask,
        label_data.split,
        settings,
    )
    summary = write_results(
        workdir, pooling, result, label_data, settings, write=jax.process_index() == 0
    )
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
        probes_dir(pooling),
    )
    return summary


def train_workdir(
    workdir: str | Workdir, config: Any, poolings: Sequence[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Trains the probes of every pooling (default: all in the manifest).

    Returns:
      pooling name -> its summary (the content of probes/<pooling>/summary.json).
    """
    workdir = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
    manifest = workdir.manifest()
    poolings = list(poolings or manifest["poolings"])
    if not poolings:
        raise WorkdirError(f"{workdir.location}/manifest.json lists no poolings")
    # Validate everything up front: a bad second pooling should not surface
    # after the first one has trained.
    SweepSettings.from_config(config)
    load_labels(workdir)
    for pooling in poolings:
        check_pooling(workdir, pooling)
    return {pooling: train_pooling(workdir, config, pooling) for pooling in poolings}


def use_every_cpu_core() -> None:
    """Gives JAX one CPU device per core, so the layer mesh uses all of them.

    XLA runs one CPU device's program on about one core; with a device per
    core the layer-sharded sweep (bitwise equal to one device) runs in
    parallel. Must run before JAX initialises its backends; a device count
    forced through XLA_FLAGS (tests) is left alone. No effect on GPU or TPU.
    """
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return
    jax.config.update("jax_num_cpu_devices", os.cpu_count() or 1)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = _CONFIG.value
    use_every_cpu_core()
    if config.get("distributed", False):
        # Must precede any other JAX call; coordinator address, process count
        # and id come from the environment (TPU VM, SLURM, or JAX_* variables).
        jax.distributed.initialize()
    logging.info("probe config:\n%s", config)
    logging.info(
        "JAX: process %d of %d, %d local / %d global %s device(s)",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        jax.default_backend(),
    )
    train_workdir(_WORKDIR.value, config, _POOLING.value)


if __name__ == "__main__":
    run_main(main, "probing.train_all_layers")
