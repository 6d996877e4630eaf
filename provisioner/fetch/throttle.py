"""The bandwidth cap (`--max-bytes-per-second`): one token bucket shared by every connection of a fetch.

Owns `TokenBucket`. Each received piece reserves its bytes; the answer is how long the reader must
pause before reading on, so the sum over all connections stays at the rate (plus a small burst).
Reservations are made under one lock on a "next free time" (GCRA), so no thread can starve the
others and nothing sleeps while holding the lock. The clock is injectable for tests.
Standard library only; engine.py imports it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

BURST_SECONDS = 0.25  # idle time that may be spent at once: smooths piece sizes, keeps the cap tight


class TokenBucket:
    def __init__(self, rate: float, *, burst_seconds: float = BURST_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not rate > 0:
            raise ValueError("rate must be > 0")
        self.rate = float(rate)
        self._burst = burst_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._next = clock()  # when the bucket is next empty of reservations

    def reserve(self, n: int) -> float:
        """Account `n` bytes; return the seconds the caller must wait before reading more (0: none)."""
        with self._lock:
            now = self._clock()
            self._next = max(self._next, now) + n / self.rate  # idle time is not banked...
            # ...except the burst: bytes received by any time t stay under rate * (t + burst)
            return max(0.0, self._next - now - self._burst)


__all__ = ["TokenBucket"]
