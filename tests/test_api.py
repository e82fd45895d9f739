"""The Python API (issue 15, item 1): probing.api mirrors the commands and returns DataFrames.

Overrides are checked as the command line checks them; Results reads a
trained workdir into DataFrames and plots; the sweep gets a JAX device per
CPU core; and the README's "Use from Python" example runs as written from a
directory outside the repository (a subprocess with PYTHONPATH set to the
repository root, the same import path `pip install -e .` gives).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from probing import api
from probing.config_files import REPO_ROOT, load_config
from probing.store import layout
from probing.store.workdir import WorkdirError
from probing.testing.probed import write_probed_workdir

pd = pytest.importorskip("pandas")


def _subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = REPO_ROOT
    return env


# ------------------------------------------------------------------ configs


def test_overrides_set_fields_like_the_command_line():
    config = api._config(
        "configs/demo.py:qwen2_vl,caption",
        {"extract.batch_size": 4, "task": {"split_sizes": {"val": 7}}, "seed": 3},
        "extraction",
    )
    assert (config.extract.batch_size, config.task.split_sizes.val, config.seed) == (4, 7, 3)
    original = load_config("configs/probe.py")
    changed = api._config(original, {"num_seeds": 5, "layers": [0, 2]}, "probe")
    assert changed.num_seeds == 5 and tuple(changed.layers) == (0, 2)
    assert original.num_seeds != 5  # the caller's ConfigDict is not modified


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"num_sed": 2}, r"configs/probe.py has no field 'num_sed'; fields there: .*num_seeds"),
        ({"grid.nope": 1}, r"has no field 'grid.nope'"),
        ({"extract.batch_size": 4}, r"has no field 'extract'"),
        ({"num_seeds": "five"}, r"field num_seeds='five': .*cannot be casted"),
    ],
)
def test_bad_overrides_are_one_clear_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        api._config("configs/probe.py", overrides, "probe")


# ------------------------------------------------------------------ results


@pytest.fixture()
def probed(tmp_path):
    location = str(tmp_path / "w")
    write_probed_workdir(location, num_layers=5, num_seeds=3, poolings=("mean", "last"))
    return location


def test_results_are_dataframes_of_the_files(probed):
    results = api.load(probed)
    assert results.poolings == ["mean", "last"]
    assert list(results.metrics.columns) == [*layout.RUN_COLUMNS, *layout.METRICS_COLUMNS]
    on_disk = pd.read_csv(f"{probed}/probes/last/metrics.csv")
    np.testing.assert_array_equal(
        results.metrics.query("pooling == 'last'")["value"].to_numpy(), on_disk["value"].to_numpy()
    )
    assert set(results.curves["pooling"]) == {"mean", "last"}
    # summary: one row per (pooling, layer, split, metric) of summary.json.
    summary = results.summaries["mean"]
    row = results.summary.query("pooling == 'mean' and layer == 2 and split == 'test'")
    accuracy = row.set_index("metric").loc["accuracy"]
    expected = summary["layers"][2]["test"]["accuracy"]
    assert accuracy["mean"] == expected["mean"]
    assert [accuracy["ci95_low"], accuracy["ci95_high"]] == expected["ci95"]
    best = results.best.set_index("pooling")
    assert best.loc["mean", "layer"] == summary["best_layer"]["layer"]
    assert "best: mean: layer" in repr(results)


def test_layer_curve_and_plots(probed):
    results = api.load(probed)
    curve = results.layer_curve()
    assert list(curve.columns) == ["run", "pooling", "layer", "mean", "low", "high", "interval"]
    assert set(curve["interval"]) == {"ci95"} and (curve["low"] <= curve["mean"]).all()
    ax = results.plot_layer_curve()
    assert [line.get_label() for line in ax.get_lines()] == ["mean", "last"]
    # Told apart without colour: different line styles.
    assert len({line.get_linestyle() for line in ax.get_lines()}) == 2
    assert results.plot_loss_curves(layer=1).get_title() == "mean, layer 1"
    with pytest.raises(
        ValueError, match=r"no metric 'macro_f1' on split 'test'; known: .*accuracy"
    ):
        results.layer_curve("macro_f1")


def test_report_writes_and_refuses_unknown_options(probed, tmp_path):
    with pytest.raises(ValueError, match=r"no option\(s\) pooling; options: .*poolings"):
        api.report(probed, str(tmp_path / "r"), pooling=["mean"])
    path = api.report(probed, str(tmp_path / "r"), poolings=["last"])
    with open(path) as f:
        assert "probing.api.report(" in f.read()  # the call is recorded as it was made


def test_results_of_an_untrained_pooling_name_what_exists(probed):
    with pytest.raises(
        WorkdirError, match=r"no probe results for pooling\(s\) max .*probed: mean, last"
    ):
        api.load(probed, ["max"])


def test_results_of_files_without_run_columns_get_them(probed):
    path = f"{probed}/probes/mean/metrics.csv"
    table = pd.read_csv(path)
    table[list(layout.METRICS_COLUMNS)].to_csv(path, index=False)
    metrics = api.load(probed, ["mean"]).metrics
    assert list(metrics.columns) == [*layout.RUN_COLUMNS, *layout.METRICS_COLUMNS]
    assert set(metrics["model"]) == {"tiny:qwen2_vl"} and set(metrics["pooling"]) == {"mean"}


# ------------------------------------------------------------------ devices


def test_train_uses_a_jax_device_per_cpu_core(tmp_path):
    code = "import probing.api as p, jax; p._start_jax(False); print(jax.device_count())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) == os.cpu_count()


# ---------------------------------------------------------- README example


def _readme_example() -> str:
    with open(os.path.join(REPO_ROOT, "README.md")) as f:
        text = f.read()
    match = re.search(r"<!-- api-example -->\n```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its '<!-- api-example -->' code block"
    return match.group(1)


@pytest.mark.slow
def test_readme_example_runs_from_outside_the_repository(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(_readme_example())
    out = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    workdir = tmp_path / "runs" / "py" / "caption"
    assert (tmp_path / "runs/py/layer_curve.png").stat().st_size > 0
    assert out.stdout.strip().splitlines()[-1] == "runs/py/report/report.md"
    assert (tmp_path / "runs/py/report/report.md").exists()
    # The probe applied by hand scores what metrics.csv says it scored.
    found = re.search(r"mean pooling, layer (\d+), seed 0: test accuracy ([0-9.]+)", out.stdout)
    assert found, out.stdout
    metrics = pd.read_csv(workdir / "probes/mean/metrics.csv")
    chosen = (metrics["layer"] == int(found.group(1))) & (metrics["seed"] == 0)
    recorded = metrics[chosen & (metrics["split"] == "test") & (metrics["metric"] == "accuracy")][
        "value"
    ]
    assert float(found.group(2)) == pytest.approx(float(recorded.iloc[0]), abs=5e-5)
    # Logs reached stderr at INFO without flag parsing (a notebook shows them).
    assert "INFO" in out.stderr and "report over" in out.stderr
    # The Hub libraries' bars are off, as in the commands (a log is no terminal).
    assert "Loading weights" not in out.stderr
