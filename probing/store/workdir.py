"""Reading and writing a workdir (see WORKSPACE.md) through TensorStore.

A workdir is named by a location string: a local path, or a URL TensorStore
understands (``gs://bucket/prefix``, ``s3://bucket/prefix``). Arrays are zarr3
stores under it and small metadata files are JSON; both go through
TensorStore's kvstore layer, so a workdir on a bucket works like a local one.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import tensorstore as ts

from probing.store.layout import (
    LABEL_KINDS,
    MANIFEST_JSON,
    MANIFEST_REQUIRED,
    ZARR_GROUP_METADATA,
    ZARR_JSON,
    dimension_names,
)


class WorkdirError(ValueError):
    """A workdir is missing, incomplete or does not follow WORKSPACE.md."""


def _kvstore_spec(location: str) -> dict[str, Any]:
    """Returns the TensorStore kvstore spec of a directory-like location."""
    for scheme, driver in (("gs://", "gcs"), ("s3://", "s3")):
        if location.startswith(scheme):
            bucket, _, prefix = location[len(scheme) :].partition("/")
            path = prefix.rstrip("/") + "/" if prefix else ""
            spec = {"driver": driver, "bucket": bucket, "path": path}
            if driver == "s3":
                # S3-compatible stores (MinIO, R2, ...) are named by the variables
                # the AWS tools read.
                if os.environ.get("AWS_ENDPOINT_URL"):
                    spec["endpoint"] = os.environ["AWS_ENDPOINT_URL"]
                region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                if region:
                    spec["aws_region"] = region
            return spec
    if "://" in location and not location.startswith("file://"):
        raise WorkdirError(
            f"workdir {location!r}: unsupported URL scheme; use a local path, "
            "file://, gs:// or s3://"
        )
    path = location.removeprefix("file://")
    return {"driver": "file", "path": os.path.abspath(path).rstrip("/") + "/"}


def sharded_codecs(inner_chunk_shape: Sequence[int]) -> list[dict[str, Any]]:
    """zarr v3 codecs that store each chunk as a shard of `inner_chunk_shape` inner chunks.

    Uncompressed little-endian bytes, as the plain layout, with the shard
    index (a checksummed offset table) at the end of the file; TensorStore,
    zarr-python >= 3 and xarray read it.
    """
    little_endian = {"name": "bytes", "configuration": {"endian": "little"}}
    return [
        {
            "name": "sharding_indexed",
            "configuration": {
                "chunk_shape": [int(n) for n in inner_chunk_shape],
                "codecs": [little_endian],
                "index_codecs": [little_endian, {"name": "crc32c"}],
                "index_location": "end",
            },
        }
    ]


class Workdir:
    """One extraction run's directory: arrays, manifest and metadata files."""

    def __init__(self, location: str | os.PathLike[str]):
        self.location = str(location)
        self._spec = _kvstore_spec(self.location)
        self._kv: ts.KvStore | None = None

    def __repr__(self) -> str:
        return f"Workdir({self.location!r})"

    @property
    def is_local(self) -> bool:
        return self._spec["driver"] == "file"

    @property
    def local_path(self) -> str:
        """The directory on disk; only for local workdirs."""
        if not self.is_local:
            raise WorkdirError(f"{self.location} is not a local directory")
        return self._spec["path"].rstrip("/")

    def kvstore(self, name: str = "") -> dict[str, Any]:
        """The kvstore spec of `name` (a relative path) inside the workdir."""
        spec = dict(self._spec)
        spec["path"] = spec["path"] + name.strip("/") + ("/" if name else "")
        return spec

    # ---------------------------------------------------------------- files
    def _store(self) -> ts.KvStore:
        if self._kv is None:
            self._kv = ts.KvStore.open(self._spec).result()
        return self._kv

    def exists(self, name: str) -> bool:
        """Whether the file `name` exists (for arrays use `array_exists`)."""
        return self._store().read(name).result().state == "value"

    def read_bytes(self, name: str) -> bytes:
        result = self._store().read(name).result()
        if result.state != "value":
            raise WorkdirError(f"{self.location}: missing file {name}")
        return bytes(result.value)

    def write_bytes(self, name: str, data: bytes) -> None:
        if self.is_local:
            # Atomic replace, so a crash never leaves a half-written manifest.
            path = os.path.join(self.local_path, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp{os.getpid()}"
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                # A full disk (or a kill signal raised as an exception) leaves no
                # temporary file behind; the previous version of the file stays.
                with contextlib.suppress(OSError):
                    os.remove(tmp)
                raise
        else:
            self._store().write(name, data).result()

    def read_json(self, name: str) -> Any:
        try:
            return json.loads(self.read_bytes(name))
        except json.JSONDecodeError as e:
            raise WorkdirError(f"{self.location}/{name} is not valid JSON: {e}") from e

    def write_json(self, name: str, obj: Any) -> None:
        self.write_bytes(name, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())

    def read_jsonl(self, name: str) -> list[dict[str, Any]]:
        lines = self.read_bytes(name).decode().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def write_jsonl(self, name: str, rows: Iterable[dict[str, Any]]) -> None:
        text = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows)
        self.write_bytes(name, text.encode())

    # --------------------------------------------------------------- arrays
    def array_spec(self, name: str) -> dict[str, Any]:
        # A chunk equal to the fill value is written anyway, so that an absent
        # chunk file always means lost data, which readers can then refuse.
        return {
            "driver": "zarr3",
            "kvstore": self.kvstore(name),
            "store_data_equal_to_fill_value": True,
        }

    def array_exists(self, name: str) -> bool:
        return self.exists(f"{name}/zarr.json")

    def create_array(
        self,
        name: str,
        dtype: str,
        shape: Sequence[int],
        chunk_shape: Sequence[int] | None = None,
        fill_value: Any = 0,
        inner_chunk_shape: Sequence[int] | None = None,
    ) -> ts.TensorStore:
        """Creates (replacing any existing) array `name`, with its zarr groups above it.

        The array's axes get the names WORKSPACE.md gives them
        (`layout.dimension_names`), which zarr-python and xarray read. With
        `inner_chunk_shape`, each chunk (file) is a zarr v3 shard
        (`sharding_indexed` codec) of inner chunks of that shape: a writer
        still writes a whole chunk at once, while a reader can fetch one inner
        chunk as a byte range of the file (see `sharded_codecs`).
        """
        self.write_zarr_groups(name)
        spec = self.array_spec(name)
        spec["metadata"] = {
            "shape": list(shape),
            "data_type": dtype,
            "chunk_grid": {
                "name": "regular",
                "configuration": {"chunk_shape": list(chunk_shape or shape)},
            },
            "fill_value": fill_value,
            "dimension_names": list(dimension_names(name, len(shape))),
        }
        if inner_chunk_shape is not None:
            spec["metadata"]["codecs"] = sharded_codecs(inner_chunk_shape)
        return ts.open(spec, create=True, delete_existing=True).result()

    def write_zarr_groups(self, name: str) -> None:
        """Writes zarr3 group metadata in the workdir and every folder above array `name`.

        Without it zarr-python and xarray see loose arrays, not a hierarchy;
        TensorStore itself needs none. An existing group file is left alone.
        """
        parts = name.strip("/").split("/")[:-1]
        group = json.dumps(ZARR_GROUP_METADATA).encode()
        for depth in range(len(parts) + 1):
            key = "/".join([*parts[:depth], ZARR_JSON])
            if not self.exists(key):
                self.write_bytes(key, group)

    def open_array(self, name: str) -> ts.TensorStore:
        if not self.array_exists(name):
            raise WorkdirError(
                f"{self.location}: array {name} is missing; the workdir is incomplete or "
                "was not written by `python -m probing.extract` (see WORKSPACE.md)"
            )
        return ts.open(self.array_spec(name), open=True).result()

    def read_array(self, name: str) -> np.ndarray:
        return np.asarray(self.open_array(name).read().result())

    def write_array(self, name: str, values: np.ndarray, chunk_shape: Sequence[int] | None = None):
        """Creates array `name` holding `values` (small row-aligned arrays)."""
        values = np.asarray(values)
        arr = self.create_array(name, values.dtype.name, values.shape, chunk_shape)
        arr.write(values).result()
        return arr

    # ------------------------------------------------------------- manifest
    def manifest(self) -> dict[str, Any]:
        if not self.exists(MANIFEST_JSON):
            raise WorkdirError(
                f"{self.location} is not a probing workdir: it has no manifest.json. "
                "Create one with `python -m probing.extract --config=... --workdir=...` "
                "or write it as WORKSPACE.md describes."
            )
        manifest = self.read_json(MANIFEST_JSON)
        missing = [k for k in MANIFEST_REQUIRED if k not in manifest]
        if missing:
            raise WorkdirError(
                f"{self.location}/manifest.json lacks field(s) {', '.join(missing)} "
                "(see WORKSPACE.md)"
            )
        if manifest["label_kind"] not in LABEL_KINDS:
            raise WorkdirError(
                f"{self.location}/manifest.json: label_kind must be 'binary' or "
                f"'multilabel', got {manifest['label_kind']!r}"
            )
        return manifest
