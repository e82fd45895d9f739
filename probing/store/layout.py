"""Every name of the workdir contract (WORKSPACE.md), defined once.

Extraction writes these files and arrays, probe training and the report read
them, and the test fixtures in `probing.testing` write them too: all of them
import the names from here, so a writer and a reader cannot drift apart.
"""

from __future__ import annotations

from typing import Any

FORMAT_VERSION = 1

# ------------------------------------------------------------ metadata files
CONFIG_JSON = "config.json"
MANIFEST_JSON = "manifest.json"
EXAMPLES_JSONL = "examples.jsonl"
SPLITS_JSON = "splits.json"
TASK_STATS_JSON = "task_stats.json"
# Image ids dropped from the task as unreadable (only when allowed).
SKIPPED_JSONL = "skipped.jsonl"
# Rows the processor or image decoder rejected during extraction (only when allowed).
REJECTED_ROWS_JSONL = "rejected_rows.jsonl"

# ------------------------------------------------------- row-aligned arrays
ARRAYS_DIR = "arrays"
LABELS = "arrays/labels"
LABEL_MASK = "arrays/label_mask"
SPLIT = "arrays/split"
GROUP = "arrays/group"
WRITTEN = "arrays/written"
# 1 = the row was skipped by extraction; the reason is in rejected_rows.jsonl.
REJECTED = "arrays/rejected"
FIRST_TOKEN_IDS = "arrays/first_token_ids"
FIRST_TOKEN_PROBS = "arrays/first_token_probs"
# float32 [N], caption tasks: logit(yes) - logit(no) at the answer position, the
# model's own answer (> 0 = yes); the tokens read are manifest "answer_tokens".
ANSWER_MARGIN = "arrays/answer_margin"
# int32 [N, 3]: per row, the tokens of each kind below (what mean pooling averages).
TOKEN_COUNTS = "arrays/token_counts"
TOKEN_KINDS = ("image", "template", "prompt")
FEATURES_DIR = "features"


def features(pooling: str) -> str:
    """The feature array of one pooling: [N, L+1, D]."""
    return f"{FEATURES_DIR}/{pooling}"


def feature_inner_chunk(chunk_rows: int, hidden_size: int) -> tuple[int, int, int]:
    """Inner chunk of a feature chunk (a shard of [rows, L+1, D]): its rows of one layer.

    One layer of a shard is then one contiguous byte range, so reading a
    group of layers reads those layers' bytes only (WORKSPACE.md, Chunks).
    """
    return (int(chunk_rows), 1, int(hidden_size))


# ------------------------------------------------------- zarr hierarchy
# Zarr v3 node metadata: every array folder holds one (TensorStore writes it),
# and so do the workdir and the folders of arrays, as groups, so that
# zarr.open_group(workdir) and xr.open_zarr(workdir + "/features") see a hierarchy.
ZARR_JSON = "zarr.json"
ZARR_GROUPS = ("", FEATURES_DIR, ARRAYS_DIR)
ZARR_GROUP_METADATA = {"zarr_format": 3, "node_type": "group", "attributes": {}}
# Axis names of every array (zarr3 `dimension_names`, xarray's dims). Arrays that
# share an axis share its name, so one folder opens as one xarray Dataset.
ROW, LAYER, DIM, CATEGORY = "row", "layer", "dim", "category"
_DIMENSION_NAMES: dict[str, tuple[str, ...]] = {
    LABEL_MASK: (ROW, CATEGORY),
    SPLIT: (ROW,),
    GROUP: (ROW,),
    WRITTEN: (ROW,),
    REJECTED: (ROW,),
    FIRST_TOKEN_IDS: (ROW, "rank"),
    FIRST_TOKEN_PROBS: (ROW, "rank"),
    TOKEN_COUNTS: (ROW, "token_kind"),
}


def dimension_names(name: str, ndim: int) -> tuple[str, ...]:
    """The axis names of array `name` (a path inside the workdir) with `ndim` axes.

    Features are (row, layer, dim); labels (row,) or (row, category); an array
    this page does not name gets (row, <base>_1, ...), so a folder holding it
    still opens as one Dataset.
    """
    if name.startswith(FEATURES_DIR + "/") and ndim == 3:
        return (ROW, LAYER, DIM)
    if name == LABELS:
        return (ROW, CATEGORY)[:ndim] if ndim <= 2 else _generic(name, ndim)
    known = _DIMENSION_NAMES.get(name)
    if known is not None and len(known) == ndim:
        return known
    return _generic(name, ndim)


def _generic(name: str, ndim: int) -> tuple[str, ...]:
    base = name.rstrip("/").rsplit("/", 1)[-1]
    return (ROW, *(f"{base}_{i}" for i in range(1, ndim)))[:ndim]


# ------------------------------------------------------------------- splits
SPLIT_NAMES = ("train", "val", "test")
TRAIN, VAL, TEST = 0, 1, 2
SPLIT_CODES = {name: code for code, name in enumerate(SPLIT_NAMES)}
# The split that picks a layer's epoch and grid point, and the one that scores it.
SELECTION_SPLIT = "val"
SCORING_SPLIT = "test"

# --------------------------------------------------------------- the labels
LABEL_KINDS = ("binary", "multilabel")
# The one number per layer that curves, tables and best-layer choices use.
HEADLINE_METRIC = {"binary": "accuracy", "multilabel": "macro_f1"}

