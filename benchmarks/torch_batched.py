"""The best probe sweep one could write in plain PyTorch: all layers × seeds as stacked matmuls.

The baseline that benchmarks/probe_sweep.py and benchmarks/gpu_check.py hold
the JAX sweep against. It trains the same probes as the sweep run there (no
controls, one grid point): per layer, train-split standardisation in float32;
Bernoulli dropout on the inputs; a linear probe started at zero; sigmoid
cross-entropy averaged over the minibatch; Adam (β = 0.9, 0.999, ε = 1e-8, as
optax's); the same batch size and epochs, every train row once per epoch,
the last minibatch padded with weight-0 rows as the sweep pads it. Test
accuracy is that of the last epoch: it records no losses and selects no epoch
on val (the sweep does both), which only makes it faster.

What makes it fast rather than a loop: the weights of a group of layers are
one [L, S, D] tensor; each step gathers one minibatch per seed order for all
layers of the group at once ([L, S, B, D], one index_select), the forward and
the gradient are one batched contraction each (the gradient of a linear
probe's cross-entropy written out, so that the whole step, Adam included, is
one function torch.compile can fuse), and one Adam update covers all probes
(Adam is elementwise: exactly L × S independent optimisers). As in the sweep
(probing/probes/model.py), one dropout mask per (seed, step) is shared by all
layers: each probe still sees i.i.d. Bernoulli dropout, and the mask costs L
times fewer random numbers. Features stay in their store dtype and each
minibatch is standardised as it is gathered (the sweep's choice too: float16
reads half the bytes, and the float32 values equal standardising up front).

Layer groups mirror the sweep's `layer_update`: "together" (one group of all
layers: few, large kernels, for GPUs) or "sequential" (one layer per group,
so that a layer's [S, B, D] minibatch stays in a CPU's cache). `compile=True`
wraps the step in torch.compile; `cuda_graphs=True` on a GPU adds
mode="reduce-overhead" (the step replayed as a CUDA graph).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

BETAS, EPS = (0.9, 0.999), 1e-8
LAYER_UPDATES = ("together", "sequential")


@dataclasses.dataclass
class BatchedResult:
    """Test accuracy [L, S] and timings of one batched run."""

    accuracy: np.ndarray
    seconds: float  # everything: placement, statistics, compilation, epochs, test logits
    first_epoch_seconds: float  # includes compilation when compiled
    epoch_seconds: float  # mean of the later epochs (the steady state)
    peak_bytes: int  # CUDA peak allocation (0 on CPU)
    mode: str  # e.g. "compiled, sequential"


def _statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Train mean and 1 / scale [D] of one layer's features [n, D], in float32."""
    values = x.float()
    mean = values.mean(dim=0)
    std = values.sub(mean).square_().mean(dim=0).sqrt_()
    # As the sweep: a dimension constant on train is divided by 1, not by ~0.
    return mean, 1.0 / torch.where(std > 1e-6, std, torch.ones_like(std))


def _step(x, y, rows, weight, uniform, w, b, m_w, v_w, m_b, v_b, mean, inverse, t, lr, dropout):
    """One Adam step of the probes of a layer group on one minibatch per seed order.

    x [L, n, D] store dtype; y [n] float32; rows, weight [S, B]; uniform [S, B, D]
    in [0, 1), the dropout draw shared by all layers; w [L, S, D], b [L, S] and
    their Adam moments; mean, inverse [L, D]; t the 1-based step count.
    Returns the new (w, b, m_w, v_w, m_b, v_b).
    """
    num_layers, _, dim = x.shape
    seeds, batch = rows.shape
    raw = x.index_select(1, rows.reshape(-1)).view(num_layers, seeds, batch, dim)
    standardized = (raw.float() - mean[:, None, None]) * inverse[:, None, None]
    # Inverted dropout; the mask broadcasts over the layers.
    kept = (uniform >= dropout).to(torch.float32) * (1.0 / (1.0 - dropout))
    dropped = standardized * kept
    logits = torch.einsum("lsbd,lsd->lsb", dropped, w) + b[..., None]
    # d(weighted mean of sigmoid cross-entropy)/d logits, per probe.
    share = weight / weight.sum(dim=1, keepdim=True).clamp_min(1.0)
    residual = (torch.sigmoid(logits) - y[rows]) * share
    grads = (torch.einsum("lsb,lsbd->lsd", residual, dropped), residual.sum(dim=-1))
    correction1, correction2 = 1.0 - BETAS[0] ** t, 1.0 - BETAS[1] ** t
    out = []
    for param, grad, m, v in zip((w, b), grads, (m_w, m_b), (v_w, v_b), strict=True):
        m = BETAS[0] * m + (1.0 - BETAS[0]) * grad
        v = BETAS[1] * v + (1.0 - BETAS[1]) * grad.square()
        param = param - lr * (m / correction1) / ((v / correction2).sqrt() + EPS)
        out.append((param, m, v))
    (w, m_w, v_w), (b, m_b, v_b) = out
    return w, b, m_w, v_w, m_b, v_b


