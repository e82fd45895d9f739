"""Stage 1 end to end: task rows → frozen model → pooled features in a workdir.

`extract(config, workdir)` builds the task table, loads the model, writes the
row-aligned arrays and metadata of WORKSPACE.md, then runs the model over the
rows, pooling every layer inside forward hooks (`probing.extraction.capture`)
and writing features chunk by chunk before marking rows durable in
`arrays/written`.

Rows are cut into fixed chunks of `extract.batch_size` rows (the chunk size of
every feature array), and chunks into fixed windows of `extract.bucket_window`
chunks. A rank owns every world-th window; the rows of a window are sorted by
token count and re-cut into forward batches (less padding), and the window's
chunks are written once all its rows are pooled. Windows are fixed, so a
resumed or a distributed run forms exactly the batches an uninterrupted single
run forms, and its features are bit-identical.

Restarting the same command on a partly written workdir resumes: only windows
with unwritten rows are computed again. A workdir written with a different
configuration (model, revision, prompt, poolings, dtype, library versions, ...)
is refused unless `config.overwrite` is set.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import time
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np
import tensorstore as ts
import torch
from absl import logging
from PIL import Image, UnidentifiedImageError

import probing
from probing.extraction import environment
from probing.extraction.forward import PooledForward, check_prefix_sharing_supported
from probing.extraction.pooling import validate_poolings
from probing.progress import Progress
from probing.store import layout
from probing.store import workdir as store

_WAIT_FOR_RANK0_S = 1800.0
FEATURE_DTYPES = ("float32", "float16", "bfloat16")
# Settings that change speed but not which rows are computed nor (beyond the
# batch-invariance tolerance) their values; a resume may change them.
PERFORMANCE_KNOBS = (
    "num_workers",
    "torch_threads",
    "log_every_s",
    "bucket_window",
    "prefix_sharing",
)


class ExtractionError(ValueError):
    """Bad extraction input, reported before long work starts."""


class _RejectedInput(ValueError):
    """One row's image or prompt that the image decoder or the processor rejects."""


