"""The probe model: a Flax `LinearProbe`, its counter-hash dropout and its optimizer.

Dropout. Drawing a threefry mask per (layer, seed) costs far more than the
probe's own arithmetic on CPU. Two choices remove that cost:
  1. one mask per (seed, step) is shared by all layers, targets and grid
     points (each dropout rate thresholds the same uniform numbers). Every
     single probe still sees i.i.d. Bernoulli dropout, so each probe's training
     is distributed exactly as with independent masks; only the noise of
     different layers within one seed is now correlated, which makes layer
     comparisons within a seed paired rather than independent.
  2. the uniform numbers come from a counter-based integer hash (hash_bits:
     two rounds of the "lowbias32" mixer over the element index, keyed by 64
     bits drawn with threefry per (seed, s, epoch, step)), a few integer
     operations per element instead of threefry's twenty rounds. Its 24-bit
     uniforms are far finer than any dropout rate needs; it is not a
     cryptographic generator, which dropout does not need either.
  3. the uniforms are thresholded once per (seed, step) and rate into byte
     masks (keep_masks) that every layer reads: the layers' minibatch steps
     read a quarter of the bytes the 32-bit draw would cost them, and compare
     nothing. The masks are those the uniforms give, bit for bit.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


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
        dropout_keep: jax.Array | None = None,
        dropout_rate: jax.Array | float = 0.0,
    ) -> jax.Array:
        if dropout_keep is not None:
            x = inverted_dropout(x, dropout_keep, dropout_rate)
        kernel_init = nn.initializers.zeros if self.zero_init else nn.linear.default_kernel_init
        return nn.Dense(self.num_outputs, kernel_init=kernel_init, name="dense")(x)


def keep_masks(bits: jax.Array, rates: tuple[float, ...]) -> jax.Array:
    """Dropout keep masks [R, *bits.shape] (bool), one per rate, from uint32 random bits.

    The top 24 bits become a uniform number in [0, 1); an element is kept
    when it is >= the rate (as float32), so all rates share one draw. Made
    once per (seed, step) and read by every layer: a byte per element where
    the bits are four, and the uniform numbers are thresholded once, not once
    per layer and probe.
    """
    uniform = (bits >> 8).astype(jnp.float32) * (1.0 / (1 << 24))
    return jnp.stack([uniform >= jnp.float32(rate) for rate in rates])


def inverted_dropout(x: jax.Array, keep: jax.Array, rate: jax.Array | float) -> jax.Array:
    """Inverted dropout: x / (1 - rate) where `keep`, else 0."""
    # x * (1 / keep), not x / keep: see scoring._standardized on XLA's rewriting of divisions.
    return jnp.where(keep, x * (1.0 / (1.0 - rate)), 0.0)


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
