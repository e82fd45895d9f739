"""Digests of a run's inputs (annotation files, task rows, checkpoint, images) for its fingerprint.

A resumed extraction must compute the same rows from the same model as the
run that started the workdir; the config alone cannot tell (the captions file
or the weights at the same path may have been replaced). Each function here
returns a small JSON-able dict, so a fingerprint diff names what changed
(``inputs.checkpoint.files.tokenizer.json``).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

# Weight files are large: they are digested by their safetensors header (names,
# dtypes, shapes, offsets) plus evenly spread sampled blocks and the size. A
# retrained or replaced checkpoint differs in nearly every block; a deliberate
# one-byte edit between samples would not be seen (`full=True` hashes it all).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")
# Small files that change what the processor and tokenizer produce.
TEXT_SUFFIXES = (".json", ".txt", ".model", ".jinja", ".tiktoken", ".vocab", ".spm", ".py")
SAMPLED_BLOCKS = 16
BLOCK_BYTES = 1 << 20
_MAX_HEADER_BYTES = 100 << 20
# Fields of a task row that decide its features and its labels.
ROW_FIELDS = (
    "image_id",
    "prompt",
    "split",
    "label",
    "positives",
    "candidates",
    "target",
    "caption_image_id",
)


class InputError(ValueError):
    """An input file that cannot be digested (missing, truncated, not what it claims)."""


def file_sha256(path: str, chunk: int = 1 << 22) -> str:
    """The sha256 of a whole file, read in chunks."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                digest.update(block)
    except FileNotFoundError as e:
        raise InputError(f"input file {path} does not exist") from e
    except IsADirectoryError as e:
        raise InputError(f"input file {path} is a directory, expected a file") from e
    return digest.hexdigest()


def _unique_names(paths: Sequence[str]) -> list[str]:
    """Base names, with parent folders added only where two would collide."""
    names = [os.path.basename(p) for p in paths]
    if len(set(names)) == len(names):
        return names
    return [os.path.normpath(p).lstrip(os.sep) for p in paths]


def digest_files(paths: Iterable[str | os.PathLike[str]]) -> dict[str, str]:
    """{file name: sha256} of annotation (or any) files; keyed by name, not by path,
    so the same files at another mount point match."""
    paths = [os.fspath(p) for p in paths]
    return dict(zip(_unique_names(paths), (file_sha256(p) for p in paths), strict=True))


