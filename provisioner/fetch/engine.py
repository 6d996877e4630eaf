"""The native download engine: parallel, ranged, resumable across processes, hashing as it goes.

`fetch_files` returns complete `.part` files with the digests computed while streaming (only the one
`verify.matches` compares: sha256 for LFS files, the git blob sha1 otherwise; none under
`config.verify == "none"`, where `Digests` carries "" and the caller must not compare). It never
moves files into the target and never judges checksums: the caller compares the digests with the
plan, calls `discard_partial` and fetches again on a mismatch, then moves the files in place.

Design in brief (docs/design.md has the on-disk layout):
* one `Journal` per file (journal.py): data is `pwrite`n at its final offset, and each
  segment's u64 offset is advanced only after its data write returned, every 256 KiB (or
  0.25 s), so a SIGKILL loses at most one buffered chunk per connection;
* each segment resumes with `Range: bytes=N-M` + `If-Range: <etag>`; a 200 instead of a 206 means
  either the file changed (ETag/size differ: drop and restart) or the server ignores ranges (fall
  back to one stream from 0);
* a `HashFrontier` (frontier.py) hashes bytes in file order while segments land out of
  order, so verification after the last byte costs almost nothing;
* files up to 1 MiB take the small-file path (small.py): the same code on an in-memory
  `SmallJournal`, written once when complete, with their own workers (up to 16 requests in
  flight), since for them round trips and per-file disk work cost more than the bytes;
* requests, redirects and the HTTP status -> error mapping live in http.py;
* every failure is classified into a low-cardinality reason and retried inside the shared
  `RetryBudget`; permanent ones (404, 401/403 from the hub, other 4xx, local I/O) fail fast and
  stop all other workers, which flush their journals first.

Read top-down: `fetch_files` (files in parallel) -> `_Session.fetch_file` (one file, restarts) ->
`_fetch_segments_parallel` / `_fetch_segment` (pieces, retries) -> `_stream_segment` (one response)
-> `_consume` (the write loop). Imports context, errors, manifest, redact, retry, verify and this
package's http, journal, small, frontier and throttle (the bandwidth cap).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import httpx2
from huggingface_hub import hf_hub_url

from ..context import RunContext, interrupted
from ..errors import BadRemoteError, ProvisionerError, TransientError
from ..manifest import FileEntry, Plan
from ..redact import redact
from ..retry import retry_step
from ..sources import Source, SourceFailed
from ..verify.checksums import Digests, wanted_digests
from .collector import ABORT_GRACE_SECONDS, POLL_SECONDS, Collector
from .frontier import HashFrontier
from .http import Aborted, HubHttp, Job, Restart, Retry, classify, make_client
from .journal import Journal, ensure_partial_dir, layout_segments
from .small import SmallJournal, is_small, small_in_flight
from .throttle import TokenBucket

__all__ = ["FetchedFile", "fetch_files", "make_client"]

log = logging.getLogger("provisioner.fetch")

CHUNK_BYTES = 256 << 10  # write + offset update granularity (the most a SIGKILL can lose per connection)
FLUSH_SECONDS = 0.25  # ... or this often on slow links, so progress and offsets stay fresh
MAX_RESTARTS = 3  # per file and call: `changed` / `range_ignored` restarts before giving up
# A backoff ends early when another connection receives bytes (the remote is back), but never before
# this: a connection failing on its own while the others stream must not retry in a tight loop.
WAKE_FLOOR_SECONDS = 0.25
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class FetchedFile:
    """One fetched file: where its bytes are and the digests computed on the way ("" where not computed)."""

    entry: FileEntry
    part_path: Path
    digests: Digests


# ---- public entry point ---------------------------------------------------------------------
def fetch_files(plan: Plan, entries: Sequence[FileEntry], *, ctx: RunContext, state_dir: Path,
                client: httpx2.Client | None = None) -> dict[str, FetchedFile]:
    """Download `entries` into `<state_dir>/partial/` and return {path: FetchedFile}.

    Raises the first permanent error (NotFoundError, UnauthorizedError, BadRemoteError, NoSpaceError,
    LocalIOError), RetryBudgetExhausted after an outage longer than the budget, or Interrupted when
    `ctx.stop` is set. In every case partial data and offsets are flushed and kept for the next call
    (of a small file only a complete one: small.py).
    """
    config, stop = ctx.config, ctx.stop
    large = sorted((e for e in entries if not is_small(e)), key=lambda e: e.size, reverse=True)  # shortest makespan
    small = [e for e in entries if is_small(e)]
    if small:
        ensure_partial_dir(state_dir, needed=0)  # once here, not once per small file
    own_client = client is None
    http = make_client(config) if client is None else client
    session = _Session(plan, ctx=ctx, state_dir=state_dir, client=http)
    # Large files: --max-workers at a time, each on up to --connections-per-file ranged requests. Small
    # files are latency-bound: their own workers keep more requests in flight (small.small_in_flight).
    work: list[tuple[ThreadPoolExecutor, list[FileEntry]]] = []
    if large:
        work.append((ThreadPoolExecutor(max_workers=max(1, config.max_workers), thread_name_prefix="fetch"), large))
    if small:
        work.append((ThreadPoolExecutor(max_workers=min(len(small), small_in_flight(config)),
                                        thread_name_prefix="fetch-small"), small))
    collector = Collector(session)
    try:
        for pool, todo in work:
            for e in todo:
                collector.track(pool.submit(session.fetch_file, e), e)
        collector.run(stop)
    except BaseException:  # KeyboardInterrupt in the caller's thread: stop the workers before leaving
        session.abort(hard=True)
        raise
    finally:
        for pool, _ in work:
            pool.shutdown(wait=True, cancel_futures=True)
        if own_client:
            http.close()
    if collector.first_error is not None:
        raise collector.first_error
    if collector.stopped or len(collector.results) < len(collector.futures):
        raise interrupted(stop)
    return collector.results


def _strong_etag(etag: str | None) -> bool:
    return bool(etag) and not str(etag).startswith("W/")


def _request_headers(job: Job, *, start: int, last: int) -> dict[str, str]:
    """Range (unless the server ignores ranges) + If-Range with the hub's ETag (never sent to a mirror)."""
    journal = job.journal
    headers = {"Accept-Encoding": "identity"}
    if not journal.no_range:
        headers["Range"] = f"bytes={start}-{last}"
        if _strong_etag(journal.etag) and journal.bytes_done and not job.mirror:
            headers["If-Range"] = str(journal.etag)
    return headers


