"""The paper setups set what the papers describe: prompts, categories, prompt format, poolings."""

from __future__ import annotations

import json
import shutil

import pytest

from probing.config_files import load_config
from probing.data.coco import CocoDataset
from probing.data.nouns import SYNONYMS
from probing.extraction.config import apply_paper_setup, extraction_config
from probing.tasks import default_data_config, default_task_config, open_dataset
from probing.tasks.build import synthetic_root
from probing.tasks.category import STUDY2025_CATEGORIES, label_columns
from probing.tasks.templates import TEMPLATES

COCO_80 = list(SYNONYMS)  # the 80 COCO category names, in COCO id order


def _setup(setup: str, kind: str, withcat: bool = False):
    config = extraction_config()
    config.task.kind = kind
    apply_paper_setup(config, setup, withcat)
    return config


def test_study2025_is_the_studys_construction():
    category = _setup("study2025", "category")
    assert category.task.prompt == "study2025_objects"
    assert TEMPLATES["study2025_objects"].text.startswith(
        "This image contains the following types of object:"
    )
    assert category.task.category_subset == "study2025"
    assert (category.task.category_form, category.task.candidates_per_image) == ("candidates", 3)
    assert category.model.prompt_format == "chat"
    assert "text_mean" in category.extract.poolings and category.extract.poolings[0] == "mean"
    caption = _setup("study2025", "caption")
    assert (caption.task.prompt, caption.task.negatives) == ("study2025_caption", "random")


def test_tao_prompts_raw_like_base_models():
    config = _setup("tao", "category", withcat=True)
    assert config.model.prompt_format == "raw"
    assert config.task.category_prompt == "withcat" and config.task.category_form == "all"
    assert config.task.category_subset == ""
    assert config.extract.poolings[0] == "last"


def test_the_studys_40_categories_on_coco_all_on_generated(tmp_path):
    assert len(STUDY2025_CATEGORIES) == 40 and list(STUDY2025_CATEGORIES) == COCO_80[:40]
    data = default_data_config()
    data.synthetic.num_images = 6
    data.synthetic.cache_dir = str(tmp_path / "cache")
    task = default_task_config()
    task.category_subset = "study2025"
    generated = open_dataset(data)
    assert label_columns(generated, task) == generated.category_names  # all 10 shapes
    # The same files with COCO's 80 categories: the study's 40, in COCO order.
    root = shutil.copytree(synthetic_root(data), tmp_path / "coco")
    (root / "synthetic_coco.json").unlink()
    path = root / "annotations" / "instances_train2017.json"
    instances = json.loads(path.read_text())
    instances["categories"] = [{"id": i + 1, "name": n} for i, n in enumerate(COCO_80[::-1])]
    path.write_text(json.dumps(instances))
    coco = CocoDataset(root, ["train2017"])
    columns = label_columns(coco, task)
    assert sorted(columns) == sorted(STUDY2025_CATEGORIES)
    assert columns == [n for n in coco.category_names if n in STUDY2025_CATEGORIES]


@pytest.mark.parametrize("name", ["configs/qwen.py", "configs/fastvlm.py"])
def test_real_model_configs_name_a_revision(name):
    config = load_config(f"{name}:category")
    assert config.model.revision  # pinned or "main" with the commit recorded at load
    assert config.task.prompt == "study2025_objects"
