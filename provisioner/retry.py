"""Retry policy shared by the planner and the engines.

One `RetryBudget` per run: a clock that runs only while the run makes no progress. Any byte that
arrives restarts it, so a slow-but-moving download never dies of the budget, while an outage
longer than the budget ends the run with exit code 7 and the partial data kept.
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from collections.abc import Callable

from .errors import RetryBudgetExhausted

BACKOFF_BASE_SECONDS = 0.5


class RetryBudget:
    def __init__(self, seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._last_progress = clock()

    def progress(self) -> None:
        """Bytes arrived: the run is healthy, restart the clock."""
        with self._lock:
            self._last_progress = self._clock()

    def remaining(self) -> float:
        with self._lock:
            return self.seconds - (self._clock() - self._last_progress)

    def check(self, *, reason: str, message: str) -> None:
        """Raise once the run has gone `seconds` without progress."""
        if self.remaining() <= 0:
            raise RetryBudgetExhausted(
                f"gave up after {self.seconds:g}s without progress (retry budget); last error: {message}",
                reason=reason, budget_seconds=self.seconds,
            )

    def delay(self, *, attempt: int, cap: float, retry_after: float | None = None) -> float:
        """How long to wait before the next attempt, never past the end of the budget."""
        wait = retry_after if retry_after is not None else backoff_delay(attempt, cap=cap)
        return max(0.0, min(wait, self.remaining()))


def backoff_delay(attempt: int, *, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter (AWS architecture blog): uniform(0, min(cap, base * 2**attempt))."""
    ceiling = min(cap, BACKOFF_BASE_SECONDS * (2 ** min(attempt, 30)))
    return (rng or random).uniform(0, ceiling)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date. None if absent or unparseable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)  # delta-seconds; some servers send fractions
    except ValueError:  # not a number: maybe an HTTP date
        pass
    else:
        return seconds if seconds >= 0 and seconds == seconds and seconds != float("inf") else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):  # garbage header: fall back to our own backoff
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def sleep_or_stop(seconds: float, stop: threading.Event | None) -> bool:
    """Wait, waking early on stop. True if stop was requested."""
    if stop is None:
        time.sleep(seconds)
        return False
    return stop.wait(seconds)
