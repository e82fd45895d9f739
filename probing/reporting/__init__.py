"""The report stage: figures, tables and documents from probed workdirs.

`probing.report` is the command line; the pieces live here:

* `runs` reads probe results (metrics.csv, curves.csv, summary.json) of one or
  more workdirs into `ProbeRun` objects, one per workdir x pooling;
* `statistics` holds the seed statistics (Student-t CI, paired bootstrap);
* `tables` builds the results table and Tao et al.'s first-token table;
* `figures` is the registry of figures (`FIGURES`), drawn with matplotlib (Agg backend);
* `document` renders report.md and a self-contained report.html;
* `builder` ties them together in `build_report`.

probing.testing.probed fabricates probed workdirs for tests and examples.
"""

from probing.reporting.builder import build_report
from probing.reporting.runs import ReportError

__all__ = ["ReportError", "build_report"]
