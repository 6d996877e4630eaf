"""Logging: JSON lines for machines, text (with a progress bar) for people, never a secret.

`setup_logging` installs one handler on the root logger (so library loggers such as httpx2,
whose request lines carry signed CDN URLs, go through it too) and returns a `LogHandle` that the
caller owns (`close()` removes it again). `NOISY_LOGGERS` is the one list of chatty libraries.
Every message, every extra field and every traceback passes through `redact.redact` before it is
written. Imports only progress and redact.

`ProgressReporter` turns `Tracker` events into one structured line each and, while
downloading, a heartbeat every `interval` seconds (or a single redrawn progress bar line when
stderr is a terminal and the format is text).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from ..observe.progress import Event, EventKind, Tracker
from ..redact import PATTERNS_ONLY, Redactor

_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime"}
# Libraries that log every HTTP request (signed CDN URLs included) at INFO or DEBUG: one line per
# request drowns the progress lines, so they speak only under --log-level debug (see `noisy_level`).
NOISY_LOGGERS = ("httpx2", "httpcore2", "httpx", "httpcore", "urllib3", "huggingface_hub", "filelock",
                 "kubernetes")
_MARK = "_mp_redacted"
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def redact_value(value: Any, redactor: Redactor = PATTERNS_ONLY) -> Any:
    """`value` with every string inside it redacted (dicts, lists and tuples walked)."""
    if isinstance(value, str):
        return redactor(value)
    if isinstance(value, Mapping):
        return {redactor(str(k)): redact_value(v, redactor) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(v, redactor) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return redactor(str(value))


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a caller passed with `extra=` (everything not a standard LogRecord attribute)."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}


class RedactingFilter(logging.Filter):
    """Renders the message once, redacted, and redacts every extra field in place.

    Marks the record so the formatters do not redact it twice (`redact` is not idempotent on
    its own placeholders). Tracebacks are redacted by the formatters.
    """

    def __init__(self, redactor: Redactor = PATTERNS_ONLY) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _MARK, False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must still be logged, not raise
            message = f"{record.msg!s} {record.args!r}"
        record.msg = self.redactor(message)
        record.args = None
        for key, value in extra_fields(record).items():
            setattr(record, key, redact_value(value, self.redactor))
        setattr(record, _MARK, True)
        return True


def _clean(record: logging.LogRecord, redactor: Redactor) -> tuple[str, dict[str, Any]]:
    """(message, extra fields), redacted unless `RedactingFilter` already did it."""
    if getattr(record, _MARK, False):
        return record.getMessage(), extra_fields(record)
    return redactor(record.getMessage()), {k: redact_value(v, redactor) for k, v in extra_fields(record).items()}


class _RedactingFormatter(logging.Formatter):
    def __init__(self, redactor: Redactor = PATTERNS_ONLY) -> None:
        super().__init__()
        self.redactor = redactor


def _timestamp(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(_RedactingFormatter):
    """One JSON object per line: ts, level, logger, msg, then the extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        message, extra = _clean(record, self.redactor)
        out: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": message,
        }
        for key, value in extra.items():
            out.setdefault(key, value)
        if record.exc_info:
            out["exc"] = self.redactor(self.formatException(record.exc_info))
        if record.stack_info:
            out["stack"] = self.redactor(self.formatStack(record.stack_info))
        return json.dumps(out, default=lambda v: self.redactor(str(v)), ensure_ascii=False)


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return json.dumps(text) if (not text or any(c in text for c in " \"=")) else text


class TextFormatter(_RedactingFormatter):
    """`2024-05-01T12:00:00.123Z INFO  provisioner.fetch: message key=value ...` (redacted)."""

    def format(self, record: logging.LogRecord) -> str:
        message, extra = _clean(record, self.redactor)
        fields = " ".join(f"{k}={_text_value(v)}" for k, v in extra.items() if k != "event")
        line = f"{_timestamp(record.created)} {record.levelname:<7} {record.name}: {message}"
        if fields:
            line += f"  {fields}"
        if record.exc_info:
            line += "\n" + self.redactor(self.formatException(record.exc_info))
        if record.stack_info:
            line += "\n" + self.redactor(self.formatStack(record.stack_info))
        return line


class _BarAwareHandler(logging.StreamHandler[TextIO]):
    """A stream handler that clears the progress bar before a line and redraws it after."""

    def __init__(self, stream: TextIO, *, bar_enabled: bool) -> None:
        super().__init__(stream)
        self.bar_enabled = bar_enabled  # text on a TTY: the progress reporter may draw a bar
        self.bar_line = ""  # the bar currently shown ("" = none)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            with_bar = self.bar_line
            stream = self.stream
            if with_bar:
                stream.write("\r\x1b[K")
            stream.write(msg + self.terminator)
            if with_bar:
                stream.write(with_bar)
            self.flush()
        except Exception:  # noqa: BLE001 - logging's contract: report via handleError, never raise
            self.handleError(record)

    def draw_bar(self, line: str) -> None:
        self.acquire()
        try:
            self.bar_line = "\r\x1b[K" + line
            self.stream.write(self.bar_line)
            self.flush()
        except (OSError, ValueError):  # the terminal went away; the bar is best effort
            pass
        finally:
            self.release()

    def clear_bar(self, *, keep: bool) -> None:
        """Stop showing the bar: leave it on screen (`keep`, ends the line) or erase it."""
        self.acquire()
        try:
            if self.bar_line:
                self.stream.write("\n" if keep else "\r\x1b[K")
                self.flush()
            self.bar_line = ""
        except (OSError, ValueError):  # the terminal went away; nothing to clean up
            self.bar_line = ""
        finally:
            self.release()


