"""What the hub's answers mean: one place maps huggingface_hub / httpx2 errors to ours.

Owns `origin` (the one rule for "same server": scheme, host and port, default ports filled in),
`transport_error` (a connection failure -> a retryable error with its reason label), and the two
classifiers built on the same permission / not-found messages: `classify_api_error` for the
planner's API calls and `classify_download_error` for `--engine hub` downloads. Permanent errors
(NotFound, Unauthorized, BadRemote, local I/O) fail fast; TransientError is retried within the
budget. Imports errors, manifest, redact and retry only; huggingface_hub and httpx2 are imported
on first use (the planner's module must stay cheap to import).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from .errors import (
    BadRemoteError,
    LocalIOError,
    NoSpaceError,
    NotFoundError,
    ProvisionerError,
    TransientError,
    UnauthorizedError,
)
from .manifest import Plan
from .redact import redact
from .retry import parse_retry_after

if TYPE_CHECKING:
    from huggingface_hub import errors as hf_errors

_DEFAULT_PORTS = {"http": 80, "https": 443}
_MAX_CHAIN = 8


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of `url`, lower-cased, the scheme's default port filled in: two URLs
    with equal origins reach the same server (so the token may go to both)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(scheme)


def transport_error(exc: BaseException, *, what: str) -> ProvisionerError | None:
    """An httpx2 transport failure as a retryable error with its reason label (an untrusted certificate:
    a permanent TLSError); None for anything else."""
    import httpx2

    from .netconf import certificate_error

    if isinstance(exc, httpx2.TransportError) and (tls := certificate_error(exc, what=what)) is not None:
        return tls
    if isinstance(exc, httpx2.TimeoutException):
        return TransientError(f"{what} timed out ({type(exc).__name__})", reason="timeout")
    if isinstance(exc, httpx2.ConnectError):
        return TransientError(f"cannot connect to the hub ({what})", reason="connect")
    if isinstance(exc, httpx2.TransportError):
        return TransientError(f"{what}: connection failed ({type(exc).__name__})", reason="reset")
    return None


# ---- the messages both classifiers share ------------------------------------------------------
def _wrong_revision_or_gated(exc: BaseException, *, status: int, repo_id: str,
                             revision: str) -> ProvisionerError | None:
    from huggingface_hub import errors as hf_errors

    if isinstance(exc, hf_errors.RevisionNotFoundError):
        return NotFoundError(f"revision {revision!r} not found in {repo_id}", repo_id=repo_id, revision=revision)
    if isinstance(exc, hf_errors.GatedRepoError):
        return UnauthorizedError(f"{repo_id} is gated: the token has no access (HTTP {status})",
                                 repo_id=repo_id, status=status)
    return None


def _refused_or_no_repo(exc: BaseException, *, status: int, repo_id: str) -> ProvisionerError | None:
    from huggingface_hub import errors as hf_errors

    if status in (401, 403):
        return UnauthorizedError(f"not authorized for {repo_id} (HTTP {status}): check HF_TOKEN / token-file",
                                 repo_id=repo_id, status=status)
    if isinstance(exc, hf_errors.RepositoryNotFoundError):
        return _no_repo(repo_id)
    return None


def _no_repo(repo_id: str) -> NotFoundError:
    return NotFoundError(f"repository {repo_id} not found (or private without a token)", repo_id=repo_id)


# ---- the planner's API calls --------------------------------------------------------------------
def classify_api_error(exc: BaseException, *, repo_id: str, revision: str) -> ProvisionerError:
    """Map a huggingface_hub / httpx2 exception from an API call to ours."""
    from huggingface_hub import errors as hf_errors

    if isinstance(exc, ProvisionerError):
        return exc
    status = exc.response.status_code if isinstance(exc, hf_errors.HfHubHTTPError) and exc.response is not None else 403
    known = _wrong_revision_or_gated(exc, status=status, repo_id=repo_id, revision=revision)
    if known is not None:
        return known
    if isinstance(exc, hf_errors.HfHubHTTPError) and exc.response is not None:
        known = _refused_or_no_repo(exc, status=status, repo_id=repo_id)
        if known is not None:
            return known
        if status == 404:
            return _no_repo(repo_id)
        if status == 429 or status >= 500:
            reason = "http_429" if status == 429 else "http_5xx"
            return TransientError(f"hub API answered HTTP {status}", reason=reason,
                                  retry_after=parse_retry_after(exc.response.headers.get("Retry-After")))
        return BadRemoteError(f"hub API answered HTTP {status} for {repo_id}", detail=redact(str(exc))[:300])
    transport = transport_error(exc, what="hub API")
    if transport is not None:
        return transport
    if isinstance(exc, json.JSONDecodeError):  # e.g. a web page where the API should be
        return BadRemoteError("malformed answer from the hub API: not JSON (is --endpoint the URL of a Hugging "
                              "Face hub or mirror?)", detail=redact(str(exc))[:300])
    if isinstance(exc, ValueError | KeyError | TypeError):  # missing fields or wrong types in the answer
        return BadRemoteError("malformed answer from the hub API", detail=redact(str(exc))[:300])
    return TransientError(f"hub API call failed: {redact(str(exc))[:200]}", reason="api")


# ---- `--engine hub` downloads ---------------------------------------------------------------------
def _chain(exc: BaseException) -> list[BaseException]:
    """exc and its causes/contexts: snapshot_download wraps network errors in LocalEntryNotFoundError."""
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out and len(out) < _MAX_CHAIN:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def _request_url(exc: BaseException) -> str:
    """The URL an httpx2 error was about ('' when it carries no request)."""
    try:
        return str(exc.request.url)  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):  # no .request, or httpx2's "request not set" RuntimeError
        return ""


def _file_from_url(url: str) -> str | None:
    path = urlsplit(url).path
    if "/resolve/" not in path:
        return None
    tail = path.split("/resolve/", 1)[1]
    return unquote(tail.split("/", 1)[1]) if "/" in tail else None


_XET_HINT = "set HF_HUB_DISABLE_XET=1 (plain HTTP downloads) or use --engine native, which never uses Xet"


def _is_xet_url(url: str) -> bool:
    """The Xet token endpoint (or a Xet CAS URL): its failures say nothing about the repo or the token."""
    return "/xet-read-token/" in url or "/xet-write-token/" in url or ".xethub." in url


def _xet_error(status: int | None, *, plan: Plan) -> ProvisionerError:
    if status in (401, 403):
        return UnauthorizedError(f"the Xet service refused access to {plan.repo_id} (HTTP {status}): {_XET_HINT}",
                                 repo_id=plan.repo_id, status=status)
    what = f"HTTP {status}" if status else "unreachable"
    return TransientError(f"the Xet service is unavailable ({what}): {_XET_HINT}",
                          reason="http_5xx" if status else "connect")


def _classify_download_http(exc: hf_errors.HfHubHTTPError, *, plan: Plan) -> ProvisionerError:
    response = exc.response
    status = response.status_code
    url = str(response.request.url) if response.request is not None else ""
    if _is_xet_url(url):
        return _xet_error(status, plan=plan)
    from_cdn = bool(url) and origin(url) != origin(plan.endpoint)
    path = _file_from_url(url)
    known = _wrong_revision_or_gated(exc, status=status, repo_id=plan.repo_id, revision=plan.ref)
    if known is not None:
        return known
    if status == 403 and from_cdn:
        return TransientError("the signed CDN URL was refused (expired): resolving again", reason="url_expired")
    known = _refused_or_no_repo(exc, status=status, repo_id=plan.repo_id)
    if known is not None:
        return known
    if status == 404:
        what = f"{path!r}" if path else "a file"
        return NotFoundError(f"{what} not found in {plan.repo_id} at {plan.ref}", repo_id=plan.repo_id,
                             revision=plan.ref, path=path)
    if status == 429 or status >= 500 or status == 408:
        reason = "http_429" if status == 429 else ("timeout" if status == 408 else "http_5xx")
        return TransientError(f"hub answered HTTP {status}" + (f" for {path}" if path else ""), reason=reason,
                              retry_after=parse_retry_after(response.headers.get("Retry-After")))
    return BadRemoteError(f"hub answered HTTP {status} for {plan.repo_id}", detail=redact(str(exc))[:300])


def classify_download_error(exc: BaseException, *, plan: Plan) -> ProvisionerError:
    """Map what snapshot_download raised to ours: NotFound/Unauthorized/NoSpace/LocalIO/BadRemote are
    permanent (fail fast); TransientError is retried within the budget."""
    from huggingface_hub import errors as hf_errors

    chain = _chain(exc)
    for e in chain:
        if isinstance(e, ProvisionerError):
            return e
        if isinstance(e, hf_errors.HfHubHTTPError) and e.response is not None:
            return _classify_download_http(e, plan=plan)
    for e in chain:
        transport = transport_error(e, what="download")
        if transport is not None:
            if isinstance(transport, TransientError) and _is_xet_url(_request_url(e)):
                return _xet_error(None, plan=plan)
            return transport
    for e in chain:
        if isinstance(e, hf_errors.XetDownloadError):
            return TransientError(f"Xet download failed: {redact(str(e))[:200]}", reason="reset")
        if isinstance(e, OSError) and e.errno is not None:
            if e.errno == 28:  # ENOSPC
                return NoSpaceError(f"no space left on the target filesystem: {e.strerror}",
                                    path=str(e.filename or ""), needed_bytes=0, free_bytes=0)
            return LocalIOError(f"local I/O error: {e.strerror} ({e.filename})", path=str(e.filename or ""))
    if isinstance(exc, hf_errors.LocalEntryNotFoundError):  # the hub was unreachable (no usable cause)
        return TransientError(f"hub unreachable: {redact(str(exc)).splitlines()[0][:200]}", reason="connect")
    if isinstance(exc, OSError) and "Consistency check failed" in str(exc):  # size mismatch: a cut transfer
        return TransientError("a download ended short of its size (connection cut)", reason="reset")
    return TransientError(f"snapshot_download failed: {type(exc).__name__}: {redact(str(exc))[:200]}",
                          reason="api")


__all__ = ["classify_api_error", "classify_download_error", "origin", "transport_error"]
