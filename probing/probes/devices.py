"""Where the probe sweep runs: the device mesh, feature placement and ahead-of-time compilation.

Devices. With a mesh (probe_mesh, settings.devices) the layer axis is sharded:
every kernel is shard_mapped, so each device runs the single-device program on
its own layers with no communication, and by the determinism guarantee of
probing.probes.kernels the sharded sweep gives bitwise the single-device
numbers (tests/test_probes_devices.py). Layers rather than seeds are sharded
because they also split the features, the one big array, across device
memories.

Placement. Features stay in their store dtype (float16, bfloat16 or float32)
on the device, example-major, [n, L, D] per split: a minibatch row of every
layer is one contiguous read (L x D values), which on CPU makes a batch-16
epoch about a quarter faster than reading L scattered rows of a layer-major
[L, n, D] array (the gather is the sweep's dominant cost; see
WHOLE_ROWS_MAX_BYTES for big minibatches). The programs are lowered on the
caller's thread and compile on others (_lower) while the features are being
placed; on CPU with CPU_COMPILER_OPTIONS.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
from collections.abc import Callable
from concurrent.futures import Executor
from functools import cache, partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from probing.probes.settings import FEATURE_DTYPES

# On CPU, a minibatch's rows of all of a device's layers are gathered in one
# block when it is at most this big (a quarter of a 32 MB last-level cache):
# about a quarter faster than a gather per layer at batch 16, and a third
# slower at batch 256, where the block overflows the cache.
WHOLE_ROWS_MAX_BYTES = 8 << 20

# On CPU, the layer-by-layer step cuts each minibatch into parts of rows whose
# float32 values take at most this many bytes per seed (kernels.part_rows: 32
# rows at D = 1,536): every seed's part, standardised and dropped out, then
# stays in a core's L2 cache through the forward and backward products, where
# a whole minibatch (5 seeds x 256 rows: 7.9 MB) streams through the last-level
# cache twice. 25% less time per layer step at the full benchmark size on the
# 2-core development VM (2 MB of L2 per core). Fixed, not derived from the
# probe count: the parts fix the order in which gradients are summed.
PART_MAX_BYTES = 192 << 10

# Name of the mesh axis the probes are sharded over.
PROBE_AXIS = "probes"
_BY_LAYER = PartitionSpec(PROBE_AXIS)
_FEATURES_BY_LAYER = PartitionSpec(None, PROBE_AXIS)  # [n, L, D]
_REPLICATED = PartitionSpec()
_LOSS_BY_LAYER = PartitionSpec(None, PROBE_AXIS)  # [steps, L, ...]


def probe_mesh(devices: int = 0) -> Mesh | None:
    """The 1-D device mesh the sweep's layer axis is sharded over; None for one device.

    Args:
      devices: how many of `jax.devices()` to use; 0 = all of them (after
        `jax.distributed.initialize()` that is every device of every host).
        With one device the sweep runs the plain single-device program.

    Raises:
      ValueError: more devices asked for than JAX sees, or a negative count.
    """
    available = jax.devices()
    if devices < 0 or devices > len(available):
        raise ValueError(
            f"probe config: devices = {devices}, but JAX sees {len(available)} "
            f"{available[0].platform} device(s); use 0 (all) or 1..{len(available)}"
        )
    chosen = available[: devices or len(available)]
    return None if len(chosen) == 1 else Mesh(np.asarray(chosen), (PROBE_AXIS,))


# Share of the memory available at the start that the features of one layer
# group may take; the rest is for the sweep's other arrays, the compiled
# programs and whatever else runs on the machine.
MEMORY_FRACTION = 0.6


def available_memory() -> tuple[int, str]:
    """Bytes of host memory available now (MemAvailable of /proc/meminfo), and its source."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "available host memory"
    except OSError:
        pass
    pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(pages), "free host memory"


def _device_memory(mesh: Mesh | None) -> int | None:
    """Bytes of memory of the smallest accelerator of the mesh; None on CPU."""
    devices = jax.devices()[:1] if mesh is None else list(mesh.devices.flat)
    if devices[0].platform == "cpu":
        return None
    limits = [(d.memory_stats() or {}).get("bytes_limit") for d in devices]
    return min(limits) if all(limits) else None


