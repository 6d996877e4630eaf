"""Fault matrix, bad input: malformed settings, unsafe or malformed hub metadata, planted symlinks.

What the hub emulator cannot produce (traversal paths, absurd sizes, broken JSON, missing headers)
comes from `FakeHub`, a tiny real HTTP server on 127.0.0.1 whose answers each test sets. A
hypothesis property test throws generated `model_info` bodies at the planner through real HTTP and
huggingface_hub's own parsing: the planner must answer with a safe Plan or a clear error, never
anything else. docs/faults.md is the table.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import posixpath
import re
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import run_args, run_cli
from hub_emulator import HubEmulator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provisioner import cli
from provisioner.config import SETTINGS
from provisioner.context import RunContext
from provisioner.errors import BadRemoteError, ExitCode, NotFoundError, ProvisionerError
from provisioner.manifest import FileEntry, Plan
from provisioner.observe.progress import Tracker
from provisioner.plan import DEFAULT_SKIPPED_WEIGHTS, MAX_FILE_SIZE, build_plan
from provisioner.retry import RetryBudget
from provisioner.state import marker

COMMIT = "c0ffee" + "0" * 34
REPO = "org/fake"
FAST = ["--verify", "checksums", "--stall-timeout", "1", "--backoff-max", "0.2", "--connect-timeout", "2",
        "--api-timeout", "3", "--retry-budget", "3"]


def blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


# ---- a fake hub for answers the emulator cannot give ---------------------------------------------
@dataclass
class FakeHub:
    """`info` is the model_info answer (bytes as-is, anything else JSON-encoded); `files` are served at
    /{repo}/resolve/{rev}/{path} with Range support, minus the headers named in `omit`."""

    info: Any = field(default=None, repr=False)
    info_status: int = 200
    info_type: str = "application/json"  # a mirror's front page says text/html
    tree: Any = None  # the recursive tree listing (JSON); None: no tree endpoint (404)
    files: dict[str, bytes] = field(default_factory=dict)
    omit: set[str] = field(default_factory=set)
    drop_after: int | None = None  # once: close the first file response after this many body bytes
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list, repr=False)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    server: http.server.ThreadingHTTPServer | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def info_bytes(self) -> bytes:
        with self.lock:
            info = self.info
        return info if isinstance(info, bytes) else json.dumps(info).encode()


def _handler(fake: FakeHub) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            with fake.lock:
                fake.requests.append((self.command, path, dict(self.headers.items())))
            with fake.lock:
                listing = fake.tree
            if path.startswith("/api/") and "/tree/" in path and listing is not None:
                body = json.dumps(listing).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command == "GET":
                    self.wfile.write(body)
                return
            if path.startswith("/api/") and ("/tree/" in path or path.endswith("/paths-info")):
                self.send_response(404)  # this fake offers model_info only: the planner's later sources skip it
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if path.startswith("/api/"):
                body = fake.info_bytes()
                self.send_response(fake.info_status)
                self.send_header("Content-Type", fake.info_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command == "GET":
                    self.wfile.write(body)
                return
            m = re.match(r"^/[^/]+/[^/]+/resolve/[^/]+/(.+)$", path)
            from urllib.parse import unquote

            data = fake.files.get(unquote(m.group(1))) if m else None
            if data is None:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start, end, status = 0, len(data) - 1, 200
            rng = self.headers.get("Range")
            if rng and "Accept-Ranges" not in fake.omit:
                a, _, b = rng.split("=", 1)[1].partition("-")
                start, end, status = int(a), int(b) if b else len(data) - 1, 206
            body = data[start:end + 1]
            self.send_response(status)
            headers = {"ETag": f'"{blob_sha1(data)}"', "Content-Length": str(len(body)),
                       "Accept-Ranges": "bytes", "X-Repo-Commit": COMMIT}
            if status == 206:
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            for k, v in headers.items():
                if k not in fake.omit:
                    self.send_header(k, v)
            if "Content-Length" in fake.omit:
                self.send_header("Connection", "close")  # the body ends when the connection does
                self.close_connection = True
            self.end_headers()
            if self.command == "HEAD":
                return
            with fake.lock:
                cut, fake.drop_after = fake.drop_after, None
            if cut is not None and cut < len(body):
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


@pytest.fixture(scope="module")
def fake_hub_server() -> Iterator[FakeHub]:
    fake = FakeHub()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    fake.server = server
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield fake
    server.shutdown()
    server.server_close()


@pytest.fixture
def fake_hub(fake_hub_server: FakeHub) -> FakeHub:
    f = fake_hub_server
    with f.lock:
        f.info, f.info_status, f.files, f.omit, f.drop_after = None, 200, {}, set(), None
        f.info_type, f.tree = "application/json", None
        f.requests.clear()
    return f


def sibling(path: Any, data: bytes, **over: Any) -> dict[str, Any]:
    s = {"rfilename": path, "size": len(data), "blobId": blob_sha1(data)}
    s.update(over)
    return s


def info_for(siblings: list[Any], **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"id": REPO, "modelId": REPO, "sha": COMMIT, "private": False, "siblings": siblings}
    body.update(over)
    return body


def plan_with(fake: FakeHub, tmp_path: Path) -> Plan:
    from provisioner.config import Config

    cfg = Config(repo_id=REPO, endpoint=fake.url, target=str(tmp_path / "m"), include=(), exclude=(),
                 retry_budget=0.5, backoff_max=0.05, api_timeout=5, connect_timeout=2, listen="", kube="off")
    return build_plan(RunContext(config=cfg, tracker=Tracker(repo_id=REPO, revision=cfg.revision),
                                 budget=RetryBudget(cfg.retry_budget), stop=threading.Event()))


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def run_fake(fake: FakeHub, target: Path, *extra: str) -> Any:
    return run_cli(run_args(endpoint=fake.url, target=target, repo_id=REPO, extra=[*FAST, *extra]), timeout=60)


def assert_one_line_error(stderr: str, code: int) -> None:
    from cli_helpers import json_lines

    final = [ln for ln in json_lines(stderr) if ln.get("exit_code") == code and "event" not in ln]
    plain = [ln for ln in stderr.splitlines() if ln.startswith("model-provisioner:")]
    assert len(final) + len(plain) == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]


# ---- malformed settings: exit 2, naming the setting ----------------------------------------------
BAD_VALUES: list[tuple[str, str]] = [
    ("repo-id", "../etc"), ("repo-id", "a b/c"), ("repo-id", ""), ("repo-id", "org/name/extra"),
    ("revision", "../main"), ("revision", "a b"), ("revision", ""), ("revision", "/abs"),
    ("endpoint", "ftp://hub"), ("endpoint", "not a url"), ("endpoint", ""),
    ("engine", "curl"), ("verify", "maybe"), ("reverify", "sometimes"), ("require-digests", "perhaps"),
    ("connect-timeout", "0"), ("connect-timeout", "-1"), ("connect-timeout", "abc"),
    ("stall-timeout", "nan"), ("stall-timeout", "inf"), ("api-timeout", ""),
    ("retry-budget", "-5"), ("backoff-max", "0"),
    ("max-workers", "0"), ("max-workers", "65"), ("max-workers", "1.5"),
    ("connections-per-file", "0"), ("connections-per-file", "33"),
    ("split-threshold", "12XB"), ("split-threshold", "-1"), ("split-threshold", "1.5GiB"),
    ("disk-headroom", "lots"),
    ("listen", "nope"), ("listen", "127.0.0.1:99999"),
    ("mirrors", "ftp://mirror"), ("mirrors", "http://ok,not a url"), ("serve-listen", "nope"),
    ("mode", "daemon"), ("linger", "-1"), ("linger", "inf"),
    ("pushgateway", "gopher://x"),
    ("log-format", "xml"), ("log-level", "loud"), ("progress-interval", "0"),
    ("kube", "maybe"), ("coordination", "paxos"), ("lease-duration", "0"), ("events", "sometimes"),
    ("layout", "nested"), ("keep-revisions", "0"), ("keep-revisions", "many"), ("offline", "sometimes"), ("header-timeout", "0"),
    ("ca-bundle", "/nonexistent/ca.pem"), ("max-bytes-per-second", "fast"), ("max-bytes-per-second", "-1"),
    ("token-file", "/nonexistent/secret/token"),
    ("expect-commit", "main"), ("expect-commit", "abc123"), ("expect-commit", "g" * 40),
]
# Free-form settings: any string is a legal value (patterns, paths checked when used, a condition type).
FREE_FORM = {"target", "include", "exclude", "reference-embeddings", "readiness-condition"}
# A run that got past config would go nowhere fast: a closed local port and a tiny budget.
SAFE = ["--endpoint", "http://127.0.0.1:9", "--retry-budget", "0.5", "--listen", "off", "--kube", "off"]


def test_every_validated_setting_has_a_bad_value_case() -> None:
    covered = {name for name, _ in BAD_VALUES}
    validated = {s.name for s in SETTINGS if "run" in s.commands} - FREE_FORM
    assert validated <= covered, f"no malformed-value case for {sorted(validated - covered)}"


def _without(argv: list[str], flag: str) -> list[str]:
    """argv minus `flag VALUE` (so the env var under test is not overridden by a flag)."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip or a == flag:
            skip = not skip
            continue
        out.append(a)
    return out


