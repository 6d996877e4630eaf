"""Standalone hub: ``python -m hub_emulator --repo ID=DIR [--repo ...] [--port N] [--profile P]`` prints
the hub URL and serves until SIGINT/SIGTERM. Imports the package's public names only.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from . import PROFILES, HubEmulator
from . import __doc__ as _package_doc


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m hub_emulator", description=(_package_doc or "").split("\n")[0]
    )
    ap.add_argument(
        "--repo", action="append", default=[], metavar="ID=DIR", help="repo to serve (repeatable)"
    )
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--cdn-port", type=int, default=0)
    ap.add_argument("--token", default=None, help="require this bearer token for every repo")
    ap.add_argument("--rate-limit", type=float, default=None, help="global bytes/s")
    ap.add_argument("--page-size", type=int, default=1000)
    ap.add_argument("--profile", choices=PROFILES, default="hf", help="which hub to emulate (default: hf)")
    ap.add_argument(
        "--xet-auth",
        default="503",
        metavar="STATUS|unreachable",
        help="xet profile: what the xet-auth token endpoint answers (default: 503)",
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.xet_auth != "unreachable" and not args.xet_auth.isdigit():
        print(f"--xet-auth expects an HTTP status or 'unreachable', got {args.xet_auth!r}", file=sys.stderr)
        return 2
    hub = HubEmulator(
        port=args.port,
        cdn_port=args.cdn_port,
        page_size=args.page_size,
        profile=args.profile,
        xet_auth_status=None if args.xet_auth == "unreachable" else int(args.xet_auth),
    )
    for spec in args.repo:
        repo_id, sep, directory = spec.partition("=")
        if not sep:
            print(f"--repo expects ID=DIR, got {spec!r}", file=sys.stderr)
            return 2
        hub.add_repo(repo_id, directory, token=args.token)
    hub.faults.rate_limit_global = args.rate_limit
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    with hub:
        print(hub.url, flush=True)
        done.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
