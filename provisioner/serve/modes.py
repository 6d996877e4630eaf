"""The `run` loop of the init and sidecar modes: one frozen `Config` in, one exit code out.

Owns what happens around `api.provision` in a real process: logging setup, SIGTERM/SIGINT
handlers, the progress reporter, the health server, running `provision` in a worker thread so the
main thread stays free for signals (with a grace period after a stop request), the sidecar's fresh
attempt after a spent retry budget, the final Pushgateway push, and serving on after the outcome
(sidecar until SIGTERM, init for `--linger`), and in a sidecar with `--serve-listen` the hub-protocol
server over the ready model (serve.hub_server), so other provisioners can use it as a mirror. Imports api,
config, context, errors, logs, marker, metrics, progress, redact, serve.server and serve.hub_server; only
cli.py imports it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from ..api import ProvisionResult, provision
from ..config import Config
from ..context import Stop
from ..errors import ConfigError, ExitCode, Interrupted, ProvisionerError, exit_code_for
from ..observe import logs, metrics
from ..observe.progress import Tracker
from ..redact import Redactor, redact
from ..state.layout import model_dir as model_dir_for
from ..state.marker import check_ready
from .hub_server import HubServer, ServeMetrics
from .server import HealthServer, bind_error_message

# After SIGTERM, how long the worker may take to flush and stop before the process exits anyway
# (well inside Kubernetes' default 30 s grace period).
STOP_GRACE_SECONDS = 10.0
JOIN_SECONDS = 0.2  # short joins keep the main thread free to run signal handlers

log = logging.getLogger("provisioner")

FreeSpace = Callable[[Path], int] | None


def install_signal_handlers(stop: Stop) -> None:
    def handler(signum: int, _frame: object) -> None:
        stop.stop(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


def run_service(cfg: Config, *, free_space: FreeSpace = None) -> int:
    """Provision `cfg` as the `run` command does and return the process exit code.

    Logging stays installed when this returns: the process is about to exit, and a daemon thread
    still finishing (an abandoned worker) must log in the configured format, not Python's fallback.
    """
    redactor = Redactor.for_secrets(cfg.token)  # the run's secrets, handed to every sink
    log_handle = logs.setup_logging(fmt=cfg.log_format, level=cfg.log_level, redactor=redactor)
    stop = Stop()
    install_signal_handlers(stop)
    tracker = Tracker(repo_id=cfg.repo_id, revision=cfg.revision)
    registry = metrics.make_registry(tracker)
    reporter = logs.ProgressReporter(tracker, interval=cfg.progress_interval, logger=log, output=log_handle)
    reporter.start()
    server: HealthServer | None = None
    mirror: HubServer | None = None
    try:
        server = _start_server(cfg, tracker=tracker, registry=registry, redactor=redactor)
        log.info("starting", extra={"settings": cfg.redacted()})
        code = _provision_until_settled(cfg, tracker=tracker, stop=stop, free_space=free_space)
        if cfg.pushgateway:
            _push_final(cfg, registry=registry)
        if cfg.mode == "sidecar" and code == 0:
            mirror = _start_mirror(cfg, registry=registry)
            log.info("sidecar: serving until SIGTERM")
            stop.wait()
        elif cfg.linger > 0 and server is not None:
            stop.wait(cfg.linger)
        return code
    finally:
        reporter.stop()
        if mirror is not None:
            mirror.stop()
        if server is not None:
            server.stop()


def _start_server(cfg: Config, *, tracker: Tracker, registry: CollectorRegistry,
                  redactor: Redactor) -> HealthServer | None:
    if not cfg.listen:
        return None
    # the folder the app reads (the revision's link in the versioned layout), for the revision it asked for
    model_dir = model_dir_for(target=Path(cfg.target), revision=cfg.revision, layout=cfg.layout)
    server = HealthServer(cfg.listen, tracker=tracker, registry=registry,
                          ready_check=lambda: check_ready(model_dir, repo_id=cfg.repo_id, revision=cfg.revision).ok,
                          stall_limit=cfg.stall_timeout, redactor=redactor)
    try:
        server.start()
    except OSError as exc:  # a busy or forbidden port is a setting to fix: one line and exit 2, no traceback
        raise ConfigError(bind_error_message(server.address, exc), setting="listen") from None
    log.info("serving /metrics /healthz /readyz /status", extra={"listen": f"{cfg.listen}", "port": server.port})
    return server


def _start_mirror(cfg: Config, *, registry: CollectorRegistry) -> HubServer | None:
    """`--serve-listen`: the ready model, read-only over the hub protocol (the served-bytes counters join
    this process's /metrics). It re-checks the marker on every request, so a later repair is safe."""
    if not cfg.serve_listen:
        return None
    model_dir = model_dir_for(target=Path(cfg.target), revision=cfg.revision, layout=cfg.layout)
    mirror = HubServer(model_dir, listen=cfg.serve_listen, metrics=ServeMetrics(registry))
    try:
        mirror.start()
    except OSError as exc:  # the model is ready; a busy mirror port must not take the sidecar down
        log.error("%s", bind_error_message(cfg.serve_listen, exc))
        return None
    log.info("serving the model over the hub protocol", extra={"serve_listen": cfg.serve_listen,
                                                                 "port": mirror.port})
    return mirror


def _provision_until_settled(cfg: Config, *, tracker: Tracker, stop: Stop, free_space: FreeSpace) -> int:
    """Run attempts until one settles: ready, a permanent error, a stop request, or (init mode) a
    spent retry budget. A sidecar outlives outages: it starts over (partials are kept) after a pause."""
    while True:
        result, error = _attempt(cfg, tracker=tracker, stop=stop, free_space=free_space)
        if error is None:
            assert result is not None  # an attempt without an error has a result
            log.info("ready", extra={"commit": result.commit, "files": result.files,
                                     "bytes_total": result.bytes_total, "bytes_downloaded": result.bytes_downloaded,
                                     "warm": result.warm, "seconds": round(result.seconds, 3)})
            return 0
        code = exit_code_for(error)
        if not isinstance(error, ProvisionerError):
            log.exception("unexpected error", exc_info=error)
        else:
            log.error("%s", redact(str(error)), extra={"exit_code": code, "error": type(error).__name__})
        if not (cfg.mode == "sidecar" and code == ExitCode.TRANSIENT and not stop.is_set()):
            return code
        log.warning("retry budget spent; the sidecar starts a new attempt", extra={"pause": cfg.backoff_max})
        if stop.wait(cfg.backoff_max):
            return 128 + stop.signum


def _attempt(cfg: Config, *, tracker: Tracker, stop: Stop,
             free_space: FreeSpace) -> tuple[ProvisionResult | None, BaseException | None]:
    """One `provision` call in a worker thread: (result, None) or (None, the error it raised)."""
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["value"] = provision(cfg, tracker=tracker, stop=stop, free_space=free_space)
        except BaseException as exc:  # handed to the main thread, which maps it to an exit code
            outcome["error"] = exc

    worker = threading.Thread(target=work, name="provision", daemon=True)
    worker.start()
    give_up_at: float | None = None
    while worker.is_alive():
        worker.join(JOIN_SECONDS)
        if stop.is_set() and give_up_at is None:
            give_up_at = time.monotonic() + STOP_GRACE_SECONDS
        if give_up_at is not None and time.monotonic() > give_up_at:
            # partials are already durable after each chunk; don't let a stuck call eat the grace period
            log.error("still busy %ss after the stop request; exiting anyway", STOP_GRACE_SECONDS)
            return None, Interrupted(stop.signum)
    error = outcome.get("error")
    return (None, error) if error is not None else (outcome["value"], None)


def _push_final(cfg: Config, *, registry: CollectorRegistry) -> None:
    assert cfg.pushgateway  # checked by the caller
    try:
        metrics.push_final(registry, cfg.pushgateway, job="model-provisioner",
                           grouping_key={"instance": os.environ.get("POD_NAME", os.uname().nodename)})
    except Exception as exc:  # a missing Pushgateway must not change the outcome
        log.warning("pushgateway push failed: %s", redact(str(exc)))