def auto_layer_group_size(
    num_layers: int, layer_bytes: int, mesh: Mesh | None, budget: int | None = None
) -> int:
    """Layers per group (layer_group_size = 0) so that the groups in memory fit.

    A group takes its padded layer count (_padded_layer_index) times
    `layer_bytes` of host memory on CPU, where the device buffers are host
    memory, and of device memory on an accelerator (spread over the mesh).
    The budget is MEMORY_FRACTION of the available memory (`budget` bytes when
    given). All layers form one group when they fit; otherwise two groups must
    fit, since the next group is read while one trains (run_streaming_sweep).
    Groups are balanced (29 layers in three groups: 10, 10 and 9, not 14, 14
    and 1); results do not depend on the grouping. Logs the choice.
    """
    available, source = (budget, "the budget given") if budget else available_memory()
    limit = int(MEMORY_FRACTION * available)
    per_device = _device_memory(mesh)
    num_devices = 1 if mesh is None else mesh.size
    if per_device is not None:
        limit = int(MEMORY_FRACTION * per_device) * num_devices
        source = f"memory of {num_devices} {jax.devices()[0].platform} device(s)"
        available = per_device * num_devices

    def group_bytes(size: int) -> int:
        return len(_padded_layer_index(size, mesh)) * layer_bytes

    fits = 1
    if group_bytes(num_layers) <= limit:
        fits = num_layers
    else:  # two groups in memory at once: one training, the next being read
        for size in range(num_layers - 1, 0, -1):
            if 2 * group_bytes(size) <= limit:
                fits = size
                break
    groups = -(-num_layers // fits)
    size = -(-num_layers // groups)
    logging.info(
        "layer groups: %d of <= %d layers (%.3g GB of features per layer%s; budget %.3g GB = "
        "%d%% of %.3g GB %s)%s",
        groups,
        size,
        layer_bytes / 1e9,
        "; two groups in memory while the next one is read" if groups > 1 else "",
        limit / 1e9,
        round(100 * MEMORY_FRACTION),
        available / 1e9,
        source,
        "; even one layer exceeds it" if (1 + (groups > 1)) * group_bytes(1) > limit else "",
    )
    return size


def _padded_layer_index(num_layers: int, mesh: Mesh | None) -> np.ndarray:
    """Positions into the layer axis, padded with copies of the last layer.

    Padded to a multiple of the device count so that it shards evenly, and to
    at least two layers per device, because XLA compiles a size-1 layer axis
    with another summation order and a lone layer would then differ from
    itself inside a bigger sweep in the last bits. The padding is dropped at
    the end (sweep._collect).
    """
    num_devices = 1 if mesh is None else mesh.size
    padded = max(2 * num_devices, -(-num_layers // num_devices) * num_devices)
    return np.concatenate([np.arange(num_layers), np.full(padded - num_layers, num_layers - 1)])


@cache
def _program(
    impl: Callable,
    mesh: Mesh | None,
    in_specs: tuple,
    out_specs: Any,
    donate: tuple[int, ...],
    static: tuple[tuple[str, Any], ...],
) -> Callable:
    """The jitted (and, with a mesh, shard_mapped) form of one sweep kernel.

    Every kernel maps each probe independently, so sharding the layer axis
    needs no communication: with shard_map each device runs the very program
    a single device runs, on its own layers. The streaming guarantee (a probe's
    numbers do not depend on which other layers share the program) then makes
    the sharded sweep equal the single-device one. Cached, so each distinct
    program is traced and compiled once per process.
    """
    fn = partial(impl, **dict(static))
    if mesh is not None:
        fn = jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs)
    return jax.jit(fn, donate_argnums=donate)


def _layer_loop(layer_update: str, mesh: Mesh | None) -> bool:
    """Whether minibatch steps update layers one by one: "auto" does so on CPU."""
    if layer_update != "auto":
        return layer_update == "sequential"
    devices = jax.devices() if mesh is None else mesh.devices.flat
    return next(iter(devices)).platform == "cpu"


def _place(value: Any, mesh: Mesh | None, spec: PartitionSpec) -> jax.Array:
    """Puts a host array (or scalar) on the device(s): sharded by `spec` over `mesh`.

    make_array_from_callback also works when the mesh spans several hosts:
    each process supplies the shards of its own devices from its copy.
    """
    if mesh is None:
        return jnp.asarray(value)
    host = np.asarray(value)
    return jax.make_array_from_callback(
        host.shape, NamedSharding(mesh, spec), lambda index: host[index]
    )


# Buffers at least this big are mapped with their pages faulted in up front,
# backed by 2 MB pages where the kernel gives them.
_POPULATE_MIN_BYTES = 64 << 20
_HUGE_PAGE = 2 << 20
# madvise advice that faults a mapping's pages in, writable (Linux 5.14+; not
# named by Python 3.11's mmap module).
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)


def _aligned_empty(
    shape: tuple[int, ...], dtype: Any, alignment: int = 64, huge_pages: bool = True
) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts at a multiple of `alignment` bytes.

    A big one (the features of a device) is an anonymous mapping whose pages
    the kernel faults in all at once (MADV_POPULATE_WRITE, Linux 5.14+; older
    kernels fault them in as they are filled). Faulting them in at once (then
    with MAP_POPULATE) made filling 1 GB about 2-3x faster on a loaded 2-core
    VM than touching fresh numpy memory page by page (8 s vs 3 s per GB,
    benchmarks/load_path.py). It is asked for transparent huge
    pages first (MADV_HUGEPAGE, Linux's default "madvise" policy then grants
    them) and starts on a 2 MB boundary: the sweep reads its minibatch rows at
    random, each 3 KB row on its own 4 KB page otherwise, so nearly every row
    read missed the TLB; with 2 MB pages a layer step took 5-11% less time at
    the full benchmark size (one device per core, both busy). Where the
    kernel has no huge page to give, the pages are ordinary ones: the values
    are the same either way. `huge_pages=False` does not ask for them (see
    place_features).
    """
    dtype = np.dtype(dtype)
    size = math.prod(shape) * dtype.itemsize
    if size >= _POPULATE_MIN_BYTES and hasattr(mmap, "MAP_POPULATE"):
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
        mapping = mmap.mmap(-1, size + _HUGE_PAGE, flags=flags)
        advice = [_MADV_POPULATE_WRITE]
        if huge_pages and hasattr(mmap, "MADV_HUGEPAGE"):
            advice.insert(0, mmap.MADV_HUGEPAGE)
        for one in advice:
            # Advice not offered here: pages then fault in as they are filled.
            with contextlib.suppress(OSError):
                mapping.madvise(one)
        raw = np.frombuffer(mapping, np.uint8)
        offset = -raw.ctypes.data % _HUGE_PAGE
        return raw[offset : offset + size].view(dtype).reshape(shape)
    raw = np.empty(size + alignment, np.uint8)
    offset = -raw.ctypes.data % alignment
    return raw[offset : offset + size].view(dtype).reshape(shape)


class HostFeatures:
    """Features already in host memory, [L, N, D] layer-major, as a feature source.

    A feature source (this, or probing.probes.data.StoreFeatures, which reads
    from a workdir) has num_layers, num_rows, dim, dtype and
    fill(out, positions), which writes layer positions[j] of every row into
    out[:, j] of an [n, len(positions), D] buffer: the sweep hands it the
    buffers it keeps on its devices. A source may also have
    fill_all([(out, positions), ...]) to fill every device's buffer at once
    (StoreFeatures: one pass over the store).
    """

    def __init__(self, features: np.ndarray, rows: np.ndarray | None = None):
        self.features = features
        if rows is not None and rows.size and rows[-1] - rows[0] + 1 == rows.size:
            rows = slice(int(rows[0]), int(rows[-1]) + 1)  # a view: no fancy-index copy
        self.rows = slice(None) if rows is None else rows
        self.num_layers = features.shape[0]
        self.num_rows = features[0, self.rows].shape[0]
        self.dim = features.shape[2]
        self.dtype = features.dtype

    def fill(self, out: np.ndarray, positions) -> None:
        for j, position in enumerate(positions):
            out[:, j] = self.features[position, self.rows]


class PlacedFeatures:
    """A feature source being placed on the device(s) on another thread: `place_ahead`'s result.

    place_features waits for its array instead of filling new buffers. The
    sweep of the group compiles its programs meanwhile, and the next layer
    group is read while this one trains (sweep.run_streaming_sweep).
    """

    def __init__(self, source: Any, mesh: Mesh | None, placing: Executor, huge_pages: bool = True):
        self.num_layers, self.num_rows = source.num_layers, source.num_rows
        self.dim, self.dtype = source.dim, source.dtype
        self.mesh = mesh
        self.layer_index = _padded_layer_index(source.num_layers, mesh)
        self._array = placing.submit(
            place_features, source, self.layer_index, mesh, huge_pages=huge_pages
        )

    def array(self) -> jax.Array:
        """The placed features, once read (re-raises the reader's error, e.g. a NaN)."""
        return self._array.result()


def as_feature_source(features: Any) -> Any:
    """A feature source (HostFeatures, data.StoreFeatures, PlacedFeatures) as it is; a host
    array [L, N, D] wrapped in HostFeatures, in a FEATURE_DTYPES dtype (others: float32)."""
    if hasattr(features, "num_layers"):
        return features
    features = np.asarray(features)
    if features.dtype not in FEATURE_DTYPES:
        features = features.astype(np.float32)
    return HostFeatures(features)


def place_ahead(
    features: Any, mesh: Mesh | None, placing: Executor, huge_pages: bool = True
) -> PlacedFeatures:
    """Starts reading (from the store) and placing `features` on the mesh on `placing`'s
    thread, as the sweep of these layers would; run_sweep then takes the placed array."""
    return PlacedFeatures(as_feature_source(features), mesh, placing, huge_pages)


def place_features(
    source: Any, layer_index: np.ndarray, mesh: Mesh | None, huge_pages: bool = True
) -> jax.Array:
    """Layers `layer_index` of a feature source (see HostFeatures) as a device array [n, L', D].

    Example-major (see the module docstring: Placement), sharded over the layer axis.
    Every device's block is allocated here and filled by the source (all in
    one call where it has fill_all: one pass over a store), then handed over
    whole: a fresh numpy array aligned to 64 bytes,
    which the CPU backend adopts as the device buffer without copying it
    (numpy's own arrays are 16-byte aligned, and those it copies). A source
    reading from the store thus writes the features once, into the device
    buffer itself; fresh memory is slow to fault in on small VMs, about a
    second per GB, so every copy of them counts. With `huge_pages` (the
    default) the buffers ask for 2 MB pages (_aligned_empty);
    run_streaming_sweep asks for them only when all layers form one group.
    """
    if isinstance(source, PlacedFeatures):
        if source.mesh is not mesh or not np.array_equal(source.layer_index, layer_index):
            raise ValueError("features placed ahead for another mesh or layer order")
        return source.array()
    shape = (source.num_rows, len(layer_index), source.dim)

    def blocks(slices: list[slice]) -> list[np.ndarray]:
        out = [
            _aligned_empty(
                (shape[0], len(layer_index[s]), shape[2]), source.dtype, huge_pages=huge_pages
            )
            for s in slices
        ]
        targets = [(block, layer_index[s]) for block, s in zip(out, slices, strict=True)]
        fill_all = getattr(source, "fill_all", None)
        if fill_all is None:
            for block, positions in targets:
                source.fill(block, positions)
        else:
            fill_all(targets)  # every device's layers in one pass over a store
        return out

    if mesh is None:
        return jax.device_put(blocks([slice(None)])[0])
    sharding = NamedSharding(mesh, _FEATURES_BY_LAYER)
    slices = {}
    for index in sharding.addressable_devices_indices_map(shape).values():
        slices.setdefault(index[1].indices(shape[1]), index[1])
    filled = dict(zip(slices, blocks(list(slices.values())), strict=True))
    return jax.make_array_from_callback(
        shape, sharding, lambda index: filled[index[1].indices(shape[1])]
    )


def _place_features(
    features: np.ndarray, layer_index: np.ndarray, rows: np.ndarray, mesh: Mesh | None
) -> jax.Array:
    """Rows `rows` of layers `layer_index` of host [L, N, D] as a device array [n, L', D]."""
    return place_features(HostFeatures(features, rows), layer_index, mesh)


def _shapes_of(tree: Any) -> Any:
    """Shape, dtype and sharding of every array of a pytree, for compiling ahead of time."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree)


# Compiled programs by (program, argument shapes): the layer groups of a sweep
# (and sweeps of the same shapes in one process) reuse them. Programs come from
# _program's cache, one object per set of static arguments, so the key is
# everything the compilation depends on. The oldest go beyond this many.
_COMPILED_KEPT = 32
_compiled: dict[Any, Callable] = {}


def _shape_key(leaf: Any) -> tuple:
    """What compiling sees of an argument: shape, dtype, sharding, weak type (or a value)."""
    if not hasattr(leaf, "shape"):
        return (type(leaf), leaf)
    return (leaf.shape, leaf.dtype, leaf.sharding, getattr(leaf, "weak_type", False))


# Options of XLA's CPU compiler for the sweep's programs. Compiling them is on
# the critical path of a sweep's set-up (they compile while the features are
# placed, and both take CPU), and the epoch program is big (about 4,500 HLO
# lines). XLA's older loop emitters compile it in about 70% of the CPU time of
# its default fusion emitters (3.2 against 4.4 core-seconds at the full
# benchmark size, batch 16; the four programs 4.8 against 7.2), and the
# programs run as fast (0.12 ms per layer step either way). A jaxlib that no
# longer has the option compiles with its defaults (_compile_lowered warns once).
CPU_COMPILER_OPTIONS = {"xla_cpu_use_fusion_emitters": False}


def _platform(leaves: list[Any]) -> str:
    """The platform the arguments `leaves` live on (the default backend's when unplaced)."""
    for leaf in leaves:
        sharding = getattr(leaf, "sharding", None)
        if sharding is not None:
            return next(iter(sharding.device_set)).platform
    return jax.devices()[0].platform


@cache
def _warn_options_refused(error: str) -> None:
    logging.warning(
        "XLA refused the sweep's CPU compiler options %s (%s); compiling with its "
        "defaults, which takes longer",
        CPU_COMPILER_OPTIONS,
        error,
    )


def _compile_lowered(lowered: Any, platform: str) -> Callable:
    """A lowered program compiled, with CPU_COMPILER_OPTIONS on CPU."""
    if platform != "cpu" or not CPU_COMPILER_OPTIONS:
        return lowered.compile()
    try:
        return lowered.compile(compiler_options=CPU_COMPILER_OPTIONS)
    except jax.errors.JaxRuntimeError as error:
        if "compile option" not in str(error):
            raise
        _warn_options_refused(str(error).splitlines()[0])
        return lowered.compile()


def _lower(program: Callable, *like: Any) -> Callable[[], Callable]:
    """`program` lowered for arguments shaped like `like` (arrays or ShapeDtypeStructs);
    calling the result compiles it (or returns the program compiled earlier for the
    same shapes, dtypes and shardings, without lowering it again).

    Two steps, so that the caller lowers on its own thread and compiles on
    another: lowering is Python and holds the GIL, compiling is XLA's and
    releases it (see programs._compile_and_place).
    """
    leaves, tree = jax.tree.flatten(like)
    key = (program, tree, *(_shape_key(leaf) for leaf in leaves))
    compiled = _compiled.get(key)
    if compiled is not None:
        return lambda: compiled
    lowered, platform = program.lower(*like), _platform(leaves)

    def compile_lowered() -> Callable:
        compiled = _compile_lowered(lowered, platform)
        _compiled[key] = compiled
        while len(_compiled) > _COMPILED_KEPT:
            _compiled.pop(next(iter(_compiled)), None)
        return compiled

    return compile_lowered


def _to_host(value: jax.Array) -> np.ndarray:
    """A device array as numpy, gathered from every host when the mesh spans several."""
    if value.is_fully_addressable:
        return np.asarray(value)
    return np.asarray(multihost_utils.process_allgather(value, tiled=True))


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


def start_jax(distributed: bool = False) -> None:
    """Starts JAX for a sweep: a device per CPU core, optionally distributed; logs the devices.

    With `distributed`, calls jax.distributed.initialize(), for one process
    per host on a TPU VM slice or a multi-node GPU job: coordinator address,
    process count and id come from the environment (TPU VM, SLURM, or JAX_*
    variables). Must precede any other JAX call.
    """
    use_every_cpu_core()
    if distributed:
        jax.distributed.initialize()
    logging.info(
        "JAX: process %d of %d, %d local / %d global %s device(s)",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        jax.default_backend(),
    )
