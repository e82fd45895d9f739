"""What a workdir's probes/ holds: one row per probe run, for `python -m probing.runs`.

Each row says which run (its folder name), the pooling it probed, its seeds,
epoch budget and patience, folds, whether its folder is one complete write
(results.json, probing.store.atomic) and when it was written. Everything is
read from the run's own files, so runs written before runs had names (no
"run" record in probe_config.json) are listed too, under their pooling.
"""

from __future__ import annotations

from typing import Any

from probing.probes.run_names import run_folders, run_pooling
from probing.store.atomic import MixedResultsError, verify_probe_dir
from probing.store.layout import PROBE_CONFIG_JSON, probe_file, probes_dir
from probing.store.workdir import Workdir

COLUMNS = ("run", "pooling", "seeds", "epochs", "patience", "folds", "complete", "date")


def _state(workdir: Workdir, run: str) -> tuple[str, str]:
    """(complete / partial store / unchecked / mixed, date written)."""
    try:
        record = verify_probe_dir(workdir, probes_dir(run), deep=False)
    except MixedResultsError:
        return "mixed (re-run it)", ""
    if record is None:
        return "unchecked (no results.json)", ""
    state = "partial store" if record.get("partial_store") else "complete"
    return state, str(record.get("date", ""))


def list_runs(workdir: Workdir | str) -> list[dict[str, Any]]:
    """One dict per probe run of the workdir (keys: COLUMNS), sorted by run name."""
    workdir = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
    rows = []
    for run in run_folders(workdir):
        config_name = probe_file(run, PROBE_CONFIG_JSON)
        config = workdir.read_json(config_name) if workdir.exists(config_name) else {}
        settings = config.get("settings") or {}
        complete, date = _state(workdir, run)
        rows.append(
            {
                "run": run,
                "pooling": run_pooling(workdir, run),
                "seeds": len(config.get("seeds") or []) or settings.get("num_seeds", "?"),
                "epochs": settings.get("epochs", "?"),
                "patience": settings.get("patience", "?"),
                "folds": settings.get("folds", 0) or "-",
                "complete": complete,
                "date": date or "?",
            }
        )
    return rows


def format_runs(rows: list[dict[str, Any]], location: str) -> str:
    """The rows as an aligned text table (a line saying so when there are none)."""
    if not rows:
        return (
            f"{location} holds no probe runs; train some with "
            f"`python -m probing.train_all_layers --workdir={location}`"
        )
    table = [list(COLUMNS)] + [[str(row[c]) for c in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in table
    )
