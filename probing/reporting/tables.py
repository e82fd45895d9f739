"""The results table and Tao et al.'s first-generated-token frequency table.

The results table has one row per run (workdir x pooling): the best layer,
chosen on the val split and scored on the test split, its relative depth, the
peak with its 95% CI (the cluster bootstrap over test images of summary.json;
the seed interval, marked "(seeds)", for runs trained without it), the last
layer and the drop from the peak, the gain over layer 0, the selectivity at
the best layer, the strongest trivial baseline and the layers whose interval
does not lie above it, and a paired bootstrap p-value for "the peak layer
beats the last layer". That p comes from summary.json (the same resamples as
the intervals); for older runs it runs the same bootstrap
(probing.probes.bootstrap) on the test logits of predictions.npz, or
resamples probe seeds without it. Caption runs add the model's own yes/no answer on the
same test rows (probing.reporting.behaviour).

Runs trained with folds: values are means over folds, the interval is the
folds x bootstrap one (the header names the interval kinds of the rows),
and the column "best-layer wins across folds" says how often each layer was
a fold's best.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from probing.probes import bootstrap as bs
from probing.probes.metrics import CATEGORIES_LEFT_OUT, SELECTIVITY
from probing.probes.stats import CI_LABEL
from probing.reporting.behaviour import answer_fields
from probing.reporting.labels import group_key
from probing.reporting.runs import ProbeRun
from probing.reporting.statistics import (
    BOOTSTRAP,
    CI_LABELS,
    FOLDS,
    SEEDS,
    best_layer_wins,
    layer_interval,
    layers_not_above_baseline,
    mean_and_ci,
    paired_bootstrap_pvalue,
    strongest_baseline,
)
from probing.store.layout import EXAMPLES_JSONL, SCORING_SPLIT, SELECTION_SPLIT
from probing.store.workdir import Workdir

# What the bootstrap of "peak better than last" resamples: test images when
# per-example predictions exist, probe seeds (metrics.csv only) otherwise.
IMAGE_UNIT = "image"
FOLD_IMAGE_UNIT = "folds × image"
SEED_UNIT = "seed"
BOOTSTRAP_RESAMPLES = 10_000
PAIRING_NOTE = (
    f"Best layer chosen on val, values on test, mean over seeds. {CI_LABEL}: test images "
    "are resampled with all their rows (10,000 resamples), the metric is recomputed from "
    "the saved test logits and averaged over seeds; the percentile interval is shown. "
    "Intervals marked (seeds) are the Student-t interval over probe seeds of runs trained "
    "without the bootstrap: training noise only, not a confidence interval. last − peak "
    "and gain over layer 0 are differences of test means. Baseline: the strongest trivial "
    "baseline (majority, always-positive or prior guessing, fitted on train); 'layers ≤ "
    "baseline' lists the layers whose CI does not lie above it. p: one-sided paired "
    "bootstrap (add-one corrected) of 'peak layer better than last layer'. p (image): on "
    "the same image resamples as the intervals. p (seed), for workdirs without "
    "predictions.npz: the probe seeds are resampled, so with few seeds p only says whether "
    "every seed agrees. (k left out): categories without a positive in the test split, "
    "outside the macro averages. Model's answer (caption tasks): accuracy of the model's own "
    "yes/no answer (yes vs no logit at the answer position, recorded at extraction) on the "
    "same test rows, with its image-bootstrap interval, and peak − answer, the paired "
    "difference on the same image resamples: above 0, the probe reads more than the model "
    "says (probing.reporting.behaviour)."
)
FOLDS_NOTE = (
    "Runs trained with folds (the image-grouped split re-drawn at probe time): every value "
    "is the mean over folds of each fold's seed mean, each fold scored on its own test "
    "images; the interval is the folds × bootstrap one (the images of every fold's test "
    "part resampled together, every fold's metric recomputed, the fold mean taken), and p "
    "(folds × image) runs on the same resamples. Best-layer wins across folds: how often "
    "each layer was the best of a fold (chosen on that fold's val)."
)


@dataclasses.dataclass(frozen=True)
class ResultRow:
    """One line of the results table; metric values are test-split means over seeds."""

    task: str
    label: str  # the run's unique label (probing.reporting.labels)
    model: str
    pooling: str
    workdir: str
    metric: str
    num_layers: int
    num_seeds: int
    best_layer: int
    selected_on: str
    relative_depth: float
    peak: float
    peak_ci_low: float
    peak_ci_high: float
    last_layer: int
    last: float
    drop_from_peak: float
    # The test mean at the first probed layer (layer 0 unless the probes skipped it);
    # its results.csv column keeps the name "layer0" (CSV_COLUMN_NAMES).
    first: float
    gain_over_layer0: float
    selectivity_at_best: float
    p_peak_better_than_last: float
    p_unit: str = ""
    # What peak_ci_* is: statistics.BOOTSTRAP or statistics.SEEDS.
    ci_source: str = ""
    strongest_baseline: str = ""
    strongest_baseline_value: float = math.nan
    # Space-separated layer ids whose interval does not lie above the strongest baseline.
    layers_not_above_baseline: str = ""
    # Multilabel: test categories without a positive, outside the macro averages.
    categories_left_out: float = math.nan
    # With folds: their number and "layer:wins" pairs, most wins first ("" without folds).
    num_folds: int = 0
    best_layer_wins: str = ""
    # Caption tasks: the model's own yes/no answer on the same test rows
    # (probing.reporting.behaviour), with its image-bootstrap interval.
    model_answer: float = math.nan
    model_answer_ci_low: float = math.nan
    model_answer_ci_high: float = math.nan
    # The best layer's accuracy minus the answer's, paired over the same image resamples.
    peak_minus_answer: float = math.nan
    peak_minus_answer_ci_low: float = math.nan
    peak_minus_answer_ci_high: float = math.nan

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def result_row(run: ProbeRun) -> ResultRow:
    """Computes the results-table row of one run from its metrics.csv values."""
    metric = run.headline_metric
    test = run.values(SCORING_SPLIT, metric)
    selected_on = SELECTION_SPLIT if run.has(SELECTION_SPLIT, metric) else SCORING_SPLIT
    selection_mean, _, _ = mean_and_ci(run.values(selected_on, metric))
    if np.all(np.isnan(selection_mean)):
        raise ValueError(f"{run.workdir}: no {selected_on} values of {metric} in any layer")
    best = int(np.nanargmax(selection_mean))
    test_mean, test_low, test_high, ci_source = layer_interval(run, metric)
    probed_layers = np.flatnonzero(~np.isnan(test_mean))
    last = int(probed_layers[-1])
    first_layer = int(probed_layers[0])
    selectivity = math.nan
    if run.has(SCORING_SPLIT, SELECTIVITY):
        selectivity = float(mean_and_ci(run.values(SCORING_SPLIT, SELECTIVITY))[0][best])
    p_value, p_unit = math.nan, ""
    baseline = strongest_baseline(run, metric)
    left_out = math.nan
    if run.has(SCORING_SPLIT, CATEGORIES_LEFT_OUT):
        left_out = float(np.nanmean(run.values(SCORING_SPLIT, CATEGORIES_LEFT_OUT)[best]))
    if best != last:
        p_value = _summary_pvalue(run, best, last)
        if math.isnan(p_value):
            p_value = _image_bootstrap_pvalue(run, best, last)
        p_unit = FOLD_IMAGE_UNIT if run.has_folds else IMAGE_UNIT
        if math.isnan(p_value):
            p_value = paired_bootstrap_pvalue(
                test[best], test[last], num_resamples=BOOTSTRAP_RESAMPLES
            )
            p_unit = SEED_UNIT
    return ResultRow(
        task=group_key(run),
        label=run.label,
        model=run.model_name,
        pooling=run.pooling,
        workdir=run.workdir,
        metric=metric,
        num_layers=run.num_layers,
        num_seeds=len(run.seeds),
        best_layer=best,
        selected_on=selected_on,
        relative_depth=float(run.relative_depth(best)),
        peak=float(test_mean[best]),
        peak_ci_low=float(test_low[best]),
        peak_ci_high=float(test_high[best]),
        last_layer=last,
        last=float(test_mean[last]),
        drop_from_peak=float(test_mean[best] - test_mean[last]),
        first=float(test_mean[first_layer]),
        gain_over_layer0=float(test_mean[best] - test_mean[first_layer]),
        selectivity_at_best=selectivity,
        p_peak_better_than_last=p_value,
        p_unit=p_unit,
        ci_source=ci_source,
        strongest_baseline=baseline[0] if baseline else "",
        strongest_baseline_value=baseline[1] if baseline else math.nan,
        layers_not_above_baseline=" ".join(map(str, layers_not_above_baseline(run, metric))),
        categories_left_out=left_out,
        num_folds=int(run.folds.size),
        best_layer_wins=" ".join(
            f"{layer}:{count}"
            for layer, count in sorted(best_layer_wins(run).items(), key=lambda x: (-x[1], x[0]))
        ),
        **answer_fields(run, best),
    )


def _summary_pvalue(run: ProbeRun, better: int, worse: int) -> float:
    """summary.json's paired bootstrap p of best > last, when it compares these two layers."""
    best = run.summary.get("best_layer", {})
    versus = best.get("vs_last")
    if not versus or (best.get("layer"), best.get("last_layer")) != (better, worse):
        return math.nan
    return float(versus["p_a_better"])


