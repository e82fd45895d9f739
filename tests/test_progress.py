"""probing.progress: throttled lines, a right ETA, bars only on a terminal; the train log."""

from __future__ import annotations

import collections
import io
import itertools
import logging as std_logging
import os
import re
import subprocess
import sys
import types

import jax.numpy as jnp
import pytest

from probing.progress import Progress, on_terminal
from probing.testing.planted import planted_arrays, write_workdir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def lines(caplog):
    """The progress lines logged (absl logs through the 'absl' Python logger)."""
    with caplog.at_level(std_logging.INFO, logger="absl"):
        yield lambda: [r.getMessage() for r in caplog.records]


def test_updates_within_a_second_give_at_most_one_line(lines):
    clock = FakeClock()
    progress = Progress("loop", total=10_000, unit="it", every_s=1.0, tty=False, clock=clock)
    for _ in range(800):  # 0.88 s
        clock.now += 0.0011
        progress.update(1)
    assert len(lines()) <= 1
    for _ in range(800):  # 0.88 s more: one line at the 1 s mark
        clock.now += 0.0011
        progress.update(1)
    assert len(lines()) == 1
    assert lines()[0].startswith("loop: 910/10000")


def test_eta_of_a_steady_loop_is_the_remaining_time(lines):
    clock = FakeClock()
    progress = Progress("steady", total=100, unit="ex", every_s=5.0, tty=False, clock=clock)
    for _ in range(20):
        clock.now += 0.5  # 2 ex/s
        progress.update(1)
    assert progress.rate() == pytest.approx(2.0)
    assert progress.eta() == pytest.approx(40.0)  # 80 left at 2 ex/s
    # A paused stretch (a compilation) does not count as loop time.
    with progress.paused():
        clock.now += 300.0
    clock.now += 0.5
    progress.update(1)
    assert progress.eta() == pytest.approx(39.5)
    assert "ETA 00:39" in progress.line() or "ETA 00:40" in progress.line()


def test_the_first_update_is_warm_up_not_rate(lines):
    clock = FakeClock()
    progress = Progress("warm", total=100, every_s=2.0, tty=False, clock=clock)
    clock.now += 30.0  # the first batch compiles
    progress.update(1)
    assert lines() == []  # no ETA from the warm-up alone
    for _ in range(9):
        clock.now += 0.25
        progress.update(1)
    assert progress.rate() == pytest.approx(4.0)
    assert progress.eta() == pytest.approx(22.5)  # 90 left at 4/s, not at 10 / 32 s
    # The first line comes with the second update, its ETA already at the real rate.
    assert lines()[0] == "warm: 2/100 (2%) |  4.00it/s | elapsed 00:30, ETA 00:24"


def test_smoothed_rate_follows_a_change_of_speed():
    clock = FakeClock()
    progress = Progress("speed", total=1000, every_s=5.0, tty=False, clock=clock)
    for _ in range(50):
        clock.now += 1.0
        progress.update(1)
    for _ in range(50):
        clock.now += 0.1
        progress.update(1)
    # The mean rate over all of it is 100 / 55 s = 1.8/s; the smoothed one is the recent 10/s.
    assert progress.rate() == pytest.approx(10.0, rel=0.01)


def test_uneven_items_take_the_mean_rate(lines):
    """Figure kinds of a report: costs that swing item to item, no warm-up."""
    costs = [4.0, 14.0, 0.1, 9.0, 3.0] * 2
    clock = FakeClock()
    progress = Progress("figures", total=10, every_s=10.0, tty=False, clock=clock, uneven=True)
    for cost in costs[:2]:
        clock.now += cost
        progress.update(1)
    # 18 s for 2 items: 9 s each, 8 left -> 72 s (a moving average over the second
    # item alone would say 8 x 14 s = 112 s, for 57.2 s really left).
    assert progress.eta() == pytest.approx(72.0)
    assert lines()[0] == "figures: 2/10 (20%) |  9.00s/it | elapsed 00:18, ETA 01:12"
    for cost in costs[2:]:
        clock.now += cost
        progress.update(1)
    assert lines()[-1] == "figures: done, 10 it in 01:00 (0.166 it/s)"


def test_no_line_just_before_the_done_line(lines):
    """A bootstrap: 10 s of compile in the first update, then 0.7 s for the rest."""
    clock = FakeClock()
    progress = Progress("bootstrap", total=10, every_s=10.0, tty=False, clock=clock)
    clock.now += 10.0
    progress.update(1)
    for _ in range(9):
        clock.now += 0.08
        progress.update(1)
    progress.close()
    assert lines() == ["bootstrap: done, 10 it in 00:11 (0.933 it/s)"]


def test_log_lines_not_bars_without_a_terminal(lines):
    clock = FakeClock()
    stream = io.StringIO()
    progress = Progress("batch", total=30, every_s=10.0, tty=False, clock=clock, stream=stream)
    for _ in range(30):
        clock.now += 1.0
        progress.update(1, tokens=100)
    progress.close()
    logged = lines()
    assert stream.getvalue() == ""
    assert len(logged) == 3  # at 10 s, 20 s and the end (30 s)
    assert all("\r" not in line and "█" not in line for line in logged)
    assert re.match(r"batch: 20/30 \(67%\) \| +1\.00it/s, 100 tokens/s \| elapsed 00:20", logged[1])
    assert logged[-1] == "batch: done, 30 it in 00:30 (1 it/s)"


