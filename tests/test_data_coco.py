"""Tests of the pycocotools-based COCO loader and its error messages."""

import json
import os
import shutil

import pytest
from PIL import Image

from probing.data.coco import CocoDataset, DatasetError
from probing.data.synthetic_coco import CATEGORY_NAMES, ensure_synthetic_coco


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return ensure_synthetic_coco(tmp_path_factory.mktemp("syn") / "ds", num_images=10, seed=0)


@pytest.fixture
def root(pristine, tmp_path):
    """A private copy the test may break."""
    return shutil.copytree(pristine, tmp_path / "coco")


def _annotation(root, kind="instances", split="train2017"):
    return os.path.join(root, "annotations", f"{kind}_{split}.json")


def _edit_json(path, edit):
    with open(path) as f:
        data = json.load(f)
    edit(data)
    with open(path, "w") as f:
        json.dump(data, f)


def test_reads_images_captions_and_categories(pristine):
    dataset = CocoDataset(pristine, ["train2017"])
    ids = dataset.image_ids
    assert ids == sorted(ids) and len(ids) == 10
    assert dataset.category_names == list(CATEGORY_NAMES)
    with open(_annotation(pristine)) as f:
        instances = json.load(f)
    first = ids[0]
    expected = {
        CATEGORY_NAMES[a["category_id"] - 1]
        for a in instances["annotations"]
        if a["image_id"] == first
    }
    assert dataset.categories(first) == expected
    assert len(dataset.captions(first)) == 5
    image = dataset.load_image(first)
    assert image.mode == "RGB"
    assert dataset.image_path(first).startswith(os.path.join(pristine, "train2017"))
    assert dataset.split_of(first) == "train2017"


def test_min_area_drops_small_instances(pristine):
    dataset = CocoDataset(pristine, "train2017")
    with open(_annotation(pristine)) as f:
        areas = sorted(a["area"] for a in json.load(f)["annotations"])
    threshold = areas[len(areas) // 2]
    total_all = sum(len(dataset.categories(i)) for i in dataset.image_ids)
    total_big = sum(len(dataset.categories(i, min_area=threshold)) for i in dataset.image_ids)
    assert 0 < total_big < total_all


def test_2014_layout_and_images_subfolder(tmp_path):
    root = ensure_synthetic_coco(tmp_path / "c14", 3, 0, splits=("train2014", "val2014"))
    os.makedirs(os.path.join(root, "images"))
    os.rename(os.path.join(root, "val2014"), os.path.join(root, "images", "val2014"))
    dataset = CocoDataset(root, "train2014,val2014")
    assert len(dataset.image_ids) == 6
    val_id = next(i for i in dataset.image_ids if dataset.split_of(i) == "val2014")
    assert dataset.load_image(val_id).size[0] >= 96


def test_missing_root(tmp_path):
    with pytest.raises(DatasetError, match=r"COCO root .*nowhere does not exist"):
        CocoDataset(tmp_path / "nowhere", ["train2017"])


def test_missing_annotation_file(root):
    os.remove(_annotation(root, "captions"))
    with pytest.raises(DatasetError, match=r"captions_train2017\.json does not exist"):
        CocoDataset(root, ["train2017"])
    with pytest.raises(DatasetError, match=r"instances_val2017\.json does not exist"):
        CocoDataset(root, ["val2017"])


def test_malformed_json(root):
    with open(_annotation(root), "w") as f:
        f.write('{"images": [')
    with pytest.raises(DatasetError, match=r"instances_train2017\.json is not valid JSON"):
        CocoDataset(root, ["train2017"])


def test_missing_required_fields(root):
    _edit_json(_annotation(root), lambda d: d.pop("categories"))
    with pytest.raises(DatasetError, match=r"lacks the required field 'categories'"):
        CocoDataset(root, ["train2017"])


def test_missing_field_in_an_entry(root):
    _edit_json(_annotation(root, "captions"), lambda d: d["annotations"][3].pop("caption"))
    with pytest.raises(DatasetError, match=r"annotations\[3\] lacks required field\(s\) caption"):
        CocoDataset(root, ["train2017"])


def test_unknown_category_id(root):
    _edit_json(_annotation(root), lambda d: d["annotations"][0].update(category_id=999))
    with pytest.raises(DatasetError, match="category_id 999"):
        CocoDataset(root, ["train2017"])


def test_missing_and_corrupt_images(root):
    dataset = CocoDataset(root, ["train2017"])
    gone, broken = dataset.image_ids[:2]
    os.remove(dataset.image_path(gone))
    with open(dataset.image_path(broken), "wb") as f:
        f.write(b"not a png at all")
    for check in (dataset.load_image, dataset.check_image):
        with pytest.raises(DatasetError, match=rf"image id {gone}\) does not exist"):
            check(gone)
        with pytest.raises(DatasetError, match=rf"image id {broken}\) is corrupt"):
            check(broken)


def test_truncated_image_caught_by_decode(root):
    dataset = CocoDataset(root, ["train2017"])
    image_id = dataset.image_ids[0]
    path = dataset.image_path(image_id)
    Image.new("RGB", (120, 100), (10, 200, 30)).save(path)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="corrupt"):
        dataset.check_image(image_id, decode=True)


