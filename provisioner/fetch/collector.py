"""Gathering the fetch workers' outcomes (used by engine.fetch_files): one place decides when a failure or a
stop request aborts the others, softly first, then hard after ABORT_GRACE_SECONDS."""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from ..manifest import FileEntry
from ..redact import redact
from .http import Aborted

if TYPE_CHECKING:
    from .engine import FetchedFile

log = logging.getLogger("provisioner.fetch")

POLL_SECONDS = 0.1  # how often the coordinator looks at the external stop event
ABORT_GRACE_SECONDS = 0.3  # after a stop/failure, workers get this long to reach a chunk boundary


class Collector:
    """Gathers the workers' outcomes as they finish: the first real error aborts the others; a stop
    request aborts softly, then hard after ABORT_GRACE_SECONDS (workers blocked in a stalled read)."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.results: dict[str, FetchedFile] = {}
        self.first_error: BaseException | None = None
        self.stopped = False
        self.futures: dict[Future[FetchedFile], FileEntry] = {}
        self._finished: queue.SimpleQueue[Future[FetchedFile]] = queue.SimpleQueue()
        self._aborted_at: float | None = None

    def track(self, fut: Future[FetchedFile], entry: FileEntry) -> None:
        self.futures[fut] = entry
        fut.add_done_callback(self._finished.put)  # O(1) per file, unlike wait() over every pending future

    def run(self, stop: threading.Event) -> None:
        pending = len(self.futures)
        while pending:
            done = self._drain()
            pending -= len(done)
            for fut in done:
                self._settle(fut)
            self._watch_stop(stop)

    def _drain(self) -> list[Future[FetchedFile]]:
        try:
            # timeout: wake up to notice the external stop event (set by a signal handler)
            done = [self._finished.get(timeout=POLL_SECONDS)]
        except queue.Empty:  # nothing finished in this period: look at the stop event below
            done = []
        while not self._finished.empty():
            done.append(self._finished.get_nowait())
        return done

    def _settle(self, fut: Future[FetchedFile]) -> None:
        exc = fut.exception()
        if exc is None:
            fetched = fut.result()
            self.results[fetched.entry.path] = fetched
        elif isinstance(exc, Aborted):
            self.stopped = True
        elif self.first_error is None:
            self.first_error = exc
            log.error("fetch %s failed: %s", self.futures[fut].path, redact(str(exc), self.session.secrets))
            self.session.abort()  # the others flush their journals and stop

    def _watch_stop(self, stop: threading.Event) -> None:
        session = self.session
        if stop.is_set() and not session.aborted.is_set():
            log.warning("fetch: stop requested; flushing partial data")
            session.abort()
        if session.aborted.is_set():
            now = time.monotonic()
            self._aborted_at = now if self._aborted_at is None else self._aborted_at
            if now - self._aborted_at >= ABORT_GRACE_SECONDS:
                session.abort(hard=True)  # wake workers blocked in a stalled read
