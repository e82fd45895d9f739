"""`FigureContext` and `FigureFunction`: the one signature every report figure has.

A figure function takes the runs of one task and a `FigureContext` and returns
the figures it drew (none when the runs lack what it shows); the registry in
probing.reporting.figures lists them in report order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from probing.reporting.document import Figure
from probing.reporting.runs import ProbeRun


@dataclasses.dataclass(frozen=True)
class FigureContext:
    """What a figure needs besides the runs.

    Attributes:
      task: the task all runs share.
      figures_dir: the folder the PNG and SVG files go to.
      extra_layers: layers whose loss curves are drawn besides the best and worst.
    """

    task: str
    figures_dir: str
    extra_layers: Sequence[int] = ()


FigureFunction = Callable[[Sequence[ProbeRun], FigureContext], list[Figure]]
