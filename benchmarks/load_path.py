"""The probe training load path at scale: wall time and peak RSS of `train_all_layers`.

  python benchmarks/load_path.py                      # N = 10,000 and 40,000
  python benchmarks/load_path.py --n=160000           # 14.3 GB store: needs ~15 GB of disk
  python benchmarks/load_path.py --n=40000 --layouts=plain,sharded --read_only
  python benchmarks/load_path.py --n=160000 --keep           # then, on the kept store:
  python benchmarks/load_path.py --n=160000 --keep --reuse --skip_read_times --cold

For each N it writes a planted float16 workdir of N x 29 x 1,536 (signal in
layer 20, binary labels) under --dir, chunk by chunk as extraction does
(64-row chunks; --layouts picks the feature chunk layout: `sharded`, what
extraction writes, one inner chunk per layer; `plain`, stores written before
it, all layers in one chunk), times reading one layer and all layers of it,
then runs `python -m probing.train_all_layers` on it in a subprocess with
the default config except few epochs (--epochs, patience 0, 1 seed, no
bootstrap) so that it finishes. Printed per N: wall time, time in training
epochs (the sweep's "trained in" log lines), the rest (reading, placing,
compiling, writing), peak RSS of the subprocess (getrusage of children),
feature bytes, RSS / feature bytes and wall / training time.

--cold evicts the store from the page cache first (posix_fadvise), so
that training reads it from disk: what the cache holds otherwise (the rows
written or read last, as much as memory leaves room for) is one reason the
first layer group's set-up took anywhere from 17 s to 35 s at N = 160,000. The store is removed
afterwards unless --keep. Timings on a shared machine
vary with its load: the load average is printed next to each figure.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from probing.store.layout import (  # noqa: E402
    GROUP,
    LABELS,
    MANIFEST_JSON,
    SPLIT,
    WRITTEN,
    feature_inner_chunk,
    features,
    new_manifest,
)
from probing.store.workdir import Workdir  # noqa: E402

LAYERS, DIM, CHUNK_ROWS, SIGNAL_LAYER = 29, 1536, 64, 20
# Rows generated at once while writing (a multiple of CHUNK_ROWS): 180 MB of float32.
WRITE_ROWS = 1024


def load_average() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def write_store(location: str, num_rows: int, sharded: bool) -> Workdir:
    """A complete planted workdir: labels, splits, images, float16 features with a signal."""
    shutil.rmtree(location, ignore_errors=True)
    workdir = Workdir(location)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, num_rows).astype(np.int8)
    group = np.arange(num_rows, dtype=np.int64)
    split = rng.choice([0, 1, 2], num_rows, p=[0.7, 0.1, 0.2]).astype(np.int8)
    workdir.write_array(LABELS, labels)
    workdir.write_array(SPLIT, split)
    workdir.write_array(GROUP, group)
    workdir.write_array(WRITTEN, np.ones(num_rows, np.uint8))
    array = workdir.create_array(
        features("mean"),
        "float16",
        (num_rows, LAYERS, DIM),
        (CHUNK_ROWS, LAYERS, DIM),
        inner_chunk_shape=feature_inner_chunk(CHUNK_ROWS, DIM) if sharded else None,
    )
    direction = rng.standard_normal(DIM).astype(np.float32)
    for start in range(0, num_rows, WRITE_ROWS):
        stop = min(start + WRITE_ROWS, num_rows)
        block = rng.standard_normal((stop - start, LAYERS, DIM), np.float32)
        block[:, SIGNAL_LAYER] += 0.5 * (2 * labels[start:stop, None] - 1) * direction
        array[start:stop].write(block.astype(np.float16)).result()
    workdir.write_json(
        MANIFEST_JSON,
        new_manifest(
            model={"id": "planted", "revision": None, "family": "none", "random_init": True},
            library_versions={},
            dtype="float16",
            feature_dtype="float16",
            num_examples=num_rows,
            num_layers=LAYERS,
            hidden_size=DIM,
            poolings=["mean"],
            label_kind="binary",
            label_names=["match"],
            task="planted",
            prompt_template="",
            complete=True,
        ),
    )
    return workdir


def evict(location: str) -> int:
    """Drops the store's files from the page cache (after writing dirty pages back), so
    that training reads them from disk: a reproducible start, where whatever the cache
    holds after writing or an earlier run is not. Returns the bytes evicted."""
    os.sync()
    total = 0
    for folder, _, names in os.walk(location):
        for name in names:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                total += os.fstat(fd).st_size
            finally:
                os.close(fd)
    return total


def time_reads(workdir: Workdir) -> tuple[float, float]:
    """Seconds to read layer 0 and all layers of every row (in 4,096-row blocks, so that
    the 160k store is not held in memory at once)."""
    array = workdir.open_array(features("mean"))
    num_rows = int(array.shape[0])
    times = []
    for layers in (slice(0, 1), slice(None)):
        start = time.perf_counter()
        for row in range(0, num_rows, 4096):
            array[row : min(row + 4096, num_rows), layers].read().result()
        times.append(time.perf_counter() - start)
    return times[0], times[1]


def train(location: str, epochs: int) -> dict[str, float]:
    """Runs train_all_layers on the workdir; wall time, training-epoch time and peak RSS."""
    command = [
        sys.executable,
        "-m",
        "probing.train_all_layers",
        f"--workdir={location}",
        "--config.num_seeds=1",
        f"--config.epochs={epochs}",
        "--config.patience=0",
        "--config.bootstrap_resamples=0",
        "--config.replace_run=True",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    if done.returncode:
        sys.exit(f"train_all_layers failed ({done.returncode}):\n{done.stderr[-4000:]}")
    if peak < before * 1024:
        print("warning: an earlier child had a higher peak RSS; this figure is that one")
    log = done.stderr
    with open(location.rstrip("/") + ".log", "w") as f:
        f.write(log)
    trained = sum(float(t) for t in re.findall(r"\] .*: layers \d+-\d+ trained in ([0-9.]+)s", log))
    groups = re.findall(r"layer groups: .*", log)
    return {"wall": wall, "trained": trained, "peak": peak, "groups": groups[0] if groups else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="10000,40000", help="comma-separated row counts")
    parser.add_argument("--dir", default="/work/tmp-bench/load_path", help="where stores go")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--layouts", default="sharded", help="sharded and/or plain")
    parser.add_argument("--read_only", action="store_true", help="time reads, do not train")
    parser.add_argument("--keep", action="store_true", help="keep the stores")
    parser.add_argument("--reuse", action="store_true", help="train on a kept store if present")
    parser.add_argument(
        "--cold",
        action="store_true",
        help="evict the store from the page cache before training (reads from disk)",
    )
    parser.add_argument("--skip_read_times", action="store_true", help="do not time raw reads")
    args = parser.parse_args()
    for num_rows in [int(n) for n in args.n.split(",")]:
        for layout_name in args.layouts.split(","):
            feature_bytes = num_rows * LAYERS * DIM * 2
            location = os.path.join(args.dir, f"n{num_rows}_{layout_name}")
            os.makedirs(args.dir, exist_ok=True)
            free = shutil.disk_usage(args.dir).free
            if free < 1.05 * feature_bytes:
                sys.exit(
                    f"{args.dir}: {free / 1e9:.1f} GB free, the store needs {feature_bytes / 1e9:.1f} GB"
                )
            start = time.perf_counter()
            if args.reuse and os.path.exists(os.path.join(location, MANIFEST_JSON)):
                workdir = Workdir(location)  # a store kept (--keep) by an earlier run
            else:
                workdir = write_store(location, num_rows, layout_name == "sharded")
                seconds = time.perf_counter() - start
                print(f"N={num_rows} {layout_name}: store written in {seconds:.1f}s")
            if not args.skip_read_times:
                one, every = time_reads(workdir)
                print(
                    f"N={num_rows} {layout_name}: read 1 layer {one:.2f}s, all {LAYERS} layers "
                    f"{every:.2f}s (ratio {every / one:.1f}; {load_average()})"
                )
            if not args.read_only:
                if args.cold:
                    print(
                        f"evicted {evict(location) / 1e9:.1f} GB of the store from the page cache"
                    )
                result = train(location, args.epochs)
                print(
                    f"N={num_rows} {layout_name}: wall {result['wall']:.1f}s, training epochs "
                    f"{result['trained']:.1f}s, rest {result['wall'] - result['trained']:.1f}s, "
                    f"peak RSS {result['peak'] / 2**30:.2f} GiB, features "
                    f"{feature_bytes / 2**30:.2f} GiB, RSS/features "
                    f"{result['peak'] / feature_bytes:.2f}, wall/training "
                    f"{result['wall'] / max(result['trained'], 1e-9):.2f} ({load_average()})"
                )
                print(f"  {result['groups']}")
            if not args.keep:
                shutil.rmtree(location, ignore_errors=True)


if __name__ == "__main__":
    main()
