"""A strict, in-process fake of the few kube-apiserver endpoints that the provisioner/kube/ package uses.

Real HTTP on 127.0.0.1 so the real `kubernetes` client talks to it through a kubeconfig.

Strictness (what a real apiserver would reject, this rejects too):
  * bearer token must match (401 otherwise);
  * request bodies are validated against the official strict JSON schemas shipped by
    `kubernetes-validate` (unknown fields, wrong types -> 422 Invalid), plus RFC 3339 checks of
    Time / MicroTime strings (MicroTime needs exactly 6 fractional digits, as Go's parser does);
  * PATCH needs a patch content type; a JSON patch body must be a list, a merge patch a dict;
  * Lease PUT enforces resourceVersion optimistic concurrency (stale -> 409 Conflict), name and
    namespace must match the URL, PUT of a missing Lease is 404 (no create-on-update);
  * POST of an existing name -> 409 AlreadyExists; Event involvedObject.namespace must match;
  * every error body is a meta/v1 Status shaped like the real one.

Knobs for tests: `deny(verb, resource)` answers 403 like RBAC does; `stop()` / `start()` make it
unreachable and back on the same port; `delay` slows every answer; `fail_next(n, code)`.
Every request is recorded in `requests` (method, path, query, content type, raw body, json).
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache, lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema
import referencing
import referencing.jsonschema

SCHEMA_DIR = "v1.37.0-local-strict"
TOKEN = "fake-sa-token-0123456789"

_RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$")
_RFC3339_MICRO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

_PATCH_TYPES = (
    "application/strategic-merge-patch+json",
    "application/merge-patch+json",
    "application/json-patch+json",
)


@lru_cache(maxsize=1)
def _registry() -> referencing.Registry[Any]:
    base = resources.files("kubernetes_validate").joinpath("kubernetes-json-schema", SCHEMA_DIR)
    defs = json.loads(base.joinpath("_definitions.json").read_text(encoding="utf-8"))
    return referencing.Resource.from_contents(defs) @ referencing.Registry()


@cache
def _validator(schema_file: str) -> jsonschema.protocols.Validator:
    base = resources.files("kubernetes_validate").joinpath("kubernetes-json-schema", SCHEMA_DIR)
    schema = json.loads(base.joinpath(schema_file).read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema, registry=_registry())


def schema_errors(obj: Any, schema_file: str) -> list[str]:
    """Messages of every schema violation of `obj` (empty: valid)."""
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
            for e in _validator(schema_file).iter_errors(obj)]


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                "message": self.message, "reason": self.reason, "code": self.code}
        if self.details is not None:
            body["details"] = self.details
        return body


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str
    body: bytes
    status: int = 0

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


# (group, resource) per URL kind, for RBAC-like messages
_GROUPS = {"pods": "", "pods/status": "", "events": "", "leases": "coordination.k8s.io"}
_KIND_SCHEMA = {"events": "event-v1.json", "leases": "lease-coordination-v1.json"}


class FakeApiServer:
    def __init__(self, *, token: str = TOKEN) -> None:
        self.token = token
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.requests: list[Recorded] = []
        # (namespace, name) -> object
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: dict[tuple[str, str], dict[str, Any]] = {}
        self.leases: dict[tuple[str, str], dict[str, Any]] = {}
        self.denied: set[tuple[str, str]] = set()  # (verb or "*", resource)
        self.delay = 0.0
        self._fail: list[int] = []
        self._rv = 1000
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self) -> FakeApiServer:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet test output
                pass

            def _handle(self) -> None:
                fake._dispatch(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-apiserver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listening socket: clients get connection refused until `start()` (same port)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_kubeconfig(self, path: Path, *, namespace: str = "default") -> Path:
        cfg = {
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": self.token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
        }
        path.write_text(json.dumps(cfg), encoding="utf-8")  # JSON is YAML
        return path

    # ---- test knobs ---------------------------------------------------------------------------
    def deny(self, verb: str, resource: str) -> None:
        """Answer 403 for `verb` ("*" for all) on `resource` (pods, pods/status, events, leases)."""
        with self.lock:
            self.denied.add((verb, resource))

    def fail_next(self, n: int, code: int = 500) -> None:
        with self.lock:
            self._fail.extend([code] * n)

    def add_pod(self, namespace: str, name: str, *, uid: str | None = None) -> dict[str, Any]:
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "uid": uid or str(uuid.uuid4()),
                         "resourceVersion": self._next_rv(), "creationTimestamp": now_rfc3339()},
            "spec": {"containers": [{"name": "app", "image": "example/app:1"}]},
            "status": {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now_rfc3339()}]},
        }
        with self.lock:
            self.pods[(namespace, name)] = pod
        return pod

    def lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            obj = self.leases.get((namespace, name))
            return copy.deepcopy(obj) if obj else None

    def requests_for(self, method: str, fragment: str) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if r.method == method and fragment in r.path]

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> bool:
        """Block until predicate() is true (re-checked on every request) or timeout."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(min(left, 0.1))
        return True

    # ---- HTTP plumbing ------------------------------------------------------------------------
    def _next_rv(self) -> str:
        with self.lock:
            self._rv += 1
            return str(self._rv)

    def _dispatch(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        rec = Recorded(h.command, parts.path, parse_qs(parts.query),
                       (h.headers.get("Content-Type") or "").split(";")[0].strip(), body)
        with self.lock:
            self.requests.append(rec)
        if self.delay:
            time.sleep(self.delay)
        try:
            if h.headers.get("Authorization") != f"Bearer {self.token}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            with self.lock:
                if self._fail:
                    code = self._fail.pop(0)
                    raise ApiError(code, "InternalError", "Internal error occurred: injected failure")
                status, obj = self._route(rec)
        except ApiError as exc:
            status, obj = exc.code, exc.status()
        rec.status = status
        data = json.dumps(obj).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
        with self.changed:
            self.changed.notify_all()

    def _route(self, rec: Recorded) -> tuple[int, Any]:
        segs = [s for s in rec.path.split("/") if s]
        if segs[:2] == ["api", "v1"] and len(segs) >= 4 and segs[2] == "namespaces":
            ns, rest = segs[3], segs[4:]
        elif segs[:3] == ["apis", "coordination.k8s.io", "v1"] and len(segs) >= 5 and segs[3] == "namespaces":
            ns, rest = segs[4], segs[5:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if not rest:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        resource, name = rest[0], (rest[1] if len(rest) > 1 else None)
        sub = rest[2] if len(rest) > 2 else None
        if len(rest) > 3 or resource not in ("pods", "events", "leases") or (sub and sub != "status"):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if (segs[0] == "apis") != (resource == "leases"):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        full = f"{resource}/{sub}" if sub else resource
        verb = {"GET": "get" if name else "list", "POST": "create", "PUT": "update",
                "PATCH": "patch", "DELETE": "delete"}[rec.method]
        self._authorize(verb, full, ns, name)
        if rec.method in ("POST", "PUT", "PATCH"):
            body = self._parse_body(rec)
        else:
            body = None

        if full == "pods" and verb == "get":
            return 200, copy.deepcopy(self._get(self.pods, ns, name, "pods", ""))
        if full == "pods/status" and verb == "patch":
            return self._patch_pod_status(rec, ns, name, body)
        if full == "events":
            if verb == "create":
                return self._create(self.events, "events", ns, body)
            if verb == "patch" and name:
                return self._patch_event(rec, ns, name, body)
            if verb == "get" and name:
                return 200, copy.deepcopy(self._get(self.events, ns, name, "events", ""))
        if full == "leases":
            if verb == "get":
                return 200, copy.deepcopy(self._get(self.leases, ns, name, "leases", "coordination.k8s.io"))
            if verb == "list":
                items = [copy.deepcopy(v) for (n, _), v in sorted(self.leases.items()) if n == ns]
                return 200, {"apiVersion": "coordination.k8s.io/v1", "kind": "LeaseList",
                             "metadata": {"resourceVersion": str(self._rv)}, "items": items}
            if verb == "create":
                return self._create(self.leases, "leases", ns, body)
            if verb == "update" and name:
                return self._update_lease(ns, name, body)
        raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method on the requested resource ({full})")

    def _authorize(self, verb: str, resource: str, ns: str, name: str | None) -> None:
        if (verb, resource) in self.denied or ("*", resource) in self.denied:
            group = _GROUPS[resource]
            base, _, sub = resource.partition("/")
            what = f'{base}.{group} "{name}"' if group and name else (f'{base} "{name}"' if name else base)
            res = f'resource "{base}"' + (f' in API group "{group}"' if group else ' in API group ""')
            if sub:
                res = f'resource "{base}/{sub}" in API group "{group}"'
            raise ApiError(403, "Forbidden",
                           f'{what} is forbidden: User "system:serviceaccount:{ns}:model-provisioner" '
                           f'cannot {verb} {res} in the namespace "{ns}"',
                           details={"name": name or "", "group": group, "kind": base})

    @staticmethod
    def _parse_body(rec: Recorded) -> Any:
        if rec.method == "PATCH":
            if rec.content_type not in _PATCH_TYPES:
                raise ApiError(415, "UnsupportedMediaType",
                               f'the body of the request was in an unknown format - accepted media types include: '
                               f'{", ".join(_PATCH_TYPES)}, application/apply-patch+yaml')
        elif rec.content_type not in ("application/json", ""):
            raise ApiError(415, "UnsupportedMediaType", f"unsupported media type {rec.content_type!r}")
        try:
            body = json.loads(rec.body)
        except ValueError as exc:  # malformed JSON is a 400 on the real server too
            raise ApiError(400, "BadRequest", f"error decoding request body: {exc}") from None
        if rec.method == "PATCH" and rec.content_type == "application/json-patch+json":
            if not isinstance(body, list):
                raise ApiError(400, "BadRequest", "json: cannot unmarshal object into Go value of type jsonpatch.Patch")
        elif not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the request body must be a JSON object")
        return body

    @staticmethod
    def _get(store: dict[tuple[str, str], dict[str, Any]], ns: str, name: str | None,
             resource: str, group: str) -> dict[str, Any]:
        obj = store.get((ns, name or ""))
        if obj is None:
            what = f"{resource}.{group}" if group else resource
            raise ApiError(404, "NotFound", f'{what} "{name}" not found',
                           details={"name": name, "group": group, "kind": resource})
        return obj

    def _validate(self, obj: dict[str, Any], resource: str, kind: str) -> None:
        errors = schema_errors(obj, _KIND_SCHEMA.get(resource, f"{resource[:-1]}-v1.json"))
        errors += _time_errors(obj)
        name = obj.get("metadata", {}).get("name", "")
        if not name or len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
            errors.append(f"metadata.name: Invalid value: {name!r}: a lowercase RFC 1123 subdomain is required")
        if resource == "leases":
            d = (obj.get("spec") or {}).get("leaseDurationSeconds")
            if d is not None and d <= 0:
                errors.append("spec.leaseDurationSeconds: Invalid value: must be greater than 0")
        if errors:
            raise ApiError(422, "Invalid", f'{kind} "{name}" is invalid: ' + "; ".join(errors),
                           details={"name": name, "kind": resource,
                                    "causes": [{"reason": "FieldValueInvalid", "message": e} for e in errors]})

    def _create(self, store: dict[tuple[str, str], dict[str, Any]], resource: str, ns: str,
                body: dict[str, Any]) -> tuple[int, Any]:
        kind = "Lease" if resource == "leases" else "Event"
        api_version = "coordination.k8s.io/v1" if resource == "leases" else "v1"
        if body.get("kind") != kind or body.get("apiVersion") != api_version:
            raise ApiError(400, "BadRequest", f"expected {api_version} {kind}, got {body.get('apiVersion')} {body.get('kind')}")
        meta = body.setdefault("metadata", {})
        if meta.get("namespace", ns) != ns:
            raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request")
        if resource == "events":
            inv = body.get("involvedObject") or {}
            if inv.get("namespace", ns) != ns:
                raise ApiError(422, "Invalid", "involvedObject.namespace: Invalid value: does not match event.namespace")
        for server_field in ("resourceVersion", "uid"):
            if meta.get(server_field):
                raise ApiError(422, "Invalid", f"metadata.{server_field}: Invalid value: must not be set on create")
        self._validate(body, resource, kind)
        key = (ns, meta["name"])
        if key in store:
            group = "coordination.k8s.io" if resource == "leases" else ""
            what = f"{resource}.{group}" if group else resource
            raise ApiError(409, "AlreadyExists", f'{what} "{meta["name"]}" already exists',
                           details={"name": meta["name"], "group": group, "kind": resource})
        obj = copy.deepcopy(body)
        obj["metadata"].update(namespace=ns, uid=str(uuid.uuid4()), resourceVersion=self._next_rv(),
                               creationTimestamp=now_rfc3339())
        store[key] = obj
        return 201, copy.deepcopy(obj)

    def _update_lease(self, ns: str, name: str, body: dict[str, Any]) -> tuple[int, Any]:
        meta = body.get("metadata") or {}
        if body.get("kind") != "Lease" or body.get("apiVersion") != "coordination.k8s.io/v1":
            raise ApiError(400, "BadRequest", "expected coordination.k8s.io/v1 Lease")
        if meta.get("name") != name:
            raise ApiError(400, "BadRequest", "the name of the object does not match the name on the URL")
        if meta.get("namespace", ns) != ns:
            raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request")
        current = self._get(self.leases, ns, name, "leases", "coordination.k8s.io")
        self._validate(body, "leases", "Lease")
        rv = meta.get("resourceVersion")
        if rv and rv != current["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict",
                           f'Operation cannot be fulfilled on leases.coordination.k8s.io "{name}": the object has been '
                           f"modified; please apply your changes to the latest version and try again",
                           details={"name": name, "group": "coordination.k8s.io", "kind": "leases"})
        obj = copy.deepcopy(body)
        for keep in ("uid", "creationTimestamp"):
            obj["metadata"][keep] = current["metadata"][keep]
        obj["metadata"].update(namespace=ns, resourceVersion=self._next_rv())
        self.leases[(ns, name)] = obj
        return 200, copy.deepcopy(obj)

    def _patch_event(self, rec: Recorded, ns: str, name: str, body: Any) -> tuple[int, Any]:
        current = self._get(self.events, ns, name, "events", "")
        if rec.content_type == "application/json-patch+json":
            raise ApiError(415, "UnsupportedMediaType", "this fake only implements merge patches")
        merged = _merge(copy.deepcopy(current), body, strategic=False)
        meta = merged["metadata"]
        if meta.get("name") != name or meta.get("uid") != current["metadata"]["uid"]:
            raise ApiError(422, "Invalid", "metadata.name/uid: field is immutable")
        self._validate(merged, "events", "Event")
        meta["resourceVersion"] = self._next_rv()
        self.events[(ns, name)] = merged
        return 200, copy.deepcopy(merged)

    def _patch_pod_status(self, rec: Recorded, ns: str, name: str, body: Any) -> tuple[int, Any]:
        current = self._get(self.pods, ns, name, "pods", "")
        if rec.content_type == "application/json-patch+json":
            raise ApiError(415, "UnsupportedMediaType", "this fake only implements merge patches")
        extra = set(body) - {"status", "metadata"}
        if extra:
            raise ApiError(422, "Invalid", f"pods/status: only status may be patched, got {sorted(extra)}")
        strategic = rec.content_type == "application/strategic-merge-patch+json"
        merged = _merge(copy.deepcopy(current), body, strategic=strategic)
        if merged["spec"] != current["spec"] or merged["metadata"].get("name") != name:
            raise ApiError(422, "Invalid", "pods/status may not change spec or name")
        self._validate(merged, "pods", "Pod")
        conds = merged["status"].get("conditions") or []
        types = [c.get("type") for c in conds]
        if len(types) != len(set(types)):
            raise ApiError(422, "Invalid", f"status.conditions: Duplicate value: {types}")
        for c in conds:
            if c.get("status") not in ("True", "False", "Unknown"):
                raise ApiError(422, "Invalid", f"status.conditions.status: Unsupported value: {c.get('status')!r}")
        merged["metadata"]["resourceVersion"] = self._next_rv()
        self.pods[(ns, name)] = merged
        return 200, copy.deepcopy(merged)


def _merge(target: Any, patch: Any, *, strategic: bool, path: str = "") -> Any:
    """RFC 7386 merge patch; with `strategic`, lists at `status.conditions` merge by `type` like the
    real pods/status strategic-merge does (other lists are replaced)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if not isinstance(target, dict):
        target = {}
    for key, value in patch.items():
        sub = f"{path}.{key}" if path else key
        if value is None:
            target.pop(key, None)
        elif strategic and sub == "status.conditions" and isinstance(value, list):
            current = {c.get("type"): c for c in (target.get(key) or [])}
            order = [c.get("type") for c in (target.get(key) or [])]
            for c in value:
                if not isinstance(c, dict) or "type" not in c:
                    raise ApiError(422, "Invalid", "status.conditions: each item needs the merge key `type`")
                if c["type"] in current:
                    current[c["type"]] = _merge(current[c["type"]], c, strategic=False)
                else:
                    current[c["type"]] = copy.deepcopy(c)
                    order.append(c["type"])
            target[key] = [current[t] for t in order]
        else:
            target[key] = _merge(target.get(key), value, strategic=strategic, path=sub)
    return target


_TIME_FIELDS = ("firstTimestamp", "lastTimestamp", "lastTransitionTime", "lastProbeTime", "creationTimestamp")
_MICRO_FIELDS = ("acquireTime", "renewTime", "eventTime")


def _time_errors(obj: Any, path: str = "") -> list[str]:
    """Go's time parsing is stricter than the schema's `format: date-time` (unchecked by jsonschema)."""
    out: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            p = f"{path}.{k}" if path else k
            if isinstance(v, str) and k in _MICRO_FIELDS and not _RFC3339_MICRO.match(v):
                out.append(f"{p}: Invalid value: {v!r}: MicroTime needs RFC 3339 with 6 fractional digits")
            elif isinstance(v, str) and k in _TIME_FIELDS and not _RFC3339.match(v):
                out.append(f"{p}: Invalid value: {v!r}: not RFC 3339")
            else:
                out.extend(_time_errors(v, p))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.extend(_time_errors(v, f"{path}[{i}]"))
    return out
