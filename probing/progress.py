"""A progress line for long loops: done / total, rate, ETA (absl logging)."""

from __future__ import annotations

import time

from absl import logging


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class Progress:
    """Logs `what: done/total (pct) | rate unit/s | extra | ETA` every `every_s` seconds."""

    def __init__(self, what: str, total: int, unit: str = "ex", every_s: float = 10.0):
        self.what = what
        self.total = total
        self.unit = unit
        self.every_s = every_s
        self.done = 0
        self.extra_counts: dict[str, int] = {}
        self._start = time.perf_counter()
        self._last_log = self._start

    def update(self, count: int, force: bool = False, **extra_counts: int) -> None:
        """Adds `count` finished items (and e.g. tokens=...) and maybe logs."""
        self.done += count
        for key, value in extra_counts.items():
            self.extra_counts[key] = self.extra_counts.get(key, 0) + value
        now = time.perf_counter()
        if force or self.done >= self.total or now - self._last_log >= self.every_s:
            self._last_log = now
            logging.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.perf_counter()) - self._start, 1e-9)
        rate = self.done / elapsed
        parts = [
            f"{self.what}: {self.done}/{self.total} ({100.0 * self.done / max(self.total, 1):.1f}%)",
            f"{rate:.2f} {self.unit}/s",
        ]
        parts += [f"{value / elapsed:.0f} {key}/s" for key, value in self.extra_counts.items()]
        remaining = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta = _duration(remaining) if remaining != float("inf") else "?"
        parts.append(f"elapsed {_duration(elapsed)}, ETA {eta}")
        return " | ".join(parts)
