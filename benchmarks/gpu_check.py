"""One prepared GPU check: extraction and probe-sweep speed on one lent H100/H200, as one table.

On a lent machine (the device tool), from the repository root, in one call
that finishes in under 8 minutes:

    bash benchmarks/gpu_check.sh

The machine has torch, transformers, timm, jax (CUDA), flax, optax and
tensorstore but not ml_collections, which probing imports; carry its wheel.
Once, here, before the call:

    echo /.whl/ >> "$(git rev-parse --git-common-dir)/info/exclude"  # a worktree too
    python3 -m pip download --no-deps --only-binary=:all: -d .whl ml_collections==1.1.0

then call the device tool's run with command="bash benchmarks/gpu_check.sh",
carry=[".whl"], timeout_s=540; the wrapper installs .whl/*.whl if present and
writes the log to $OUT/gpu_check.log. The tool sends the checkout its session
started in (the lead's), not a helper's worktree: run it from a checkout that
has this script. The lent machine's transformers was 5.17 (KINDS.md, 2026-11);
the dry run passes with 5.17 and with requirements.txt's newer 5.x. If the
environment block says FastVlmConfig or fastvit_mci3 is missing, carry
transformers / timm wheels the same way. The script itself says what is missing
(an "environment" block, and a "failed: No module named ..." row per part).
To rerun only what failed, within the 15 minutes a task is lent: `bash
benchmarks/gpu_check.sh --parts probe` (parts: qwen2_vl, fast_vlm, probe).
Sizes: 32 rows per forward, 6 timed batches per extraction path (after one
warm-up), 3 images × 10 prompts per prefix-sharing batch; probe batch 256.

Here, as the test suite runs it (tiny sizes, CPU, about a minute on 2 cores):

    python benchmarks/gpu_check.py --dry_run

The table (rows print as they finish, the whole table at the end):
  * extraction, for full-size random-init Qwen2-VL-2B (640×480 images,
    bfloat16, sdpa) and FastVLM-0.5B (1024 px): examples/s, tokens/s, useful
    TFLOP/s and MFU (FLOPs torch counts for the hooked forward on the same
    rows, against the GPU's dense bf16 peak), peak memory, for the naive
    `output_hidden_states=True` forward, the engine (probing.extraction.forward),
    and the engine without / with prefix sharing at 10 prompts per image; the
    engine/naive and prefix/unshared ratios (benchmarks/extract_throughput.py
    builds the models and times the paths);
  * the probe sweep at full benchmark size (N = 40,000, 29 layers, D = 1,536,
    5 seeds, 10 epochs, float16 features, planted signal in layer 3) with JAX
    on the GPU (cold: compilation, placement and training; warm: a second
    identical run), and the batched PyTorch baseline (benchmarks/torch_batched.py)
    eager, compiled, and compiled with CUDA graphs on the same GPU, with the
    ratio and the per-layer test-accuracy agreement.
Each part runs under its own time budget (SIGALRM) and try/except: a part
that fails or overruns prints "failed: reason" and the others still run; a
part the overall budget no longer covers prints "skipped".
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import importlib
import os
import platform
import resource
import signal
import sys
import time
from collections.abc import Callable

# Before JAX is imported anywhere: JAX would otherwise take 75% of the GPU at its
# first array, leaving PyTorch (same process) too little.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# The lent machine reaches no network: fail at once rather than wait on hub timeouts.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PACKAGES = (
    "numpy",
    "torch",
    "transformers",
    "timm",
    "PIL",
    "jax",
    "flax",
    "optax",
    "ml_collections",
    "absl",
    "tensorstore",
)
SIGNAL_LAYER, LEARNING_RATE, DROPOUT = 3, 1e-3, 0.1
PARTS = ("qwen2_vl", "fast_vlm", "probe")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Everything the two modes size differently."""

    batch_size: int  # extraction rows per forward
    num_batches: int  # timed batches per path
    per_image: int  # prompts per image with prefix sharing
    probe: tuple[int, int, int, int, int]  # N, layers, D, seeds, epochs
    probe_batch: int
    torch_modes: tuple[str, ...]
    budgets: dict[str, float]  # seconds per part


