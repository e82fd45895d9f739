"""The input side of the loop: image decoding and the DataLoader source of forward batches.

`BatchSource` turns a planned forward batch (rows of the task table) into
processor inputs in DataLoader workers, setting aside rows whose image cannot
be decoded or that the processor rejects (or stopping the run on them, unless
`extract.skip_rejected_images`). With prefix sharing it also builds the
inputs of each prefix group (the rows of one image). `to_storage` converts
pooled features to the storage dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from probing.data.images import UnreadableImage, open_image
from probing.extraction.settings import ExtractionError, ExtractSettings


class RejectedInput(ValueError):
    """One row's image or prompt that the image decoder or the processor rejects."""


def load_rgb(path: str, image_id: int) -> Image.Image:
    """Decodes one image as RGB; RejectedInput if it is missing or undecodable."""
    try:
        return open_image(path)
    except UnreadableImage as e:
        if e.missing:
            raise RejectedInput(f"image {image_id}: file {path} does not exist") from e
        raise RejectedInput(f"image {image_id}: cannot decode {path} ({e.reason})") from e


class ForwardBatch(NamedTuple):
    """One forward batch, ready for the model (an item of `BatchSource`)."""

    window: int  # index of the window in the work plan
    rows: np.ndarray  # accepted rows (int64), in `inputs` order
    inputs: Any  # processor output of the accepted rows, None if there are none
    prefix_inputs: Any  # prefix sharing: processor output of each prefix group's first row
    prefix_groups: torch.Tensor | None  # prefix sharing: [B] long, each row's prefix group
    rejected: list[dict[str, Any]]  # {row, image_id, reason} of the rows set aside
    # [B, 2] long: each accepted row's prompt position (ModelAdapter.prompt_spans).
    prompt_spans: torch.Tensor | None = None


class BatchSource(torch.utils.data.Dataset):
    """Decodes and preprocesses one forward batch (runs in DataLoader workers)."""

    def __init__(self, batches, examples, image_paths, adapter, with_image, share_prefix, skip):
        self.batches = batches  # [(window index, rows)]
        self.examples = examples
        self.image_paths = image_paths
        self.adapter = adapter
        self.with_image = with_image
        self.share_prefix = share_prefix
        self.skip = skip

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> ForwardBatch:
        window, rows = self.batches[index]
        rows = [int(r) for r in rows]
        rejected: list[dict[str, Any]] = []
        images: dict[int, Image.Image] = {}
        if self.with_image:
            images = self._decode_images(rows)
            rows = self._set_aside_unreadable(rows, images, rejected)
        inputs = None
        if rows:
            rows, inputs = self._build_accepted(rows, images, rejected)
        prefix_inputs, prefix_groups = None, None
        if self.share_prefix and rows:
            prefix_inputs, prefix_groups = self._build_prefixes(rows, images)
        spans = None
        if rows:
            prompts = [self.examples[r]["prompt"] for r in rows]
            spans = torch.as_tensor(self.adapter.prompt_spans(prompts, self.with_image))
        return ForwardBatch(
            window,
            np.asarray(rows, dtype=np.int64),
            inputs,
            prefix_inputs,
            prefix_groups,
            rejected,
            spans,
        )

    def _image_id(self, row: int) -> int:
        return int(self.examples[row]["image_id"])

    def _build(self, rows: Sequence[int], images: dict[int, Image.Image]):
        prompts = [self.examples[r]["prompt"] for r in rows]
        row_images = None
        if self.with_image:
            row_images = [images[self._image_id(r)] for r in rows]
        return self.adapter.build_batch(row_images, prompts)

    def _decode_images(self, rows: Sequence[int]) -> dict[int, Image.Image]:
        """The decodable images of `rows` by image id (stops on the first bad one unless skip)."""
        images: dict[int, Image.Image] = {}
        for r in rows:
            image_id = self._image_id(r)
            if image_id in images:
                continue
            try:
                images[image_id] = load_rgb(self.image_paths[image_id], image_id)
            except RejectedInput as e:
                if not self.skip:
                    raise ExtractionError(
                        f"row {r}: {e}. Fix or remove the file, or set "
                        "config.extract.skip_rejected_images=True to skip such rows"
                    ) from e
        return images

    def _set_aside_unreadable(self, rows, images, rejected) -> list[int]:
        """The rows whose image decoded; the others are appended to `rejected`."""
        kept = []
        for r in rows:
            image_id = self._image_id(r)
            if image_id in images:
                kept.append(r)
            else:
                rejected.append({"row": r, "image_id": image_id, "reason": "unreadable"})
        return kept

    def _build_accepted(self, rows, images, rejected) -> tuple[list[int], Any]:
        """Processor inputs of `rows`; rows the processor rejects go to `rejected`."""
        try:
            return rows, self._build(rows, images)
        except Exception as batch_error:  # the processor's errors have no common type
            # Find the culprits one row at a time, then build the rest together.
            good = []
            for r in rows:
                try:
                    self._build([r], images)
                    good.append(r)
                except Exception as row_error:
                    image_id = self._image_id(r)
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
            return good, (self._build(good, images) if good else None)

    def _build_prefixes(self, rows, images) -> tuple[Any, torch.Tensor]:
        """Inputs of each prefix group's first row, and each row's prefix group."""
        image_of = [self._image_id(r) for r in rows]
        order = list(dict.fromkeys(image_of))
        prefix_groups = torch.tensor([order.index(i) for i in image_of], dtype=torch.long)
        leaders = [rows[image_of.index(i)] for i in order]
        return self._build(leaders, images), prefix_groups


def make_loader(
    batches: list[tuple[int, np.ndarray]],
    table,
    adapter,
    settings: ExtractSettings,
    device: torch.device,
) -> torch.utils.data.DataLoader:
    """Yields the `ForwardBatch` of every planned batch, in plan order."""
    return torch.utils.data.DataLoader(
        BatchSource(
            batches,
            table.examples,
            table.image_paths,
            adapter,
            table.with_image,
            settings.prefix_sharing,
            settings.skip_rejected_images,
        ),
        batch_size=None,
        num_workers=settings.num_workers,
        collate_fn=lambda item: item,
        # Page-locked host buffers make the host→GPU copies asynchronous.
        pin_memory=device.type == "cuda",
    )


def to_storage(values: torch.Tensor, dtype: str) -> np.ndarray:
    """Pooled features as a host array of the storage dtype (`extract.feature_dtype`)."""
    array = values.detach().to(torch.float32).cpu().numpy()
    if dtype == "bfloat16":
        import ml_dtypes

        return array.astype(ml_dtypes.bfloat16)
    return array.astype(dtype)
