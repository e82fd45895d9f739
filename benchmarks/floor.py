"""The probe sweep's floor on this machine: the time its epochs cannot go below, measured in the
same run as the sweep (benchmarks/probe_sweep.py prints the sweep's training time ÷ this floor).

Two parts, each measured with a jitted program over the sweep's own device
layout (features example-major [N, L, D] in their store dtype, the layer axis
sharded over one JAX CPU device per core):

  reads    every seed gathers its own minibatch rows of every layer, in its own
           shuffled order, every step (the sweep's reads; there is no sharing
           them across seeds, whose orders differ), plus one read of the val
           rows per epoch for the selection: those bytes at the fastest rate
           a jitted gather of exactly those rows reaches, all layers of a row
           at once or one layer at a time (read_programs: issue 16's "reads
           at the measured gather bandwidth"). Each gather reduces what it
           reads with a max in the stored dtype, so it does nothing but read.
           A plain stream over the features is timed too: the strict floor
           reads the same bytes at the fastest of all three. Rows of 3 KB
           read at random cannot reach the stream's rate on the development
           VM: hand-written C (benchmarks/row_reads.c: AVX2, 1-8 rows read
           at once, with or without software prefetch, 2 MB pages) read them
           at 2.8-5.4 GB/s per core with both cores busy, about what the
           faster jitted gather reaches (8.3-10.7 GB/s on the two), against
           7-8.7 GB/s per core for the stream. The strict floor is thus a
           bound no random-row reader met here, printed beside the floor
           rather than in its place.
  compute  the probes' floating-point work per epoch: forward (2·B·D·C) and
           weight gradient (2·B·D·C) per probe and step, Adam (about 12
           operations per parameter and step), and the val logits (2·n·D·C
           per probe); divided by the machine's matmul rate, measured with a
           jitted loop of the same [S, B, D] x [S, D, C] products, whole or
           in parts of b rows ([S, b, D], the same FLOPs), on data that stays
           in cache: the fastest of the whole minibatch and parts of 16, 32,
           64 rows and the sweep's own part size (kernels.part_rows). A
           whole minibatch at the full size (7.9 MB) does not fit a core's
           L2 cache; its products ran at a third of the rate of 32-row parts
           on the development VM, so an earlier floor that timed only whole
           minibatches counted cache misses as compute.

floor = (reads + compute) per epoch x epochs; strict floor = (reads at the
stream's rate + compute) x epochs. It is a floor, not a prediction: it
assumes the arithmetic overlaps nothing and costs no more than a matmul, and
that standardisation, dropout and the casts are free.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from probing.probes.devices import (
    PART_MAX_BYTES,
    PROBE_AXIS,
    HostFeatures,
    _padded_layer_index,
    place_features,
)
from probing.probes.kernels import part_rows

_AXIS = PROBE_AXIS  # the sweep's own, so that place_features shards the features alike


# The reads that gather the sweep's rows (read_programs): the floor's read rate is theirs.
GATHERS = ("rows", "layer")


@dataclasses.dataclass
class Floor:
    """Per-epoch seconds of the two parts, and what they were measured at."""

    read_bytes: float  # per epoch
    compute_seconds: float  # per epoch, at the measured matmul rate
    flops: float  # per epoch
    matmul_flops_per_s: float
    read_rates: dict[str, float]  # bytes/s: stream, rows and layer (see _read_rates)
    matmul_rows: int = 0  # the part size (rows) the matmul rate was reached at

    @property
    def read_seconds(self) -> float:
        """Per epoch: the sweep's reads at the fastest rate a gather of its rows reached."""
        return self.read_bytes / max(self.read_rates[name] for name in GATHERS)

    @property
    def strict_read_seconds(self) -> float:
        """Per epoch: the same bytes at the fastest rate of any read, the stream included (a
        bound for any access pattern; random rows did not reach it on the development VM)."""
        return self.read_bytes / max(self.read_rates.values())

    @property
    def epoch_seconds(self) -> float:
        return self.read_seconds + self.compute_seconds

    @property
    def strict_epoch_seconds(self) -> float:
        return self.strict_read_seconds + self.compute_seconds

    def line(self, epochs: int) -> str:
        rates = ", ".join(f"{name} {rate / 1e9:.1f}" for name, rate in self.read_rates.items())
        gather = self.read_bytes / self.read_seconds
        return (
            f"floor:         {self.epoch_seconds * epochs:8.2f} s  = {epochs} epochs x "
            f"({self.read_seconds:.3f} s reads, {self.read_bytes / 1e9:.2f} GB at "
            f"{gather / 1e9:.1f} GB/s, the fastest gather of the sweep's rows; "
            f"+ {self.compute_seconds:.3f} s compute, {self.flops / 1e9:.1f} GFLOP at "
            f"{self.matmul_flops_per_s / 1e9:.1f} GFLOP/s in parts of {self.matmul_rows} rows)"
            f"\nstrict floor:  {self.strict_epoch_seconds * epochs:8.2f} s  (the reads at "
            f"{self.read_bytes / self.strict_read_seconds / 1e9:.1f} GB/s, the fastest of "
            f"{rates} GB/s)"
        )


