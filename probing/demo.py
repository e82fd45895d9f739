"""The main job on the embedded default: both tiny models × both tasks.

  python -m probing.demo                   # writes runs/demo/, ends with report.md's path
  python -m probing.demo --out=/tmp/demo --families=qwen2_vl --tasks=caption

For each model family and task it runs stage 1 (`configs/demo.py:<family>,<task>`:
a tiny randomly initialised checkpoint of the real architecture on a generated
COCO-format dataset), stage 2 (`configs/probe.py`) and finally the report over
all workdirs. About 1 minute on a 2-core CPU once installed (the first run
also builds the tiny checkpoints and the dataset). Rerunning resumes finished
extractions instead of recomputing them.

The tiny models are random, so their probe curves show what untrained
features of these architectures carry, not what Qwen2-VL-2B or FastVLM-0.5B
know; the real models run with configs/qwen.py and configs/fastvlm.py.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from absl import app, flags, logging

from probing.cli import run_main
from probing.config_files import load_config

_OUT = flags.DEFINE_string("out", "runs/demo", "Directory for the workdirs and the report.")
_FAMILIES = flags.DEFINE_list("families", ["qwen2_vl", "fast_vlm"], "Tiny model families.")
_TASKS = flags.DEFINE_list("tasks", ["caption", "category"], "Probing tasks.")
_NUM_SEEDS = flags.DEFINE_integer("num_seeds", 3, "Probe seeds per layer.")


def run_demo(
    out_dir: str,
    families: Sequence[str] = ("qwen2_vl", "fast_vlm"),
    tasks: Sequence[str] = ("caption", "category"),
    num_seeds: int = 3,
) -> str:
    """Runs extraction, probes and report; returns the path of report.md."""
    from probing.extraction.runner import extract
    from probing.probes.train import train_workdir
    from probing.reporting.builder import build_report

    probe_config = load_config("configs/probe.py")
    with probe_config.unlocked():
        probe_config.num_seeds = num_seeds
    workdirs = []
    for family in families:
        for task in tasks:
            workdir = os.path.join(out_dir, f"{family}_{task}")
            logging.info("=== %s × %s -> %s", family, task, workdir)
            extract(load_config(f"configs/demo.py:{family},{task}"), workdir)
            train_workdir(workdir, probe_config)
            workdirs.append(workdir)
    return build_report(workdirs, os.path.join(out_dir, "report"))


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from probing.probes.devices import use_every_cpu_core

    use_every_cpu_core()
    report = run_demo(_OUT.value, _FAMILIES.value, _TASKS.value, _NUM_SEEDS.value)
    print(f"Report: {report}")


if __name__ == "__main__":
    run_main(main, "probing.demo")
