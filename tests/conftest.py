"""Shared test setup: no network, a private cache, single-threaded tiny models."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest
import torch

# Tests never reach a model hub; fail fast instead of waiting on a timeout.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Most of a small probe test's time is XLA compiling the sweep's programs, and
# many tests (and the CLI subprocesses they start, which inherit the variable)
# compile the same program for the same shapes. A compilation cache private to
# this session lets them share it; keyed on the program and the jax version, it
# cannot change a result, and it starts empty so it hides nothing between sessions.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _jax_cache = tempfile.mkdtemp(prefix="probing-tests-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _jax_cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
    atexit.register(shutil.rmtree, _jax_cache, ignore_errors=True)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto` (pyproject.toml): a worker per core, at most 4. Most of a test's time is
    single-threaded (XLA compiling, Python), so two workers on 2 cores finish the suite
    in a little over half the time; more than 4 would mostly multiply memory."""
    return max(1, min(4, os.cpu_count() or 1))


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory):
    """Tiny checkpoints, generated datasets and embeddings go to a fresh cache.

    The user's ~/.cache/probing is left alone, and every test session builds
    what it uses, so a stale cache cannot hide a broken builder.
    """
    previous = os.environ.get("PROBING_CACHE_DIR")
    os.environ["PROBING_CACHE_DIR"] = str(tmp_path_factory.mktemp("probing_cache"))
    yield
    if previous is None:
        del os.environ["PROBING_CACHE_DIR"]
    else:
        os.environ["PROBING_CACHE_DIR"] = previous


@pytest.fixture(scope="module")
def single_thread():
    """Tiny matrices gain nothing from threads, and on a shared 2-core machine
    the thread pool's contention makes their forwards many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
