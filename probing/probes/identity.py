"""Which run a row of metrics.csv or curves.csv belongs to: the run's identifying columns.

Every row of a run's tidy files repeats the run's model, task, prompt form,
pooling and run name (its folder probes/<run>/; layout.RUN_COLUMNS), so the files of many workdirs concatenate
(`pd.concat`) into one table without hand-added keys. The prompt form is
named as the report names it: the template for caption tasks, NoCat /
WithCat (and a non-default template in brackets) for category tasks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from probing.store.layout import CONFIG_JSON, RUN_COLUMNS
from probing.store.workdir import Workdir
from probing.tasks.templates import DEFAULT_TEMPLATE, TEMPLATES


def prompt_form(task: Mapping[str, Any], label_kind: str) -> str:
    """The prompt form of a run from config.json's task section ("" when unknown)."""
    if not task:
        return ""  # a workdir written by hand, without config.json
    prompt = str(task.get("prompt", "default"))
    kind = "category" if label_kind == "multilabel" else "caption"
    if prompt == "default":
        template = DEFAULT_TEMPLATE[kind]
    else:
        template = prompt if prompt in TEMPLATES else "custom"
    if kind == "caption":
        return template
    form = "WithCat" if task.get("category_prompt") == "withcat" else "NoCat"
    return form if template == DEFAULT_TEMPLATE["category"] else f"{form} ({template})"


def run_columns(
    manifest: Mapping[str, Any],
    config: Mapping[str, Any] | None,
    pooling: str,
    run: str | None = None,
) -> dict[str, str]:
    """The values of layout.RUN_COLUMNS for one run: one workdir's probes/<run>/ of
    one pooling (`run` defaults to the pooling, the first run's folder)."""
    task = (config or {}).get("task") or {}
    values = {
        "model": str((manifest.get("model") or {}).get("id", "")),
        "task": str(manifest.get("task", "")),
        "prompt": prompt_form(task if isinstance(task, dict) else {}, manifest["label_kind"]),
        "pooling": pooling,
        "run": run or pooling,
    }
    return {name: values[name] for name in RUN_COLUMNS}


def workdir_run_columns(workdir: Workdir, pooling: str, run: str | None = None) -> dict[str, str]:
    """run_columns of a workdir's run, from its manifest.json and config.json."""
    config = workdir.read_json(CONFIG_JSON) if workdir.exists(CONFIG_JSON) else None
    return run_columns(workdir.manifest(), config, pooling, run)