def train_batched(
    features: np.ndarray,
    labels: np.ndarray,
    split: np.ndarray,
    *,
    num_seeds: int,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    dropout: float,
    device: str = "cpu",
    compile: bool = False,
    layer_update: str = "auto",
    cuda_graphs: bool = False,
    seed: int = 0,
) -> BatchedResult:
    """Trains num_seeds probes per layer of `features` [L, N, D] on the train split (split == 0).

    layer_update: "together", "sequential" or "auto" (sequential on CPU).
    Returns the test accuracy (split == 2) after the last epoch per (layer,
    seed) and the timings; `seconds` starts before the features are moved to
    `device` and ends after the test logits.
    """
    torch_device = torch.device(device)
    cuda = torch_device.type == "cuda"
    if layer_update == "auto":
        layer_update = "together" if cuda else "sequential"
    if layer_update not in LAYER_UPDATES:
        raise ValueError(f"layer_update must be auto or one of {LAYER_UPDATES}: {layer_update!r}")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(torch_device)
    start = time.perf_counter()
    num_layers, _, dim = features.shape
    train_rows, test_rows = np.flatnonzero(split == 0), np.flatnonzero(split == 2)
    num_train = len(train_rows)
    group_size = num_layers if layer_update == "together" else 1
    groups = [range(g, min(g + group_size, num_layers)) for g in range(0, num_layers, group_size)]

    def to_device(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(torch_device)

    x_train = [to_device(features[g.start : g.stop][:, train_rows]) for g in groups]
    stats = [[_statistics(layer) for layer in x] for x in x_train]
    mean = [torch.stack([s[0] for s in group]) for group in stats]
    inverse = [torch.stack([s[1] for s in group]) for group in stats]
    y_train = to_device(labels[train_rows].astype(np.float32))

    def zeros(*shape: int) -> torch.Tensor:
        return torch.zeros(*shape, device=torch_device)

    # Per group: w, b, m_w, v_w, m_b, v_b (all probes start at zero, as the sweep's).
    state = []
    for g in groups:
        kernel, bias = (len(g), num_seeds, dim), (len(g), num_seeds)
        state.append([zeros(*kernel), zeros(*bias), zeros(*kernel), zeros(*kernel)])
        state[-1] += [zeros(*bias), zeros(*bias)]
    lr = torch.tensor(learning_rate, device=torch_device)
    rate = torch.tensor(dropout, device=torch_device)
    step_fn, mode = _step, "eager"
    if compile:
        options: dict = {"dynamic": False}
        mode = "compiled"
        if cuda and cuda_graphs:
            options["mode"] = "reduce-overhead"
            mode = "compiled+cudagraphs"
            # Inputs at a fixed address: otherwise every replay first copies them
            # (the features too) into the graph's own input buffers.
            for tensor in (*x_train, *mean, *inverse, y_train, lr, rate):
                torch._dynamo.mark_static_address(tensor)
        step_fn = torch.compile(_step, **options)
    mode += f", {layer_update}"

    num_steps = -(-num_train // batch_size)
    padding = num_steps * batch_size - num_train
    generator = torch.Generator().manual_seed(seed)  # minibatch orders
    draws = torch.Generator(device=torch_device).manual_seed(seed + 1)  # dropout
    weight = torch.ones(num_seeds, num_steps * batch_size)
    weight[:, num_train:] = 0.0
    weight = weight.view(num_seeds, num_steps, batch_size).to(torch_device)
    # Step counts as device scalars made once: no host-to-device copy per step.
    step_counts = torch.arange(1, epochs * num_steps + 1, dtype=torch.float32, device=torch_device)
    epoch_times, t = [], 0
    for _ in range(epochs):
        epoch_start = time.perf_counter()
        # One order per seed, padded with row 0 at weight 0, as the sweep pads.
        orders = [torch.randperm(num_train, generator=generator) for _ in range(num_seeds)]
        orders = torch.cat(
            [torch.stack(orders), torch.zeros(num_seeds, padding, dtype=torch.long)], 1
        )
        orders = orders.view(num_seeds, num_steps, batch_size).to(torch_device)
        for s in range(num_steps):
            step = step_counts[t]
            t += 1
            uniform = torch.rand(num_seeds, batch_size, dim, generator=draws, device=torch_device)
            for g in range(len(groups)):
                new = step_fn(
                    x_train[g],
                    y_train,
                    orders[:, s],
                    weight[:, s],
                    uniform,
                    *state[g],
                    mean[g],
                    inverse[g],
                    step,
                    lr,
                    rate,
                )
                # CUDA-graph outputs are overwritten by the next replay: keep copies.
                state[g] = [v.clone() for v in new] if mode.startswith("compiled+") else list(new)
        if cuda:
            torch.cuda.synchronize(torch_device)
        epoch_times.append(time.perf_counter() - epoch_start)

    with torch.no_grad():
        y_test = to_device(labels[test_rows].astype(np.float32))
        accuracy = np.zeros((num_layers, num_seeds))
        for g, layers in enumerate(groups):
            w, b = state[g][0], state[g][1]
            for i, layer in enumerate(layers):
                x_test = to_device(features[layer, test_rows]).float()
                standardized = (x_test - mean[g][i]) * inverse[g][i]
                predicted = (standardized @ w[i].T + b[i]) > 0
                correct = (predicted.float() == y_test[:, None]).float().mean(dim=0)
                accuracy[layer] = correct.cpu().numpy()
    seconds = time.perf_counter() - start
    return BatchedResult(
        accuracy=accuracy,
        seconds=seconds,
        first_epoch_seconds=epoch_times[0],
        epoch_seconds=float(np.mean(epoch_times[1:])) if len(epoch_times) > 1 else epoch_times[0],
        peak_bytes=torch.cuda.max_memory_allocated(torch_device) if cuda else 0,
        mode=mode,
    )
