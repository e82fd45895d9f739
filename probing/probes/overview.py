"""The one-screen summary train_all_layers prints when it ends: the best layer per pooling.

Each line gives the pooling, the headline metric of its best layer (chosen on
val, scored on test) with the image-bootstrap interval, the last layer for
comparison, and then where the files are, so a researcher sees the result
without opening summary.json.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from probing.store.layout import probes_dir


def _number(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"


def _interval(ci: Any) -> str:
    if not ci or any(v is None for v in ci):
        return "no interval"
    return f"95% CI [{float(ci[0]):.3f}, {float(ci[1]):.3f}]"


def overview(
    location: str,
    summaries: Mapping[str, Mapping[str, Any]],
    seconds: float,
    runs: Mapping[str, str] | None = None,
) -> str:
    """The summary text of one train_all_layers run.

    Args:
      location: the workdir.
      summaries: pooling -> its summary.json content.
      seconds: wall time of the run.
      runs: pooling -> the probes/<run>/ folder it wrote, where not probes/<pooling>/
        (probing.probes.run_names: a run beside an earlier one of other settings).
    """
    runs = runs or {}
    lines = [f"Probes of {location} trained in {seconds:.0f}s:"]
    width = max((len(name) for name in summaries), default=0)
    for name, summary in summaries.items():
        best = summary["best_layer"]
        last = summary["layers"][-1] if summary.get("layers") else None
        last_mean = None
        if last is not None:
            last_mean = last.get(best["split"], {}).get(best["metric"], {}).get("mean")
        lines.append(
            f"  {name:<{width}}  best layer {best['layer']:>2} of {best['last_layer']}: "
            f"{best['metric']} {_number(best['mean'])} ({_interval(best.get('ci95'))}, "
            f"{best['split']}; chosen on {best['selected_on']}); last layer {_number(last_mean)}"
        )
    lines.append("Files:")
    for name in summaries:
        folder = probes_dir(runs.get(name, name))
        lines.append(f"  {location}/{folder}/  (metrics.csv, summary.json, curves.csv)")
    lines.append(f"Report: python -m probing.report --workdirs={location} --out={location}/report")
    return "\n".join(lines)