def library_versions() -> dict[str, str]:
    """Versions of the libraries that determine the features."""
    versions = {"probing": probing.__version__}
    for name in ("torch", "transformers", "tensorstore", "numpy", "pillow", "timm"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _config_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return json.loads(config.to_json_best_effort(sort_keys=True))


def fingerprint(config: ml_collections.ConfigDict, processor) -> dict[str, Any]:
    """Everything that determines the features; a resumed run must match it.

    The command line, date and hardware are recorded in manifest.json but
    are deliberately not part of it: the same run may resume elsewhere.
    """
    processor_settings = {}
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is not None:
        processor_settings = json.loads(image_processor.to_json_string())
    config_dict = _config_json(config)
    config_dict.pop("overwrite", None)
    for knob in PERFORMANCE_KNOBS:
        config_dict.get("extract", {}).pop(knob, None)
    digest = hashlib.sha256(json.dumps(processor_settings, sort_keys=True).encode()).hexdigest()
    return {
        "config": config_dict,
        "library_versions": library_versions(),
        "processor_settings_sha256": digest,
    }


def _diff_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in _diff_keys(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [prefix.rstrip(".")]


def _load_rgb(path: str, image_id: int) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError as e:
        raise _RejectedInput(f"image {image_id}: file {path} does not exist") from e
    except (UnidentifiedImageError, OSError) as e:
        raise _RejectedInput(f"image {image_id}: cannot decode {path} ({e})") from e


# ----------------------------------------------------------------------------
# The work plan: chunks, windows, forward batches.


def plan_windows(
    num_rows: int, batch_size: int, window: int, rank: int, world: int
) -> list[list[np.ndarray]]:
    """The bucketing windows of rank `rank`, each a list of chunks (row ranges).

    Chunk c holds rows [c * batch_size, (c + 1) * batch_size); window w holds
    chunks [w * window, (w + 1) * window); rank r owns the windows with
    w % world == r. Windows, not chunks, are dealt out, so every rank forms
    exactly the batches a single process forms.
    """
    chunks = [
        np.arange(start, min(start + batch_size, num_rows))
        for start in range(0, num_rows, batch_size)
    ]
    windows = [chunks[i : i + window] for i in range(0, len(chunks), window)]
    return [w for index, w in enumerate(windows) if index % world == rank]


def forward_batches(
    window: Sequence[np.ndarray], batch_size: int, token_counts: np.ndarray | None
) -> list[np.ndarray]:
    """The rows of a window, sorted by token count (if given), cut into batches."""
    rows = np.concatenate(list(window))
    if token_counts is not None:
        rows = rows[np.argsort(token_counts[rows], kind="stable")]
    return [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]


class _BatchSource(torch.utils.data.Dataset):
    """Decodes and preprocesses one forward batch (runs in DataLoader workers).

    Items are (window index, rows, inputs, prefix_inputs, groups, rejected):
    `inputs` the processor output of the accepted rows, `prefix_inputs` the
    output for the first row of every image group (prefix sharing only),
    `groups` each accepted row's group, `rejected` {row, image_id, reason}.
    """

    def __init__(self, batches, examples, image_paths, adapter, with_image, share, skip):
        self.batches = batches  # [(window index, rows)]
        self.examples = examples
        self.image_paths = image_paths
        self.adapter = adapter
        self.with_image = with_image
        self.share = share
        self.skip = skip

    def __len__(self) -> int:
        return len(self.batches)

    def _build(self, rows: Sequence[int], images: dict[int, Image.Image]):
        prompts = [self.examples[r]["prompt"] for r in rows]
        row_images = None
        if self.with_image:
            row_images = [images[int(self.examples[r]["image_id"])] for r in rows]
        return self.adapter.build_batch(row_images, prompts)

    def __getitem__(self, index: int):
        window, rows = self.batches[index]
        rows = [int(r) for r in rows]
        rejected: list[dict[str, Any]] = []
        images: dict[int, Image.Image] = {}
        if self.with_image:
            for r in rows:
                image_id = int(self.examples[r]["image_id"])
                if image_id in images:
                    continue
                try:
                    images[image_id] = _load_rgb(self.image_paths[image_id], image_id)
                except _RejectedInput as e:
                    if not self.skip:
                        raise ExtractionError(
                            f"row {r}: {e}. Fix or remove the file, or set "
                            "config.extract.skip_rejected_images=True to skip such rows"
                        ) from e
            kept = []
            for r in rows:
                image_id = int(self.examples[r]["image_id"])
                if image_id in images:
                    kept.append(r)
                else:
                    rejected.append({"row": r, "image_id": image_id, "reason": "unreadable"})
            rows = kept
        inputs = None
        if rows:
            try:
                inputs = self._build(rows, images)
            except Exception as batch_error:  # the processor's errors have no common type
                # Find the culprits one row at a time, then build the rest together.
                good = []
                for r in rows:
                    try:
                        self._build([r], images)
                        good.append(r)
                    except Exception as row_error:
                        image_id = int(self.examples[r]["image_id"])
                        if not self.skip:
                            raise ExtractionError(
                                f"row {r} (image {image_id}, prompt "
                                f"{self.examples[r]['prompt']!r}): the processor rejects it: "
                                f"{row_error}. Set config.extract.skip_rejected_images=True "
                                "to skip such rows"
                            ) from row_error
                        rejected.append({"row": r, "image_id": image_id, "reason": str(row_error)})
                if len(good) == len(rows):
                    raise batch_error
                rows = good
                inputs = self._build(rows, images) if rows else None
        prefix_inputs, groups = None, None
        if self.share and rows:
            image_of = [int(self.examples[r]["image_id"]) for r in rows]
            order = list(dict.fromkeys(image_of))
            groups = torch.tensor([order.index(i) for i in image_of], dtype=torch.long)
            leaders = [rows[image_of.index(i)] for i in order]
            prefix_inputs = self._build(leaders, images)
        return window, np.asarray(rows, dtype=np.int64), inputs, prefix_inputs, groups, rejected


def _to_storage(values: torch.Tensor, dtype: str) -> np.ndarray:
    array = values.detach().to(torch.float32).cpu().numpy()
    if dtype == "bfloat16":
        import ml_dtypes

        return array.astype(ml_dtypes.bfloat16)
    return array.astype(dtype)


# ----------------------------------------------------------------------------
# The workdir: creation, resume checks, finalisation.


def _write_metadata(wd: store.Workdir, config, table) -> None:
    wd.write_json("config.json", _config_json(config))
    wd.write_jsonl("examples.jsonl", table.examples)
    wd.write_json("splits.json", table.splits)
    wd.write_json("task_stats.json", table.stats)
    if table.skipped:
        wd.write_jsonl("skipped.jsonl", table.skipped)
    wd.write_array(layout.LABELS, table.labels.astype(np.int8))
    if table.label_mask is not None:
        wd.write_array(layout.LABEL_MASK, table.label_mask.astype(np.uint8))
    wd.write_array(layout.SPLIT, table.split.astype(np.int8))
    wd.write_array(layout.GROUP, table.group.astype(np.int64))


def _check_resumable(wd: store.Workdir, manifest: dict[str, Any]) -> None:
    old = wd.read_json("manifest.json")
    differing = _diff_keys(old.get("fingerprint"), manifest["fingerprint"])
    if differing:
        raise ExtractionError(
            f"workdir {wd.location} holds features of a different run; differing: "
            f"{', '.join(differing[:12])}. Use another --workdir, or pass "
            "--config.overwrite=True to replace it."
        )


def _wipe(wd: store.Workdir) -> None:
    """Deletes everything in an existing workdir (overwrite), manifest first."""
    kvstore = ts.KvStore.open(wd.kvstore("")).result()
    # The manifest goes first, so that no rank can take the old store for ready.
    kvstore.delete_range(ts.KvStore.KeyRange("manifest.json", "manifest.json\0")).result()
    kvstore.delete_range(ts.KvStore.KeyRange()).result()


def _create_store(wd: store.Workdir, config, manifest, table, chunk_rows: int) -> None:
    if wd.exists("manifest.json"):
        logging.warning("config.overwrite=True: replacing %s", wd.location)
        _wipe(wd)
    _write_metadata(wd, config, table)
    num_rows = manifest["num_examples"]
    shape = (num_rows, manifest["num_layers"], manifest["hidden_size"])
    for pooling in manifest["poolings"]:
        wd.create_array(
            f"features/{pooling}", manifest["feature_dtype"], shape, (chunk_rows, *shape[1:])
        )
    wd.create_array(layout.WRITTEN, "uint8", (num_rows,), (chunk_rows,))
    wd.create_array(layout.REJECTED, "uint8", (num_rows,), (chunk_rows,))
    k = int(config.extract.first_token_topk)
    if k > 0:
        wd.create_array(layout.FIRST_TOKEN_IDS, "int32", (num_rows, k), (chunk_rows, k))
        wd.create_array(layout.FIRST_TOKEN_PROBS, "float32", (num_rows, k), (chunk_rows, k))
    # Written last: its presence means every array exists.
    wd.write_json("manifest.json", manifest)


def _prepare_workdir(
    wd: store.Workdir,
    config,
    manifest: dict[str, Any],
    table,
    chunk_rows: int,
    rank: int,
    grouped: bool,
) -> None:
    """Creates a fresh store (rank 0), or checks an existing one for a resume.

    With a process group the other ranks wait at a barrier; without one (SLURM
    arrays) they wait for rank 0's manifest.json, which is written last.
    """
    fresh = not wd.exists("manifest.json") or bool(config.overwrite)
    if rank == 0:
        if fresh:
            _create_store(wd, config, manifest, table, chunk_rows)
        else:
            _check_resumable(wd, manifest)
            logging.info("Resuming extraction in %s", wd.location)
    if grouped:
        environment.barrier()
    elif rank != 0:
        deadline = time.monotonic() + _WAIT_FOR_RANK0_S
        while not wd.exists("manifest.json"):
            if time.monotonic() > deadline:
                raise ExtractionError(f"rank {rank}: rank 0 never created {wd.location}")
            time.sleep(1.0)
    if rank != 0:
        _check_resumable(wd, manifest)


def _finalize(wd: store.Workdir, manifest: dict[str, Any], tokenizer, rank: int) -> None:
    """Marks the store complete once every row is written or rejected."""
    written = wd.read_array(layout.WRITTEN).astype(bool)
    rejected = wd.read_array(layout.REJECTED).astype(bool)
    manifest["num_rejected_rows"] = int(rejected.sum())
    manifest["complete"] = bool((written | rejected).all())
    if not manifest["complete"]:
        return
    if wd.array_exists(layout.FIRST_TOKEN_IDS):
        ids = wd.read_array(layout.FIRST_TOKEN_IDS)
        probs = wd.read_array(layout.FIRST_TOKEN_PROBS)
        examples = wd.read_jsonl("examples.jsonl")
        for row, example in enumerate(examples):
            if written[row]:
                example["first_token_topk"] = [
                    [tokenizer.decode([int(t)]), round(float(p), 6)]
                    for t, p in zip(ids[row], probs[row], strict=True)
                ]
                example["first_token_topk_ids"] = [int(t) for t in ids[row]]
        wd.write_jsonl("examples.jsonl", examples)
    wd.write_json("manifest.json", manifest)


def _append_rejections(wd: store.Workdir, rank: int, entries: list[dict[str, Any]]) -> None:
    """Records rejected rows in rejected_rows.jsonl (one file per rank, merged by row)."""
    if not entries:
        return
    name = "rejected_rows.jsonl" if rank == 0 else f"rejected_rows.rank{rank}.jsonl"
    previous = wd.read_jsonl(name) if wd.exists(name) else []
    merged = {e["row"]: e for e in (*previous, *entries)}
    wd.write_jsonl(name, [merged[r] for r in sorted(merged)])


# ----------------------------------------------------------------------------
# Checks before work.


def check_extract_settings(extract_cfg: ml_collections.ConfigDict) -> None:
    """Validates config.extract fields that need no model."""
    if extract_cfg.feature_dtype not in FEATURE_DTYPES:
        raise ExtractionError(
            f"config.extract.feature_dtype={extract_cfg.feature_dtype!r}; "
            f"use one of {', '.join(FEATURE_DTYPES)}"
        )
    for field in ("batch_size", "bucket_window"):
        if int(extract_cfg[field]) < 1:
            raise ExtractionError(f"config.extract.{field} must be >= 1, got {extract_cfg[field]}")
    if int(extract_cfg.first_token_topk) < 0:
        raise ExtractionError(
            f"config.extract.first_token_topk must be >= 0, got {extract_cfg.first_token_topk}"
        )


def prompt_token_counts(
    adapter, examples: Sequence[dict[str, Any]], with_image: bool
) -> np.ndarray:
    """Text tokens of every row's chat-rendered prompt (image placeholders unexpanded)."""
    texts = adapter.render_prompts([e["prompt"] for e in examples], with_image=with_image)
    encoded = adapter.tokenizer(texts, add_special_tokens=False)["input_ids"]
    return np.asarray([len(ids) for ids in encoded], dtype=np.int64)


def context_length(model: torch.nn.Module) -> int | None:
    """The decoder's maximum sequence length, if its config states one."""
    value = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    return int(value) if value else None


def check_context(adapter, table, token_counts: np.ndarray, limit: int | None) -> None:
    """Fails before any work if the longest prompt (with its image) exceeds the context."""
    if limit is None or not len(token_counts):
        return
    row = int(np.argmax(token_counts))
    example = table.examples[row]
    images = None
    if table.with_image:
        image_id = int(example["image_id"])
        try:
            images = [_load_rgb(table.image_paths[image_id], image_id)]
        except _RejectedInput:
            images = None  # reported (or skipped) when its batch runs
        if images is None:
            length = int(token_counts[row])
        else:
            length = int(adapter.build_batch(images, [example["prompt"]])["input_ids"].shape[1])
    else:
        length = int(adapter.build_batch(None, [example["prompt"]])["input_ids"].shape[1])
    if length > limit:
        raise ExtractionError(
            f"row {row} (image {example['image_id']}): its prompt is {length} tokens with the "
            f"image, longer than the model's context of {limit} (max_position_embeddings). "
            "Shorten the prompt template or lower the image resolution in the processor."
        )


def _check_batch_length(inputs, rows, limit: int | None) -> None:
    if limit is not None and inputs["input_ids"].shape[1] > limit:
        raise ExtractionError(
            f"rows {rows[0]}..{rows[-1]}: {inputs['input_ids'].shape[1]} tokens exceed the "
            f"model's context of {limit}; lower the image resolution or shorten the prompt"
        )


# ----------------------------------------------------------------------------
# The run.


def extract(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs stage 1 for one model × task × prompt; returns the manifest."""
    # Imported here so that `--help` and config errors do not pay for them.
    from probing.models import load_model, resolve_model_path
    from probing.tasks import build_task

    extract_cfg = config.extract
    check_extract_settings(extract_cfg)
    # A local checkpoint path that does not exist fails here, before the task
    # is built (hard negatives can take minutes on real COCO).
    resolve_model_path(config.model.name)
    threads = torch.get_num_threads()
    if extract_cfg.torch_threads > 0:
        torch.set_num_threads(int(extract_cfg.torch_threads))
    rank, world = environment.rank_and_world()
    grouped = environment.init_process_group()
    try:
        return _extract(config, workdir, rank, world, grouped, load_model, build_task)
    finally:
        torch.set_num_threads(threads)
        if grouped:
            environment.close_process_group()


def _extract(config, workdir, rank, world, grouped, load_model, build_task) -> dict[str, Any]:
    extract_cfg = config.extract
    started = environment.utc_now()
    table = build_task(config.data, config.task, config.seed)
    poolings = validate_poolings(tuple(extract_cfg.poolings), with_image=table.with_image)
    model, processor, adapter = load_model(config.model)
    share = bool(extract_cfg.prefix_sharing)
    if share:
        check_prefix_sharing_supported(adapter)
    token_counts = prompt_token_counts(adapter, table.examples, table.with_image)
    limit = context_length(model)
    check_context(adapter, table, token_counts, limit)

    wd = store.Workdir(workdir)
    num_rows = len(table.examples)
    batch_size = int(extract_cfg.batch_size)
    topk = int(extract_cfg.first_token_topk)
    manifest = layout.new_manifest(
        model={
            "id": config.model.name,
            "revision": config.model.revision,
            "family": adapter.family,
            "random_init": bool(config.model.random_init),
        },
        library_versions=library_versions(),
        dtype=config.model.dtype,
        feature_dtype=extract_cfg.feature_dtype,
        num_examples=num_rows,
        num_layers=adapter.num_decoder_layers + 1,
        hidden_size=adapter.hidden_size,
        poolings=list(poolings),
        label_kind=table.label_kind,
        label_names=list(table.label_names),
        task=table.task,
        prompt_template=table.prompt_template,
        with_image=bool(table.with_image),
        padding_side=adapter.padding_side,
        first_token_topk=topk,
        fingerprint=fingerprint(config, processor),
        # Where and when; not part of the fingerprint (a resume may run elsewhere).
        command=environment.command_line(),
        hardware=environment.hardware(),
        date=started,
    )
    _prepare_workdir(wd, config, manifest, table, batch_size, rank, grouped)
    arrays = {p: wd.open_array(f"features/{p}") for p in poolings}
    written = wd.open_array(layout.WRITTEN)
    rejected_array = wd.open_array(layout.REJECTED)
    topk_arrays = (
        (wd.open_array(layout.FIRST_TOKEN_IDS), wd.open_array(layout.FIRST_TOKEN_PROBS))
        if topk
        else None
    )

    done = np.asarray(written.read().result()).astype(bool)
    done |= np.asarray(rejected_array.read().result()).astype(bool)
    windows = [
        w
        for w in plan_windows(num_rows, batch_size, int(extract_cfg.bucket_window), rank, world)
        if not all(done[c].all() for c in w)
    ]
    # Rows of one image must stay together for prefix sharing (they are
    # consecutive in the task table); otherwise sort by length to cut padding.
    sort_key = None if share else token_counts
    batches = [
        (i, rows)
        for i, w in enumerate(windows)
        for rows in forward_batches(w, batch_size, sort_key)
    ]
    todo_rows = int(sum(len(rows) for _, rows in batches))
    logging.info(
        "Extracting %d of %d rows (%d already written) in %d batches (%d windows), "
        "%d layers x %d dims, poolings %s -> %s (rank %d/%d)",
        todo_rows,
        num_rows,
        int(done.sum()),
        len(batches),
        len(windows),
        manifest["num_layers"],
        manifest["hidden_size"],
        ",".join(poolings),
        wd.location,
        rank,
        world,
    )
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(
        _BatchSource(
            batches,
            table.examples,
            table.image_paths,
            adapter,
            table.with_image,
            share,
            bool(extract_cfg.skip_rejected_images),
        ),
        batch_size=None,
        num_workers=int(extract_cfg.num_workers),
        collate_fn=lambda item: item,
        # Page-locked host buffers make the host→GPU copies asynchronous.
        pin_memory=device.type == "cuda",
    )
    progress = Progress("extract", todo_rows, unit="ex", every_s=float(extract_cfg.log_every_s))
    pending: dict[int, dict[str, Any]] = {}
    rejections: list[dict[str, Any]] = []

    def flush(window: int) -> None:
        """Writes a finished window's chunks, then marks its rows durable."""
        buffer = pending.pop(window)
        for chunk in windows[window]:
            start, stop = int(chunk[0]), int(chunk[-1]) + 1
            at = np.searchsorted(buffer["rows"], chunk)
            ok = buffer["ok"][at]
            for name, array in arrays.items():
                array[start:stop].write(buffer[name][at]).result()
            if topk_arrays is not None:
                topk_arrays[0][start:stop].write(buffer["topk_ids"][at]).result()
                topk_arrays[1][start:stop].write(buffer["topk_probs"][at]).result()
            rejected_array[start:stop].write((~ok).astype(np.uint8)).result()
            # Only after every pooling is durable is a row marked written.
            written[start:stop].write(ok.astype(np.uint8)).result()

    storage_dtype = _to_storage(torch.zeros(1), extract_cfg.feature_dtype).dtype

    def buffer_for(window: int) -> dict[str, Any]:
        """Host buffers of one window, in sorted row order."""
        if window not in pending:
            rows = np.sort(np.concatenate(windows[window]))
            shape = (len(rows), manifest["num_layers"], manifest["hidden_size"])
            buf: dict[str, Any] = {"rows": rows, "left": len(rows), "ok": np.zeros(len(rows), bool)}
            for name in poolings:
                buf[name] = np.zeros(shape, storage_dtype)
            if topk:
                buf["topk_ids"] = np.zeros((len(rows), topk), np.int32)
                buf["topk_probs"] = np.zeros((len(rows), topk), np.float32)
            pending[window] = buf
        return pending[window]

    with PooledForward(model, adapter, poolings, table.with_image, topk) as runner:
        for window, rows, inputs, prefix_inputs, groups, rejected in loader:
            buf = buffer_for(window)
            at = np.searchsorted(buf["rows"], rows)
            rejections.extend(rejected)
            tokens = 0
            if len(rows):
                _check_batch_length(inputs, rows, limit)
                inputs = adapter.to_model(inputs)
                if share:
                    result = runner.run_shared(
                        inputs, adapter.to_model(prefix_inputs), groups.to(device)
                    )
                else:
                    result = runner.run(inputs)
                for name, values in result.pooled.items():
                    buf[name][at] = _to_storage(values, extract_cfg.feature_dtype)
                if topk:
                    buf["topk_ids"][at] = result.topk_ids.cpu().numpy()
                    buf["topk_probs"][at] = result.topk_probs.cpu().numpy()
                buf["ok"][at] = True
                tokens = result.tokens
            count = len(rows) + len(rejected)
            buf["left"] -= count
            if buf["left"] == 0:
                flush(window)
            progress.update(count, tokens=tokens)

    if rejections:
        logging.warning(
            "Rank %d: skipped %d rejected row(s) (config.extract.skip_rejected_images), e.g. "
            "row %d: %s",
            rank,
            len(rejections),
            rejections[0]["row"],
            rejections[0]["reason"],
        )
        _append_rejections(wd, rank, rejections)
    if grouped:
        environment.barrier()
    # With a process group rank 0 finalises after everyone; without one
    # (SLURM arrays), whichever rank finds every row done does.
    if rank == 0 or not grouped:
        _finalize(wd, manifest, adapter.tokenizer, rank)
    logging.info(
        "Extraction %s: %s", "complete" if manifest["complete"] else "partial", wd.location
    )
    return manifest