def _canonical(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def digest_rows(
    examples: Sequence[Mapping[str, Any]],
    fields: Sequence[str] = ROW_FIELDS,
    arrays: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Digest of the task rows in order: the given fields of every row and arrays.

    Args:
      examples: the rows (examples.jsonl objects).
      fields: the row fields that count; absent ones are skipped.
      arrays: row-aligned arrays (labels, label_mask, split, group) digested
        by dtype, shape and bytes.
    """
    digest = hashlib.sha256()
    for example in examples:
        row = {k: _canonical(example[k]) for k in fields if k in example}
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\n")
    out: dict[str, Any] = {"num_rows": len(examples), "rows_sha256": digest.hexdigest()}
    for name, values in sorted((arrays or {}).items()):
        values = np.ascontiguousarray(values)
        array_digest = hashlib.sha256(f"{values.dtype.str}{values.shape}".encode())
        array_digest.update(values.tobytes())
        out[f"{name}_sha256"] = array_digest.hexdigest()
    return out


def first_row_difference(
    old: Sequence[Mapping[str, Any]],
    new: Sequence[Mapping[str, Any]],
    fields: Sequence[str] = ROW_FIELDS,
) -> str | None:
    """Where two row lists first differ, in words (for a resume refusal), or None."""
    for row, (a, b) in enumerate(zip(old, new, strict=False)):
        for field in fields:
            if _canonical(a.get(field)) != _canonical(b.get(field)):
                return f"row {row}: {field} was {a.get(field)!r}, now {b.get(field)!r}"
    if len(old) != len(new):
        return f"the task had {len(old)} rows, now {len(new)}"
    return None


def safetensors_header_sha256(path: str) -> str:
    """sha256 of a safetensors file's header (8-byte length + JSON): names, dtypes, shapes."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise InputError(f"weights file {path} is truncated ({size} bytes); re-save it")
        (length,) = struct.unpack("<Q", raw)
        if length > min(size - 8, _MAX_HEADER_BYTES):
            raise InputError(
                f"weights file {path} is truncated or not a safetensors file (header says "
                f"{length} bytes, the file has {size}); re-download or re-save the checkpoint"
            )
        header = f.read(length)
    try:
        meta = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"weights file {path}: unreadable safetensors header ({e})") from e
    end = max(
        (int(v["data_offsets"][1]) for k, v in meta.items() if k != "__metadata__"), default=0
    )
    if 8 + length + end > size:
        raise InputError(
            f"weights file {path} is truncated: its tensors need {8 + length + end} bytes, the "
            f"file has {size}; re-download or re-save the checkpoint"
        )
    return hashlib.sha256(header).hexdigest()


def sampled_sha256(path: str, blocks: int = SAMPLED_BLOCKS, block_bytes: int = BLOCK_BYTES) -> str:
    """sha256 of a file's size and `blocks` evenly spread blocks (the whole file if small)."""
    size = os.path.getsize(path)
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= blocks * block_bytes:
            while block := f.read(1 << 22):
                digest.update(block)
            return digest.hexdigest()
        for i in range(blocks):
            f.seek(i * (size - block_bytes) // (blocks - 1))
            digest.update(f.read(block_bytes))
    return digest.hexdigest()


def _weight_digest(path: str, full: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"bytes": os.path.getsize(path)}
    if path.endswith(".safetensors"):
        entry["header_sha256"] = safetensors_header_sha256(path)
    entry["sha256" if full else "sampled_sha256"] = (
        file_sha256(path) if full else sampled_sha256(path)
    )
    return entry


def _snapshot_commit(path: str) -> str | None:
    """The commit of a hub cache snapshot directory (…/snapshots/<commit>), if it is one."""
    parent, name = os.path.split(os.path.normpath(os.path.realpath(path)))
    if os.path.basename(parent) == "snapshots" and len(name) == 40:
        return name
    parent, name = os.path.split(os.path.normpath(path))
    if os.path.basename(parent) == "snapshots" and len(name) == 40:
        return name
    return None


def digest_checkpoint(
    path: str, model_id: str | None = None, revision: str | None = None, full: bool = False
) -> dict[str, Any]:
    """Digest of a checkpoint: its weights, config / processor / tokenizer files, revision.

    Args:
      path: a local checkpoint directory, or a hub id that is not (yet) local,
        for which only id and revision can be recorded.
      model_id: the name the config gave (recorded as is).
      revision: the revision the config asked for.
      full: hash the weights completely instead of header + sampled blocks.

    Raises:
      InputError: a local directory without weights, or a truncated weights file.
    """
    out: dict[str, Any] = {"id": model_id or path, "revision": revision}
    if not os.path.isdir(path):
        return out
    weights: dict[str, Any] = {}
    files: dict[str, str] = {}
    for name in sorted(os.listdir(path)):
        full_path = os.path.join(path, name)
        if not os.path.isfile(full_path):
            continue
        if name.endswith(WEIGHT_SUFFIXES):
            weights[name] = _weight_digest(full_path, full)
        elif name.endswith(TEXT_SUFFIXES) and not name.upper().startswith(("README", "LICENSE")):
            files[name] = file_sha256(full_path)
    if not weights:
        raise InputError(
            f"checkpoint {path} has no weights file ({', '.join('*' + s for s in WEIGHT_SUFFIXES)})"
            "; point model.name at a directory written by save_pretrained"
        )
    out.update(weights=weights, files=files)
    commit = _snapshot_commit(path)
    if commit:
        out["snapshot"] = commit
    return out


def digest_image_files(image_paths: Mapping[int, str], image_ids: Iterable[int]) -> dict[str, Any]:
    """Digest of the images a task uses: each file's name and size (one stat per image).

    Cheap enough for COCO (no image is read); catches a replaced, re-encoded
    or missing image, not one edited to the same byte count.
    """
    digest = hashlib.sha256()
    count = 0
    for image_id in sorted({int(i) for i in image_ids}):
        path = image_paths.get(image_id)
        try:
            size = os.path.getsize(path) if path else -1
        except OSError:
            size = -1
        digest.update(f"{image_id}\t{os.path.basename(path or '')}\t{size}\n".encode())
        count += 1
    return {"num_images": count, "listing_sha256": digest.hexdigest()}
