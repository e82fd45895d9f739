"""Recorded commands: what ran (overrides included) reaches probe_config.json and the report."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pytest

from probing import provenance
from probing.reporting.builder import build_report
from probing.store.layout import PROBE_CONFIG_JSON, PROBE_ENVIRONMENT, probe_file
from probing.testing.planted import planted_arrays, write_workdir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_stage_inside_another_program_records_its_equivalent(monkeypatch):
    monkeypatch.setattr(sys, "orig_argv", ["python", "-m", "probing.demo", "--out=/tmp/d"])
    assert provenance.command_line() == "python -m probing.demo --out=/tmp/d"
    equivalent = provenance.stage_command("probing.extract", "--config=configs/demo.py:a,b")
    with provenance.recorded_as(equivalent):
        assert provenance.command_line() == (
            "python -m probing.extract --config=configs/demo.py:a,b"
            "  # run by: python -m probing.demo --out=/tmp/d"
        )
    assert provenance.command_line() == "python -m probing.demo --out=/tmp/d"


@pytest.mark.slow
def test_train_command_with_overrides_appears_verbatim_in_the_report(tmp_path):
    location = str(tmp_path / "wd")
    write_workdir(location, planted_arrays(120, 3, 4, [1], strength=4.0, seed=2))
    argv = [
        sys.executable,
        "-m",
        "probing.train_all_layers",
        f"--workdir={location}",
        "--config.num_seeds=2",
        "--config.epochs=3",
        "--config.bootstrap_resamples=50",
    ]
    run = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    with open(os.path.join(location, probe_file("mean", PROBE_CONFIG_JSON))) as f:
        environment = json.load(f)[PROBE_ENVIRONMENT]
    assert environment["command"] == shlex.join(argv)
    assert {"jax", "flax", "optax"} <= set(environment["library_versions"])
    assert environment["devices"]["backend"] == "cpu" and environment["devices"]["count"] >= 1

    report = build_report([location], str(tmp_path / "report"))
    with open(report) as f:
        text = f.read()
    commands = text.split("## Commands", 1)[1]
    assert shlex.join(argv) in commands
    assert "flax (probes)" in text and "probe devices" in text
