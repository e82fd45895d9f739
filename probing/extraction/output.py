"""The workdir side of stage 1: manifest and fingerprint, create / resume / finish a store.

Rank 0 creates a fresh store (metadata, empty feature arrays, manifest.json
last, so that its presence means every array exists) or, when manifest.json
is already there, checks that the stored fingerprint matches this run:
restarting the same command on a partly written workdir resumes it, while a
workdir written with a different configuration (model, revision, prompt,
poolings, dtype, library versions, ...) or from different inputs (task rows,
images, checkpoint files) is refused unless `config.overwrite` is set, which
replaces only what extraction wrote. `WindowWriter` writes the features of a finished window chunk by
chunk and only then marks its rows durable in `arrays/written`, so an
interrupted run loses at most the windows in flight.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
import time
from typing import Any

import ml_collections
import numpy as np
import tensorstore as ts
import torch
from absl import logging

import probing
from probing.extraction import environment
from probing.extraction.answers import YesNoTokens
from probing.extraction.batches import to_storage
from probing.extraction.forward import ForwardResult
from probing.extraction.inputs import explain_mismatch
from probing.extraction.settings import PERFORMANCE_KNOBS, ExtractionError, ExtractSettings
from probing.store import layout
from probing.store import workdir as store
from probing.store.lock import LOCK_NAME

_WAIT_FOR_RANK0_S = 1800.0


# ----------------------------------------------------------------------------
# The manifest and what a resume must match.


def library_versions() -> dict[str, str]:
    """Versions of the libraries that determine the features."""
    versions = {"probing": probing.__version__}
    for name in ("torch", "transformers", "tensorstore", "numpy", "pillow", "timm"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def config_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The whole config as JSON-able dicts (what config.json holds)."""
    return json.loads(config.to_json_best_effort(sort_keys=True))


