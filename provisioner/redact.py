"""Keep secrets out of every line we emit: logs, /status, Events, exceptions, metrics.

Signed CDN URLs carry credentials in their query string, so every URL loses its query and
fragment; known secrets (the HF token) are replaced wherever they appear; and anything shaped
like a bearer token or an `hf_...` token is masked even if we were never told about it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

# (?!<redacted>) keeps redaction idempotent: text that passes through twice is not mangled.
_URL_QUERY = re.compile(r"(https?://[^\s?#\"'<>]+)[?#](?!<redacted>)[^\s\"'<>]*")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{8,}\b")
_AUTH_HEADER = re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)[^'\",}\s]+(\s+[^'\",}\s]+)?")

MIN_SECRET_LENGTH = 4  # shorter strings would blank out ordinary words


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` without URL queries, Authorization/Bearer values, `hf_...` tokens and the given secrets.
    Stateless: the secrets of a run travel in its `Redactor`, never in module state."""
    out = _URL_QUERY.sub(r"\1?<redacted>", text)
    out = _AUTH_HEADER.sub(r"\1<redacted>", out)
    out = _BEARER.sub(r"\1<redacted>", out)
    out = _HF_TOKEN.sub("hf_<redacted>", out)
    for s in sorted(set(secrets), key=len, reverse=True):
        if s:
            out = out.replace(s, "<redacted>")
    return out


@dataclass(frozen=True)
class Redactor:
    """The run's redaction: the patterns above plus the run's own secrets (its HF token). Owned by
    whoever owns the run (api.provision, serve.modes) and handed to every sink: logs, /status, Events."""

    secrets: tuple[str, ...] = ()

    @classmethod
    def for_secrets(cls, *secrets: str | None) -> Redactor:
        return cls(tuple(s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH))

    def __call__(self, text: str) -> str:
        return redact(text, self.secrets)


def strip_query(url: str) -> str:
    """A URL safe to show: scheme, host and path only."""
    return url.split("?", 1)[0].split("#", 1)[0]


PATTERNS_ONLY = Redactor()  # URL queries, auth headers, hf_ tokens: where no run (hence no token) is known
