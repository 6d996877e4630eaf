"""logs.py: JSON/text formats, auto detection, redaction of everything, progress reporting."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from obs_helpers import SECRETS, SIGNED_URL, FakeClock, downloading_tracker, leaky_retry, make_plan
from prom_helpers import wait_for

from provisioner import redact
from provisioner.observe import logs
from provisioner.observe.progress import Phase, Tracker


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


CANARY = redact.Redactor.for_secrets(SECRETS[1])  # the run's own secret (its token), given to the logging sink


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def assert_clean(text: str) -> None:
    for s in SECRETS:
        assert s not in text, f"secret {s!r} leaked"


# ---- formats -------------------------------------------------------------------------------------
def test_json_lines_have_ts_level_logger_msg_and_extras() -> None:
    out = io.StringIO()
    logs.setup_logging(redactor=CANARY, fmt="json", level="info", stream=out)
    logging.getLogger("provisioner.test").info("hello %s", "world", extra={"event": "x", "n": 3, "ok": True})
    logging.getLogger("provisioner.test").debug("hidden at info")
    [line] = json_lines(out.getvalue())
    assert line["msg"] == "hello world" and line["level"] == "info" and line["logger"] == "provisioner.test"
    assert line["ts"].endswith("Z") and "T" in line["ts"]
    assert line["event"] == "x" and line["n"] == 3 and line["ok"] is True


def test_text_format_is_one_human_line() -> None:
    out = io.StringIO()
    logs.setup_logging(redactor=CANARY, fmt="text", level="debug", stream=out)
    logging.getLogger("provisioner.test").warning("disk %s", "slow", extra={"path": "a b.bin", "n": 2})
    text = out.getvalue()
    assert text.count("\n") == 1
    assert "WARNING" in text and "provisioner.test: disk slow" in text
    assert 'path="a b.bin"' in text and "n=2" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_auto_is_json_off_a_tty_and_text_on_a_tty() -> None:
    out = io.StringIO()
    handle = logs.setup_logging(redactor=CANARY, fmt="auto", level="info", stream=out)
    logging.getLogger("x").info("a")
    assert json_lines(out.getvalue())[0]["msg"] == "a"
    assert handle.bar_enabled is False
    tty = TTY()
    handle = logs.setup_logging(redactor=CANARY, fmt="auto", level="info", stream=tty)
    logging.getLogger("x").info("b")
    assert tty.getvalue().rstrip().endswith("x: b")
    assert handle.bar_enabled is True


def test_setup_is_idempotent() -> None:
    out = io.StringIO()
    root = logging.getLogger()
    before = len(root.handlers)
    logs.setup_logging(redactor=CANARY, fmt="json", level="info", stream=out)
    logs.setup_logging(redactor=CANARY, fmt="json", level="warning", stream=out)
    assert len(root.handlers) == before + 1
    logging.getLogger("x").info("dropped at warning")
    logging.getLogger("x").warning("kept")
    assert [line["msg"] for line in json_lines(out.getvalue())] == ["kept"]


def test_noisy_libraries_are_quiet_unless_debug() -> None:
    out = io.StringIO()
    logs.setup_logging(redactor=CANARY, fmt="json", level="info", stream=out)
    logging.getLogger("httpx").info("HTTP Request: GET https://huggingface.co/api/models/x")
    assert out.getvalue() == ""
    logs.setup_logging(redactor=CANARY, fmt="json", level="debug", stream=out)
    logging.getLogger("httpx").info("HTTP Request: GET " + SIGNED_URL)
    [line] = json_lines(out.getvalue())
    assert line["logger"] == "httpx" and "?<redacted>" in line["msg"]
    assert_clean(out.getvalue())


@pytest.mark.parametrize("level", ["nope", "TRACE"])
def test_bad_settings_raise(level: str) -> None:
    with pytest.raises(ValueError):
        logs.setup_logging(redactor=CANARY, fmt="json", level=level, stream=io.StringIO())
    with pytest.raises(ValueError):
        logs.setup_logging(redactor=CANARY, fmt="xml", level="info", stream=io.StringIO())


# ---- redaction -----------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["json", "text"])
def test_messages_args_extras_and_tracebacks_are_redacted(fmt: str) -> None:
    out = io.StringIO()
    logs.setup_logging(redactor=CANARY, fmt=fmt, level="debug", stream=out)
    log = logging.getLogger("provisioner.fetch")
    log.info("GET %s", SIGNED_URL, extra={"url": SIGNED_URL, "headers": {"Authorization": f"Bearer {SECRETS[0]}"},
                                          "list": [SECRETS[1], 1]})
    log.warning(f"token {SECRETS[0]} and {SECRETS[1]}")
    try:
        raise RuntimeError(f"403 for {SIGNED_URL}")
    except RuntimeError:
        log.exception("download failed")
    text = out.getvalue()
    assert_clean(text)
    assert text.count("<redacted>") >= 6
    assert "<redacted><redacted>" not in text  # redacted once, not twice
    if fmt == "json":
        lines = json_lines(text)
        assert len(lines) == 3
        assert "RuntimeError" in lines[2]["exc"]
        assert lines[0]["url"].startswith("https://cdn-lfs.example.com/repos/ab/cd/model.safetensors?")


def test_a_broken_format_call_still_produces_a_redacted_line() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "bad %s %s " + SECRETS[0], ("one",), None)
    assert logs.RedactingFilter().filter(record)
    line = json.loads(logs.JsonFormatter().format(record))
    assert line["msg"].startswith("bad %s %s") and "one" in line["msg"]
    assert_clean(json.dumps(line))


# ---- ProgressReporter ----------------------------------------------------------------------------
def drive_a_run(tracker: Tracker) -> None:
    tracker.add_bytes("config.json", 1000)
    tracker.file_done("config.json")
    leaky_retry(tracker)
    tracker.stall(path="model.safetensors")
    tracker.add_bytes("model.safetensors", 9000)
    tracker.file_done("model.safetensors")
    tracker.file_done("tokenizer.json", skipped=True)
    tracker.set_phase(Phase.VERIFYING)
    tracker.verification(kind="checksums", seconds=0.5, ok=True)
    tracker.set_phase(Phase.SMOKE_TEST)
    tracker.verification(kind="embedding", seconds=2.0, ok=False, detail="cosine 0.1")
    tracker.mark_failed(message=f"verification failed at {SIGNED_URL}", exit_code=6)


def test_reporter_logs_one_structured_line_per_event() -> None:
    out = io.StringIO()
    logs.setup_logging(redactor=CANARY, fmt="json", level="info", stream=out)
    tracker = Tracker(repo_id="org/model", revision="main")
    reporter = logs.ProgressReporter(tracker, interval=3600, logger=logging.getLogger("provisioner.observe.progress"))
    reporter.start()
    try:
        tracker.waiting(holder="pod-b")
        tracker.set_phase(Phase.PLANNING)
        tracker.set_plan(make_plan())
        tracker.set_phase(Phase.DOWNLOADING)
        drive_a_run(tracker)
    finally:
        reporter.stop()
    text = out.getvalue()
    assert_clean(text)
    lines = json_lines(text)
    events = [line["event"] for line in lines]
    for kind in ("phase", "plan", "file_done", "retry", "stall", "waiting", "verified", "failed"):
        assert kind in events, kind
    by = {line["event"]: line for line in lines}
    assert by["retry"]["reason"] == "url_expired" and by["retry"]["level"] == "warning"
    assert "<redacted>" in by["retry"]["error"]
    assert by["plan"]["files"] == 3 and by["plan"]["bytes_total"] == 12_000
    assert by["waiting"]["holder"] == "pod-b"
    assert by["failed"]["level"] == "error" and by["failed"]["exit_code"] == 6
    verified = [line for line in lines if line["event"] == "verified"]
    assert [(v["kind"], v["ok"], v["level"]) for v in verified] == [
        ("checksums", True, "info"), ("embedding", False, "error")]
    phases = [line["phase"] for line in lines if line["event"] == "phase"]
    assert phases == ["waiting", "planning", "downloading", "verifying", "smoke_test", "failed"]


def test_reporter_logs_ready() -> None:
    out = io.StringIO()
    logs.setup_logging(redactor=CANARY, fmt="json", level="info", stream=out)
    tracker = downloading_tracker()
    with logs.ProgressReporter(tracker, interval=3600):
        tracker.mark_ready()
    lines = json_lines(out.getvalue())
    assert [line["event"] for line in lines][-2:] == ["phase", "ready"]


def test_heartbeat_has_progress_fields_only_while_downloading() -> None:
    out = io.StringIO()
    logs.setup_logging(redactor=CANARY, fmt="json", level="info", stream=out)
    clock = FakeClock()
    tracker = downloading_tracker(clock, plan=make_plan({"a.bin": 4000}))
    reporter = logs.ProgressReporter(tracker, interval=3600)
    for _ in range(3):
        tracker.add_bytes("a.bin", 500)
        clock.advance(1)
    reporter.tick()
    [beat] = json_lines(out.getvalue())
    assert beat["event"] == "progress"
    assert beat["percent"] == 37.5 and beat["bytes_on_disk"] == 1500 and beat["bytes_total"] == 4000
    assert beat["speed"] > 0 and beat["eta"] > 0
    tracker.set_phase(Phase.VERIFYING)
    reporter.tick()
    assert len(json_lines(out.getvalue())) == 1


def test_heartbeat_thread_runs_every_interval_and_stops() -> None:
    out = io.StringIO()
    logs.setup_logging(redactor=CANARY, fmt="json", level="info", stream=out)
    tracker = downloading_tracker()
    reporter = logs.ProgressReporter(tracker, interval=0.05).start()
    try:
        wait_for(lambda: sum(1 for line in json_lines(out.getvalue()) if line["event"] == "progress") >= 3,
                 timeout=10, what="three heartbeats")
    finally:
        reporter.stop()
    count = len(out.getvalue().splitlines())
    tracker.retry(reason="timeout", path=None, delay=1, message="after stop")
    assert len(out.getvalue().splitlines()) == count  # stopped: no more lines


def test_tty_text_renders_a_progress_bar_instead_of_heartbeat_lines() -> None:
    tty = TTY()
    logs.setup_logging(redactor=CANARY, fmt="auto", level="info", stream=tty)
    tracker = downloading_tracker(plan=make_plan({"a.bin": 1000}))
    reporter = logs.ProgressReporter(tracker, interval=10)
    assert reporter.bar is True
    tracker.add_bytes("a.bin", 420)
    reporter.tick()
    screen = tty.getvalue()
    assert "\r\x1b[K[" in screen and " 42.0%" in screen and "0/1 files" in screen
    assert "\n" not in screen  # a bar, not a line
    logging.getLogger("provisioner.fetch").warning("a line while the bar is shown")
    after = tty.getvalue()[len(screen):]
    assert after.startswith("\r\x1b[K") and "a line while the bar is shown\n" in after
    assert after.endswith("0/1 files")  # the bar is redrawn below the line
    reporter.stop()
    assert tty.getvalue().endswith("\n")


def test_progress_bar_and_human_units() -> None:
    snap = {"progress_ratio": 0.5, "bytes_on_disk": 3 << 29, "bytes_total": 3 << 30,
            "speed_bytes_per_second": 35.2 * (1 << 20), "eta_seconds": 62.0, "files_done": 3, "files_total": 7}
    bar = logs.progress_bar(snap, width=10)
    assert bar == "[#####.....]  50.0%  1.5 GiB / 3.0 GiB  35.2 MiB/s  ETA 1m02s  3/7 files"
    assert logs.human_seconds(None) == "?" and logs.human_seconds(7322) == "2h02m"
    assert logs.human_bytes(512) == "512 B"


def test_every_event_kind_has_a_log_line() -> None:
    from provisioner.observe.logs import event_line
    from provisioner.observe.progress import EventKind

    for kind in EventKind:
        level, msg = event_line(kind, {})
        assert level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR) and msg, kind
