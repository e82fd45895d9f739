"""The sweep's jitted kernels: RNG streams, the control's shuffled labels, and the programs that
initialise, train, select and evaluate the probes.

Every kernel maps one probe's computation over the leading axes
[layer, target, seed, grid] of the parameters (`_vmap_probes`): `jax.vmap`
maps a single probe's Adam(W) step over the four axes and `lax.scan` runs an
epoch's minibatches. Features are always passed as arguments (a closed-over
array would be baked into the program as a constant), raw and example-major
[n, L, D] in their store dtype; each minibatch is standardised in float32 as
it is gathered (_standardized).

Axes:
  layer   the hidden states probed (layer indices of the workdir);
  target  0 = the labels, 1 = the shuffled-label control (labels permuted
          within the train split, and within val for its epoch selection, one
          permutation per seed; scored on the real labels);
  seed    seed indices s = 0..num_seeds-1;
  grid    points of the learning-rate x weight-decay x dropout grid.

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
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from probing.probes.model import LinearProbe, _optimizer, hash_bits
from probing.store.layout import TRAIN, VAL

# Stream ids folded into the root key so that draws made for different
# purposes never share a key.
_INIT_STREAM, _SHUFFLE_STREAM, _DROPOUT_STREAM, _CONTROL_STREAM = 0, 1, 2, 3


def _vmap_probes(fn: Callable, grid_axes, seed_axes, target_axes, layer_axes) -> Callable:
    """vmaps a single-probe function over grid, then seed, target and layer (outermost)."""
    fn = jax.vmap(fn, in_axes=grid_axes)
    fn = jax.vmap(fn, in_axes=seed_axes)
    fn = jax.vmap(fn, in_axes=target_axes)
    return jax.vmap(fn, in_axes=layer_axes)


def _root_key(seed: int) -> jax.Array:
    return jax.random.key(seed)


def _stream_key(seed: int, stream: int, *indices: jax.Array) -> jax.Array:
    key = jax.random.fold_in(_root_key(seed), stream)
    for index in indices:
        key = jax.random.fold_in(key, index)
    return key


def _target_labels(labels, mask, rows, seed_ids, settings, split_name):
    """Labels and mask of `rows` per target and seed, [T, S, n, C].

    The shuffled-label control permutes the label vectors (with their masks)
    within the split, one permutation per seed and split. Its train labels
    carry no signal, and its epoch is chosen on equally shuffled val labels so
    that its selection cannot peek at the real ones.
    """
    y, m = labels[rows], mask[rows]
    per_seed = (len(seed_ids), *y.shape)
    target_labels, target_masks = [np.broadcast_to(y, per_seed)], [np.broadcast_to(m, per_seed)]
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
        target_labels.append(np.stack([y[p] for p in perms]))
        target_masks.append(np.stack([m[p] for p in perms]))
    return jnp.asarray(np.stack(target_labels)), jnp.asarray(np.stack(target_masks))


def _init_state(layer_ids, seed_ids, hp, *, seed, num_targets, num_outputs, dim, zero_init):
    """Initial parameters and optimizer state, [layer, target, seed, grid, ...]."""

    def init_one(layer, seed_index):
        key = _stream_key(seed, _INIT_STREAM, seed_index, layer)
        probe = LinearProbe(num_outputs, zero_init=zero_init)
        return probe.init(key, jnp.zeros((1, dim), jnp.float32))["params"]

    per_layer_seed = jax.vmap(jax.vmap(init_one, (None, 0)), (0, None))(layer_ids, seed_ids)
    num_grid = hp["learning_rate"].shape[0]

    # The control probe starts from the labels probe's weights and all grid
    # points share them: comparisons between them are paired.
    def expand(p):
        shape = (p.shape[0], num_targets, p.shape[1], num_grid, *p.shape[2:])
        return jnp.broadcast_to(p[:, None, :, None], shape)

    params = jax.tree.map(expand, per_layer_seed)
    opt_init = _vmap_probes(
        lambda p, lr, wd: _optimizer(lr, wd).init(p),
        grid_axes=(0, 0, 0),
        seed_axes=(0, None, None),
        target_axes=(0, None, None),
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
        target_axes=(0, 0, None, 0, 0, None, None, None, None),
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
