"""The main job on the embedded default: both trained tiny models × both tasks.

  python -m probing.demo                   # writes runs/demo/, ends with report.md's path
  python -m probing.demo --out=/tmp/demo --families=qwen2_vl --tasks=caption

For each model family and task it runs stage 1 (`configs/demo.py:<family>,<task>`:
the tiny checkpoint of the real architecture trained on the generated world,
`trained:<family>`, on a generated COCO-format dataset of other images), stage
2 (`configs/probe.py`) and finally the report over all workdirs
(probing.pipeline.run_demo), with the untrained baseline (the same
architecture with random weights) on the caption task and Tao's WithCat
prompt beside the first family's NoCat run. About 2 minutes of CPU time
(user+sys); 4-8 minutes of wall time measured on a 2-core machine shared
with other jobs. The first run also builds the dataset. Rerunning resumes
finished extractions instead of recomputing them.

The tiny models know only their generated world (colours, shapes,
backgrounds), so the curves show what a real depth profile looks like, not
what Qwen2-VL-2B or FastVLM-0.5B know; the real models run with
configs/qwen.py and configs/fastvlm.py.
"""

from __future__ import annotations

from absl import app, flags

from probing.cli import run_main
from probing.pipeline import DEMO_FAMILIES, DEMO_TASKS, run_demo
from probing.progress import quiet_libraries

_OUT = flags.DEFINE_string("out", "runs/demo", "Directory for the workdirs and the report.")
_FAMILIES = flags.DEFINE_list("families", list(DEMO_FAMILIES), "Trained tiny model families.")
_TASKS = flags.DEFINE_list("tasks", list(DEMO_TASKS), "Probing tasks.")
_NUM_SEEDS = flags.DEFINE_integer("num_seeds", 3, "Probe seeds per layer.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from probing.probes.devices import use_every_cpu_core

    use_every_cpu_core()
    quiet_libraries()
    report = run_demo(_OUT.value, _FAMILIES.value, _TASKS.value, _NUM_SEEDS.value)
    print(f"Report: {report}")


if __name__ == "__main__":
    run_main(main, "probing.demo")
