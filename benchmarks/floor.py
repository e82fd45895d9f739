"""The probe sweep's floor on this machine: the time its epochs cannot go below, measured in the
same run as the sweep (benchmarks/probe_sweep.py prints the sweep's training time ÷ this floor).

Two parts, each measured with a jitted program over the sweep's own device
layout (features example-major [N, L, D] in their store dtype, the layer axis
sharded over one JAX CPU device per core):

  reads    every seed gathers its own minibatch rows of every layer, in its own
           shuffled order, every step (the sweep's reads; there is no sharing
           them across seeds, whose orders differ), plus one read of the val
           rows per epoch for the selection. Timed as a jitted gather of
           exactly those rows, reduced cheaply so that XLA cannot drop it.
  compute  the probes' floating-point work per epoch: forward (2·B·D·C) and
           weight gradient (2·B·D·C) per probe and step, Adam (about 12
           operations per parameter and step), and the val logits (2·n·D·C
           per probe); divided by the machine's matmul rate, measured with a
           jitted loop of the same [S, B, D] x [S, D, C] products on data
           that stays in cache.

floor = (reads + compute) per epoch x epochs. It is a floor, not a
prediction: it assumes the arithmetic overlaps nothing and costs no more than
a matmul, and that standardisation, dropout and the casts are free.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

_AXIS = "floor"


@dataclasses.dataclass
class Floor:
    """Per-epoch seconds of the two parts, and what they were measured at."""

    read_seconds: float  # per epoch: train minibatches of every seed + val rows
    read_bytes: float  # per epoch
    compute_seconds: float  # per epoch, at the measured matmul rate
    flops: float  # per epoch
    matmul_flops_per_s: float

    @property
    def epoch_seconds(self) -> float:
        return self.read_seconds + self.compute_seconds

    def line(self, epochs: int) -> str:
        return (
            f"floor:         {self.epoch_seconds * epochs:8.2f} s  = {epochs} epochs x "
            f"({self.read_seconds:.3f} s reads, {self.read_bytes / 1e9:.2f} GB at "
            f"{self.read_bytes / self.read_seconds / 1e9:.1f} GB/s, + {self.compute_seconds:.3f} s "
            f"compute, {self.flops / 1e9:.1f} GFLOP at {self.matmul_flops_per_s / 1e9:.1f} GFLOP/s)"
        )


def _mesh() -> Mesh | None:
    devices = jax.devices()
    return None if len(devices) == 1 else Mesh(np.asarray(devices), (_AXIS,))


def _sharded(fn, mesh, in_specs, out_specs):
    if mesh is None:
        return jax.jit(fn)
    return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs))


def _best_of(fn, *args, repeats: int = 3) -> float:
    jax.block_until_ready(fn(*args))  # compile and warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def _read_seconds(features, train_rows, val_rows, num_seeds, batch_size, mesh):
    """Seconds to gather one epoch's minibatches of every seed (each its own order) and the val
    rows, from example-major [N, L, D] features sharded by layer."""
    num_layers = features.shape[0]
    steps = -(-len(train_rows) // batch_size)
    rng = np.random.default_rng(0)
    orders = np.zeros((steps, num_seeds, batch_size), np.int32)
    for s in range(num_seeds):
        order = rng.permutation(train_rows)
        orders[:, s] = np.resize(order, steps * batch_size).reshape(steps, batch_size)
    num_devices = 1 if mesh is None else mesh.size
    padded = -(-num_layers // num_devices) * num_devices
    layer_index = np.minimum(np.arange(padded), num_layers - 1)
    shape = (features.shape[1], padded, features.shape[2])
    if mesh is None:
        x = jax.device_put(np.ascontiguousarray(np.swapaxes(features, 0, 1)))
    else:
        x = jax.make_array_from_callback(
            shape,
            NamedSharding(mesh, PartitionSpec(None, _AXIS)),
            lambda index: np.ascontiguousarray(np.swapaxes(features[layer_index[index[1]]], 0, 1)),
        )

    def gather_epoch(x, orders, val):
        # The sweep's gather: a seed's minibatch rows of all of a device's
        # layers, [S, B, L, D], one step after another. A sum over the batch
        # keeps every row live at the cost of one add per value.
        def body(total, rows):
            return total + x[rows].astype(jnp.float32).sum(axis=1), None

        # Zeros derived from x: under shard_map the carry must vary over the mesh as x does.
        zeros = jnp.zeros((num_seeds, 1, 1), jnp.float32) * x[0].astype(jnp.float32)
        total, _ = jax.lax.scan(body, zeros, orders)
        return total.sum(0) + x[val].astype(jnp.float32).sum(0)

    replicated = PartitionSpec()
    fn = _sharded(
        gather_epoch,
        mesh,
        (PartitionSpec(None, _AXIS), replicated, replicated),
        PartitionSpec(_AXIS),
    )
    seconds = _best_of(fn, x, jnp.asarray(orders), jnp.asarray(val_rows, jnp.int32))
    del x
    rows_read = orders.size + len(val_rows)
    return seconds, rows_read * num_layers * features.shape[2] * features.dtype.itemsize


def _matmul_rate(num_layers, num_seeds, batch_size, dim, probes_per_seed, steps, mesh):
    """FLOP/s of the sweep's products ([S, B, D] x [S, D, P] forward, its transpose backward),
    over all devices at once, on one layer's minibatch held in cache."""
    num_devices = 1 if mesh is None else mesh.size
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((num_devices, num_seeds, batch_size, dim), np.float32))
    y = jnp.asarray(rng.random((num_devices, num_seeds, batch_size, probes_per_seed)) < 0.5)
    layers_per_device = -(-num_layers // num_devices)
    iterations = steps * layers_per_device

    def loop(x, y):
        x, y = x[0], y[0].astype(jnp.float32)

        def body(_, w):
            logits = jnp.einsum("sbd,sdp->sbp", x, w)
            grad = jnp.einsum("sbd,sbp->sdp", x, jax.nn.sigmoid(logits) - y)
            return w - 1e-6 * grad  # a dependency chain: no iteration can be hoisted

        zeros = jnp.zeros((num_seeds, dim, probes_per_seed)) * x[0, 0, 0]  # varies like x
        w = jax.lax.fori_loop(0, iterations, body, zeros)
        return w[None]

    if mesh is not None:
        x = jax.device_put(x, NamedSharding(mesh, PartitionSpec(_AXIS)))
        y = jax.device_put(y, NamedSharding(mesh, PartitionSpec(_AXIS)))
    spec = PartitionSpec(_AXIS)
    fn = _sharded(loop, mesh, (spec, spec), spec) if mesh is not None else jax.jit(loop)
    seconds = _best_of(fn, x, y, repeats=2)
    flops = 4.0 * num_seeds * batch_size * dim * probes_per_seed * iterations * num_devices
    return flops / seconds


def measure_floor(
    features: np.ndarray,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    *,
    num_seeds: int,
    batch_size: int,
    probes_per_seed: int = 1,
    num_outputs: int = 1,
) -> Floor:
    """The floor per epoch of a sweep over layer-major host features [L, N, D].

    probes_per_seed: probes that train on each seed's minibatch (targets x
    grid points x folds); num_outputs: C.
    """
    mesh = _mesh()
    num_layers, _, dim = features.shape
    read_seconds, read_bytes = _read_seconds(
        features, train_rows, val_rows, num_seeds, batch_size, mesh
    )
    steps = -(-len(train_rows) // batch_size)
    columns = probes_per_seed * num_outputs
    rate = _matmul_rate(num_layers, num_seeds, batch_size, dim, columns, steps, mesh)
    probes = num_layers * num_seeds * probes_per_seed
    per_probe = steps * (4.0 * batch_size * dim * num_outputs + 12.0 * (dim + 1) * num_outputs)
    per_probe += 2.0 * len(val_rows) * dim * num_outputs
    flops = probes * per_probe
    return Floor(read_seconds, read_bytes, flops / rate, flops, rate)