# ------------------------------------------------------------ probe results
PROBES_DIR = "probes"
METRICS_CSV = "metrics.csv"
CURVES_CSV = "curves.csv"
SUMMARY_JSON = "summary.json"
PROBE_CONFIG_JSON = "probe_config.json"
WEIGHTS_NPZ = "weights.npz"
PREDICTIONS_NPZ = "predictions.npz"
# predictions.npz keys of the shuffled-label control (when it ran): its test logits
# [L, S, n] ([L, S, n, K]) and the test labels it is scored on, the test part's labels
# permuted per seed as its train and val labels were: int8 [S, n] ([S, n, K]), and
# (multilabel) their mask uint8 [S, n, K].
CONTROL_LOGITS = "control_logits"
CONTROL_LABELS = "control_labels"
CONTROL_MASK = "control_mask"
# Written last: every other file's sha256, so a reader can refuse a mixed folder.
RESULTS_JSON = "results.json"
# probe_config.json's record of how and where the probes were trained
# (probing.provenance.probe_environment): {"command", "date", "library_versions",
# "devices"}; manifest.json's "command" is the extraction's.
PROBE_ENVIRONMENT = "environment"
# The columns that identify a run, first in every row of metrics.csv and
# curves.csv (probing.probes.identity), so that many workdirs' files concatenate.
RUN_COLUMNS = ("model", "task", "prompt", "pooling", "run")
# The columns of one probe's numbers; a reader requires these (files written
# by hand or before RUN_COLUMNS existed have only them).
METRICS_COLUMNS = ("layer", "seed", "split", "metric", "value")
CURVES_COLUMNS = ("layer", "seed", "epoch", "split", "loss")
# With folds re-drawn at probe time (config.folds), both files gain a fold column
# after the layer, and predictions.npz a `fold` array (the fold that tested each row).
FOLD_COLUMN = "fold"
FOLD_METRICS_COLUMNS = ("layer", FOLD_COLUMN, "seed", "split", "metric", "value")
FOLD_CURVES_COLUMNS = ("layer", FOLD_COLUMN, "seed", "epoch", "split", "loss")


def probes_dir(pooling: str) -> str:
    """The folder of one pooling's probe results inside a workdir."""
    return f"{PROBES_DIR}/{pooling}"


def probe_file(pooling: str, name: str) -> str:
    """A probe result file (one of the *_CSV / *_JSON / *_NPZ names above)."""
    return f"{probes_dir(pooling)}/{name}"


# ----------------------------------------------------------------- manifest
# Fields every reader needs; a manifest without them is refused.
MANIFEST_REQUIRED = (
    "num_examples",
    "num_layers",
    "hidden_size",
    "poolings",
    "label_kind",
    "label_names",
)


# What a layer index means, recorded in every manifest.
LAYER_CONVENTION = (
    "index 0 is the input of the first decoder layer (embeddings with image features "
    "inserted); index i >= 1 is the output of decoder layer i; the last index is taken "
    "after the final norm, as transformers' hidden_states"
)


def new_manifest(
    *,
    model: dict[str, Any],
    library_versions: dict[str, str],
    dtype: str,
    feature_dtype: str,
    num_examples: int,
    num_layers: int,
    hidden_size: int,
    poolings: list[str],
    label_kind: str,
    label_names: list[str],
    task: str,
    prompt_template: str,
    with_image: bool | None = None,
    layer_convention: str = LAYER_CONVENTION,
    padding_side: str | None = None,
    first_token_topk: int | None = None,
    answer_tokens: dict[str, Any] | None = None,
    complete: bool = False,
    fingerprint: dict[str, Any] | None = None,
    command: str | None = None,
    hardware: dict[str, Any] | None = None,
    date: str | None = None,
) -> dict[str, Any]:
    """manifest.json's content in the documented field order.

    `model` is {"id", "revision", "family", "random_init", "prompt_format"} and,
    for hub checkpoints, "resolved_revision" (the commit loaded); `num_layers` counts
    hidden states (decoder layers + 1). Optional fields left as None are not
    written. `fingerprint` is what a resume must match; command, hardware and
    date say where and when, and are not part of it.
    """
    if label_kind not in LABEL_KINDS:
        raise ValueError(f"label_kind must be one of {LABEL_KINDS}, got {label_kind!r}")
    fields: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "model": dict(model),
        "library_versions": dict(library_versions),
        "dtype": dtype,
        "feature_dtype": feature_dtype,
        "num_examples": int(num_examples),
        "num_layers": int(num_layers),
        "hidden_size": int(hidden_size),
        "poolings": list(poolings),
        "label_kind": label_kind,
        "label_names": list(label_names),
        "task": task,
        "prompt_template": prompt_template,
        "with_image": None if with_image is None else bool(with_image),
        "layer_convention": layer_convention,
        "padding_side": padding_side,
        "first_token_topk": None if first_token_topk is None else int(first_token_topk),
        "answer_tokens": answer_tokens,
        "complete": bool(complete),
        "fingerprint": fingerprint,
        "command": command,
        "hardware": hardware,
        "date": date,
    }
    return {key: value for key, value in fields.items() if value is not None}