def _image_bootstrap_pvalue(run: ProbeRun, better: int, worse: int) -> float:
    """p of "layer `better` beats layer `worse`": the bootstrap summary.json's intervals
    use (probing.probes.bootstrap, folds x bootstrap with folds) on predictions.npz's test
    logits of the two layers; NaN without predictions."""
    predictions = run.predictions
    if predictions is None:
        return math.nan
    position = {int(layer): i for i, layer in enumerate(predictions["layers"])}
    if better not in position or worse not in position:
        return math.nan
    two = [position[better], position[worse]]
    result = bs.bootstrap(
        [np.asarray(predictions["logits"])[two]],
        predictions["labels"],
        predictions["group"],
        mask=predictions.get("mask"),
        label_kind=run.label_kind,
        num_resamples=BOOTSTRAP_RESAMPLES,
        fold=predictions.get("fold"),
    )
    return bs.layer_difference(result, run.headline_metric, 0, 1)["p_a_better"]


# results.csv columns named otherwise than their ResultRow field.
CSV_COLUMN_NAMES = {"first": "layer0"}


def results_csv(rows: Sequence[ResultRow]) -> str:
    """The results table as CSV text, full precision, NaN written as empty."""
    buffer = io.StringIO()
    fields = [field.name for field in dataclasses.fields(ResultRow)]
    columns = [CSV_COLUMN_NAMES.get(field, field) for field in fields]
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        values = row.as_dict()
        writer.writerow(
            {
                CSV_COLUMN_NAMES.get(k, k): "" if isinstance(v, float) and math.isnan(v) else v
                for k, v in values.items()
            }
        )
    return buffer.getvalue()