class _Session:
    """State shared by all workers of one `fetch_files` call."""

    def __init__(self, plan: Plan, *, ctx: RunContext, state_dir: Path, client: httpx2.Client) -> None:
        config = ctx.config
        self.plan = plan
        self.ctx = ctx
        self.config = config
        self.state_dir = Path(state_dir)
        self.tracker = ctx.tracker
        self.budget = ctx.budget
        self.http = HubHttp(plan, config=config, client=client)
        self.secrets = (config.token,) if config.token else ()
        self._jobs: set[Job] = set()
        self._jobs_lock = threading.Lock()
        self.aborted = threading.Event()
        # one cap over all connections of this fetch (None: unlimited)
        self.bucket = TokenBucket(config.max_bytes_per_second) if config.max_bytes_per_second else None

    # ---- abort ------------------------------------------------------------------------------
    def abort(self, *, hard: bool = False) -> None:
        self.aborted.set()
        with self._jobs_lock:
            jobs = list(self._jobs)
        for job in jobs:
            job.abort(hard=hard)
        self.budget.wake()  # workers backing off notice their cancel event at once
        if hard:
            self.http.shutdown_all()

    # ---- one file ---------------------------------------------------------------------------
    def fetch_file(self, entry: FileEntry) -> FetchedFile:
        if self.aborted.is_set():
            raise Aborted()
        journal = (SmallJournal.start(self.state_dir, entry) if is_small(entry) else
                   Journal.open(self.state_dir, entry, split_threshold=self.config.split_threshold,
                                connections=self.config.connections_per_file))
        hub_url = hf_hub_url(self.plan.repo_id, entry.path, revision=self.plan.ref, endpoint=self.plan.endpoint)
        path = entry.path
        ok = False
        try:
            resumed = journal.bytes_done
            self.tracker.file_started(path, offset=resumed)
            log.debug("fetch %s: %d bytes, %d segment(s), %d already on disk", path, entry.size,
                     len(journal.segments), resumed)
            restarts = 0
            while True:
                source = self._source(path, hub_url)
                job = Job(entry, journal, source.url, aborted=self.aborted, mirror=source.mirror)
                with self._jobs_lock:
                    self._jobs.add(job)
                if self.aborted.is_set():
                    job.cancel.set()
                try:
                    digests = self._download(job)
                    self.tracker.file_source(path, source.label)
                    break
                except SourceFailed as f:  # a mirror let us down: the next source resumes from the same offsets
                    self._mirror_failed(job, f)
                except Restart as r:  # changed on the hub or Range ignored: drop the partial, lay out again
                    restarts += 1
                    message = redact(f"{path}: {r.message}", self.secrets)
                    if restarts > MAX_RESTARTS:
                        raise TransientError(f"{path} keeps changing on the hub while downloading ({message}); "
                                             "re-plan and try again", reason=r.reason) from None
                    self.budget.check(reason=r.reason, message=message)
                    single = r.reason == "range_ignored" or journal.no_range
                    segments = ([(0, entry.size)] if single else
                                layout_segments(entry.size, split_threshold=self.config.split_threshold,
                                                connections=self.config.connections_per_file))
                    dropped = journal.reset(segments=segments, no_range=single)
                    self.ctx.sources.forget_contributors(path)
                    self.tracker.discard_bytes(path, dropped)
                    self.tracker.retry(reason=r.reason, path=path, delay=0.0, message=message)
                    log.warning("fetch %s: restarting from byte 0 (%s): %s", path, r.reason, message)
                finally:
                    with self._jobs_lock:
                        self._jobs.discard(job)
            ok = True
        finally:
            # Stop, failure or success: the data and offsets are fsynced so the next attempt can trust them.
            try:
                journal.close(sync=True)
            except ProvisionerError:  # fsync failed: fatal on success; while already failing, the first error wins
                if ok:
                    raise
        self.tracker.file_done(path)
        log.debug("fetch %s: complete", path)  # the tracker's file_done event already says it at info
        return FetchedFile(entry=entry, part_path=journal.part_path, digests=digests)

    def _source(self, path: str, hub_url: str) -> Source:
        """The next byte source for `path` (`--mirrors` in order, skipping failed ones, then the hub)."""
        self.http.forget(path)  # a URL another source redirected us to must not outlive the switch
        return self.ctx.sources.pick(path=path, mirrors=self.config.mirrors, hub_url=hub_url,
                                     repo_id=self.plan.repo_id, commit=self.plan.ref)

    def _mirror_failed(self, job: Job, failure: SourceFailed) -> None:
        path = job.entry.path
        self.ctx.sources.fail(path, job.mirror)
        self.tracker.mirror_failed(reason=failure.reason, mirror=job.mirror)
        log.warning("fetch %s: mirror %s failed (%s): %s; trying the next source from byte %d", path, job.mirror,
                    failure.reason, redact(failure.message, self.secrets), job.journal.bytes_done)

    def _download(self, job: Job) -> Digests:
        journal = job.journal
        nseg = len(journal.segments)
        # Hash only what the caller compares (verify.matches): sha256 for LFS files, the git blob sha1
        # for the others; nothing at all under --verify none.
        sha256, blob_sha1 = wanted_digests(job.entry) if self.config.verify != "none" else (False, False)
        frontier = HashFrontier(journal, threaded=nseg > 1, sha256=sha256, blob_sha1=blob_sha1)
        try:
            if nseg <= 1 and not journal.no_range:
                frontier.catch_up()  # re-hash a resumed prefix from disk once, then hash inline
            if nseg == 1:
                self._fetch_segment(job, 0, frontier)
            elif nseg > 1:
                self._fetch_segments_parallel(job, frontier)
            return frontier.finish()
        finally:
            frontier.close()

    def _fetch_segments_parallel(self, job: Job, frontier: HashFrontier) -> None:
        pieces = [i for i in range(len(job.journal.segments)) if job.journal.remaining(i) > 0]
        if not pieces:
            return
        todo = iter(pieces)
        todo_lock = threading.Lock()

        def worker() -> None:
            # Pieces are taken in file order, so the hash frontier trails by a few pieces at most.
            while True:
                with todo_lock:
                    seg = next(todo, None)
                if seg is None:
                    return
                self._fetch_segment(job, seg, frontier)

        workers = min(self.config.connections_per_file, len(pieces))
        errors: list[BaseException] = []
        aborted_at: float | None = None
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="seg") as pool:
            futures = [pool.submit(worker) for _ in range(workers)]
            pending: set[Future[None]] = set(futures)
            while pending:
                # timeout: after an abort, wake up to escalate to a hard abort once the grace is over
                done, pending = wait(pending, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
                for fut in done:
                    exc = fut.exception()
                    if exc is not None:
                        errors.append(exc)
                        if aborted_at is None:
                            aborted_at = time.monotonic()
                            job.abort()  # the other segments stop at their next chunk boundary
                if aborted_at is not None and time.monotonic() - aborted_at >= ABORT_GRACE_SECONDS:
                    job.abort(hard=True)  # ... or now, if one is blocked in a stalled read
        if errors:
            # A real error beats a restart, which beats the aborts it caused.
            real = [e for e in errors if not isinstance(e, Aborted | Restart)]
            restart = [e for e in errors if isinstance(e, Restart)]
            raise (real or restart or errors)[0]

    # ---- one segment ------------------------------------------------------------------------
    def _fetch_segment(self, job: Job, seg: int, frontier: HashFrontier) -> None:
        path = job.entry.path
        attempt = 0
        while job.journal.remaining(seg) > 0:
            job.check()
            before = job.journal.done[seg]
            try:
                self._stream_segment(job, seg, frontier)
                continue  # the server may legally send less than asked: ask again for the rest
            except Restart as r:
                if job.mirror:  # a mirror with another size or no ranges: not worth dropping the partial for
                    raise SourceFailed(r.reason, r.message) from None
                raise
            except Retry as r:  # transient: classify, report, back off inside the budget, resume from disk
                if job.journal.done[seg] > before:
                    attempt = 0  # bytes arrived in this attempt: back off from scratch
                if job.cancel.is_set() or self.aborted.is_set():
                    raise Aborted() from None  # our own abort closed the socket: not a network failure
                if job.mirror:  # no backoff on a mirror: the next source (finally the hub) is right there
                    raise SourceFailed(r.reason, r.message) from None
                if r.stall:
                    self.tracker.stall(path=path)
                message = redact(f"{path}: {r.message}", self.secrets)
                delay = retry_step(self.ctx, reason=r.reason, message=message, attempt=attempt,
                                   retry_after=r.retry_after, path=path, immediate=r.immediate and attempt == 0)
                log.warning("fetch %s: %s; retrying in %.2fs (from byte %d)", path, message, delay,
                            job.journal.segments[seg][0] + job.journal.done[seg])
                attempt += 1
                if self._backoff(job, delay, wake_on_progress=r.retry_after is None):
                    attempt = 0  # another connection got bytes while we slept: the remote is back

    def _backoff(self, job: Job, delay: float, *, wake_on_progress: bool) -> bool:
        """Sleep `delay` seconds before a retry. A stop or abort ends it at once (Aborted); so does
        progress on any other connection of this run after WAKE_FLOOR_SECONDS (returns True), unless
        the server asked for the wait (Retry-After). Without it, each worker's own escalated backoff
        (up to --backoff-max) would hold its piece long after an outage ended."""
        since = self.budget.generation
        floor = min(delay, WAKE_FLOOR_SECONDS) if wake_on_progress else delay
        if job.cancel.wait(floor):
            raise Aborted() from None
        woke = delay > floor and self.budget.wait_for_progress(delay - floor, since=since, stop=job.cancel)
        if job.cancel.is_set():
            raise Aborted() from None
        return woke

    def _stream_segment(self, job: Job, seg: int, frontier: HashFrontier) -> None:
        journal = job.journal
        entry = job.entry
        size = entry.size
        seg_start, seg_end = journal.segments[seg]
        if journal.no_range and journal.done[seg]:
            # The server ignores Range: the only way on is one stream from 0 (rewritten, re-hashed).
            dropped = journal.reset(segments=[(0, size)], no_range=True)
            self.tracker.discard_bytes(entry.path, dropped)
            frontier.reset()
            seg_start, seg_end = journal.segments[seg]
        start = seg_start + journal.done[seg]
        last = seg_end - 1
        with self.http.open(job, _request_headers(job, start=start, last=last)) as resp:
            # A mirror's validator is not the hub's: sizes and the final hash judge its bytes.
            etag = None if job.mirror else resp.headers.get("etag")
            length_header = resp.headers.get("content-length")
            length = int(length_header) if length_header and length_header.isdigit() else None
            if journal.etag and etag and etag != journal.etag:
                raise Restart("changed", f"ETag changed ({journal.etag} -> {etag})")
            if resp.status_code == 206:
                m = _CONTENT_RANGE.match(resp.headers.get("content-range", ""))
                if not m:
                    raise Retry("reset", "206 without a valid Content-Range")
                first, final, total = int(m.group(1)), int(m.group(2)), m.group(3)
                if total != "*" and int(total) != size:
                    raise Restart("changed", f"size on the hub is {total}, the plan says {size}")
                if first != start or final < first or final > last:
                    raise Restart("range_ignored", f"asked bytes {start}-{last}, got {first}-{final}")
                limit = final + 1
            elif resp.status_code == 200:
                if length is not None and length != size:
                    raise Restart("changed", f"size on the hub is {length}, the plan says {size}")
                if not journal.no_range:
                    if start != 0 or len(journal.segments) != 1:
                        raise Restart("range_ignored", "server answered 200 to a Range request")
                    # A fresh single stream got the whole file anyway: take it, remember not to resume.
                    journal.mark_no_range()
                    log.info("fetch %s: server ignores Range; this file will restart from 0 if interrupted",
                             entry.path)
                start, limit = 0, size
            else:
                raise BadRemoteError(f"unexpected HTTP {resp.status_code} for {entry.path}")
            encoding = resp.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise BadRemoteError(f"{entry.path}: server sent Content-Encoding {encoding!r} despite "
                                     "Accept-Encoding: identity; byte ranges would not line up")
            if etag and journal.etag is None:
                journal.record_etag(etag)
            self._consume(job, seg, frontier, resp, start=start, limit=limit)

    def _capped(self, job: Job, n: int, *, before_pause: Callable[[], None]) -> bool:
        """--max-bytes-per-second: wait out the shared bucket for `n` bytes (what arrived goes to disk
        first). True when a stop or abort cut the pause short."""
        if self.bucket is None:
            return False
        pause = self.bucket.reserve(n)
        if pause <= 0:
            return False
        before_pause()
        return job.cancel.wait(pause)  # the cap's pause; a stop/abort ends it early

    def _consume(self, job: Job, seg: int, frontier: HashFrontier, resp: httpx2.Response, *,
                 start: int, limit: int) -> None:
        """Write the body at [start, limit) in ~1 MiB chunks, advancing the offset after each write."""
        journal = job.journal
        path = job.entry.path
        buf = bytearray()
        pos = start  # where `buf` goes
        received = 0  # bytes received but not yet reported
        overflow = False
        error: httpx2.HTTPError | None = None
        last_flush = time.monotonic()

        def flush() -> None:
            nonlocal pos, received, last_flush
            if received:
                self.tracker.add_bytes(path, received, source="mirror" if job.mirror else "hub")
                self.ctx.sources.contributed(path, job.mirror)
                self.budget.progress()
                received = 0
            if buf:
                journal.write(pos, buf)
                frontier.commit(seg, pos, buf)  # offset advances only now, after the data write returned
                pos += len(buf)
                buf.clear()
            last_flush = time.monotonic()

        pieces = resp.iter_raw()
        while True:
            try:
                piece = next(pieces)
            except StopIteration:  # the body ended (complete or short: checked below)
                break
            except httpx2.HTTPError as exc:  # reset, truncated body, stall: keep what arrived, then retry
                error = exc
                break
            received += len(piece)
            room = limit - pos - len(buf)
            if len(piece) > room:
                buf += piece[:room]
                overflow = True
                break
            buf += piece
            if len(buf) >= CHUNK_BYTES or time.monotonic() - last_flush >= FLUSH_SECONDS:
                flush()
            if job.cancel.is_set() or self._capped(job, len(piece), before_pause=flush):
                break
        flush()
        if job.cancel.is_set() or self.aborted.is_set():
            raise Aborted()
        if overflow:
            raise Restart("changed", "server sent more bytes than the plan's size")
        if error is not None:
            raise classify(error, what=path, stall_timeout=self.config.stall_timeout)
        if pos < limit:
            raise Retry("reset", f"body ended after {pos - start} of {limit - start} bytes")
