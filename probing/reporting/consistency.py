"""What a report refuses to mix: one workdir given twice, a probe folder holding files of two runs.

Errors are WorkdirErrors (`probing.reporting.runs.load_runs` turns them into
ReportErrors naming the folder and the command that rewrites it).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging

from probing.store.atomic import MixedResultsError
from probing.store.layout import (
    CURVES_CSV,
    METRICS_CSV,
    PREDICTIONS_NPZ,
    SUMMARY_JSON,
    probe_file,
    probes_dir,
)
from probing.store.workdir import Workdir


def _same_place(location: str) -> str:
    """A key equal for two spellings of one workdir (./a, a/, a symlink to it)."""
    workdir = Workdir(location)
    return os.path.realpath(workdir.local_path) if workdir.is_local else location.rstrip("/")


def dedupe_workdirs(workdirs: Sequence[str]) -> list[str]:
    """The workdirs in order, each once (a repeated one would count its runs twice)."""
    seen: dict[str, str] = {}
    for location in workdirs:
        key = _same_place(location)
        if key in seen:
            logging.warning("%s is %s, given twice; reported once", location, seen[key])
        else:
            seen[key] = location
    return list(seen.values())


def check_seeds_agree(
    workdir: Workdir,
    pooling: str,
    seeds: np.ndarray,
    curves: dict[str, Any],
    predictions: dict[str, np.ndarray] | None,
) -> None:
    """Refuses probe files of a folder without results.json that come from different runs.

    With results.json (written last, every file's sha256) `verify_probe_dir`
    settles it; a folder without it (written by hand, or before it existed)
    is checked for agreeing seeds across metrics.csv, curves.csv,
    predictions.npz and summary.json.

    Raises:
      MixedResultsError: naming the folder and the files that disagree.
    """
    directory = probes_dir(pooling)
    found: dict[str, Any] = {METRICS_CSV: sorted(int(s) for s in seeds)}
    if curves:
        text = workdir.read_bytes(probe_file(pooling, CURVES_CSV)).decode()
        found[CURVES_CSV] = sorted({int(r["seed"]) for r in csv.DictReader(io.StringIO(text))})
    if predictions is not None and "seeds" in predictions:
        found[PREDICTIONS_NPZ] = sorted(int(s) for s in predictions["seeds"])
    name = probe_file(pooling, SUMMARY_JSON)
    summary = workdir.read_json(name) if workdir.exists(name) else {}
    if "num_seeds" in summary and int(summary["num_seeds"]) != len(seeds):
        found[SUMMARY_JSON] = f"{summary['num_seeds']} seeds"
    if len({str(v) for v in found.values()}) > 1:
        listed = "; ".join(f"{file}: seeds {value}" for file, value in found.items())
        raise MixedResultsError(
            f"{workdir.location}/{directory} mixes files of different probe runs ({listed}); "
            f"re-run `python -m probing.train_all_layers --workdir={workdir.location}`"
        )
