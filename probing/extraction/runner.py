"""Stage 1 end to end: task rows → frozen model → pooled features in a workdir.

`extract(config, workdir)` builds the task table, loads the model, writes the
row-aligned arrays and metadata of WORKSPACE.md, then runs the model over the
rows in batches, pooling every layer inside forward hooks
(`probing.extraction.capture`) and writing each batch's features before
marking its rows durable in `arrays/written`.

Restarting the same command on a partly written workdir resumes: only rows
whose `written` flag is 0 are computed again. A workdir written with a
different configuration (model, revision, prompt, poolings, dtype, library
versions, ...) is refused unless `config.overwrite` is set.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np
import torch
from absl import logging
from PIL import Image, UnidentifiedImageError

import probing
from probing.extraction.capture import PooledLayerCapture
from probing.extraction.pooling import validate_poolings
from probing.progress import Progress
from probing.store import workdir as store

_WAIT_FOR_RANK0_S = 1800.0
FEATURE_DTYPES = ("float32", "float16", "bfloat16")
LAYER_CONVENTION = (
    "index 0 is the input of the first decoder layer (embeddings with image features "
    "inserted); index i >= 1 is the output of decoder layer i; the last index is taken "
    "after the final norm, as transformers' hidden_states"
)


class ExtractionError(ValueError):
    """Bad extraction input, reported before long work starts."""


def library_versions() -> dict[str, str]:
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
    """Everything that determines the features; a resumed run must match it."""
    processor_settings = {}
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is not None:
        processor_settings = json.loads(image_processor.to_json_string())
    config_dict = _config_json(config)
    config_dict.pop("overwrite", None)
    # Performance knobs do not change the numbers; everything else does.
    for knob in ("num_workers", "log_every_s"):
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
        raise ExtractionError(f"image {image_id}: file {path} does not exist") from e
    except (UnidentifiedImageError, OSError) as e:
        raise ExtractionError(f"image {image_id}: cannot decode {path} ({e})") from e


class _BatchSource(torch.utils.data.Dataset):
    """Decodes the images of one batch of rows (runs in DataLoader workers)."""

    def __init__(self, batches: Sequence[np.ndarray], examples, image_paths, with_image: bool):
        self.batches = batches
        self.examples = examples
        self.image_paths = image_paths
        self.with_image = with_image

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int):
        rows = self.batches[index]
        prompts = [self.examples[r]["prompt"] for r in rows]
        images = None
        if self.with_image:
            cache: dict[int, Image.Image] = {}
            images = []
            for r in rows:
                image_id = int(self.examples[r]["image_id"])
                if image_id not in cache:
                    cache[image_id] = _load_rgb(self.image_paths[image_id], image_id)
                images.append(cache[image_id])
        return rows, images, prompts


def _to_storage(values: torch.Tensor, dtype: str) -> np.ndarray:
    array = values.detach().to(torch.float32).cpu().numpy()
    if dtype == "bfloat16":
        import ml_dtypes

        return array.astype(ml_dtypes.bfloat16)
    return array.astype(dtype)


def _rank_and_world() -> tuple[int, int]:
    """Rank and world size under torchrun (1 process otherwise)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _write_metadata(wd: store.Workdir, config, table) -> None:
    wd.write_json("config.json", _config_json(config))
    wd.write_jsonl("examples.jsonl", table.examples)
    wd.write_json("splits.json", table.splits)
    wd.write_json("task_stats.json", table.stats)
    wd.write_array(store.LABELS, table.labels.astype(np.int8))
    if table.label_mask is not None:
        wd.write_array(store.LABEL_MASK, table.label_mask.astype(np.uint8))
    wd.write_array(store.SPLIT, table.split.astype(np.int8))
    wd.write_array(store.GROUP, table.group.astype(np.int64))


def _check_resumable(wd: store.Workdir, manifest: dict[str, Any]) -> None:
    old = wd.read_json("manifest.json")
    differing = _diff_keys(old.get("fingerprint"), manifest["fingerprint"])
    if differing:
        raise ExtractionError(
            f"workdir {wd.location} holds features of a different run; differing: "
            f"{', '.join(differing[:12])}. Use another --workdir, or pass "
            "--config.overwrite=True to replace it."
        )


def _prepare_workdir(
    wd: store.Workdir, config, manifest: dict[str, Any], table, chunk_rows: int, rank: int
):
    """Creates a fresh store (rank 0), or checks an existing one for a resume.

    Other ranks wait for rank 0's manifest.json, which is written last, once
    every array exists.
    """
    if rank != 0:
        deadline = time.monotonic() + _WAIT_FOR_RANK0_S
        while not wd.exists("manifest.json"):
            if time.monotonic() > deadline:
                raise ExtractionError(f"rank {rank}: rank 0 never created {wd.location}")
            time.sleep(1.0)
        _check_resumable(wd, manifest)
        return wd.open_array(store.WRITTEN)
    if wd.exists("manifest.json") and not config.overwrite:
        _check_resumable(wd, manifest)
        logging.info("Resuming extraction in %s", wd.location)
        return wd.open_array(store.WRITTEN)
    _write_metadata(wd, config, table)
    num_rows = manifest["num_examples"]
    shape = (num_rows, manifest["num_layers"], manifest["hidden_size"])
    for pooling in manifest["poolings"]:
        wd.create_array(
            f"features/{pooling}", manifest["feature_dtype"], shape, (chunk_rows, *shape[1:])
        )
    written = wd.create_array(store.WRITTEN, "uint8", (num_rows,), (chunk_rows,))
    wd.write_json("manifest.json", manifest)
    return written


