"""probing from Python: the three commands as functions, results as DataFrames.

    import probing.api as probing

    probing.extract("configs/demo.py:qwen2_vl,caption,trained", "runs/py/caption")
    results = probing.train("runs/py/caption", num_seeds=2)
    results.best                      # best layer per pooling, with its interval
    results.plot_layer_curve()        # matplotlib Axes
    probing.report(["runs/py/caption"], "runs/py/report")
    new = probing.predict("runs/py/caption", [image], [prompt], run="mean")  # a new row

Each function is what its command runs (`python -m probing.extract`,
`probing.train_all_layers`, `probing.report`), with the same config files,
the same locked configs (a misspelt field is an error, not a new field) and
the same validation. Overrides are the command line's `--config.X=V`:
keyword arguments, dotted for nested fields (`**{"extract.batch_size": 4}`)
or as a dict per section (`extract={"batch_size": 4}`).

Importing this module makes absl log at INFO (without flag parsing absl
would show warnings only), so progress shows in a notebook; quiet it with
`absl.logging.set_verbosity(absl.logging.WARNING)`. The probe sweep uses one
JAX CPU device per core, as the command does, when JAX has not started yet.
Stage 1 (torch, transformers) is imported only when `extract` is called.
"""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
from absl import flags, logging

from probing.api_results import Results
from probing.config_files import load_config
from probing.progress import quiet_libraries

__all__ = ["Results", "extract", "load", "load_config", "predict", "report", "train"]

# The probe config the command uses when --config is not given.
PROBE_CONFIG = "configs/probe.py"

if not flags.FLAGS.is_parsed():
    logging.set_verbosity(logging.INFO)

_jax_started = False


def _config(config: str | ml_collections.ConfigDict, overrides: Mapping[str, Any], what: str):
    """A locked copy of `config` (a ConfigDict or a `path[:arg]` spec) with `overrides` set.

    Raises:
      ValueError: an override names no field of the config, or has the wrong type.
    """
    if isinstance(config, str | os.PathLike):
        source = str(config)
        config = load_config(source)
    else:
        source = f"the {what} config"
        config = copy.deepcopy(config)
    config.lock()
    for key, value in overrides.items():
        _set(config, key, value, source)
    return config


def _set(config: ml_collections.ConfigDict, key: str, value: Any, source: str) -> None:
    *parents, name = key.split(".")
    node = config
    for i, part in enumerate(parents):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            _no_field(node, ".".join(parents[: i + 1]), source)
        node = node[part]
    if not isinstance(node, ml_collections.ConfigDict) or name not in node:
        _no_field(node, key, source)
    if isinstance(value, Mapping) and isinstance(node[name], ml_collections.ConfigDict):
        for sub_key, sub_value in value.items():
            _set(config, f"{key}.{sub_key}", sub_value, source)
        return
    try:
        setattr(node, name, value)
    except TypeError as error:
        raise ValueError(f"{source}: field {key}={value!r}: {error}") from None


def _no_field(node: Any, key: str, source: str) -> None:
    fields = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
    raise ValueError(
        f"{source} has no field {key!r}"
        + (f"; fields there: {', '.join(fields)}" if fields else "")
        + " (nested fields: 'section.field' or section={...})"
    )


def _start_jax(distributed: bool) -> None:
    """One JAX CPU device per core (what `probing.train_all_layers` does), once per process."""
    global _jax_started
    if _jax_started:
        return
    from probing.probes.devices import start_jax

    try:
        start_jax(distributed=distributed)
    except RuntimeError as error:
        # JAX ran before (in this notebook): its devices are fixed now; train on them.
        import jax

        logging.warning(
            "JAX had already started with %d %s device(s), so the sweep uses those; import "
            "probing.api before other JAX work to use every CPU core (%s)",
            jax.device_count(),
            jax.default_backend(),
            str(error).split(".")[0],
        )
    _jax_started = True


