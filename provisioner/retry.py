"""Retry policy shared by the planner and the engines.

One `RetryBudget` per run: a clock that runs only while the run makes no progress. Any byte that
arrives restarts it, so a slow-but-moving download never dies of the budget, while an outage
longer than the budget ends the run with exit code 7 and the partial data kept. `retry_step` is the
one step every retry loop takes (budget check, delay, record). Imports only errors (and context for
a type): context imports this module.
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import RetryBudgetExhausted

if TYPE_CHECKING:
    from .context import RunContext

BACKOFF_BASE_SECONDS = 0.5
WAIT_SLICE_SECONDS = 0.1  # wait_for_progress re-checks its stop event at least this often


class RetryBudget:
    def __init__(self, seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._last_progress = clock()
        self._generation = 0  # bumped by every progress(): "did anything arrive since?"
        self._waiters = 0  # threads inside wait_for_progress (progress() notifies only if any)

    def progress(self) -> None:
        """Bytes arrived: the run is healthy, restart the clock (and wake workers backing off)."""
        with self._lock:
            self._last_progress = self._clock()
            self._generation += 1
            if self._waiters:
                self._cond.notify_all()

    @property
    def generation(self) -> int:
        """A counter that changes on every progress(); pass it to wait_for_progress as `since`."""
        with self._lock:
            return self._generation

    def wake(self) -> None:
        """Wake every wait_for_progress now so it re-checks its stop event (e.g. on abort)."""
        with self._lock:
            if self._waiters:
                self._cond.notify_all()

    def wait_for_progress(self, timeout: float, *, since: int, stop: threading.Event | None = None) -> bool:
        """Sleep up to `timeout` seconds; return True at once when progress() was called after the
        generation `since` (another connection got bytes: the remote is back), False after the full
        timeout or when `stop` is set (noticed within WAIT_SLICE_SECONDS, or at once after wake())."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._waiters += 1
            try:
                while self._generation == since:
                    if stop is not None and stop.is_set():
                        return False
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._cond.wait(min(left, WAIT_SLICE_SECONDS))
                return True
            finally:
                self._waiters -= 1

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


def retry_step(ctx: RunContext, *, reason: str, message: str, attempt: int, retry_after: float | None = None,
               path: str | None = None, immediate: bool = False, record: bool = True) -> float:
    """The step every retry loop takes after a transient failure, returning how long to wait.

    Raises RetryBudgetExhausted once the run has gone the budget without progress; otherwise picks the
    delay (jittered backoff for `attempt`, or the server's Retry-After, never past the budget's end; 0
    when `immediate`) and records the retry in `ctx.tracker` (unless `record` is False: a side check
    whose retries are not the run's). `message` must already be redacted. The wait itself is the
    caller's (`ctx.pause`, or the native engine's progress-aware backoff) and so is the log line.
    """
    ctx.budget.check(reason=reason, message=message)
    delay = 0.0 if immediate else ctx.budget.delay(attempt=attempt, cap=ctx.config.backoff_max,
                                                   retry_after=retry_after)
    if record:
        ctx.tracker.retry(reason=reason, path=path, delay=delay, message=message)
    return delay
