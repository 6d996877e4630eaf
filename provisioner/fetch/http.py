"""The native engine's HTTP side: one client, one GET per piece, redirects followed by hand.

Owns: the client and its timeouts (the read timeout is the header timeout until a response's headers
arrive, then the body's stall watchdog: see `body_watchdog`), the control-flow
exceptions a request can end in (`Retry`, `Restart`, `Aborted`), a file's open sockets (`Job`, so an
abort can cut a stalled read), and `HubHttp`: the hub URL -> signed CDN URL resolution (cached,
re-resolved when it expires), which headers go where (the token only to the hub's origin), and the
HTTP status -> error mapping. Imports config, errors, hubapi, manifest, netconf, redact, retry and
fetch.journal (for a type); the engine (engine.py) imports it, never the reverse.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urljoin

import httpx2
from huggingface_hub.utils import build_hf_headers

from ..config import Config
from ..errors import BadRemoteError, NotFoundError, ProvisionerError, UnauthorizedError
from ..hubapi import origin
from ..manifest import FileEntry, Plan
from ..netconf import certificate_error, tls_verify
from ..redact import redact, strip_query
from ..retry import parse_retry_after
from ..sources import SourceFailed
from .journal import Journal
from .small import small_in_flight

MAX_REDIRECTS = 10
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


# ---- how one request can end, besides a 2xx ---------------------------------------------------
class Retry(Exception):
    """A transient failure of one request: back off and try the same segment again."""

    def __init__(self, reason: str, message: str, *, retry_after: float | None = None,
                 immediate: bool = False, stall: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry_after = retry_after
        self.immediate = immediate  # no backoff for the first one (e.g. re-resolve an expired URL)
        self.stall = stall


class Restart(Exception):
    """The partial cannot be continued: drop it and fetch the file again from 0."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # `changed` or `range_ignored`
        self.message = message


class Aborted(Exception):
    """Stop requested (external stop, another worker failed, or this file restarts)."""


# ---- the client -------------------------------------------------------------------------------
def make_client(config: Config) -> httpx2.Client:
    """The engine's HTTP client: the read timeout is the stall watchdog; redirects are ours to follow."""
    # the large files' ranged requests + the small files' own workers (small.py) + the hub calls
    connections = config.max_workers * config.connections_per_file + small_in_flight(config) + 2
    return httpx2.Client(
        timeout=client_timeout(config),
        limits=httpx2.Limits(max_connections=connections, max_keepalive_connections=connections),
        follow_redirects=False,
        http2=False,
        verify=tls_verify(config),
        trust_env=True,  # HTTPS_PROXY / HTTP_PROXY / NO_PROXY, as for the API calls
    )


def header_timeout(config: Config) -> float:
    """Seconds to wait for response headers: --header-timeout, never more than the stall watchdog."""
    return min(config.header_timeout, config.stall_timeout)


def client_timeout(config: Config) -> httpx2.Timeout:
    """Per request: `read` bounds the wait for the headers; `body_watchdog` then widens it for the body."""
    return httpx2.Timeout(connect=config.connect_timeout, read=header_timeout(config),
                          write=config.stall_timeout, pool=config.connect_timeout)


def body_watchdog(resp: httpx2.Response, *, stall_timeout: float) -> None:
    """The headers arrived: give the body the stall timeout instead of the header timeout.

    httpcore reads the request's timeout dict when the body iteration starts (after this call), so
    changing its `read` entry here applies to every body read of this response and nothing else.
    """
    timeouts = resp.request.extensions.get("timeout")
    if isinstance(timeouts, dict):
        timeouts["read"] = stall_timeout


def classify(exc: httpx2.HTTPError, *, what: str, stall_timeout: float,
             before_headers: bool = False) -> Retry | ProvisionerError:
    """A transport exception -> a retry with a low-cardinality reason (or a permanent error).

    `before_headers`: the request was still waiting for its response headers, so a read timeout is
    the header timeout (`stall_timeout` is then that timeout's value).
    """
    name = type(exc).__name__
    detail = redact(f"{what}: {name}: {exc}")
    tls = certificate_error(exc, what=what)
    if tls is not None:  # a wrong CA bundle does not heal with retries
        return tls
    if isinstance(exc, httpx2.ReadTimeout):
        if before_headers:
            return Retry("stall", f"{what}: no response headers for {stall_timeout:g}s (header timeout)", stall=True)
        return Retry("stall", f"{what}: no byte for {stall_timeout:g}s (stall watchdog)", stall=True)
    if isinstance(exc, httpx2.ConnectTimeout | httpx2.ConnectError | httpx2.ProxyError):
        return Retry("connect", detail)
    if isinstance(exc, httpx2.TimeoutException):
        return Retry("timeout", detail)
    if isinstance(exc, httpx2.UnsupportedProtocol | httpx2.InvalidURL):
        return BadRemoteError(f"the hub redirected to an unusable URL for {what}", detail=detail)
    return Retry("reset", detail)  # ReadError, RemoteProtocolError (truncated body), WriteError, ...


