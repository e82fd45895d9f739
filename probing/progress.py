"""Progress of long loops, one format everywhere: a tqdm bar on a terminal, a log line elsewhere.

    progress = Progress("extract", total=num_rows, unit="ex")
    for batch in batches:
        ...
        progress.update(len(batch), tokens=num_tokens)
    progress.close()

On a terminal (stderr is a TTY) or in a Jupyter notebook it draws a tqdm
bar. In batch logs (SLURM,
`nohup`, CI, a notebook's captured stderr) it writes one absl INFO line at
most every `every_s` seconds (default 10, or $PROBING_PROGRESS_EVERY_S) and
one when a loop that ran that long ends, so a log never fills with progress. The rate is
smoothed (tqdm's exponential moving average over updates) and the ETA is the
remaining count over that rate. `paused()` excludes a stretch (a compilation)
from the clock, so setup time does not distort the rate; `shrink` lowers the
total when a loop ends early (probes that stopped), and a loop whose total is
only a bound (`bound=True`) shows its ETA as a range, from the least total it
can still have (`at_least`) to the bound.

`quiet_libraries()` turns off the progress bars and chatter of transformers,
huggingface_hub and sentence-transformers, whose bars are unreadable in logs,
and JAX's note about absent TPU backends.
"""

from __future__ import annotations

import contextlib
import logging as std_logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import TextIO

from absl import logging
from tqdm import tqdm
from tqdm.std import EMA

DEFAULT_EVERY_S = 10.0
EVERY_S_ENV = "PROBING_PROGRESS_EVERY_S"
# Set to 1 to get log lines even on a terminal (e.g. under `script` or tmux logging).
LINES_ENV = "PROBING_PROGRESS_LINES"
# No two lines of one loop within this many seconds (the final line included).
MIN_LINE_GAP_S = 1.0
# tqdm's default: the weight of the newest update in the moving averages.
SMOOTHING = 0.3


def _format(bound: bool, bar: bool) -> str:
    # A bound's ETA is a range, written by Progress itself (in the postfix on a bar).
    eta = "" if bound else ", ETA {remaining}"
    middle = " {bar:20} " if bar else " "
    counts = "{n_fmt}/{total_fmt} ({percentage:.0f}%) | {rate_fmt}{postfix} | elapsed {elapsed}"
    return "{desc}:" + middle + counts + eta


def default_every_s() -> float:
    return float(os.environ.get(EVERY_S_ENV, DEFAULT_EVERY_S))


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (whose stderr is no TTY but draws bars)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return type(shell).__name__ == "ZMQInteractiveShell"


def on_terminal(stream: TextIO | None = None) -> bool:
    """Whether progress is drawn as a bar: stderr is a TTY or a notebook's, and log lines
    were not asked for."""
    if os.environ.get(LINES_ENV, "") not in ("", "0"):
        return False
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)()) or in_notebook()


