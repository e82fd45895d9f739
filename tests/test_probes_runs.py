"""Named probe runs: runs with other settings never replace each other, and are listed and reported."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from configs.probe import get_config
from probing.probes.catalog import format_runs, list_runs
from probing.probes.run_names import check_run_name
from probing.probes.train import train_workdir
from probing.reporting.builder import build_report
from probing.reporting.runs import ReportError, load_runs
from probing.store.layout import RUN_COLUMNS
from probing.store.workdir import WorkdirError
from probing.testing.planted import planted_arrays, write_workdir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Small and fast, as in test_probes_train.py (the same shapes reuse the compiled sweep).
_SMALL = {"num_seeds": 2, "epochs": 4, "batch_size": 16, "learning_rate": 3e-2}


def _config(**overrides):
    config = get_config()
    config.update({**_SMALL, "bootstrap_resamples": 100, **overrides})
    return config


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _runs(location):
    return sorted(os.listdir(os.path.join(location, "probes")))


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """One workdir probed twice: the plain settings, then 3 seeds."""
    location = str(tmp_path_factory.mktemp("runs"))
    # Same shapes as test_probes_train.py: the compiled sweep is reused.
    write_workdir(location, planted_arrays(300, 4, 8, [2], strength=5.0), poolings=("mean",))
    train_workdir(location, _config(), poolings=["mean"])
    train_workdir(location, _config(num_seeds=3), poolings=["mean"])
    return location


def test_runs_with_other_settings_coexist(two_runs):
    names = _runs(two_runs)
    assert len(names) == 2 and names[0] == "mean" and names[1].startswith("mean-")
    seeds = {}
    for name in names:
        with open(os.path.join(two_runs, "probes", name, "probe_config.json")) as f:
            recorded = json.load(f)
        assert recorded["run"] == {"name": name, "pooling": "mean"}
        seeds[name] = len(recorded["seeds"])
    assert seeds == {"mean": 2, names[1]: 3}


def test_metrics_of_two_runs_of_one_pooling_concatenate_apart(two_runs):
    import pandas as pd

    names = _runs(two_runs)
    frames = [pd.read_csv(os.path.join(two_runs, "probes", n, "metrics.csv")) for n in names]
    table = pd.concat(frames)
    # The run column tells the two runs of pooling "mean" apart without added keys.
    assert sorted(table["run"].unique()) == names
    assert set(table["pooling"]) == {"mean"}
    seeds = table.groupby("run")["seed"].nunique().to_dict()
    assert seeds == {names[0]: 2, names[1]: 3}


def test_identical_rerun_replaces_its_own_folder(two_runs):
    names = _runs(two_runs)
    metrics = os.path.join(two_runs, "probes", names[1], "metrics.csv")
    before = _read(metrics)
    summary = train_workdir(two_runs, _config(num_seeds=3, devices=1), poolings=["mean"])
    # devices leaves results bitwise identical: the same run, in the same folder.
    assert _runs(two_runs) == names
    assert summary["mean"]["num_seeds"] == 3
    assert _read(metrics) == before


def test_listing_shows_every_run(two_runs):
    rows = list_runs(two_runs)
    assert [(r["run"], r["pooling"], r["seeds"], r["complete"]) for r in rows] == [
        ("mean", "mean", 2, "complete"),
        (_runs(two_runs)[1], "mean", 3, "complete"),
    ]
    table = format_runs(rows, two_runs).splitlines()
    assert table[0].split() == [
        "run",
        "pooling",
        "seeds",
        "epochs",
        "patience",
        "folds",
        "complete",
        "date",
    ]
    assert len(table) == 3 and all(r["date"][:2] == "20" for r in rows)


def test_report_shows_both_runs_with_distinct_labels(two_runs, tmp_path):
    runs = load_runs([two_runs])
    labels = sorted(run.label for run in runs)
    assert len(labels) == 2 and len(set(labels)) == 2
    assert labels[1].endswith(_runs(two_runs)[1])
    report = _read(build_report([two_runs], str(tmp_path / "report"))).decode()
    assert all(label in report for label in labels)


def test_report_picks_runs_by_name(two_runs):
    hashed = _runs(two_runs)[1]
    assert [run.run_name for run in load_runs([two_runs], names=["mean"])] == ["mean"]
    assert [run.run_name for run in load_runs([two_runs], names=[hashed])] == [hashed]
    with pytest.raises(ReportError, match="runs=\\['nope'\\]"):
        load_runs([two_runs], names=["nope"])


def test_named_run_clash_is_refused_unless_replaced(tmp_path):
    location = str(tmp_path)
    write_workdir(location, planted_arrays(300, 4, 8, [2], strength=5.0), poolings=("mean",))
    train_workdir(location, _config(run_name="grid"), poolings=["mean"])
    assert _runs(location) == ["mean-grid"]
    with pytest.raises(
        ValueError,
        match=r"probes/mean-grid holds a run with other probe "
        r"settings \(it differs in num_seeds 2 -> 3\).*run_name.*replace_run",
    ):
        train_workdir(location, _config(run_name="grid", num_seeds=3), poolings=["mean"])
    train_workdir(location, _config(run_name="grid", num_seeds=3, replace_run=True), ["mean"])
    assert [r["seeds"] for r in list_runs(location)] == [3]
    # The name is found by the name given too, not only by its folder.
    assert [run.run_name for run in load_runs([location], names=["grid"])] == ["mean-grid"]


@pytest.mark.parametrize("name", ["a/b", "..", " ", "x\\y", "-x"])
def test_bad_run_names_are_refused_in_one_line(name, tmp_path):
    with pytest.raises(ValueError, match="is not a usable run name") as error:
        check_run_name(name)
    assert "\n" not in str(error.value)
    write_workdir(str(tmp_path), planted_arrays(300, 4, 8, [2], strength=5.0), poolings=("mean",))
    with pytest.raises(ValueError, match="is not a usable run name"):
        train_workdir(str(tmp_path), _config(run_name=name), poolings=["mean"])
    assert not os.path.exists(tmp_path / "probes")


@pytest.mark.slow
def test_command_line_lists_runs(two_runs):
    result = subprocess.run(
        [sys.executable, "-m", "probing.runs", f"--workdir={two_runs}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["run", *_runs(two_runs)]
    missing = subprocess.run(
        [sys.executable, "-m", "probing.runs", "--workdir=/nonexistent/w"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert missing.returncode != 0 and len(missing.stderr.strip().splitlines()) == 1


def test_a_folder_of_no_known_pooling_is_skipped_with_a_warning(two_runs, tmp_path, caplog):
    copy = tmp_path / "w"
    shutil.copytree(two_runs, copy)
    # A folder renamed by hand: no run record, and its name is no pooling.
    os.remove(copy / "probes" / "mean" / "probe_config.json")
    os.remove(copy / "probes" / "mean" / "results.json")
    os.rename(copy / "probes" / "mean", copy / "probes" / "old")
    assert [run.run_name for run in load_runs([str(copy)])] == [_runs(two_runs)[1]]
    assert "probes/ folder(s) ['old'] name no pooling" in caplog.text


def test_api_train_returns_the_run_it_trained(two_runs, tmp_path):
    import probing.api

    copy = tmp_path / "w"
    shutil.copytree(two_runs, copy)
    small = {**_SMALL, "bootstrap_resamples": 100}
    # Beside probes/mean (2 seeds): a 3-seed run of its own folder, not probes/mean's numbers.
    results = probing.api.train(str(copy), poolings=["mean"], **{**small, "num_seeds": 3})
    assert sorted(results.metrics["seed"].unique()) == [0, 1, 2]
    assert sorted(probing.api.load(str(copy), runs=["mean"]).metrics["seed"].unique()) == [0, 1]
    hashed = _runs(two_runs)[1]
    picked = probing.api.load(str(copy), runs=[hashed])
    assert sorted(picked.metrics["seed"].unique()) == [0, 1, 2]
    # Its saved probes are that run's too (3 seeds), not probes/mean's (2).
    assert len(picked.probes("mean").seeds) == 3 and len(results.probes().seeds) == 3
    with pytest.raises(WorkdirError, match=r"no probe run\(s\) nope \(runs held: mean, mean-"):
        probing.api.load(str(copy), runs=["mean", "nope"])


def test_api_results_hold_two_runs_of_one_pooling(two_runs):
    import pandas as pd

    import probing.api

    hashed = _runs(two_runs)[1]
    results = probing.api.load(two_runs)  # default: every run
    assert results.runs == ["mean", hashed] and results.poolings == ["mean"]
    assert results.run_poolings == {"mean": "mean", hashed: "mean"}
    for frame in (results.metrics, results.curves, results.summary, results.best):
        assert sorted(frame["run"].unique()) == ["mean", hashed]
    # Each run's rows are its own files' numbers: 2 seeds in probes/mean, 3 in the other.
    for run, seeds in (("mean", [0, 1]), (hashed, [0, 1, 2])):
        on_disk = pd.read_csv(os.path.join(two_runs, "probes", run, "metrics.csv"))
        on_disk[list(RUN_COLUMNS)] = on_disk[list(RUN_COLUMNS)].fillna("").astype(str)
        mine = results.metrics.query("run == @run").reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, on_disk, check_dtype=False)
        assert sorted(mine["seed"].unique()) == seeds
        summary = results.summaries[run]
        best = results.best.set_index("run").loc[run]
        assert summary["num_seeds"] == len(seeds)
        assert (best["layer"], best["mean"]) == (
            summary["best_layer"]["layer"],
            summary["best_layer"]["mean"],
        )
        curve = results.layer_curve().query("run == @run")
        assert curve["mean"].tolist() == [
            entry["test"][results.headline_metric]["mean"] for entry in summary["layers"]
        ]
    # A third seed moves the seed-mean: the two runs' curves are not the same numbers.
    curves = results.layer_curve().pivot(index="layer", columns="run", values="mean")
    assert not curves["mean"].equals(curves[hashed])
    # Select by run name (or by pooling, for all its runs); plots get one line per run.
    only = results.select(hashed)
    assert only.runs == [hashed] and set(only.metrics["run"]) == {hashed}
    assert results.select("mean").runs == ["mean", hashed]
    assert [line.get_label() for line in results.plot_layer_curve().get_lines()] == [
        "mean",
        hashed,
    ]
    assert results.plot_loss_curves(layer=1, run=hashed).get_title() == f"{hashed}, layer 1"
    with pytest.raises(ValueError, match=r"no run or pooling nope in these Results \(runs: mean, "):
        results.select("nope")


def test_overview_names_the_folders_the_run_wrote():
    from probing.probes.overview import overview

    best = {"layer": 2, "last_layer": 4, "metric": "accuracy", "mean": 0.8, "ci95": [0.7, 0.9]}
    summary = {"best_layer": {**best, "split": "test", "selected_on": "val"}, "layers": []}
    text = overview("w", {"mean": summary, "last": summary}, 3.0, {"mean": "mean-1a2b3c4d"})
    files = text.splitlines()[text.splitlines().index("Files:") + 1 :][:2]
    assert [line.split()[0] for line in files] == ["w/probes/mean-1a2b3c4d/", "w/probes/last/"]
