"""The model's own answer beside its probes: "is the probe reading more than the model says?"

For a caption task extraction records the model's yes/no answer to every row
(`arrays/answer_margin`, WORKSPACE.md; probing.extraction.answers). Its
accuracy on the rows the probes were scored on is the behavioural baseline of
VLM-Lens-style comparisons: a probe above it reads information the model
holds but does not act on; a probe below it misses what the model uses.

The interval is the project's cluster bootstrap over test images
(probing.probes.bootstrap, same seed and resample count as the probes'
intervals), so the answer's interval and a layer's are computed alike.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from probing.probes.bootstrap import NUM_RESAMPLES, bootstrap, compare, percentile_interval
from probing.reporting.runs import ProbeRun
from probing.store.layout import ANSWER_MARGIN, GROUP, LABELS, SPLIT, TEST, WRITTEN
from probing.store.workdir import Workdir

# The metric the answer is scored with: a yes/no answer against binary labels.
ANSWER_METRIC = "accuracy"


@dataclasses.dataclass(frozen=True)
class ModelAnswer:
    """Accuracy of the model's yes/no answers on the probes' test rows."""

    accuracy: float
    ci95: tuple[float, float]  # cluster bootstrap over test images
    num_rows: int
    num_images: int
    answer_tokens: dict  # manifest "answer_tokens": the tokens read as yes and no
    margins: np.ndarray  # [n] the answers (yes-minus-no logits) of the scored rows
    labels: np.ndarray  # [n] their labels
    groups: np.ndarray  # [n] their image ids


# (workdir, rows scored) -> the answer's score; the bootstrap runs once per set of rows.
_CACHE: dict[tuple[str, bytes], ModelAnswer] = {}


def _scored_rows(run: ProbeRun, workdir: Workdir) -> tuple[np.ndarray, np.ndarray]:
    """(rows, image ids) the probes were scored on: predictions.npz's, else the test split."""
    if run.predictions is not None and "rows" in run.predictions:
        return np.asarray(run.predictions["rows"], np.int64), np.asarray(run.predictions["group"])
    split = workdir.read_array(SPLIT)
    written = workdir.read_array(WRITTEN).astype(bool)
    rows = np.flatnonzero((split == TEST) & written)
    return rows, workdir.read_array(GROUP)[rows]


def model_answer(run: ProbeRun) -> ModelAnswer | None:
    """The model's answer accuracy on `run`'s test rows; None when the workdir has none.

    Only binary runs of a workdir with `arrays/answer_margin` (caption tasks
    extracted since the answer was recorded) have one.
    """
    if run.label_kind != "binary" or not run.manifest.get("answer_tokens"):
        return None
    workdir = Workdir(run.workdir)
    if not workdir.array_exists(ANSWER_MARGIN):
        return None
    rows, groups = _scored_rows(run, workdir)
    key = (run.workdir, rows.tobytes())
    if key not in _CACHE:
        margins = workdir.read_array(ANSWER_MARGIN)[rows]
        labels = workdir.read_array(LABELS)[rows]
        _CACHE[key] = score_answers(margins, labels, groups, run.manifest["answer_tokens"])
    return _CACHE[key]


def score_answers(
    margins: np.ndarray, labels: np.ndarray, groups: np.ndarray, answer_tokens: dict | None = None
) -> ModelAnswer:
    """Accuracy of "yes iff margin > 0" against `labels`, with its image-bootstrap interval."""
    margins = np.asarray(margins, np.float32)
    # One "probe set" of one layer and one seed: the answer is scored exactly
    # as a probe's logits are (positive = logit > 0).
    result = bootstrap(
        [margins[None, None, :]],
        np.asarray(labels),
        np.asarray(groups),
        label_kind="binary",
        num_resamples=NUM_RESAMPLES,
        seed=0,
    )
    scored = result.sets[0]
    low, high = percentile_interval(scored.samples[ANSWER_METRIC][:, 0])
    return ModelAnswer(
        accuracy=float(scored.observed[ANSWER_METRIC][0]),
        ci95=(float(low), float(high)),
        num_rows=len(margins),
        num_images=int(result.num_images),
        answer_tokens=dict(answer_tokens or {}),
        margins=margins,
        labels=np.asarray(labels),
        groups=np.asarray(groups),
    )


def probe_minus_answer(run: ProbeRun, layer: int) -> dict | None:
    """Paired bootstrap of accuracy(probe at `layer`, seed mean) - accuracy(model's answer).

    Both are scored on the same test rows and the same image resamples, so
    the interval answers "does the probe read more than the model says?".
    None without an answer or without predictions.npz.
    """
    answer = model_answer(run)
    predictions = run.predictions
    if answer is None or predictions is None or "rows" not in predictions:
        return None
    position = {int(value): i for i, value in enumerate(predictions["layers"])}
    if layer not in position:
        return None
    result = bootstrap(
        [predictions["logits"][position[layer]][None], answer.margins[None, None, :]],
        answer.labels,
        answer.groups,
        label_kind="binary",
        num_resamples=NUM_RESAMPLES,
        seed=0,
    )
    probe, said = result.sets
    return compare(
        probe.observed[ANSWER_METRIC][0],
        said.observed[ANSWER_METRIC][0],
        probe.samples[ANSWER_METRIC][:, 0],
        said.samples[ANSWER_METRIC][:, 0],
    )


def answer_fields(run: ProbeRun, best_layer: int) -> dict[str, float]:
    """results.csv's model_answer columns, and the best layer's paired difference with
    it (NaN without an answer)."""
    fields = dict.fromkeys(
        (
            "model_answer",
            "model_answer_ci_low",
            "model_answer_ci_high",
            "peak_minus_answer",
            "peak_minus_answer_ci_low",
            "peak_minus_answer_ci_high",
        ),
        math.nan,
    )
    answer = model_answer(run)
    if answer is not None:
        fields["model_answer"] = answer.accuracy
        fields["model_answer_ci_low"], fields["model_answer_ci_high"] = answer.ci95
    versus = probe_minus_answer(run, best_layer)
    if versus is not None:
        fields["peak_minus_answer"] = versus["difference"]
        fields["peak_minus_answer_ci_low"], fields["peak_minus_answer_ci_high"] = versus["ci95"]
    return fields
