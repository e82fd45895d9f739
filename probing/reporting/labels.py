"""What a run is, in words: its descriptors, its label, and the figure group it belongs to.

A run's label names the model (and baseline variant), then only what differs
between the runs it is shown with (prompt form NoCat / WithCat or the caption
template, negatives, prompt format chat / raw), then the pooling (the run's name, e.g. "mean-seeds5", where one workdir holds
several probe runs of a pooling: probing.probes.run_names): NoCat and
WithCat runs of one model read "tiny:qwen2_vl · NoCat · last" and
"tiny:qwen2_vl · WithCat · last". Two runs of one group never share a label
(the workdir's folder name is appended when everything else agrees).

Runs are grouped for figures and tables by (task, category form): macro-F1
over all 80 categories and over 3 sampled candidates are different numbers,
so they never share an axis.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from probing.tasks.templates import DEFAULT_TEMPLATE, TEMPLATES

# Descriptors that may enter a label, in label order (model first, pooling last).
VARYING = ("prompt", "negatives", "form", "format")


def _config_section(run, name: str) -> dict[str, Any]:
    section = run.config.get(name, {}) if isinstance(run.config, dict) else {}
    return section if isinstance(section, dict) else {}


def template_name(run) -> str:
    """The named template of the run's prompts ("custom" for a literal one)."""
    task = _config_section(run, "task")
    prompt = str(task.get("prompt", "default"))
    kind = "category" if run.label_kind == "multilabel" else "caption"
    if prompt == "default":
        return DEFAULT_TEMPLATE.get(kind, prompt)
    return prompt if prompt in TEMPLATES else "custom"


def category_form(run) -> str:
    """all / candidates / subset for category runs; "" for caption runs."""
    if run.label_kind != "multilabel":
        return ""
    return str(_config_section(run, "task").get("category_form", "") or "")


def prompt_format(run) -> str:
    """chat or raw, as the manifest recorded it (chat for stores that predate the field)."""
    recorded = run.manifest.get("model", {}).get("prompt_format")
    return str(recorded or _config_section(run, "model").get("prompt_format") or "chat")


def descriptors(run) -> dict[str, str]:
    """The run's descriptors by name (VARYING plus model and pooling)."""
    task = _config_section(run, "task")
    template = template_name(run)
    if run.label_kind == "multilabel":
        form = "WithCat" if task.get("category_prompt") == "withcat" else "NoCat"
        default = template == DEFAULT_TEMPLATE["category"]
        prompt = form if default else f"{form} ({template})"
        negatives = ""
    else:
        prompt = template
        negatives = f"{task['negatives']} negatives" if task.get("negatives") else ""
    return {
        "model": run.model_name,
        "prompt": prompt,
        "negatives": negatives,
        "form": category_form(run),
        "format": f"{prompt_format(run)} prompt",
        # A run's name where it is not just its pooling (probes/<pooling>-<name>/).
        "pooling": getattr(run, "run_name", run.pooling),
    }


def group_key(run) -> str:
    """The figure / table group: the task, and for category runs the category form."""
    form = category_form(run)
    return f"{run.task} ({form})" if form else run.task


def assign_labels(runs: Sequence) -> None:
    """Sets `label` and `series` (the label without the pooling) of every run, unique."""
    groups: dict[str, list] = {}
    for run in runs:
        groups.setdefault(group_key(run), []).append(run)
    for members in groups.values():
        described = [descriptors(run) for run in members]
        varying = [
            name for name in VARYING if len({d[name] for d in described}) > 1
        ]  # shown only where it tells runs apart
        for run, d in zip(members, described, strict=True):
            parts = [d["model"], *(d[name] for name in varying if d[name])]
            run.series = " · ".join(parts)
            run.label = f"{run.series} · {d['pooling']}"
        # A group's runs share its tables and figures: there, no label twice.
        labels = [run.label for run in members]
        for run, d in zip(members, described, strict=True):
            if labels.count(run.label) > 1:
                folder = os.path.basename(run.workdir.rstrip("/"))
                run.series = f"{run.series} [{folder}]"
                run.label = f"{run.series} · {d['pooling']}"