class LogHandle:
    """What `setup_logging` installed; the caller owns it. `close()` removes the handler and puts the
    root and library logger levels back as they were (idempotent; also a context manager)."""

    def __init__(self, handler: _BarAwareHandler, *, use_json: bool, bar_enabled: bool,
                 saved_levels: dict[str, int]) -> None:
        self.handler = handler
        self.use_json = use_json
        self.bar_enabled = bar_enabled
        self._saved_levels = saved_levels  # logger name ("" = root) -> its level before setup

    def close(self) -> None:
        root = logging.getLogger()
        if self.handler in root.handlers:
            root.removeHandler(self.handler)
            for name, level in self._saved_levels.items():
                logging.getLogger(name or None).setLevel(level)
        self._saved_levels = {}

    def __enter__(self) -> LogHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _installed_handler() -> _BarAwareHandler | None:
    """Our handler on the root logger, if `setup_logging` installed one (the last one wins)."""
    ours = [h for h in logging.getLogger().handlers if isinstance(h, _BarAwareHandler)]
    return ours[-1] if ours else None


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a real file: not a terminal
        return False


def noisy_level(root_level: int) -> int:
    """The level for `NOISY_LOGGERS`: all of it at debug, else warnings up (or the root level if higher)."""
    return logging.DEBUG if root_level <= logging.DEBUG else max(logging.WARNING, root_level)


def setup_logging(*, fmt: str = "auto", level: str = "info", stream: TextIO | None = None,
                  redactor: Redactor = PATTERNS_ONLY) -> LogHandle:
    """Install the redacting handler on the root logger (idempotent: replaces our previous one) and
    return its handle, which the caller owns.

    fmt: `auto` (JSON lines unless `stream` is a TTY, then text), `json` or `text`.
    The progress bar is enabled only for text on a TTY.
    """
    stream = stream if stream is not None else sys.stderr
    if fmt not in ("auto", "json", "text"):
        raise ValueError(f"log format must be auto, json or text; got {fmt!r}")
    numeric = _LEVELS.get(level.lower())
    if numeric is None:
        raise ValueError(f"log level must be one of {', '.join(_LEVELS)}; got {level!r}")
    tty = _isatty(stream)
    use_json = fmt == "json" or (fmt == "auto" and not tty)
    bar_enabled = tty and not use_json
    handler = _BarAwareHandler(stream, bar_enabled=bar_enabled)
    handler.addFilter(RedactingFilter(redactor))
    handler.setFormatter(JsonFormatter(redactor) if use_json else TextFormatter(redactor))
    root = logging.getLogger()
    saved = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    saved[""] = root.level
    previous = _installed_handler()
    if previous is not None:
        root.removeHandler(previous)
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(noisy_level(numeric))
    return LogHandle(handler, use_json=use_json, bar_enabled=bar_enabled, saved_levels=saved)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # unreachable; keeps type checkers content


def human_seconds(s: float | None) -> str:
    if s is None or s < 0:
        return "?"
    s = int(round(s))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def progress_fields(snap: Mapping[str, Any]) -> dict[str, Any]:
    """The heartbeat's fields from a `Tracker.snapshot()`."""
    return {
        "event": "progress",
        "phase": snap["phase"],
        "percent": round(100.0 * float(snap["progress_ratio"]), 1),
        "bytes_on_disk": snap["bytes_on_disk"],
        "bytes_total": snap["bytes_total"],
        "bytes_received": snap["bytes_received"],
        "files_done": snap["files_done"],
        "files_total": snap["files_total"],
        "speed": snap["speed_bytes_per_second"],
        "eta": snap["eta_seconds"],
    }


def progress_bar(snap: Mapping[str, Any], *, width: int = 30) -> str:
    """`[#########.....]  42.1%  1.2 GiB / 2.9 GiB  35.2 MiB/s  ETA 1m02s  3/7 files`."""
    ratio = min(max(float(snap["progress_ratio"]), 0.0), 1.0)
    filled = int(ratio * width)
    return (f"[{'#' * filled}{'.' * (width - filled)}] {100 * ratio:5.1f}%  "
            f"{human_bytes(snap['bytes_on_disk'])} / {human_bytes(snap['bytes_total'])}  "
            f"{human_bytes(snap['speed_bytes_per_second'])}/s  ETA {human_seconds(snap['eta_seconds'])}  "
            f"{snap['files_done']}/{snap['files_total']} files")



