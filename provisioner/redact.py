"""Keep secrets out of every line we emit: logs, /status, Events, exceptions, metrics.

Signed CDN URLs carry credentials in their query string, so every URL loses its query and
fragment; known secrets (the HF token) are replaced wherever they appear; and anything shaped
like a bearer token or an `hf_...` token is masked even if we were never told about it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable

# (?!<redacted>) keeps redaction idempotent: text that passes through twice is not mangled.
_URL_QUERY = re.compile(r"(https?://[^\s?#\"'<>]+)[?#](?!<redacted>)[^\s\"'<>]*")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{8,}\b")
_AUTH_HEADER = re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)[^'\",}\s]+(\s+[^'\",}\s]+)?")

_registered: set[str] = set()
_lock = threading.Lock()


def register_secret(secret: str | None) -> None:
    """Remember a secret (e.g. the HF token) so that `redact` removes it from any text."""
    if secret and len(secret) >= 4:
        with _lock:
            _registered.add(secret)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    out = _URL_QUERY.sub(r"\1?<redacted>", text)
    out = _AUTH_HEADER.sub(r"\1<redacted>", out)
    out = _BEARER.sub(r"\1<redacted>", out)
    out = _HF_TOKEN.sub("hf_<redacted>", out)
    with _lock:
        known = sorted(set(secrets) | _registered, key=len, reverse=True)
    for s in known:
        if s:
            out = out.replace(s, "<redacted>")
    return out


def strip_query(url: str) -> str:
    """A URL safe to show: scheme, host and path only."""
    return url.split("?", 1)[0].split("#", 1)[0]