def test_a_bar_on_a_terminal_and_no_log_lines(lines):
    stream = io.StringIO()
    progress = Progress("bar", total=5, tty=True, stream=stream)
    progress._bar.delay = 0  # draw at once (a real terminal waits a second)
    for _ in range(5):
        progress.update(1)
    progress.close()
    assert "\r" in stream.getvalue() and "bar:" in stream.getvalue()
    assert lines() == []


def test_a_notebook_gets_a_bar(monkeypatch):
    class ZMQInteractiveShell:  # what get_ipython() returns in a Jupyter kernel
        pass

    fake = types.SimpleNamespace(get_ipython=ZMQInteractiveShell)
    monkeypatch.setitem(sys.modules, "IPython", fake)
    assert on_terminal(io.StringIO())
    monkeypatch.setenv("PROBING_PROGRESS_LINES", "1")
    assert not on_terminal(io.StringIO())


def test_short_loops_stay_silent_and_a_bound_shrinks(lines):
    clock = FakeClock()
    progress = Progress("short", total=10, every_s=10.0, tty=False, clock=clock, bound=True)
    clock.now += 1.0
    progress.update(1)
    clock.now += 1.0
    progress.update(2)  # 2 items/s measured
    assert progress.line().endswith("ETA 00:03")  # 7 left at most
    progress.at_least(5)
    assert progress.line().endswith("ETA 00:01–00:03")  # 2 to 7 left
    progress.shrink(7)  # the loop ended early: the rest will not run
    progress.close()
    assert progress.total == 3
    assert lines() == []  # under every_s: no line at all


@pytest.mark.slow
def test_train_all_layers_log_repeats_no_line_within_a_second(tmp_path):
    """The batch log of a real run: each loop's line at most once a second; a summary on stdout."""
    location = str(tmp_path / "wd")
    write_workdir(
        location, planted_arrays(2000, 6, 16, [3], strength=3.0, seed=1), ("mean", "last")
    )
    env = {**os.environ, "PROBING_PROGRESS_EVERY_S": "1", "JAX_PLATFORMS": "cpu"}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "probing.train_all_layers",
            f"--workdir={location}",
            # Enough epochs that training outlasts several progress intervals (about
            # 5 s here; at 150 epochs it ended within 2 s and printed no line at all).
            "--config.epochs=500",
            "--config.patience=500",
            "--config.batch_size=8",
            "--config.bootstrap_resamples=200",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    # absl lines: I1201 02:40:00.123456 <thread> file.py:12] message
    times_by_loop = collections.defaultdict(list)
    log = [
        re.match(r"I\d{4} (\d\d):(\d\d):(\d\d\.\d+) +\d+ \S+\] (.*)", line)
        for line in run.stderr.splitlines()
    ]
    for match in filter(None, log):
        hours, minutes, seconds, message = match.groups()
        # A loop's lines differ only in their numbers: key them by the text before the first digit.
        key = re.split(r"\d", message, maxsplit=1)[0]
        times_by_loop[key].append(int(hours) * 3600 + int(minutes) * 60 + float(seconds))
    sweep = [k for k in times_by_loop if k.startswith("probe sweep (mean): ")]
    assert sweep, run.stderr[-3000:]
    for key, times in times_by_loop.items():
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(gap >= 0.99 for gap in gaps), (key, gaps)
    assert "set up and compiled in" in run.stderr
    # The sweep's clock starts after set-up and compilation (tens of seconds here):
    # the first line's elapsed time is training alone, about every_s = 1 s.
    first = re.search(r"probe sweep \(mean\): \d+/\d+ .*elapsed 00:(\d\d)", run.stderr)
    assert first and int(first.group(1)) <= 3, first
    assert "best layer" in run.stdout and f"{location}/probes/mean" in run.stdout
    assert len(run.stdout.splitlines()) <= 24  # one screen


def test_sweep_eta_low_end_follows_the_stopping_rule():
    from probing.probes.sweep import _earliest_end

    state = {"active": jnp.array([True, False, True]), "anchor_epoch": jnp.array([3, 9, 5])}
    # The latest active probe improved at epoch 5: with patience 5 it runs to epoch 10.
    assert _earliest_end(state, 5, num_epochs=300, patience=5) == 10
    assert _earliest_end(state, 5, num_epochs=8, patience=5) == 8  # the budget caps it
    assert _earliest_end(state, 5, num_epochs=300, patience=0) == 300  # no early stopping
    state["active"] = jnp.zeros(3, bool)
    assert _earliest_end(state, 5, num_epochs=300, patience=5) == 6  # all stopped: this epoch


_IMPORTS_AT_EXIT = (
    "import atexit, runpy, sys\n"
    "atexit.register(lambda: print('transformers imported:', 'transformers' in sys.modules))\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_module(sys.argv[0], run_name='__main__')\n"
)


@pytest.mark.parametrize(
    "module, arguments",
    [
        ("probing.train_all_layers", ["--workdir=/nonexistent/wd"]),
        ("probing.report", ["--workdirs=/nonexistent/wd", "--out=/nonexistent/out"]),
    ],
)
def test_training_and_report_commands_do_not_import_transformers(module, arguments):
    """Quieting Hugging Face's bars imported transformers (1-3 s) in commands that never use it."""
    run = subprocess.run(
        [sys.executable, "-c", _IMPORTS_AT_EXIT, module, *arguments],
        cwd=REPO,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0  # the workdir does not exist: quieted, then refused
    assert "transformers imported: False" in run.stdout, run.stdout + run.stderr[-2000:]
