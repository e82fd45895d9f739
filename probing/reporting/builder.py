"""`build_report`: figures, tables, report.md and report.html for workdirs.

It loads the runs, writes the results table, draws every figure of the
registry probing.reporting.figures.FIGURES per task, and renders the document.
A run whose summary.json lists probes that did not converge (best epoch at
the epoch budget, or stopped by the budget while still improving) gets a
warning under the results table naming them.

Output folder layout::

    <out>/report.md        links figures/*.png
    <out>/report.html      self-contained, figures embedded
    <out>/results.csv      the results table at full precision
    <out>/first_tokens_<workdir>.csv   when a workdir recorded first tokens
    <out>/figures/*.png, *.svg
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import shlex
from collections.abc import Sequence
from typing import Any

from absl import logging

from probing.probes.stats import CI_LABEL, FOLD_CI_LABEL
from probing.progress import Progress
from probing.provenance import process_command
from probing.reporting import document, tables
from probing.reporting.document import Block, Code, FileLink, Heading, Paragraph, Table
from probing.reporting.figures import FIGURES, FigureContext
from probing.reporting.figures.style import file_stem
from probing.reporting.first_tokens import table1_blocks
from probing.reporting.runs import (
    ProbeRun,
    ReportError,
    dedupe_workdirs,
    group_runs,
    load_runs,
)
from probing.store.layout import PROBE_CONFIG_JSON, PROBE_ENVIRONMENT, probe_file


def _report_command(workdirs: Sequence[str], out_dir: str, **options: Any) -> str:
    parts = [
        "python",
        "-m",
        "probing.report",
        f"--workdirs={','.join(workdirs)}",
        f"--out={out_dir}",
    ]
    for name, value in options.items():
        if value:
            parts.append(f"--{name}={','.join(map(str, value))}")
    return shlex.join(parts)


def _probe_environment(run: ProbeRun) -> dict[str, Any]:
    """probe_config.json's record of how the run's probes were trained ({} if none)."""
    path = os.path.join(run.workdir, probe_file(run.pooling, PROBE_CONFIG_JSON))
    try:
        with open(path) as f:
            return json.load(f).get(PROBE_ENVIRONMENT) or {}
    except (OSError, ValueError):
        return {}


def _recorded_commands(run: ProbeRun) -> list[str]:
    """The extraction command manifest.json recorded, then the probe training command
    probe_config.json recorded, each as run (overrides included); a generic form
    marked as not recorded for workdirs written before they were recorded."""
    extraction = run.manifest.get("command") or (
        f"python -m probing.extract --config=<config> --workdir={run.workdir}"
        "   # not recorded in the workdir"
    )
    training = _probe_environment(run).get("command") or (
        f"python -m probing.train_all_layers --workdir={run.workdir}"
        "   # not recorded in the workdir"
    )
    return [str(extraction), str(training)]


def _recorded(value: Any) -> str:
    return "not recorded" if value is None or value == "" else str(value)


def _environment_blocks(runs: Sequence[ProbeRun]) -> list[Block]:
    """The environment of every workdir in two tables: the fields all workdirs share
    (versions, hardware: one value each), then the fields that differ, one column per
    workdir. One 30-row table per workdir repeated the shared rows page after page."""
    by_workdir: dict[str, dict[str, str]] = {}
    for run in runs:
        if run.workdir not in by_workdir:
            by_workdir[run.workdir] = dict(_environment_rows(run))
    fields = list(dict.fromkeys(f for values in by_workdir.values() for f in values))
    envs = list(by_workdir.values())
    shared = [
        [field, envs[0][field]]
        for field in fields
        if all(field in env and env[field] == envs[0][field] for env in envs)
    ]
    differing = [field for field in fields if field not in {row[0] for row in shared}]
    names = [os.path.basename(w.rstrip("/")) or w for w in by_workdir]
    if len(set(names)) < len(names):
        names = [f"workdir {i + 1}" for i in range(len(names))]
    blocks: list[Block] = []
    if shared:
        label = "value (every workdir)" if len(envs) > 1 else "value"
        blocks.append(Table(("field", label), shared))
    if differing:
        blocks.append(
            Table(
                ("field", *names),
                [[field, *(env.get(field, "—") for env in envs)] for field in differing],
            )
        )
    return blocks


def _environment_rows(run: ProbeRun) -> list[list[str]]:
    """Environment of one extraction + probe run, as (field, value) rows."""
    manifest = run.manifest
    model = manifest.get("model", {})
    rows = [
        ["workdir", run.workdir],
        ["model id", _recorded(model.get("id"))],
        ["revision", _recorded(model.get("revision"))],
        ["family", _recorded(model.get("family"))],
        ["resolved revision", _recorded(model.get("resolved_revision"))],
        ["random init", str(bool(model.get("random_init", False))).lower()],
        ["prompt format", _recorded(model.get("prompt_format"))],
        ["task", run.task],
        ["label kind", run.label_kind],
        ["prompt template", _recorded(manifest.get("prompt_template"))],
        ["examples", _recorded(manifest.get("num_examples"))],
        ["hidden states (L+1)", str(run.num_layers)],
        ["model dtype", _recorded(manifest.get("dtype"))],
        ["feature dtype", _recorded(manifest.get("feature_dtype"))],
    ]
    composition = manifest.get("token_composition", {}).get("mean_tokens")
    if composition:
        rows.append(
            ["tokens per row (mean)", ", ".join(f"{k} {v:g}" for k, v in composition.items())]
        )
    if manifest.get("hardware"):
        rows.append(["extraction hardware", str(manifest["hardware"])])
    rows.append(["date", _recorded(manifest.get("date"))])
    for library, version in sorted(manifest.get("library_versions", {}).items()):
        rows.append([library, str(version)])
    probes = _probe_environment(run)
    if probes:
        devices = probes.get("devices", {})
        rows.append(
            [
                "probe devices",
                f"{devices.get('count', '?')} x {', '.join(devices.get('kinds', []))} "
                f"({devices.get('backend', '?')}, {devices.get('process_count', 1)} process(es))",
            ]
        )
        rows.append(["probe training date", _recorded(probes.get("date"))])
        for library, version in sorted(probes.get("library_versions", {}).items()):
            rows.append([f"{library} (probes)", str(version)])
    return rows


def _first_token_blocks(runs: Sequence[ProbeRun], out_dir: str) -> list[Block]:
    blocks: list[Block] = []
    seen = set()
    for run in runs:
        # Category workdirs get Tao's Table 1 by category presence (table1_blocks).
        if run.workdir in seen or run.label_kind != "binary":
            continue
        seen.add(run.workdir)
        table = tables.load_first_token_table(run.workdir)
        if table is None:
            continue
        header, cells = tables.first_token_cells(table)
        blocks.append(Heading(f"{run.model_name}, task {run.task}", 3))
        blocks.append(
            Table(
                header,
                cells,
                note="Greedy first generated token (first entry of first_token_topk) per "
                "example, as a share of the group; OTHERS sums every token below the top 10.",
            )
        )
        name = file_stem("first_tokens", os.path.basename(run.workdir.rstrip("/")))
        with open(os.path.join(out_dir, name + ".csv"), "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(cells)
    if blocks:
        blocks.insert(0, Heading("First generated tokens (Tao et al., Table 1)"))
    return blocks


def _convergence_blocks(runs: Sequence[ProbeRun]) -> list[Block]:
    """A warning per run with probes that did not converge (summary.json["convergence"])."""
    lines = []
    for run in runs:
        convergence = run.summary.get("convergence") or {}
        flagged = convergence.get("not_converged_probes") or []
        if not convergence.get("not_converged"):
            continue
        layers = sorted({int(p["layer"]) for p in flagged})
        at_budget = sum(int(p["best_epoch"]) == int(p["epochs_trained"]) for p in flagged)
        lines.append(
            f"{run.label}: {convergence['not_converged']} of {convergence.get('probes', '?')} "
            f"probes did not converge within max_epochs = {convergence.get('max_epochs')} "
            f"(patience {convergence.get('patience')}): {at_budget} had their best val loss "
            f"at their last epoch; layers {', '.join(map(str, layers))}. Their numbers may "
            "change with more epochs: raise --config.epochs and re-run "
            f"`python -m probing.train_all_layers --workdir={run.workdir}` "
            f'(the list: probes/{run.run_name}/summary.json, "convergence").'
        )
    if not lines:
        return []
    # A paragraph per run: one block of text for several runs did not read.
    return [Paragraph("WARNING, probes that did not converge:"), *map(Paragraph, lines)]


def build_report(
    workdirs: Sequence[str],
    out_dir: str,
    *,
    poolings: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    run_names: Sequence[str] | None = None,
    layers: Sequence[int] = (),
    command: str | None = None,
    allow_partial: bool = False,
    first_token_category: str = "",
) -> str:
    """Writes the report of `workdirs` to `out_dir` and returns the path of report.md.

    Args:
      workdirs: workdir locations with probes/<pooling>/metrics.csv (WORKSPACE.md).
      out_dir: output folder (created; existing report files are replaced).
      poolings: only these poolings (default: all probed ones).
      tasks: only workdirs of these tasks (default: all).
      run_names: only these probe runs, by name (`python -m probing.runs` lists them).
      layers: extra layers whose loss curves are drawn, besides best and worst.
      command: the command line to record; default: the equivalent
        `python -m probing.report` invocation, with what ran it (`# run by: ...`).
      allow_partial: also report workdirs whose extraction has not finished
        (their runs are labelled "[partial store]").
      first_token_category: the category of Tao's Table 1 (default person, or
        the most frequent category of data without people).

    Raises:
      ReportError: no workdirs, a workdir without probe results, an empty
        selection, or one task name used with different label kinds.
    """
    workdirs = dedupe_workdirs(workdirs)
    runs = load_runs(workdirs, poolings, tasks, allow_partial, run_names)
    by_task = group_runs(runs)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ReportError(f"--out={out_dir} is a file; pass a folder for the report")
    os.makedirs(out_dir, exist_ok=True)
    figures_dir = os.path.join(out_dir, "figures")
    if command is None:
        # Called from Python (a notebook, probing.demo): the equivalent command, and what ran it.
        equivalent = _report_command(
            workdirs, out_dir, poolings=poolings, tasks=tasks, runs=run_names, layers=layers
        )
        command = f"{equivalent}  # run by: {process_command()}"
    logging.info("report over %d run(s) in %d task(s) -> %s", len(runs), len(by_task), out_dir)

    rows = [tables.result_row(run) for run in runs]
    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
        f.write(tables.results_csv(rows))

    generated = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    blocks: list[Block] = [
        Heading("Probing report", 1),
        Paragraph(
            f"{len(runs)} probe run(s) (workdir × pooling) from {len(set(workdirs))} "
            f"workdir(s), tasks: {', '.join(by_task)}. Generated {generated}. Metrics are "
            "test-split means over probe seeds; the best layer is chosen on the val split. "
            f"Intervals: {CI_LABEL} (all rows of an image resampled together, from the "
            "saved test logits)"
            + (
                f"; for runs trained with folds, {FOLD_CI_LABEL} (values are means over folds)"
                if any(run.has_folds for run in runs)
                else ""
            )
            + "; the spread over probe seeds is training noise and is not "
            "used as an interval. Layer 0 is the embedding output; relative depth is layer / "
            "last layer."
        ),
        Heading("Results"),
    ]
    for task in by_task:
        task_rows = [row for row in rows if row.task == task]
        blocks.append(Heading(f"Task {task}", 3))
        baselines = tables.baseline_cells(by_task[task])
        note = tables.PAIRING_NOTE + (" " + tables.BASELINE_NOTE if baselines else "")
        if any(row.num_folds for row in task_rows):
            note += " " + tables.FOLDS_NOTE
        blocks.append(
            Table(
                tables.results_header(task_rows), tables.results_cells(task_rows) + baselines, note
            )
        )
    blocks.append(FileLink("Full-precision values:", os.path.join(out_dir, "results.csv")))
    blocks.extend(_convergence_blocks(runs))

    progress = Progress(
        "report figures", len(by_task) * len(FIGURES), unit="figure kinds", uneven=True
    )
    for task, members in by_task.items():
        logging.info("figures of task %s (%d run(s))", task, len(members))
        blocks.append(Heading(f"Figures: task {task}"))
        context = FigureContext(task=task, figures_dir=figures_dir, extra_layers=layers)
        for figure in FIGURES:
            blocks.extend(figure(members, context))
            progress.update(1)
    progress.close()

    blocks.extend(_first_token_blocks(runs, out_dir))
    blocks.extend(table1_blocks(runs, out_dir, first_token_category))

    blocks.append(Heading("Environment"))
    blocks.extend(_environment_blocks(runs))

    blocks.append(Heading("Commands"))
    command_lines = []
    for run in runs:  # a workdir's extraction once; each probe run's training once
        command_lines.extend(c for c in _recorded_commands(run) if c not in command_lines)
    command_lines.append(command)
    blocks.append(Code("\n".join(command_lines)))

    markdown_path = os.path.join(out_dir, "report.md")
    with open(markdown_path, "w") as f:
        f.write(document.to_markdown(blocks, out_dir))
    with open(os.path.join(out_dir, "report.html"), "w") as f:
        f.write(document.to_html(blocks, title="Probing report", base_dir=out_dir))
    logging.info("wrote %s", markdown_path)
    return markdown_path
