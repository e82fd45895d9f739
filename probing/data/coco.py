"""Reading a COCO-format dataset (real MS COCO 2014/2017 or the synthetic one).

`CocoDataset(root, ["train2017"])` expects the official layout::

    <root>/annotations/instances_<split>.json
    <root>/annotations/captions_<split>.json
    <root>/<split>/<file_name>            (or <root>/images/<split>/<file_name>)

for each named split (``train2014``, ``val2014``, ``train2017``, ``val2017``,
...). The JSON files are checked for the fields the tasks need, then indexed
by pycocotools' `COCO` class. Category labels come only from the instance
annotations, never from caption words. Image ids must be unique across the
named splits, as they are in COCO.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Sequence
from typing import Any

from PIL import Image
from pycocotools.coco import COCO

from probing.data.images import UnreadableImage, open_image


class DatasetError(ValueError):
    """A dataset file or entry is missing, unreadable or malformed."""


# Fields each annotation file must have, per list, for the tasks to work.
_REQUIRED_FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    "instances": {
        "images": ("id", "file_name"),
        "annotations": ("image_id", "category_id", "area"),
        "categories": ("id", "name"),
    },
    "captions": {
        "images": ("id",),
        "annotations": ("image_id", "caption"),
    },
}

# Fields that must hold integers (ids), per list.
_INTEGER_FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    "instances": {
        "images": ("id",),
        "annotations": ("image_id", "category_id"),
        "categories": ("id",),
    },
    "captions": {"images": ("id",), "annotations": ("image_id",)},
}


def _load_annotation_file(path: str, kind: str) -> dict[str, Any]:
    """Loads and validates one annotation JSON; errors name the file and field."""
    if not os.path.isfile(path):
        raise DatasetError(
            f"annotation file {path} does not exist. A COCO root needs "
            f"annotations/{os.path.basename(path)}; download the COCO annotations "
            "(annotations_trainval2017.zip or ..2014.zip) into <root>/annotations/, "
            "or check data.coco_root and data.coco_splits."
        )
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(
            f"annotation file {path} is not valid JSON ({e}); re-download or regenerate it."
        ) from e
    except OSError as e:
        raise DatasetError(f"annotation file {path} cannot be read: {e}") from e
    if not isinstance(data, dict):
        raise DatasetError(f"annotation file {path}: top level must be a JSON object")
    _check_fields(data, path, kind)
    _check_values(data, path, kind)
    return data


def _check_fields(data: dict[str, Any], path: str, kind: str) -> None:
    """Every list the tasks read exists and its entries have the required fields."""
    for list_name, fields in _REQUIRED_FIELDS[kind].items():
        if list_name not in data:
            raise DatasetError(
                f"annotation file {path} lacks the required field {list_name!r} "
                f"(a COCO {kind} file has {', '.join(_REQUIRED_FIELDS[kind])})"
            )
        entries = data[list_name]
        if not isinstance(entries, list):
            raise DatasetError(f"annotation file {path}: field {list_name!r} must be a list")
        for index, entry in enumerate(entries):
            missing = [f for f in fields if not isinstance(entry, dict) or f not in entry]
            if missing:
                raise DatasetError(
                    f"annotation file {path}: {list_name}[{index}] lacks required field(s) "
                    f"{', '.join(missing)}"
                )


def _check_values(data: dict[str, Any], path: str, kind: str) -> None:
    """Ids are integers, image ids unique, file names inside the image folder, captions text.

    pycocotools accepts all of these silently: a repeated image id pairs one
    image's captions with another's file, an empty caption makes rows whose
    prompts agree but whose labels differ.
    """
    for list_name, fields in _INTEGER_FIELDS[kind].items():
        for index, entry in enumerate(data[list_name]):
            for field in fields:
                value = entry[field]
                if isinstance(value, bool) or not isinstance(value, int):
                    raise DatasetError(
                        f"annotation file {path}: {list_name}[{index}].{field} = {value!r} is "
                        "not an integer; COCO ids are integers"
                    )
    first_index: dict[int, int] = {}
    for index, entry in enumerate(data["images"]):
        earlier = first_index.setdefault(entry["id"], index)
        if earlier != index:
            raise DatasetError(
                f"annotation file {path}: images[{index}].id = {entry['id']} repeats "
                f"images[{earlier}].id; every image id must appear once"
            )
    if kind == "instances":
        for index, entry in enumerate(data["images"]):
            name = entry["file_name"]
            if not _stays_inside(name):
                raise DatasetError(
                    f"annotation file {path}: images[{index}].file_name = {name!r} is not a "
                    "relative path inside the split's image folder; image files are read only "
                    "from <root>/<split>/ (or <root>/images/<split>/), fix the entry"
                )
    if kind == "captions":
        for index, entry in enumerate(data["annotations"]):
            caption = entry["caption"]
            if not isinstance(caption, str) or not caption.strip():
                raise DatasetError(
                    f"annotation file {path}: annotations[{index}].caption = {caption!r} is "
                    f"{'empty' if isinstance(caption, str) else 'not text'} (image_id "
                    f"{entry['image_id']}); remove the entry or give it a caption"
                )


def _stays_inside(file_name: Any) -> bool:
    """Whether `file_name` names a file inside the image folder (no absolute path, no '..').

    Checked on the text, not by resolving links: an image folder that is a
    link to another disk, or links inside it, stay allowed.
    """
    if not isinstance(file_name, str) or not file_name.strip() or "\0" in file_name:
        return False
    if os.path.isabs(file_name):
        return False
    normal = os.path.normpath(file_name)
    return normal != "." and normal != ".." and not normal.startswith(".." + os.sep)


def _quiet_coco(dataset: dict[str, Any]) -> COCO:
    """A pycocotools COCO index over an already loaded dataset, without its prints."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class CocoDataset:
    """Images, captions and instance categories of one or more COCO splits."""

    def __init__(self, root: str | os.PathLike[str], splits: Sequence[str]):
        self.root = os.path.abspath(str(root))
        if isinstance(splits, str):
            splits = [s.strip() for s in splits.split(",") if s.strip()]
        self.splits = list(splits)
        if not self.splits:
            raise DatasetError(f"no COCO split named for {self.root}; e.g. ['train2017']")
        if not os.path.isdir(self.root):
            raise DatasetError(
                f"COCO root {self.root} does not exist. Set data.coco_root to the directory "
                "holding annotations/ and the image folders, or use data.source='synthetic'."
            )
        self._instances: dict[str, COCO] = {}
        self._split_of: dict[int, str] = {}
        self._captions: dict[int, list[str]] = {}
        self._caption_annotations: dict[int, list[dict[str, Any]]] = {}
        self._image_dir: dict[str, str] = {}
        category_table: dict[int, str] | None = None
        for split in self.splits:
            ann_dir = os.path.join(self.root, "annotations")
            inst_path = os.path.join(ann_dir, f"instances_{split}.json")
            cap_path = os.path.join(ann_dir, f"captions_{split}.json")
            instances = _load_annotation_file(inst_path, "instances")
            captions = _load_annotation_file(cap_path, "captions")
            table = {int(c["id"]): str(c["name"]) for c in instances["categories"]}
            if category_table is None:
                category_table = table
            elif table != category_table:
                raise DatasetError(
                    f"{inst_path}: its categories differ from those of split "
                    f"{self.splits[0]!r}; all named splits must share one category list"
                )
            for index, ann in enumerate(instances["annotations"]):
                if int(ann["category_id"]) not in table:
                    raise DatasetError(
                        f"{inst_path}: annotations[{index}] has category_id "
                        f"{ann['category_id']} that is not in its categories list"
                    )
            coco = _quiet_coco(instances)
            self._instances[split] = coco
            for image_id in coco.getImgIds():
                if image_id in self._split_of:
                    raise DatasetError(
                        f"image id {image_id} appears in both split "
                        f"{self._split_of[image_id]!r} and {split!r}; image ids must be unique"
                    )
                self._split_of[image_id] = split
                self._captions[image_id] = []
                self._caption_annotations[image_id] = []
            for index, ann in enumerate(captions["annotations"]):
                image_id = int(ann["image_id"])
                if self._split_of.get(image_id) != split:
                    raise DatasetError(
                        f"{cap_path}: annotations[{index}] refers to image_id {image_id}, "
                        f"which is not an image of {inst_path}"
                    )
                self._captions[image_id].append(str(ann["caption"]).strip())
                self._caption_annotations[image_id].append(ann)
            self._image_dir[split] = self._find_image_dir(split)
        assert category_table is not None
        self._category_ids = sorted(category_table)
        self._category_names = [category_table[i] for i in self._category_ids]
        self._image_ids = sorted(self._split_of)

    def _find_image_dir(self, split: str) -> str:
        candidates = [os.path.join(self.root, split), os.path.join(self.root, "images", split)]
        for candidate in candidates:
            if os.path.isdir(candidate):
                return candidate
        raise DatasetError(
            f"no image folder for split {split!r}: looked for {' and '.join(candidates)}. "
            "Unpack the COCO images there (e.g. train2017.zip)."
        )

    # ---------------------------------------------------------------- images
    @property
    def image_ids(self) -> list[int]:
        """All image ids of the named splits, sorted."""
        return list(self._image_ids)

    def split_of(self, image_id: int) -> str:
        """The COCO split (e.g. 'train2017') an image belongs to."""
        self._check_id(image_id)
        return self._split_of[image_id]

    def _check_id(self, image_id: int) -> None:
        if image_id not in self._split_of:
            raise DatasetError(
                f"image id {image_id} is not in COCO split(s) {', '.join(self.splits)} "
                f"under {self.root}"
            )

    def image_path(self, image_id: int) -> str:
        """The file path of an image (it may not exist; see `check_image`)."""
        self._check_id(image_id)
        split = self._split_of[image_id]
        info = self._instances[split].imgs[image_id]
        return os.path.join(self._image_dir[split], info["file_name"])

    def load_image(self, image_id: int) -> Image.Image:
        """The image as PIL RGB; a missing or corrupt file raises DatasetError."""
        return self._open_image(image_id, decode=True)

    def check_image(self, image_id: int, decode: bool = False) -> None:
        """Raises DatasetError unless the image file exists and parses.

        `decode=False` checks the file header and structure (PIL `verify`,
        cheap); `decode=True` decodes every pixel, which also catches
        truncated files.
        """
        self._open_image(image_id, decode=decode)

    def _open_image(self, image_id: int, decode: bool) -> Image.Image | None:
        """Decodes the image (decode=True) or only verifies its file."""
        try:
            return open_image(self.image_path(image_id), decode)
        except UnreadableImage as e:
            what = "does not exist" if e.missing else f"is corrupt or unreadable ({e.reason})"
            raise DatasetError(
                f"image file {e.path} (image id {image_id}) {what}; restore or replace it, or "
                "set data.skip_unreadable_images=True to skip such images"
            ) from e

    # ------------------------------------------------------------ annotations
    def captions(self, image_id: int) -> list[str]:
        """The captions of an image, in annotation order."""
        self._check_id(image_id)
        return list(self._captions[image_id])

    @property
    def category_ids(self) -> list[int]:
        """All category ids, sorted (the order of `category_names`)."""
        return list(self._category_ids)

    @property
    def category_names(self) -> list[str]:
        """All category names, in COCO category-id order."""
        return list(self._category_names)

    def categories(self, image_id: int, min_area: float = 0.0) -> set[str]:
        """Names of the categories with an instance of area >= min_area in the image.

        Crowd annotations count like any other; the labels come from the
        instance annotations only.
        """
        self._check_id(image_id)
        coco = self._instances[self._split_of[image_id]]
        names = set()
        for ann in coco.imgToAnns.get(image_id, []):
            if float(ann["area"]) >= min_area:
                names.add(coco.cats[int(ann["category_id"])]["name"])
        return names

    def image_info(self, image_id: int) -> dict[str, Any]:
        """The image's entry of the instances file (id, file_name, width, ...)."""
        self._check_id(image_id)
        return self._instances[self._split_of[image_id]].imgs[image_id]

    def instance_annotations(self, image_id: int) -> list[dict[str, Any]]:
        """The image's instance annotations as stored (extra fields included)."""
        self._check_id(image_id)
        return list(self._instances[self._split_of[image_id]].imgToAnns.get(image_id, []))

    def caption_annotations(self, image_id: int) -> list[dict[str, Any]]:
        """The image's caption annotations as stored, in the order of `captions`."""
        self._check_id(image_id)
        return list(self._caption_annotations[image_id])
