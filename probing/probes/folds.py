"""Folds of the probe sweep: the image-grouped splits it trains on (`FoldSet`, `make_folds`)
and each fold's labels per target and seed, as the index arrays and row weights the kernels read.

A fold is a split of the workdir's rows into train / val / test. Without
folds (settings.folds = 0) there is one, the workdir's own split. With folds
the images (arrays/group) are re-split at probe time: K grouped folds (fold f
tests on the f-th K-th of the images, selects on the next K-th, trains on the
rest) or K random grouped draws with the workdir's own fractions. Every fold
reads the one copy of the features:
  train  all folds share one index array (the rows that are train in any
         fold) and one minibatch order over it; a fold is a row-weight mask
         on it (its label mask is 0 on rows outside its train part), so one
         gathered minibatch trains every fold;
  val, test  each fold has its own index array, padded to the longest fold
         (padding rows carry mask 0), for evaluation.
The shared index and the padded lengths are those of the whole FoldSet, also
when only some folds are trained, so that a fold trains identically alone.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from probing.probes.kernels import _CONTROL_STREAM, _stream_key
from probing.probes.settings import SweepSettings
from probing.store.layout import TEST, TRAIN, VAL

_SPLIT_NAMES = {TRAIN: "train", VAL: "val", TEST: "test"}


@dataclasses.dataclass(frozen=True)
class FoldSet:
    """Splits of the rows, one per fold.

    Attributes:
      split: int8 [F, N], each fold's split code (0 train, 1 val, 2 test) per row.
      ids: [F] fold indices (0..K-1 of the full set; a subset trains some folds only).
      kind: "workdir" (the workdir's own split, no fold axis in the outputs),
        "kfold" or "repeated".
      padded: split code -> rows every fold's index array is padded to (the
        longest fold of the full set).
      train_rows: int32 [n] the shared train index: rows that are train in
        some fold of the full set (without folds: the workdir's train rows),
        laid out in chunks.
      chunk_sizes: rows per chunk of train_rows. A chunk holds the rows that
        are train in the same folds (K-fold: K chunks, the images of one
        K-th), so that minibatches drawn within a chunk are trained on whole
        by some folds and skipped whole by the others; with more distinct
        patterns than folds (repeated draws) one chunk of all rows.
    """

    split: np.ndarray
    ids: np.ndarray
    kind: str
    padded: dict[int, int]
    train_rows: np.ndarray
    chunk_sizes: tuple[int, ...]

    @classmethod
    def of_splits(cls, split: np.ndarray, kind: str) -> FoldSet:
        split = np.asarray(split, np.int8).reshape(-1, np.shape(split)[-1])
        padded = {code: int((split == code).sum(axis=1).max()) for code in _SPLIT_NAMES}
        member = split == TRAIN
        train_rows = np.flatnonzero(member.any(axis=0))
        patterns, chunk_of = np.unique(member[:, train_rows].T, axis=0, return_inverse=True)
        chunk_sizes = (train_rows.size,)
        if 1 < len(patterns) <= len(split):
            # Rows grouped by chunk, each chunk in row order.
            train_rows = train_rows[np.argsort(chunk_of.ravel(), kind="stable")]
            chunk_sizes = tuple(int(n) for n in np.bincount(chunk_of.ravel()))
        return cls(
            split, np.arange(len(split)), kind, padded, train_rows.astype(np.int32), chunk_sizes
        )

    def train_weight(self) -> np.ndarray:
        """float32 [F, n]: 1 where a row of the shared train index is in the fold's train part."""
        return (self.split[:, self.train_rows] == TRAIN).astype(np.float32)

    @property
    def num_folds(self) -> int:
        return len(self.ids)

    @property
    def enabled(self) -> bool:
        """Whether the outputs carry a fold axis (folds re-drawn at probe time)."""
        return self.kind != "workdir"

    def select(self, fold_ids) -> FoldSet:
        """The folds `fold_ids` (indices into this set), with the full set's shared train index
        and padding, so that they train exactly as inside it."""
        positions = np.asarray(fold_ids, np.int64)
        return dataclasses.replace(self, split=self.split[positions], ids=self.ids[positions])

    def rows(self, code: int) -> tuple[np.ndarray, np.ndarray]:
        """int32 [F, padded] row indices of split `code` per fold, in row order (padding 0),
        and int32 [F] how many of them are real."""
        out = np.zeros((self.num_folds, self.padded[code]), np.int32)
        counts = np.zeros(self.num_folds, np.int32)
        for f, fold_split in enumerate(self.split):
            rows = np.flatnonzero(fold_split == code)
            out[f, : rows.size], counts[f] = rows, rows.size
        return out, counts


def _image_ids(groups: np.ndarray | None, num_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct images, each row's position among them); one image per row without groups."""
    groups = np.arange(num_rows) if groups is None else np.asarray(groups)
    return np.unique(groups, return_inverse=True)


def make_folds(
    split: np.ndarray,
    groups: np.ndarray | None,
    labels: np.ndarray,
    mask: np.ndarray,
    settings: SweepSettings,
) -> FoldSet:
    """The folds settings.folds asks for, checked.

    Raises:
      ValueError: fewer images than folds, or a fold whose train, val or test
        part lacks scored entries, positives or negatives (naming the fold and
        the counts).
    """
    if settings.folds == 0:
        return FoldSet.of_splits(split, "workdir")
    images, image_of_row = _image_ids(groups, len(split))
    num_images, k = len(images), settings.folds
    if num_images < k or (settings.fold_kind == "repeated" and num_images < 3):
        raise ValueError(
            f"probe config: folds = {k} ({settings.fold_kind}) needs at least "
            f"{max(k, 3)} images, but the workdir has {num_images}"
        )
    image_split = np.full((k, num_images), TRAIN, np.int8)
    if settings.fold_kind == "kfold":
        order = np.random.default_rng(settings.fold_seed).permutation(num_images)
        chunks = np.array_split(order, k)
        for f in range(k):
            image_split[f, chunks[f]] = TEST
            image_split[f, chunks[(f + 1) % k]] = VAL
    else:
        # The workdir's own fractions, counted in images (its split is grouped).
        first_row = np.unique(image_of_row, return_index=True)[1]
        own = np.asarray(split)[first_row]
        num_test, num_val = int((own == TEST).sum()), int((own == VAL).sum())
        for f in range(k):
            order = np.random.default_rng([settings.fold_seed, f]).permutation(num_images)
            image_split[f, order[:num_test]] = TEST
            image_split[f, order[num_test : num_test + num_val]] = VAL
    folds = FoldSet.of_splits(image_split[:, image_of_row], settings.fold_kind)
    _check_classes(folds, labels, mask)
    return folds


def _check_classes(folds: FoldSet, labels: np.ndarray, mask: np.ndarray) -> None:
    """Every part of every fold needs scored entries of both classes (as data.load_labels)."""
    labels = np.asarray(labels).reshape(len(labels), -1)
    mask = np.asarray(mask).reshape(len(mask), -1)
    # Train parts first: a fold with nothing to learn from is the likelier mistake.
    for code, name in _SPLIT_NAMES.items():
        for f, fold_split in zip(folds.ids, folds.split, strict=True):
            rows = fold_split == code
            scored = int(mask[rows].sum())
            positives = int((labels[rows] * mask[rows]).sum())
            if scored == 0 or positives == 0 or positives == scored:
                raise ValueError(
                    f"fold {int(f)} ({folds.kind}): its {name} part ({int(rows.sum())} rows) has "
                    f"{positives} positive and {scored - positives} negative scored labels; a "
                    f"probe needs both classes in train, val and test. Use fewer folds, "
                    f"another fold_seed, or more images."
                )


def fold_targets(labels, mask, folds: FoldSet, seed_ids, settings, code):
    """Labels and mask per fold, target and seed, [F, T, S, n, C], as jax arrays: of the shared
    train index (code TRAIN) or of each fold's padded index array of split `code`.

    A row outside the fold's part (or padding) gets mask 0. The shuffled-label
    control permutes the label vectors (with their masks) among the fold's
    rows of the part, one permutation per seed and split, keyed as without
    folds: its train labels carry no signal, and its epoch is chosen on
    equally shuffled val labels so that its selection cannot peek at the real
    ones.
    """
    if code == TRAIN:
        member = folds.train_weight() > 0
        rows = np.broadcast_to(folds.train_rows, member.shape)
    else:
        rows, counts = folds.rows(code)
        member = np.arange(rows.shape[1]) < counts[:, None]
    shape = (folds.num_folds, settings.num_targets, len(seed_ids), rows.shape[1], labels.shape[1])
    y = np.zeros(shape, np.float32)
    m = np.zeros(shape, np.float32)
    for f in range(folds.num_folds):
        part = np.flatnonzero(member[f])
        fold_rows = rows[f, part]
        y[f, :, :, part] = labels[fold_rows][:, None, None]
        m[f, :, :, part] = mask[fold_rows][:, None, None]
        if settings.controls:
            for si, s in enumerate(seed_ids):
                shuffled = fold_rows[control_permutation(settings.seed, s, code, part.size)]
                y[f, 1, si, part] = labels[shuffled]
                m[f, 1, si, part] = mask[shuffled]
    return jnp.asarray(y), jnp.asarray(m)


@functools.lru_cache(maxsize=256)
def _permutation(root_seed: int, seed: int, code: int, size: int) -> np.ndarray:
    return np.asarray(
        jax.random.permutation(_stream_key(root_seed, _CONTROL_STREAM, seed, code), size)
    )


def control_permutation(root_seed: int, seed, code: int, size: int) -> np.ndarray:
    """The shuffled-label control's permutation of the `size` rows of a split part: keyed on
    (settings.seed, the control stream, probe seed, split code), the same for every fold
    whose part has that many rows. Train and val permute the labels the control trains and
    selects on; test (code TEST) permutes the labels it is scored on."""
    # Cached: the tables ask for the same permutation once per layer; a copy keeps the
    # cached array safe from callers.
    return _permutation(int(root_seed), int(seed), int(code), int(size)).copy()


def control_targets(
    labels: np.ndarray,
    mask: np.ndarray,
    split: np.ndarray,
    seed_ids,
    root_seed: int,
    code: int,
    train_rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The shuffled-label control's labels and mask, [S, n, C], of the n rows of split part
    `code` of one fold (`split` [N], its split codes), in row order: what fold_targets gives
    the control for that part, so that its metrics are scored on its own task.

    The permutation runs over the part's rows in the order fold_targets lays them out: row
    order for val and test; for train the order of the shared train index `train_rows`
    (FoldSet.train_rows; None: row order, which it is without folds).
    """
    labels = np.asarray(labels).reshape(len(labels), -1)
    mask = np.asarray(mask).reshape(len(mask), -1)
    rows = np.flatnonzero(np.asarray(split) == code)
    order = rows
    if code == TRAIN and train_rows is not None:
        order = np.asarray(train_rows)[np.isin(train_rows, rows)]
    # Where each entry of `order` sits among the part's rows in row order.
    at = np.searchsorted(rows, order)
    y = np.zeros((len(seed_ids), rows.size, labels.shape[1]), labels.dtype)
    m = np.zeros((len(seed_ids), rows.size, mask.shape[1]), mask.dtype)
    for si, s in enumerate(seed_ids):
        shuffled = order[control_permutation(root_seed, s, code, rows.size)]
        y[si, at], m[si, at] = labels[shuffled], mask[shuffled]
    return y, m
