"""Settings: one table, parsed once into one frozen `Config`.

Every setting has a flag and a `PROVISIONER_*` env var of the same name; a flag beats the env
var, which beats the default. The README table is generated from `SETTINGS` (and a test keeps
them in sync). Nothing here reads the environment at import time.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError

DEFAULT_REPO_ID = "sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2"
DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_EXCLUDE = "onnx/*,openvino/*,coreml/*,*.h5,*.msgpack,*.ot,*.tflite"
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


def _positive_float(name: str) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}: expected a number of seconds, got {raw!r}", setting=name) from None
        if not value > 0 or value != value or value == float("inf"):
            raise ConfigError(f"{name}: must be a finite number > 0, got {raw!r}", setting=name)
        return value

    return parse


def _non_negative_float(name: str) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}: expected a number, got {raw!r}", setting=name) from None
        if not value >= 0 or value == float("inf"):
            raise ConfigError(f"{name}: must be a finite number >= 0, got {raw!r}", setting=name)
        return value

    return parse


def _positive_int(name: str, *, minimum: int = 1, maximum: int = 1 << 62) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name}: expected a whole number, got {raw!r}", setting=name) from None
        if not minimum <= value <= maximum:
            raise ConfigError(f"{name}: must be between {minimum} and {maximum}, got {value}", setting=name)
        return value

    return parse


_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
               "g": 1 << 30, "gib": 1 << 30, "kb": 1000, "mb": 1000**2, "gb": 1000**3}


def _size(name: str) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", raw)
        if not m or m.group(2).lower() not in _SIZE_UNITS:
            raise ConfigError(f"{name}: expected a size such as 64MiB or 1048576, got {raw!r}", setting=name)
        return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]

    return parse


def _choice(name: str, choices: Sequence[str]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ConfigError(f"{name}: must be one of {', '.join(choices)}; got {raw!r}", setting=name)
        return value

    return parse


def _bool(name: str) -> Callable[[str], bool]:
    def parse(raw: str) -> bool:
        value = raw.strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{name}: expected true or false, got {raw!r}", setting=name)

    return parse


def _existing_file(name: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip()
        if value and not Path(value).expanduser().is_file():
            raise ConfigError(f"{name}: no such file: {value!r}", setting=name)
        return value

    return parse


def _patterns(raw: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in raw.split(",") if p.strip())


def _repo_id(raw: str) -> str:
    value = raw.strip()
    if not _REPO_ID_RE.match(value) or ".." in value:
        raise ConfigError(f"repo-id: {raw!r} is not a Hugging Face repo id such as 'org/name'", setting="repo-id")
    return value


def _revision(raw: str) -> str:
    value = raw.strip()
    if not value or any(c in value for c in "\0\n\r ") or value.startswith("/") or ".." in value.split("/"):
        raise ConfigError(f"revision: {raw!r} is not a valid branch, tag or commit", setting="revision")
    return value


def _expect_commit(raw: str) -> str:
    value = raw.strip().lower()
    if value and not _COMMIT_RE.match(value):
        raise ConfigError(f"expect-commit: expected a 40-hex commit sha, got {raw!r}", setting="expect-commit")
    return value


def _listen(raw: str, *, name: str = "listen") -> str:
    value = raw.strip()
    if value in ("", "off", "none"):
        return ""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{name}: expected HOST:PORT (or 'off'), got {raw!r}", setting=name)
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise ConfigError(f"{name}: put an IPv6 address in brackets, e.g. [::]:9733; got {raw!r}", setting=name)
    return value


def _url(name: str, *, allow_empty: bool) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().rstrip("/")
        if not value and allow_empty:
            return ""
        if not re.match(r"^https?://[^/\s]+", value):
            raise ConfigError(f"{name}: expected an http(s) URL, got {raw!r}", setting=name)
        return value

    return parse


def _mirrors(raw: str) -> tuple[str, ...]:
    """Comma-separated http(s) base URLs, order kept, duplicates dropped."""
    parse = _url("mirrors", allow_empty=False)
    return tuple(dict.fromkeys(parse(u) for u in raw.split(",") if u.strip()))


@dataclass(frozen=True)
class Setting:
    """One row of the settings table: the flag is `--name`, the env var `PROVISIONER_<NAME>`."""

    name: str
    attr: str
    parse: Callable[[str], Any]
    default: str
    help: str
    choices: tuple[str, ...] = ()
    extra_env: tuple[str, ...] = ()  # also read, after the PROVISIONER_ one (e.g. HF_ENDPOINT)
    is_flag: bool = False  # a boolean switch: `--name` sets it true
    commands: tuple[str, ...] = ("run",)

    @property
    def flag(self) -> str:
        return "--" + self.name

    @property
    def env(self) -> str:
        return "PROVISIONER_" + self.name.upper().replace("-", "_")


SETTINGS: tuple[Setting, ...] = (
    Setting("repo-id", "repo_id", _repo_id, DEFAULT_REPO_ID, "Hugging Face model repo to provision."),
    Setting("revision", "revision", _revision, "main",
            "Branch, tag or 40-hex commit. A pinned commit lets a warm restart skip the network entirely."),
    Setting("expect-commit", "expect_commit", _expect_commit, "",
            "Pin by content: the 40-hex commit a branch or tag `--revision` must resolve to. When the hub resolves "
            "it to another commit (the branch moved), the run fails with exit code 13 before fetching any file, "
            "and a verified copy of another commit is not served. Empty: off."),
    Setting("target", "target", lambda s: str(Path(s).expanduser()), "/models",
            "Directory the model's files land in (at their repo paths). State lives in `<target>/.provisioner/`.",
            commands=("run", "demo")),
    Setting("layout", "layout", _choice("layout", ("flat", "versioned")), "flat",
            "`flat`: files at `<target>/<repo path>`, replaced in place on a new revision (emptyDir). `versioned`: "
            "one folder per commit and an atomic link `<target>/revisions/<revision>` the app reads, switched only "
            "after the new commit is verified (shared or persistent volumes; see docs/design.md).",
            choices=("flat", "versioned"), commands=("run", "demo")),
    Setting("keep-revisions", "keep_revisions", _positive_int("keep-revisions", maximum=100), "2",
            "versioned layout: revision links (and their commit folders) kept after a switch, newest first; "
            "older ones are pruned. A rolling update has two live revisions.", commands=("run", "demo")),
    Setting("include", "include", _patterns, "", "Comma-separated glob patterns of repo files to fetch (empty: all)."),
    Setting("exclude", "exclude", _patterns, DEFAULT_EXCLUDE,
            "Comma-separated glob patterns of repo files to skip. The default skips weight formats "
            "sentence-transformers does not load; set it to empty to fetch everything."),
    Setting("endpoint", "endpoint", _url("endpoint", allow_empty=False), DEFAULT_ENDPOINT,
            "Hub or mirror URL.", extra_env=("HF_ENDPOINT",)),
    Setting("offline", "offline", _bool("offline"), "false",
            "Never open a connection to the hub: a volume whose verified copy matches the repo and revision "
            "is ready at once (a branch is not re-checked); anything else fails at once with exit code 11.",
            is_flag=True, extra_env=("HF_HUB_OFFLINE",)),
    Setting("mirrors", "mirrors", _mirrors, "",
            "Comma-separated byte sources tried in order for each file before the endpoint, in the hub layout "
            "`{mirror}/{repo}/resolve/{commit}/{path}` (another provisioner's `serve`, a node cache, any HF mirror). "
            "The plan and every digest still come from `--endpoint`; a mirror that is down, stalls, lacks the file "
            "or serves bytes failing the hash is skipped for that file. The token is never sent to a mirror."),
    Setting("serve-listen", "serve_listen", lambda s: _listen(s, name="serve-listen"), "",
            "sidecar mode: once ready, also serve the model read-only over the hub protocol on HOST:PORT (what "
            "`model-provisioner serve` does), so other provisioners can use this one in `--mirrors`. Empty: off."),
    Setting("token-file", "token_file", lambda s: s.strip(), "",
            "File holding the HF token (e.g. a mounted Secret). Otherwise `HF_TOKEN` is used. "
            "There is deliberately no --token flag: process arguments are visible to every user on the node. "
            "Then `HF_TOKEN_PATH` (huggingface_hub's token file), if that file exists."),
    Setting("ca-bundle", "ca_bundle", _existing_file("ca-bundle"), "",
            "PEM file of CA certificates to trust for the hub, the CDN and a TLS proxy (enterprise TLS "
            "interception). Empty: the system/certifi store.", extra_env=("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")),
    Setting("engine", "engine", _choice("engine", ("native", "hub")), "native",
            "`native`: our resumable ranged engine. `hub`: huggingface_hub's snapshot_download (Xet-capable), "
            "wrapped with the same plan, retries, verification and marker.", choices=("native", "hub")),
    Setting("verify", "verify", _choice("verify", ("none", "checksums", "full", "app")), "full",
            "`checksums`: sha256/git-sha1 of every file. `full`: also the embedding smoke test "
            "for sentence-transformers models. `app`: checksums here; the embedding test runs in the app's own "
            "image (`smoke_child.py DIR --record`, see docs/chart.md) and the marker is not ready until it passed.",
            choices=("none", "checksums", "full", "app"),
            commands=("run", "verify", "demo")),
    Setting("reverify", "reverify", _bool("reverify"), "false",
            "Ignore a valid ready marker and re-hash every file.", is_flag=True),
    Setting("require-digests", "require_digests", _bool("require-digests"), "false",
            "Refuse (exit 9, before downloading) a file the hub gives no sha256 or git blob id for, instead of "
            "checking it by size only.", is_flag=True),
    Setting("reference-embeddings", "reference_embeddings", _existing_file("reference-embeddings"), "",
            "JSON file `{\"sentences\": [...], \"embeddings\": [[...]], \"tolerance\": 1e-3}` the smoke test must reproduce.",
            commands=("run", "verify")),
    Setting("connect-timeout", "connect_timeout", _positive_float("connect-timeout"), "10",
            "Seconds to open a TCP/TLS connection."),
    Setting("header-timeout", "header_timeout", _positive_float("header-timeout"), "20",
            "Seconds to wait for a response's headers (time to first byte) before the request is dropped and "
            "retried; capped by --stall-timeout. A hub that never answers is noticed this fast."),
    Setting("stall-timeout", "stall_timeout", _positive_float("stall-timeout"), "60",
            "Stall watchdog: seconds without a byte of a response body before the connection is dropped and "
            "resumed (the headers have --header-timeout).", extra_env=("HF_HUB_DOWNLOAD_TIMEOUT",)),
    Setting("api-timeout", "api_timeout", _positive_float("api-timeout"), "30",
            "Seconds for each hub API call (revision, file listing); huggingface_hub sets none.",
            extra_env=("HF_HUB_ETAG_TIMEOUT",)),
    Setting("retry-budget", "retry_budget", _positive_float("retry-budget"), "900",
            "Seconds the run may go on failing without progress (backoff included) before it exits with code 7. "
            "Any received byte restarts the clock."),
    Setting("backoff-max", "backoff_max", _positive_float("backoff-max"), "30",
            "Longest pause between retries (exponential from 0.5 s, full jitter). Retry-After is honoured up to the budget."),
    Setting("max-workers", "max_workers", _positive_int("max-workers", maximum=64), "4",
            "Files downloaded at once."),
    Setting("connections-per-file", "connections_per_file", _positive_int("connections-per-file", maximum=32), "4",
            "Parallel byte ranges for one large file (beats per-connection CDN caps)."),
    Setting("split-threshold", "split_threshold", _size("split-threshold"), "64MiB",
            "Files at least this large are fetched in parallel ranges."),
    Setting("max-bytes-per-second", "max_bytes_per_second", _size("max-bytes-per-second"), "0",
            "Bandwidth cap over all connections of the native engine, e.g. `50MiB` (0: unlimited). "
            "`--engine hub` is not capped."),
    Setting("disk-headroom", "disk_headroom", _size("disk-headroom"), "16MiB",
            "Free space to keep on the target filesystem beyond what the download needs."),
    Setting("listen", "listen", _listen, "0.0.0.0:9733",
            "HOST:PORT for /metrics, /healthz, /readyz, /status (`off` to disable).", commands=("run",)),
    Setting("mode", "mode", _choice("mode", ("init", "sidecar")), "init",
            "`init`: exit once ready. `sidecar`: keep serving after ready; exit non-zero only on unrecoverable failure.",
            choices=("init", "sidecar")),
    Setting("linger", "linger", _non_negative_float("linger"), "0",
            "init mode: seconds to keep serving after the outcome so the final state gets scraped."),
    Setting("pushgateway", "pushgateway", _url("pushgateway", allow_empty=True), "",
            "Pushgateway URL to push the final metrics to (init mode)."),
    Setting("log-format", "log_format", _choice("log-format", ("auto", "json", "text")), "auto",
            "`auto`: JSON lines when stderr is not a TTY, text with a progress bar when it is.",
            choices=("auto", "json", "text"), commands=("run", "verify", "demo", "check")),
    Setting("log-level", "log_level", _choice("log-level", ("debug", "info", "warning", "error")), "info",
            "Log level.", choices=("debug", "info", "warning", "error"), commands=("run", "verify", "demo", "check")),
    Setting("progress-interval", "progress_interval", _positive_float("progress-interval"), "10",
            "Seconds between progress heartbeat lines in logs."),
    Setting("kube", "kube", _choice("kube", ("auto", "on", "off")), "auto",
            "Kubernetes API features (Events, Lease, pod condition). `auto`: on when a service account token is mounted.",
            choices=("auto", "on", "off")),
    Setting("events", "events", _choice("events", ("auto", "on", "off")), "auto",
            "Kubernetes Events on the pod. `auto`/`on`: posted whenever the Kubernetes API features are on (`--kube`); "
            "`off`: never (e.g. a Lease-only setup without RBAC for events).",
            choices=("auto", "on", "off")),
    Setting("coordination", "coordination", _choice("coordination", ("auto", "lease", "file", "none")), "auto",
            "How replicas sharing a volume download once: a Lease (kube on), else a file lock on the volume.",
            choices=("auto", "lease", "file", "none")),
    Setting("lease-duration", "lease_duration", _positive_float("lease-duration"), "30",
            "Seconds a Lease holder may go without renewing before another replica takes over."),
    Setting("readiness-condition", "readiness_condition", lambda s: s.strip(), "",
            "Pod condition type to set when ready (e.g. `model-provisioner/ready`), for a readinessGate. Empty: off."),
)

_BY_ATTR = {s.attr: s for s in SETTINGS}


@dataclass(frozen=True)
class Config:
    """All settings of one invocation. Build with `Config.from_sources` (or directly in code/tests)."""

    repo_id: str = DEFAULT_REPO_ID
    revision: str = "main"
    expect_commit: str = ""
    target: str = "/models"
    offline: bool = False
    layout: str = "flat"
    keep_revisions: int = 2
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = tuple(DEFAULT_EXCLUDE.split(","))
    endpoint: str = DEFAULT_ENDPOINT
    mirrors: tuple[str, ...] = ()
    serve_listen: str = ""
    token_file: str = ""
    ca_bundle: str = ""
    engine: str = "native"
    verify: str = "full"
    reverify: bool = False
    require_digests: bool = False
    reference_embeddings: str = ""
    connect_timeout: float = 10.0
    header_timeout: float = 20.0
    stall_timeout: float = 60.0
    api_timeout: float = 30.0
    retry_budget: float = 900.0
    backoff_max: float = 30.0
    max_workers: int = 4
    connections_per_file: int = 4
    split_threshold: int = 64 << 20
    max_bytes_per_second: int = 0
    disk_headroom: int = 16 << 20
    listen: str = "0.0.0.0:9733"
    mode: str = "init"
    linger: float = 0.0
    pushgateway: str = ""
    log_format: str = "auto"
    log_level: str = "info"
    progress_interval: float = 10.0
    kube: str = "auto"
    events: str = "auto"
    coordination: str = "auto"
    lease_duration: float = 30.0
    readiness_condition: str = ""
    # Not a setting: the token itself, read from HF_TOKEN or token-file. Never printed (repr=False).
    token: str | None = field(default=None, repr=False, compare=False)

    @property
    def commit_pinned(self) -> bool:
        return bool(_COMMIT_RE.match(self.revision))

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict safe to log or show in /status (no token)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "token"}
        out["token"] = "<set>" if self.token else None
        return out

    @classmethod
    def from_sources(cls, *, args: Mapping[str, Any] | None = None,
                     environ: Mapping[str, str] | None = None) -> Config:
        """Flags (already-parsed raw strings, None when absent) > PROVISIONER_* env > defaults."""
        args = args or {}
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for s in SETTINGS:
            raw = args.get(s.attr)
            if raw is None:
                for env_name in (s.env, *s.extra_env):
                    if env_name in environ and (env_name == s.env or environ[env_name].strip()):  # empty HF_*: unset
                        raw = environ[env_name]
                        break
            if raw is None:
                raw = s.default
            if isinstance(raw, bool):  # a store_true flag
                values[s.attr] = raw
            else:
                values[s.attr] = s.parse(str(raw))
        values["token"] = read_token(token_file=values["token_file"], environ=environ)
        config = cls(**values)
        config.check_expect_commit()
        return config

    def check_expect_commit(self) -> None:
        """A pinned --revision that contradicts --expect-commit can never succeed: say so at config time."""
        if self.expect_commit and self.commit_pinned and self.revision != self.expect_commit:
            raise ConfigError(f"expect-commit: --revision is the commit {self.revision}, not {self.expect_commit}",
                              setting="expect-commit")


def read_token(*, token_file: str, environ: Mapping[str, str]) -> str | None:
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:  # a missing Secret mount is a config problem, not a crash
            raise ConfigError(f"token-file: cannot read {token_file}: {exc.strerror}", setting="token-file") from None
        return token or None
    token = environ.get("HF_TOKEN", "").strip()
    if token:
        return token
    hf_path = environ.get("HF_TOKEN_PATH", "").strip()  # huggingface_hub's order: HF_TOKEN, then this file
    if hf_path:
        try:
            return Path(hf_path).read_text(encoding="utf-8").strip() or None
        except FileNotFoundError:  # huggingface_hub treats a missing token file as "no token"
            return None
        except OSError as exc:  # unreadable: say so rather than run unauthenticated by surprise
            raise ConfigError(f"HF_TOKEN_PATH: cannot read {hf_path}: {exc.strerror}", setting="token-file") from None
    return None


def add_arguments(parser: argparse.ArgumentParser, *, command: str) -> None:
    """Add the flags of one subcommand. Values stay raw strings (None when absent) for `from_sources`."""
    for s in SETTINGS:
        if command not in s.commands:
            continue
        help_text = f"{s.help} [env {s.env}; default {s.default!r}]"
        if s.is_flag:
            parser.add_argument(s.flag, dest=s.attr, action="store_true", default=None, help=help_text)
        else:
            parser.add_argument(s.flag, dest=s.attr, default=None, metavar=s.attr.upper(), help=help_text)


def settings_table_markdown() -> str:
    """The README's settings table (a test checks the README carries exactly this)."""
    rows = ["| flag | env var | default | meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        extra = "".join(f", `{e}`" for e in s.extra_env)
        default = f"`{s.default}`" if s.default else "(empty)"
        rows.append(f"| `{s.flag}` | `{s.env}`{extra} | {default} | {s.help} |")
    return "\n".join(rows)


def setting(attr: str) -> Setting:
    return _BY_ATTR[attr]
