"""Draws the probing report of one or more probed workdirs.

    python -m probing.report --workdirs=runs/demo/qwen_caption,runs/demo/fastvlm_caption \
        --out=runs/demo/report

Writes report.md, a self-contained report.html, results.csv and figures (PNG
and SVG) to --out, and prints the path of report.md. Takes seconds; the
logic lives in `probing.reporting.builder.build_report`.
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import app, flags

from probing.cli import run_main
from probing.progress import quiet_libraries
from probing.provenance import command_line
from probing.reporting.builder import build_report

_WORKDIRS = flags.DEFINE_list(
    "workdirs", None, "Comma-separated workdirs with probe results (WORKSPACE.md)."
)
_OUT = flags.DEFINE_string("out", None, "Output folder of report.md, report.html and figures.")
_POOLINGS = flags.DEFINE_list("poolings", None, "Only these poolings (default: all probed).")
_TASKS = flags.DEFINE_list("tasks", None, "Only workdirs of these tasks (default: all).")
_RUNS = flags.DEFINE_list(
    "runs", None, "Only these probe runs, by name (default: all; `python -m probing.runs`)."
)
_LAYERS = flags.DEFINE_multi_integer(
    "layers", [], "Extra layers whose loss curves are drawn (besides the best and the worst)."
)
_ALLOW_PARTIAL = flags.DEFINE_bool(
    "allow_partial", False, "Also report unfinished extractions (labelled '[partial store]')."
)
_TABLE1_CATEGORY = flags.DEFINE_string(
    "first_token_category", "", "Category of Tao's Table 1 (default person, else most frequent)."
)
flags.mark_flags_as_required(["workdirs", "out"])


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    # JAX's note about an absent TPU backend, as the other commands; reports never
    # load a Hugging Face library, so it is not imported to be quieted.
    quiet_libraries(hugging_face=False)
    path = build_report(
        _WORKDIRS.value,
        _OUT.value,
        poolings=_POOLINGS.value,
        tasks=_TASKS.value,
        run_names=_RUNS.value,
        layers=_LAYERS.value,
        allow_partial=_ALLOW_PARTIAL.value,
        command=command_line(),
        first_token_category=_TABLE1_CATEGORY.value,
    )
    print(path)


if __name__ == "__main__":
    run_main(main, "probing.report")
