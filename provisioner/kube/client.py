"""The Kubernetes API client layer: `KubeApi` (JSON requests through the official client's
`ApiClient`), `KubeApiError`, `connect`, the pod's identity, and the time / message helpers every
request body uses.

The `kubernetes` package is imported lazily (inside `connect`), so importing this module is cheap.
Requests go through the real client's `ApiClient` (its kubeconfig / in-cluster auth, TLS and token
refresh) but with bodies we build ourselves: the generated models re-serialize MicroTime without
fractional digits when the microsecond is 0, which a real apiserver rejects. Imports only the
stdlib and `provisioner.config` / `provisioner.redact`; never the other modules of this package.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..config import Config
from ..redact import PATTERNS_ONLY, Redactor, redact

log = logging.getLogger("provisioner.kube")

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
COMPONENT = "model-provisioner"
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 10.0
MESSAGE_LIMIT = 1024


# ---- small helpers ------------------------------------------------------------------------------
def micro_time(ts: float | None = None) -> str:
    """metav1.MicroTime: RFC 3339 with exactly 6 fractional digits (what Go's parser requires)."""
    dt = datetime.fromtimestamp(time.time() if ts is None else ts, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def second_time(ts: float | None = None) -> str:
    """metav1.Time: RFC 3339, second precision."""
    dt = datetime.fromtimestamp(time.time() if ts is None else ts, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:  # a malformed time from the server: treat as unknown
        return None


def clean(message: str, redactor: Redactor = PATTERNS_ONLY) -> str:
    """Every string we send to the API: secrets stripped, bounded length."""
    text = redactor(message)
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 3] + "..."


class KubeApiError(Exception):
    """A failed API call. `status` 0 means the API could not be reached (connect, timeout, TLS)."""

    def __init__(self, status: int, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason

    @property
    def transient(self) -> bool:
        return self.status == 0 or self.status == 429 or self.status >= 500

    def __str__(self) -> str:
        prefix = f"HTTP {self.status}" if self.status else "unreachable"
        return f"{prefix}: {redact(self.args[0])}"


class KubeApi:
    """JSON requests through the official client's ApiClient (auth, TLS, token refresh)."""

    def __init__(self, api_client: Any, *, connect_timeout: float = CONNECT_TIMEOUT,
                 read_timeout: float = READ_TIMEOUT) -> None:
        self.client = api_client
        self.timeout = (connect_timeout, read_timeout)
        self.host = str(getattr(api_client.configuration, "host", ""))

    def request(self, method: str, path: str, body: Any = None, *,
                content_type: str = "application/json") -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        try:
            params = self.client.param_serialize(method=method, resource_path=path, header_params=headers,
                                                 body=body, auth_settings=["BearerToken"])
            resp = self.client.call_api(*params, _request_timeout=self.timeout)
            data = resp.read()
        except Exception as exc:  # noqa: BLE001 - urllib3/ssl/socket errors all mean "API not reachable"
            cause = getattr(exc, "reason", None) or exc  # MaxRetryError wraps the useful part
            raise KubeApiError(0, f"{method} {path}: {type(cause).__name__}: {cause}") from None
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data or "")
        if not 200 <= resp.status <= 299:
            message, reason = text[:300], ""
            try:
                status_obj = json.loads(text)
                message = str(status_obj.get("message") or message)
                reason = str(status_obj.get("reason") or "")
            except (ValueError, AttributeError):  # not a Status body: keep the raw text
                pass
            raise KubeApiError(resp.status, message, reason=reason)
        try:
            out = json.loads(text) if text else {}
        except ValueError:  # a 2xx that is not JSON: a proxy in the way
            raise KubeApiError(resp.status, f"non-JSON answer: {text[:200]}") from None
        return out if isinstance(out, dict) else {}

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing pools at shutdown must never raise
            self.client.close()


# ---- identity and connection ---------------------------------------------------------------------
@dataclass
class PodIdentity:
    name: str
    namespace: str
    uid: str | None = None
    node: str | None = None

    @property
    def path(self) -> str:
        """The Pod's API path (its `/status` subresource is this plus "/status")."""
        return f"/api/v1/namespaces/{self.namespace}/pods/{self.name}"


def in_cluster(environ: Mapping[str, str]) -> bool:
    return bool(environ.get("KUBERNETES_SERVICE_HOST")) and (SA_DIR / "token").is_file()


def wanted(config: Config, environ: Mapping[str, str]) -> bool:
    """kube=on; kube=auto: on in a pod with a service account token, or when KUBECONFIG is set."""
    if config.kube == "off":
        return False
    if config.kube == "on":
        return True
    return in_cluster(environ) or bool(environ.get("KUBECONFIG"))


def connect(environ: Mapping[str, str]) -> tuple[KubeApi, str | None]:
    """Load in-cluster config or the kubeconfig. Returns the API and the kubeconfig's namespace."""
    from kubernetes import client as k8s_client  # lazy: only when the API is wanted
    from kubernetes import config as k8s_config

    cfg = k8s_client.Configuration()
    namespace: str | None = None
    if in_cluster(environ):
        k8s_config.load_incluster_config(client_configuration=cfg)
    else:
        path = environ.get("KUBECONFIG") or None
        k8s_config.load_kube_config(config_file=path, client_configuration=cfg, persist_config=False)
        try:
            _, current = k8s_config.list_kube_config_contexts(config_file=path)
            namespace = (current or {}).get("context", {}).get("namespace") or None
        except Exception:  # noqa: BLE001 - the namespace is optional; the env or "default" will do
            namespace = None
    cfg.retries = 0  # our loops retry; a dead API must fail fast
    return KubeApi(k8s_client.ApiClient(cfg)), namespace


def pod_identity(environ: Mapping[str, str], kubeconfig_namespace: str | None = None) -> PodIdentity:
    name = environ.get("POD_NAME") or environ.get("HOSTNAME") or socket.gethostname()
    namespace = environ.get("POD_NAMESPACE") or ""
    if not namespace:
        with contextlib.suppress(OSError):  # not in a pod: use the kubeconfig's namespace
            namespace = (SA_DIR / "namespace").read_text(encoding="utf-8").strip()
    return PodIdentity(name=name, namespace=namespace or kubeconfig_namespace or "default",
                       uid=environ.get("POD_UID") or None,  # downward API metadata.uid: no `get pods` needed
                       node=environ.get("NODE_NAME") or None)
