"""The fault knobs: ``Faults`` (runtime-settable network faults, read by the body sender) and the
``fail_next`` rule, plus the small matching helpers they share. Plain data; imports only the standard
library. Where faults fire lives in ``transport.py``; the public controls (``fail_next``, ``outage``,
``clear_faults`` ...) are methods of ``HubEmulator``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass


@dataclass
class Faults:
    """Runtime-settable faults. Plain attribute assignment from the test thread is safe (GIL-atomic);
    one-shot faults are consumed under the hub lock.

    Body faults (reset, truncate, stall_mid_body, flip, ignore_range, per-connection rate,
    stall_before_headers) apply to resolve and CDN responses whose repo file path (or URL path)
    matches the glob ``path``.
    """

    path: str = "*"
    rate_limit_global: float | None = None  # bytes/s shared by all responses
    rate_limit_per_connection: float | None = None  # bytes/s per response stream
    reset_after_bytes: int | None = None  # RST the connection after N body bytes
    reset_every: bool = False  # False: fires once, then clears itself
    truncate_after_bytes: int | None = None  # clean close (FIN) after N body bytes < Content-Length
    truncate_every: bool = False
    stall_before_headers: float = 0.0  # seconds; inf = until the client leaves or the hub stops
    stall_mid_body: tuple[int, float] | None = None  # (after N body bytes of the response, seconds)
    stall_every: bool = False  # applies to stall_mid_body
    stall_api: float = 0.0  # seconds before answering /api/ calls
    flip_byte_at: int | None = None  # absolute file offset (also inside a Range) inverted in transit
    flip_every: bool = False
    ignore_range: bool = False  # answer 200 + full body to Range requests
    no_content_type: bool = False  # resolve/CDN content responses carry no Content-Type header
    # Hub-wide (not limited by ``path``): what the hub says about the commit.
    hide_commit: bool = False  # no commit anywhere: no model_info ``sha``, no X-Repo-Commit, no lastCommit
    commit_as: str | None = None  # show this string wherever the commit is shown (e.g. a malformed one)

    def clear(self) -> None:
        """Reset every fault to its default."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, f.default)


@dataclass
class _FailRule:
    remaining: int
    status: int
    retry_after: float | None
    kind: str
    path: str


def _glob(pattern: str, value: str) -> bool:
    return pattern == "*" or fnmatch.fnmatchcase(value, pattern)


def _fmt_num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)
