"""Secret redaction and the retry budget."""

from __future__ import annotations

import random

import pytest

from provisioner.errors import RetryBudgetExhausted
from provisioner.redact import Redactor, redact
from provisioner.retry import RetryBudget, backoff_delay, parse_retry_after


def test_redact_urls_tokens_and_headers() -> None:
    text = ("GET https://cdn.example/blob/abc?Expires=1&Signature=zzz failed; Authorization: Bearer hf_abcdefghijk;"
            " token s3cr3t-token-value; other hf_zyxwvutsrqpo")
    out = Redactor.for_secrets("s3cr3t-token-value")(text)
    for secret in ("Signature=zzz", "Expires=1", "hf_abcdefghijk", "s3cr3t-token-value", "hf_zyxwvutsrqpo"):
        assert secret not in out
    assert "https://cdn.example/blob/abc" in out


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_budget_resets_on_progress_and_runs_out_without() -> None:
    clock = FakeClock()
    budget = RetryBudget(10, clock=clock)
    clock.now = 9
    budget.check(reason="connect", message="x")
    budget.progress()
    clock.now = 18
    budget.check(reason="connect", message="x")  # 9 s since progress: still inside
    clock.now = 19.5
    with pytest.raises(RetryBudgetExhausted) as info:
        budget.check(reason="connect", message="down")
    assert info.value.exit_code == 7 and "down" in str(info.value)


def test_delay_is_capped_by_budget_and_honours_retry_after() -> None:
    clock = FakeClock()
    budget = RetryBudget(10, clock=clock)
    assert budget.delay(attempt=0, cap=30, retry_after=4) == 4
    clock.now = 8
    assert budget.delay(attempt=0, cap=30, retry_after=4) == pytest.approx(2)


def test_backoff_full_jitter_bounds() -> None:
    rng = random.Random(1)
    for attempt in range(12):
        d = backoff_delay(attempt, cap=30, rng=rng)
        assert 0 <= d <= min(30, 0.5 * 2**attempt)


def test_parse_retry_after() -> None:
    assert parse_retry_after("7") == 7
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("-3") is None and parse_retry_after("nan") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Thu, 01 Jan 1970 00:00:10 GMT", now=0) == pytest.approx(10)


def test_redact_is_idempotent() -> None:
    once = redact("GET https://cdn.example/b?Expires=1&Signature=zzz and hf_abcdefghijklmn")
    assert redact(once) == once


def test_listen_ipv6_needs_brackets() -> None:
    from provisioner.config import Config
    from provisioner.errors import ConfigError

    assert Config.from_sources(args={"listen": "[::1]:8080"}, environ={}).listen == "[::1]:8080"
    with pytest.raises(ConfigError, match="brackets"):
        Config.from_sources(args={"listen": "::1:8080"}, environ={})


def test_wait_for_progress_wakes_on_progress_from_another_thread() -> None:
    import threading
    import time

    budget = RetryBudget(60)
    since = budget.generation
    budget.progress()  # progress before the wait started but after `since`: returns at once
    assert budget.wait_for_progress(5, since=since) is True
    since = budget.generation
    timer = threading.Timer(0.2, budget.progress)
    t0 = time.monotonic()
    timer.start()
    try:
        assert budget.wait_for_progress(10, since=since) is True
    finally:
        timer.cancel()
    assert time.monotonic() - t0 < 5  # woken by progress(), not by the 10 s timeout
    assert budget._waiters == 0


def test_wait_for_progress_times_out_and_stops() -> None:
    import threading
    import time

    budget = RetryBudget(60)
    t0 = time.monotonic()
    assert budget.wait_for_progress(0.2, since=budget.generation) is False
    assert 0.15 <= time.monotonic() - t0 < 5
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    t0 = time.monotonic()
    assert budget.wait_for_progress(30, since=budget.generation, stop=stop) is False
    assert time.monotonic() - t0 < 5  # the stop event ended it, not the 30 s timeout
    stop.set()
    assert budget.wait_for_progress(30, since=budget.generation, stop=stop) is False  # already set: at once
