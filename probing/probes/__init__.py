"""Stage 2: linear probes for all layers x seeds in one JAX program.

data      load and validate a workdir's features and labels
sweep     the vmapped, jitted probe sweep (SweepSettings, run_sweep)
metrics   classification metrics named as in WORKSPACE.md
stats     mean / std / 95% CI over seeds, paired bootstrap
results   metrics.csv, curves.csv, summary.json, probe_config.json, weights.npz
synthetic planted-signal workdirs for tests and benchmarks
"""
