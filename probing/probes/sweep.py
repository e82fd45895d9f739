"""The probe sweep: linear probes for every layer x task x seed x grid point at once.

One Flax `LinearProbe` (dropout -> dense) is trained per probe; the probes'
parameters carry leading axes [layer, task, seed, grid] and one jitted epoch
function trains all of them together: `jax.vmap` maps a single probe's Adam(W)
step over the four axes and `lax.scan` runs the epoch's minibatches. Features
are always passed to the jitted functions as arguments (a closed-over array
would be baked into the program as a constant).

Features stay in their store dtype (float16, bfloat16 or float32) on the
device; each minibatch is standardised in float32 as it is gathered. That
gives the very float32 values a standardised copy would hold, but every step
reads half the bytes for float16 features and no such copy is ever made.
On the device they are example-major, [n, L, D] per split: a minibatch row
of every layer is one contiguous read (L x D values), which on CPU makes a
batch-16 epoch about a quarter faster than reading L scattered rows of a
layer-major [L, n, D] array (the gather is the sweep's dominant cost; see
WHOLE_ROWS_MAX_BYTES for big minibatches). The epoch and evaluation
programs compile on other threads while the features are being placed.

Axes:
  layer  the hidden states probed (layer indices of the workdir);
  task   0 = the task's labels, 1 = the shuffled-label control (labels
         permuted within the train split, and within val for its epoch
         selection, one permutation per seed; scored on the real labels);
  seed   seed indices s = 0..num_seeds-1;
  grid   points of the learning-rate x weight-decay x dropout grid.

Determinism. Every random draw of probe (layer l, seed s) depends only on
(settings.seed, s, l) and the epoch and step: initial weights on
(seed, s, l), minibatch order on (seed, s, epoch), dropout masks on
(seed, s, epoch, step), the control permutations on (seed, s, split). So a sweep
restricted to one layer and seed trains that probe exactly as the full sweep
does, and layer groups can be streamed one after another with identical
results. Bitwise equality (tested on CPU) also needs the arithmetic to be
independent of how many probes share the program: standardisation statistics
are computed layer by layer, per-probe loss sums are added in a fixed pairwise
order (_weighted_sum), divisions by a broadcast value are written as products
with its reciprocal (XLA rewrites them so in some programs only), train-loss
sums are added on the host in step order, and the layer axis is padded to at
least two layers per device (XLA compiles a size-1 axis differently). The
two forms of a minibatch step (settings.layer_update: layers one after
another, fast on CPU, or all together, for accelerators) are each
deterministic but differ from each other in the last bits.

Devices. With a mesh (probe_mesh, settings.devices) the layer axis is sharded:
every kernel is shard_mapped, so each device runs the single-device program on
its own layers with no communication, and by the guarantee above the sharded
sweep gives bitwise the single-device numbers (tests/test_probes_devices.py).
Layers rather than seeds are sharded because they also split the features,
the one big array, across device memories.

Dropout. Drawing a threefry mask per (layer, seed) costs far more than the
probe's own arithmetic on CPU. Two choices remove that cost:
  1. one mask per (seed, step) is shared by all layers, tasks and grid points
     (each dropout rate thresholds the same uniform numbers). Every single
     probe still sees i.i.d. Bernoulli dropout, so each probe's training is
     distributed exactly as with independent masks; only the noise of
     different layers within one seed is now correlated, which makes layer
     comparisons within a seed paired rather than independent.
  2. the uniform numbers come from a counter-based integer hash (two rounds
     of the "lowbias32" mixer over the element index, keyed by 64 bits drawn
     with threefry per (seed, s, epoch, step)), a few integer operations per
     element instead of threefry's twenty rounds. Its 24-bit uniforms are far
     finer than any dropout rate needs; it is not a cryptographic generator,
     which dropout does not need either.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache, partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from probing.probes.data import TEST, TRAIN, VAL
from probing.progress import Progress

# Stream ids folded into the root key so that draws made for different
# purposes never share a key.
_INIT_STREAM, _SHUFFLE_STREAM, _DROPOUT_STREAM, _CONTROL_STREAM = 0, 1, 2, 3
TASK_NAMES = ("task", "control")
SELECTIONS = ("loss", "headline")
# How a minibatch step updates the layers (see _train_epoch): one after another
# (fast on CPU), all together (fast on GPU/TPU), or chosen by the backend.
LAYER_UPDATES = ("auto", "sequential", "together")
# On CPU, a minibatch's rows of all of a device's layers are gathered in one
# block when it is at most this big (a quarter of a 32 MB last-level cache):
# about a quarter faster than a gather per layer at batch 16, and a third
# slower at batch 256, where the block overflows the cache.
WHOLE_ROWS_MAX_BYTES = 8 << 20
# Feature dtypes the sweep reads as they are (the workdir's store dtypes).
FEATURE_DTYPES = (np.dtype(np.float16), np.dtype(jnp.bfloat16), np.dtype(np.float32))


@dataclasses.dataclass(frozen=True)
class SweepSettings:
    """Probe hyperparameters; see configs/probe.py for what each one means."""

    seed: int = 0
    num_seeds: int = 3
    epochs: int = 10
    batch_size: int = 64
    learning_rates: tuple[float, ...] = (1e-3,)
    weight_decays: tuple[float, ...] = (0.0,)
    dropouts: tuple[float, ...] = (0.1,)
    selection: str = "loss"
    controls: bool = True
    layer_group_size: int = 0
    zero_init: bool = True
    devices: int = 0
    layer_update: str = "auto"

    def __post_init__(self):
        problems = []
        if self.num_seeds < 1:
            problems.append(f"num_seeds must be >= 1, got {self.num_seeds}")
        if self.epochs < 1:
            problems.append(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if not (self.learning_rates and self.weight_decays and self.dropouts):
            problems.append("learning_rate, weight_decay and dropout grids must be non-empty")
        if any(not 0.0 <= p < 1.0 for p in self.dropouts):
            problems.append(f"dropout must lie in [0, 1), got {self.dropouts}")
        if any(lr <= 0 for lr in self.learning_rates):
            problems.append(f"learning rates must be > 0, got {self.learning_rates}")
        if any(wd < 0 for wd in self.weight_decays):
            problems.append(f"weight decays must be >= 0, got {self.weight_decays}")
        if self.selection not in SELECTIONS:
            problems.append(f"selection must be one of {SELECTIONS}, got {self.selection!r}")
        if self.layer_group_size < 0:
            problems.append(f"layer_group_size must be >= 0, got {self.layer_group_size}")
        if self.layer_update not in LAYER_UPDATES:
            problems.append(
                f"layer_update must be one of {LAYER_UPDATES}, got {self.layer_update!r}"
            )
        if self.devices < 0:
            problems.append(f"devices must be >= 0 (0 = all), got {self.devices}")
        if problems:
            raise ValueError("probe config: " + "; ".join(problems))

    @classmethod
    def from_config(cls, config: Any) -> SweepSettings:
        """Builds settings from configs/probe.py's ConfigDict (grid fields override scalars)."""
        grid = config.get("grid", {}) or {}

        def axis(name: str) -> tuple[float, ...]:
            values = tuple(grid.get(name, ()) or ())
            return tuple(float(v) for v in values) or (float(config[name]),)

        return cls(
            seed=int(config.seed),
            num_seeds=int(config.num_seeds),
            epochs=int(config.epochs),
            batch_size=int(config.batch_size),
            learning_rates=axis("learning_rate"),
            weight_decays=axis("weight_decay"),
            dropouts=axis("dropout"),
            selection=str(config.get("selection", "loss")),
            controls=bool(config.get("controls", True)),
            layer_group_size=int(config.get("layer_group_size", 0)),
            zero_init=bool(config.get("zero_init", True)),
            devices=int(config.get("devices", 0)),
            layer_update=str(config.get("layer_update", "auto")),
        )

    def grid(self) -> dict[str, np.ndarray]:
        """The hyperparameter grid as three [G] arrays (learning rate varies slowest)."""
        points = [
            (lr, wd, p)
            for lr in self.learning_rates
            for wd in self.weight_decays
            for p in self.dropouts
        ]
        columns = np.asarray(points, np.float32).reshape(-1, 3)
        return {
            "learning_rate": columns[:, 0],
            "weight_decay": columns[:, 1],
            "dropout": columns[:, 2],
        }


