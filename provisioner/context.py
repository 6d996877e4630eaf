"""What one run carries through every stage: its settings, progress tracker, retry budget and stop.

Owns: `Stop` (a stop request that remembers its signal), `RunContext` (frozen; passed instead of four
arguments) and `call_interruptible` (the one way to run a blocking library call that SIGTERM must be
able to cut short). Imports only config, errors, progress, retry and sources: every stage may import it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .config import Config
from .errors import Interrupted
from .observe.progress import Tracker
from .redact import Redactor
from .retry import RetryBudget
from .sources import SourceBook

T = TypeVar("T")

DEFAULT_SIGNUM = int(signal.SIGTERM)
POLL_SECONDS = 0.1  # how often a waiting caller re-checks its stop request


class Stop(threading.Event):
    """A stop request that remembers which signal asked for it (for the 128+N exit code)."""

    signum: int = DEFAULT_SIGNUM

    def stop(self, signum: int = DEFAULT_SIGNUM) -> None:
        self.signum = signum
        self.set()


def signum_of(stop: threading.Event) -> int:
    """The signal behind a stop request; a plain `threading.Event` from an API caller counts as SIGTERM."""
    return int(getattr(stop, "signum", DEFAULT_SIGNUM))


def interrupted(stop: threading.Event) -> Interrupted:
    """The error to raise once `stop` is set."""
    return Interrupted(signum_of(stop))


def check_stop(stop: threading.Event) -> None:
    if stop.is_set():
        raise interrupted(stop)


def call_interruptible(fn: Callable[[], T], *, stop: threading.Event, name: str,
                       give_up: Callable[[], None] | None = None) -> T:
    """Run a blocking call in a daemon thread so a stop request is answered at once, not after the
    call's own timeout (which can equal the pod's whole termination grace period).

    `give_up`, polled with the stop request, may raise to abandon the call early (e.g. the retry
    budget ran out while a library retried internally). An abandoned call's thread is left to finish
    on its own: it is a daemon and its result is discarded.
    """
    box: dict[str, object] = {}
    done = threading.Event()

    def work() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller's thread below
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=work, name=name, daemon=True).start()
    while not done.wait(POLL_SECONDS):
        check_stop(stop)
        if give_up is not None:
            give_up()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


@dataclass(frozen=True)
class RunContext:
    """One run's shared parts. Frozen: a stage reads them, it never swaps them."""

    config: Config
    tracker: Tracker
    budget: RetryBudget
    stop: threading.Event
    redactor: Redactor = field(default_factory=Redactor)  # the run's secrets (its token) for every message
    sources: SourceBook = field(default_factory=SourceBook)  # --mirrors: which failed for which file, in this run
    # A several-models run's fetch parts shared by every model (fetch.share.FetchShare: one worker pool,
    # one connection pool, one copy of identical files). Typed loosely: context sits below fetch.
    shared: Any = None

    def check_stop(self) -> None:
        check_stop(self.stop)

    def pause(self, seconds: float) -> None:
        """Wait `seconds` before a retry; raise `Interrupted` at once if a stop is requested meanwhile."""
        if self.stop.wait(seconds):
            raise interrupted(self.stop)
