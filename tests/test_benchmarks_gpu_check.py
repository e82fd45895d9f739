"""benchmarks/gpu_check.py --dry_run prints every row of its table with numbers, so the GPU check cannot rot.

The dry run is the full script at tiny sizes on the CPU (tiny checkpoints,
a small planted probe task); speed is printed, never asserted.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"^-?\d+(\.\d+)?(e[+-]?\d+)?$")

# (part, path) -> the columns that must hold a number.
EXPECTED = {
    **{
        (family, path): ("examples/s", "tokens/s", "TFLOP/s", "peak GiB", "seconds")
        for family in ("qwen2_vl", "fast_vlm")
        for path in ("naive", "engine", "engine/10ppi", "engine+prefix")
    },
    ("probe sweep", "planted data"): ("seconds",),
    ("probe sweep", "jax (cold)"): ("examples/s", "seconds"),
    ("probe sweep", "jax (warm)"): ("examples/s", "seconds"),
    ("probe sweep", "torch eager"): ("examples/s", "seconds"),
}
RATIOS = {
    ("qwen2_vl", "engine / naive"),
    ("qwen2_vl", "prefix / unshared"),
    ("fast_vlm", "engine / naive"),
    ("fast_vlm", "prefix / unshared"),
    ("probe sweep", "jax / torch"),
}


def _table(output: str) -> tuple[list[str], dict[tuple[str, str], dict[str, str]]]:
    """The final table's header and its rows as {(part, path): {column: cell}}."""
    lines = output.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("part "))
    header = [cell.strip() for cell in lines[start].split(" | ")]
    rows = {}
    for line in lines[start + 2 :]:
        cells = [cell.strip() for cell in line.split(" | ")]
        if len(cells) != len(header):
            break
        rows[(cells[0], cells[1])] = dict(zip(header, cells, strict=True))
    return header, rows


@pytest.mark.slow
def test_dry_run_prints_every_row_with_numbers():
    # Tiny matrices: threads only contend on a shared 2-core machine (conftest.single_thread).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry_run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-4000:]
    assert "missing:" not in completed.stdout, completed.stdout
    header, rows = _table(completed.stdout)
    assert header[:2] == ["part", "path"] and header[-1] == "note"
    for key, columns in EXPECTED.items():
        assert key in rows, f"no row {key}:\n{completed.stdout[-4000:]}"
        row = rows[key]
        assert "failed" not in row["note"] and "skipped" not in row["note"], row
        for column in columns:
            assert NUMBER.match(row[column]), (key, column, row)
    for key in RATIOS:
        assert key in rows, f"no row {key}"
        assert re.search(r"\d+\.\d+x", rows[key]["note"]), rows[key]