# --------------------------------------------------------------------- model
class LinearProbe(nn.Module):
    """Dropout followed by a dense layer with `num_outputs` logits.

    The kernel starts at zero: a linear probe's loss is convex, so a random
    start only adds a seed-dependent optimisation handicap that would blur
    the seed spread of what the representation encodes. Seeds still differ
    by minibatch order and dropout. `zero_init=False` gives Flax's default
    LeCun-normal start (closer to PyTorch's nn.Linear).
    """

    num_outputs: int
    zero_init: bool = True

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        dropout_bits: jax.Array | None = None,
        dropout_rate: jax.Array | float = 0.0,
    ) -> jax.Array:
        if dropout_bits is not None:
            x = counter_dropout(x, dropout_bits, dropout_rate)
        kernel_init = nn.initializers.zeros if self.zero_init else nn.linear.default_kernel_init
        return nn.Dense(self.num_outputs, kernel_init=kernel_init, name="dense")(x)


def counter_dropout(x: jax.Array, bits: jax.Array, rate: jax.Array | float) -> jax.Array:
    """Inverted dropout with the mask given as uint32 random bits of x's shape.

    The top 24 bits become a uniform number in [0, 1); an element is kept when
    it is >= rate, so several rates can share one draw.
    """
    uniform = (bits >> 8).astype(jnp.float32) * (1.0 / (1 << 24))
    # x * (1 / keep), not x / keep: see _standardized on XLA's rewriting of divisions.
    return jnp.where(uniform >= rate, x * (1.0 / (1.0 - rate)), 0.0)


