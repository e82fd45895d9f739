"""Stage 2: train linear probes for every layer and seed of a workdir (JAX).

  python -m probing.train_all_layers --workdir=DIR [--config=configs/probe.py]
      [--config.num_seeds=5] [--pooling=mean]

Reads any workdir that follows WORKSPACE.md and trains and writes the probes
of each pooling (probing.probes.train). Devices: the sweep's layer axis is
sharded over `config.devices` devices (0 = all JAX sees). On several hosts
(a TPU VM slice, a multi-node GPU job) run the same command on every host with
`--config.distributed=True`; see launch/train_tpu_vm.sh.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from probing.cli import run_main
from probing.config_files import compact
from probing.probes.devices import start_jax
from probing.probes.overview import overview
from probing.probes.train import resolve_runs, train_workdir
from probing.progress import quiet_libraries

_DEFAULT_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "probe.py"
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir written by probing.extract.")
_POOLING = flags.DEFINE_list(
    "pooling", None, "Poolings to probe (comma-separated); default: all in the manifest."
)
_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG, "Probe config file (configs/probe.py).", lock_config=True
)
flags.mark_flag_as_required("workdir")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = _CONFIG.value
    quiet_libraries(hugging_face=False)  # training never loads them
    logging.info("probe config:\n%s", compact(config))
    start = time.monotonic()
    start_jax(distributed=bool(config.get("distributed")))
    summaries = train_workdir(_WORKDIR.value, config, _POOLING.value)
    if jax.process_index() == 0:
        # The folders just written (probes/<pooling>-<hash>/ beside an earlier run):
        # the same settings resolve to the same folders after training.
        runs = resolve_runs(_WORKDIR.value, config, list(summaries))
        print(overview(_WORKDIR.value, summaries, time.monotonic() - start, runs))


if __name__ == "__main__":
    run_main(main, "probing.train_all_layers")
