"""Cluster bootstrap over test images of every reported probe metric, in JAX.

The default interval of the project (DESIGN.md, "Statistics"): the test images
are drawn again with replacement, all rows of an image together, and every
metric is recomputed for every layer and seed of every probe set on the same
resamples, so differences (layer vs layer, task vs control, model vs model)
are paired. It works from the saved test logits (predictions.npz).

A probe set may have its own labels per seed (`set_labels`): the
shuffled-label control is scored on its shuffled test labels, on the same
image resamples as the task probes, so selectivity stays a paired difference.

Why it is fast: a metric depends on the rows only through confusion counts.
Per image we count tp and fp of every (layer, seed, output) and the positive
and scored entries of every output; a resample's totals are then its image
multiplicities [R, images] times those per-image counts, one matrix product
per chunk of resamples. fn = positives - tp and tn = scored - positives - fp,
so two counts per probe suffice.

Resample r draws its images from a counter hash keyed by (seed, r): the same
r gives the same images whatever the chunking, the layer blocks or the number
of resamples.

Folds (predictions.npz of a sweep with folds, `fold` per row): the statistic
is the fold mean, each fold's metric computed on its own test rows by its own
probes, as summary.json's `mean`. A resample draws the images of the pooled
test rows of all folds once (an image keeps one multiplicity in every fold
that tests it), and every fold's metric is recomputed on its rows with those
weights. With K folds the test parts are disjoint and cover every image, so
this is the cluster bootstrap over all the workdir's images of the
cross-validated score; with repeated draws the folds share images, and giving
a shared image the same weight in every fold keeps their correlation (an
independent resample per fold would understate the variance). The counts are
kept per (fold, image) cell; a resample's image weights are gathered onto the
cells and each fold's totals are one matrix product over its cells.
The resamples hold each fold's probes fixed, so they miss how the probes move
with their train images; where the folds scatter more than the resamples say,
the resampled deviations are widened to that scatter (`_widen_to_fold_spread`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from probing.probes.stats import CONFIDENCE
from probing.progress import Progress
from probing.store.layout import CONTROL_LABELS, CONTROL_LOGITS, CONTROL_MASK

_log = logging.getLogger(__name__)

NUM_RESAMPLES = 10_000
METRICS = {
    "binary": ("accuracy", "precision", "recall", "f1"),
    "multilabel": ("macro_f1", "micro_f1", "macro_precision", "macro_recall", "accuracy"),
}
# Floats of one chunk's per-image count matrix; larger sets are split by layers.
_BLOCK_FLOATS = 1 << 25


def _ratio(xp, numerator, denominator):
    # Zero where the denominator is zero: scikit-learn's zero_division=0.
    return xp.where(denominator > 0, numerator / xp.where(denominator > 0, denominator, 1), 0.0)


def scores_from_totals(tp, fp, positives, scored, label_kind: str, xp=np) -> dict:
    """Every reported metric from confusion totals, for numpy (xp=np) or jax.numpy.

    Args:
      tp, fp: [..., C] true and false positives per output.
      positives, scored: [..., C] positive and scored entries per output,
        broadcastable against tp.
      label_kind: "binary" (C = 1) or "multilabel".

    Returns:
      metric name -> [...]. Multilabel macro averages run over the categories
      with at least one positive; `categories_left_out` counts the others
      (their recall and F1 are undefined), and the macro metrics are NaN when
      no category has a positive.
    """
    fn = positives - tp
    tn = scored - positives - fp
    precision = _ratio(xp, tp, tp + fp)
    recall = _ratio(xp, tp, positives)
    f1 = _ratio(xp, 2 * tp, tp + fp + positives)
    if label_kind == "binary":
        return {
            "accuracy": _ratio(xp, tp + tn, scored)[..., 0],
            "precision": precision[..., 0],
            "recall": recall[..., 0],
            "f1": f1[..., 0],
        }
    if label_kind != "multilabel":
        raise ValueError(f"label_kind must be 'binary' or 'multilabel', got {label_kind!r}")
    included = xp.broadcast_to(positives > 0, f1.shape)
    count = included.sum(axis=-1)

    def macro(values):
        return xp.where(count > 0, (values * included).sum(axis=-1) / xp.maximum(count, 1), xp.nan)

    total_tp, total_fp, total_fn = (x.sum(axis=-1) for x in (tp, fp, fn))
    return {
        "macro_f1": macro(f1),
        "micro_f1": _ratio(xp, 2 * total_tp, 2 * total_tp + total_fp + total_fn),
        "macro_precision": macro(precision),
        "macro_recall": macro(recall),
        "accuracy": _ratio(
            xp, total_tp + tn.sum(axis=-1), xp.broadcast_to(scored, tp.shape).sum(-1)
        ),
        "categories_left_out": f1.shape[-1] - count,
    }


def _image_index(group: np.ndarray) -> tuple[np.ndarray, int]:
    _, inverse = np.unique(np.asarray(group).ravel(), return_inverse=True)
    num_images = int(inverse.max()) + 1 if inverse.size else 0
    if num_images < 2:
        raise ValueError(
            f"a cluster bootstrap over test images needs at least 2 images, got {num_images}: "
            "with one image every resample is the same split and no interval exists"
        )
    return inverse.astype(np.int32), num_images


@dataclasses.dataclass(frozen=True)
class _Cells:
    """The units counts are kept in: (fold, image) pairs, sorted by fold.

    inverse [n]: each row's cell; image [cells]: each cell's image (index into
    the resampled images); bounds: static (start, stop) of each fold's cells.
    Without folds a cell is an image and there is one fold.
    """

    inverse: np.ndarray
    image: np.ndarray
    bounds: tuple[tuple[int, int], ...]
    num_images: int

    @property
    def num_cells(self) -> int:
        return int(self.image.size)


def _cells(group: np.ndarray, fold: np.ndarray | None) -> _Cells:
    image_of_row, num_images = _image_index(group)
    if fold is None:
        return _Cells(
            image_of_row,
            np.arange(num_images, dtype=np.int32),
            ((0, num_images),),
            num_images,
        )
    fold = np.asarray(fold).ravel()
    if fold.shape != image_of_row.shape:
        raise ValueError(f"fold has {fold.size} rows, group {image_of_row.size}")
    fold_ids, fold_of_row = np.unique(fold, return_inverse=True)  # folds in id order
    pairs, inverse = np.unique(
        np.stack([fold_of_row.ravel(), image_of_row]), axis=1, return_inverse=True
    )
    counts = np.bincount(pairs[0], minlength=fold_ids.size)
    stops = np.cumsum(counts)
    bounds = tuple((int(a), int(b)) for a, b in zip(stops - counts, stops, strict=True))
    return _Cells(inverse.ravel().astype(np.int32), pairs[1].astype(np.int32), bounds, num_images)


@functools.partial(jax.jit, static_argnames=("num_images",))
def _image_hits(logits, positive, scored, inverse, num_images):
    """[images, L, S, C, 2] per-image tp and fp of logits [L, S, n, C]."""
    predicted = logits > 0
    hits = jnp.stack([predicted & positive & scored, predicted & ~positive & scored], axis=-1)
    return jax.ops.segment_sum(
        jnp.moveaxis(hits.astype(jnp.float32), 2, 0), inverse, num_segments=num_images
    )


def _mix32(x: jax.Array) -> jax.Array:
    # lowbias32 (Chris Wellons), a full-avalanche 32-bit integer hash.
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _below(bits: jax.Array, bound: int) -> jax.Array:
    """floor(bits * bound / 2**32) of uint32 bits, in 16-bit limbs (no uint64 without x64).

    A multiply-high map to [0, bound): each value has floor or ceil of
    2**32 / bound preimages, a relative bias below bound / 2**32 (1e-6 at
    4,000 images).
    """
    a_lo, a_hi = bits & 0xFFFF, bits >> 16
    b_lo, b_hi = jnp.uint32(bound & 0xFFFF), jnp.uint32(bound >> 16)
    p1, p2 = a_lo * b_hi, a_hi * b_lo
    middle = ((a_lo * b_lo) >> 16) + (p1 & 0xFFFF) + (p2 & 0xFFFF)
    return (a_hi * b_hi + (p1 >> 16) + (p2 >> 16) + (middle >> 16)).astype(jnp.int32)


def key_words(seed: int) -> jax.Array:
    """The two uint32 words, drawn from jax.random.key(seed), that key every resample."""
    return jax.random.bits(jax.random.key(seed), (2,), jnp.uint32)


def resample_images(words: jax.Array, resample_ids: jax.Array, num_images: int) -> jax.Array:
    """[len(ids), images] image indices drawn with replacement by the given resamples.

    A keyed counter hash of (resample id, draw position): integer arithmetic
    only, so the draws are the same on CPU, GPU and TPU, cost a few integer
    operations each, and compile in no time (threefry took seconds to compile
    and most of the run time on CPU).
    """
    ids = jnp.asarray(resample_ids, jnp.uint32)
    row_words = _mix32(_mix32(ids * jnp.uint32(0x9E3779B9) + words[0]) ^ words[1])
    counter = jnp.arange(num_images, dtype=jnp.uint32)
    position = _mix32(counter + words[1])[None]
    # Adding the resample's word after the first mix keeps the draws of two
    # positions from differing by the same xor in every resample.
    row = row_words[:, None]
    return _below(_mix32(_mix32(position ^ row) + row), num_images)


def _fold_mean(values: dict, xp) -> dict:
    """Per fold [F, ...] metrics -> their mean over folds (a fold without a value skipped)."""
    return {m: xp.nanmean(v, axis=0) if v.shape[0] > 1 else v[0] for m, v in values.items()}


@functools.partial(jax.jit, static_argnames=("size", "label_kind", "num_images", "bounds"))
def _chunk(words, start, hits, bases, cell_image, size, label_kind, num_images, bounds):
    """Seed- and fold-mean metrics [size, L_i] of resamples start .. start + size - 1; hits[i]
    is scored against the label counts bases[i] [cells, S or 1, C, 2]."""
    num_cells = bases[0].shape[0]
    picks = resample_images(words, start + jnp.arange(size), num_images)
    weights = jnp.zeros((size, num_images), jnp.float32)
    weights = weights.at[jnp.arange(size)[:, None], picks].add(1.0)
    if len(bounds) > 1 or num_cells != num_images:
        weights = weights[:, cell_image]  # each (fold, image) cell weighs as its image
    flat = jnp.concatenate([h.reshape(num_cells, -1) for h in (*hits, *bases)], axis=1)
    # Counts are small integers: HIGHEST keeps the product exact on GPUs too
    # (no TF32), so totals are the exact integers the reference counts.
    totals = jnp.stack(
        [
            jnp.matmul(weights[:, lo:hi], flat[lo:hi], precision=jax.lax.Precision.HIGHEST)
            for lo, hi in bounds
        ]
    )  # [F, size, columns]
    out, offset = [], 0
    base_offset = sum(h[0].size for h in hits)
    for h, base in zip(hits, bases, strict=True):
        block = totals[..., offset : offset + h[0].size].reshape(len(bounds), size, *h.shape[1:])
        offset += h[0].size
        base_totals = totals[..., base_offset : base_offset + base[0].size].reshape(
            len(bounds), size, *base.shape[1:]
        )  # [F, size, S or 1, C, 2]
        base_offset += base[0].size
        values = scores_from_totals(
            block[..., 0],
            block[..., 1],
            base_totals[:, :, None, :, :, 0],
            base_totals[:, :, None, :, :, 1],
            label_kind,
            xp=jnp,
        )
        values.pop("categories_left_out", None)
        # A fold none of whose images the resample drew has no value, not 0.
        empty = (base_totals[..., 1].sum(axis=-1) == 0)[:, :, None]
        values = {m: jnp.where(empty, jnp.nan, v).mean(axis=-1) for m, v in values.items()}
        out.append(_fold_mean(values, jnp))
    return out


@dataclasses.dataclass(frozen=True)
class ProbeSetSamples:
    """One probe set (e.g. the task probes of every layer) under the bootstrap.

    Attributes:
      observed: metric -> [L] seed-mean metric on the test split as drawn.
      per_seed: metric -> [L, S] on the test split as drawn (the seed spread).
      samples: metric -> [R, L] seed-mean metric of every resample.
    """

    observed: dict[str, np.ndarray]
    per_seed: dict[str, np.ndarray]
    samples: dict[str, np.ndarray]
    # With folds: metric -> [F, L] each fold's seed-mean metric on its test rows, and
    # metric -> [L] the factor the resampled deviations were widened by (>= 1).
    per_fold: dict[str, np.ndarray] | None = None
    widening: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Bootstrap:
    """Paired bootstrap of several probe sets scored on the same test rows."""

    label_kind: str
    sets: list[ProbeSetSamples]
    num_images: int
    num_resamples: int
    seed: int
    # Multilabel: categories without a positive on the test split as drawn.
    categories_left_out: int
    # Folds whose test parts were pooled (1 without folds).
    num_folds: int = 1


def _as_outputs(logits, labels, mask, label_kind):
    labels = np.asarray(labels)
    if label_kind is None:
        label_kind = "binary" if labels.ndim == 1 else "multilabel"
    if label_kind == "binary":
        labels = labels.reshape(-1, 1)
    mask = np.ones(labels.shape, bool) if mask is None else np.asarray(mask) > 0.5
    sets = []
    for x in logits:
        x = np.asarray(x, np.float32)
        x = x[..., None] if label_kind == "binary" else x
        if x.ndim != 4 or x.shape[2:] != labels.shape:
            raise ValueError(
                f"logits {x.shape} do not match [layers, seeds, rows, outputs] for labels "
                f"{labels.shape} of a {label_kind} task"
            )
        sets.append(x)
    if mask.shape != labels.shape:
        raise ValueError(f"mask {mask.shape} and labels {labels.shape} differ")
    return sets, labels > 0.5, mask, label_kind


def _set_targets(sets, positive, scored, label_kind, set_labels):
    """Per probe set (positive, scored) bool [S or 1, n, C]: the shared labels, or the set's
    own per-seed labels from `set_labels`."""
    shared = (positive[None], scored[None])
    if set_labels is None:
        return [shared] * len(sets)
    if len(set_labels) != len(sets):
        raise ValueError(f"set_labels has {len(set_labels)} entries for {len(sets)} probe sets")
    targets = []
    for x, own in zip(sets, set_labels, strict=True):
        if own is None:
            targets.append(shared)
            continue
        labels, mask = np.asarray(own[0]), own[1]
        if label_kind == "binary":
            labels = labels[..., None]
        mask = np.ones(labels.shape, bool) if mask is None else np.asarray(mask) > 0.5
        expected = (x.shape[1], *positive.shape)
        if labels.shape != expected or mask.shape != expected:
            raise ValueError(
                f"a probe set's own labels {labels.shape} / mask {mask.shape} do not match "
                f"[seeds, rows, outputs] {expected}"
            )
        targets.append((labels > 0.5, mask))
    return targets


def bootstrap(
    logits: Sequence[np.ndarray],
    labels: np.ndarray,
    group: np.ndarray,
    mask: np.ndarray | None = None,
    label_kind: str | None = None,
    num_resamples: int = NUM_RESAMPLES,
    seed: int = 0,
    chunk_size: int = 500,
    fold: np.ndarray | None = None,
    widen_to_folds: bool = True,
    set_labels: Sequence[tuple[np.ndarray, np.ndarray | None] | None] | None = None,
) -> Bootstrap:
    """Cluster bootstrap over images of every metric of several probe sets.

    Args:
      logits: probe sets scored on the same rows, each [L, S, n] (binary) or
        [L, S, n, K] (multilabel), e.g. (task logits, control logits) of
        predictions.npz, or one layer of two models on the same images.
      labels: [n] or [n, K] targets in {0, 1}.
      group: [n] image id per row; an image's rows are resampled together.
      mask: [n, K] scored entries (multilabel; default all).
      label_kind: "binary" or "multilabel" (default: from labels.ndim).
      num_resamples: R.
      seed: the resamples are a function of it alone (see key_words).
      chunk_size: resamples per matrix product (bounds memory).
      fold: [n] the fold whose probes scored each row (predictions.npz of a
        sweep with folds): every metric is then the mean over folds of the
        fold's metric on its rows, and an image drawn k times weighs k in
        every fold that tests it (module docstring).
      widen_to_folds: with folds, widen the resamples to the folds' scatter
        where it is larger (`_widen_to_fold_spread`); False keeps the plain
        resamples.
      set_labels: per probe set, None (scored on `labels` and `mask`) or its own
        (labels [S, n] / [S, n, K], mask [S, n, K] or None), one per seed: the
        shuffled-label control's test labels (predictions.npz control_labels).

    Raises:
      ValueError: fewer than two test images, or shapes that do not match.
    """
    if num_resamples < 1 or chunk_size < 1:
        raise ValueError(
            f"num_resamples and chunk_size must be >= 1, got {num_resamples}, {chunk_size}"
        )
    sets, positive, scored, label_kind = _as_outputs(logits, labels, mask, label_kind)
    if len(group) != positive.shape[0]:
        raise ValueError(f"group has {len(group)} rows, labels {positive.shape[0]}")
    cells = _cells(group, fold)
    inverse, num_cells = cells.inverse, cells.num_cells
    key = key_words(seed)
    targets = _set_targets(sets, positive, scored, label_kind, set_labels)
    bases = [
        jax.ops.segment_sum(
            jnp.moveaxis(jnp.stack([p & m, m], -1).astype(jnp.float32), 1, 0), inverse, num_cells
        )
        for p, m in targets
    ]  # per set [cells, S or 1, C, 2]
    blocks = []  # (set index, layer slice, per-cell hits)
    for index, x in enumerate(sets):
        # The [layers, S, n, C, 2] indicators before the per-cell sum bound memory.
        per_layer = x.shape[1] * x.shape[2] * x.shape[3] * 2
        step = max(1, _BLOCK_FLOATS // max(per_layer, 1))
        for lo in range(0, x.shape[0], step):
            hits = _image_hits(x[lo : lo + step], *targets[index], inverse, num_cells)
            blocks.append((index, slice(lo, lo + step), hits))
    result = []
    for index, x in enumerate(sets):
        base_np = np.asarray(bases[index], np.float64)
        base_per_fold = np.stack([base_np[lo:hi].sum(0) for lo, hi in cells.bounds])
        hits = np.concatenate([np.asarray(h) for i, _, h in blocks if i == index], axis=1)
        totals = np.stack([hits[lo:hi].sum(axis=0) for lo, hi in cells.bounds]).astype(
            np.float64
        )  # [F, L, S, C, 2]
        values = scores_from_totals(
            totals[..., 0],
            totals[..., 1],
            base_per_fold[:, None, :, :, 0],
            base_per_fold[:, None, :, :, 1],
            label_kind,
        )
        values.pop("categories_left_out", None)
        per_seed = _fold_mean(values, np)
        result.append(
            ProbeSetSamples(
                observed={m: v.mean(axis=-1) for m, v in per_seed.items()},
                per_seed=per_seed,
                samples={m: np.empty((num_resamples, x.shape[0]), np.float32) for m in values},
                per_fold={m: v.mean(axis=-1) for m, v in values.items()},
            )
        )
    # Pack layer blocks into calls that share one weight matrix per chunk.
    calls, current, size = [], [], 0
    for block in blocks:
        if current and size + block[2].size > _BLOCK_FLOATS:
            calls.append(current)
            current, size = [], 0
        current.append(block)
        size += block[2].size
    calls.append(current)
    chunk_size = min(chunk_size, num_resamples)
    cell_image = jnp.asarray(cells.image)
    progress = Progress("bootstrap", num_resamples * len(calls), unit="resamples")
    for call in calls:
        hits = tuple(h for _, _, h in call)
        call_bases = tuple(bases[index] for index, _, _ in call)
        for start in range(0, num_resamples, chunk_size):
            # The last chunk is computed at full size (same program) and trimmed.
            out = _chunk(
                key,
                start,
                hits,
                call_bases,
                cell_image,
                chunk_size,
                label_kind,
                cells.num_images,
                cells.bounds,
            )
            stop = min(start + chunk_size, num_resamples)
            for (index, layers, _), values in zip(call, out, strict=True):
                for metric, v in values.items():
                    result[index].samples[metric][start:stop, layers] = np.asarray(v)[
                        : stop - start
                    ]
            progress.update(stop - start)
    progress.close()
    if len(cells.bounds) > 1 and widen_to_folds:
        for probes in result:
            _widen_to_fold_spread(probes)
    # Multilabel: categories without a positive in any fold's test part.
    # A control's shuffle keeps each fold's per-category totals, so the labels' count stands.
    task_totals = np.asarray(bases[0], np.float64).sum(0)[0]  # [C, 2]
    left_out = (task_totals[:, 0] == 0).sum() if label_kind == "multilabel" else 0
    return Bootstrap(
        label_kind,
        result,
        cells.num_images,
        num_resamples,
        seed,
        int(left_out),
        len(cells.bounds),
    )


def _widen_to_fold_spread(probes: ProbeSetSamples) -> None:
    """Widens the folds x bootstrap samples when the folds scatter more than it says.

    The resamples move the test images only; each fold's probes also depend on
    its train images, which they do not move. The folds' own scatter sees both:
    var over folds / F is a second estimate of the fold mean's variance (for K
    folds with disjoint test parts; too small for repeated draws, whose folds
    share images, so there the bootstrap mostly stands). The deviations of the
    resamples from the observed value are scaled by sqrt(max(1, that / the
    bootstrap variance)), per metric and layer: the interval is the bootstrap's
    unless the folds disagree more than test sampling explains. Measured on
    planted probes with 5 folds (tests/test_probes_fold_intervals.py), the fold
    mean varied 1.15x the bootstrap standard deviation, which left the plain
    bootstrap at 87% coverage of the Bayes accuracy.
    """
    for metric, samples in probes.samples.items():
        per_fold = probes.per_fold[metric]
        observed = probes.observed[metric]
        with np.errstate(invalid="ignore", divide="ignore"):
            fold_variance = np.nanvar(per_fold, axis=0, ddof=1) / per_fold.shape[0]
            boot_variance = np.nanvar(samples.astype(np.float64), axis=0)
            factor = np.sqrt(np.fmax(1.0, fold_variance / boot_variance))
        factor = np.where(np.isfinite(factor), factor, 1.0)
        probes.samples[metric] = (observed + (samples - observed) * factor).astype(np.float32)
        probes.widening[metric] = factor


def percentile_interval(samples: np.ndarray, confidence: float = CONFIDENCE) -> np.ndarray:
    """[2, ...] percentile interval over axis 0 (numpy's linear quantiles), NaNs ignored."""
    alpha = (1 - confidence) / 2
    return np.nanquantile(np.asarray(samples, np.float64), [alpha, 1 - alpha], axis=0)


def summarize_samples(observed, samples, confidence: float = CONFIDENCE) -> dict:
    """{"mean", "ci95"} of one quantity: the observed value and its percentile interval."""
    low, high = percentile_interval(samples, confidence)
    return {"mean": float(observed), "ci95": [float(low), float(high)]}


def compare(observed_a, observed_b, samples_a, samples_b, confidence: float = CONFIDENCE) -> dict:
    """Paired difference a - b on the same resamples.

    Returns {"difference", "ci95", "p_value" (two-sided, of a - b = 0),
    "p_a_better" (one-sided, add-one corrected share of resamples with
    a - b <= 0)}.
    """
    differences = np.asarray(samples_a, np.float64) - np.asarray(samples_b, np.float64)
    differences = differences[~np.isnan(differences)]
    out = summarize_samples(float(observed_a) - float(observed_b), differences, confidence)
    two_sided = 2 * min((differences <= 0).mean(), (differences >= 0).mean())
    return {
        "difference": out["mean"],
        "ci95": out["ci95"],
        "p_value": float(min(two_sided, 1.0)),
        "p_a_better": float((1 + np.sum(differences <= 0)) / (1 + differences.size)),
    }


def layer_intervals(result: Bootstrap, set_index: int = 0) -> list[dict[str, dict]]:
    """Per layer of one probe set: metric -> {"mean", "ci95"}."""
    probes = result.sets[set_index]
    num_layers = next(iter(probes.observed.values())).shape[0]
    return [
        {
            m: summarize_samples(probes.observed[m][i], probes.samples[m][:, i])
            for m in probes.observed
        }
        for i in range(num_layers)
    ]


def layer_difference(
    result: Bootstrap, metric: str, layer_a: int, layer_b: int, set_index: int = 0
) -> dict:
    """Layer a - layer b (layer positions in the set) of one metric, paired."""
    probes = result.sets[set_index]
    return compare(
        probes.observed[metric][layer_a],
        probes.observed[metric][layer_b],
        probes.samples[metric][:, layer_a],
        probes.samples[metric][:, layer_b],
    )


def set_difference(result: Bootstrap, metric: str, set_a: int = 0, set_b: int = 1) -> list[dict]:
    """Per layer, set a - set b: selectivity (task - control) or model a - model b."""
    a, b = result.sets[set_a], result.sets[set_b]
    return [
        compare(
            a.observed[metric][i],
            b.observed[metric][i],
            a.samples[metric][:, i],
            b.samples[metric][:, i],
        )
        for i in range(a.observed[metric].shape[0])
    ]


def align_rows(predictions_a: dict, predictions_b: dict) -> tuple[np.ndarray, np.ndarray]:
    """Positions in a and b of the test rows both hold, matched by (group, row).

    Two models probed on the same task and split score the same rows; this
    matches them whatever their order, and refuses rows whose labels differ.
    """
    keys = [
        {(int(g), int(r)): i for i, (g, r) in enumerate(zip(p["group"], p["rows"], strict=True))}
        for p in (predictions_a, predictions_b)
    ]
    common = sorted(set(keys[0]) & set(keys[1]))
    if len(common) < 2:
        raise ValueError(f"the two prediction sets share {len(common)} test rows; need >= 2")
    index_a = np.array([keys[0][k] for k in common])
    index_b = np.array([keys[1][k] for k in common])
    if not np.array_equal(
        np.asarray(predictions_a["labels"])[index_a], np.asarray(predictions_b["labels"])[index_b]
    ):
        raise ValueError("rows matched by (group, row) carry different labels in the two sets")
    return index_a, index_b


def predictions_bootstrap(
    predictions: dict, num_resamples: int = NUM_RESAMPLES, seed: int = 0
) -> Bootstrap:
    """The bootstrap of predictions.npz (as a dict): set 0 the task probes, set 1 the control;
    over the folds' test parts together when it has a `fold` array (module docstring)."""
    sets, set_labels = [predictions["logits"]], None
    if CONTROL_LOGITS in predictions:
        sets.append(predictions[CONTROL_LOGITS])
        if CONTROL_LABELS in predictions:
            set_labels = [None, (predictions[CONTROL_LABELS], predictions.get(CONTROL_MASK))]
        else:
            # Written before the control had its own test labels: its interval (and
            # selectivity's) is then the old one, on the real labels.
            _log.warning(
                "predictions.npz has %s but no %s (written by an older version): the "
                "control is scored on the real test labels, not on its shuffled ones",
                CONTROL_LOGITS,
                CONTROL_LABELS,
            )
    return bootstrap(
        sets,
        predictions["labels"],
        predictions["group"],
        mask=predictions.get("mask"),
        label_kind=str(predictions["label_kind"]),
        num_resamples=num_resamples,
        seed=seed,
        fold=predictions.get("fold"),
        set_labels=set_labels,
    )
