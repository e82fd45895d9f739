"""Lists the probe runs a workdir holds (probes/<run>/).

  python -m probing.runs --workdir=runs/demo/qwen_caption

Prints one line per run: its name, pooling, seeds, epochs / patience, folds,
whether its folder is complete, and when it was written. Pick runs for the
report by name with `python -m probing.report ... --runs=NAME[,NAME]`.
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import app, flags

from probing.cli import run_main
from probing.probes.catalog import format_runs, list_runs
from probing.store.workdir import Workdir

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir whose probe runs to list.")
flags.mark_flag_as_required("workdir")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    workdir = Workdir(_WORKDIR.value)
    workdir.manifest()  # Not a workdir: one clear line instead of an empty list.
    print(format_runs(list_runs(workdir), workdir.location))


if __name__ == "__main__":
    run_main(main, "probing.runs")
