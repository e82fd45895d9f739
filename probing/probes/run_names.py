"""Names of probe runs: which probes/<run>/ folder a train_all_layers run writes.

A run is one pooling's probes under one set of probe settings. Its folder is

  probes/<pooling>/              the first run of a pooling (every path written
                                 before runs had names, and every command and
                                 `load_probes(workdir, "mean")` naming it, stays valid);
  probes/<pooling>-<hash>/       a run whose settings differ from the one already
                                 in probes/<pooling>/ (hash: 8 hex digits of the
                                 settings that change results, `settings_hash`);
  probes/<pooling>-<run_name>/   with --config.run_name=<run_name>.

Why derive a name instead of refusing: a grid or a 5-seed run after the
default one is the common case, and a refusal would make every such command
need a second try; a derived name never replaces a different run, and the
same settings always land in the same folder, so a re-run after a kill
replaces its own folder in place, as before. An explicit name that holds a
run with other settings is refused (one line: the name, what differs, the two
ways on) unless --config.replace_run=True.

Settings that leave results bitwise identical (devices, layer_group_size)
do not enter the hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any

import tensorstore as ts

from probing.probes.settings import SweepSettings
from probing.store.layout import METRICS_CSV, PROBE_CONFIG_JSON, PROBES_DIR, probe_file
from probing.store.workdir import Workdir

# Settings that leave every number bitwise identical (tests/test_probes_devices.py,
# layer_group_size's docs): a run differing only in them is the same run.
SAME_RESULTS = ("devices", "layer_group_size")
# A run name is one folder name: letters, digits and . _ - (no separator, no "..").
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")


def check_run_name(name: str) -> str:
    """Returns `name` if it can name a folder; else one ValueError line saying why."""
    if not _NAME.match(name) or ".." in name:
        raise ValueError(
            f"config.run_name {name!r} is not a usable run name: use letters, digits and "
            ". _ - only (no path separator, not empty, no '..'), e.g. --config.run_name=seeds5"
        )
    return name


def settings_key(settings: dict[str, Any], layers: list[int]) -> dict[str, Any]:
    """The settings that identify a run's results (a probe_config.json-shaped dict)."""
    key = {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}
    for name in SAME_RESULTS:
        key.pop(name, None)
    key["layers"] = [int(x) for x in layers]
    # Round-trip through JSON so a key read from probe_config.json compares equal.
    return json.loads(json.dumps(key, sort_keys=True))


def run_key(settings: SweepSettings, layers: list[int]) -> dict[str, Any]:
    """settings_key of a run about to be trained."""
    return settings_key(vars(settings), layers)


def settings_hash(key: dict[str, Any]) -> str:
    """8 hex digits of a settings key."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]


def recorded_key(workdir: Workdir, run: str) -> dict[str, Any] | None:
    """The settings key of the run in probes/<run>/ (None: no run there; {} unknown)."""
    if not workdir.exists(probe_file(run, METRICS_CSV)):
        return None
    if not workdir.exists(probe_file(run, PROBE_CONFIG_JSON)):
        return {}  # results written by hand: their settings are unknown
    recorded = workdir.read_json(probe_file(run, PROBE_CONFIG_JSON))
    return settings_key(recorded.get("settings") or {}, recorded.get("layers") or [])


def _difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    if not old:
        return "its settings are not recorded"
    changed = [
        f"{name} {old.get(name)!r} -> {new.get(name)!r}"
        for name in sorted(set(old) | set(new))
        if old.get(name) != new.get(name)
    ]
    return "it differs in " + ", ".join(changed)


def resolve_run(
    workdir: Workdir,
    pooling: str,
    key: dict[str, Any],
    run_name: str = "",
    replace: bool = False,
) -> str:
    """The probes/<run>/ folder name this run writes (see the module docstring).

    Raises:
      ValueError: a bad run_name, or an explicit one whose folder holds a run
        with other settings (unless `replace`).
    """
    if run_name:
        name = f"{pooling}-{check_run_name(run_name)}"
    else:
        existing = recorded_key(workdir, pooling)
        if existing is None or existing == key or replace:
            return pooling
        name = f"{pooling}-{settings_hash(key)}"
    existing = recorded_key(workdir, name)
    if existing is None or existing == key or replace:
        return name
    raise ValueError(
        f"{workdir.location}/{PROBES_DIR}/{name} holds a run with other probe settings "
        f"({_difference(existing, key)}); name this one with --config.run_name=<name> or "
        "replace it with --config.replace_run=True"
    )


def run_folders(workdir: Workdir) -> list[str]:
    """The names of the folders under probes/ that hold results (metrics.csv), sorted."""
    if workdir.is_local:
        folder = os.path.join(workdir.local_path, PROBES_DIR)
        names = os.listdir(folder) if os.path.isdir(folder) else []
    else:
        store = ts.KvStore.open(workdir.kvstore(PROBES_DIR)).result()
        names = {key.decode().split("/", 1)[0] for key in store.list().result()}
    return sorted(name for name in names if workdir.exists(probe_file(name, METRICS_CSV)))


def run_pooling(workdir: Workdir, run: str) -> str:
    """The pooling a run probed: recorded in probe_config.json, else its folder's name."""
    if workdir.exists(probe_file(run, PROBE_CONFIG_JSON)):
        recorded = workdir.read_json(probe_file(run, PROBE_CONFIG_JSON)).get("run") or {}
        if recorded.get("pooling"):
            return str(recorded["pooling"])
    return run
