"""Early stopping of probes: the per-probe patience rule the select program applies after every
epoch, and the convergence report (which probes did not converge) of a finished sweep.

The rule is per probe, so that a probe's result never depends on which other
probes share the program: a probe is active until its val selection score
has gone `patience` epochs without beating the score of its last significant
improvement by more than `min_delta`; from then on the train program leaves
its parameters and optimizer state untouched (kernels._probe_step) and the
select program no longer moves its best epoch. The host stops the epoch loop
when no probe is active (sweep._train), which only saves time: the probes
that stopped earlier are frozen either way.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np


def initial_state(num_probes: tuple[int, ...]) -> dict[str, Any]:
    """Stopping state per probe: all active, nothing trained yet."""
    return {
        "active": jnp.ones(num_probes, bool),
        "anchor_score": jnp.full(num_probes, -jnp.inf, jnp.float32),
        "anchor_epoch": jnp.zeros(num_probes, jnp.int32),
        "epochs_trained": jnp.zeros(num_probes, jnp.int32),
    }


def update(state, score, epoch, *, patience: int, min_delta: float) -> dict[str, Any]:
    """Stopping state after `epoch` (0-based) was trained and scored on val (higher is better)."""
    trained = state["active"]
    significant = trained & (score > state["anchor_score"] + min_delta)
    anchor_epoch = jnp.where(significant, epoch + 1, state["anchor_epoch"])
    active = trained & (epoch + 1 - anchor_epoch < patience) if patience else trained
    return {
        **state,
        "active": active,
        "anchor_score": jnp.where(significant, score, state["anchor_score"]),
        "anchor_epoch": anchor_epoch,
        "epochs_trained": jnp.where(trained, epoch + 1, state["epochs_trained"]),
    }


def converged(best_epoch, epochs_trained, active, patience: int) -> np.ndarray:
    """Whether each probe converged: its best epoch is not its last, and its patience ran out
    before the epoch budget did (without early stopping only the first condition applies)."""
    still_improving = np.asarray(active) if patience else np.zeros(np.shape(active), bool)
    return (np.asarray(best_epoch) != np.asarray(epochs_trained)) & ~still_improving


def not_converged(result) -> list[dict[str, Any]]:
    """The reported probes (each layer's chosen grid point) that did not converge.

    One dict per probe: layer, (fold,) target, seed, grid point, best epoch and
    epochs trained.
    """
    folded = result.folds is not None and result.folds.enabled
    fold_ids = result.folds.ids if folded else [None]
    out = []
    for li, layer in enumerate(result.layers):
        for fi, fold in enumerate(fold_ids):
            grid = int(result.chosen_grid[li, fi] if folded else result.chosen_grid[li])
            for ti, target in enumerate(result.targets):
                for si, seed in enumerate(result.seeds):
                    index = (li, fi, ti, si, grid) if folded else (li, ti, si, grid)
                    if result.converged[index]:
                        continue
                    entry = {"layer": int(layer)}
                    if folded:
                        entry["fold"] = int(fold)
                    entry.update(
                        target=target,
                        seed=int(seed),
                        grid=grid,
                        best_epoch=int(result.best_epoch[index]),
                        epochs_trained=int(result.epochs_trained[index]),
                    )
                    out.append(entry)
    return out


def convergence_summary(result, settings) -> dict[str, Any]:
    """summary.json's "convergence": the stopping rule and the probes that did not converge."""
    flagged = not_converged(result)
    num_folds = result.folds.num_folds if result.folds is not None else 1
    reported = len(result.layers) * num_folds * len(result.targets) * len(result.seeds)
    return {
        "max_epochs": settings.epochs,
        "patience": settings.patience,
        "min_delta": settings.min_delta,
        "probes": reported,
        "not_converged": len(flagged),
        "not_converged_probes": flagged,
    }