def _number(value: float, digits: int = 3, signed: bool = False) -> str:
    if math.isnan(value):
        return "—"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


RESULTS_HEADER = (
    "run",
    "metric",
    "best layer",
    "best-layer wins across folds",
    "rel. depth",
    f"peak [{CI_LABEL}]",
    "last layer",
    "last − peak",
    "gain over layer 0",
    "selectivity",
    "strongest baseline",
    "layers ≤ baseline",
    "model's answer",
    "p (peak > last)",
)


def results_header(rows: Sequence[ResultRow]) -> tuple[str, ...]:
    """RESULTS_HEADER with the peak column naming the interval kinds of these rows."""
    sources = sorted({row.ci_source for row in rows if row.ci_source and row.ci_source != SEEDS})
    label = "; ".join(CI_LABELS[source] for source in sources or [BOOTSTRAP])
    return tuple(f"peak [{label}]" if h.startswith("peak [") else h for h in RESULTS_HEADER)


def _wins_cell(row: ResultRow) -> str:
    if not row.num_folds:
        return "—"
    pairs = (pair.split(":") for pair in row.best_layer_wins.split())
    return ", ".join(f"L{layer}: {count}/{row.num_folds}" for layer, count in pairs)


def results_cells(rows: Sequence[ResultRow]) -> list[list[str]]:
    """Display cells of the results table (RESULTS_HEADER columns)."""
    cells = []
    for row in rows:
        peak = f"{_number(row.peak)} [{_number(row.peak_ci_low)}, {_number(row.peak_ci_high)}]"
        if row.ci_source in (SEEDS, FOLDS):
            peak += f" ({row.ci_source})"
        baseline = ""
        if row.strongest_baseline:
            name = row.strongest_baseline.replace("_", "-")
            baseline = f"{_number(row.strongest_baseline_value)} ({name})"
        p_value = "best is last" if row.best_layer == row.last_layer else ""
        if not math.isnan(row.p_peak_better_than_last):
            p_value = f"{_number(row.p_peak_better_than_last, digits=4)} ({row.p_unit})"
        cells.append(
            [
                row.label,
                row.metric
                if math.isnan(row.categories_left_out)
                else f"{row.metric} ({row.categories_left_out:g} left out)",
                f"{row.best_layer} / {row.num_layers - 1}",
                _wins_cell(row),
                _number(row.relative_depth, 2),
                peak,
                f"{_number(row.last)} (L{row.last_layer})",
                _number(-row.drop_from_peak, signed=True),
                _number(row.gain_over_layer0, signed=True),
                _number(row.selectivity_at_best),
                baseline,
                row.layers_not_above_baseline or ("none" if baseline else ""),
                _answer(row),
                p_value,
            ]
        )
    return cells


def _answer(row: ResultRow) -> str:
    if math.isnan(row.model_answer):
        return ""
    low, high = row.model_answer_ci_low, row.model_answer_ci_high
    cell = f"{_number(row.model_answer)} [{_number(low)}, {_number(high)}]"
    if not math.isnan(row.peak_minus_answer):
        low, high = row.peak_minus_answer_ci_low, row.peak_minus_answer_ci_high
        difference = _number(row.peak_minus_answer, signed=True)
        cell += f"; peak − answer {difference} [{_number(low, signed=True)}, {_number(high, signed=True)}]"
    return cell


