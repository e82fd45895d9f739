"""benchmarks/floor.py: each read it times reads exactly the rows it claims, and the floor
adds up (bytes of every seed's minibatches and the val rows, at the fastest rate measured).

The floor's timings themselves are not asserted (no timed assertions in tests);
benchmarks/probe_sweep.py prints them beside the sweep's.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from benchmarks.floor import measure_floor, mesh_of_devices, place_example_major, read_programs

LAYERS, ROWS, DIM = 5, 64, 8


def test_each_read_reads_exactly_the_rows_it_times():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((LAYERS, ROWS, DIM)).astype(np.float16)
    features[:, 40:50] = 100  # rows no minibatch or val row names: a wrong gather sees them
    features[:, 55:] = 100
    mesh = mesh_of_devices()
    devices = 1 if mesh is None else mesh.size
    x = place_example_major(features, mesh)
    orders = rng.integers(0, 40, (3, 2, 4)).astype(np.int32)  # [steps, seeds, batch]
    val = np.arange(50, 55)
    # Each device holds its share of the layers, the last layer repeated as padding.
    padded = -(-LAYERS // devices) * devices
    per_device = np.split(np.minimum(np.arange(padded), LAYERS - 1), devices)
    read = np.union1d(orders.ravel(), val)
    gathered = np.concatenate([features[ls][:, read].max(axis=(0, 1)) for ls in per_device])
    streamed = np.concatenate([features[ls].max(axis=(0, 1)) for ls in per_device])
    assert (streamed == 100).all() and (gathered < 100).all()
    programs = read_programs(mesh)
    assert set(programs) == {"stream", "rows", "layer"}
    for name, (program, takes_orders) in programs.items():
        if takes_orders:
            out = program(x, jnp.asarray(orders), jnp.asarray(val, jnp.int32))
        else:
            out = program(x)
        expected = gathered if takes_orders else streamed
        np.testing.assert_array_equal(np.asarray(out), expected[None], err_msg=name)


def test_the_floor_adds_up():
    features = np.zeros((LAYERS, 600, DIM), np.float16)
    train, val = np.arange(500), np.arange(500, 560)
    floor = measure_floor(features, train, val, num_seeds=3, batch_size=64)
    steps = -(-500 // 64)  # the last minibatch is filled up to a whole batch, as the sweep's
    assert floor.read_bytes == (steps * 3 * 64 + 60) * LAYERS * DIM * 2
    assert set(floor.read_rates) == {"stream", "rows", "layer"}
    gather = max(floor.read_rates["rows"], floor.read_rates["layer"])
    assert floor.read_seconds == floor.read_bytes / gather
    assert floor.strict_read_seconds == floor.read_bytes / max(floor.read_rates.values())
    assert floor.strict_read_seconds <= floor.read_seconds
    per_probe = steps * (4.0 * 64 * DIM + 12.0 * (DIM + 1)) + 2.0 * 60 * DIM
    assert floor.flops == LAYERS * 3 * per_probe
    assert floor.compute_seconds == floor.flops / floor.matmul_flops_per_s
    assert floor.epoch_seconds == floor.read_seconds + floor.compute_seconds
    assert floor.strict_epoch_seconds == floor.strict_read_seconds + floor.compute_seconds
    line = floor.line(10)
    assert f"{floor.epoch_seconds * 10:8.2f} s" in line.splitlines()[0]
    assert f"{floor.strict_epoch_seconds * 10:8.2f} s" in line.splitlines()[1]


def test_the_floor_reads_at_the_gathers_rate_and_the_strict_floor_at_the_fastest():
    # Random rows cannot be read at a stream's rate: the floor takes the faster of the
    # two gathers, the strict floor the fastest read of all (here the stream).
    from benchmarks.floor import Floor

    rates = {"stream": 16e9, "rows": 6e9, "layer": 8e9}
    floor = Floor(12e9, 0.5, 30e9, 60e9, rates, 32)
    assert floor.read_seconds == 12e9 / 8e9 and floor.strict_read_seconds == 12e9 / 16e9
    assert floor.epoch_seconds == 1.5 + 0.5 and floor.strict_epoch_seconds == 0.75 + 0.5
    first, second = floor.line(10).splitlines()
    assert first.startswith("floor:") and "20.00 s" in first and "8.0 GB/s" in first
    assert second.startswith("strict floor:") and "12.50 s" in second and "16.0 GB/s" in second


def test_the_matmul_rate_is_timed_whole_and_in_the_sweeps_parts():
    # The floor's compute takes the fastest of the whole minibatch's products and
    # of parts of it, the sweep's own part size among them (kernels.part_rows).
    from benchmarks.floor import _part_sizes
    from probing.probes.devices import PART_MAX_BYTES
    from probing.probes.kernels import part_rows

    sizes = _part_sizes(256, 1536)
    assert sizes == [256, 64, 32, 16]
    assert part_rows(256, 1536, PART_MAX_BYTES) in sizes
    assert _part_sizes(16, 8) == [16]
    assert _part_sizes(48, 1536) == [48, 24, 16]
