"""The whole job in one call: extraction, probes and report over several extraction configs.

`probing.demo` runs it on the embedded default; notebooks and scripts can run
it on their own configs. Each stage is the same function its entry point
calls (probing.extract, probing.train_all_layers, probing.report).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from absl import logging

from probing.config_files import load_config
from probing.provenance import recorded_as, stage_command

DEMO_FAMILIES = ("qwen2_vl", "fast_vlm")
DEMO_TASKS = ("caption", "category")


def run_pipeline(
    extract_specs: dict[str, str],
    out_dir: str,
    probe_spec: str = "configs/probe.py",
    report_options: dict | None = None,
    **overrides,
) -> str:
    """Extracts, probes and reports; returns the path of report.md.

    Args:
      extract_specs: workdir name (under out_dir) -> extraction config spec
        (`configs/<file>.py[:arg]`). A finished workdir is resumed, not redone.
      out_dir: folder of the workdirs and of report/.
      probe_spec: the probe config spec; `overrides` replace its fields.
      report_options: keyword arguments of build_report (e.g. first_token_category).
    """
    from probing.extraction.runner import extract
    from probing.probes.train import train_workdir
    from probing.reporting.builder import build_report

    probe_config = load_config(probe_spec)
    unknown = sorted(set(overrides) - set(probe_config.keys()))
    if unknown:
        raise ValueError(f"{probe_spec} has no field(s) {', '.join(unknown)}")
    probe_config.update(overrides)
    train_args = [f"--config={probe_spec}"] * (probe_spec != "configs/probe.py")
    train_args += [f"--config.{name}={value}" for name, value in overrides.items()]
    workdirs = []
    for name, spec in extract_specs.items():
        workdir = os.path.join(out_dir, name)
        logging.info("=== %s -> %s", spec, workdir)
        # The stand-alone commands each stage equals, recorded in the workdir for the report.
        with recorded_as(
            stage_command("probing.extract", f"--config={spec}", f"--workdir={workdir}")
        ):
            extract(load_config(spec), workdir)
        with recorded_as(
            stage_command("probing.train_all_layers", *train_args, f"--workdir={workdir}")
        ):
            train_workdir(workdir, probe_config)
        workdirs.append(workdir)
    return build_report(workdirs, os.path.join(out_dir, "report"), **(report_options or {}))


def run_demo(
    out_dir: str,
    families: Sequence[str] = DEMO_FAMILIES,
    tasks: Sequence[str] = DEMO_TASKS,
    num_seeds: int = 3,
) -> str:
    """The embedded default: every trained tiny family × task; returns the path of report.md.

    Beside them the untrained baseline (the first family's architecture with
    random weights) on the caption task, and Tao's WithCat category prompt.
    """
    specs = {
        f"{family}_{task}": f"configs/demo.py:{family},{task}"
        for family in families
        for task in tasks
    }
    if "caption" in tasks and families:
        # The untrained baseline: what the architecture and the processor give
        # without training, drawn in the same figure below the trained model.
        specs[f"{families[0]}_caption_untrained"] = (
            f"configs/demo.py:{families[0]},caption,untrained"
        )
    if "category" in tasks and families:
        # Tao's WithCat beside the first family's NoCat run: its Table 1 and the
        # text-only baseline of the listed categories appear in the report.
        specs[f"{families[0]}_category_withcat"] = f"configs/demo.py:{families[0]},category,withcat"
    # The generated data has no person: Table 1 reads its most common shape.
    options = {"first_token_category": "circle"}
    return run_pipeline(specs, out_dir, report_options=options, num_seeds=num_seeds)
