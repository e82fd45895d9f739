"""Tests of build_task: splits, determinism, both tasks, baselines, bad input."""

import json
import os
import re
import shutil

import numpy as np
import pytest

from probing.data.coco import DatasetError
from probing.tasks import build_task, default_data_config, default_task_config, open_dataset
from probing.tasks.build import synthetic_root
from probing.tasks.caption import normalise_caption
from probing.tasks.splits import SplitError
from probing.tasks.templates import TemplateError

NUM_IMAGES = 60


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def data(cache):
    config = default_data_config()
    config.synthetic.num_images = NUM_IMAGES
    config.synthetic.cache_dir = cache
    return config


def task(**overrides):
    config = default_task_config()
    config.similarity_stats = False  # keeps the embedding model out of most tests
    config.split_sizes.val = 10
    config.split_sizes.test = 10
    config.hard_negatives.cache_dir = ""
    for key, value in overrides.items():
        config[key] = value
    return config


def _jsonl(examples):
    # Serialised exactly as Workdir.write_jsonl does.
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in examples)


def _assert_grouped(table):
    ids = [set(table.splits[name]) for name in ("train", "val", "test")]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    for code, name in enumerate(("train", "val", "test")):
        rows = table.split == code
        assert set(table.group[rows].tolist()) == set(table.splits[name])
    assert [e["row"] for e in table.examples] == list(range(table.num_rows))
    assert [e["split"] for e in table.examples] == [
        ("train", "val", "test")[c] for c in table.split
    ]


def test_caption_default(data):
    table = build_task(data, task(), seed=0)
    assert table.task == "caption" and table.label_kind == "binary"
    assert table.labels.dtype == np.int8 and table.labels.shape == (2 * NUM_IMAGES,)
    assert table.label_mask is None and table.with_image
    assert [len(table.splits[n]) for n in ("train", "val", "test")] == [40, 10, 10]
    _assert_grouped(table)
    assert table.labels.tolist() == [1, 0] * NUM_IMAGES
    for positive, negative in zip(table.examples[::2], table.examples[1::2], strict=True):
        assert positive["caption_image_id"] == positive["image_id"]
        assert negative["caption_image_id"] != negative["image_id"]
        assert negative["prompt"].startswith("This image contains: ")
    assert set(table.image_paths) == set(table.group.tolist())
    assert all(os.path.isfile(p) for p in table.image_paths.values())
    val = dict(table.stats["splits"]["val"])
    sampling = val.pop("negative_sampling")
    assert val == {"rows": 20, "images": 10, "positives": 10, "negatives": 10}
    assert sampling["negatives"] == 10 and sampling["false_negative_rate"] == 0.0


def test_negatives_come_from_the_same_split(data):
    table = build_task(data, task(positives_per_image=3), seed=1)
    split_of = {i: name for name, ids in table.splits.items() for i in ids}
    for example in table.examples:
        assert split_of[example["caption_image_id"]] == example["split"]
    assert table.num_rows == 6 * NUM_IMAGES


def test_same_seed_identical_different_seed_differs(data):
    a = build_task(data, task(kind="category"), seed=7)
    b = build_task(data, task(kind="category"), seed=7)
    c = build_task(data, task(kind="category"), seed=8)
    assert _jsonl(a.examples) == _jsonl(b.examples)
    assert json.dumps(a.splits) == json.dumps(b.splits)
    assert np.array_equal(a.label_mask, b.label_mask)
    assert json.dumps(a.splits) != json.dumps(c.splits)
    assert _jsonl(a.examples) != _jsonl(c.examples)
    x = build_task(data, task(), seed=7)
    y = build_task(data, task(), seed=7)
    assert _jsonl(x.examples) == _jsonl(y.examples)


def test_category_candidates_balanced(data):
    table = build_task(data, task(kind="category"), seed=0)
    assert table.label_kind == "multilabel"
    assert table.labels.shape == table.label_mask.shape == (NUM_IMAGES, 10)
    assert (table.label_mask.sum(axis=1) == 3).all()
    scored = table.label_mask.astype(bool)
    positive_rate = table.labels[scored].mean()
    assert 0.35 < positive_rate < 0.65
    for example, labels, mask in zip(table.examples, table.labels, table.label_mask, strict=True):
        names = table.label_names
        assert example["candidates"] == [names[k] for k in np.flatnonzero(mask)]
        assert example["positives"] == [names[k] for k in np.flatnonzero(mask & labels)]
        assert example["prompt"] == "This image contains the following types of objects:"


def test_category_all_and_subset(data):
    full = build_task(data, task(kind="category", category_form="all"), seed=0)
    assert full.label_mask.all()
    subset = build_task(
        data,
        task(kind="category", category_form="subset", category_subset="star, circle"),
        seed=0,
    )
    assert subset.label_names == ["circle", "star"]  # dataset order
    columns = [full.label_names.index(n) for n in subset.label_names]
    assert np.array_equal(subset.labels, full.labels[:, columns])
    freq = subset.stats["splits"]["train"]["label_frequency"]
    assert freq["circle"]["scored"] == 40
    assert freq["circle"]["positives"] == int(full.labels[full.split == 0, 0].sum())


def test_withcat_never_names_the_target(data):
    table = build_task(
        data, task(kind="category", category_prompt="withcat", category_form="all"), seed=0
    )
    _assert_grouped(table)
    assert table.unique_prompts() == table.num_rows
    assert table.label_mask.sum() == NUM_IMAGES * 10  # each (image, category) scored once
    for example, labels, mask in zip(table.examples, table.labels, table.label_mask, strict=True):
        scored = [table.label_names[k] for k in np.flatnonzero(mask)]
        for name in scored:
            assert not re.search(rf"\b{name}\b", example["prompt"]), example
        if example["target"] is None:
            assert not labels[mask.astype(bool)].any()
        else:
            assert scored == [example["target"]] and example["positives"] == scored
        assert example["prompt"].startswith("This image contains the following types of objects:")


