"""Negative captions are false of their image, never repeated within it, and measured.

The generated dataset records what every caption asserts and what every image
shows, so the false-negative rate is measured exactly here; the noun-match
estimate used on real COCO is tested on hand-made captions.
"""

import collections
import os
import re

import pytest

from probing.data.coco import CocoDataset, DatasetError
from probing.data.nouns import SYNONYMS, CategoryMatcher, plural
from probing.data.synthetic_captions import POSITION_PHRASES
from probing.data.synthetic_coco import BACKGROUND_COLOURS
from probing.data.truth import NounTruth, SceneTruth, assertion_holds, caption_truth
from probing.tasks import build_task, default_data_config, default_task_config, open_dataset
from probing.tasks.caption import normalise_caption

NUM_IMAGES = 300


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def data(cache):
    config = default_data_config()
    config.synthetic.num_images = NUM_IMAGES
    config.synthetic.cache_dir = cache
    return config


@pytest.fixture(scope="module")
def dataset(data):
    return open_dataset(data)


def task(cache, **overrides):
    config = default_task_config()
    config.similarity_stats = False
    config.split_sizes.val = 60
    config.split_sizes.test = 60
    config.hard_negatives.cache_dir = os.path.join(cache, "embeddings")
    for key, value in overrides.items():
        config[key] = value
    return config


def _scene(background, *objects):
    keys = ("category", "colour", "size", "position")
    return {"background": background, "objects": [dict(zip(keys, o, strict=True)) for o in objects]}


def _claim(category, colour=None, size=None, position=None, count=1):
    return {
        "category": category,
        "colour": colour,
        "size": size,
        "position": position,
        "count": count,
    }


def test_assertions_hand_made():
    scene = _scene(
        "grey",
        ("circle", "blue", "small", "bottom"),
        ("circle", "red", "large", "left"),
        ("star", "red", "medium", "middle"),
    )
    holds = lambda background, *claims: assertion_holds(  # noqa: E731
        {"background": background, "objects": list(claims)}, scene
    )
    assert holds(None, _claim("circle", "blue", position="bottom"))
    assert holds("grey", _claim("circle", count=2), _claim("star", "red"))
    assert not holds(None, _claim("circle", "blue", position="middle"))  # issue 12's example
    assert not holds("beige", _claim("star"))
    assert not holds(None, _claim("circle", count=3))
    assert not holds(None, _claim("square"))
    assert not holds(None, _claim("star", size="large"))
    # Two claims may not take the same object: one red circle only.
    assert holds(None, _claim("circle", "red"), _claim("circle"))
    assert not holds(None, _claim("circle", "red"), _claim("circle", size="large"))


def test_every_own_caption_is_true_and_records_match_the_text(dataset):
    truth = caption_truth(dataset)
    assert isinstance(truth, SceneTruth)
    for image_id in dataset.image_ids:
        for annotation in dataset.caption_annotations(image_id):
            text, asserts = annotation["caption"].lower(), annotation["asserts"]
            assert truth.is_true(annotation["caption"], image_id), annotation
            # The record says what the text says: every named word is in it.
            if asserts["background"] is None:
                assert not any(b in text for b in BACKGROUND_COLOURS), text
            else:
                assert asserts["background"] in text
            for claim in asserts["objects"]:
                noun = claim["category"] if claim["count"] == 1 else plural(claim["category"])
                assert re.search(rf"\b{noun}", text), (claim, text)
                for word in (claim["colour"], claim["size"]):
                    assert word is None or word in text
                if claim["position"] is not None:
                    assert POSITION_PHRASES[claim["position"]] in text


def _negatives(table):
    return [e for e in table.examples if e["label"] == 0]


def _exact_false_negative_rate(dataset, table):
    truth = SceneTruth(dataset)
    negatives = _negatives(table)
    return sum(truth.is_true(e["caption"], e["image_id"]) for e in negatives) / len(negatives)


@pytest.fixture(scope="module")
def tables(data, cache):
    """Tao-style rows (5 positives per image) with hard and with random negatives."""
    return {
        negatives: build_task(data, task(cache, negatives=negatives, positives_per_image=5), seed=0)
        for negatives in ("hard", "random")
    }


