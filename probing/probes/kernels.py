"""The sweep's jitted training kernels: RNG streams, and the programs that initialise, train
and select the probes (probing.probes.scoring holds the standardisation and scoring ones).

Every kernel maps one probe's computation over the leading axes
[layer, fold, target, seed, grid] of the parameters (`_vmap_probes`):
`jax.vmap` maps a single probe's Adam(W) step over the five axes and
`lax.scan` runs an epoch's minibatches. Features are always passed as
arguments (a closed-over array would be baked into the program as a
constant), raw and example-major [N, L, D] in their store dtype, every row of
the workdir once; the folds share one train index and minibatch order, each
masking out the rows outside its train part (probing.probes.folds; a
minibatch holds rows that are train in the same folds, so a fold trains on
it whole or skips it), and each minibatch is standardised in float32, with
each fold's train statistics, as it is gathered (scoring._standardized).

Axes:
  layer   the hidden states probed (layer indices of the workdir);
  fold    the splits trained: one (the workdir's own) or the folds re-drawn
          at probe time (settings.folds);
  target  0 = the labels, 1 = the shuffled-label control (labels permuted
          within the fold's train part, and within val for its epoch
          selection, one permutation per seed; scored on the test part's
          labels permuted the same way, keyed on split TEST: its own task,
          folds.control_targets);
  seed    seed indices s = 0..num_seeds-1;
  grid    points of the learning-rate x weight-decay x dropout grid.

Determinism. Every random draw of probe (layer l, fold f, seed s) depends
only on (settings.seed, s, l), the fold's rows, and the epoch and step:
initial weights on (seed, s, l), minibatch order on (seed, s, epoch) (a
permutation of the shared train index), dropout masks on
(seed, s, epoch, step), the control permutations on (seed, s, split). Early
stopping is per probe (probing.probes.stopping). So a sweep restricted to one
layer, fold and seed trains that probe exactly as the full sweep does, and
layer groups can be streamed one after another with identical results.
Bitwise equality (tested on CPU) also needs the arithmetic to be independent
of how many probes share the program: standardisation statistics are
computed one layer and fold at a time, per-probe loss sums are added in a
fixed pairwise order (scoring._weighted_sum), divisions by a broadcast value
are written as products with its reciprocal (XLA rewrites them so in some
programs only), train-loss sums are added on the host in step order, the
shared train index and the padded val / test index arrays come from the
full fold set whatever folds are trained, the parts a CPU minibatch is
stepped through in (part_rows) depend on the batch size and feature width
only, and the layer axis is padded to at least two layers per device (XLA
compiles a size-1 axis differently). The two forms of a minibatch step
(settings.layer_update: layers one after another, fast on CPU, or all
together, for accelerators) are each deterministic but differ from each
other in the last bits.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import optax

from probing.probes import stopping
from probing.probes.category_selection import select_per_category
from probing.probes.model import LinearProbe, _optimizer, hash_bits, keep_masks
from probing.probes.scoring import _apply_all, _selection_score, _standardized, _weighted_sum

# Stream ids folded into the root key so that draws made for different
# purposes never share a key.
_INIT_STREAM, _SHUFFLE_STREAM, _DROPOUT_STREAM, _CONTROL_STREAM = 0, 1, 2, 3


def _vmap_probes(
    fn: Callable, grid_axes, seed_axes, target_axes, fold_axes=None, layer_axes=None
) -> Callable:
    """vmaps a single-probe function over grid, then seed, target, fold and layer (outermost);
    without fold_axes (layer_axes), not over the fold (layer)."""
    fn = jax.vmap(fn, in_axes=grid_axes)
    fn = jax.vmap(fn, in_axes=seed_axes)
    fn = jax.vmap(fn, in_axes=target_axes)
    fn = fn if fold_axes is None else jax.vmap(fn, in_axes=fold_axes)
    return fn if layer_axes is None else jax.vmap(fn, in_axes=layer_axes)


def _root_key(seed: int) -> jax.Array:
    return jax.random.key(seed)


def _stream_key(seed: int, stream: int, *indices: jax.Array) -> jax.Array:
    key = jax.random.fold_in(_root_key(seed), stream)
    for index in indices:
        key = jax.random.fold_in(key, index)
    return key


def _init_state(
    layer_ids,
    seed_ids,
    hp,
    *,
    seed,
    num_folds,
    num_targets,
    num_outputs,
    dim,
    zero_init,
    per_category=False,
):
    """Initial parameters, optimizer and stopping state, [layer, fold, target, seed, grid, ...].

    With `per_category`, "category" holds each output's own selection and
    stopping state, [layer, fold, target, seed, grid, C] (see _select_epoch).
    """

    def init_one(layer, seed_index):
        key = _stream_key(seed, _INIT_STREAM, seed_index, layer)
        probe = LinearProbe(num_outputs, zero_init=zero_init)
        return probe.init(key, jnp.zeros((1, dim), jnp.float32))["params"]

    per_layer_seed = jax.vmap(jax.vmap(init_one, (None, 0)), (0, None))(layer_ids, seed_ids)
    num_grid = hp["learning_rate"].shape[0]

    # The control probe starts from the labels probe's weights, and all folds
    # and grid points share them: comparisons between them are paired.
    def expand(p):
        shape = (p.shape[0], num_folds, num_targets, p.shape[1], num_grid, *p.shape[2:])
        return jnp.broadcast_to(p[:, None, None, :, None], shape)

    params = jax.tree.map(expand, per_layer_seed)
    opt_init = _vmap_probes(
        lambda p, lr, wd: _optimizer(lr, wd).init(p),
        grid_axes=(0, 0, 0),
        seed_axes=(0, None, None),
        target_axes=(0, None, None),
        fold_axes=(0, None, None),
        layer_axes=(0, None, None),
    )
    opt_state = opt_init(params, hp["learning_rate"], hp["weight_decay"])
    num_probes = params["dense"]["bias"].shape[:5]
    state = {
        "params": params,
        "opt_state": opt_state,
        "best_params": params,
        "best_score": jnp.full(num_probes, -jnp.inf, jnp.float32),
        "best_epoch": jnp.zeros(num_probes, jnp.int32),
        **stopping.initial_state(num_probes),
    }
    if per_category:
        per_output = (*num_probes, num_outputs)
        state["category"] = {
            "best_score": jnp.full(per_output, -jnp.inf, jnp.float32),
            "best_epoch": jnp.zeros(per_output, jnp.int32),
            **stopping.initial_state(per_output),
        }
    return state


def _probe_step(
    params, opt_state, live, x, labels, mask, keep, rate_index, lr, wd, rate, *, num_outputs
):
    """One optimizer step of one probe on one minibatch; returns the summed loss.

    keep: the dropout keep masks of the seed's minibatch, one per distinct
    rate of the grid [R, B, D] (model.keep_masks), or None without dropout;
    rate_index: which of them is this probe's rate.

    A probe that is not `live` (stopped early, or a minibatch of its fold made
    of padding only) keeps its parameters and optimizer state exactly: an
    Adam step on a zero gradient would still move it by its momentum.
    """

    probe_keep = None if keep is None else keep[rate_index]

    def loss_fn(p):
        logits = LinearProbe(num_outputs).apply({"params": p}, x, probe_keep, rate)
        loss_sum = _weighted_sum(optax.sigmoid_binary_cross_entropy(logits, labels), mask, 2)
        return loss_sum / jnp.maximum(mask.sum(), 1.0), loss_sum

    (_, loss_sum), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return (*_adam_step(params, opt_state, live, grads, lr, wd), loss_sum)


def _adam_step(params, opt_state, live, grads, lr, wd):
    """One probe's optimizer step from its gradient: (parameters, optimizer state), both
    kept exactly as they were where the probe is not `live`."""
    updates, new_opt_state = _optimizer(lr, wd).update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)

    def keep(new, old):
        return jnp.where(live, new, old)

    return jax.tree.map(keep, new_params, params), jax.tree.map(keep, new_opt_state, opt_state)


def _probe_gradients(
    params, x, labels, mask, keep, rate_index, rate, inverse_count, *, num_outputs
):
    """One probe's loss terms [b, C] and gradient on b rows of its minibatch (a part of it).

    The gradient of the probe's mean loss (loss_sum / count, as _probe_step)
    restricted to these rows: summed over the parts of a minibatch it is the
    minibatch's gradient, so a minibatch can be stepped through in parts
    that stay in cache (_train_epoch's `part_rows`). inverse_count: 1 / the
    number of the minibatch's scored entries, max 1.
    """
    probe_keep = None if keep is None else keep[rate_index]
    logits, backward = jax.vjp(
        lambda p: LinearProbe(num_outputs).apply({"params": p}, x, probe_keep, rate), params
    )
    terms, loss_gradient = jax.vmap(
        jax.vmap(jax.value_and_grad(optax.sigmoid_binary_cross_entropy))
    )(logits, labels)
    (grads,) = backward(loss_gradient * mask * inverse_count)
    return terms, grads


def _probe_update(params, opt_state, live, grads, terms, mask, lr, wd):
    """One probe's optimizer step from its minibatch gradient; returns the summed loss too.

    As _probe_step: a probe that is not `live` keeps its parameters and
    optimizer state exactly.
    """
    return (*_adam_step(params, opt_state, live, grads, lr, wd), _weighted_sum(terms, mask, 2))


def part_rows(batch_size: int, dim: int, max_bytes: int) -> int:
    """Rows per part of a minibatch for the layer-by-layer step: the largest divisor of
    batch_size whose float32 rows take at most max_bytes (at least one row).

    Depends on the batch size and feature width only, never on how many
    probes share the sweep: the parts fix the order in which a probe's
    gradient is summed, and a sweep restricted to some seeds, folds or layers
    must sum it as the full sweep does.
    """
    fitting = [rows for rows in range(1, batch_size + 1) if batch_size % rows == 0]
    return max([rows for rows in fitting if rows * dim * 4 <= max_bytes] or [1])


def _epoch_order(seed, seed_index, epoch, chunk_sizes, batch_size):
    """Positions into the shared train index in this epoch's order, [steps * B], and their
    weights (0 for padding).

    The shared index is laid out in chunks (probing.probes.folds: rows that
    are train in the same folds). One chunk (no folds): a permutation of its
    rows, the last minibatch padded with weight-0 copies of position 0, so
    every train row is used once per epoch and all steps have one shape. Several
    chunks: each chunk is permuted and cut into minibatches on its own (its
    last one padded), and the minibatches of all chunks are shuffled
    together. A minibatch then holds rows of one chunk only, which every fold
    either trains on whole or skips whole: no fold computes on rows it masks out.
    """
    key = _stream_key(seed, _SHUFFLE_STREAM, seed_index, epoch)
    if len(chunk_sizes) == 1:
        (num_rows,) = chunk_sizes
        padding = -(-num_rows // batch_size) * batch_size - num_rows
        order = jax.random.permutation(key, num_rows)
        order = jnp.concatenate([order, jnp.zeros(padding, order.dtype)])
        weight = jnp.concatenate([jnp.ones(num_rows), jnp.zeros(padding)]).astype(jnp.float32)
        return order, weight
    orders, weights, start = [], [], 0
    for c, size in enumerate(chunk_sizes):
        padding = -(-size // batch_size) * batch_size - size
        chunk_order = start + jax.random.permutation(jax.random.fold_in(key, c), size)
        orders.append(jnp.concatenate([chunk_order, jnp.full(padding, start, chunk_order.dtype)]))
        weights.append(jnp.concatenate([jnp.ones(size), jnp.zeros(padding)]))
        start += size
    steps = jax.random.permutation(
        jax.random.fold_in(key, len(chunk_sizes)), sum(len(o) for o in orders) // batch_size
    )
    order = jnp.concatenate(orders).reshape(-1, batch_size)[steps].reshape(-1)
    weight = jnp.concatenate(weights).reshape(-1, batch_size)[steps].reshape(-1)
    return order, weight.astype(jnp.float32)


def _train_epoch(
    state,
    x,
    mean,
    inverse,
    train_rows,
    train_weight,
    y_train,
    m_train,
    epoch,
    seed_ids,
    hp,
    *,
    seed,
    batch_size,
    dropouts,
    num_outputs,
    layer_loop,
    fold_loop,
    chunk_sizes,
    whole_rows_max_bytes,
    part_max_bytes,
):
    """One epoch of every active probe. x [N, L, D] raw; train_rows [n] the shared train index,
    laid out in chunks of `chunk_sizes` rows, train_weight [F, n] each fold's rows of it;
    y_train, m_train [F, T, S, n, C] (the mask 0 outside the fold's train part); mean,
    inverse [L, F, D]; `dropouts` the grid's dropout rate per grid point (static, the
    values of hp["dropout"]).

    All folds step through the same minibatches of the shared index: a
    minibatch is gathered once and each fold trains on its rows of it (the
    others are masked out), so K folds cost one gather, not K. Minibatches
    hold one chunk each (_epoch_order), so a fold trains on a minibatch whole
    or not at all; with `fold_loop` (folds on, layer_loop) the folds of a
    layer are then updated one after another and a fold that does not train
    on the minibatch is skipped (lax.cond): each fold computes on its own rows
    only, and its standardised minibatch [S, B, D] stays in cache.

    Each minibatch is standardised right after it is gathered (_standardized),
    with each fold's statistics, so the features stay in their store dtype:
    with float16 features every step reads half the bytes, and the values the
    probes see are the same.

    With `layer_loop`, each minibatch step updates the layers one after
    another (lax.map) instead of all at once. The probe arithmetic is the same;
    what changes is the working set: one layer's minibatch [S, B, D] stays in
    a CPU's cache through gather, dropout, forward and backward, where the
    all-layers form streams [L, F, S, B, D] through memory several times per
    step; and a layer whose probes have all stopped is skipped (lax.cond).
    Accelerators prefer the all-at-once form (fewer, larger kernels).
    """
    num_layers, dim = x.shape[1], x.shape[2]
    num_steps = sum(-(-size // batch_size) for size in chunk_sizes)
    use_dropout = max(dropouts) > 0
    # One keep mask per distinct rate; each grid point reads its rate's mask.
    rates = tuple(sorted(set(dropouts)))
    rate_index = jnp.asarray([rates.index(rate) for rate in dropouts], jnp.int32)

    def batches_of_seed(seed_index):
        order, weight = _epoch_order(seed, seed_index, epoch, chunk_sizes, batch_size)
        dropout_key = _stream_key(seed, _DROPOUT_STREAM, seed_index, epoch)
        words = jax.vmap(
            lambda step: jax.random.bits(jax.random.fold_in(dropout_key, step), (2,), jnp.uint32)
        )(jnp.arange(num_steps))
        return (
            order.reshape(num_steps, batch_size),
            weight.reshape(num_steps, batch_size),
            words,
        )

    order, weight, words = jax.vmap(batches_of_seed)(seed_ids)  # [S, steps, ...]
    steps_first = jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), (order, weight, words))
    seed_positions = jnp.arange(seed_ids.shape[0])[:, None]
    in_axes = dict(
        grid_axes=(0, 0, 0, None, None, None, None, 0, 0, 0, 0),
        seed_axes=(0, 0, 0, 0, 0, 0, 1 if use_dropout else None, None, None, None, None),
        target_axes=(0, 0, 0, None, 0, 0, None, None, None, None, None),
        fold_axes=(0, 0, 0, 0, 0, 0, None, None, None, None, None),
    )
    probe_step = partial(_probe_step, num_outputs=num_outputs)
    step = _vmap_probes(
        probe_step, **in_axes, layer_axes=(0, 0, 0, 0, None, None, None, None, None, None, None)
    )
    # The layer-by-layer step (layer_loop): gradients part by part, then one update.
    # _probe_gradients(params, x, labels, mask, keep, rate_index, rate, inverse_count),
    # x [F, S, b, D] (with fold_loop [S, b, D]), keep [R, S, b, D], inverse_count [F, T, S].
    gradient_axes = dict(
        grid_axes=(0, None, None, None, None, 0, 0, None),
        seed_axes=(0, 0, 0, 0, 1 if use_dropout else None, None, None, 0),
        target_axes=(0, None, 0, 0, None, None, None, 0),
        fold_axes=(0, 0, 0, 0, None, None, None, 0),
    )
    # _probe_update(params, opt_state, live, grads, terms, mask, lr, wd), mask [F, T, S, B, C].
    update_axes = dict(
        grid_axes=(0, 0, 0, 0, 0, None, 0, 0),
        seed_axes=(0, 0, 0, 0, 0, 0, None, None),
        target_axes=(0, 0, 0, 0, 0, 0, None, None),
        fold_axes=(0, 0, 0, 0, 0, 0, None, None),
    )

    def without_folds(axes):
        return {k: v for k, v in axes.items() if k != "fold_axes"}

    gradients = partial(_probe_gradients, num_outputs=num_outputs)
    # (whole-minibatch step, part gradients, update) of a layer's probes, and of a fold's.
    layer_programs = (
        _vmap_probes(probe_step, **in_axes),
        _vmap_probes(gradients, **gradient_axes),
        _vmap_probes(_probe_update, **update_axes),
    )
    fold_programs = (
        _vmap_probes(probe_step, **without_folds(in_axes)),
        _vmap_probes(gradients, **without_folds(gradient_axes)),
        _vmap_probes(_probe_update, **without_folds(update_axes)),
    )
    part_size = part_rows(batch_size, dim, part_max_bytes)
    num_parts = batch_size // part_size
    per_grid = (rate_index, hp["learning_rate"], hp["weight_decay"], hp["dropout"])

    def by_part(a, axis):
        """[..., B, ...] -> [parts, ..., b, ...]: the minibatch axis cut into its parts."""
        shape = (*a.shape[:axis], num_parts, part_size, *a.shape[axis + 1 :])
        return jnp.moveaxis(a.reshape(shape), axis, 0)

    def whole(terms):
        """Loss terms [parts, ..., b, C] -> [..., B, C]."""
        terms = jnp.moveaxis(terms, 0, -3)
        return terms.reshape(*terms.shape[:-3], batch_size, terms.shape[-1])

    def stepped_in_parts(params, opt_state, live, read, standardize, parts, mask, programs):
        """A minibatch step of the probes of a layer (or of one fold of it), part by part.

        read(part index, part's rows) -> raw rows [S, b, D]; standardize(raw) ->
        what the programs take. Each part is read, standardised, dropped out and
        used by the forward and backward products while it is in cache; the
        parts' gradients add up to the minibatch's, then each probe steps once.
        A minibatch of one part takes the whole-minibatch step (_probe_step),
        exactly as before parts existed (small batches, or narrow features).
        """
        whole_step, gradients, update = programs
        if num_parts == 1:
            rows, labels, part_mask, keep = jax.tree.map(lambda a: a[0], parts)
            xs = standardize(read(0, rows))
            return whole_step(params, opt_state, live, xs, labels, part_mask, keep, *per_grid)
        inverse_count = 1.0 / jnp.maximum(mask.sum(axis=(-2, -1)), 1.0)  # [(F,) T, S]

        def one_part(total, part):
            index, rows, labels, part_mask, keep = part
            terms, grads = gradients(
                params,
                standardize(read(index, rows)),
                labels,
                part_mask,
                keep,
                rate_index,
                hp["dropout"],
                inverse_count,
            )
            return jax.tree.map(jnp.add, total, grads), terms

        zeros = jax.tree.map(jnp.zeros_like, params)
        grads, terms = jax.lax.scan(one_part, zeros, (jnp.arange(num_parts), *parts))
        lr, wd = hp["learning_rate"], hp["weight_decay"]
        return update(params, opt_state, live, grads, whole(terms), mask, lr, wd)

    def body(carry, batch):
        params, opt_state = carry
        positions, row_weight, key_words = batch  # [S, B], [S, B], [S, 2]
        rows = train_rows[positions]  # [S, B], shared by the folds
        labels = y_train[:, :, seed_positions, positions]  # [F, T, S, B, C]
        mask = m_train[:, :, seed_positions, positions] * row_weight[None, None, :, :, None]
        # A probe steps when it is active and its fold has a train row in the minibatch.
        fold_rows = train_weight[:, positions] * row_weight  # [F, S, B]
        live = state["active"] & (fold_rows.sum(-1) > 0)[None, :, None, :, None]
        keep = None
        if use_dropout:
            # [R, S, B, D]: thresholded here, once per step, for all layers.
            bits = jax.vmap(lambda w: hash_bits(w, (batch_size, dim)))(key_words)
            keep = keep_masks(bits, rates)
        if layer_loop:
            # [S, B, L, D]: each row of every layer in one contiguous read, when
            # that block fits in cache; bigger minibatches read each layer's
            # rows where that layer is trained (a block that overflows the
            # cache would be read from memory twice). The values are the same.
            block_bytes = rows.size * num_layers * dim * x.dtype.itemsize
            block = x[rows] if block_bytes <= whole_rows_max_bytes else None
            # The minibatch cut into parts once per step, for every layer.
            keep_parts = None if keep is None else by_part(keep, 2)  # [parts, R, S, b, D]
            parts = (by_part(rows, 1), by_part(labels, 3), by_part(mask, 3), keep_parts)
            if fold_loop:  # fold-major: the folds of a layer are mapped over
                parts = (parts[0], *(jnp.moveaxis(p, 1, 0) for p in parts[1:3]), keep_parts)

            def one_layer(layer_state):
                layer_params, layer_opt_state, layer_live, layer = layer_state

                def read_part(index, part_rows):
                    if block is None:
                        return x[part_rows, layer]  # [S, b, D]
                    part = jax.lax.dynamic_slice_in_dim(block, index * part_size, part_size, 1)
                    return jax.lax.dynamic_index_in_dim(part, layer, axis=2, keepdims=False)

                def update(_):
                    if not fold_loop:
                        return stepped_in_parts(
                            layer_params,
                            layer_opt_state,
                            layer_live,
                            read_part,
                            lambda raw: _standardized(
                                raw[None], mean[layer][:, None, None], inverse[layer][:, None, None]
                            ),
                            parts,
                            mask,
                            layer_programs,
                        )
                    # Folds: each fold trains on a minibatch whole or skips it (lax.cond),
                    # so the minibatch is read once for all folds, then cut into parts.
                    if block is None:
                        raw = x[rows, layer]  # [S, B, D]
                    else:
                        raw = jax.lax.dynamic_index_in_dim(block, layer, axis=2, keepdims=False)

                    def read_raw(index, _):
                        return jax.lax.dynamic_slice_in_dim(raw, index * part_size, part_size, 1)

                    def one_fold(fold_state):
                        params, opt_state, live, fold_mean, fold_inverse, *rest = fold_state
                        labels_by_part, mask_by_part, fold_mask = rest

                        def fold_step(_):
                            return stepped_in_parts(
                                params,
                                opt_state,
                                live,
                                read_raw,
                                lambda part: _standardized(part, fold_mean, fold_inverse),
                                (parts[0], labels_by_part, mask_by_part, keep_parts),
                                fold_mask,
                                fold_programs,
                            )

                        def skip(_):
                            return params, opt_state, live * jnp.float32(0)

                        return jax.lax.cond(live.any(), fold_step, skip, None)

                    per_fold = (layer_params, layer_opt_state, layer_live, mean[layer])
                    per_fold = (*per_fold, inverse[layer], parts[1], parts[2], mask)
                    return jax.lax.map(one_fold, per_fold)

                def skip(_):
                    # Zeros derived from a per-device input: under shard_map both
                    # branches must vary over the mesh alike.
                    return layer_params, layer_opt_state, layer_live * jnp.float32(0)

                return jax.lax.cond(layer_live.any(), update, skip, None)

            layers = jnp.arange(num_layers)
            params, opt_state, loss_sum = jax.lax.map(one_layer, (params, opt_state, live, layers))
        else:
            raw = jnp.moveaxis(x[rows], 2, 0)[:, None]  # [L, 1, S, B, D]
            xs = _standardized(raw, mean[:, :, None, None], inverse[:, :, None, None])
            params, opt_state, loss_sum = step(
                params, opt_state, live, xs, labels, mask, keep, *per_grid
            )
        scored = mask.sum(axis=(3, 4))[None, :, :, :, None]  # [1, F, T, S, 1]
        return (params, opt_state), (loss_sum, scored)

    (params, opt_state), (loss_sums, scored) = jax.lax.scan(
        body, (state["params"], state["opt_state"]), steps_first
    )
    # Per-step sums go back to the host, which adds them up in a fixed order
    # (see _weighted_sum for why the device does not).
    return {**state, "params": params, "opt_state": opt_state}, (loss_sums, scored)


def _select_epoch(
    state,
    x,
    val_rows,
    mean,
    inverse,
    y_val,
    m_val,
    epoch,
    *,
    num_outputs,
    selection,
    multilabel,
    patience,
    min_delta,
    per_category=False,
):
    """Scores every probe on its fold's val rows, keeps its parameters if they improved, and
    updates its early stopping.

    y_val, m_val: [F, T, S, n, C], the control's val labels shuffled like its train labels.
    With `per_category` (state has "category"), see category_selection.

    Returns:
      the state, and {"loss": val loss per probe} (with `per_category` also
      "category_loss", the val loss per probe and output).
    """
    logits = _apply_all(state["params"], x, val_rows, mean, inverse, num_outputs=num_outputs)
    labels, mask = y_val[None, :, :, :, None], m_val[None, :, :, :, None]
    val_loss, score = _selection_score(
        logits, labels, mask, selection=selection, multilabel=multilabel
    )
    if per_category:
        state, category_loss = select_per_category(
            state, logits, labels, mask, val_loss, score, epoch, selection, patience, min_delta
        )
        return state, {"loss": val_loss, "category_loss": category_loss}
    # Strictly better only: ties keep the earlier epoch. A stopped probe's
    # selection is frozen with it.
    improved = state["active"] & (score > state["best_score"])

    def keep(new, old):
        return jnp.where(improved.reshape(improved.shape + (1,) * (new.ndim - 5)), new, old)

    state = {
        **state,
        "best_params": jax.tree.map(keep, state["params"], state["best_params"]),
        "best_score": jnp.where(improved, score, state["best_score"]),
        "best_epoch": jnp.where(improved, epoch + 1, state["best_epoch"]),
    }
    state = stopping.update(state, score, epoch, patience=patience, min_delta=min_delta)
    return state, {"loss": val_loss}
