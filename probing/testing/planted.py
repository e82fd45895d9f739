"""Planted workdirs: synthetic features with a known signal, for probe tests and benchmarks.

`planted_arrays` draws the arrays and `write_workdir` writes a complete
workdir by hand, array by array with `Workdir.write_array` and the contract
names of probing.store.layout, exactly as a program other than
probing.extract would: Gaussian noise features in every layer, plus, in
the chosen layers, a shift along one direction per label that separates the
classes. A probe should find the signal there and score chance elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from probing.store.layout import (
    GROUP,
    LABEL_MASK,
    LABELS,
    MANIFEST_JSON,
    SPLIT,
    WRITTEN,
    feature_inner_chunk,
    new_manifest,
)
from probing.store.layout import (
    features as features_array,
)
from probing.store.workdir import Workdir

ROWS_PER_IMAGE = 2


def planted_arrays(
    num_examples: int,
    num_layers: int,
    hidden_size: int,
    signal_layers: Sequence[int],
    num_labels: int = 0,
    strength: float = 2.0,
    seed: int = 0,
    layer_major: bool = False,
) -> dict[str, np.ndarray]:
    """Arrays of a planted-signal task.

    Args:
      num_examples: N rows (two rows per image).
      num_layers: L+1.
      hidden_size: D (>= the number of labels).
      signal_layers: layers whose features carry the labels.
      num_labels: 0 for a binary task, K >= 1 for a multilabel one.
      strength: class separation along each label's direction, in noise
        standard deviations (2.0 gives ~84% accuracy for one direction).
      seed: numpy seed.
      layer_major: return features as [L+1, N, D], run_sweep's input layout, drawn
        in that order (other numbers than the default layout), so that a
        benchmark at full size holds one copy of them.

    Returns:
      features float32 [N, L+1, D] (or [L+1, N, D]), labels int8 [N] or [N, K], label_mask
      uint8 [N, K] (multilabel only; about 3 scored labels per row), split
      int8 [N] (image-grouped, 60/20/20), group int64 [N].
    """
    rng = np.random.default_rng(seed)
    columns = max(num_labels, 1)
    if hidden_size < columns:
        raise ValueError(f"hidden_size {hidden_size} must be >= the {columns} planted directions")
    labels = (rng.random((num_examples, columns)) < 0.5).astype(np.int8)
    shape = (num_examples, num_layers, hidden_size)
    if layer_major:
        shape = (num_layers, num_examples, hidden_size)
    features = rng.standard_normal(shape, dtype=np.float32)
    # A fixed random direction per label, shared by all signal layers.
    directions = np.linalg.qr(rng.standard_normal((hidden_size, columns)))[0].T
    shift = (strength / 2) * (2 * labels.astype(np.float32) - 1) @ directions.astype(np.float32)
    for layer in signal_layers:
        if layer_major:
            features[layer] += shift
        else:
            features[:, layer] += shift
    group = np.arange(num_examples, dtype=np.int64) // ROWS_PER_IMAGE
    image_split = rng.permutation(
        np.repeat([0, 1, 2], np.ceil(np.array([0.6, 0.2, 0.2]) * (group[-1] + 1)).astype(int))
    )[: group[-1] + 1]
    out = {
        "features": features,
        "split": image_split[group].astype(np.int8),
        "group": group,
    }
    if num_labels:
        out["labels"] = labels
        out["label_mask"] = (
            rng.random((num_examples, num_labels)) < min(1.0, 3 / num_labels)
        ).astype(np.uint8)
    else:
        out["labels"] = labels[:, 0]
    return out


def write_workdir(
    location: str,
    arrays: dict[str, np.ndarray],
    poolings: Sequence[str] = ("mean",),
    label_names: Sequence[str] | None = None,
    written: np.ndarray | None = None,
    feature_dtype: str = "float32",
    sharded: bool = True,
    chunk_rows: int = 64,
) -> Workdir:
    """Writes a workdir following WORKSPACE.md from `planted_arrays`-style arrays.

    Every pooling gets the same features. `written` defaults to all ones.
    Feature chunks hold `chunk_rows` rows of every layer; `sharded` stores them
    as extraction does (one inner chunk per layer), False as stores written
    before that did (one plain chunk of all layers).
    """
    workdir = Workdir(location)
    values = np.asarray(arrays["features"]).astype(feature_dtype)
    num_examples, num_layers, hidden_size = values.shape
    labels = np.asarray(arrays["labels"])
    multilabel = labels.ndim == 2
    if label_names is None:
        label_names = [f"cat{k}" for k in range(labels.shape[1])] if multilabel else ["match"]
    workdir.write_array(LABELS, labels)
    if multilabel:
        workdir.write_array(LABEL_MASK, np.asarray(arrays["label_mask"], np.uint8))
    workdir.write_array(SPLIT, np.asarray(arrays["split"], np.int8))
    workdir.write_array(GROUP, np.asarray(arrays["group"], np.int64))
    written = np.ones(num_examples, np.uint8) if written is None else np.asarray(written, np.uint8)
    workdir.write_array(WRITTEN, written)
    for pooling in poolings:
        rows = min(chunk_rows, num_examples)
        array = workdir.create_array(
            features_array(pooling),
            values.dtype.name,
            values.shape,
            (rows, num_layers, hidden_size),
            inner_chunk_shape=feature_inner_chunk(rows, hidden_size) if sharded else None,
        )
        # Chunk by chunk, as extraction writes: a temporary copy stays one chunk big.
        for start in range(0, num_examples, rows):
            stop = min(start + rows, num_examples)
            array[start:stop].write(values[start:stop]).result()
    workdir.write_json(
        MANIFEST_JSON,
        new_manifest(
            model={"id": "synthetic", "revision": None, "family": "none", "random_init": True},
            library_versions={},
            dtype="float32",
            feature_dtype=feature_dtype,
            num_examples=num_examples,
            num_layers=num_layers,
            hidden_size=hidden_size,
            poolings=list(poolings),
            label_kind="multilabel" if multilabel else "binary",
            label_names=list(label_names),
            task="synthetic",
            prompt_template="",
            complete=bool(written.all()),
        ),
    )
    return workdir