def _mix32(x: jax.Array) -> jax.Array:
    """The "lowbias32" integer finaliser: a bijection on uint32 with good avalanche."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def hash_bits(key_words: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """uint32 random bits of `shape` from a counter hash keyed by two uint32 words."""
    counter = jnp.arange(math.prod(shape), dtype=jnp.uint32).reshape(shape)
    return _mix32(_mix32(counter + key_words[0]) ^ key_words[1])


def _decay_kernels_only(params: Any) -> Any:
    # Weight decay on the bias would pull the decision threshold towards 0.5
    # for unbalanced tasks; decay only the kernel.
    return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == "kernel", params)


def _optimizer(learning_rate: jax.Array, weight_decay: jax.Array) -> optax.GradientTransformation:
    # With weight_decay = 0 this is exactly Adam.
    return optax.adamw(learning_rate, weight_decay=weight_decay, mask=_decay_kernels_only)


# ---------------------------------------------------------- vmapped kernels
def _vmap_probes(fn: Callable, grid_axes, seed_axes, task_axes, layer_axes) -> Callable:
    """vmaps a single-probe function over grid, then seed, task and layer (outermost)."""
    fn = jax.vmap(fn, in_axes=grid_axes)
    fn = jax.vmap(fn, in_axes=seed_axes)
    fn = jax.vmap(fn, in_axes=task_axes)
    return jax.vmap(fn, in_axes=layer_axes)


def _root_key(seed: int) -> jax.Array:
    return jax.random.key(seed)


def _stream_key(seed: int, stream: int, *indices: jax.Array) -> jax.Array:
    key = jax.random.fold_in(_root_key(seed), stream)
    for index in indices:
        key = jax.random.fold_in(key, index)
    return key


def _init_state(layer_ids, seed_ids, hp, *, seed, num_tasks, num_outputs, dim, zero_init):
    """Initial parameters and optimizer state, [layer, task, seed, grid, ...]."""

    def init_one(layer, seed_index):
        key = _stream_key(seed, _INIT_STREAM, seed_index, layer)
        probe = LinearProbe(num_outputs, zero_init=zero_init)
        return probe.init(key, jnp.zeros((1, dim), jnp.float32))["params"]

    per_layer_seed = jax.vmap(jax.vmap(init_one, (None, 0)), (0, None))(layer_ids, seed_ids)
    num_grid = hp["learning_rate"].shape[0]

    # The control probe starts from the task probe's weights and all grid
    # points share them: comparisons between them are paired.
    def expand(p):
        shape = (p.shape[0], num_tasks, p.shape[1], num_grid, *p.shape[2:])
        return jnp.broadcast_to(p[:, None, :, None], shape)

    params = jax.tree.map(expand, per_layer_seed)
    opt_init = _vmap_probes(
        lambda p, lr, wd: _optimizer(lr, wd).init(p),
        grid_axes=(0, 0, 0),
        seed_axes=(0, None, None),
        task_axes=(0, None, None),
        layer_axes=(0, None, None),
    )
    opt_state = opt_init(params, hp["learning_rate"], hp["weight_decay"])
    num_probes = params["dense"]["bias"].shape[:4]
    return {
        "params": params,
        "opt_state": opt_state,
        "best_params": params,
        "best_score": jnp.full(num_probes, -jnp.inf, jnp.float32),
        "best_epoch": jnp.zeros(num_probes, jnp.int32),
    }


def _probe_step(params, opt_state, x, labels, mask, bits, lr, wd, rate, *, num_outputs):
    """One optimizer step of one probe on one minibatch; returns the summed loss."""

    def loss_fn(p):
        logits = LinearProbe(num_outputs).apply({"params": p}, x, bits, rate)
        loss_sum = _weighted_sum(optax.sigmoid_binary_cross_entropy(logits, labels), mask, 2)
        return loss_sum / jnp.maximum(mask.sum(), 1.0), loss_sum

    (_, loss_sum), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = _optimizer(lr, wd).update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss_sum


def _train_epoch(
    state,
    x_train,
    mean,
    inverse,
    y_train,
    m_train,
    epoch,
    seed_ids,
    hp,
    *,
    seed,
    batch_size,
    use_dropout,
    num_outputs,
    layer_loop,
    whole_rows_max_bytes,
):
    """One epoch of every probe. x_train [n, L, D] raw; y_train, m_train [T, S, n, C].

    Each minibatch is standardised right after it is gathered (_standardized),
    so the features stay in their store dtype: with float16 features every
    step reads half the bytes, and the values the probes see are the same.

    With `layer_loop`, each minibatch step updates the layers one after
    another (lax.map) instead of all at once. The probe arithmetic is the same;
    what changes is the working set: one layer's minibatch [S, B, D] stays in
    a CPU's cache through gather, dropout, forward and backward, where the
    all-layers form streams [L, S, B, D] through memory several times per
    step. Accelerators prefer the all-at-once form (fewer, larger kernels).
    """
    num_train, num_layers, dim = x_train.shape
    num_steps = -(-num_train // batch_size)
    padding = num_steps * batch_size - num_train

    def batches_of_seed(seed_index):
        order = jax.random.permutation(
            _stream_key(seed, _SHUFFLE_STREAM, seed_index, epoch), num_train
        )
        # The last minibatch is padded with weight-0 copies of row 0, so every
        # train row is used once per epoch and all steps have one shape.
        order = jnp.concatenate([order, jnp.zeros(padding, order.dtype)])
        weight = jnp.concatenate([jnp.ones(num_train), jnp.zeros(padding)])
        dropout_key = _stream_key(seed, _DROPOUT_STREAM, seed_index, epoch)
        words = jax.vmap(
            lambda step: jax.random.bits(jax.random.fold_in(dropout_key, step), (2,), jnp.uint32)
        )(jnp.arange(num_steps))
        return (
            order.reshape(num_steps, batch_size),
            weight.reshape(num_steps, batch_size).astype(jnp.float32),
            words,
        )

    order, weight, words = jax.vmap(batches_of_seed)(seed_ids)  # [S, steps, ...]
    steps_first = jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), (order, weight, words))
    seed_positions = jnp.arange(seed_ids.shape[0])[:, None]

    step = _vmap_probes(
        partial(_probe_step, num_outputs=num_outputs),
        grid_axes=(0, 0, None, None, None, None, 0, 0, 0),
        seed_axes=(0, 0, 0, 0, 0, 0 if use_dropout else None, None, None, None),
        task_axes=(0, 0, None, 0, 0, None, None, None, None),
        layer_axes=(0, 0, 0, None, None, None, None, None, None),
    )
    # One layer's step: the same vmaps but the layer one (x is then [S, B, D]).
    layer_step = jax.vmap(
        jax.vmap(
            jax.vmap(
                partial(_probe_step, num_outputs=num_outputs),
                in_axes=(0, 0, None, None, None, None, 0, 0, 0),
            ),
            in_axes=(0, 0, 0, 0, 0, 0 if use_dropout else None, None, None, None),
        ),
        in_axes=(0, 0, None, 0, 0, None, None, None, None),
    )

    def body(carry, batch):
        params, opt_state = carry
        rows, row_weight, key_words = batch  # [S, B], [S, B], [S, 2]
        labels = y_train[:, seed_positions, rows]  # [T, S, B, C]
        mask = m_train[:, seed_positions, rows] * row_weight[None, :, :, None]
        bits = (
            jax.vmap(lambda w: hash_bits(w, (batch_size, dim)))(key_words) if use_dropout else None
        )
        rates = (hp["learning_rate"], hp["weight_decay"], hp["dropout"])
        if layer_loop:
            # [S, B, L, D]: each row of every layer in one contiguous read, when
            # that block fits in cache; bigger minibatches read each layer's
            # rows where that layer is trained (a block that overflows the
            # cache would be read from memory twice). The values are the same.
            block_bytes = rows.size * num_layers * dim * x_train.dtype.itemsize
            block = x_train[rows] if block_bytes <= whole_rows_max_bytes else None

            def one_layer(layer_state):
                layer_params, layer_opt_state, layer = layer_state
                if block is None:
                    raw = x_train[rows, layer]
                else:
                    raw = jax.lax.dynamic_index_in_dim(block, layer, axis=2, keepdims=False)
                x = _standardized(raw, mean[layer], inverse[layer])
                return layer_step(layer_params, layer_opt_state, x, labels, mask, bits, *rates)

            layers = jnp.arange(num_layers)
            params, opt_state, loss_sum = jax.lax.map(one_layer, (params, opt_state, layers))
        else:
            raw = jnp.moveaxis(x_train[rows], 2, 0)  # [L, S, B, D]
            x = _standardized(raw, mean[:, None, None], inverse[:, None, None])
            params, opt_state, loss_sum = step(params, opt_state, x, labels, mask, bits, *rates)
        scored = mask.sum(axis=(2, 3))[None, :, :, None]  # [1, T, S, 1]
        return (params, opt_state), (loss_sum, scored)

    (params, opt_state), (loss_sums, scored) = jax.lax.scan(
        body, (state["params"], state["opt_state"]), steps_first
    )
    # Per-step sums go back to the host, which adds them up in a fixed order
    # (see _weighted_sum for why the device does not).
    return {**state, "params": params, "opt_state": opt_state}, (loss_sums, scored)


def _apply_all(params, x, mean, inverse, *, num_outputs):
    """Logits [L, T, S, G, n, C] of every probe on raw x [n, L, D] (no dropout).

    Layer by layer (lax.map): one layer's standardised features [n, D] are
    the only float32 copy made, never all layers' at once.
    """
    apply = jax.vmap(
        jax.vmap(
            jax.vmap(
                lambda p, xl: LinearProbe(num_outputs).apply({"params": p}, xl),
                in_axes=(0, None),
            ),
            in_axes=(0, None),
        ),
        in_axes=(0, None),
    )

    def one_layer(layer_args):
        layer_params, layer, layer_mean, layer_inverse = layer_args
        layer_x = jax.lax.dynamic_index_in_dim(x, layer, axis=1, keepdims=False)
        return apply(layer_params, _standardized(layer_x, layer_mean, layer_inverse))

    return jax.lax.map(one_layer, (params, jnp.arange(x.shape[1]), mean, inverse))


def _weighted_sum(values: jax.Array, weights: jax.Array, num_axes: int) -> jax.Array:
    """Sum of values * weights over the last `num_axes` axes, in a fixed pairwise order.

    XLA picks the summation order of a reduction (and of a small batched dot)
    from the shapes of the whole program, so a plain jnp.sum or dot makes a
    probe's loss depend on how many other probes share the sweep, or on how
    the sweep is sharded. Here the entries, zero-padded to a power of two, are
    added in halves with elementwise adds, which XLA never reorders: every
    probe's sum is computed the same way in any sweep. Gradients are
    unaffected (the gradient of a sum is the same in any order).
    """
    products = values * weights
    lead = products.shape[: products.ndim - num_axes]
    flat = products.reshape(*lead, -1)
    size = flat.shape[-1]
    width = 1 << max(size - 1, 0).bit_length()
    flat = jnp.pad(flat, [(0, 0)] * len(lead) + [(0, width - size)])
    while flat.shape[-1] > 1:
        halves = flat.reshape(*lead, 2, flat.shape[-1] // 2)
        flat = halves[..., 0, :] + halves[..., 1, :]
    return flat[..., 0]


def _selection_score(logits, labels, mask, *, selection, multilabel):
    """(val loss, score where higher is better) per probe.

    logits [..., n, C]; labels and mask broadcast against them. Counts are
    sums of 0/1 values, exact in float32 in any order.
    """
    mask = jnp.broadcast_to(mask, logits.shape)
    scored = jnp.maximum(mask.sum(axis=(-2, -1)), 1.0)
    per_entry = optax.sigmoid_binary_cross_entropy(logits, labels)
    loss = _weighted_sum(per_entry, mask, 2) / scored
    if selection == "loss":
        return loss, -loss
    predicted = (logits > 0).astype(jnp.float32)
    if not multilabel:
        accuracy = jnp.sum((predicted == labels) * mask, axis=(-2, -1)) / scored
        return loss, accuracy
    tp = jnp.sum(predicted * labels * mask, axis=-2)
    fp = jnp.sum(predicted * (1 - labels) * mask, axis=-2)
    fn = jnp.sum((1 - predicted) * labels * mask, axis=-2)
    denominator = 2 * tp + fp + fn
    f1 = jnp.where(denominator > 0, 2 * tp / jnp.maximum(denominator, 1.0), 0.0)
    present = (mask.sum(axis=-2) > 0).astype(jnp.float32)
    macro_f1 = _weighted_sum(f1, present, 1) / jnp.maximum(present.sum(axis=-1), 1.0)
    return loss, macro_f1


def _select_epoch(
    state, x_val, mean, inverse, y_val, m_val, epoch, *, num_outputs, selection, multilabel
):
    """Scores every probe on val and keeps its parameters if they improved.

    y_val, m_val: [T, S, n, C], the control's val labels shuffled like its train labels.
    """
    logits = _apply_all(state["params"], x_val, mean, inverse, num_outputs=num_outputs)
    val_loss, score = _selection_score(
        logits,
        y_val[None, :, :, None],
        m_val[None, :, :, None],
        selection=selection,
        multilabel=multilabel,
    )
    # Strictly better only: ties keep the earlier epoch.
    improved = score > state["best_score"]

    def keep(new, old):
        return jnp.where(improved.reshape(improved.shape + (1,) * (new.ndim - 4)), new, old)

    return {
        **state,
        "best_params": jax.tree.map(keep, state["params"], state["best_params"]),
        "best_score": jnp.where(improved, score, state["best_score"]),
        "best_epoch": jnp.where(improved, epoch + 1, state["best_epoch"]),
    }, val_loss


def _chosen_logits(params, splits, mean, inverse, chosen_grid, *, num_outputs):
    """Logits [L, T, S, n, C] on each x of `splits` of the chosen grid point per layer.

    Every grid point is applied and the chosen one picked afterwards, so the
    probes are evaluated by the same vmapped program that selected them. All
    splits go through one call so that XLA compiles one program, not one per
    split size.
    """

    def pick(p):
        index = chosen_grid.reshape((-1, 1, 1, 1) + (1,) * (p.ndim - 4))
        return jnp.take_along_axis(p, index, axis=3)[:, :, :, 0]

    logits = [pick(_apply_all(params, x, mean, inverse, num_outputs=num_outputs)) for x in splits]
    return logits, jax.tree.map(pick, params)


def _layer_statistics(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean and scale [D] of one layer's train features [n, D] (any float dtype)."""
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=0)
    std = jnp.sqrt(jnp.mean(jnp.square(x - mean), axis=0))
    # A dimension constant on train carries no information; dividing by 1
    # instead of ~0 keeps its (tiny) val/test deviations from exploding.
    return mean, jnp.where(std > 1e-6, std, 1.0)


