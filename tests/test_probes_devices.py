"""Sharding the probe sweep over devices: 4 fake CPU devices give the same files as 1.

JAX fixes its device count when it starts, so the multi-device run happens in
a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=4. It
trains one workdir twice through probing.probes.train (config.devices = 1, the
plain single-device program, and 0 = all four devices), without folds and
with 3 folds re-drawn at probe time, and compares the files byte for byte; the four-device runs must read every
device's layers in one pass over the store. Five layers on four devices also exercise the padding
of the layer axis to a multiple of the device count.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from probing.probes.devices import probe_mesh
from probing.probes.settings import SweepSettings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_TWO_RUNS = textwrap.dedent(
    """
    import os, sys
    import jax
    from configs.probe import get_config
    from probing.testing.planted import planted_arrays, write_workdir
    from probing.probes import data
    from probing.probes.train import train_workdir

    assert jax.device_count() == 4, jax.devices()
    # How many device buffers each pass over the store fills.
    read_all, targets = data.FeatureReader.read_all, []
    data.FeatureReader.read_all = lambda self, t: targets.append(len(t)) or read_all(self, t)
    root = sys.argv[1]
    arrays = planted_arrays(300, 5, 8, [2], strength=5.0, seed=3)
    for name, devices, folds in (("one", 1, 0), ("four", 0, 0), ("one_k", 1, 3), ("four_k", 0, 3)):
        location = os.path.join(root, name)
        write_workdir(location, arrays)
        config = get_config()
        config.update(num_seeds=2, epochs=3, batch_size=16, devices=devices, folds=folds)
        config.grid.learning_rate = (1e-2, 3e-2)
        targets.clear()
        train_workdir(location, config)
        print("targets per pass", name, sorted(set(targets)))
    print("trained")
    """
)

_COMPARED = ("metrics.csv", "curves.csv", "summary.json", "weights.npz", "predictions.npz")


@pytest.mark.slow
def test_four_devices_write_the_same_files_as_one(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": REPO,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
    }
    done = subprocess.run(
        [sys.executable, "-c", _TWO_RUNS, str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and "trained" in done.stdout, done.stderr[-3000:]
    # Every device's layers are read in one pass over the store (data.FeatureReader.read_all).
    for name, count in (("one", 1), ("four", 4), ("one_k", 1), ("four_k", 4)):
        assert f"targets per pass {name} [{count}]" in done.stdout, done.stdout
    for suffix in ("", "_k"):
        for name in _COMPARED:
            with open(tmp_path / f"one{suffix}" / "probes" / "mean" / name, "rb") as f:
                one = f.read()
            with open(tmp_path / f"four{suffix}" / "probes" / "mean" / name, "rb") as f:
                four = f.read()
            assert one == four, f"{name}{suffix} differs between 1 and 4 devices"


def test_one_device_runs_without_a_mesh_and_too_many_devices_are_refused():
    # The pytest process itself sees the single default CPU device.
    assert probe_mesh(0) is None and probe_mesh(1) is None
    with pytest.raises(ValueError, match=r"devices = 64, but JAX sees 1 cpu device"):
        probe_mesh(64)
    with pytest.raises(ValueError, match="devices must be >= 0"):
        SweepSettings(devices=-1)