class Progress:
    """Done / total, smoothed rate, ETA of one loop; a bar on a TTY, throttled lines otherwise.

    Args:
      what: the loop's name, the start of every line.
      total: the number of items (an upper bound with `bound=True`).
      unit: the items' unit ("ex", "probe-epochs", ...).
      every_s: seconds between log lines (None: $PROBING_PROGRESS_EVERY_S or 10).
      tty: draw a bar (None: when stderr is a terminal, see on_terminal).
      clock: seconds, monotonic (tests pass a fake one).
      stream: where the bar is drawn (default stderr).
      bound: `total` is an upper bound (the loop may end early); the ETA is then a
        range, from the least total the loop can still have (`at_least`, default
        the bound) to the bound: "ETA 00:12–04:10".
      uneven: the items differ in cost in no particular order and have no warm-up
        (a report's figure kinds: a heatmap of 80 categories, then one that draws
        nothing for this task): the rate is the mean over every item so far, not a
        moving average over the last few, which swings with each item's cost (the
        demo report's first ETA read 2:28 for 1:32 left with it).
    """

    def __init__(
        self,
        what: str,
        total: int,
        unit: str = "it",
        every_s: float | None = None,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        stream: TextIO | None = None,
        bound: bool = False,
        uneven: bool = False,
    ):
        self.what = what
        self.uneven = uneven
        self.total = int(total)
        self.unit = unit
        self.every_s = default_every_s() if every_s is None else float(every_s)
        self.bound = bound
        self.done = 0
        self.extra_counts: dict[str, int] = {}
        self._clock = clock
        self._paused_s = 0.0
        self._start = clock()
        self._last_update = self._start
        self._last_log = self._start
        self._rate_n, self._rate_t = EMA(SMOOTHING), EMA(SMOOTHING)
        self._closed = False
        self._last_logged_done = -1
        self._updates = 0
        self._least: int | None = None
        tty = on_terminal(stream) if tty is None else tty
        self._bar = None
        if tty:
            self._bar = tqdm(
                total=self.total,
                desc=what,
                unit=unit,
                file=stream or sys.stderr,
                bar_format=_format(bound, bar=True),
                smoothing=SMOOTHING,
                mininterval=0.5,
                delay=1.0,  # no bar flashes for loops shorter than a second
                dynamic_ncols=True,
            )

    # -- the clock --------------------------------------------------------

    def _active(self, now: float) -> float:
        """Seconds since start, less the paused ones."""
        return max(now - self._start - self._paused_s, 0.0)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """A stretch (compilation, loading) that does not count as loop time."""
        began = self._clock()
        try:
            yield
        finally:
            spent = self._clock() - began
            self._paused_s += spent
            self._last_update += spent
            self._last_log += spent
            if self._bar is not None:
                self._bar.unpause()

    def restart(self) -> None:
        """Starts the clock now (after setup that should not count)."""
        self._start = self._last_update = self._last_log = self._clock()
        self._paused_s = 0.0
        if self._bar is not None:
            self._bar.reset(total=self.total)
            self._bar.update(self.done)

    # -- counting ---------------------------------------------------------

    def update(self, count: int = 1, **extra_counts: int) -> None:
        """Adds `count` finished items (and e.g. tokens=...); logs at most every `every_s`."""
        now = self._clock()
        self.done += count
        for key, value in extra_counts.items():
            self.extra_counts[key] = self.extra_counts.get(key, 0) + int(value)
        dt = now - self._last_update
        # The first update carries the loop's warm-up (a jit compile, the first
        # batch's allocations): the rate is measured from the second on, and
        # no line is logged before there is one.
        warm = self._updates > 0 or self.uneven
        self._updates += 1
        if warm and count and dt > 0:
            self._rate_n(count)
            self._rate_t(dt)
        self._last_update = now
        if self._bar is not None:
            self._bar.set_postfix_str(self._postfix(now), refresh=False)
            self._bar.update(count)
            return
        due = warm and now - self._last_log >= self.every_s
        # A line whose ETA is under a second would be followed by the "done" line within
        # it (a bootstrap after its compile): two lines of one loop in a second. Skip it.
        if due and self.done < self.total:
            eta = self.eta(now)
            due = eta is None or eta >= MIN_LINE_GAP_S
        if due or (self.done >= self.total and self._worth(now)):
            self._log(now)

    def _worth(self, now: float) -> bool:
        """A final line is logged for loops that logged before or ran `every_s`: short loops
        (a report's many small bootstraps) stay silent."""
        return self._last_logged_done >= 0 or self._active(now) >= self.every_s

    def at_least(self, total: float) -> None:
        """The least total a bounded loop can still reach (its ETA range's low end)."""
        self._least = int(min(max(total, self.done), self.total))

    def shrink(self, count: int) -> None:
        """Lowers the total by `count` items that will not run (a loop that ended early)."""
        self.total = max(self.total - int(count), self.done)
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()
        elif (
            self.done >= self.total
            and self._last_logged_done != self.done
            and self._worth(self._clock())
        ):
            self._log(self._clock())

    def close(self) -> None:
        """Ends the loop: the bar is closed, or a last line logged if the last was not final."""
        if self._closed:
            return
        if self._bar is not None:
            self._bar.close()
        elif self._last_logged_done != self.done and self._worth(self._clock()):
            self._log(self._clock())
        self._closed = True

    # -- numbers and text -------------------------------------------------

    def rate(self, now: float | None = None) -> float:
        """Items per second: the moving average over updates (the mean before any, and
        always for `uneven` items)."""
        if not self.uneven and self._rate_t.calls and self._rate_t() > 0:
            return self._rate_n() / self._rate_t()
        elapsed = self._active(self._clock() if now is None else now)
        return self.done / elapsed if elapsed > 0 else 0.0

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left at the smoothed rate; None before any rate is known."""
        rate = self.rate(now)
        return (self.total - self.done) / rate if rate > 0 else None

    def _eta_range(self, now: float) -> str:
        """A bounded loop's ETA: from its least possible total to its bound, at the rate."""
        rate = self.rate(now)
        if rate <= 0:
            return "ETA ?"
        least = self.total if self._least is None else max(self._least, self.done)
        low, high = (tqdm.format_interval((t - self.done) / rate) for t in (least, self.total))
        return f"ETA {high}" if low == high else f"ETA {low}–{high}"

    def _postfix(self, now: float) -> str:
        elapsed = self._active(now)
        parts = []
        if elapsed:
            parts = [f"{value / elapsed:.0f} {key}/s" for key, value in self.extra_counts.items()]
        if self.bound and self._bar is not None:
            parts.append(self._eta_range(now))
        return ", ".join(parts)

    def line(self, now: float | None = None) -> str:
        """The progress line (the bar's text without the bar)."""
        now = self._clock() if now is None else now
        text = tqdm.format_meter(
            self.done,
            self.total,
            self._active(now),
            prefix=self.what,
            unit=self.unit,
            rate=self.rate(now) or None,
            postfix=self._postfix(now) or None,
            bar_format=_format(self.bound, bar=False),
        )
        return f"{text}, {self._eta_range(now)}" if self.bound else text

    def final_line(self, now: float | None = None) -> str:
        """The line of a finished loop: how many, how long, the mean rate."""
        now = self._clock() if now is None else now
        elapsed = self._active(now)
        rate = self.done / elapsed if elapsed > 0 else 0.0
        minutes, seconds = divmod(round(elapsed), 60)
        return (
            f"{self.what}: done, {self.done} {self.unit} in {minutes:02d}:{seconds:02d} "
            f"({rate:.3g} {self.unit}/s)"
        )

    def _log(self, now: float) -> None:
        self._last_log = now
        self._last_logged_done = self.done
        final = self.done >= self.total
        logging.info("%s", self.final_line(now) if final else self.line(now))