def mesh_of_devices() -> Mesh | None:
    """One JAX device per mesh position, as the sweep uses them; None for one device."""
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


def place_example_major(features, mesh):
    """Layer-major host [L, N, D] as the sweep's device layout [N, L', D], sharded by layer,
    in buffers placed as the sweep places its own (devices.place_features: aligned, on
    huge pages where Linux gives them), so that the reads are timed on the same memory."""
    layer_index = _padded_layer_index(features.shape[0], mesh)
    return place_features(HostFeatures(features), layer_index, mesh)


def read_programs(mesh: Mesh | None) -> dict:
    """name -> (jitted program, whether it takes the minibatch orders): the three reads whose
    rates _read_rates measures, over device features x [N, L', D] sharded by layer.

    `stream`: every value once, in memory order (no gather can beat it), as
    stream(x). `rows`: each seed's minibatch rows of all of a device's layers
    as one [S, B, L, D] gather per step (the sweep's read at small batches),
    as rows(x, orders [steps, S, B], val rows). `layer`: the same rows one
    layer after another, [S, B, D] per layer and step (the sweep's read when
    the all-layer block overflows the cache). Each reduces what it reads with
    a max in the stored dtype: XLA cannot drop the read and no conversion is
    timed (XLA's float16 -> float32 convert in a plain reduction ran at
    0.7 GB/s here; the sweep's fused kernels convert far faster, so a
    converting read would not be a floor). Each returns, per device, the max
    over everything it read of each feature column: [1, D] per device.
    """
    by_layer, replicated = PartitionSpec(None, _AXIS), PartitionSpec()

    def stream(x):
        return x.max(axis=(0, 1))[None]

    def over_steps(step_max):
        """A program reducing step_max(x, rows [S, B]) -> [S, D] over the steps, plus val."""

        def program(x, orders, val):
            def body(total, step_rows):
                return jnp.maximum(total, step_max(x, step_rows)), None

            # Derived from x: under shard_map the carry must vary over the mesh as x does.
            start = jnp.broadcast_to(x[0, 0], (orders.shape[1], x.shape[2]))
            total, _ = jax.lax.scan(body, start, orders)
            return jnp.maximum(total.max(0), x[val].max((0, 1)))[None]

        return program

    def rows(x, step_rows):
        return x[step_rows].max(axis=(1, 2))

    def layer(x, step_rows):
        def one_layer(index, total):
            return jnp.maximum(total, x[step_rows, index].max(axis=1))

        return jax.lax.fori_loop(1, x.shape[1], one_layer, x[step_rows, 0].max(axis=1))

    out = PartitionSpec(None, _AXIS)
    gather_specs = (by_layer, replicated, replicated)
    return {
        "stream": (_sharded(stream, mesh, (by_layer,), out), False),
        "rows": (_sharded(over_steps(rows), mesh, gather_specs, out), True),
        "layer": (_sharded(over_steps(layer), mesh, gather_specs, out), True),
    }


def _read_rates(x, orders, val_rows, mesh) -> dict[str, float]:
    """Bytes per second of each of read_programs on device features x; the floor takes the
    fastest gather (GATHERS), the strict floor the fastest of all."""
    gathered = (orders.size + len(val_rows)) * x.nbytes // x.shape[0]
    orders, val_rows = jnp.asarray(orders), jnp.asarray(val_rows, jnp.int32)
    rates = {}
    for name, (program, takes_orders) in read_programs(mesh).items():
        args = (x, orders, val_rows) if takes_orders else (x,)
        rates[name] = (gathered if takes_orders else x.nbytes) / _best_of(program, *args)
    return rates