@pytest.mark.slow
@pytest.mark.parametrize("negatives", ["hard", "random"])
def test_kept_negatives_are_false_and_not_repeated(dataset, tables, negatives):
    table = tables[negatives]
    assert _exact_false_negative_rate(dataset, table) <= 0.01
    per_image = collections.defaultdict(list)
    for e in _negatives(table):
        per_image[e["image_id"]].append(normalise_caption(e["caption"]))
    assert all(len(v) == len(set(v)) == 5 for v in per_image.values())
    for name in ("train", "val", "test"):
        stats = table.stats["splits"][name]["negative_sampling"]
        reuse = collections.Counter(
            normalise_caption(e["caption"]) for e in _negatives(table) if e["split"] == name
        )
        assert stats["false_negative_method"] == "exact"
        assert stats["false_negative_rate"] == 0.0
        assert stats["distinct_negative_captions"] == len(reuse)
        assert stats["largest_negative_reuse"] == max(reuse.values())
        assert stats["negatives"] == sum(reuse.values()) == 5 * len(table.splits[name])
    assert sum(s["negative_sampling"]["rejected_true"] for s in table.stats["splits"].values())


@pytest.mark.slow
def test_hard_negatives_stay_hard(tables):
    hard = tables["hard"].stats
    assert hard["num_candidates_per_positive"] == 5000
    assert hard["negative_check"] == "exact"
    assert hard["hard_negative_fallbacks"] == 0


@pytest.mark.slow
def test_without_the_check_hard_negatives_are_often_true(data, dataset, cache):
    """The check is what removes them: the unchecked construction is measured, not fixed."""
    table = build_task(
        data, task(cache, negatives="hard", positives_per_image=5, negative_check="none"), seed=0
    )
    rate = _exact_false_negative_rate(dataset, table)
    assert rate > 0.05
    reported = [s["negative_sampling"] for s in table.stats["splits"].values()]
    assert all(s["false_negative_method"] == "exact" for s in reported)
    assert sum(s["false_negatives"] for s in reported) == round(rate * len(_negatives(table)))


def test_noun_matcher():
    matcher = CategoryMatcher(list(SYNONYMS))
    assert matcher.mentioned("A man eating a hot dog at the table.") == {
        "person",
        "hot dog",
        "dining table",
    }
    assert matcher.mentioned("Two teddy bears on beds") == {"teddy bear", "bed"}
    assert matcher.mentioned("Women with knives and three mice") == {"person", "knife", "mouse"}
    assert matcher.mentioned("A stop light next to a stop sign") == {"traffic light", "stop sign"}
    assert matcher.mentioned("A view of a kitchen") == set()
    shapes = CategoryMatcher(["circle", "cross"])
    assert shapes.mentioned("two crosses and a circle") == {"circle", "cross"}


def test_noun_truth_on_coco_format_data(tmp_path, dataset):
    """Without the scene record the check falls back to the noun-match estimate."""
    truth = NounTruth(dataset)
    image_id = dataset.image_ids[0]
    present = sorted(dataset.categories(image_id))
    absent = sorted(set(dataset.category_names) - set(present))
    assert truth.is_true(f"A {present[0]} on grey.", image_id) is True
    assert truth.is_true(f"A {present[0]} and two {plural(absent[0])}.", image_id) is False
    assert truth.is_true("Nothing much here.", image_id) is None
    assert isinstance(caption_truth(dataset, "noun_match"), NounTruth)
    with pytest.raises(ValueError, match=r"task\.negative_check='oracle' is not valid"):
        caption_truth(dataset, "oracle")


def test_exact_check_refuses_data_without_scene_records(tmp_path, data):
    import json
    import shutil

    from probing.tasks.build import synthetic_root

    root = shutil.copytree(synthetic_root(data), tmp_path / "coco")
    path = root / "annotations" / "captions_train2017.json"
    captions = json.loads(path.read_text())
    for annotation in captions["annotations"]:
        annotation.pop("asserts")
    path.write_text(json.dumps(captions))
    plain = CocoDataset(root, ["train2017"])
    assert isinstance(caption_truth(plain), NounTruth)
    with pytest.raises(DatasetError, match="negative_check='exact' needs a dataset that records"):
        caption_truth(plain, "exact")