@contextlib.contextmanager
def step(what: str) -> Iterator[None]:
    """Logs `what` and, when it ends, how long it took: for one-off steps (compilation)."""
    start = time.monotonic()
    logging.info("%s ...", what)
    yield
    logging.info("%s: done in %.1fs", what, time.monotonic() - start)


def _quiet_hugging_face() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    with contextlib.suppress(ImportError):
        import transformers

        transformers.utils.logging.set_verbosity_warning()
        transformers.utils.logging.disable_progress_bar()
    with contextlib.suppress(ImportError, AttributeError):
        import huggingface_hub.utils

        huggingface_hub.utils.disable_progress_bars()


def quiet_libraries(hugging_face: bool = True) -> None:
    """Silences the bars and INFO chatter of the Hugging Face libraries.

    Their download / "Loading weights" bars redraw with carriage returns,
    which turns into pages of fragments in a log file; their warnings still
    reach the log (WARNING and above, through Python logging).
    `hugging_face=False` is for commands that never load them (training,
    reports): importing transformers only to quiet it costs 1-3 s of start-up.
    """
    if hugging_face:
        _quiet_hugging_face()
    # jax._src.xla_bridge: "Unable to initialize backend 'tpu'" on every machine without one.
    for name in ("sentence_transformers", "httpx", "urllib3", "filelock", "jax._src.xla_bridge"):
        std_logging.getLogger(name).setLevel(std_logging.WARNING)