FULL = Sizes(
    batch_size=32,
    num_batches=6,
    per_image=10,
    probe=(40000, 29, 1536, 5, 10),
    probe_batch=256,
    torch_modes=("eager", "compiled", "cudagraphs"),
    budgets={
        "qwen2_vl": 140,
        "fast_vlm": 110,
        "probe data": 60,
        "jax": 100,
        "torch": 80,
    },
)
# torch.compile takes 10-20 s on a loaded 2-core CPU: the dry run stays eager.
DRY = Sizes(
    batch_size=2,
    num_batches=1,
    per_image=2,
    probe=(2000, 4, 32, 2, 2),
    probe_batch=64,
    torch_modes=("eager",),
    budgets={"qwen2_vl": 60, "fast_vlm": 60, "probe data": 20, "jax": 60, "torch": 60},
)


@dataclasses.dataclass
class Row:
    """One line of the table; None prints as '-'."""

    part: str
    path: str
    rate: float | None = None  # examples/s (probe rows: probe-examples/s)
    tokens: float | None = None  # tokens/s
    tflops: float | None = None  # useful TFLOP/s
    mfu: float | None = None  # percent of the dense bf16 peak
    peak_gib: float | None = None
    seconds: float | None = None
    note: str = ""


COLUMNS = (
    ("part", 14, "part", "s"),
    ("path", 26, "path", "s"),
    ("examples/s", 11, "rate", ".4g"),
    ("tokens/s", 9, "tokens", ".0f"),
    ("TFLOP/s", 8, "tflops", ".3g"),
    ("MFU %", 6, "mfu", ".1f"),
    ("peak GiB", 8, "peak_gib", ".2f"),
    ("seconds", 8, "seconds", ".2f"),
)


def format_row(row: Row) -> str:
    cells = []
    for _, width, field, spec in COLUMNS:
        value = getattr(row, field)
        text = "-" if value is None else format(value, spec)
        cells.append(f"{text:<{width}}" if spec == "s" else f"{text:>{width}}")
    return " | ".join(cells) + f" | {row.note}"


def print_table(rows: list[Row]) -> None:
    header = " | ".join(
        f"{name:<{width}}" if spec == "s" else f"{name:>{width}}"
        for name, width, _, spec in COLUMNS
    )
    print("\n" + header + " | note")
    print("-" * (len(header) + 7))
    for row in rows:
        print(format_row(row))
    sys.stdout.flush()


class PartTimeout(Exception):
    """A part ran past its time budget."""


@contextlib.contextmanager
def time_budget(seconds: float):
    """Raises PartTimeout in the main thread after `seconds` (checked between Python bytecodes)."""

    def expire(signum, frame):
        raise PartTimeout(f"over its {seconds:.0f} s budget")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Check:
    """Runs the parts under their budgets and collects the rows."""

    def __init__(self, sizes: Sizes, dry_run: bool, total_budget: float):
        self.sizes, self.dry_run = sizes, dry_run
        self.deadline = time.monotonic() + total_budget
        self.rows: list[Row] = []
        self.results: dict[str, object] = {}  # what later parts and the ratios read

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print("row:", format_row(row), flush=True)

    def run(self, part: str, path: str, budget_key: str, fn: Callable[[], None]) -> None:
        remaining = self.deadline - time.monotonic()
        if remaining < 5:
            self.add(Row(part, path, note="skipped: the overall time budget is spent"))
            return
        budget = min(self.sizes.budgets[budget_key], remaining)
        start = time.monotonic()
        try:
            with time_budget(budget):
                fn()
        except Exception as error:
            reason = f"{type(error).__name__}: {error}".replace("\n", " ")[:160]
            self.add(Row(part, path, seconds=time.monotonic() - start, note=f"failed: {reason}"))
        finally:
            print(f"[{part}: {path}] {time.monotonic() - start:.1f} s", flush=True)
            gc.collect()
            torch = sys.modules.get("torch")
            if torch is not None and torch.cuda.is_available():
                torch.cuda.empty_cache()