def test_withcat_candidates(data):
    table = build_task(data, task(kind="category", category_prompt="withcat"), seed=0)
    per_image = {}
    for image_id, mask in zip(table.group, table.label_mask, strict=True):
        per_image[image_id] = per_image.get(image_id, 0) + int(mask.sum())
    assert set(per_image.values()) == {3}


def test_hard_negatives_are_harder(data, cache):
    overrides = dict(similarity_stats=True, positives_per_image=2)
    embedding_cache = os.path.join(cache, "embeddings")
    random_task = task(**overrides)
    hard_task = task(negatives="hard", **overrides)
    for config in (random_task, hard_task):
        config.hard_negatives.cache_dir = embedding_cache
    random_table = build_task(data, random_task, seed=0)
    assert len(os.listdir(embedding_cache)) == 1  # one caption set, encoded once
    hard = build_task(data, hard_task, seed=0)
    random_sim = random_table.stats["pair_similarity"]
    hard_sim = hard.stats["pair_similarity"]
    assert hard_sim["mean"] > random_sim["mean"] + 0.1
    assert hard_sim["median"] > random_sim["q75"]
    assert hard_sim["max"] <= hard_task.hard_negatives.similarity_ceiling
    dataset = open_dataset(data)
    for positive, negative in zip(hard.examples[::2], hard.examples[1::2], strict=True):
        assert negative["caption_image_id"] != negative["image_id"]
        own = {normalise_caption(c) for c in dataset.captions(negative["image_id"])}
        assert normalise_caption(negative["caption"]) not in own
        assert positive["pair_similarity"] == negative["pair_similarity"]
    again = build_task(data, hard_task, seed=0)
    assert _jsonl(again.examples) == _jsonl(hard.examples)


def test_blind_baselines(data):
    text_only = build_task(data, task(blind="text_only"), seed=0)
    assert not text_only.with_image
    image_only = build_task(data, task(blind="image_only"), seed=0)
    assert image_only.with_image
    assert {e["prompt"] for e in image_only.examples} == {"This is an image."}
    assert image_only.prompt_template == "This is an image."
    normal = build_task(data, task(), seed=0)
    assert [e["caption"] for e in image_only.examples] == [e["caption"] for e in normal.examples]


def test_reuse_splits(data, tmp_path):
    first = build_task(data, task(), seed=0)
    (tmp_path / "splits.json").write_text(json.dumps(first.splits))
    second = build_task(data, task(kind="category", reuse_splits_from=str(tmp_path)), seed=5)
    assert second.splits == first.splits
    (tmp_path / "other.json").write_text(json.dumps({"train": [1], "val": [2], "test": [3]}))
    with pytest.raises(SplitError, match="not in the dataset"):
        build_task(data, task(reuse_splits_from=str(tmp_path / "other.json")), seed=0)


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (
            dict(kind="category", category_subset="circle,unicorn"),
            DatasetError,
            "'unicorn', not categories of the dataset",
        ),
        (dict(kind="category", category_form="subset"), DatasetError, "needs task.category_subset"),
        (
            dict(split_sizes={"train": 50, "val": 10, "test": 10}),
            SplitError,
            "asks for 70 images .* has only 60",
        ),
        (
            dict(split_sizes={"train": -1, "val": 0, "test": 10}),
            SplitError,
            "split_sizes.val=0: every split needs at least one image",
        ),
        (dict(negatives="hardest"), ValueError, "task.negatives='hardest' is not valid"),
        (dict(prompt="Is {captoin} so?"), TemplateError, "unknown placeholder"),
        (
            dict(kind="category", category_prompt="withcat", prompt="Look."),
            TemplateError,
            r"no \{categories\}",
        ),
        (dict(positives_per_image=6), ValueError, "between 1 and 5"),
        (dict(reuse_splits_from="/no/such/run"), SplitError, "does not exist"),
    ],
)
def test_bad_task_input(data, overrides, error, message):
    with pytest.raises(error, match=message):
        build_task(data, task(**overrides), seed=0)


def test_bad_data_input(data, tmp_path):
    coco = default_data_config()
    coco.source = "coco"
    coco.coco_root = str(tmp_path / "missing")
    with pytest.raises(DatasetError, match="missing does not exist"):
        build_task(coco, task(), seed=0)
    data.source = "imagenet"
    with pytest.raises(ValueError, match=r"data\.source='imagenet'"):
        build_task(data, task(), seed=0)


def test_unreadable_images_error_or_skip(data, tmp_path):
    coco = default_data_config()
    coco.source = "coco"
    coco.coco_root = str(shutil.copytree(synthetic_root(data_with(data)), tmp_path / "c"))
    table = build_task(coco, task(), seed=0)
    victim = table.splits["val"][0]
    with open(table.image_paths[victim], "wb") as f:
        f.write(b"\x89PNG garbage")
    with pytest.raises(DatasetError, match=rf"image id {victim}\) is corrupt"):
        build_task(coco, task(), seed=0)
    coco.skip_unreadable_images = True
    skipped = build_task(coco, task(), seed=0)
    assert [s["image_id"] for s in skipped.skipped] == [victim]
    assert victim not in skipped.group and victim not in skipped.splits["val"]
    assert skipped.stats["skipped_images"] == 1


def data_with(config):
    """Makes sure the cached synthetic dataset of `config` exists."""
    build_task(config, task(), seed=0)
    return config
