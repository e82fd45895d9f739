"""Tests of the synthetic COCO-format generator, read back through pycocotools."""

import contextlib
import io
import json
import os
import re

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from probing.data.synthetic_coco import (
    BACKGROUND_COLOURS,
    CATEGORY_NAMES,
    CATEGORY_PATTERNS,
    OBJECT_COLOURS,
    PARAMS_FILE,
    ensure_synthetic_coco,
    generate_scene,
    generate_synthetic_coco,
)


def _coco(path: str) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(path)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return ensure_synthetic_coco(tmp_path_factory.mktemp("syn") / "ds", num_images=40, seed=3)


def test_round_trips_through_pycocotools(root):
    instances = _coco(os.path.join(root, "annotations", "instances_train2017.json"))
    captions = _coco(os.path.join(root, "annotations", "captions_train2017.json"))
    assert [c["name"] for c in instances.loadCats(instances.getCatIds())] == list(CATEGORY_NAMES)
    image_ids = instances.getImgIds()
    assert len(image_ids) == 40
    for image_id in image_ids:
        info = instances.imgs[image_id]
        with Image.open(os.path.join(root, "train2017", info["file_name"])) as image:
            assert image.size == (info["width"], info["height"])
            assert 96 <= image.width <= 160 and 96 <= image.height <= 120
        anns = instances.loadAnns(instances.getAnnIds(imgIds=[image_id]))
        assert 1 <= len(anns) <= 4
        for ann in anns:
            x, _, w, h = ann["bbox"]
            assert w > 0 and h > 0 and x + w <= info["width"] + 1e-6
            assert ann["area"] > 0 and ann["iscrowd"] == 0
            # The polygon is a real segmentation: pycocotools rasterises it.
            assert instances.annToMask(ann).sum() > 0
        assert len(captions.getAnnIds(imgIds=[image_id])) == 5


def test_tasks_are_not_trivial(root):
    instances = _coco(os.path.join(root, "annotations", "instances_train2017.json"))
    captions = _coco(os.path.join(root, "annotations", "captions_train2017.json"))
    multi_object = 0
    unmentioned = 0
    partial_captions = 0
    category_images = {name: 0 for name in CATEGORY_NAMES}
    for image_id in instances.getImgIds():
        anns = instances.loadAnns(instances.getAnnIds(imgIds=[image_id]))
        names = {instances.cats[a["category_id"]]["name"] for a in anns}
        for name in names:
            category_images[name] += 1
        multi_object += len(anns) > 1
        texts = [a["caption"].lower() for a in captions.imgToAnns[image_id]]
        mentioned = {n for n in names for t in texts if re.search(rf"\b{n}", t)}
        unmentioned += bool(names - mentioned)
        partial_captions += sum(
            1 for t in texts if {n for n in names if re.search(rf"\b{n}", t)} != names
        )
    assert multi_object >= 20
    assert unmentioned >= 1, "some object should be in no caption"
    assert partial_captions >= 40
    assert sum(count >= 3 for count in category_images.values()) >= 6


def test_deterministic_and_seed_dependent(tmp_path):
    a = generate_synthetic_coco(tmp_path / "a", num_images=12, seed=5)
    b = generate_synthetic_coco(tmp_path / "b", num_images=12, seed=5)
    c = generate_synthetic_coco(tmp_path / "c", num_images=12, seed=6)
    for name in ("instances_train2017.json", "captions_train2017.json"):
        assert _read(a, name) == _read(b, name)
        assert _read(a, name) != _read(c, name)
    first = "000001000001.png"
    pixels = [np.asarray(Image.open(os.path.join(r, "train2017", first))) for r in (a, b)]
    assert np.array_equal(*pixels)


def _read(root: str, annotation: str) -> bytes:
    with open(os.path.join(root, "annotations", annotation), "rb") as f:
        return f.read()


def test_cache_regenerates_only_when_params_change(tmp_path):
    root = ensure_synthetic_coco(tmp_path / "ds", num_images=5, seed=1)
    params_path = os.path.join(root, PARAMS_FILE)
    stamp = os.stat(params_path).st_mtime_ns
    assert ensure_synthetic_coco(tmp_path / "ds", num_images=5, seed=1) == root
    assert os.stat(params_path).st_mtime_ns == stamp
    ensure_synthetic_coco(tmp_path / "ds", num_images=7, seed=1)
    with open(params_path) as f:
        assert json.load(f)["num_images"] == 7
    assert len(os.listdir(os.path.join(root, "train2017"))) == 7


def test_refuses_a_foreign_directory(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not a synthetic dataset"):
        ensure_synthetic_coco(tmp_path / "mine", num_images=3, seed=0)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_several_splits_have_distinct_image_ids(tmp_path):
    root = ensure_synthetic_coco(tmp_path / "ds", 4, 0, splits=("train2014", "val2014"))
    ids = []
    for split in ("train2014", "val2014"):
        coco = _coco(os.path.join(root, "annotations", f"instances_{split}.json"))
        ids += coco.getImgIds()
    assert len(set(ids)) == 8


def test_patterns_draw_no_random_numbers(monkeypatch):
    # Scenes drawn with and without surface patterns are the same scenes:
    # same objects, same captions (the patterns only recolour pixels).
    import probing.data.synthetic_coco as synthetic

    with_patterns = [generate_scene(0, 0, i) for i in range(20)]
    monkeypatch.setattr(synthetic, "_draw_object", lambda *args: None)
    without = [generate_scene(0, 0, i) for i in range(20)]
    for a, b in zip(with_patterns, without, strict=True):
        assert a.captions == b.captions and a.objects == b.objects
        assert np.asarray(a.image).tobytes() != np.asarray(b.image).tobytes()


def test_each_category_shows_its_accent_over_about_three_eighths_of_it():
    # Scenes with one object: every object pixel is the object's colour or its
    # category's accent, and the accent covers 0.2-0.55 of the object (3/8 by
    # construction; edges and the ring's thin outline move it).
    accents = {name: accent for name, (_, _, accent) in CATEGORY_PATTERNS.items()}
    assert len(set(accents.values())) == len(CATEGORY_NAMES)
    assert not set(accents.values()) & {*OBJECT_COLOURS.values(), *BACKGROUND_COLOURS.values()}
    seen = set()
    for i in range(400):
        item = generate_scene(0, 0, i)
        if len(item.objects) != 1:
            continue
        (obj,) = item.objects
        name = CATEGORY_NAMES[obj.category_index]
        pixels = np.asarray(item.image).reshape(-1, 3)
        is_colour = (pixels == OBJECT_COLOURS[obj.colour]).all(1)
        is_accent = (pixels == accents[name]).all(1)
        share = is_accent.sum() / (is_accent.sum() + is_colour.sum())
        assert 0.2 <= share <= 0.55, (name, share)
        for other, accent in accents.items():
            if other != name:
                assert not (pixels == accent).all(1).any(), (name, other)
        seen.add(name)
    assert len(seen) >= 8, seen