def environment(dry_run: bool) -> None:
    """Prints versions, the accelerator each framework sees, and what is missing."""
    print(f"gpu_check{' --dry_run' if dry_run else ''}: python {platform.python_version()}")
    print(f"  machine: {platform.machine()}, {os.cpu_count()} CPUs")
    missing = []
    for name in PACKAGES:
        try:
            module = importlib.import_module(name)
            print(f"  {name:15s} {getattr(module, '__version__', '(no version)')}")
        except Exception as error:
            missing.append(name)
            print(f"  {name:15s} MISSING ({type(error).__name__}: {error})")
    torch = sys.modules.get("torch")
    if torch is not None:
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            print(
                f"  torch sees {torch.cuda.get_device_name(0)}, {props.total_memory / 2**30:.0f} "
                f"GiB, CUDA {torch.version.cuda}"
            )
        else:
            print("  torch sees no GPU")
    jax = sys.modules.get("jax")
    if jax is not None:
        try:
            print(f"  jax backend {jax.default_backend()}: {jax.devices()}")
        except Exception as error:
            print(f"  jax has no backend: {error}")
    # What the full-size FastVLM needs beyond the packages being there: transformers'
    # fast_vlm model (5.x) and timm's FastViT-HD tower (timm >= 1.0.20).
    transformers, timm = sys.modules.get("transformers"), sys.modules.get("timm")
    if transformers is not None and not hasattr(transformers, "FastVlmConfig"):
        missing.append("transformers with FastVlmConfig")
    if timm is not None and not timm.list_models("fastvit_mci3"):
        missing.append("timm with fastvit_mci3 (>= 1.0.20)")
    if missing:
        print(
            f"  missing: {', '.join(missing)} (parts that need them will print failed; "
            "carry the wheels in .whl/, see the docstring)"
        )
    sys.stdout.flush()


# ----------------------------------------------------------------- extraction
def extraction(check: Check, family: str, device_name: str) -> None:
    """Times the four extraction paths of one model family and adds their rows."""
    import torch

    from benchmarks import extract_throughput as bench

    sizes = check.sizes
    device = torch.device(device_name)
    torch.manual_seed(0)
    start = time.monotonic()
    if check.dry_run:
        from probing.models import default_model_config, load_model

        config = default_model_config()
        config.name, config.device, config.dtype = f"tiny:{family}", device_name, "float32"
        model, _, adapter = load_model(config)
        what = f"tiny {family}, float32"
    else:
        model, adapter = bench._full_model(family, torch.bfloat16, device, "sdpa")
        what = f"full-size random-init {family}, bfloat16, sdpa"
    built = time.monotonic() - start
    plain, shared = bench.build_batches(
        adapter, device, sizes.batch_size, sizes.num_batches, sizes.per_image
    )
    timings = bench.measure(
        model, adapter, device, ("mean", "last"), plain, shared, count_flops=True
    )
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    peak = next((v for k, v in bench.PEAK_BF16_FLOPS.items() if gpu and k in gpu), None)
    notes = {
        "naive": f"{what}; built in {built:.0f} s; batch {sizes.batch_size}",
        "engine/10ppi": f"{sizes.per_image} prompts per image, unshared",
        "engine+prefix": f"{sizes.per_image} prompts per image, prefix shared",
    }
    for timing in timings:
        flops_per_s = timing.flops / timing.seconds
        check.add(
            Row(
                family,
                timing.name,
                rate=timing.examples / timing.seconds,
                tokens=timing.tokens / timing.seconds,
                tflops=flops_per_s / 1e12,
                mfu=100 * flops_per_s / peak if peak else None,
                peak_gib=timing.peak_bytes / 2**30,
                seconds=timing.seconds,
                note=notes.get(timing.name, ""),
            )
        )
    rate = {t.name: t.examples / t.seconds for t in timings}
    check.add(
        Row(family, "engine / naive", note=f"{rate['engine'] / rate['naive']:.2f}x examples/s")
    )
    check.add(
        Row(
            family,
            "prefix / unshared",
            note=f"{rate['engine+prefix'] / rate['engine/10ppi']:.2f}x prompts/s",
        )
    )
    del model, adapter, plain, shared