@pytest.mark.parametrize(("name", "value"), BAD_VALUES, ids=[f"{n}={v!r}" for n, v in BAD_VALUES])
@pytest.mark.parametrize("source", ["flag", "env"])
def test_malformed_setting_exits_2_naming_it(name: str, value: str, source: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    for k in list(os.environ):
        if k.startswith("PROVISIONER_") or k in ("HF_TOKEN", "HF_ENDPOINT"):
            monkeypatch.delenv(k)
    argv = ["run", *SAFE, "--target", str(tmp_path / "m")]
    if source == "flag":
        argv += [f"--{name}={value}"]
    else:
        argv = _without(argv, f"--{name}")
        monkeypatch.setenv("PROVISIONER_" + name.upper().replace("-", "_"), value)
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == ExitCode.USAGE, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    # one error line naming the setting (argparse prints its usage block above it for flag syntax errors)
    assert name in lines[-1] and "error" in lines[-1], err
    assert "Traceback" not in err and (len(lines) == 1 or lines[0].startswith("usage:")), err
    assert not (tmp_path / "m").exists(), "a config error must not touch the target"


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_listen_port_in_use_exits_2_with_one_line(hub: HubEmulator, tmp_path: Path, log_format: str) -> None:
    """A port another process holds is a setting to fix, not a crash: exactly one stderr line naming
    the address and what to set, exit 2, no traceback, nothing downloaded."""
    hub.add_repo(REPO, {"config.json": b"{}"})
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        address = f"127.0.0.1:{held.getsockname()[1]}"
        argv = run_args(endpoint=hub.url, target=tmp_path / "m", repo_id=REPO, extra=FAST)
        argv[argv.index("--listen") + 1] = address
        argv[argv.index("--log-format") + 1] = log_format
        res = run_cli(argv, timeout=60)
    assert res.returncode == ExitCode.USAGE, res.stderr[-3000:]
    assert res.stderr.splitlines() == [
        f"model-provisioner: error: listen: {address} is already in use (EADDRINUSE); "
        "set --listen / PROVISIONER_LISTEN to a free port or 'off'"], res.stderr
    assert res.stdout == ""
    assert hub.stats.requests == [], "nothing should be fetched when the port is taken"
    assert not (tmp_path / "m").exists(), "a config error must not touch the target"


def test_missing_reference_embeddings_file_is_a_config_error(hub: HubEmulator, tmp_path: Path) -> None:
    """A missing --reference-embeddings file is a typo to report at start (exit 2), not after a
    multi-GB download (or never, for a model the smoke test skips)."""
    hub.add_repo(REPO, {"config.json": b"{}"})
    res = run_cli(run_args(endpoint=hub.url, target=tmp_path / "m", repo_id=REPO,
                           extra=[*FAST, "--verify", "full", "--reference-embeddings",
                                  str(tmp_path / "no-such-ref.json")]), timeout=60)
    assert res.returncode == ExitCode.USAGE, res.stderr[-3000:]
    assert "reference-embeddings" in res.stderr
    assert hub.stats.requests == [], "nothing should be fetched with a broken setting"


@pytest.mark.parametrize("kind", ["file", "under-a-file"])
def test_target_that_cannot_be_a_directory_exits_local_io(hub: HubEmulator, tmp_path: Path, kind: str) -> None:
    hub.add_repo(REPO, {"config.json": b"{}"})
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    target = blocker if kind == "file" else blocker / "sub"
    res = run_cli(run_args(endpoint=hub.url, target=target, repo_id=REPO, extra=FAST), timeout=60)
    assert res.returncode == ExitCode.LOCAL_IO, res.stderr[-3000:]
    assert_one_line_error(res.stderr, ExitCode.LOCAL_IO)
    assert blocker.read_text() == "not a directory"


# ---- unsafe paths from the hub: exit 9, nothing written anywhere ----------------------------------
TRAVERSAL = ["../escape.txt", "a/../../escape.txt", "a/../b.txt", "./a.txt", "a//b.txt", "a/", ".", "..",
             "", "/etc/escape.txt", "C:/escape.txt", "a\\..\\..\\escape.txt", ".provisioner/ready.json",
             ".provisioner/partial/x.part", ".provisioner", "a\x00b", "bad\nname", "tab\there", "x" * 2000]


@pytest.mark.parametrize("bad", TRAVERSAL, ids=[repr(t)[:40] for t in TRAVERSAL])
def test_unsafe_path_in_listing_is_refused_by_the_planner(fake_hub: FakeHub, tmp_path: Path, bad: str) -> None:
    fake_hub.info = info_for([sibling("config.json", b"{}"), sibling(bad, b"evil")])
    with pytest.raises(BadRemoteError) as info:
        plan_with(fake_hub, tmp_path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kind", ["parent", "absolute", "state-dir"])
def test_unsafe_path_exits_9_and_writes_nothing(fake_hub: FakeHub, tmp_path: Path, kind: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "site" / "m"
    bad = {"parent": "../outside/escape.txt", "absolute": str(outside / "escape.txt"),
           "state-dir": ".provisioner/ready.json"}[kind]
    fake_hub.files = {"config.json": b"{}", bad.lstrip("/"): b"evil", bad: b"evil"}
    fake_hub.info = info_for([sibling("config.json", b"{}"), sibling(bad, b"evil")])
    before = tree(tmp_path)
    res = run_fake(fake_hub, target)
    assert res.returncode == ExitCode.BAD_REMOTE, res.stderr[-3000:]
    assert_one_line_error(res.stderr, ExitCode.BAD_REMOTE)
    assert tree(outside) == set()
    assert not marker.marker_path(target).exists()
    new = tree(tmp_path) - before
    assert all(p.startswith("site/m/.provisioner") or p in ("site", "site/m") for p in new), new
    assert not [r for r in fake_hub.requests if "/resolve/" in r[1]], "no file may be fetched on a bad plan"


# ---- absurd sizes and malformed JSON: exit 9 --------------------------------------------------------
# (None is not here: a missing size is incomplete metadata, asked of the next source, not a malformed one.)
ABSURD_SIZES: list[Any] = [-1, MAX_FILE_SIZE + 1, 2**64, 2**200, 1.5, "12", True, [1], {"n": 1}]


@pytest.mark.parametrize("size", ABSURD_SIZES, ids=[repr(s)[:20] for s in ABSURD_SIZES])
def test_absurd_size_is_refused(fake_hub: FakeHub, tmp_path: Path, size: Any) -> None:
    fake_hub.info = info_for([sibling("config.json", b"{}", size=size)])
    with pytest.raises(BadRemoteError):
        plan_with(fake_hub, tmp_path)


def test_absurd_size_exits_9_before_any_download(fake_hub: FakeHub, tmp_path: Path) -> None:
    data = b"x" * 10
    fake_hub.files = {"model.safetensors": data}
    fake_hub.info = info_for([sibling("model.safetensors", data, size=2**62,
                                      lfs={"sha256": hashlib.sha256(data).hexdigest(), "size": 2**62,
                                           "pointerSize": 130})])
    res = run_fake(fake_hub, tmp_path / "m")
    assert res.returncode == ExitCode.BAD_REMOTE, res.stderr[-3000:]
    assert_one_line_error(res.stderr, ExitCode.BAD_REMOTE)
    assert not [r for r in fake_hub.requests if "/resolve/" in r[1]]


MALFORMED: dict[str, Any] = {
    "not-json": b"{not json",
    "empty-body": b"",
    "html-error-page": b"<html><body>502 Bad Gateway</body></html>",
    "null": None,
    "list": [],
    "number": 42,
    "string": "model",
    "no-id": {"sha": COMMIT, "siblings": []},
    "no-sha": {"id": REPO, "siblings": [sibling("a.txt", b"a")]},
    "bad-sha": {"id": REPO, "sha": "zz", "siblings": [sibling("a.txt", b"a")]},
    "sha-not-str": {"id": REPO, "sha": 12345, "siblings": [sibling("a.txt", b"a")]},
    "no-siblings": {"id": REPO, "sha": COMMIT},
    "siblings-string": {"id": REPO, "sha": COMMIT, "siblings": "a.txt"},
    "siblings-dict": {"id": REPO, "sha": COMMIT, "siblings": {"rfilename": "a.txt"}},
    "siblings-number": {"id": REPO, "sha": COMMIT, "siblings": 7},
    "sibling-string": {"id": REPO, "sha": COMMIT, "siblings": ["a.txt"]},
    "sibling-null": {"id": REPO, "sha": COMMIT, "siblings": [None]},
    "sibling-no-rfilename": {"id": REPO, "sha": COMMIT, "siblings": [{"size": 1}]},
    "rfilename-int": {"id": REPO, "sha": COMMIT, "siblings": [{"rfilename": 5, "size": 1, "blobId": "a" * 40}]},
    "lfs-not-dict": {"id": REPO, "sha": COMMIT, "siblings": [sibling("a.bin", b"a", lfs="yes")]},
    "lfs-list": {"id": REPO, "sha": COMMIT, "siblings": [sibling("a.bin", b"a", lfs=[1, 2])]},
    "lfs-bad-sha256": {"id": REPO, "sha": COMMIT, "siblings": [sibling("a.bin", b"a", lfs={"sha256": "xyz", "size": 1})]},
    "no-hash": {"id": REPO, "sha": COMMIT, "siblings": [{"rfilename": "a.txt", "size": 1}]},
    "bad-blob-id": {"id": REPO, "sha": COMMIT, "siblings": [{"rfilename": "a.txt", "size": 1, "blobId": "nothex"}]},
    "bad-date": {"id": REPO, "sha": COMMIT, "lastModified": "yesterday-ish", "siblings": [sibling("a.txt", b"a")]},
    "bad-transformers-info": {"id": REPO, "sha": COMMIT, "transformersInfo": "x", "siblings": [sibling("a.txt", b"a")]},
    "bad-provider-mapping": {"id": REPO, "sha": COMMIT, "inferenceProviderMapping": 3,
                             "siblings": [sibling("a.txt", b"a")]},
    "duplicate-paths": {"id": REPO, "sha": COMMIT, "siblings": [sibling("a.txt", b"a"), sibling("a.txt", b"bb")]},
    "file-and-dir": {"id": REPO, "sha": COMMIT, "siblings": [sibling("a", b"a"), sibling("a/b.txt", b"b")]},
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_model_info_is_bad_remote(fake_hub: FakeHub, tmp_path: Path, name: str) -> None:
    """Malformed metadata is permanent (exit 9), never retried as if transient: a retry would just get the
    same answer for --retry-budget seconds (15 min by default) and then exit 7, misleadingly."""
    fake_hub.info = MALFORMED[name]
    with pytest.raises(ProvisionerError) as info:
        plan_with(fake_hub, tmp_path)
    assert isinstance(info.value, BadRemoteError), f"{type(info.value).__name__}: {info.value}"
    assert "\n" not in str(info.value)


def test_too_many_files_is_refused(fake_hub: FakeHub, tmp_path: Path) -> None:
    from provisioner.plan import MAX_FILES

    fake_hub.info = info_for([{"rfilename": f"f{i}.txt", "size": 1, "blobId": "a" * 40}
                              for i in range(MAX_FILES + 1)])
    with pytest.raises(BadRemoteError):
        plan_with(fake_hub, tmp_path)


def test_malformed_json_exits_9_without_retrying(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.info = b'{"id": "org/fake", "sha": '  # a truncated JSON document with a right Content-Length
    res = run_fake(fake_hub, tmp_path / "m", "--retry-budget", "30")
    assert res.returncode == ExitCode.BAD_REMOTE, res.stderr[-3000:]
    assert_one_line_error(res.stderr, ExitCode.BAD_REMOTE)
    assert len([r for r in fake_hub.requests if r[1].startswith("/api/")]) == 1


# ---- missing headers on resolve: handled ------------------------------------------------------------
@pytest.mark.parametrize("omit", [
    {"Content-Length"}, {"ETag"}, {"X-Repo-Commit"}, {"Accept-Ranges"},
    {"Content-Length", "ETag", "X-Repo-Commit", "Accept-Ranges"},
], ids=lambda o: "+".join(sorted(o)))
def test_missing_headers_on_resolve_still_ready(fake_hub: FakeHub, tmp_path: Path, omit: set[str]) -> None:
    files = {"config.json": b'{"a": 1}\n', "data/vocab.txt": os.urandom(300_000)}
    fake_hub.files = files
    fake_hub.omit = omit
    fake_hub.drop_after = 100_000  # and one dropped connection, so a resume happens without those headers
    fake_hub.info = info_for([sibling(p, d) for p, d in files.items()])
    target = tmp_path / "m"
    res = run_fake(fake_hub, target, "--retry-budget", "20")
    assert res.returncode == 0, res.stderr[-3000:]
    for p, d in files.items():
        assert (target / p).read_bytes() == d
    assert marker.check_ready(target).ok


# ---- a symlink planted in the target ----------------------------------------------------------------
POOL = {"config.json": b'{"hidden_size": 8}\n', "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}\n'}


def _hub_run(hub: HubEmulator, target: Path) -> Any:
    return run_cli(run_args(endpoint=hub.url, target=target, repo_id=REPO, extra=FAST), timeout=60)


@pytest.mark.parametrize("prefilled", [False, True], ids=["outside-empty", "outside-holds-right-file"])
def test_symlinked_subdir_leading_outside_is_refused(hub: HubEmulator, tmp_path: Path, prefilled: bool) -> None:
    """target/1_Pooling -> outside: exit 8, nothing written outside, no marker. Also when the outside dir
    already holds a file with the right bytes: the marker must never vouch for a file outside the target."""
    hub.add_repo(REPO, POOL)
    outside = tmp_path / "outside"
    outside.mkdir()
    if prefilled:
        (outside / "config.json").write_bytes(POOL["1_Pooling/config.json"])
    before = {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()}
    target = tmp_path / "m"
    target.mkdir()
    (target / "1_Pooling").symlink_to(outside, target_is_directory=True)
    res = _hub_run(hub, target)
    assert res.returncode == ExitCode.LOCAL_IO, res.stderr[-3000:]
    assert_one_line_error(res.stderr, ExitCode.LOCAL_IO)
    assert {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()} == before
    assert not marker.marker_path(target).exists()


def test_symlinked_state_dir_leading_outside_is_refused(hub: HubEmulator, tmp_path: Path) -> None:
    """target/.provisioner -> outside would put partials, the lock and the marker outside the volume."""
    hub.add_repo(REPO, POOL)
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "m"
    target.mkdir()
    (target / ".provisioner").symlink_to(outside, target_is_directory=True)
    res = _hub_run(hub, target)
    assert res.returncode == ExitCode.LOCAL_IO, res.stderr[-3000:]
    assert tree(outside) == set(), f"written outside the target: {tree(outside)}"


def test_symlinked_file_is_replaced_not_written_through(hub: HubEmulator, tmp_path: Path) -> None:
    """target/config.json -> outside/secret: the link itself is replaced (rename), its destination untouched."""
    hub.add_repo(REPO, POOL)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"do not touch")
    target = tmp_path / "m"
    target.mkdir()
    (target / "config.json").symlink_to(secret)
    res = _hub_run(hub, target)
    assert res.returncode == 0, res.stderr[-3000:]
    assert secret.read_bytes() == b"do not touch"
    assert not (target / "config.json").is_symlink()
    assert (target / "config.json").read_bytes() == POOL["config.json"]


# ---- property: whatever the hub lists, the planner answers safely --------------------------------------
_HEX = "0123456789abcdef"
_NASTY = ["../x", "a/../../x", "/abs", ".provisioner/ready.json", ".provisioner", "a//b", "./a", "a/.", "",
          ".", "..", "a\\b", "C:/x", "a\x00b", "a\nb", "\u202egnp.exe", "dir/", "é/ü.txt", "a" * 1100,
          "1_Pooling/config.json", "config.json", "a", "a/b"]
paths = st.one_of(
    st.sampled_from(_NASTY),
    st.lists(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=8),
             min_size=1, max_size=3).map("/".join),
    st.from_regex(r"[a-z0-9_][a-z0-9_.-]{0,8}(/[a-z0-9_][a-z0-9_.-]{0,8}){0,2}", fullmatch=True),
    st.none(), st.integers(), st.lists(st.text(max_size=3), max_size=2),
)
sizes = st.one_of(st.integers(min_value=-(2**8), max_value=2**12), st.integers(min_value=-(2**70), max_value=2**70),
                  st.none(), st.floats(allow_nan=False), st.text(max_size=5), st.booleans())
hex_of = lambda n: st.text(alphabet=_HEX, min_size=n, max_size=n)  # noqa: E731
hashes = lambda n: st.one_of(hex_of(n), st.text(max_size=n + 2), st.none(), st.integers(),  # noqa: E731
                             hex_of(n).map(str.upper))
lfs = st.one_of(st.none(), st.fixed_dictionaries({}, optional={"sha256": hashes(64), "size": sizes,
                                                                "pointerSize": sizes}),
                st.text(max_size=4), st.integers(), st.lists(st.integers(), max_size=2))
# Mostly-valid siblings over a few paths, so that valid listings, duplicates and file/dir clashes all occur.
good_siblings = st.fixed_dictionaries({
    "rfilename": st.sampled_from(["a", "a/b.txt", "config.json", "1_Pooling/config.json", "w/model.safetensors"]),
    "size": st.integers(min_value=0, max_value=2**20), "blobId": hex_of(40)},
    optional={"lfs": st.fixed_dictionaries({"sha256": hex_of(64), "size": st.integers(0, 2**20),
                                           "pointerSize": st.integers(100, 200)})})
siblings = st.one_of(
    good_siblings, good_siblings,
    st.fixed_dictionaries({"rfilename": paths}, optional={"size": sizes, "blobId": hashes(40), "lfs": lfs}),
    st.none(), st.text(max_size=5), st.integers(), st.lists(st.integers(), max_size=2),
)
plausible = st.fixed_dictionaries({"id": st.just(REPO), "sha": hex_of(40),
                                   "siblings": st.one_of(st.lists(good_siblings, min_size=1, max_size=5),
                                                         st.lists(siblings, min_size=1, max_size=5))})
bodies = st.one_of(
    plausible, plausible,
    st.fixed_dictionaries(
        {"id": st.just(REPO)},
        optional={"sha": st.one_of(hex_of(40), hashes(40)),
                  "siblings": st.one_of(st.lists(siblings, max_size=6), st.text(max_size=4), st.integers(),
                                        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)),
                  "lastModified": st.one_of(st.just("2024-01-01T00:00:00.000Z"), st.text(max_size=6)),
                  "cardData": st.one_of(st.none(), st.text(max_size=4), st.dictionaries(st.text(max_size=3),
                                                                                        st.integers(), max_size=2)),
                  "transformersInfo": st.one_of(st.none(), st.text(max_size=3), st.integers()),
                  "private": st.one_of(st.booleans(), st.text(max_size=3))}),
    st.none(), st.integers(), st.text(max_size=8), st.lists(st.integers(), max_size=3),
    st.binary(max_size=20),
)


def _check_plan(plan: Plan, target: Path) -> None:
    assert re.fullmatch(r"[0-9a-f]{40}", plan.commit)
    root = target.resolve()
    seen: set[str] = set()
    for f in plan.files:
        assert isinstance(f.path, str) and f.path not in seen, f"duplicate path {f.path!r}"
        seen.add(f.path)
        assert not f.path.startswith("/") and "\\" not in f.path and not any(ord(c) < 32 for c in f.path)
        assert posixpath.normpath(f.path) == f.path and ".." not in f.path.split("/")
        assert f.path.split("/")[0] != marker.STATE_DIR_NAME
        resolved = (target / f.path).resolve()
        assert resolved != root and root in resolved.parents, f"{f.path!r} resolves outside the target"
        assert isinstance(f.size, int) and not isinstance(f.size, bool) and 0 <= f.size <= MAX_FILE_SIZE
        assert (f.sha256 is not None and re.fullmatch(r"[0-9a-f]{64}", f.sha256)) or \
            (f.blob_sha1 is not None and re.fullmatch(r"[0-9a-f]{40}", f.blob_sha1))
    for p in seen:  # a path that is a file cannot also be a directory of another file
        parts = p.split("/")
        assert not any("/".join(parts[:i]) in seen for i in range(1, len(parts))), f"{p!r} under a file"


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=bodies)
def test_property_planner_answers_any_listing_safely(fake_hub_server: FakeHub, tmp_path: Path, body: Any) -> None:
    fake = fake_hub_server
    with fake.lock:
        fake.info = body if isinstance(body, bytes) else body
    try:
        plan = plan_with(fake, tmp_path)
    except BadRemoteError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    except NotFoundError as exc:  # a listing whose files were all filtered away (or an empty one)
        assert "no files" in str(exc), exc
        return
    except ProvisionerError as exc:  # e.g. RetryBudgetExhausted: a malformed answer treated as transient
        raise AssertionError(f"malformed listing gave {type(exc).__name__} (exit {exc.exit_code}), not exit 9: "
                             f"{exc}") from None
    _check_plan(plan, tmp_path / "m")


# ---- the oracle: a well-formed listing must be planned, exactly --------------------------------------------
# The property above accepts any BadRemoteError, so a planner refusing everything would pass it. These
# listings have the hub's `hf` shape (every sibling with its size and blobId, LFS files with lfs.sha256 and
# lfs.size), unique paths that stay inside the target and no file/folder clash: the plan must list exactly
# these files with exactly these sizes and hashes.
_SEGMENT = st.text(alphabet="abcXYZ019._-", min_size=1, max_size=8).filter(
    lambda p: p not in (".", "..") and p not in DEFAULT_SKIPPED_WEIGHTS)
_PATH = st.lists(_SEGMENT, min_size=1, max_size=3).map("/".join).filter(
    lambda p: p.split("/")[0] != marker.STATE_DIR_NAME)


def _without_clashes(paths: list[str]) -> list[str]:
    """Drop every path that is also a folder of another one (the deepest paths always stay)."""
    folders = {"/".join(p.split("/")[:i]) for p in paths for i in range(1, p.count("/") + 1)}
    return [p for p in paths if p not in folders]


@st.composite
def valid_listings(draw: st.DrawFn) -> tuple[dict[str, Any], list[FileEntry]]:
    paths = _without_clashes(draw(st.lists(_PATH, min_size=1, max_size=8, unique=True)))
    siblings, expected = [], []
    for path in paths:
        size = draw(st.integers(min_value=0, max_value=MAX_FILE_SIZE))
        blob = draw(hex_of(40))
        sib: dict[str, Any] = {"rfilename": path, "size": size, "blobId": blob}
        if draw(st.booleans()):
            sha = draw(hex_of(64))
            sib["lfs"] = {"sha256": sha, "size": size, "pointerSize": draw(st.integers(100, 200))}
            # an LFS file's blobId names its pointer, not its bytes: the plan keeps only the sha256
            expected.append(FileEntry(path, size, sha256=sha))
        else:
            expected.append(FileEntry(path, size, blob_sha1=blob))
        siblings.append(sib)
    body = {"id": REPO, "sha": draw(hex_of(40)), "siblings": draw(st.permutations(siblings))}
    return body, sorted(expected, key=lambda e: e.path)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(listing=valid_listings())
def test_property_planner_plans_every_well_formed_listing_exactly(fake_hub_server: FakeHub, tmp_path: Path,
                                                                   listing: tuple[dict[str, Any], list[FileEntry]]
                                                                   ) -> None:
    body, expected = listing
    with fake_hub_server.lock:
        fake_hub_server.info = body
    plan = plan_with(fake_hub_server, tmp_path)  # any error here is a planner refusing a valid listing
    assert plan.commit == body["sha"]
    assert list(plan.files) == expected
    _check_plan(plan, tmp_path / "m")


# One defect planted in an otherwise well-formed listing: each must be refused as bad remote data (exit 9).
_DEFECTS: dict[str, Any] = {
    "traversal": lambda sibs, body: sibs[0].update(rfilename="../" + sibs[0]["rfilename"]),
    "absolute": lambda sibs, body: sibs[0].update(rfilename="/" + sibs[0]["rfilename"]),
    "reserved-folder": lambda sibs, body: sibs[0].update(rfilename=f"{marker.STATE_DIR_NAME}/marker.json"),
    "duplicate": lambda sibs, body: sibs.append(dict(sibs[0])),
    "file-and-folder": lambda sibs, body: sibs.append({**sibs[0], "rfilename": sibs[0]["rfilename"] + "/x"}),
    "bad-lfs-sha256": lambda sibs, body: sibs[0].update(lfs={"sha256": "Z" * 64, "size": sibs[0]["size"],
                                                             "pointerSize": 130}),
    "absurd-size": lambda sibs, body: sibs[0].update(size=MAX_FILE_SIZE + 1),
    "bad-commit": lambda sibs, body: body.update(sha="main"),
}


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(listing=valid_listings(), defect=st.sampled_from(sorted(_DEFECTS)))
def test_property_one_defect_makes_a_listing_bad_remote(fake_hub_server: FakeHub, tmp_path: Path,
                                                        listing: tuple[dict[str, Any], list[FileEntry]],
                                                        defect: str) -> None:
    body = json.loads(json.dumps(listing[0]))
    _DEFECTS[defect](body["siblings"], body)
    with fake_hub_server.lock:
        fake_hub_server.info = body
    with pytest.raises(BadRemoteError) as caught:
        plan_with(fake_hub_server, tmp_path)
    assert caught.value.exit_code == ExitCode.BAD_REMOTE == 9
    assert str(caught.value) and "\n" not in str(caught.value)
def test_name_only_listing_is_completed_by_head_not_refused(fake_hub: FakeHub, tmp_path: Path) -> None:
    """Missing metadata is not malformed: a name-only sibling gets its size and digest from the HEAD."""
    fake_hub.files = {"a.txt": b"hello"}
    fake_hub.info = info_for([{"rfilename": "a.txt"}])
    plan = plan_with(fake_hub, tmp_path)
    assert [(f.path, f.size, f.blob_sha1, f.evidence) for f in plan.files] == [
        ("a.txt", 5, blob_sha1(b"hello"), "git-sha1")]


def test_head_that_contradicts_the_listed_size_is_bad_remote(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.files = {"a.txt": b"hello"}
    fake_hub.info = info_for([{"rfilename": "a.txt", "size": 99}])  # no digest: the HEAD is asked, and lies
    with pytest.raises(BadRemoteError, match="two sizes"):
        plan_with(fake_hub, tmp_path)


def test_html_answer_on_the_api_exits_9_with_one_line(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.info = "<html><body>mirror front page</body></html>"  # type: ignore[assignment]
    with pytest.raises(BadRemoteError) as info:
        plan_with(fake_hub, tmp_path)
    assert "\n" not in str(info.value)


def test_no_digest_anywhere_is_size_only_or_refused_with_require_digests(fake_hub: FakeHub, tmp_path: Path) -> None:
    import dataclasses

    from provisioner.config import Config

    fake_hub.files = {"a.txt": b"hello"}
    fake_hub.omit = {"ETag"}
    fake_hub.info = info_for([{"rfilename": "a.txt"}])
    assert [f.evidence for f in plan_with(fake_hub, tmp_path).files] == ["size-only"]
    cfg = dataclasses.replace(Config(repo_id=REPO, endpoint=fake_hub.url, target=str(tmp_path / "m"), include=(),
                                     exclude=(), retry_budget=0.5, backoff_max=0.05, api_timeout=5,
                                     connect_timeout=2, listen="", kube="off"), require_digests=True)
    with pytest.raises(BadRemoteError, match="--require-digests") as info:
        build_plan(RunContext(config=cfg, tracker=Tracker(repo_id=REPO, revision=cfg.revision),
                              budget=RetryBudget(cfg.retry_budget), stop=threading.Event()))
    assert "\n" not in str(info.value)


# ---- the bad-input trio through the real CLI: one line, exit 9, nothing marked ready ---------------
def _assert_refused_before_any_file(fake: FakeHub, target: Path, res: Any, *, says: str) -> None:
    assert res.returncode == ExitCode.BAD_REMOTE, res.stderr[-3000:]
    assert_one_line_error(res.stderr, ExitCode.BAD_REMOTE)
    assert says in res.stderr, res.stderr[-3000:]
    assert marker.read_marker(target) is None
    check = run_cli([sys.executable, "-m", "provisioner", "check", str(target)], timeout=60)
    assert check.returncode == ExitCode.NOT_READY, check.stderr
    assert not [r for r in fake.requests if r[0] == "GET" and "/resolve/" in r[1]], "a file was fetched"


def test_run_with_sizes_contradicting_between_sources_exits_9(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.files = {"a.txt": b"hello"}
    fake_hub.info = info_for([{"rfilename": "a.txt", "size": 5}])  # no digest: the tree is asked next
    fake_hub.tree = [{"type": "file", "path": "a.txt", "size": 6, "oid": blob_sha1(b"hello")}]
    target = tmp_path / "m"
    _assert_refused_before_any_file(fake_hub, target, run_fake(fake_hub, target), says="5 and 6 (tree)")


def test_run_with_a_head_that_lies_about_the_size_exits_9(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.files = {"a.txt": b"hello"}
    fake_hub.info = info_for([{"rfilename": "a.txt", "size": 99}])  # the HEAD says 5
    target = tmp_path / "m"
    _assert_refused_before_any_file(fake_hub, target, run_fake(fake_hub, target), says="99 and 5 (HEAD)")


def test_run_against_a_mirror_that_answers_html_exits_9(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.info = b"<!doctype html><html><body><h1>Welcome to the mirror</h1></body></html>"
    fake_hub.info_type = "text/html; charset=utf-8"
    target = tmp_path / "m"
    res = run_fake(fake_hub, target)
    _assert_refused_before_any_file(fake_hub, target, res, says="not JSON")
    assert len([r for r in fake_hub.requests if r[1].startswith("/api/")]) == 1, "a malformed answer was retried"