def _field_name(key: str) -> str:
    """An event key that does not collide with a LogRecord attribute (logging raises KeyError)."""
    if key == "message":
        return "error"
    return f"{key}_" if key in _STANDARD_ATTRS else key


class ProgressReporter:
    """Logs one line per Tracker event, and progress while downloading (heartbeat or TTY bar).

    `output`: the `setup_logging` handle whose stream the bar is drawn on (None = the one installed
    now, if any). `bar`: None = the bar when that setup chose text on a TTY; True/False to force.
    """

    BAR_REFRESH_SECONDS = 0.5

    def __init__(self, tracker: Tracker, *, interval: float, logger: logging.Logger | None = None,
                 bar: bool | None = None, output: LogHandle | None = None) -> None:
        self.tracker = tracker
        self.interval = float(interval)
        self.logger = logger or logging.getLogger("provisioner.observe.progress")
        self._out = output.handler if output is not None else _installed_handler()
        self.bar = (self._out is not None and self._out.bar_enabled) if bar is None else bar
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._active = False
        tracker.subscribe(self._on_event)

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self) -> ProgressReporter:
        if self._thread is None:
            self._active = True
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="progress-reporter", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._active = False
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.bar and self._out is not None:
            self._out.clear_bar(keep=True)

    def __enter__(self) -> ProgressReporter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- heartbeat / bar --------------------------------------------------------------------
    def _run(self) -> None:
        wait = min(self.interval, self.BAR_REFRESH_SECONDS) if self.bar else self.interval
        while not self._stop.wait(wait):
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - a reporting glitch must never end reporting or the run
                self.logger.debug("progress report failed", exc_info=True)

    def tick(self) -> None:
        """One heartbeat (or bar redraw) if downloading; called by the thread, or by tests."""
        snap = self.tracker.snapshot()
        if snap["phase"] != "downloading":
            return
        if self.bar and self._out is not None:
            self._out.draw_bar(progress_bar(snap))
            return
        fields = progress_fields(snap)
        self.logger.info(
            "downloading %.1f%%: %s of %s at %s/s, eta %s", fields["percent"],
            human_bytes(snap["bytes_on_disk"]), human_bytes(snap["bytes_total"]),
            human_bytes(snap["speed_bytes_per_second"]), human_seconds(snap["eta_seconds"]),
            extra=fields)

    # ---- events -------------------------------------------------------------------------------
    def _on_event(self, event: Event) -> None:
        if not self._active:
            return
        d = event.data
        fields: dict[str, Any] = {"event": event.kind}
        fields.update({_field_name(k): v for k, v in d.items()})
        if event.kind == EventKind.PHASE and self.bar and d.get("phase") != "downloading" and self._out is not None:
            if self._out.bar_line:  # leave the final state on screen, not the last periodic redraw
                self._out.draw_bar(progress_bar(self.tracker.snapshot()))
            self._out.clear_bar(keep=True)
        level, msg = event_line(event.kind, d)
        self.logger.log(level, "%s", msg, extra=fields)


def _verified_line(d: Mapping[str, Any]) -> tuple[int, str]:
    ok = bool(d.get("ok"))
    detail = f": {d.get('detail')}" if d.get("detail") else ""
    return (logging.INFO if ok else logging.ERROR,
            f"verification {d.get('kind')} {'ok' if ok else 'FAILED'} in {d.get('seconds')}s{detail}")


_EVENT_LINES: dict[EventKind, Callable[[Mapping[str, Any]], tuple[int, str]]] = {
    EventKind.PHASE: lambda d: (logging.INFO, f"phase {d.get('phase')}"),
    EventKind.PLAN: lambda d: (logging.INFO, f"plan: {d.get('files')} files, {human_bytes(d.get('bytes_total', 0))} "
                               f"({human_bytes(d.get('bytes_on_disk', 0))} already on disk), commit {d.get('commit')}"),
    EventKind.FILE_STARTED: lambda d: (logging.DEBUG, f"fetching {d.get('path')} from offset {d.get('offset')}"),
    EventKind.FILE_DONE: lambda d: (logging.INFO, f"{'already present' if d.get('skipped') else 'done'}: {d.get('path')}"),
    EventKind.RETRY: lambda d: (logging.WARNING, f"retry ({d.get('reason')})"
                                f"{' ' + str(d['path']) if d.get('path') else ''} in {d.get('delay')}s: {d.get('message')}"),
    EventKind.STALL: lambda d: (logging.WARNING,
                                f"stalled: {d.get('path') or 'transfer'} received nothing within the stall timeout"),
    EventKind.WAITING: lambda d: (logging.INFO, f"waiting for {d.get('holder')} to finish the download"),
    EventKind.VERIFIED: _verified_line,
    EventKind.READY: lambda d: (logging.INFO, f"ready: {d.get('repo_id')} at {d.get('commit')}"),
    EventKind.FAILED: lambda d: (logging.ERROR, f"failed (exit {d.get('exit_code')}): {d.get('message')}"),
}


def event_line(kind: EventKind, data: Mapping[str, Any]) -> tuple[int, str]:
    """The log level and message for one Tracker event (every EventKind has one)."""
    return _EVENT_LINES[kind](data)
