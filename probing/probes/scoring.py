"""The sweep's standardisation and scoring kernels: per-fold train statistics, logits of every
probe on its fold's rows, the val selection score, and the order-fixed sums they rely on.

Shapes follow probing.probes.kernels: parameters [layer, fold, target, seed,
grid, ...], raw features x [N, L, D] (every row of the workdir, in its store
dtype), the shared train index with each fold's row weights on it, and per
fold an int32 index array of its val or test rows, padded to the longest
fold (padding rows are masked out by the label masks).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from probing.probes.model import LinearProbe


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


def _layer_statistics(x: jax.Array, weight: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """Mean and scale [D] of one layer's train features [n, D] (any float dtype).

    With `weight` [n] (1 for the fold's train rows of the shared train index,
    0 for the others), only the fold's rows count; without, all rows do (the
    workdir's own split, computed exactly as before folds existed).
    """
    x = x.astype(jnp.float32)
    if weight is None:
        mean = jnp.mean(x, axis=0)
        std = jnp.sqrt(jnp.mean(jnp.square(x - mean), axis=0))
    else:
        inverse_count = 1.0 / jnp.sum(weight)
        mean = jnp.sum(x * weight[:, None], axis=0) * inverse_count
        std = jnp.sqrt(jnp.sum(jnp.square(x - mean) * weight[:, None], axis=0) * inverse_count)
    # A dimension constant on train carries no information; dividing by 1
    # instead of ~0 keeps its (tiny) val/test deviations from exploding.
    return mean, jnp.where(std > 1e-6, std, 1.0)


def _statistics(x, train_rows, train_weight, *, weighted):
    """Per-layer, per-fold standardisation [L, F, D] from each fold's train rows: mean, scale,
    1 / scale.

    Computed one (layer, fold) at a time (lax.map) rather than as one
    reduction over [L, F, n, D]: XLA orders a batched reduction differently
    for different L or F, which would make a probe's numbers depend on how
    many other layers or folds share the sweep. Only a fold's train rows
    count (train_weight): its val and test rows never shape its
    standardisation.
    """

    def one_layer(layer):
        layer_x = x[train_rows, layer]
        return jax.lax.map(
            lambda weight: _layer_statistics(layer_x, weight if weighted else None), train_weight
        )

    mean, scale = jax.lax.map(one_layer, jnp.arange(x.shape[1]))
    return mean, scale, 1.0 / scale


# Rows per chunk of _apply_all: a fold's standardised chunk (float32) takes at
# most this many bytes, so it stays in a core's L2 cache between the
# standardisation that writes it and the product that reads it (168 rows at
# D = 1,536). A whole layer's val rows (8,000 x 1,536 float32: 49 MB) went to
# memory and back, and val scoring took 3-4x its read time. Fixed, not derived
# from the fold count: the chunk shape fixes the product's summation order.
APPLY_CHUNK_BYTES = 1 << 20


def apply_chunk_rows(dim: int, chunk_bytes: int = APPLY_CHUNK_BYTES) -> int:
    """Rows per chunk of _apply_all for features of width `dim`: a multiple of 8, at least 8."""
    return max(8, chunk_bytes // (4 * dim) // 8 * 8)


def _apply_all(params, x, rows, mean, inverse, *, num_outputs, chunk_bytes=APPLY_CHUNK_BYTES):
    """Logits [L, F, T, S, G, n, C] of every probe on its fold's rows `rows` [F, n] of raw x
    (no dropout).

    Layer by layer (lax.map), and within a layer chunk by chunk of rows
    (apply_chunk_rows, the last chunk padded with row 0): one chunk's
    standardised rows [F, c, D] are the only float32 copy made, and they stay
    in cache for the product.
    """
    apply = jax.vmap(
        jax.vmap(
            jax.vmap(
                jax.vmap(
                    lambda p, xl: LinearProbe(num_outputs).apply({"params": p}, xl),
                    in_axes=(0, None),
                ),
                in_axes=(0, None),
            ),
            in_axes=(0, None),
        ),
        in_axes=(0, 0),
    )

    num_rows = rows.shape[1]
    chunk = apply_chunk_rows(x.shape[2], chunk_bytes)
    num_chunks = -(-num_rows // chunk)
    padded = jnp.pad(rows, ((0, 0), (0, num_chunks * chunk - num_rows)))
    chunks = jnp.moveaxis(padded.reshape(rows.shape[0], num_chunks, chunk), 1, 0)  # [K, F, c]

    def one_layer(layer_args):
        layer_params, layer, layer_mean, layer_inverse = layer_args

        def one_chunk(chunk_rows):
            raw = x[chunk_rows, layer]  # [F, c, D]
            return apply(
                layer_params, _standardized(raw, layer_mean[:, None], layer_inverse[:, None])
            )

        logits = jax.lax.map(one_chunk, chunks)  # [K, F, T, S, G, c, C]
        logits = jnp.moveaxis(logits, 0, -3)  # [F, T, S, G, K, c, C]
        return logits.reshape(*logits.shape[:-3], num_chunks * chunk, num_outputs)[
            ..., :num_rows, :
        ]

    return jax.lax.map(one_layer, (params, jnp.arange(x.shape[1]), mean, inverse))


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


def _chosen_logits(params, x, row_sets, mean, inverse, chosen_grid, *, num_outputs):
    """Logits [L, F, T, S, n, C] on each fold's rows of every split in `row_sets`, of the grid
    point chosen per (layer, fold) (chosen_grid [L, F]), and the chosen parameters.

    Every grid point is applied and the chosen one picked afterwards, so the
    probes are evaluated by the same vmapped program that selected them. All
    splits go through one call so that XLA compiles one program, not one per
    split size.
    """

    def pick(p):
        index = chosen_grid.reshape(chosen_grid.shape + (1,) * (p.ndim - 2))
        return jnp.take_along_axis(p, index, axis=4)[:, :, :, :, 0]

    logits = [
        pick(_apply_all(params, x, rows, mean, inverse, num_outputs=num_outputs))
        for rows in row_sets
    ]
    return logits, jax.tree.map(pick, params)