# ---------------------------------------------------------------- probe sweep
def probe_data(check: Check) -> None:
    """Planted-signal features as probe_sweep.py makes them: float16, rows ordered by split."""
    import numpy as np

    from probing.testing.planted import planted_arrays

    start = time.monotonic()
    num_examples, num_layers, dim, _, _ = check.sizes.probe
    arrays = planted_arrays(
        num_examples, num_layers, dim, [SIGNAL_LAYER], strength=3.0, layer_major=True
    )
    order = np.argsort(arrays["split"], kind="stable")
    drawn = arrays.pop("features")
    features = np.empty(drawn.shape, np.float16)
    for layer in range(num_layers):
        features[layer] = drawn[layer, order]
    del drawn
    check.results["probe data"] = (
        features,
        arrays["labels"][order].astype(np.float32),
        arrays["split"][order],
    )
    check.add(
        Row(
            "probe sweep",
            "planted data",
            seconds=time.monotonic() - start,
            note=f"N={num_examples} layers={num_layers} D={dim} float16 "
            f"({features.nbytes / 2**30:.2f} GiB), made on the host",
        )
    )


def _accuracy_gaps(check: Check, accuracy) -> str:
    """Per-layer test-accuracy agreement with the JAX sweep (means over seeds)."""
    reference = check.results.get("jax accuracy")
    if reference is None:
        return "no JAX accuracy to compare"
    gaps = abs(accuracy.mean(axis=1) - reference.mean(axis=1))
    return f"accuracy within {gaps.max():.4f} of JAX per layer ({gaps[SIGNAL_LAYER]:.4f} at signal)"


def jax_sweep(check: Check) -> None:
    """The JAX sweep on the GPU twice: cold (compile + place + train) and warm."""
    import jax
    import numpy as np

    from probing.probes.devices import probe_mesh
    from probing.probes.settings import SweepSettings
    from probing.probes.sweep import run_sweep

    if not check.dry_run and jax.default_backend() != "gpu":
        check.add(
            Row(
                "probe sweep",
                "jax",
                note=f"skipped: JAX sees no GPU (backend {jax.default_backend()}; "
                "the CUDA plugin jax-cuda*-plugin is missing?)",
            )
        )
        return
    features, labels, split = check.results["probe data"]
    num_examples, num_layers, _, num_seeds, epochs = check.sizes.probe
    settings = SweepSettings(
        num_seeds=num_seeds,
        epochs=epochs,
        batch_size=check.sizes.probe_batch,
        learning_rates=(LEARNING_RATE,),
        dropouts=(DROPOUT,),
        controls=False,
    )
    work = num_examples * num_layers * num_seeds * epochs
    device = jax.devices()[0]
    for run in ("cold", "warm"):
        start = time.monotonic()
        result = run_sweep(
            features,
            labels[:, None],
            np.ones((num_examples, 1), np.float32),
            split,
            settings,
            mesh=probe_mesh(0),
        )
        seconds = time.monotonic() - start
        logits = result.logits["test"][:, 0, :, :, 0]  # [L, S, n_test]
        accuracy = ((logits > 0) == labels[split == 2]).mean(axis=-1)
        check.results["jax accuracy"] = accuracy
        check.results[f"jax {run}"] = seconds
        stats = device.memory_stats() or {}
        peak = stats.get("peak_bytes_in_use")
        check.add(
            Row(
                "probe sweep",
                f"jax ({run})",
                rate=work / seconds,
                peak_gib=peak / 2**30 if peak else None,
                seconds=seconds,
                note=(
                    f"{device.platform} {device.device_kind}; "
                    + ("compile + place + train" if run == "cold" else "same run again, compiled")
                    + f"; signal-layer accuracy {accuracy[SIGNAL_LAYER].mean():.4f}"
                ),
            )
        )


