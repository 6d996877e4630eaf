"""Every failure the provisioner reports, each carrying its data and its exit code.

`cli.main` is the one place that turns these into exit codes; the table lives here so
that code, README and tests read the same numbers.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    UNEXPECTED = 1  # a bug: an exception that is not a ProvisionerError
    USAGE = 2  # bad flag, env var or config value (also a --listen address that cannot be bound)
    NOT_FOUND = 3  # repo, revision or file does not exist on the hub
    UNAUTHORIZED = 4  # gated/private repo, missing or bad token (401/403)
    NO_SPACE = 5  # not enough free space on the target filesystem (preflight or ENOSPC)
    VERIFY_FAILED = 6  # a checksum kept failing after re-fetches, or the embedding test failed
    TRANSIENT = 7  # network/hub trouble outlasted the retry budget; partial data is kept
    LOCAL_IO = 8  # the target is not writable or another local I/O error
    BAD_REMOTE = 9  # the hub sent unsafe or malformed metadata (path traversal, bad JSON, absurd sizes)
    NOT_READY = 10  # `check`: no valid ready marker matching the files on disk
    OFFLINE = 11  # offline (--offline / HF_HUB_OFFLINE) and no verified copy of this repo and revision
    TLS = 12  # the hub's (or proxy's) TLS certificate is not trusted: wrong or missing CA bundle
    EXPECT_MISMATCH = 13  # --expect-commit: the revision resolved to another commit (the branch moved), or to none
    # Signals: 128 + signal number (SIGINT 130, SIGTERM 143), as shells do.


class ProvisionerError(Exception):
    """Base class. `exit_code` decides the process exit status; `str()` is the one-line message."""

    exit_code: ExitCode = ExitCode.UNEXPECTED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(ProvisionerError):
    exit_code = ExitCode.USAGE

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class NotFoundError(ProvisionerError):
    exit_code = ExitCode.NOT_FOUND

    def __init__(self, message: str, *, repo_id: str, revision: str | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.repo_id = repo_id
        self.revision = revision
        self.path = path


class UnauthorizedError(ProvisionerError):
    exit_code = ExitCode.UNAUTHORIZED

    def __init__(self, message: str, *, repo_id: str, status: int) -> None:
        super().__init__(message)
        self.repo_id = repo_id
        self.status = status


class NoSpaceError(ProvisionerError):
    exit_code = ExitCode.NO_SPACE

    def __init__(self, message: str, *, path: str, needed_bytes: int, free_bytes: int) -> None:
        super().__init__(message)
        self.path = path
        self.needed_bytes = needed_bytes
        self.free_bytes = free_bytes


class VerificationError(ProvisionerError):
    exit_code = ExitCode.VERIFY_FAILED

    def __init__(self, message: str, *, kind: str, path: str | None = None,
                 expected: str | None = None, actual: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind  # "checksum" or "embedding"
        self.path = path
        self.expected = expected
        self.actual = actual


class TransientError(ProvisionerError):
    """Network or hub trouble that may pass. Retried inside the budget; raised to the top once it is spent."""

    exit_code = ExitCode.TRANSIENT

    def __init__(self, message: str, *, reason: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason  # low-cardinality label: timeout, stall, connect, reset, http_5xx, http_429, ...
        self.retry_after = retry_after


class RetryBudgetExhausted(TransientError):
    def __init__(self, message: str, *, reason: str, budget_seconds: float) -> None:
        super().__init__(message, reason=reason)
        self.budget_seconds = budget_seconds


class LocalIOError(ProvisionerError):
    exit_code = ExitCode.LOCAL_IO

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class BadRemoteError(ProvisionerError):
    exit_code = ExitCode.BAD_REMOTE

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail


class OfflineError(ProvisionerError):
    """Offline, and the volume holds no verified copy of what was asked for: nothing may be fetched."""

    exit_code = ExitCode.OFFLINE

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason  # why the volume's copy does not answer (the marker check's reason)


class TLSError(ProvisionerError):
    """A certificate the process does not trust: a configuration problem, never retried."""

    exit_code = ExitCode.TLS


class ExpectMismatchError(ProvisionerError):
    """--expect-commit: the hub resolved the revision to another commit (or named none), found before any
    file byte is fetched."""

    exit_code = ExitCode.EXPECT_MISMATCH

    def __init__(self, message: str, *, expected: str, actual: str | None) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual  # None: the hub named no commit at all


class Interrupted(ProvisionerError):
    """SIGTERM/SIGINT arrived: work stopped at a safe point, partial data flushed."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by signal {signum}; partial data kept for the next attempt")
        self.signum = signum

    @property
    def code(self) -> int:
        return 128 + self.signum


def exit_code_for(exc: BaseException) -> int:
    """The single mapping from an exception to a process exit status."""
    if isinstance(exc, Interrupted):
        return exc.code
    if isinstance(exc, ProvisionerError):
        return int(exc.exit_code)
    if isinstance(exc, KeyboardInterrupt):
        return 130
    return int(ExitCode.UNEXPECTED)