def baseline_cells(runs: Sequence[ProbeRun]) -> list[list[str]]:
    """Results-table rows of the prompt-text baselines, one per extraction run (series).

    The score sits in the peak column; there are no layers, so the rest is "—".
    The ROC-AUC goes in the selectivity column's place in parentheses.
    """
    cells, seen = [], set()
    for run in runs:
        baseline = run.prompt_baseline
        if baseline is None or run.series in seen:
            continue
        seen.add(run.series)
        score = baseline.metrics.get(run.headline_metric, math.nan)
        auc = baseline.metrics.get("roc_auc", math.nan)
        cells.append(
            [
                f"{run.series} · text-only baseline ({baseline.reads})",
                run.headline_metric,
                "—",
                "—",
                "—",
                f"{_number(score)} (ROC-AUC {_number(auc)})",
                "—",
                "—",
                "—",
                "—",
                "",
            ]
        )
    return cells


BASELINE_NOTE = (
    "Text-only baseline rows: a logistic regression on what the prompt text varies with "
    "(the categories a WithCat prompt lists, none for NoCat; a caption's words), fitted on "
    "the train rows and scored on the test rows with the probes' metric, no image and no "
    "model: what a probe could score from the prompt alone (probing.reporting.baselines)."
)


# ------------------------------------------------------------- first tokens
FIRST_TOKEN_FIELD = "first_token_topk"


@dataclasses.dataclass(frozen=True)
class FirstTokenTable:
    """Top generated first tokens per group of examples (Tao et al., Table 1).

    Attributes:
      groups: group name ("positive", "negative" or "all") -> [(token,
        frequency)] of the `top_k` most frequent first tokens, then
        ("OTHERS", frequency of all the rest).
      counts: group name -> number of examples in it.
    """

    groups: dict[str, list[tuple[str, float]]]
    counts: dict[str, int]


def first_token_table(examples: Sequence[dict[str, Any]], top_k: int = 10) -> FirstTokenTable:
    """Frequencies of the greedy first generated token, split by example label.

    The greedy token is the first entry of each row's "first_token_topk".
    Rows with a binary "label" are split into positive and negative examples
    as in Tao et al.'s Table 1; other rows form one group "all".
    """
    tokens_by_group: dict[str, list[str]] = collections.defaultdict(list)
    for example in examples:
        topk = example.get(FIRST_TOKEN_FIELD)
        if not topk:
            continue
        token = str(topk[0][0])
        label = example.get("label")
        group = {1: "positive", 0: "negative"}.get(label, "all") if label is not None else "all"
        tokens_by_group[group].append(token)
    groups: dict[str, list[tuple[str, float]]] = {}
    counts: dict[str, int] = {}
    for group in sorted(tokens_by_group, key=("positive", "negative", "all").index):
        tokens = tokens_by_group[group]
        counter = collections.Counter(tokens)
        top = counter.most_common(top_k)
        frequencies = [(token, count / len(tokens)) for token, count in top]
        others = len(tokens) - sum(count for _, count in top)
        frequencies.append(("OTHERS", others / len(tokens)))
        groups[group] = frequencies
        counts[group] = len(tokens)
    return FirstTokenTable(groups=groups, counts=counts)


def load_first_token_table(location: str, top_k: int = 10) -> FirstTokenTable | None:
    """The first-token table of a workdir, or None when it recorded no first tokens."""
    workdir = Workdir(location)
    if not workdir.exists(EXAMPLES_JSONL):
        return None
    table = first_token_table(workdir.read_jsonl(EXAMPLES_JSONL), top_k)
    return table if table.groups else None


def first_token_cells(table: FirstTokenTable) -> tuple[list[str], list[list[str]]]:
    """Header and cells: a (token, frequency) column pair per group, like Table 1."""
    names = list(table.groups)
    header = ["rank"]
    for name in names:
        header += [f"{name} (n={table.counts[name]})", "freq."]
    num_ranked = max(len(entries) - 1 for entries in table.groups.values())
    cells = []
    for rank in range(num_ranked):
        line = [str(rank + 1)]
        for name in names:
            ranked = table.groups[name][:-1]
            line += [ranked[rank][0], f"{ranked[rank][1]:.4f}"] if rank < len(ranked) else ["", ""]
        cells.append(line)
    # OTHERS (everything below the top k) closes every group on one line.
    others = [""]
    for name in names:
        token, frequency = table.groups[name][-1]
        others += [token, f"{frequency:.4f}"]
    cells.append(others)
    return header, cells