def fingerprint(
    config: ml_collections.ConfigDict, processor, inputs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Everything that determines the features; a resumed run must match it.

    `inputs` are the digests of the task rows, images and checkpoint
    (`probing.extraction.inputs`): the same config may read edited files.
    The command line, date and hardware are recorded in manifest.json but
    are deliberately not part of it: the same run may resume elsewhere.
    """
    processor_settings = {}
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is not None:
        processor_settings = json.loads(image_processor.to_json_string())
    config_dict = config_json(config)
    config_dict.pop("overwrite", None)
    for knob in PERFORMANCE_KNOBS:
        config_dict.get("extract", {}).pop(knob, None)
    digest = hashlib.sha256(json.dumps(processor_settings, sort_keys=True).encode()).hexdigest()
    out = {
        "config": config_dict,
        "library_versions": library_versions(),
        "processor_settings_sha256": digest,
    }
    if inputs is not None:
        out["inputs"] = inputs
    return out


def build_manifest(
    config,
    settings: ExtractSettings,
    poolings,
    table,
    adapter,
    processor,
    started: str,
    inputs: dict[str, Any] | None = None,
    answer_tokens: YesNoTokens | None = None,
) -> dict[str, Any]:
    """manifest.json of this run (complete=False until every row is done)."""
    return layout.new_manifest(
        model={
            "id": config.model.name,
            "revision": config.model.revision,
            "family": adapter.family,
            "random_init": bool(config.model.random_init),
            # What the adapter rendered (PaliGemma is always raw), which decides
            # what "last" pools: the template's last token or the prompt's.
            "prompt_format": adapter.prompt_format,
            **(
                {"resolved_revision": adapter.resolved_revision}
                if getattr(adapter, "resolved_revision", None)
                else {}
            ),
        },
        library_versions=library_versions(),
        dtype=config.model.dtype,
        feature_dtype=settings.feature_dtype,
        num_examples=len(table.examples),
        num_layers=adapter.num_decoder_layers + 1,
        hidden_size=adapter.hidden_size,
        poolings=list(poolings),
        label_kind=table.label_kind,
        label_names=list(table.label_names),
        task=table.task,
        prompt_template=table.prompt_template,
        with_image=bool(table.with_image),
        padding_side=adapter.padding_side,
        first_token_topk=settings.first_token_topk,
        answer_tokens=answer_tokens.as_json() if answer_tokens is not None else None,
        fingerprint=fingerprint(config, processor, inputs),
        # Where and when; not part of the fingerprint (a resume may run elsewhere).
        command=environment.command_line(),
        hardware=environment.hardware(),
        date=started,
    )


def diff_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the leaves where two nested dicts differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in diff_keys(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [prefix.rstrip(".")]


# ----------------------------------------------------------------------------
# Creating or resuming the store.


def _write_metadata(wd: store.Workdir, config, table) -> None:
    wd.write_json(layout.CONFIG_JSON, config_json(config))
    wd.write_jsonl(layout.EXAMPLES_JSONL, table.examples)
    wd.write_json(layout.SPLITS_JSON, table.splits)
    wd.write_json(layout.TASK_STATS_JSON, table.stats)
    if table.skipped:
        wd.write_jsonl(layout.SKIPPED_JSONL, table.skipped)
    wd.write_array(layout.LABELS, table.labels.astype(np.int8))
    if table.label_mask is not None:
        wd.write_array(layout.LABEL_MASK, table.label_mask.astype(np.uint8))
    wd.write_array(layout.SPLIT, table.split.astype(np.int8))
    wd.write_array(layout.GROUP, table.group.astype(np.int64))


def _differences(wd: store.Workdir, manifest: dict[str, Any]) -> list[str]:
    old = wd.read_json(layout.MANIFEST_JSON)
    return diff_keys(old.get("fingerprint"), manifest["fingerprint"])


def _check_resumable(wd: store.Workdir, manifest: dict[str, Any], table) -> None:
    differing = _differences(wd, manifest)
    if differing:
        raise ExtractionError(explain_mismatch(wd, differing, table.examples))


# What extraction writes at the top of a workdir; overwrite deletes these and
# nothing else (probes/, report/ and a user's files are never touched).
_OWN_FILES = (
    layout.MANIFEST_JSON,
    layout.CONFIG_JSON,
    layout.EXAMPLES_JSONL,
    layout.SPLITS_JSON,
    layout.TASK_STATS_JSON,
    layout.SKIPPED_JSONL,
    layout.ZARR_JSON,  # the workdir's zarr group metadata
)
_OWN_PREFIXES = (layout.FEATURES_DIR + "/", layout.ARRAYS_DIR + "/")


def _is_own(key: str) -> bool:
    if key.startswith(_OWN_PREFIXES) or key == LOCK_NAME:
        return True
    # Leftovers of Workdir.write_bytes' atomic replace (NAME.tmp<pid>) are ours too.
    base = re.sub(r"\.tmp\d+$", "", key)
    rejected = re.fullmatch(r"rejected_rows(\.rank\d+)?\.jsonl", base) is not None
    return base in _OWN_FILES or rejected or key.startswith(".probing-write-check-")


def _wipe(wd: store.Workdir) -> None:
    """Deletes what extraction wrote (overwrite), manifest first; refuses if more is there.

    The choice for anything else (probes/, report/, a user's notes): refuse,
    not move aside. Nothing is lost, and it works alike on buckets, where a
    move is a copy.
    """
    kvstore = ts.KvStore.open(wd.kvstore("")).result()
    keys = [k.decode() for k in kvstore.list().result()]
    foreign = sorted({k.split("/")[0] + ("/" if "/" in k else "") for k in keys if not _is_own(k)})
    if foreign:
        raise ExtractionError(
            f"workdir {wd.location}: config.overwrite=True would replace features that "
            f"{', '.join(foreign[:6])} {'was' if len(foreign) == 1 else 'were'} made from; "
            "move them out of the workdir (or delete them) first, or use another --workdir"
        )
    # The manifest goes first, so that no rank can take the old store for ready.
    name = layout.MANIFEST_JSON
    kvstore.delete_range(ts.KvStore.KeyRange(name, name + "\0")).result()
    for prefix in _OWN_PREFIXES:
        end = prefix[:-1] + chr(ord("/") + 1)
        kvstore.delete_range(ts.KvStore.KeyRange(prefix, end)).result()
    for key in keys:
        if _is_own(key) and key != LOCK_NAME and not key.startswith(_OWN_PREFIXES):
            kvstore.delete_range(ts.KvStore.KeyRange(key, key + "\0")).result()


def _create_store(wd: store.Workdir, config, settings: ExtractSettings, manifest, table) -> None:
    if wd.exists(layout.MANIFEST_JSON):
        logging.warning(
            "config.overwrite=True: replacing the features of another run in %s", wd.location
        )
        _wipe(wd)
    _write_metadata(wd, config, table)
    chunk_rows = settings.batch_size
    num_rows = manifest["num_examples"]
    shape = (num_rows, manifest["num_layers"], manifest["hidden_size"])
    for pooling in manifest["poolings"]:
        # A chunk holds a batch's rows of every layer (one write per batch, as
        # extraction produces them), sharded into one inner chunk per layer so
        # that probe training reads a group of layers without the others.
        wd.create_array(
            layout.features(pooling),
            manifest["feature_dtype"],
            shape,
            (chunk_rows, *shape[1:]),
            inner_chunk_shape=layout.feature_inner_chunk(chunk_rows, shape[2]),
        )
    wd.create_array(layout.WRITTEN, "uint8", (num_rows,), (chunk_rows,))
    wd.create_array(layout.REJECTED, "uint8", (num_rows,), (chunk_rows,))
    kinds = len(layout.TOKEN_KINDS)
    wd.create_array(layout.TOKEN_COUNTS, "int32", (num_rows, kinds), (chunk_rows, kinds))
    k = settings.first_token_topk
    if k > 0:
        wd.create_array(layout.FIRST_TOKEN_IDS, "int32", (num_rows, k), (chunk_rows, k))
        wd.create_array(layout.FIRST_TOKEN_PROBS, "float32", (num_rows, k), (chunk_rows, k))
    if manifest.get("answer_tokens"):
        wd.create_array(layout.ANSWER_MARGIN, "float32", (num_rows,), (chunk_rows,))
    # Written last: its presence means every array exists.
    wd.write_json(layout.MANIFEST_JSON, manifest)


def prepare_workdir(
    wd: store.Workdir,
    config,
    settings: ExtractSettings,
    manifest: dict[str, Any],
    table,
    rank: int,
    has_process_group: bool,
) -> None:
    """Creates a fresh store (rank 0), or checks an existing one for a resume.

    With a process group the other ranks wait at a barrier; without one (SLURM
    arrays) they wait for rank 0's manifest.json, which is written last.
    """
    if rank == 0:
        exists = wd.exists(layout.MANIFEST_JSON)
        # A matching workdir is resumed even with overwrite=True: a launch
        # script that keeps the flag must not restart from zero on preemption.
        if not exists or (config.overwrite and _differences(wd, manifest)):
            _create_store(wd, config, settings, manifest, table)
        else:
            _check_resumable(wd, manifest, table)
            logging.info("Resuming extraction in %s", wd.location)
    if has_process_group:
        environment.barrier()
    elif rank != 0:
        deadline = time.monotonic() + _WAIT_FOR_RANK0_S
        while not wd.exists(layout.MANIFEST_JSON):
            if time.monotonic() > deadline:
                raise ExtractionError(f"rank {rank}: rank 0 never created {wd.location}")
            time.sleep(1.0)
    if rank != 0:
        _check_resumable(wd, manifest, table)


def done_rows(wd: store.Workdir) -> np.ndarray:
    """[N] bool: rows already written or rejected (by any rank, in any earlier run)."""
    done = wd.read_array(layout.WRITTEN).astype(bool)
    done |= wd.read_array(layout.REJECTED).astype(bool)
    return done


# ----------------------------------------------------------------------------
# Writing features window by window.


class WindowWriter:
    """Host buffers of the windows in flight; writes a window once all its rows are done."""

    def __init__(self, wd: store.Workdir, manifest: dict[str, Any], windows) -> None:
        self.windows = windows  # the work plan's windows, each a list of chunks
        self.poolings = manifest["poolings"]
        self.feature_dtype = manifest["feature_dtype"]
        self.row_shape = (manifest["num_layers"], manifest["hidden_size"])
        self.topk = manifest["first_token_topk"]
        self.storage_dtype = to_storage(torch.zeros(1), self.feature_dtype).dtype
        self.arrays = {p: wd.open_array(layout.features(p)) for p in self.poolings}
        self.written = wd.open_array(layout.WRITTEN)
        self.rejected = wd.open_array(layout.REJECTED)
        self.topk_arrays = None
        if self.topk:
            self.topk_arrays = (
                wd.open_array(layout.FIRST_TOKEN_IDS),
                wd.open_array(layout.FIRST_TOKEN_PROBS),
            )
        # Absent in stores created before token counts were recorded (resumes).
        self.token_counts = (
            wd.open_array(layout.TOKEN_COUNTS) if wd.array_exists(layout.TOKEN_COUNTS) else None
        )
        # Absent for tasks without a yes/no question, and in older stores.
        self.answers = (
            wd.open_array(layout.ANSWER_MARGIN) if wd.array_exists(layout.ANSWER_MARGIN) else None
        )
        self.pending: dict[int, dict[str, Any]] = {}

    def add(self, window: int, rows: np.ndarray, result: ForwardResult | None, rejected: int):
        """Stores the results of `rows` (None if all were rejected); flushes a finished window."""
        buf = self._buffer(window)
        if result is not None:
            at = np.searchsorted(buf["rows"], rows)
            for name, values in result.pooled.items():
                buf[name][at] = to_storage(values, self.feature_dtype)
            if self.topk:
                buf["topk_ids"][at] = result.topk_ids.cpu().numpy()
                buf["topk_probs"][at] = result.topk_probs.cpu().numpy()
            if result.token_counts is not None:
                buf["tokens"][at] = result.token_counts.cpu().numpy()
            if result.answer_margins is not None:
                buf["answers"][at] = result.answer_margins.cpu().numpy()
            buf["ok"][at] = True
        buf["left"] -= len(rows) + rejected
        if buf["left"] == 0:
            self._flush(window)

    def _buffer(self, window: int) -> dict[str, Any]:
        """Host buffers of one window, in sorted row order."""
        if window not in self.pending:
            rows = np.sort(np.concatenate(self.windows[window]))
            buf: dict[str, Any] = {"rows": rows, "left": len(rows), "ok": np.zeros(len(rows), bool)}
            buf["tokens"] = np.zeros((len(rows), len(layout.TOKEN_KINDS)), np.int32)
            buf["answers"] = np.zeros(len(rows), np.float32)
            for name in self.poolings:
                buf[name] = np.zeros((len(rows), *self.row_shape), self.storage_dtype)
            if self.topk:
                buf["topk_ids"] = np.zeros((len(rows), self.topk), np.int32)
                buf["topk_probs"] = np.zeros((len(rows), self.topk), np.float32)
            self.pending[window] = buf
        return self.pending[window]

    def _flush(self, window: int) -> None:
        """Writes a finished window's chunks, then marks its rows durable."""
        buffer = self.pending.pop(window)
        for chunk in self.windows[window]:
            start, stop = int(chunk[0]), int(chunk[-1]) + 1
            at = np.searchsorted(buffer["rows"], chunk)
            ok = buffer["ok"][at]
            for name, array in self.arrays.items():
                array[start:stop].write(buffer[name][at]).result()
            if self.topk_arrays is not None:
                self.topk_arrays[0][start:stop].write(buffer["topk_ids"][at]).result()
                self.topk_arrays[1][start:stop].write(buffer["topk_probs"][at]).result()
            if self.token_counts is not None:
                self.token_counts[start:stop].write(buffer["tokens"][at]).result()
            if self.answers is not None:
                self.answers[start:stop].write(buffer["answers"][at]).result()
            self.rejected[start:stop].write((~ok).astype(np.uint8)).result()
            # Only after every pooling is durable is a row marked written.
            self.written[start:stop].write(ok.astype(np.uint8)).result()


# ----------------------------------------------------------------------------
# Finishing.


def append_rejections(wd: store.Workdir, rank: int, entries: list[dict[str, Any]]) -> None:
    """Records rejected rows in rejected_rows.jsonl (one file per rank, merged by row)."""
    if not entries:
        return
    name = layout.REJECTED_ROWS_JSONL
    if rank != 0:
        name = name.removesuffix(".jsonl") + f".rank{rank}.jsonl"
    previous = wd.read_jsonl(name) if wd.exists(name) else []
    merged = {e["row"]: e for e in (*previous, *entries)}
    wd.write_jsonl(name, [merged[r] for r in sorted(merged)])


def finalize(wd: store.Workdir, manifest: dict[str, Any], tokenizer) -> None:
    """Marks the store complete once every row is written or rejected.

    Then the per-row records kept in arrays (first tokens, token counts) are
    copied into examples.jsonl, and the mean token composition into the manifest.
    """
    written = wd.read_array(layout.WRITTEN).astype(bool)
    rejected = wd.read_array(layout.REJECTED).astype(bool)
    manifest["num_rejected_rows"] = int(rejected.sum())
    manifest["complete"] = bool((written | rejected).all())
    if not manifest["complete"]:
        return
    has_topk = wd.array_exists(layout.FIRST_TOKEN_IDS)
    has_counts = wd.array_exists(layout.TOKEN_COUNTS)
    if has_topk or has_counts:
        examples = wd.read_jsonl(layout.EXAMPLES_JSONL)
        if has_topk:
            _add_first_tokens(wd, examples, written, tokenizer)
        if has_counts:
            counts = wd.read_array(layout.TOKEN_COUNTS)
            for row, example in enumerate(examples):
                if written[row]:
                    example["tokens"] = dict(
                        zip(layout.TOKEN_KINDS, map(int, counts[row]), strict=True)
                    )
            manifest["token_composition"] = token_composition_summary(counts[written])
        wd.write_jsonl(layout.EXAMPLES_JSONL, examples)
    wd.write_json(layout.MANIFEST_JSON, manifest)


def _add_first_tokens(wd: store.Workdir, examples, written: np.ndarray, tokenizer) -> None:
    ids = wd.read_array(layout.FIRST_TOKEN_IDS)
    probs = wd.read_array(layout.FIRST_TOKEN_PROBS)
    for row, example in enumerate(examples):
        if written[row]:
            example["first_token_topk"] = [
                [tokenizer.decode([int(t)]), round(float(p), 6)]
                for t, p in zip(ids[row], probs[row], strict=True)
            ]
            example["first_token_topk_ids"] = [int(t) for t in ids[row]]


def token_composition_summary(counts: np.ndarray) -> dict[str, Any]:
    """Mean tokens of each kind per row, and each kind's share of a row's mean pooling."""
    if not len(counts):
        return {}
    counts = counts.astype(np.float64)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    return {
        "mean_tokens": dict(
            zip(layout.TOKEN_KINDS, np.round(counts.mean(0), 2).tolist(), strict=True)
        ),
        "mean_share": dict(
            zip(layout.TOKEN_KINDS, np.round(shares.mean(0), 4).tolist(), strict=True)
        ),
    }
