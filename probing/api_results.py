"""A workdir's probe results as pandas DataFrames, with plot helpers (probing.api's `Results`).

Reads what probes/<pooling>/ holds (WORKSPACE.md) and nothing else, so it
works on any trained workdir, whether trained from Python, from the command
line or on another machine:

  metrics   metrics.csv of every pooling, concatenated (run columns first)
  curves    curves.csv likewise
  summary   summary.json flattened: one row per (pooling, layer, split, metric)
            with mean, std, n and each interval as <name>_low / <name>_high
  best      summary.json's best layer of each pooling, one row per pooling
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


@dataclasses.dataclass
class Results:
    """The probe results of one workdir (every pooling probed), as DataFrames.

    Attributes:
      workdir: its location.
      poolings: the poolings with results, in manifest order.
      summaries: pooling -> summary.json content.
      metrics, curves, summary, best: the DataFrames of the module docstring.
      headline_metric: accuracy (binary) or macro_f1 (multilabel).
      runs: pooling -> its probes/<run>/ folder where it is not probes/<pooling>/.
    """

    workdir: str
    poolings: list[str]
    summaries: dict[str, dict[str, Any]]
    metrics: pd.DataFrame
    curves: pd.DataFrame
    summary: pd.DataFrame
    best: pd.DataFrame
    headline_metric: str
    runs: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def load(
        cls,
        workdir: Workdir | str,
        poolings: Sequence[str] | None = None,
        runs: Mapping[str, str] | None = None,
    ) -> Results:
        """Reads probes/<pooling>/ of every pooling (default: all that have results).

        `runs` maps a pooling to another run folder of it, probes/<run>/
        (probing.probes.run_names; what `train` just wrote).

        Raises:
          WorkdirError: not a workdir, no results, or a results folder whose
            files do not match its results.json (a mixed or unfinished write).
        """
        wd = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
        manifest = wd.manifest()
        runs = {p: (runs or {}).get(p, p) for p in manifest["poolings"]}
        trained = [p for p in manifest["poolings"] if wd.exists(probe_file(runs[p], METRICS_CSV))]
        chosen = list(poolings) if poolings else trained
        missing = [p for p in chosen if p not in trained]
        if missing or not chosen:
            raise WorkdirError(
                f"{wd.location}: no probe results for pooling(s) "
                f"{', '.join(missing or manifest['poolings'])} (probed: {', '.join(trained) or 'none'}); "
                "train them first: probing.api.train(workdir) or "
                f"`python -m probing.train_all_layers --workdir={wd.location}`"
            )
        summaries, metrics, curves, summary_rows, best_rows = {}, [], [], [], []
        for pooling in chosen:
            run = runs[pooling]
            verify_probe_dir(wd, probes_dir(run))
            summaries[pooling] = summary = wd.read_json(probe_file(run, SUMMARY_JSON))
            metrics.append(_read_tidy(wd, pooling, METRICS_CSV, run))
            if wd.exists(probe_file(run, CURVES_CSV)):
                curves.append(_read_tidy(wd, pooling, CURVES_CSV, run))
            run = workdir_run_columns(wd, pooling, run)
            summary_rows.extend(_flatten_summary(summary, run))
            best = summary.get("best_layer") or {}
            best_rows.append(
                {
                    **run,
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
            poolings=chosen,
            summaries=summaries,
            metrics=pd.concat(metrics, ignore_index=True),
            curves=pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(),
            summary=pd.DataFrame(summary_rows),
            best=pd.DataFrame(best_rows),
            headline_metric=HEADLINE_METRIC[manifest["label_kind"]],
            runs={p: runs[p] for p in chosen if runs[p] != p},
        )

    def __repr__(self) -> str:
        best = ", ".join(
            f"{row.pooling}: layer {row.layer} ({row.metric} {row.mean:.3f})"
            for row in self.best.itertuples()
            if hasattr(row, "layer")
        )
        return f"Results({self.workdir!r}, best: {best})"

    def layer_curve(self, metric: str | None = None, split: str = SCORING_SPLIT) -> pd.DataFrame:
        """Per pooling and layer: mean of `metric` (default: headline) and its interval.

        Columns pooling, layer, mean, low, high, interval: the 95% CI of the
        image bootstrap where summary.json has one, else the fold interval,
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
        out = rows[["pooling", "layer", "mean"]].copy()
        out["low"], out["high"], out["interval"] = np.nan, np.nan, ""
        for name in ("seed_spread", "fold_interval", "ci95"):  # last present wins
            if f"{name}_low" in rows:
                has = rows[f"{name}_low"].notna()
                out.loc[has, "low"] = rows.loc[has, f"{name}_low"]
                out.loc[has, "high"] = rows.loc[has, f"{name}_high"]
                out.loc[has, "interval"] = name
        return out.reset_index(drop=True)

    def plot_layer_curve(self, metric: str | None = None, split: str = SCORING_SPLIT, ax=None):
        """Draws `metric` (default: headline) per layer, one line per pooling, with its interval.

        Returns the matplotlib Axes (`ax.figure.savefig(path)` to keep it).
        """
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        table = self.layer_curve(metric, split)
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
        for i, (pooling, rows) in enumerate(table.groupby("pooling", sort=False)):
            rows = rows.sort_values("layer")
            style, marker = _LINE_STYLES[i % len(_LINE_STYLES)]
            (line,) = ax.plot(
                rows["layer"], rows["mean"], linestyle=style, marker=marker, ms=3, label=pooling
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
        ax.legend(title="pooling")
        return ax

    def plot_loss_curves(self, layer: int | None = None, pooling: str | None = None, ax=None):
        """Train and val loss per epoch (mean over seeds) of one probe layer (default: the best)."""
        import matplotlib.pyplot as plt

        pooling = pooling or self.poolings[0]
        if layer is None:
            layer = int(self.summaries[pooling]["best_layer"]["layer"])
        if self.curves.empty:
            raise ValueError(f"{self.workdir}: no curves.csv was written")
        rows = self.curves.query("pooling == @pooling and layer == @layer")
        if rows.empty:
            raise ValueError(f"{self.workdir}: no loss curve for pooling {pooling!r} layer {layer}")
        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.5), layout="constrained")
        mean = rows.groupby(["split", "epoch"])["loss"].mean()
        for split, style in (("train", "--"), ("val", "-")):
            if split in mean.index.get_level_values(0):
                ax.plot(mean[split].index, mean[split].values, style, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss (mean over seeds)")
        ax.set_title(f"{pooling}, layer {layer}")
        ax.legend()
        return ax

    def probes(self, pooling: str | None = None) -> SavedProbes:
        """The trained probes of a pooling (default: the first), to apply to new features."""
        pooling = pooling or self.poolings[0]
        return load_probes(self.workdir, self.runs.get(pooling, pooling))
