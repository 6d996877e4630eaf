"""The hub's counters: ``RequestRecord`` (one response) and ``HubStats`` (a snapshot of every counter,
as ``hub.stats`` returns it). Plain data; imports only the standard library.
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class RequestRecord:
    method: str
    path: str  # URL path without the query
    range: str | None
    status: int
    kind: str  # api | resolve | cdn | xet (the xet-auth token endpoint) | other
    bytes_sent: int = 0
    fault: str | None = None  # the fault that hit this response, if any
    done: bool = False  # the handler has finished with this response (sent, failed or aborted)
    authorization: bool = False  # the request carried an Authorization header (must not reach the CDN)


@dataclass
class HubStats:
    """A snapshot of the hub counters (``hub.stats`` returns a fresh copy each time)."""

    bytes_served: int = 0  # body bytes accepted by the kernel, over all responses
    bytes_by_path: Counter[str] = field(default_factory=Counter)  # by URL path
    bytes_by_file: Counter[str] = field(default_factory=Counter)  # by repo file path (resolve + cdn)
    requests_by_kind: Counter[str] = field(default_factory=Counter)
    requests_by_path: Counter[str] = field(default_factory=Counter)
    requests: list[RequestRecord] = field(default_factory=list)
    faults_fired: Counter[str] = field(default_factory=Counter)
    connections: int = 0  # TCP connections accepted

    def requests_for(self, *, kind: str | None = None, path: str | None = None) -> list[RequestRecord]:
        """Records filtered by kind and/or URL path glob."""
        return [
            r
            for r in self.requests
            if (kind is None or r.kind == kind) and (path is None or fnmatch.fnmatchcase(r.path, path))
        ]