def extract(
    config: str | ml_collections.ConfigDict, workdir: str, **overrides: Any
) -> dict[str, Any]:
    """Stage 1: pooled per-layer features of a frozen VLM into `workdir`; returns the manifest.

    `python -m probing.extract --config=CONFIG --workdir=WORKDIR --config.K=V ...`.

    Args:
      config: an extraction config spec (`configs/qwen.py`, `configs/demo.py:fast_vlm,category`;
        looked up in the working directory, then the repository / package) or a
        ConfigDict (not modified).
      workdir: directory (or gs:// / s3:// URL) to write; an interrupted run resumes.
      **overrides: config fields to change, e.g. `**{"extract.batch_size": 4}`.
    """
    from probing.extraction.runner import extract as run_extract

    quiet_libraries()  # as the command does: no Hub "Loading weights" bars in logs
    return run_extract(_config(config, overrides, "extraction"), str(workdir))


def train(
    workdir: str,
    config: str | ml_collections.ConfigDict = PROBE_CONFIG,
    poolings: Sequence[str] | None = None,
    **overrides: Any,
) -> Results:
    """Stage 2: probes for every layer and seed of `workdir`; returns its Results.

    `python -m probing.train_all_layers --workdir=WORKDIR [--config=CONFIG]
    [--pooling=...] --config.K=V ...`; writes probes/<run>/ exactly as it does.

    Args:
      workdir: a workdir written by `extract` (or by hand, WORKSPACE.md).
      config: the probe config spec or ConfigDict (default configs/probe.py).
      poolings: poolings to probe (default: every one in the manifest).
      **overrides: probe config fields, e.g. num_seeds=5, folds=5, layers=(0, 12).
    """
    from probing.probes.train import resolve_runs, train_workdir

    probe_config = _config(config, overrides, "probe")
    _start_jax(bool(probe_config.get("distributed")))
    train_workdir(str(workdir), probe_config, poolings)
    # This run's folders, wherever it went (probes/<pooling>-<hash>/ beside another run):
    # resolving again after training names the folders just written.
    return Results.load(workdir, poolings, resolve_runs(str(workdir), probe_config, poolings))


def load(
    workdir: str, poolings: Sequence[str] | None = None, runs: Sequence[str] | None = None
) -> Results:
    """The Results of an already trained workdir (no training).

    Default: every probe run of every pooling (`poolings` narrows it), each
    told apart by the `run` column of every DataFrame. `runs`: only these probe
    runs, by folder name (`python -m probing.runs` lists them); several runs of
    one pooling load side by side (`results.select(name)` picks one later).
    """
    return Results.load(workdir, poolings, runs)


def predict(workdir: str, images, prompts: Sequence[str], run: str | None = None, **options: Any):
    """A saved probe run applied to new (image, prompt) pairs through the workdir's extraction.

    `probing.probes.predict.predict`: the workdir's model (config.json), the run's
    pooling at every layer, its probes; `options`: layer (None = best, "all", an
    index), seed, fold, device. Returns `Predictions` (logits [layers, seeds, n],
    probabilities). Keep a `probing.probes.predict.Predictor` to load the model once.
    """
    from probing.probes.predict import predict as predict_rows

    quiet_libraries()
    return predict_rows(workdir, images, prompts, run, **options)


def report(workdirs: str | Sequence[str], out: str, **options: Any) -> str:
    """Writes the report of trained workdirs to `out`; returns the path of report.md.

    `python -m probing.report --workdirs=... --out=OUT`; `options` are
    build_report's: poolings, tasks, layers, allow_partial, first_token_category.
    """
    from probing.reporting.builder import build_report

    allowed = set(inspect.signature(build_report).parameters) - {"workdirs", "out_dir", "command"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(
            f"probing.api.report: no option(s) {', '.join(unknown)}; "
            f"options: {', '.join(sorted(allowed))}"
        )
    workdirs = [workdirs] if isinstance(workdirs, str | os.PathLike) else list(workdirs)
    workdirs = [str(w) for w in workdirs]
    shown = ", ".join(f"{k}={v!r}" for k, v in options.items())
    command = f"probing.api.report({workdirs!r}, {str(out)!r}{', ' + shown if shown else ''})"
    return build_report(workdirs, str(out), command=command, **options)
