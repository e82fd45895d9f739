"""The sweep's evaluation kernel (scoring._apply_all) against a float64 numpy forward.

_apply_all computes every probe's logits on its fold's rows layer by layer
and, within a layer, chunk by chunk of rows (the last chunk padded). Whatever
the chunk size, each logit must be the textbook ((x - mean) * inverse) @
kernel + bias of its own row, in its own place.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probing.probes.scoring import _apply_all, apply_chunk_rows

N, L, F, T, S, G, D, C = 60, 3, 2, 2, 2, 2, 8, 2


def _reference(params, x, rows, mean, inverse):
    """[L, F, T, S, G, n, C] in float64, one probe and one row at a time."""
    kernel = np.asarray(params["dense"]["kernel"], np.float64)  # [L, F, T, S, G, D, C]
    bias = np.asarray(params["dense"]["bias"], np.float64)  # [L, F, T, S, G, C]
    out = np.zeros((L, F, T, S, G, rows.shape[1], C))
    for layer in range(L):
        for fold in range(F):
            standardized = (x[rows[fold], layer].astype(np.float64) - mean[layer, fold]) * inverse[
                layer, fold
            ]  # [n, D]
            for t in range(T):
                for s in range(S):
                    for g in range(G):
                        probe = kernel[layer, fold, t, s, g]
                        out[layer, fold, t, s, g] = (
                            standardized @ probe + bias[layer, fold, t, s, g]
                        )
    return out


# 8 rows per chunk (the least): 37 rows are four whole chunks and a padded one;
# 1 MB: all rows in one chunk.
@pytest.mark.parametrize("chunk_bytes", [8 * D * 4, 1 << 20])
def test_logits_equal_a_row_by_row_forward_whatever_the_chunk(chunk_bytes):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((N, L, D)).astype(np.float16)
    # Each fold its own rows, in no particular order, so a chunk put back in the
    # wrong place or read for the wrong fold changes the logits.
    rows = np.stack([rng.permutation(N)[:37], rng.permutation(N)[:37]]).astype(np.int32)
    mean = rng.standard_normal((L, F, D)).astype(np.float32)
    inverse = rng.uniform(0.5, 2.0, (L, F, D)).astype(np.float32)
    params = {
        "dense": {
            "kernel": rng.standard_normal((L, F, T, S, G, D, C)).astype(np.float32),
            "bias": rng.standard_normal((L, F, T, S, G, C)).astype(np.float32),
        }
    }
    apply = jax.jit(partial(_apply_all, num_outputs=C, chunk_bytes=chunk_bytes))
    logits = apply(
        jax.tree.map(jnp.asarray, params),
        jnp.asarray(x),
        jnp.asarray(rows),
        jnp.asarray(mean),
        jnp.asarray(inverse),
    )
    assert logits.shape == (L, F, T, S, G, 37, C)
    np.testing.assert_allclose(
        np.asarray(logits), _reference(params, x, rows, mean, inverse), rtol=1e-5, atol=1e-5
    )


def test_chunks_fit_their_byte_budget_in_multiples_of_eight_rows():
    assert apply_chunk_rows(1536) == 168  # 1 MB of float32 rows at D = 1,536
    assert apply_chunk_rows(1536, 1 << 21) == 336
    assert apply_chunk_rows(8, 8 * 8 * 4) == 8
    assert apply_chunk_rows(10**6) == 8  # never fewer than 8
