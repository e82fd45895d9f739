"""Loads `get_config(arg)` config files the way `--config=path[:arg]` does.

The absl entry points read config files through ml_collections'
`config_flags`; `probing.demo` and the tests load the same files with
`load_config` so that every path exercises the same files.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO_ROOT, "configs")


def load_config(spec: str) -> ml_collections.ConfigDict:
    """`spec` is `path/to/config.py` or `path/to/config.py:arg` (path relative to cwd or repo)."""
    path, _, arg = spec.partition(":")
    if not os.path.exists(path) and os.path.exists(os.path.join(REPO_ROOT, path)):
        path = os.path.join(REPO_ROOT, path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file {path} does not exist (from {spec!r})")
    module_spec = importlib.util.spec_from_file_location("probing_config_file", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)  # type: ignore[union-attr]
    if not hasattr(module, "get_config"):
        raise AttributeError(f"config file {path} has no get_config(arg=None) function")
    config = module.get_config(arg) if arg else module.get_config()
    config.lock()
    return config