# ---- one file's connections ---------------------------------------------------------------------
class Job:
    """One file being fetched in this call: its journal, cancel flag and open sockets."""

    def __init__(self, entry: FileEntry, journal: Journal, hub_url: str, *, aborted: threading.Event,
                 mirror: str = "") -> None:
        self.entry = entry
        self.journal = journal
        self.hub_url = hub_url  # where resolution starts: the hub's resolve URL, or a mirror's
        self.mirror = mirror  # the mirror's base URL when `hub_url` is one (untrusted, never sent the token)
        self.cancel = threading.Event()
        self.resolve_lock = threading.Lock()  # one segment resolves the CDN URL, the others reuse it
        self._aborted = aborted  # the whole call's abort
        self._sockets: set[socket.socket] = set()
        self._hard = False
        self._lock = threading.Lock()

    def check(self) -> None:
        """Raise `Aborted` once this file or the whole call was told to stop."""
        if self.cancel.is_set() or self._aborted.is_set():
            raise Aborted()

    def register(self, sock: socket.socket | None) -> None:
        if sock is not None:
            with self._lock:
                self._sockets.add(sock)
                hard = self._hard
            if hard:
                shutdown(sock)

    def unregister(self, sock: socket.socket | None) -> None:
        if sock is not None:
            with self._lock:
                self._sockets.discard(sock)

    def abort(self, *, hard: bool = False) -> None:
        """Stop all segments of this file: at their next chunk boundary, or (hard) at once, even one
        blocked in a read. Hard only after a grace period: shutting a socket down drops the bytes
        already in its receive buffer, which a soft stop still writes to disk."""
        self.cancel.set()
        if not hard:
            return
        with self._lock:
            self._hard = True
            socks = list(self._sockets)
        for sock in socks:
            shutdown(sock)


def shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked recv(); the reader sees EOF and checks cancel
    except OSError:  # already closed by its owner: nothing left to wake
        pass


def socket_of(resp: httpx2.Response) -> socket.socket | None:
    return _socket_of_stream(resp.extensions.get("network_stream"))


def _socket_of_stream(stream: Any) -> socket.socket | None:
    if stream is None:
        return None
    try:
        sock = stream.get_extra_info("socket")
    except Exception:  # noqa: BLE001 - an exotic transport without the extra: abort falls back to chunk boundaries
        return None
    return sock if isinstance(sock, socket.socket) else None


