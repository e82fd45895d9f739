"""A workdir's probe results as pandas DataFrames, with plot helpers (probing.api's `Results`).

Reads what probes/<run>/ holds (WORKSPACE.md) and nothing else, so it works
on any trained workdir, whether trained from Python, from the command line
or on another machine. A workdir may hold several runs of one pooling (other
seeds, folds, a grid: probing.probes.run_names); every table carries the run
columns (model, task, prompt, pooling, run), so runs are told apart by `run`:

  metrics   metrics.csv of every run, concatenated (run columns first)
  curves    curves.csv likewise
  summary   summary.json flattened: one row per (run, layer, split, metric)
            with mean, std, n and each interval as <name>_low / <name>_high
  best      summary.json's best layer of each run, one row per run
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from probing.probes.apply import SavedProbes, load_probes
from probing.probes.identity import workdir_run_columns
from probing.probes.run_names import run_folders, run_pooling
from probing.store.atomic import verify_probe_dir
from probing.store.layout import (
    CURVES_CSV,
    HEADLINE_METRIC,
    METRICS_CSV,
    RUN_COLUMNS,
    SCORING_SPLIT,
    SUMMARY_JSON,
    probe_file,
    probes_dir,
)
from probing.store.workdir import Workdir, WorkdirError

# Line styles and markers per pooling, so curves read apart in greyscale too.
_LINE_STYLES = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"))
# What each interval of summary.json is, in a figure's words.
_INTERVAL_WORDS = {
    "ci95": "95% CI, bootstrap over test images",
    "fold_interval": "95% interval over folds",
    "seed_spread": "seed spread (training noise)",
}


def _read_tidy(workdir: Workdir, pooling: str, name: str, run: str) -> pd.DataFrame:
    frame = pd.read_csv(io.BytesIO(workdir.read_bytes(probe_file(run, name))))
    if not set(RUN_COLUMNS) <= set(frame.columns):
        # Files written by hand or before (some of) the run columns existed: add
        # the missing ones in their place.
        values = workdir_run_columns(workdir, pooling, run)
        for position, (column, value) in enumerate(values.items()):
            if column not in frame.columns:
                frame.insert(position, column, value)
    for column in RUN_COLUMNS:
        frame[column] = frame[column].fillna("").astype(str)
    return frame


def _flatten_summary(summary: dict[str, Any], run: dict[str, str]) -> list[dict[str, Any]]:
    rows = []
    for entry in summary.get("layers", []):
        for split, metrics in entry.items():
            if not isinstance(metrics, dict):
                continue  # "layer", "beats_strongest_baseline"
            for metric, stats in metrics.items():
                if not isinstance(stats, dict):
                    continue
                row: dict[str, Any] = {
                    **run,
                    "layer": entry["layer"],
                    "split": split,
                    "metric": metric,
                }
                for key, value in stats.items():
                    if isinstance(value, list | tuple) and len(value) == 2:
                        row[f"{key}_low"], row[f"{key}_high"] = value
                    elif not isinstance(value, dict | list):
                        row[key] = value
                rows.append(row)
    return rows


def _select_runs(
    wd: Workdir, poolings: Sequence[str] | None, runs: Sequence[str] | Mapping[str, str] | None
) -> list[tuple[str, str]]:
    """(run folder, pooling) of the runs to load, in manifest pooling order, each
    pooling's first run (probes/<pooling>/) first.

    Raises:
      WorkdirError: a named run or pooling has no results (the message lists
        what the workdir holds).
    """
    manifest = wd.manifest()
    order = {p: i for i, p in enumerate(manifest["poolings"])}
    found = [(run, run_pooling(wd, run)) for run in run_folders(wd)]
    found = sorted(
        (item for item in found if item[1] in order),
        key=lambda item: (order[item[1]], item[0] != item[1], item[0]),
    )
    held = ", ".join(run for run, _ in found) or "none"
    if runs:
        # A mapping is pooling -> run folder (what probing.probes.train.resolve_runs gives).
        names = list(runs.values()) if isinstance(runs, Mapping) else list(runs)
        by_name = dict(found)
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise WorkdirError(
                f"{wd.location}: no probe run(s) {', '.join(unknown)} (runs held: {held}); "
                f"`python -m probing.runs --workdir={wd.location}` lists them"
            )
        chosen = [(n, by_name[n]) for n in dict.fromkeys(names)]
        if poolings:
            chosen = [(n, p) for n, p in chosen if p in poolings]
    else:
        chosen = [(n, p) for n, p in found if not poolings or p in poolings]
    trained = list(dict.fromkeys(p for _, p in found))
    missing = [p for p in poolings or [] if p not in trained]
    if missing or not chosen:
        raise WorkdirError(
            f"{wd.location}: no probe results for pooling(s) "
            f"{', '.join(missing or poolings or manifest['poolings'])} (probed: "
            f"{', '.join(trained) or 'none'}; runs: {held}); train them first: "
            f"probing.api.train(workdir) or "
            f"`python -m probing.train_all_layers --workdir={wd.location}`"
        )
    return chosen


@dataclasses.dataclass
class Results:
    """The probe results of one workdir (one or more runs per pooling), as DataFrames.

    Attributes:
      workdir: its location.
      runs: the run folders loaded (probes/<run>/), the default run of each
        pooling (probes/<pooling>/) before its other runs.
      run_poolings: run -> the pooling it probed.
      poolings: the poolings with results, in manifest order (each once).
      summaries: run -> summary.json content (a pooling's first run is named
        after the pooling, so summaries["mean"] is probes/mean/).
      metrics, curves, summary, best: the DataFrames of the module docstring.
      headline_metric: accuracy (binary) or macro_f1 (multilabel).
    """

    workdir: str
    runs: list[str]
    run_poolings: dict[str, str]
    poolings: list[str]
    summaries: dict[str, dict[str, Any]]
    metrics: pd.DataFrame
    curves: pd.DataFrame
    summary: pd.DataFrame
    best: pd.DataFrame
    headline_metric: str

    @classmethod
    def load(
        cls,
        workdir: Workdir | str,
        poolings: Sequence[str] | None = None,
        runs: Sequence[str] | Mapping[str, str] | None = None,
    ) -> Results:
        """Reads probes/<run>/ of every run (default: all runs of `poolings`, default all).

        `runs`: run folder names (`python -m probing.runs` lists them), or a
        mapping pooling -> run folder (what `train` just wrote).

        Raises:
          WorkdirError: not a workdir, no results, an unknown run, or a results
            folder whose files do not match its results.json (a mixed or
            unfinished write).
        """
        wd = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
        manifest = wd.manifest()
        chosen = _select_runs(wd, poolings, runs)
        summaries, metrics, curves, summary_rows, best_rows = {}, [], [], [], []
        for run, pooling in chosen:
            verify_probe_dir(wd, probes_dir(run))
            summaries[run] = summary = wd.read_json(probe_file(run, SUMMARY_JSON))
            metrics.append(_read_tidy(wd, pooling, METRICS_CSV, run))
            if wd.exists(probe_file(run, CURVES_CSV)):
                curves.append(_read_tidy(wd, pooling, CURVES_CSV, run))
            columns = workdir_run_columns(wd, pooling, run)
            summary_rows.extend(_flatten_summary(summary, columns))
            best = summary.get("best_layer") or {}
            best_rows.append(
                {
                    **columns,
                    **{k: v for k, v in best.items() if not isinstance(v, dict | list)},
                    **{
                        f"{k}_{side}": v[i]
                        for k, v in best.items()
                        if isinstance(v, list) and len(v) == 2
                        for i, side in enumerate(("low", "high"))
                    },
                }
            )
        return cls(
            workdir=wd.location,
            runs=[run for run, _ in chosen],
            run_poolings=dict(chosen),
            poolings=list(dict.fromkeys(pooling for _, pooling in chosen)),
            summaries=summaries,
            metrics=pd.concat(metrics, ignore_index=True),
            curves=pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(),
            summary=pd.DataFrame(summary_rows),
            best=pd.DataFrame(best_rows),
            headline_metric=HEADLINE_METRIC[manifest["label_kind"]],
        )

    def select(self, *runs: str) -> Results:
        """These runs only (by folder name, or a pooling for all its runs), same DataFrames."""
        wanted = [r for r in self.runs if r in runs or self.run_poolings[r] in runs]
        unknown = [name for name in runs if name not in self.runs and name not in self.poolings]
        if unknown or not wanted:
            raise ValueError(
                f"{self.workdir}: no run or pooling {', '.join(unknown or runs) or '(none given)'} "
                f"in these Results (runs: {', '.join(self.runs)})"
            )

        def keep(frame: pd.DataFrame) -> pd.DataFrame:
            if frame.empty:
                return frame
            return frame[frame["run"].isin(wanted)].reset_index(drop=True)

        return dataclasses.replace(
            self,
            runs=wanted,
            run_poolings={r: self.run_poolings[r] for r in wanted},
            poolings=list(dict.fromkeys(self.run_poolings[r] for r in wanted)),
            summaries={r: self.summaries[r] for r in wanted},
            metrics=keep(self.metrics),
            curves=keep(self.curves),
            summary=keep(self.summary),
            best=keep(self.best),
        )

    def _run(self, run: str | None, pooling: str | None) -> str:
        """The one run named by `run` or `pooling` (default: the first run)."""
        if run is not None:
            if run not in self.runs:
                raise ValueError(
                    f"{self.workdir}: no run {run!r} here (runs: {', '.join(self.runs)})"
                )
            return run
        if pooling is not None:
            for name in self.runs:
                if self.run_poolings[name] == pooling:
                    return name
            raise ValueError(
                f"{self.workdir}: no run of pooling {pooling!r} here (runs: {', '.join(self.runs)})"
            )
        return self.runs[0]

    def __repr__(self) -> str:
        best = ", ".join(
            f"{row.run}: layer {row.layer} ({row.metric} {row.mean:.3f})"
            for row in self.best.itertuples()
            if hasattr(row, "layer")
        )
        return f"Results({self.workdir!r}, best: {best})"

    def layer_curve(self, metric: str | None = None, split: str = SCORING_SPLIT) -> pd.DataFrame:
        """Per run and layer: mean of `metric` (default: headline) and its interval.

        Columns run, pooling, layer, mean, low, high, interval: the 95% CI of
        the image bootstrap where summary.json has one, else the fold interval,
        else the seed spread (named in `interval`).
        """
        metric = metric or self.headline_metric
        rows = self.summary.query("split == @split and metric == @metric")
        if rows.empty:
            known = sorted(self.summary.query("split == @split")["metric"].unique())
            raise ValueError(
                f"{self.workdir}: no metric {metric!r} on split {split!r}; known: "
                f"{', '.join(known[:20])}{' ...' if len(known) > 20 else ''}"
            )
        out = rows[["run", "pooling", "layer", "mean"]].copy()
        out["low"], out["high"], out["interval"] = np.nan, np.nan, ""
        for name in ("seed_spread", "fold_interval", "ci95"):  # last present wins
            if f"{name}_low" in rows:
                has = rows[f"{name}_low"].notna()
                out.loc[has, "low"] = rows.loc[has, f"{name}_low"]
                out.loc[has, "high"] = rows.loc[has, f"{name}_high"]
                out.loc[has, "interval"] = name
        return out.reset_index(drop=True)

    def plot_layer_curve(self, metric: str | None = None, split: str = SCORING_SPLIT, ax=None):
        """Draws `metric` (default: headline) per layer, one line per run, with its interval.

        Returns the matplotlib Axes (`ax.figure.savefig(path)` to keep it).
        """
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        table = self.layer_curve(metric, split)
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
        for i, (run, rows) in enumerate(table.groupby("run", sort=False)):
            rows = rows.sort_values("layer")
            style, marker = _LINE_STYLES[i % len(_LINE_STYLES)]
            (line,) = ax.plot(
                rows["layer"], rows["mean"], linestyle=style, marker=marker, ms=3, label=run
            )
            ax.fill_between(
                rows["layer"], rows["low"], rows["high"], color=line.get_color(), alpha=0.2
            )
        interval = "; ".join(_INTERVAL_WORDS[k] for k in sorted(set(table["interval"]) - {""}))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("layer (0 = embeddings)")
        ax.set_ylabel(f"{metric or self.headline_metric} ({split})")
        name = self.workdir.rstrip("/").rsplit("/", 1)[-1]
        ax.set_title(f"{name} (band: {interval or 'none'})", fontsize="medium")
        # A run named after its pooling is that pooling's first run.
        ax.legend(title="run" if set(self.runs) - set(self.poolings) else "pooling")
        return ax

    def plot_loss_curves(
        self, layer: int | None = None, pooling: str | None = None, ax=None, run: str | None = None
    ):
        """Train and val loss per epoch (mean over seeds) of one probe layer (default: the
        best) of one run (`run`, else the first run of `pooling`, else the first run)."""
        import matplotlib.pyplot as plt

        run = self._run(run, pooling)
        if layer is None:
            layer = int(self.summaries[run]["best_layer"]["layer"])
        if self.curves.empty:
            raise ValueError(f"{self.workdir}: no curves.csv was written")
        rows = self.curves.query("run == @run and layer == @layer")
        if rows.empty:
            raise ValueError(f"{self.workdir}: no loss curve for run {run!r} layer {layer}")
        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.5), layout="constrained")
        mean = rows.groupby(["split", "epoch"])["loss"].mean()
        for split, style in (("train", "--"), ("val", "-")):
            if split in mean.index.get_level_values(0):
                ax.plot(mean[split].index, mean[split].values, style, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss (mean over seeds)")
        ax.set_title(f"{run}, layer {layer}")
        ax.legend()
        return ax

    def probes(self, pooling: str | None = None, run: str | None = None) -> SavedProbes:
        """The trained probes of one run (`run`, else the first run of `pooling`, else the
        first run), to apply to new features."""
        return load_probes(self.workdir, self._run(run, pooling))
