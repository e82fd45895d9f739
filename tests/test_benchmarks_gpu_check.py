"""benchmarks/gpu_check.sh --dry_run prints every row of its table with numbers, so the GPU check cannot rot.

The dry run is the full script, through the wrapper the lent machine runs, at
tiny sizes on the CPU (tiny checkpoints, a small planted probe task); speed is
printed, never asserted. The full-size models the GPU run builds are checked
here too, on the meta device (no memory, no arithmetic): the configs written
in benchmarks/extract_throughput.py must give the published parameter counts
and the image-token counts of the real processors.
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
def test_dry_run_prints_every_row_with_numbers(tmp_path):
    # Tiny matrices: threads only contend on a shared 2-core machine (conftest.single_thread).
    # PYTHON: this interpreter, where the lent machine's wrapper runs its python3; OUT:
    # where the device tool collects files, the wrapper keeps its log there.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable, "OUT": str(tmp_path)}
    completed = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry_run"],
        cwd=tmp_path,  # the wrapper finds the repository from its own path
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-4000:]
    assert (tmp_path / "gpu_check.log").read_text() == output
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


# Published sizes (hub safetensors of Qwen/Qwen2-VL-2B-Instruct, Qwen/Qwen2-1.5B and
# Qwen/Qwen2-0.5B, all with tied embeddings): the whole Qwen2-VL-2B, its decoder, and
# FastVLM-0.5B's decoder (Qwen2-0.5B). Image tokens: Qwen2-VL resizes 640×480 to
# 644×476 (multiples of 28), 46×34 patches of 14 merged 2×2 = 391; FastVLM's
# FastViT-HD downsamples 1024×1024 by 64 = 16×16 = 256.
FULL_SIZES = {
    "qwen2_vl": {"total": 2_208_985_600, "decoder": 1_543_714_304, "image_tokens": 391},
    "fast_vlm": {"decoder": 494_032_768, "image_tokens": 256},
}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FULL_SIZES))
def test_full_size_models_have_the_published_sizes(family):
    import torch
    from PIL import Image

    from benchmarks import extract_throughput as bench

    model, adapter = bench._full_model(family, torch.bfloat16, "meta", "sdpa")
    expected = FULL_SIZES[family]
    decoder = adapter.language_model(model)
    assert sum(p.numel() for p in decoder.parameters()) == expected["decoder"]
    if "total" in expected:
        assert sum(p.numel() for p in model.parameters()) == expected["total"]
    else:  # FastVLM: the FastViT-HD tower (about 125 M parameters) and projector on top
        assert 100e6 < sum(p.numel() for p in model.parameters()) - expected["decoder"] < 150e6
    batch = adapter.build_batch([Image.new("RGB", (640, 480), "gray")], ["Is it right?"])
    assert int(adapter.image_token_mask(batch).sum()) == expected["image_tokens"]
