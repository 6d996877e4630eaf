"""Where a file's bytes come from: the `--mirrors` in order, then the hub — and which ones failed.

Owns one run's memory of byte sources (`SourceBook`, held by the `RunContext`): which mirror to try
next for a file, which mirrors already failed for it (down, stalled, 404, short or wrong bytes: never
the same mirror twice for that file in this run), which mirrors contributed bytes to the file's
current partial (so a failed final hash can be pinned on them). Where each finished file came from
is the tracker's (for /status, metrics and the marker). Mirrors are untrusted byte sources: the plan (commit, sizes,
digests) always comes from the hub, every byte is hashed against it, and the token is never sent to
a mirror. Stdlib only; imported by context, fetch.engine and verify.policy.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from urllib.parse import quote

HUB = "hub"  # the label of the authoritative endpoint as a byte source


@dataclass(frozen=True)
class Source:
    """One byte source for one file: `mirror` is the mirror's base URL, "" for the hub."""

    mirror: str
    url: str

    @property
    def kind(self) -> str:
        return "mirror" if self.mirror else HUB

    @property
    def label(self) -> str:
        return self.mirror or HUB


class SourceFailed(Exception):
    """A mirror could not deliver this file (down, stalled, 4xx/5xx, wrong size): try the next source."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # low-cardinality: connect, stall, reset, timeout, not_found, http_5xx, ...
        self.message = message


def resolve_url(base: str, *, repo_id: str, commit: str, path: str) -> str:
    """The hub layout every HF mirror speaks: `{base}/{repo}/resolve/{commit}/{path}`."""
    return f"{base.rstrip('/')}/{repo_id}/resolve/{quote(commit, safe='')}/{quote(path)}"


class SourceBook:
    """One run's byte-source memory (thread-safe: the engine's workers share it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failed: dict[str, set[str]] = {}  # path -> mirrors that failed it in this run
        self._contributors: dict[str, set[str]] = {}  # path -> mirrors whose bytes are in its partial

    def pick(self, *, path: str, mirrors: tuple[str, ...], hub_url: str, repo_id: str, commit: str) -> Source:
        """The first mirror not yet failed for `path`, else the hub."""
        with self._lock:
            failed = self._failed.get(path, set())
        for base in mirrors:
            if base not in failed:
                return Source(mirror=base, url=resolve_url(base, repo_id=repo_id, commit=commit, path=path))
        return Source(mirror="", url=hub_url)

    def fail(self, path: str, mirror: str) -> None:
        if mirror:
            with self._lock:
                self._failed.setdefault(path, set()).add(mirror)

    def contributed(self, path: str, mirror: str) -> None:
        if mirror:
            with self._lock:
                self._contributors.setdefault(path, set()).add(mirror)

    def blame(self, path: str) -> list[str]:
        """The file's bytes failed their hash: every mirror that contributed is failed for it; the
        partial is discarded by the caller, so the contributor list starts over. Returns the blamed mirrors."""
        with self._lock:
            blamed = sorted(self._contributors.pop(path, set()))
            self._failed.setdefault(path, set()).update(blamed)
        return blamed

    def forget_contributors(self, path: str) -> None:
        """The partial was dropped (restart from byte 0): nothing on disk came from anyone."""
        with self._lock:
            self._contributors.pop(path, None)