def _statistics(x_train: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-layer standardisation [L, D] from train features [n, L, D]: mean, scale, 1 / scale.

    The statistics are computed layer by layer (lax.map) rather than as one
    reduction over [L, n, D]: XLA orders a batched reduction differently for
    different L, which would make a layer's numbers depend on how many other
    layers share the sweep.
    """
    mean, scale = jax.lax.map(
        lambda layer: _layer_statistics(jax.lax.dynamic_index_in_dim(x_train, layer, 1, False)),
        jnp.arange(x_train.shape[1]),
    )
    return mean, scale, 1.0 / scale


def _standardized(x: jax.Array, mean: jax.Array, inverse: jax.Array) -> jax.Array:
    """(x - mean) / scale in float32, for raw features x in their store dtype.

    Applied to each minibatch where it is used instead of to all features
    once: the float32 values are the same (float16 and bfloat16 convert to
    float32 exactly), but the features are read in their compact dtype and no
    standardised copy of them is ever held. The division is written as a
    product with the reciprocal: XLA's simplifier turns a division by a
    broadcast into exactly this in some programs and not in others (a sharded
    one), and the two differ in the last bit.
    """
    return (x.astype(jnp.float32) - mean) * inverse


# ------------------------------------------------------------------- devices
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


def _aligned_empty(shape: tuple[int, ...], dtype: Any, alignment: int = 64) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts at a multiple of `alignment` bytes."""
    dtype = np.dtype(dtype)
    size = math.prod(shape) * dtype.itemsize
    raw = np.empty(size + alignment, np.uint8)
    offset = -raw.ctypes.data % alignment
    return raw[offset : offset + size].view(dtype).reshape(shape)


def _place_features(
    features: np.ndarray, layer_index: np.ndarray, rows: np.ndarray, mesh: Mesh | None
) -> jax.Array:
    """Rows `rows` of layers `layer_index` of host [L, N, D] as a device array [n, L', D].

    Example-major (see the module docstring), sharded over the layer axis.
    Each device's block is built on the host in that order and handed over
    whole: a fresh numpy array aligned to 64 bytes, which the CPU backend
    adopts as the device buffer without copying it (numpy's own arrays are
    16-byte aligned, and those it copies). The features are then copied once
    in all; fresh memory is slow to fault in on small VMs, about a second
    per GB, so every copy of them counts.
    """
    if rows.size and rows[-1] - rows[0] + 1 == rows.size:
        rows = slice(int(rows[0]), int(rows[-1]) + 1)  # a view: no fancy-index copy
    num_rows = features[0, rows].shape[0]
    shape = (num_rows, len(layer_index), features.shape[2])

    def block(layers: slice) -> np.ndarray:
        positions = range(*layers.indices(len(layer_index)))
        out = _aligned_empty((num_rows, len(positions), shape[2]), features.dtype)
        for j, position in enumerate(positions):
            out[:, j] = features[layer_index[position], rows]
        return out

    if mesh is None:
        return jax.device_put(block(slice(None)))
    sharding = NamedSharding(mesh, _FEATURES_BY_LAYER)
    return jax.make_array_from_callback(shape, sharding, lambda index: block(index[1]))


def _shapes_of(tree: Any) -> Any:
    """Shape, dtype and sharding of every array of a pytree, for compiling ahead of time."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree)


def _compile(program: Callable, *like: Any) -> Callable:
    """`program` compiled for arguments shaped like `like` (arrays or ShapeDtypeStructs)."""
    return program.lower(*like).compile()


def _to_host(value: jax.Array) -> np.ndarray:
    """A device array as numpy, gathered from every host when the mesh spans several."""
    if value.is_fully_addressable:
        return np.asarray(value)
    return np.asarray(multihost_utils.process_allgather(value, tiled=True))


# ------------------------------------------------------------------- results
@dataclasses.dataclass
class SweepResult:
    """Everything a sweep produced, as numpy arrays.

    Axes: L layers, T tasks (task, control), S seeds, G grid points, E epochs,
    D hidden size, C outputs. Parameters are those of each probe's best epoch.

    Attributes:
      layers: [L] layer indices; seeds: [S] seed indices.
      grid: hyperparameter name -> [G] values.
      chosen_grid: [L] grid point chosen per layer (mean val score over seeds
        of the task probes at their best epochs).
      kernel: [L, T, S, D, C], bias: [L, T, S, C] of the chosen grid point.
      best_epoch: [L, T, S, G], 1-based.
      train_loss, val_loss: [E, L, T, S, G] per-epoch losses.
      val_score: [L, T, S, G] selection score at the best epoch.
      mean, scale: [L, D] standardisation (x - mean) / scale applied before the probe.
      logits: split name -> [L, T, S, n, C] of the chosen grid point.
    """

    layers: np.ndarray
    seeds: np.ndarray
    tasks: tuple[str, ...]
    grid: dict[str, np.ndarray]
    chosen_grid: np.ndarray
    kernel: np.ndarray
    bias: np.ndarray
    best_epoch: np.ndarray
    train_loss: np.ndarray
    val_loss: np.ndarray
    val_score: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    logits: dict[str, np.ndarray]

    @staticmethod
    def concatenate(parts: Sequence[SweepResult]) -> SweepResult:
        """Joins results of layer groups along the layer axis."""
        first = parts[0]
        layer_axis = {"train_loss": 1, "val_loss": 1}

        def join(name):
            values = [getattr(p, name) for p in parts]
            if isinstance(values[0], dict):
                return {k: np.concatenate([v[k] for v in values], axis=0) for k in values[0]}
            return np.concatenate(values, axis=layer_axis.get(name, 0))

        fields = {f.name: getattr(first, f.name) for f in dataclasses.fields(SweepResult)}
        for name in fields:
            if name not in ("seeds", "tasks", "grid"):
                fields[name] = join(name)
        return SweepResult(**fields)


def _task_targets(labels, mask, rows, seed_ids, settings, split_name):
    """Labels and mask of `rows` per task and seed, [T, S, n, C].

    The shuffled-label control permutes the label vectors (with their masks)
    within the split, one permutation per seed and split. Its train labels
    carry no signal, and its epoch is chosen on equally shuffled val labels so
    that its selection cannot peek at the real ones.
    """
    y, m = labels[rows], mask[rows]
    per_seed = (len(seed_ids), *y.shape)
    task_labels, task_masks = [np.broadcast_to(y, per_seed)], [np.broadcast_to(m, per_seed)]
    if settings.controls:
        split_code = {"train": TRAIN, "val": VAL}[split_name]
        perms = [
            np.asarray(
                jax.random.permutation(
                    _stream_key(settings.seed, _CONTROL_STREAM, int(s), split_code), len(y)
                )
            )
            for s in seed_ids
        ]
        task_labels.append(np.stack([y[p] for p in perms]))
        task_masks.append(np.stack([m[p] for p in perms]))
    return jnp.asarray(np.stack(task_labels)), jnp.asarray(np.stack(task_masks))


def _sweep_progress(total_probe_epochs: int) -> Progress:
    """A progress line per epoch: probe-epochs done / total, rate, ETA."""
    return Progress("probe sweep", total_probe_epochs, unit="probe-epochs")


def _epoch_mean_loss(step_loss_sums: jax.Array, step_scored: jax.Array) -> np.ndarray:
    """Mean train loss per probe from per-step sums [steps, ...], added in step order.

    An explicit loop, because numpy's own reductions may switch to pairwise
    summation depending on the array's shape.
    """
    loss_sums = np.asarray(step_loss_sums, np.float64)
    scored = np.asarray(step_scored, np.float64)
    total_loss = np.zeros(loss_sums.shape[1:])
    total_scored = np.zeros(scored.shape[1:])
    for step_loss, step_count in zip(loss_sums, scored, strict=True):
        total_loss += step_loss
        total_scored += step_count
    return (total_loss / np.maximum(total_scored, 1.0)).astype(np.float32)


def run_sweep(
    features: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray,
    split: np.ndarray,
    settings: SweepSettings,
    layer_ids: Sequence[int] | None = None,
    seed_ids: Sequence[int] | None = None,
    progress: Progress | None = None,
    mesh: Mesh | None = None,
) -> SweepResult:
    """Trains, selects and applies the probes of one group of layers.

    Args:
      features: [L, N, D], layer-major (see data.load_features), float16, bfloat16
        or float32 (kept as they are: the sweep standardises minibatches in
        float32 as it reads them); other dtypes are converted to float32.
      labels, mask: float32 [N, C] targets and scored entries.
      split: [N] 0 train, 1 val, 2 test.
      settings: hyperparameters and seeds.
      layer_ids: the workdir layer index of each features[l] (default 0..L-1);
        they key the random draws, so a subset reproduces the full sweep.
      seed_ids: seed indices to train (default 0..num_seeds-1).
      progress: shared progress logger (one is made when omitted).
      mesh: devices to shard the layer axis over (see probe_mesh); None runs
        the single-device program. Results are the same either way.
    """
    features = np.asarray(features)
    if features.dtype not in FEATURE_DTYPES:
        features = features.astype(np.float32)
    num_layers, _, dim = features.shape
    layer_ids = np.arange(num_layers) if layer_ids is None else np.asarray(layer_ids)
    seed_ids = np.arange(settings.num_seeds) if seed_ids is None else np.asarray(seed_ids)
    if layer_ids.shape != (num_layers,):
        raise ValueError(f"{len(layer_ids)} layer ids for {num_layers} feature layers")
    labels = np.asarray(labels, np.float32)
    mask = np.asarray(mask, np.float32)
    num_outputs = labels.shape[1]
    multilabel = num_outputs > 1
    num_tasks = 2 if settings.controls else 1
    rows = {
        name: np.flatnonzero(split == code)
        for name, code in (("train", TRAIN), ("val", VAL), ("test", TEST))
    }
    grid = settings.grid()
    num_grid = len(grid["learning_rate"])
    progress = progress or _sweep_progress(
        num_layers * num_tasks * len(seed_ids) * num_grid * settings.epochs
    )

    # The layer axis is padded with copies of the last layer, dropped at the
    # end: to a multiple of the device count so that it shards evenly, and to
    # at least two layers per device, because XLA compiles a size-1 layer axis
    # with another summation order and a lone layer would then differ from
    # itself inside a bigger sweep in the last bits.
    num_devices = 1 if mesh is None else mesh.size
    padded = max(2 * num_devices, -(-num_layers // num_devices) * num_devices)
    layer_index = np.concatenate(
        [np.arange(num_layers), np.full(padded - num_layers, num_layers - 1)]
    )
    layer_ids = layer_ids[layer_index]

    def by_layer(value):
        return _place(value, mesh, _BY_LAYER)

    def replicated(value):
        return _place(value, mesh, _REPLICATED)

    def program(impl, in_specs, out_specs, donate=(), **static):
        return _program(impl, mesh, in_specs, out_specs, donate, tuple(sorted(static.items())))

    y_train, m_train = map(
        replicated, _task_targets(labels, mask, rows["train"], seed_ids, settings, "train")
    )
    y_val, m_val = map(
        replicated, _task_targets(labels, mask, rows["val"], seed_ids, settings, "val")
    )
    hp = {name: replicated(values) for name, values in grid.items()}
    seeds_arg = replicated(np.asarray(seed_ids, np.int32))

    init_state = program(
        _init_state,
        (_BY_LAYER, _REPLICATED, _REPLICATED),
        _BY_LAYER,
        seed=settings.seed,
        num_tasks=num_tasks,
        num_outputs=num_outputs,
        dim=dim,
        zero_init=settings.zero_init,
    )
    statistics = program(_statistics, (_FEATURES_BY_LAYER,), (_BY_LAYER,) * 3)
    train_epoch = program(
        _train_epoch,
        (_BY_LAYER, _FEATURES_BY_LAYER, _BY_LAYER, _BY_LAYER) + (_REPLICATED,) * 5,
        (_BY_LAYER, (_LOSS_BY_LAYER, _REPLICATED)),
        donate=(0,),
        seed=settings.seed,
        batch_size=settings.batch_size,
        use_dropout=max(settings.dropouts) > 0,
        layer_loop=_layer_loop(settings.layer_update, mesh),
        whole_rows_max_bytes=WHOLE_ROWS_MAX_BYTES,
        num_outputs=num_outputs,
    )
    select_epoch = program(
        _select_epoch,
        (_BY_LAYER, _FEATURES_BY_LAYER, _BY_LAYER, _BY_LAYER) + (_REPLICATED,) * 3,
        (_BY_LAYER, _BY_LAYER),
        donate=(0,),
        num_outputs=num_outputs,
        selection=settings.selection,
        multilabel=multilabel,
    )
    chosen_logits = program(
        _chosen_logits,
        (_BY_LAYER, (_FEATURES_BY_LAYER,) * 3, _BY_LAYER, _BY_LAYER, _BY_LAYER),
        (_BY_LAYER, _BY_LAYER),
        num_outputs=num_outputs,
    )

    state = init_state(by_layer(np.asarray(layer_ids, np.int32)), seeds_arg, hp)
    epoch_args = [replicated(np.int32(epoch)) for epoch in range(settings.epochs)]

    # Compiling the programs takes seconds on CPU, and they need only the
    # shapes of the features: they compile on other threads (XLA releases the
    # GIL) while the features are copied to the devices.
    def like(shape: tuple[int, ...], dtype: Any, spec: PartitionSpec) -> jax.ShapeDtypeStruct:
        sharding = None if mesh is None else NamedSharding(mesh, spec)
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

    x_like = {
        name: like((rows[name].size, padded, dim), features.dtype, _FEATURES_BY_LAYER)
        for name in ("train", "val", "test")
    }
    layer_stats_like = like((padded, dim), np.float32, _BY_LAYER)
    layer_like = like((padded,), np.int32, _BY_LAYER)
    state_like = _shapes_of(state)
    with ThreadPoolExecutor(max_workers=2) as pool:
        compiling = {
            "train": pool.submit(
                _compile,
                train_epoch,
                state_like,
                x_like["train"],
                layer_stats_like,
                layer_stats_like,
                y_train,
                m_train,
                epoch_args[0],
                seeds_arg,
                hp,
            ),
            "select": pool.submit(
                _compile,
                select_epoch,
                state_like,
                x_like["val"],
                layer_stats_like,
                layer_stats_like,
                y_val,
                m_val,
                epoch_args[0],
            ),
            "chosen": pool.submit(
                _compile,
                chosen_logits,
                state_like["best_params"],
                tuple(x_like.values()),
                layer_stats_like,
                layer_stats_like,
                layer_like,
            ),
        }
        # Features stay raw, in their store dtype; the probes standardise what
        # they read. Features are the sweep's one big array (29 x 40,000 x
        # 1,536 float16 is 3.6 GB): each split is copied once, straight into
        # its device layout.
        x_train, x_val, x_test = (
            _place_features(features, layer_index, rows[name], mesh)
            for name in ("train", "val", "test")
        )
        mean, scale, inverse = statistics(x_train)
        train_epoch, select_epoch, chosen_logits = (
            compiling[name].result() for name in ("train", "select", "chosen")
        )
    train_losses, val_losses = [], []
    probes_per_epoch = num_layers * num_tasks * len(seed_ids) * num_grid
    for epoch_arg in epoch_args:
        state, (loss_sums, scored) = train_epoch(
            state, x_train, mean, inverse, y_train, m_train, epoch_arg, seeds_arg, hp
        )
        state, val_loss = select_epoch(state, x_val, mean, inverse, y_val, m_val, epoch_arg)
        train_losses.append(_epoch_mean_loss(_to_host(loss_sums), _to_host(scored)))
        val_losses.append(_to_host(val_loss))
        progress.update(probes_per_epoch, force=True)

    best_score = _to_host(state["best_score"])
    # Grid point per layer: best mean over seeds of the task probes' val score.
    chosen_grid = np.argmax(best_score[:, 0].mean(axis=1), axis=-1).astype(np.int32)
    split_logits, picked = chosen_logits(
        state["best_params"], (x_train, x_val, x_test), mean, inverse, by_layer(chosen_grid)
    )
    kept = slice(0, num_layers)
    return SweepResult(
        layers=np.asarray(layer_ids[kept], np.int64),
        seeds=np.asarray(seed_ids, np.int64),
        tasks=TASK_NAMES[:num_tasks],
        grid={k: np.asarray(v) for k, v in grid.items()},
        chosen_grid=chosen_grid[kept],
        kernel=_to_host(picked["dense"]["kernel"])[kept],
        bias=_to_host(picked["dense"]["bias"])[kept],
        best_epoch=_to_host(state["best_epoch"])[kept],
        train_loss=np.stack(train_losses)[:, kept],
        val_loss=np.stack(val_losses)[:, kept],
        val_score=best_score[kept],
        mean=_to_host(mean)[kept],
        scale=_to_host(scale)[kept],
        logits={
            name: _to_host(x)[kept]
            for name, x in zip(("train", "val", "test"), split_logits, strict=True)
        },
    )


def run_streaming_sweep(
    load_layers: Callable[[Sequence[int]], np.ndarray],
    layers: Sequence[int],
    labels: np.ndarray,
    mask: np.ndarray,
    split: np.ndarray,
    settings: SweepSettings,
    seed_ids: Sequence[int] | None = None,
) -> SweepResult:
    """Runs the sweep over `layers` in groups of settings.layer_group_size (0: all at once).

    `load_layers(group)` returns [len(group), N, D] (dtypes: see run_sweep);
    only one group is in memory at a time. Each group is sharded over settings.devices devices
    (probe_mesh). Results equal those of a single sweep over all layers on
    one device.
    """
    mesh = probe_mesh(settings.devices)
    layers = [int(x) for x in layers]
    group_size = settings.layer_group_size or len(layers)
    seed_ids = list(range(settings.num_seeds)) if seed_ids is None else list(seed_ids)
    num_grid = len(settings.grid()["learning_rate"])
    num_tasks = 2 if settings.controls else 1
    progress = _sweep_progress(len(layers) * num_tasks * len(seed_ids) * num_grid * settings.epochs)
    parts = []
    for start in range(0, len(layers), group_size):
        group = layers[start : start + group_size]
        parts.append(
            run_sweep(
                load_layers(group),
                labels,
                mask,
                split,
                settings,
                layer_ids=group,
                seed_ids=seed_ids,
                progress=progress,
                mesh=mesh,
            )
        )
    return parts[0] if len(parts) == 1 else SweepResult.concatenate(parts)