def test_unknown_image_id(pristine):
    with pytest.raises(DatasetError, match="image id 42 is not in COCO split"):
        CocoDataset(pristine, ["train2017"]).captions(42)


@pytest.mark.parametrize(
    ("kind", "edit", "message"),
    [
        (
            "instances",
            lambda d: d["images"][4].update(id=d["images"][1]["id"]),
            r"instances_train2017\.json: images\[4\]\.id = (\d+) repeats images\[1\]\.id",
        ),
        (
            "captions",
            lambda d: d["images"][2].update(id=d["images"][0]["id"]),
            r"captions_train2017\.json: images\[2\]\.id = \d+ repeats images\[0\]\.id",
        ),
        (
            "captions",
            lambda d: d["annotations"][7].update(caption=""),
            r"captions_train2017\.json: annotations\[7\]\.caption = '' is empty",
        ),
        (
            "captions",
            lambda d: d["annotations"][8].update(caption=" \t\n "),
            r"captions_train2017\.json: annotations\[8\]\.caption = ' \\t\\n ' is empty",
        ),
        (
            "captions",
            lambda d: d["annotations"][9].update(caption=None),
            r"annotations\[9\]\.caption = None is not text",
        ),
        (
            "instances",
            lambda d: d["images"][3].update(id="abc"),
            r"instances_train2017\.json: images\[3\]\.id = 'abc' is not an integer",
        ),
        (
            "captions",
            lambda d: d["annotations"][5].update(image_id="abc"),
            r"captions_train2017\.json: annotations\[5\]\.image_id = 'abc' is not an integer",
        ),
        (
            "instances",
            lambda d: d["annotations"][2].update(category_id=1.5),
            r"instances_train2017\.json: annotations\[2\]\.category_id = 1\.5 is not an integer",
        ),
        (
            "instances",
            lambda d: d["categories"][0].update(id=True),
            r"categories\[0\]\.id = True is not an integer",
        ),
    ],
)
def test_malformed_annotations_name_file_index_and_value(root, kind, edit, message):
    _edit_json(_annotation(root, kind), edit)
    with pytest.raises(DatasetError, match=message):
        CocoDataset(root, ["train2017"])


def test_scene_records_are_readable(pristine):
    dataset = CocoDataset(pristine, ["train2017"])
    image_id = dataset.image_ids[0]
    assert dataset.image_info(image_id)["background"]
    instances = dataset.instance_annotations(image_id)
    assert {
        dataset.category_names[dataset.category_ids.index(a["category_id"])] for a in instances
    } == dataset.categories(image_id)
    annotations = dataset.caption_annotations(image_id)
    assert [a["caption"].strip() for a in annotations] == dataset.captions(image_id)
    assert all("asserts" in a for a in annotations)
