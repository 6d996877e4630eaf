"""A skipped test is a silent hole: every skip is printed, and only allow-listed ones may happen.

`tests/allowed_skips.txt` lists, one per line, `<node id glob> | <why this may skip on some machine>`.
With `MP_STRICT_SKIPS=1` (scripts/test.sh, hence CI, sets it) a skip that matches no line fails the
run. Without it (a laptop, a single file) the summary is still printed but nothing fails.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

ALLOWLIST = Path(__file__).with_name("allowed_skips.txt")


@dataclass(frozen=True)
class Allowed:
    pattern: str
    why: str


def load_allowlist(path: Path = ALLOWLIST) -> list[Allowed]:
    entries = []
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pattern, sep, why = line.partition("|")
        if not sep or not why.strip():
            raise ValueError(f"{path.name}:{n}: expected '<node id glob> | <reason>', got {raw!r}")
        entries.append(Allowed(pattern.strip(), why.strip()))
    return entries


def unexpected(skipped: dict[str, str], allowed: list[Allowed]) -> dict[str, str]:
    """The skips (node id -> skip reason) that no allow-list line covers."""
    return {nodeid: reason for nodeid, reason in skipped.items()
            if not any(fnmatch.fnmatchcase(nodeid, a.pattern) for a in allowed)}


def _strict() -> bool:
    return os.environ.get("MP_STRICT_SKIPS") == "1"


class SkipPolicy:
    def __init__(self) -> None:
        self.skipped: dict[str, str] = {}

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.skipped[report.nodeid] = str(reason).removeprefix("Skipped: ")

    @pytest.hookimpl
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if _strict() and unexpected(self.skipped, load_allowlist()) and exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.skipped:
            return
        bad = unexpected(self.skipped, load_allowlist())
        terminalreporter.section("skips")
        for nodeid, reason in sorted(self.skipped.items()):
            mark = "NOT ALLOWED" if nodeid in bad else "allowed"
            terminalreporter.write_line(f"{mark}: {nodeid}: {reason}")
        if bad and _strict():
            terminalreporter.write_line(f"{len(bad)} skip(s) not in tests/allowed_skips.txt: the run fails "
                                        "(MP_STRICT_SKIPS=1). Fix the cause or allow-list it with a reason.")


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(SkipPolicy(), "mp-skip-policy")