def _read_rates_of_epoch(features, train_rows, val_rows, num_seeds, batch_size, mesh):
    """The bytes an epoch reads (every seed's minibatches, each its own order, and the val
    rows) and the rates of _read_rates."""
    steps = -(-len(train_rows) // batch_size)
    rng = np.random.default_rng(0)
    orders = np.zeros((steps, num_seeds, batch_size), np.int32)
    for s in range(num_seeds):
        order = rng.permutation(train_rows)
        orders[:, s] = np.resize(order, steps * batch_size).reshape(steps, batch_size)
    x = place_example_major(features, mesh)
    rates = _read_rates(x, orders, val_rows, mesh)
    del x
    num_layers, _, dim = features.shape
    read_bytes = (orders.size + len(val_rows)) * num_layers * dim * features.dtype.itemsize
    return read_bytes, rates


def _matmul_rate(num_seeds, rows, dim, probes_per_seed, products, mesh):
    """FLOP/s of the sweep's products ([S, b, D] x [S, D, P] forward, its transpose backward)
    on b = `rows` rows, `products` times per device, over all devices at once, on data held
    in cache."""
    num_devices = 1 if mesh is None else mesh.size
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((num_devices, num_seeds, rows, dim), np.float32))
    y = jnp.asarray(rng.random((num_devices, num_seeds, rows, probes_per_seed)) < 0.5)

    def loop(x, y):
        x, y = x[0], y[0].astype(jnp.float32)

        def body(_, w):
            logits = jnp.einsum("sbd,sdp->sbp", x, w)
            grad = jnp.einsum("sbd,sbp->sdp", x, jax.nn.sigmoid(logits) - y)
            return w - 1e-6 * grad  # a dependency chain: no iteration can be hoisted

        zeros = jnp.zeros((num_seeds, dim, probes_per_seed)) * x[0, 0, 0]  # varies like x
        w = jax.lax.fori_loop(0, products, body, zeros)
        return w[None]

    if mesh is not None:
        x = jax.device_put(x, NamedSharding(mesh, PartitionSpec(_AXIS)))
        y = jax.device_put(y, NamedSharding(mesh, PartitionSpec(_AXIS)))
    spec = PartitionSpec(_AXIS)
    fn = _sharded(loop, mesh, (spec, spec), spec) if mesh is not None else jax.jit(loop)
    seconds = _best_of(fn, x, y, repeats=2)
    flops = 4.0 * num_seeds * rows * dim * probes_per_seed * products * num_devices
    return flops / seconds


def _part_sizes(batch_size: int, dim: int) -> list[int]:
    """Row counts the products are timed at: the whole minibatch, the sweep's parts, and
    parts of 16, 32 and 64 rows where they divide it."""
    sizes = {batch_size, part_rows(batch_size, dim, PART_MAX_BYTES)}
    sizes |= {rows for rows in (16, 32, 64) if rows < batch_size and batch_size % rows == 0}
    return sorted(sizes, reverse=True)


def _best_matmul_rate(num_layers, num_seeds, batch_size, dim, probes_per_seed, steps, mesh):
    """(FLOP/s, rows): the fastest _matmul_rate over _part_sizes, for the products of `steps`
    minibatches of each device's layers, and the part size it was reached at."""
    num_devices = 1 if mesh is None else mesh.size
    minibatches = steps * -(-num_layers // num_devices)
    rates = {
        rows: _matmul_rate(
            num_seeds, rows, dim, probes_per_seed, minibatches * batch_size // rows, mesh
        )
        for rows in _part_sizes(batch_size, dim)
    }
    rows = max(rates, key=rates.get)
    return rates[rows], rows


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
    mesh = mesh_of_devices()
    num_layers, _, dim = features.shape
    read_bytes, rates = _read_rates_of_epoch(
        features, train_rows, val_rows, num_seeds, batch_size, mesh
    )
    steps = -(-len(train_rows) // batch_size)
    columns = probes_per_seed * num_outputs
    rate, rows = _best_matmul_rate(num_layers, num_seeds, batch_size, dim, columns, steps, mesh)
    probes = num_layers * num_seeds * probes_per_seed
    per_probe = steps * (4.0 * batch_size * dim * num_outputs + 12.0 * (dim + 1) * num_outputs)
    per_probe += 2.0 * len(val_rows) * dim * num_outputs
    flops = probes * per_probe
    return Floor(read_bytes, flops / rate, flops, rate, rates, rows)