# ---- requests -----------------------------------------------------------------------------------
class HubHttp:
    """The requests of one `fetch_files` call: the signed-URL cache, headers per origin, status mapping."""

    def __init__(self, plan: Plan, *, config: Config, client: httpx2.Client) -> None:
        self.plan = plan
        self.config = config
        self.client = client
        self.timeout = client_timeout(config)
        # token=False when none is configured: never pick up a token we were not given.
        self.hub_headers: dict[str, str] = dict(
            build_hf_headers(token=config.token or False, library_name="model-provisioner"))
        self.cdn_headers = {k: v for k, v in self.hub_headers.items() if k.lower() != "authorization"}
        self.hub_origin = origin(plan.endpoint)
        self._urls: dict[str, str] = {}  # path -> resolved (signed) CDN URL
        self._urls_lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._sockets_lock = threading.Lock()

    def shutdown_all(self) -> None:
        """Hard abort of the sockets still waiting for response headers (a stall before headers),
        which no job knows about yet: every connection of this call was opened through `_trace`."""
        with self._sockets_lock:
            socks = list(self._sockets)
        for sock in socks:
            shutdown(sock)

    def _trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore trace hook: remember every TCP connection opened for this call."""
        if event != "connection.connect_tcp.complete":
            return
        sock = _socket_of_stream(info.get("return_value"))
        if sock is not None:
            with self._sockets_lock:
                self._sockets = {s for s in self._sockets if s.fileno() != -1}  # forget closed ones
                self._sockets.add(sock)

    def forget(self, path: str) -> None:
        """The file switches byte source: a URL resolved through the previous one must not be reused."""
        self._cache_url(path, None)

    def _cached_url(self, path: str) -> str | None:
        with self._urls_lock:
            return self._urls.get(path)

    def _cache_url(self, path: str, url: str | None, *, expected: str | None = None) -> None:
        with self._urls_lock:
            if url is not None:
                self._urls[path] = url
            elif expected is None or self._urls.get(path) == expected:
                self._urls.pop(path, None)

    @contextmanager
    def open(self, job: Job, headers: dict[str, str]) -> Iterator[httpx2.Response]:
        """GET the file (hub URL, redirects followed by hand, or the cached CDN URL) -> a 2xx response."""
        path = job.entry.path
        cached = self._cached_url(path)
        if cached is not None:
            resp = self._send(job, cached, headers, fresh=False)
        else:
            with job.resolve_lock:  # parallel segments wait for one resolution instead of all asking the hub
                cached = self._cached_url(path)
                if cached is not None:
                    resp = self._send(job, cached, headers, fresh=False)
                else:
                    resp = self._resolve(job, headers)
        sock = socket_of(resp)
        job.register(sock)
        try:
            yield resp
        finally:
            job.unregister(sock)
            resp.close()

    def _resolve(self, job: Job, headers: dict[str, str]) -> httpx2.Response:
        url = job.hub_url
        for _ in range(MAX_REDIRECTS + 1):
            resp = self._request(job, url, headers)
            if resp.status_code not in _REDIRECTS:
                self._check_status(job, resp, url=url, fresh=True)
                return resp
            location = resp.headers.get("location")
            resp.close()
            if not location:
                raise BadRemoteError(f"redirect without Location for {job.entry.path}")
            url = urljoin(url, location)
            self._cache_url(job.entry.path, url)  # the signed URL, reused by other ranges and retries
        raise BadRemoteError(f"more than {MAX_REDIRECTS} redirects for {job.entry.path}")

    def _send(self, job: Job, url: str, headers: dict[str, str], *, fresh: bool) -> httpx2.Response:
        resp = self._request(job, url, headers)
        if resp.status_code in _REDIRECTS:
            # A cached URL that redirects again: forget it and resolve from the hub.
            resp.close()
            self._cache_url(job.entry.path, None, expected=url)
            raise Retry("url_expired", "cached download URL redirected", immediate=True)
        self._check_status(job, resp, url=url, fresh=fresh)
        return resp

    def _request(self, job: Job, url: str, headers: dict[str, str]) -> httpx2.Response:
        job.check()
        same_origin = origin(url) == self.hub_origin and not job.mirror
        # The token goes to the hub only; a cross-origin redirect target (the CDN) or a mirror never sees it.
        all_headers = {**(self.hub_headers if same_origin else self.cdn_headers), **headers}
        try:
            request = self.client.build_request("GET", url, headers=all_headers, timeout=self.timeout,
                                                extensions={"trace": self._trace})
            resp = self.client.send(request, stream=True, follow_redirects=False)
        except httpx2.HTTPError as exc:  # connect/stall-before-headers/reset: classified, retried
            raise classify(exc, what=job.entry.path, stall_timeout=header_timeout(self.config),
                           before_headers=True) from None
        body_watchdog(resp, stall_timeout=self.config.stall_timeout)
        return resp

    def _check_status(self, job: Job, resp: httpx2.Response, *, url: str, fresh: bool) -> None:
        status = resp.status_code
        if 200 <= status < 300:
            return
        path = job.entry.path
        if job.mirror:  # an untrusted byte source: any refusal means "next source", never a verdict on the file
            resp.close()
            reason = "not_found" if status in (404, 410) else "http_5xx" if status >= 500 else f"http_{status}"
            raise SourceFailed(reason, f"HTTP {status} from mirror {strip_query(url)}")
        from_hub = origin(url) == self.hub_origin
        retry_after = parse_retry_after(resp.headers.get("retry-after"))
        error_code = resp.headers.get("x-error-code", "")
        where = "hub" if from_hub else f"CDN {strip_query(url)}"
        resp.close()
        if status == 429:
            raise Retry("http_429", f"HTTP 429 from the {where}", retry_after=retry_after)
        if status >= 500:
            raise Retry("http_5xx", f"HTTP {status} from the {where}", retry_after=retry_after)
        if status == 408:
            raise Retry("timeout", f"HTTP 408 from the {where}")
        if status == 416:
            raise Restart("changed", f"HTTP 416 (range not satisfiable) from the {where}")
        if not from_hub and status in (401, 403, 404, 410):
            self._cache_url(path, None, expected=url)
            if status in (404, 410) and fresh:
                raise BadRemoteError(f"the CDN answered {status} for {path} right after the hub redirected to it")
            # A signed URL expired (or was refused): resolve it again from the hub.
            raise Retry("url_expired", f"HTTP {status} from the {where}", immediate=True)
        if status == 404:
            what = error_code or "EntryNotFound"
            raise NotFoundError(f"{self.plan.repo_id}@{self.plan.ref[:12]}: {path}: {what} (HTTP 404)",
                                repo_id=self.plan.repo_id, revision=self.plan.revision, path=path)
        if status in (401, 403):
            hint = "" if self.config.token else " (no token configured: set HF_TOKEN or --token-file)"
            raise UnauthorizedError(f"{self.plan.repo_id}: HTTP {status} for {path}{hint}",
                                    repo_id=self.plan.repo_id, status=status)
        raise BadRemoteError(f"unexpected HTTP {status} from the {where} for {path}",
                             detail=error_code or None)
