"""Stage 2: linear probes for all layers x seeds in one JAX program.

data      load and validate a workdir's features and labels
settings  SweepSettings and every probe default (default_config)
model     the Flax LinearProbe, its counter-hash dropout and optimizer
kernels   RNG streams and the jitted init / train / select programs
scoring   standardisation statistics, logits and the val selection score
stopping  per-probe early stopping and the convergence report
folds     folds re-drawn by image at probe time (FoldSet) and their labels
programs  the kernels jitted for a device layout, compiled while features are placed
devices   device mesh, feature placement, ahead-of-time compilation
sweep     the host driver of the probe sweep (run_sweep, SweepResult)
train     train a workdir's poolings and write probes/<pooling>/
metrics   the metric-name registry and the classification metrics (WORKSPACE.md)
stats     mean / std / 95% CI over seeds, bootstrap over test images
results   metrics.csv, curves.csv, summary.json, probe_config.json, weights.npz
fold_results  the same files with a fold column, for sweeps with folds
summary   summary.json from metrics.csv rows (trainer and test fixtures)
identity  the run's columns (model, task, prompt, pooling, run) leading metrics.csv and curves.csv
apply     a saved probe (weights.npz) applied to features, without JAX
"""
