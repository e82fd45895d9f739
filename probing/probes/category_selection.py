"""Tao et al.'s separate probe per category, inside the one sweep: each output of a multilabel
probe keeps the weights of its own best val epoch and stops on its own patience.

Used by kernels._select_epoch when settings.per_category_selection is on.
The sweep state then carries "category", each output's selection and
stopping state [layer, fold, target, seed, grid, C] (kernels._init_state).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from probing.probes import stopping
from probing.probes.scoring import _weighted_sum


def category_scores(logits, labels, mask, *, selection):
    """(val loss, score where higher is better) per output, [..., C]; the score is minus
    the loss, or the output's F1 (selection "headline").

    logits [..., n, C]. Rows are summed by `_weighted_sum`, in a fixed order.
    """
    mask = jnp.broadcast_to(mask, logits.shape)
    labels = jnp.broadcast_to(labels, logits.shape)

    def by_output(a):  # [..., n, C] -> [..., C, n]: the rows are summed last
        return jnp.swapaxes(a, -1, -2)

    scored = jnp.maximum(mask.sum(axis=-2), 1.0)
    per_entry = optax.sigmoid_binary_cross_entropy(logits, labels)
    loss = _weighted_sum(by_output(per_entry), by_output(mask), 1) / scored
    if selection == "loss":
        return loss, -loss
    predicted = (logits > 0).astype(jnp.float32)
    tp = jnp.sum(predicted * labels * mask, axis=-2)
    fp = jnp.sum(predicted * (1 - labels) * mask, axis=-2)
    fn = jnp.sum((1 - predicted) * labels * mask, axis=-2)
    denominator = 2 * tp + fp + fn
    return loss, jnp.where(denominator > 0, 2 * tp / jnp.maximum(denominator, 1.0), 0.0)


def select_per_category(
    state, logits, labels, mask, val_loss, score, epoch, selection, patience, min_delta
):
    """Tao et al.'s separate probes per category: each output keeps its own best epoch.

    Output c's column of the kernel and its bias are snapshotted when c's own
    val score improves, and c stops (its selection freezes) by the same
    patience rule applied to its own score. The columns of a linear probe
    train independently of each other (the loss is a sum over outputs and Adam
    is elementwise), so the probe keeps training while any output is active,
    and an output that stopped keeps the weights of its best epoch, as a
    separate probe stopped then would. (A separate probe would average its loss
    over its own entries, not all outputs': a scale Adam nearly cancels.) An output without val entries in a fold has
    nothing to select on and follows the joint score. The probe-level fields
    summarise: active while any output is, best epoch the latest of its
    outputs', best score (for the grid choice) the mean of its outputs'.

    Returns:
      the state and the val loss per output, [L, F, T, S, G, C].
    """
    category = state["category"]
    if logits.shape[-1] == 1:
        # One output: its score is the joint one, to the bit (XLA may round a
        # separately compiled division differently).
        losses, scores = val_loss[..., None], score[..., None]
    else:
        has_val = jnp.broadcast_to(mask, logits.shape).sum(axis=-2) > 0  # [..., C]
        losses, own = category_scores(logits, labels, mask, selection=selection)
        scores = jnp.where(has_val, own, score[..., None])
    improved = category["active"] & (scores > category["best_score"])  # [L, F, T, S, G, C]

    def keep(new, old):
        # kernel [..., D, C] and bias [..., C]: the output axis is last.
        columns = improved if new.ndim == improved.ndim else improved[..., None, :]
        return jnp.where(columns, new, old)

    category = {
        **category,
        "best_score": jnp.where(improved, scores, category["best_score"]),
        "best_epoch": jnp.where(improved, epoch + 1, category["best_epoch"]),
    }
    category = stopping.update(category, scores, epoch, patience=patience, min_delta=min_delta)
    trained = state["active"]
    state = {
        **state,
        "category": category,
        "best_params": jax.tree.map(keep, state["params"], state["best_params"]),
        "best_score": category["best_score"].mean(axis=-1),
        "best_epoch": category["best_epoch"].max(axis=-1),
        "active": category["active"].any(axis=-1),
        "epochs_trained": jnp.where(trained, epoch + 1, state["epochs_trained"]),
    }
    return state, losses
