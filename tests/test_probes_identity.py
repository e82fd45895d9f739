"""Tidy results that combine (issue 15, item 6): every row names its run.

metrics.csv and curves.csv lead with the run's model, task, prompt form,
pooling and run (layout.RUN_COLUMNS), so `pd.concat` over workdirs and poolings
tells the runs apart without hand-added keys, and the report still reads them.
"""

from __future__ import annotations

import pytest

from configs.probe import get_config
from probing.probes.identity import prompt_form, run_columns
from probing.probes.train import train_workdir
from probing.reporting.runs import load_runs
from probing.store import layout
from probing.store.workdir import Workdir
from probing.testing.planted import planted_arrays, write_workdir

pd = pytest.importorskip("pandas")


def _config():
    config = get_config()
    config.update(num_seeds=2, epochs=3, batch_size=16, bootstrap_resamples=0)
    return config


def _workdir(folder, model_id, config_task):
    arrays = planted_arrays(300, 4, 8, [2], strength=4.0, seed=3)
    location = str(folder / model_id)
    wd = write_workdir(location, arrays, poolings=("mean", "last"))
    manifest = wd.manifest()
    manifest["model"]["id"] = model_id
    manifest["task"] = "caption"
    wd.write_json(layout.MANIFEST_JSON, manifest)
    wd.write_json(layout.CONFIG_JSON, {"task": config_task})
    return location


@pytest.fixture(scope="module")
def two_workdirs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    locations = [
        _workdir(folder, "model-a", {"kind": "caption", "prompt": "default"}),
        _workdir(folder, "model-b", {"kind": "caption", "prompt": "tao_caption"}),
    ]
    for location in locations:
        train_workdir(location, _config())
    return locations


@pytest.mark.parametrize("name", [layout.METRICS_CSV, layout.CURVES_CSV])
def test_concat_over_workdirs_tells_runs_apart(two_workdirs, name):
    frames = [
        pd.read_csv(f"{location}/{layout.probe_file(pooling, name)}")
        for location in two_workdirs
        for pooling in ("mean", "last")
    ]
    table = pd.concat(frames, ignore_index=True)
    columns = layout.METRICS_COLUMNS if name == layout.METRICS_CSV else layout.CURVES_COLUMNS
    assert list(table.columns) == [*layout.RUN_COLUMNS, *columns]
    assert not table[list(layout.RUN_COLUMNS)].isna().any().any()
    runs = table.groupby(list(layout.RUN_COLUMNS)).size()
    assert len(runs) == 4 and runs.tolist() == [len(f) for f in frames]  # one group per file
    assert set(runs.index) == {
        ("model-a", "caption", "study2025_caption", "last", "last"),
        ("model-a", "caption", "study2025_caption", "mean", "mean"),
        ("model-b", "caption", "tao_caption", "last", "last"),
        ("model-b", "caption", "tao_caption", "mean", "mean"),
    }


def test_report_reads_files_with_run_columns(two_workdirs):
    runs = load_runs(two_workdirs)
    assert sorted((run.manifest["model"]["id"], run.pooling) for run in runs) == [
        ("model-a", "last"),
        ("model-a", "mean"),
        ("model-b", "last"),
        ("model-b", "mean"),
    ]
    # The first metrics.csv row of each run is the same number load_runs holds.
    run = runs[0]
    table = pd.read_csv(f"{run.workdir}/{layout.probe_file(run.pooling, layout.METRICS_CSV)}")
    row = table.iloc[0]
    grid = run.metrics[(row["split"], row["metric"])]
    assert grid[int(row["layer"]), list(run.seeds).index(int(row["seed"]))] == row["value"]


@pytest.mark.parametrize(
    "task,label_kind,expected",
    [
        ({"prompt": "default"}, "binary", "study2025_caption"),
        ({"prompt": "Is {caption} true?"}, "binary", "custom"),
        ({"prompt": "default", "category_prompt": "withcat"}, "multilabel", "WithCat"),
        ({"prompt": "default", "category_prompt": "nocat"}, "multilabel", "NoCat"),
        (
            {"prompt": "tao_variant2", "category_prompt": "nocat"},
            "multilabel",
            "NoCat (tao_variant2)",
        ),
        ({}, "binary", ""),
    ],
)
def test_prompt_form_names_it_as_the_report_does(task, label_kind, expected):
    assert prompt_form(task, label_kind) == expected


def test_workdir_without_config_json_has_empty_prompt(tmp_path):
    wd = write_workdir(str(tmp_path / "w"), planted_arrays(20, 2, 4, [1]))
    assert run_columns(Workdir(wd.location).manifest(), None, "mean") == {
        "model": "synthetic",
        "task": "synthetic",
        "prompt": "",
        "pooling": "mean",
        "run": "mean",
    }
