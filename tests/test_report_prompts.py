"""What the report says about prompts: labels that tell runs apart, Tao's Table 1,
text-only baselines beside the probes, and (task, category form) groups.

Workdirs are fabricated (probing.testing.probed); the baselines and tables are
computed from their examples.jsonl exactly as from an extraction's.
"""

from __future__ import annotations

import csv
import os
import pathlib

import numpy as np
import pytest

from probing.reporting.baselines import caption_baseline, category_baseline
from probing.reporting.builder import build_report
from probing.reporting.first_tokens import presence_groups, table1
from probing.reporting.runs import load_runs
from probing.testing.probed import write_probed_workdir

CATEGORIES = ("circle", "square", "triangle", "star")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("prompts")
    workdirs = []
    for prompt in ("nocat", "withcat"):
        for form in ("all", "candidates"):
            location = str(root / f"{prompt}_{form}")
            write_probed_workdir(
                location,
                task="category",
                poolings=("last",),
                categories=CATEGORIES,
                category_prompt=prompt,
                category_form=form,
                num_examples=300,
            )
            workdirs.append(location)
    out_dir = str(root / "report")
    return workdirs, out_dir, build_report(workdirs, out_dir, first_token_category="circle")


@pytest.mark.slow
def test_labels_name_the_prompt_and_never_repeat(report):
    workdirs, _, _ = report
    runs = load_runs(workdirs)
    labels = sorted(run.label for run in runs)
    assert labels == sorted(["tiny:qwen2_vl · NoCat · last", "tiny:qwen2_vl · WithCat · last"] * 2)
    groups = {}
    for run in runs:
        groups.setdefault(run.manifest and run.config["task"]["category_form"], []).append(run)
    for members in groups.values():  # one table each: no label twice
        assert len({run.label for run in members}) == len(members)


@pytest.mark.slow
def test_category_forms_never_share_an_axis(report):
    _, out_dir, path = report
    markdown = pathlib.Path(path).read_text()
    assert "### Task category (all)" in markdown and "### Task category (candidates)" in markdown
    figures = os.listdir(os.path.join(out_dir, "figures"))
    assert "category-all-_headline_per_layer.png" in figures
    assert "category-candidates-_headline_per_layer.png" in figures


@pytest.mark.slow
def test_table1_nocat_beside_withcat(report):
    _, out_dir, path = report
    markdown = pathlib.Path(path).read_text()
    assert "Table 1" in markdown
    tables = sorted(f for f in os.listdir(out_dir) if f.startswith("table1_first_tokens"))
    assert len(tables) == 2  # one per category form, each a NoCat + WithCat pair
    with open(os.path.join(out_dir, tables[0])) as f:
        header = next(csv.reader(f))
    assert [h.split(" (n=")[0] for h in header[1::2]] == [
        "NoCat, with circle",
        "NoCat, without circle",
        "WithCat, with circle",
        "WithCat, without circle",
    ]


@pytest.mark.slow
def test_text_only_baseline_beside_withcat(report):
    _, _, path = report
    markdown = pathlib.Path(path).read_text()
    assert "tiny:qwen2_vl · WithCat · text-only baseline (prompt's listed categories)" in markdown
    assert "tiny:qwen2_vl · NoCat · text-only baseline (prompt's listed categories)" in markdown
    assert (
        "text-only baseline of each run"
        in pathlib.Path(
            os.path.dirname(path), "figures", "category-all-_headline_per_layer.svg"
        ).read_text()
    )


@pytest.mark.slow
def test_withcat_lists_give_labels_away_nocat_does_not(report):
    workdirs, _, _ = report
    scores = {}
    for run in load_runs(workdirs):
        prompt = run.config["task"]["category_prompt"]
        scores[(prompt, run.config["task"]["category_form"])] = run.prompt_baseline.metrics
    # An empty list always means a present single category: ROC-AUC above chance.
    assert scores[("withcat", "all")]["roc_auc"] > 0.6
    assert scores[("nocat", "all")]["roc_auc"] == pytest.approx(0.5)


def test_presence_groups_follow_tao():
    examples = [
        {"present": ["circle", "star"], "target": "circle", "first_token_topk": [["circle", 1]]},
        {"present": ["circle", "star"], "target": "star", "first_token_topk": [["x", 1]]},
        {"present": ["star"], "target": None, "first_token_topk": [["a", 1]]},
        {"present": ["circle"], "target": None, "first_token_topk": [["b", 1]]},
    ]
    assert presence_groups(examples, "circle", withcat=True) == (["circle"], ["a"])
    assert presence_groups(examples, "circle", withcat=False) == (["circle", "x", "b"], ["a"])
    table = table1({"WithCat": examples}, "circle")
    assert table.counts == {"WithCat, with circle": 1, "WithCat, without circle": 1}


def test_baselines_on_planted_prompts():
    rng = np.random.default_rng(0)
    examples = []
    for row in range(400):
        label = int(rng.random() < 0.5)
        examples.append(
            {
                "split": ("train", "test")[row % 2],
                "listed": ["star"] if label else [],
                "candidates": ["circle"],
                "positives": ["circle"] if label else [],
                "caption": "a red circle" if label else "a blue circle",
                "label": label,
            }
        )
    assert category_baseline(examples, ["circle"]).metrics["macro_f1"] == 1.0
    assert caption_baseline(examples).metrics["accuracy"] == 1.0
    for example in examples:
        example["listed"] = []
    assert category_baseline(examples, ["circle"]).metrics["roc_auc"] == pytest.approx(0.5)
