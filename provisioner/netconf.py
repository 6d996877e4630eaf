"""How every HTTP client of the process trusts certificates and finds proxies.

Owns `tls_verify` (the `verify=` value for httpx2 clients: `--ca-bundle` / SSL_CERT_FILE /
REQUESTS_CA_BUNDLE, else the system store) and `certificate_error` (is this failure an untrusted
certificate? -> a permanent TLSError, never retried). Proxies need nothing here: httpx2 clients are
built with `trust_env=True`, so HTTPS_PROXY / HTTP_PROXY / NO_PROXY apply to the API calls and the
native engine alike. Imports config and errors only; ssl is standard library.
"""

from __future__ import annotations

import functools
import ssl

from .config import Config
from .errors import TLSError

_MAX_CHAIN = 8


def tls_verify(config: Config) -> ssl.SSLContext | bool:
    """An SSL context trusting `config.ca_bundle`, or True (httpx2's default store, which itself reads SSL_CERT_FILE)."""
    if not config.ca_bundle:
        return True
    return _context(config.ca_bundle)


@functools.lru_cache(maxsize=4)
def _context(cafile: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cafile)  # one context per bundle: loading a bundle costs ms


def certificate_error(exc: BaseException, *, what: str) -> TLSError | None:
    """A TLSError when `exc` (or what it wraps) is a certificate the process does not trust."""
    cur: BaseException | None = exc
    for _ in range(_MAX_CHAIN):
        if cur is None:
            return None
        if isinstance(cur, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(cur):
            reason = getattr(cur, "verify_message", None) or "certificate verify failed"
            return TLSError(f"{what}: TLS certificate not trusted ({reason}); set --ca-bundle or SSL_CERT_FILE "
                            f"to your CA bundle")
        cur = cur.__cause__ or cur.__context__
    return None


__all__ = ["certificate_error", "tls_verify"]
