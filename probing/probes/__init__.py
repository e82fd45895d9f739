"""Stage 2: linear probes for all layers x seeds in one JAX program.

data      load and validate a workdir's features and labels
sweep     the vmapped, jitted probe sweep (SweepSettings, run_sweep)
metrics   the metric-name registry and the classification metrics (WORKSPACE.md)
stats     mean / std / 95% CI over seeds, paired bootstrap over test images
results   metrics.csv, curves.csv, summary.json, probe_config.json, weights.npz
summary   summary.json from metrics.csv rows (trainer and test fixtures)
"""
