"""The sweep's epoch kernel (kernels._train_epoch) against a plain numpy reference.

The reference trains every probe (layer, target, seed, grid point) alone, the
textbook way: gather its seed's minibatch, standardise it, apply dropout with
the keep mask its rate gives the step's uniforms, forward the linear probe,
take the sigmoid cross-entropy gradient averaged over the scored entries,
and take an AdamW step (decay on the kernel only). It shares with the sweep
only its random draws (minibatch order and dropout bits, which the sweep's
determinism contract fixes), so any fusing, sharing or reordering of the
arithmetic in the kernel must leave each probe's numbers within float
tolerance of it.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probing.probes.kernels import (
    _DROPOUT_STREAM,
    _epoch_order,
    _init_state,
    _stream_key,
    _train_epoch,
    part_rows,
)
from probing.probes.model import hash_bits

SEED, N, L, D, C, T, S, BATCH = 7, 40, 2, 8, 2, 2, 2, 16
# Three grid points, two sharing a dropout rate (and so a keep mask).
HP = {
    "learning_rate": np.array([1e-2, 3e-2, 2e-2], np.float32),
    "weight_decay": np.array([0.0, 0.1, 0.0], np.float32),
    "dropout": np.array([0.1, 0.3, 0.1], np.float32),
}
B1, B2, EPS = 0.9, 0.999, 1e-8


def _inputs():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, L, D)).astype(np.float16)  # raw, example-major, store dtype
    train_rows = np.arange(4, N, dtype=np.int32)  # 36 train rows: 3 steps, the last padded
    n = len(train_rows)
    values = x[train_rows].astype(np.float32)
    mean = values.mean(0)[:, None]  # [L, F=1, D]
    inverse = (1.0 / values.std(0))[:, None]
    y = (rng.random((1, T, S, n, C)) < 0.5).astype(np.float32)
    m = (rng.random((1, T, S, n, C)) < 0.8).astype(np.float32)
    return x, mean, inverse, train_rows, y, m


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _reference(state, x, mean, inverse, train_rows, y, m, epoch):
    """Every probe trained alone for one epoch, in float64 numpy."""
    n = len(train_rows)
    kernel = np.asarray(state["params"]["dense"]["kernel"], np.float64)  # [L, 1, T, S, G, D, C]
    bias = np.asarray(state["params"]["dense"]["bias"], np.float64)
    num_grid = len(HP["learning_rate"])
    steps = -(-n // BATCH)
    for s in range(S):
        order, weight = (np.asarray(a) for a in _epoch_order(SEED, s, epoch, (n,), BATCH))
        dropout_key = _stream_key(SEED, _DROPOUT_STREAM, s, epoch)
        for layer in range(L):
            for t in range(T):
                for g in range(num_grid):
                    w, b = kernel[layer, 0, t, s, g], bias[layer, 0, t, s, g]
                    mw, vw, mb, vb = 0.0 * w, 0.0 * w, 0.0 * b, 0.0 * b
                    lr, wd, rate = (float(HP[k][g]) for k in HP)
                    for step in range(steps):
                        positions = order[step * BATCH : (step + 1) * BATCH]
                        row_weight = weight[step * BATCH : (step + 1) * BATCH]
                        words = jax.random.bits(
                            jax.random.fold_in(dropout_key, step), (2,), jnp.uint32
                        )
                        uniform = (np.asarray(hash_bits(words, (BATCH, D))) >> 8) / 2.0**24
                        keep = uniform >= np.float32(rate)
                        raw = x[train_rows[positions], layer].astype(np.float64)
                        xs = (raw - mean[layer, 0]) * inverse[layer, 0]
                        xd = np.where(keep, xs / (1.0 - np.float32(rate)), 0.0)
                        logits = xd @ w + b
                        labels = y[0, t, s, positions]
                        mask = m[0, t, s, positions] * row_weight[:, None]
                        dlogits = (_sigmoid(logits) - labels) * mask / max(mask.sum(), 1.0)
                        gw, gb = xd.T @ dlogits, dlogits.sum(0)
                        count = step + 1
                        mw, vw = B1 * mw + (1 - B1) * gw, B2 * vw + (1 - B2) * gw**2
                        mb, vb = B1 * mb + (1 - B1) * gb, B2 * vb + (1 - B2) * gb**2
                        uw = (mw / (1 - B1**count)) / (np.sqrt(vw / (1 - B2**count)) + EPS)
                        ub = (mb / (1 - B1**count)) / (np.sqrt(vb / (1 - B2**count)) + EPS)
                        w = w - lr * (uw + wd * w)
                        b = b - lr * ub
                    kernel[layer, 0, t, s, g], bias[layer, 0, t, s, g] = w, b
    return kernel, bias


# part_bytes 128: minibatches of 16 rows stepped through in 4 parts of 4 rows (D = 8);
# whole_rows 0: each layer's rows gathered where it is trained, not in one block.
@pytest.mark.parametrize(
    "layer_loop, fold_loop, part_bytes, whole_rows",
    [
        (False, False, 8 << 20, 8 << 20),
        (True, False, 8 << 20, 8 << 20),
        (True, False, 128, 8 << 20),
        (True, False, 128, 0),
        (True, True, 8 << 20, 8 << 20),
        (True, True, 128, 0),
    ],
)
def test_epoch_kernel_equals_per_probe_reference(layer_loop, fold_loop, part_bytes, whole_rows):
    x, mean, inverse, train_rows, y, m = _inputs()
    n = len(train_rows)
    hp = {k: jnp.asarray(v) for k, v in HP.items()}
    seeds = jnp.arange(S, dtype=jnp.int32)
    state = _init_state(
        jnp.arange(L, dtype=jnp.int32),
        seeds,
        hp,
        seed=SEED,
        num_folds=1,
        num_targets=T,
        num_outputs=C,
        dim=D,
        zero_init=False,  # a random start, so the forward pass matters from step one
    )
    epoch = jax.jit(
        partial(
            _train_epoch,
            seed=SEED,
            batch_size=BATCH,
            dropouts=tuple(float(r) for r in HP["dropout"]),
            num_outputs=C,
            layer_loop=layer_loop,
            fold_loop=fold_loop,
            chunk_sizes=(n,),
            whole_rows_max_bytes=whole_rows,
            part_max_bytes=part_bytes,
        )
    )
    expected_kernel, expected_bias = _reference(state, x, mean, inverse, train_rows, y, m, 0)
    trained, _ = epoch(
        state,
        jnp.asarray(x),
        jnp.asarray(mean),
        jnp.asarray(inverse),
        jnp.asarray(train_rows),
        jnp.ones((1, n), jnp.float32),
        jnp.asarray(y),
        jnp.asarray(m),
        jnp.int32(0),
        seeds,
        hp,
    )
    kernel = np.asarray(trained["params"]["dense"]["kernel"])
    bias = np.asarray(trained["params"]["dense"]["bias"])
    # The probes moved (three Adam steps of about lr each), and as the reference did.
    assert np.median(np.abs(kernel - np.asarray(state["params"]["dense"]["kernel"]))) > 5e-3
    np.testing.assert_allclose(kernel, expected_kernel, rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(bias, expected_bias, rtol=1e-4, atol=2e-5)


def test_part_rows_divide_the_minibatch_within_the_byte_budget():
    # The largest divisor of the batch size whose float32 rows fit the budget.
    assert part_rows(256, 1536, 192 << 10) == 32
    assert part_rows(16, D, 128) == 4
    assert part_rows(24, D, 96) == 3
    assert part_rows(16, D, 8 << 20) == 16
    assert part_rows(256, 10**6, 1) == 1