def extract(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs stage 1 for one model × task × prompt; returns the manifest."""
    # Imported here so that `--help` and config errors do not pay for them.
    from probing.models import load_model
    from probing.tasks import build_task

    extract_cfg = config.extract
    if extract_cfg.feature_dtype not in FEATURE_DTYPES:
        raise ExtractionError(
            f"config.extract.feature_dtype={extract_cfg.feature_dtype!r}; "
            f"use one of {', '.join(FEATURE_DTYPES)}"
        )
    if extract_cfg.batch_size < 1:
        raise ExtractionError(
            f"config.extract.batch_size must be >= 1, got {extract_cfg.batch_size}"
        )
    table = build_task(config.data, config.task, config.seed)
    poolings = validate_poolings(tuple(extract_cfg.poolings), with_image=table.with_image)
    model, processor, adapter = load_model(config.model)

    wd = store.Workdir(workdir)
    num_rows = len(table.examples)
    batch_size = int(extract_cfg.batch_size)
    manifest = {
        "format_version": store.FORMAT_VERSION,
        "model": {
            "id": config.model.name,
            "revision": config.model.revision,
            "family": adapter.family,
            "random_init": bool(config.model.random_init),
        },
        "library_versions": library_versions(),
        "dtype": config.model.dtype,
        "feature_dtype": extract_cfg.feature_dtype,
        "num_examples": num_rows,
        "num_layers": adapter.num_decoder_layers + 1,
        "hidden_size": adapter.hidden_size,
        "poolings": list(poolings),
        "label_kind": table.label_kind,
        "label_names": list(table.label_names),
        "task": table.task,
        "prompt_template": table.prompt_template,
        "with_image": bool(table.with_image),
        "layer_convention": LAYER_CONVENTION,
        "padding_side": adapter.padding_side,
        "complete": False,
        "fingerprint": fingerprint(config, processor),
    }
    rank, world = _rank_and_world()
    written = _prepare_workdir(wd, config, manifest, table, batch_size, rank)
    arrays = {p: wd.open_array(f"features/{p}") for p in poolings}

    # Fixed, chunk-aligned row ranges: ranks (torchrun) take every world-th
    # batch, and a resumed run skips batches that are already durable.
    done = np.asarray(written.read().result()).astype(bool)
    batches = [
        np.arange(start, min(start + batch_size, num_rows))
        for index, start in enumerate(range(0, num_rows, batch_size))
        if index % world == rank and not done[start : start + batch_size].all()
    ]
    todo_rows = int(sum(len(b) for b in batches))
    logging.info(
        "Extracting %d of %d rows (%d already written) in %d batches, %d layers x %d dims, "
        "poolings %s -> %s",
        todo_rows,
        num_rows,
        int(done.sum()),
        len(batches),
        manifest["num_layers"],
        manifest["hidden_size"],
        ",".join(poolings),
        wd.location,
    )
    loader = torch.utils.data.DataLoader(
        _BatchSource(batches, table.examples, table.image_paths, table.with_image),
        batch_size=None,
        num_workers=int(extract_cfg.num_workers),
        collate_fn=lambda item: item,
    )
    progress = Progress("extract", todo_rows, unit="ex", every_s=float(extract_cfg.log_every_s))
    decoder_layers = adapter.decoder_layers(model)
    with PooledLayerCapture(decoder_layers, adapter.final_norm(model), poolings) as capture:
        for rows, images, prompts in loader:
            batch = adapter.to_model(adapter.build_batch(images, prompts))
            attention_mask = adapter.attention_mask(batch)
            image_mask = adapter.image_token_mask(batch) if table.with_image else None
            capture.set_masks(attention_mask, image_mask)
            with torch.inference_mode():
                # Only the last position's logits are ever needed (first-token
                # records); the LM head over every position is skipped.
                model(**batch, use_cache=False, logits_to_keep=1)
            pooled = capture.result()
            start, stop = int(rows[0]), int(rows[-1]) + 1
            for name, values in pooled.items():
                arrays[name][start:stop].write(
                    _to_storage(values, extract_cfg.feature_dtype)
                ).result()
            # Only after every pooling is durable is the row marked written.
            written[start:stop].write(np.ones(stop - start, np.uint8)).result()
            progress.update(len(rows), tokens=int(attention_mask.sum()))

    # Whichever rank finds every row durable marks the store complete.
    manifest["complete"] = bool(np.asarray(written.read().result()).all())
    if manifest["complete"]:
        wd.write_json("manifest.json", manifest)
    logging.info(
        "Extraction %s: %s", "complete" if manifest["complete"] else "partial", wd.location
    )
    return manifest