def torch_sweep(check: Check, mode: str, device_name: str) -> None:
    """The batched PyTorch baseline on the same device and data."""
    from benchmarks.torch_batched import train_batched

    features, labels, split = check.results["probe data"]
    num_examples, num_layers, _, num_seeds, epochs = check.sizes.probe
    result = train_batched(
        features,
        labels,
        split,
        num_seeds=num_seeds,
        epochs=epochs,
        batch_size=check.sizes.probe_batch,
        learning_rate=LEARNING_RATE,
        dropout=DROPOUT,
        device=device_name,
        compile=mode != "eager",
        cuda_graphs=mode == "cudagraphs",
    )
    check.results[f"torch {mode}"] = result
    work = num_examples * num_layers * num_seeds * epochs
    check.add(
        Row(
            "probe sweep",
            f"torch {mode}",
            rate=work / result.seconds,
            peak_gib=result.peak_bytes / 2**30 if result.peak_bytes else None,
            seconds=result.seconds,
            note=f"{result.mode}; first epoch {result.first_epoch_seconds:.2f} s, then "
            f"{result.epoch_seconds:.3f} s/epoch; " + _accuracy_gaps(check, result.accuracy),
        )
    )


def probe_ratio(check: Check) -> None:
    """JAX vs the fastest batched PyTorch mode, cold to cold and steady to steady."""
    torch_runs = {k: v for k, v in check.results.items() if k.startswith("torch ")}
    if "jax cold" not in check.results or not torch_runs:
        check.add(Row("probe sweep", "jax / torch", note="skipped: a side is missing"))
        return
    best = min(torch_runs.values(), key=lambda r: r.seconds)
    epochs = check.sizes.probe[4]
    steady = best.epoch_seconds * epochs
    check.add(
        Row(
            "probe sweep",
            "jax / torch",
            note=f"torch time / JAX time: {best.seconds / check.results['jax cold']:.2f}x "
            f"against torch {best.mode} (cold: both incl. compilation), "
            f"{steady / check.results['jax warm']:.2f}x warm (JAX's second run vs "
            f"{epochs} x torch's steady epoch)",
        )
    )


def probe_sweeps(check: Check, device: str) -> None:
    """The planted data, then JAX, then each batched PyTorch mode, then their ratio."""
    check.run("probe sweep", "planted data", "probe data", lambda: probe_data(check))
    if "probe data" not in check.results:
        check.add(Row("probe sweep", "jax, torch", note="skipped: no planted data"))
        return
    check.run("probe sweep", "jax", "jax", lambda: jax_sweep(check))
    for mode in check.sizes.torch_modes:
        if mode == "cudagraphs" and device != "cuda":
            continue
        check.run(
            "probe sweep", f"torch ({mode})", "torch", lambda m=mode: torch_sweep(check, m, device)
        )
    probe_ratio(check)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dry_run", "--dry-run", action="store_true", help="tiny sizes on the CPU (the test)"
    )
    parser.add_argument(
        "--budget_s", type=float, default=450.0, help="overall time budget in seconds"
    )
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated subset of {','.join(PARTS)} (to rerun what failed)",
    )
    args = parser.parse_args()
    parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    if unknown := set(parts) - set(PARTS):
        parser.error(f"unknown parts {sorted(unknown)}; known: {', '.join(PARTS)}")
    started = time.monotonic()
    if args.dry_run:
        # The dry run is the CPU path whatever the machine has.
        os.environ["JAX_PLATFORMS"] = "cpu"
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    sizes = DRY if args.dry_run else FULL
    environment(args.dry_run)
    check = Check(sizes, args.dry_run, args.budget_s - (time.monotonic() - started))
    torch = sys.modules.get("torch")
    cuda = torch is not None and torch.cuda.is_available() and not args.dry_run
    device = "cuda" if cuda else "cpu"
    if not args.dry_run and not cuda:
        print("no GPU visible to torch: the full-size parts would take hours on a CPU; stopping")
        check.add(Row("all", "-", note="failed: torch sees no GPU (use --dry_run on a CPU)"))
        print_table(check.rows)
        return 1

    for family in ("qwen2_vl", "fast_vlm"):
        if family in parts:
            check.run(family, "all paths", family, lambda f=family: extraction(check, f, device))
    if "probe" in parts:
        probe_sweeps(check, device)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print_table(check.rows)
    print(
        f"total {time.monotonic() - started:.0f} s; host peak RSS {peak_rss:.1f} GiB; "
        f"peak GiB is the GPU's (torch.cuda / JAX memory_stats) on a GPU, else the host RSS"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
