"""The provisioner/kube/ package against the strict fake apiserver (real `kubernetes` client, real HTTP)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_apiserver import FakeApiServer, schema_errors

from provisioner import kube
from provisioner.config import Config
from provisioner.errors import Interrupted
from provisioner.manifest import FileEntry, Plan
from provisioner.observe.progress import Phase, Tracker
from provisioner.state.lock import FileLock

NS = "ns1"
POD = "replica-0"
KEY = "org/model@" + "a" * 40


@pytest.fixture
def fake() -> Iterator[FakeApiServer]:
    server = FakeApiServer().start()
    server.add_pod(NS, POD)
    yield server
    server.stop()


@pytest.fixture
def environ(fake: FakeApiServer, tmp_path: Path) -> dict[str, str]:
    kc = fake.write_kubeconfig(tmp_path / "kubeconfig", namespace="from-kubeconfig")
    return {"KUBECONFIG": str(kc), "POD_NAME": POD, "POD_NAMESPACE": NS}


def _tracker() -> Tracker:
    return Tracker(repo_id="org/model", revision="main")


def _config(**kw: Any) -> Config:
    return Config(repo_id="org/model", kube=kw.pop("kube", "on"), **kw)


def _coordinator(environ: dict[str, str], state_dir: Path, name: str, *, duration: float = 30.0,
                 poll: float = 0.05) -> kube.LeaseCoordinator:
    api, _ = kube.connect(environ)
    identity = f"{name}/{name[-1]}"
    return kube.LeaseCoordinator(api, namespace=NS, identity=identity, state_dir=state_dir, duration=duration,
                                 fallback=FileLock(state_dir, identity=identity), poll_seconds=poll)


def _deadline_stop(seconds: float = 15.0) -> threading.Event:
    """A stop event that fires after `seconds`: a broken coordinator fails the test instead of hanging it."""
    stop = threading.Event()
    timer = threading.Timer(seconds, stop.set)
    timer.daemon = True
    timer.start()
    return stop


def _wait(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def _plan() -> Plan:
    entry = FileEntry.from_json({"path": "model.safetensors", "size": 1000, "sha256": "0" * 64,
                                 "blob_id": "1" * 40, "lfs": True})
    return Plan(repo_id="org/model", revision="main", commit="a" * 40, endpoint="http://127.0.0.1:1",
                files=(entry,))


def _no_client_errors(fake: FakeApiServer) -> None:
    bad = [(r.method, r.path, r.status, r.json if r.status >= 400 else None) for r in fake.requests
           if r.status >= 400 and not (r.status == 404 and r.method == "GET")
           and not (r.status == 409 and r.method in ("POST", "PUT"))]
    assert not bad, bad


# ---- the fake itself is strict (otherwise the tests below prove little) ----------------------------
def test_fake_rejects_what_a_real_apiserver_rejects(fake: FakeApiServer, environ: dict[str, str]) -> None:
    api, _ = kube.connect(environ)
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l1"},
             "spec": {"holderIdentity": "a", "leaseDurationSeconds": 3, "renewTime": kube.micro_time()}}
    path = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
    created = api.request("POST", path, lease)
    with pytest.raises(kube.KubeApiError) as e:
        api.request("POST", path, lease)
    assert e.value.status == 409 and e.value.reason == "AlreadyExists"
    with pytest.raises(kube.KubeApiError) as e:  # unknown field
        api.request("POST", path, {**lease, "metadata": {"name": "l2"}, "spec": {"holder": "a"}})
    assert e.value.status == 422
    with pytest.raises(kube.KubeApiError) as e:  # MicroTime without 6 fractional digits
        api.request("POST", path, {**lease, "metadata": {"name": "l3"},
                                   "spec": {"renewTime": "2024-01-01T00:00:00+00:00"}})
    assert e.value.status == 422 and "MicroTime" in str(e.value)
    api.request("PUT", f"{path}/l1", {**created, "spec": {"holderIdentity": "b"}})
    with pytest.raises(kube.KubeApiError) as e:  # stale resourceVersion
        api.request("PUT", f"{path}/l1", {**created, "spec": {"holderIdentity": "c"}})
    assert e.value.status == 409 and e.value.reason == "Conflict"
    # a merge body sent as a JSON patch (the client itself rewrites that, so speak raw HTTP)
    req = urllib.request.Request(f"{fake.url}/api/v1/namespaces/{NS}/pods/{POD}/status", method="PATCH",
                                 data=b'{"status": {}}', headers={"Content-Type": "application/json-patch+json",
                                                                  "Authorization": f"Bearer {fake.token}"})
    with pytest.raises(urllib.error.HTTPError) as he:
        urllib.request.urlopen(req, timeout=5)
    assert he.value.code == 400 and json.loads(he.value.read())["kind"] == "Status"
    with pytest.raises(kube.KubeApiError) as e:
        api.request("PATCH", f"/api/v1/namespaces/{NS}/pods/{POD}/status", {"status": {}},
                    content_type="application/json")
    assert e.value.status == 415
    assert schema_errors({"apiVersion": "v1", "kind": "Event", "metadata": {}, "involvedObject": {},
                          "count": "3"}, "event-v1.json")


# ---- setup ---------------------------------------------------------------------------------------
def test_import_does_not_load_kubernetes() -> None:
    code = "import sys, provisioner.kube, provisioner.api; assert 'kubernetes' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)


def test_wanted_rules(tmp_path: Path) -> None:
    assert not kube.wanted(_config(kube="off"), {"KUBECONFIG": "x"})
    assert kube.wanted(_config(kube="on"), {})
    assert kube.wanted(_config(kube="auto"), {"KUBECONFIG": "x"})
    assert not kube.wanted(_config(kube="auto"), {})  # no token mounted on this machine
    assert kube.setup(_config(kube="auto"), tracker=_tracker(), target=tmp_path, environ={}) is None


def test_setup_identity_and_lease_coordinator(fake: FakeApiServer, environ: dict[str, str], tmp_path: Path) -> None:
    features = kube.setup(_config(), tracker=_tracker(), target=tmp_path, environ=environ)
    assert features is not None
    try:
        assert isinstance(features.coordinator, kube.LeaseCoordinator)
        assert features.pod.name == POD and features.pod.namespace == NS
        assert features.pod.uid == fake.pods[(NS, POD)]["metadata"]["uid"]
        assert features.coordinator.identity.startswith(POD + "/")
        assert features.events
    finally:
        features.close()
    env = {k: v for k, v in environ.items() if k != "POD_NAMESPACE"}
    assert kube.pod_identity(env, "from-kubeconfig").namespace == "from-kubeconfig"
    features = kube.setup(_config(coordination="file"), tracker=_tracker(), target=tmp_path, environ=environ)
    assert features is not None and features.coordinator is None
    features.close()


def test_bad_kubeconfig_degrades_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "kc").write_text("not: [a kubeconfig", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="provisioner.kube"):
        assert kube.setup(_config(), tracker=_tracker(), target=tmp_path,
                          environ={"KUBECONFIG": str(tmp_path / "kc")}) is None
    assert len(caplog.records) == 1


def test_unreachable_api_falls_back_to_file_lock(fake: FakeApiServer, environ: dict[str, str], tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    fake.stop()
    (tmp_path / ".provisioner").mkdir()  # api.py prepares the target before coordinating
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="provisioner.kube"):
        features = kube.setup(_config(), tracker=_tracker(), target=tmp_path, environ=environ)
    assert time.monotonic() - t0 < 10
    assert features is not None and isinstance(features.coordinator, FileLock)
    assert len(caplog.records) == 1 and "unreachable" in caplog.text
    tracker = _tracker()
    with features.coordinator.hold(key=KEY, tracker=tracker, stop=threading.Event()):
        pass  # provisioning continues under the file lock
    features.close()


def test_wrong_token_degrades(fake: FakeApiServer, environ: dict[str, str], tmp_path: Path,
                              caplog: pytest.LogCaptureFixture) -> None:
    fake.token = "another-token"
    with caplog.at_level(logging.WARNING, logger="provisioner.kube"):
        features = kube.setup(_config(), tracker=_tracker(), target=tmp_path, environ=environ)
    assert features is not None and isinstance(features.coordinator, FileLock)
    assert len(caplog.records) == 1 and "401" in caplog.text


def test_lease_forbidden_falls_back_to_file_lock(fake: FakeApiServer, environ: dict[str, str], tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    fake.deny("*", "leases")
    with caplog.at_level(logging.WARNING, logger="provisioner.kube"):
        features = kube.setup(_config(), tracker=_tracker(), target=tmp_path, environ=environ)
    assert features is not None and isinstance(features.coordinator, FileLock)
    assert len(caplog.records) == 1 and "403" in caplog.text and "leases" in caplog.text
    assert features.events  # Events are independent of the Lease RBAC
    features.close()


def test_lease_create_forbidden_at_hold_time(fake: FakeApiServer, environ: dict[str, str], tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    fake.deny("create", "leases")  # the GET probe passes; the create is refused
    features = kube.setup(_config(), tracker=_tracker(), target=tmp_path, environ=environ)
    assert features is not None and isinstance(features.coordinator, kube.LeaseCoordinator)
    ran = []
    with caplog.at_level(logging.WARNING, logger="provisioner.kube"):
        for _ in range(2):
            with features.coordinator.hold(key=KEY, tracker=_tracker(), stop=threading.Event()):
                ran.append(1)
    assert ran == [1, 1]
    assert (tmp_path / ".provisioner" / "lock").exists()  # the FileLock did the job
    assert len([r for r in caplog.records if "Lease" in r.getMessage()]) == 1  # warned once
    features.close()


# ---- the Lease -----------------------------------------------------------------------------------
def test_volume_id_is_created_once(tmp_path: Path) -> None:
    state = tmp_path / ".provisioner"
    ids: list[str] = []
    threads = [threading.Thread(target=lambda: ids.append(kube.volume_id(state))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1 and len(ids) == 8
    assert (state / "volume-id").read_text().strip() == ids[0]
    assert not list(state.glob(".volume-id.*"))
    name = kube.lease_name(ids[0], KEY)
    assert name.startswith("model-provisioner-") and len(name) == len("model-provisioner-") + 20
    assert name != kube.lease_name(ids[0], "org/model@" + "b" * 40)
    assert name != kube.lease_name("other-volume", KEY)


def test_only_one_holder_at_a_time(fake: FakeApiServer, environ: dict[str, str], tmp_path: Path) -> None:
    state = tmp_path / ".provisioner"
    coords = [_coordinator(environ, state, f"pod-{i}") for i in range(3)]
    trackers = [_tracker() for _ in coords]
    active = 0
    max_active = 0
    order: list[str] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work(c: kube.LeaseCoordinator, t: Tracker) -> None:
        nonlocal active, max_active
        try:
            with c.hold(key=KEY, tracker=t, stop=threading.Event()):
                with lock:
                    active += 1
                    max_active = max(max_active, active)
                    order.append(c.identity)
                time.sleep(0.3)  # the "download"
                with lock:
                    active -= 1
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(c, t)) for c, t in zip(coords, trackers, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert max_active == 1 and len(order) == 3
    assert sum(1 for t in trackers if t.waiting_for) >= 2  # the others reported "waiting for <holder>"
    lease = fake.lease(NS, kube.lease_name(kube.volume_id(state), KEY))
    assert lease is not None and not lease["spec"].get("holderIdentity")  # released at the end
    assert lease["spec"]["leaseTransitions"] == 2
    _no_client_errors(fake)


def test_release_lets_a_waiter_in_at_once(fake: FakeApiServer, environ: dict[str, str], tmp_path: Path) -> None:
    state = tmp_path / ".provisioner"
    a, b = _coordinator(environ, state, "pod-a"), _coordinator(environ, state, "pod-b")
    tb = _tracker()
    acquired_at: list[float] = []
    with a.hold(key=KEY, tracker=_tracker(), stop=threading.Event()):
        t = threading.Thread(target=lambda: b.hold(key=KEY, tracker=tb, stop=threading.Event()).__enter__()
                             or acquired_at.append(time.monotonic()))
        t.start()
        _wait(lambda: tb.waiting_for == a.identity, what="b waiting for a")
        assert tb.phase == Phase.WAITING
        released = time.monotonic()
    t.join(10)
    assert acquired_at and acquired_at[0] - released < 2.0  # not the 30 s lease duration
    b.close()


def test_expired_lease_is_taken_over(fake: FakeApiServer, environ: dict[str, str], tmp_path: Path,
                                     caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / ".provisioner"
    a, b = _coordinator(environ, state, "pod-a", duration=2), _coordinator(environ, state, "pod-b", duration=2)
    cm = a.hold(key=KEY, tracker=_tracker(), stop=threading.Event())
    cm.__enter__()
    name = kube.lease_name(kube.volume_id(state), KEY)
    _wait(lambda: len(fake.requests_for("PUT", name)) >= 1, what="a renewal")  # renewals happen
    a.close()  # "SIGKILL": renewals stop, no release
    died = time.monotonic()
    tb = _tracker()
    with caplog.at_level(logging.WARNING, logger="provisioner.kube"):
        with b.hold(key=KEY, tracker=tb, stop=_deadline_stop()):
            took = time.monotonic() - died
            lease = fake.lease(NS, name)
            assert lease is not None and lease["spec"]["holderIdentity"] == b.identity
            assert lease["spec"]["leaseTransitions"] == 1
    assert tb.waiting_for == a.identity
    assert 1.5 < took < 8, took  # ~duration after the last observed change
    assert "expired" in caplog.text
    _no_client_errors(fake)


def test_stale_lease_from_long_ago_is_taken_at_once(fake: FakeApiServer, environ: dict[str, str],
                                                    tmp_path: Path) -> None:
    state = tmp_path / ".provisioner"
    name = kube.lease_name(kube.volume_id(state), KEY)
    api, _ = kube.connect(environ)
    api.request("POST", f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases", {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name},
        "spec": {"holderIdentity": "dead/000", "leaseDurationSeconds": 5,
                 "renewTime": kube.micro_time(time.time() - 3600)}})
    b = _coordinator(environ, state, "pod-b", duration=5)
    t0 = time.monotonic()
    with b.hold(key=KEY, tracker=_tracker(), stop=_deadline_stop()):
        assert time.monotonic() - t0 < 2


def test_conflicting_takeover_rereads_and_waits(fake: FakeApiServer, environ: dict[str, str],
                                                tmp_path: Path) -> None:
    state = tmp_path / ".provisioner"
    name = kube.lease_name(kube.volume_id(state), KEY)
    api, _ = kube.connect(environ)
    path = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
    api.request("POST", path, {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name},
                               "spec": {"leaseDurationSeconds": 30}})  # free (released)
    b = _coordinator(environ, state, "pod-b")
    real_request = b.api.request
    raced = []

    def racing_request(method: str, p: str, body: Any = None, **kw: Any) -> dict[str, Any]:
        if method == "PUT" and not raced:  # pod-c wins between b's GET and PUT
            raced.append(1)
            current = api.request("GET", f"{path}/{name}")
            current["spec"] = {"holderIdentity": "pod-c/c", "leaseDurationSeconds": 30,
                               "renewTime": kube.micro_time(), "leaseTransitions": 1}
            api.request("PUT", f"{path}/{name}", current)
        return real_request(method, p, body, **kw)

    b.api.request = racing_request  # type: ignore[method-assign]
    tb = _tracker()
    stop = threading.Event()
    result: list[BaseException | None] = []

    def run() -> None:
        try:
            with b.hold(key=KEY, tracker=tb, stop=stop):
                result.append(None)
        except BaseException as exc:  # noqa: BLE001 - checked below
            result.append(exc)

    t = threading.Thread(target=run)
    t.start()
    _wait(lambda: tb.waiting_for == "pod-c/c", what="b waiting for the winner")
    conflicts = [r for r in fake.requests_for("PUT", name) if r.status == 409]
    assert len(conflicts) == 1 and conflicts[0].json["spec"]["holderIdentity"] == b.identity
    stop.set()  # interruptible while waiting
    t.join(5)
    assert result and isinstance(result[0], Interrupted)


def test_renewals_and_lost_lease(fake: FakeApiServer, environ: dict[str, str], tmp_path: Path,
                                 caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / ".provisioner"
    a = _coordinator(environ, state, "pod-a", duration=1.5)  # renew every 0.5 s (duration rounds up to 2)
    name = kube.lease_name(kube.volume_id(state), KEY)
    with caplog.at_level(logging.WARNING, logger="provisioner.kube"):
        with a.hold(key=KEY, tracker=_tracker(), stop=threading.Event()):
            _wait(lambda: len(fake.requests_for("PUT", name)) >= 2, what="two renewals")
            times = [r.json["spec"]["renewTime"] for r in fake.requests_for("PUT", name)]
            assert len(set(times)) == len(times)
            # someone else takes the lease (e.g. after a long network partition)
            api, _ = kube.connect(environ)
            path = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/{name}"
            current = api.request("GET", path)
            current["spec"]["holderIdentity"] = "pod-x/x"
            api.request("PUT", path, current)
            _wait(lambda: a.lost, what="the renewer to notice")
    assert "lost Lease" in caplog.text
    lease = fake.lease(NS, name)
    assert lease is not None and lease["spec"]["holderIdentity"] == "pod-x/x"  # release did not clobber it


def test_transient_api_errors_while_waiting_are_retried(fake: FakeApiServer, environ: dict[str, str],
                                                        tmp_path: Path) -> None:
    state = tmp_path / ".provisioner"
    a, b = _coordinator(environ, state, "pod-a"), _coordinator(environ, state, "pod-b")
    tb = _tracker()
    done: list[bool] = []
    with a.hold(key=KEY, tracker=_tracker(), stop=threading.Event()):
        t = threading.Thread(target=lambda: done.append(bool(b.hold(key=KEY, tracker=tb,
                                                                     stop=threading.Event()).__enter__() or 1)))
        t.start()
        _wait(lambda: tb.waiting_for is not None, what="b waiting")
        fake.fail_next(3, 503)
        _wait(lambda: not fake._fail, what="injected failures consumed")
    t.join(10)
    assert done == [True]
    assert not isinstance(b.fallback, kube.LeaseCoordinator) and not b._warned  # stayed on the Lease
    b.close()


# ---- Events and the readiness condition ----------------------------------------------------------
def _features(environ: dict[str, str], tmp_path: Path, tracker: Tracker, **cfg: Any) -> kube.KubeFeatures:
    features = kube.setup(_config(**cfg), tracker=tracker, target=tmp_path, environ=environ)
    assert features is not None
    return features


def _events(fake: FakeApiServer) -> list[dict[str, Any]]:
    with fake.lock:
        return [dict(e) for e in fake.events.values()]


def test_events_shapes_and_aggregation(fake: FakeApiServer, environ: dict[str, str], tmp_path: Path) -> None:
    tracker = _tracker()
    features = _features(environ, tmp_path, tracker)
    tracker.set_plan(_plan())
    tracker.set_phase(Phase.DOWNLOADING)
    for _ in range(50):
        tracker.retry(reason="http_429", path="model.safetensors", delay=1.0, message="429 Too Many Requests")
    tracker.retry(reason="reset", path=None, delay=0.5, message="connection reset")
    tracker.verification(kind="checksums", seconds=0.2, ok=True)
    tracker.mark_ready()
    features.close()
    events = _events(fake)
    by_reason: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_reason.setdefault(e["reason"], []).append(e)
    assert set(by_reason) == {"DownloadStarted", "Retrying", "Verified", "Ready"}
    retrying = {e["message"].split("(")[1].split(")")[0]: e for e in by_reason["Retrying"]}
    assert set(retrying) == {"http_429", "reset"}
    assert retrying["http_429"]["count"] == 50 and retrying["http_429"]["type"] == "Warning"
    assert retrying["reset"]["count"] == 1
    uid = fake.pods[(NS, POD)]["metadata"]["uid"]
    for e in events:
        assert e["involvedObject"] == {"apiVersion": "v1", "kind": "Pod", "name": POD, "namespace": NS, "uid": uid}
        assert e["source"]["component"] == "model-provisioner"
        assert e["reportingComponent"] == "model-provisioner" and e["reportingInstance"] == POD
        assert e["type"] in ("Normal", "Warning")
        assert not schema_errors(e, "event-v1.json")
    assert by_reason["Ready"][0]["type"] == "Normal" and "a" * 40 in by_reason["Ready"][0]["message"]
    assert "1000 bytes" in by_reason["DownloadStarted"][0]["message"]
    # 50 retries: one POST, then one PATCH carrying the aggregate count (not 50 writes)
    assert len([r for r in fake.requests_for("PATCH", "/events/")]) == 1
    assert all(r.content_type == "application/strategic-merge-patch+json" for r in fake.requests_for("PATCH", ""))
    _no_client_errors(fake)


def test_event_aggregation_window_and_token_bucket(fake: FakeApiServer, environ: dict[str, str]) -> None:
    api, _ = kube.connect(environ)
    pod = kube.PodIdentity(POD, NS)
    reporter = kube.Reporter(api, pod, repo_id="org/model", events=True, condition_type="",
                             aggregate_seconds=0.3, burst=4, refill_seconds=3600)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.5:  # a retry storm of one reason for 1.5 s
        reporter.event("Retrying", "retrying (http_5xx)", type_="Warning", key="http_5xx")
        time.sleep(0.01)
    _wait(lambda: reporter._queue.empty(), what="queue drained")
    writes = len(fake.requests_for("POST", "/events")) + len(fake.requests_for("PATCH", "/events/"))
    assert 1 <= writes <= 4  # bounded by the bucket (burst 4), and ~1.5/0.3 + 1 by the window
    for i in range(10):  # distinct events: the bucket is empty now, so they are dropped ...
        reporter.event("Waiting", f"waiting for holder-{i}")
    reporter.event("Ready", "ready", key="ready", important=True)  # ... except the important ones
    reporter.close()
    reasons = [e["reason"] for e in _events(fake)]
    assert "Ready" in reasons and "Waiting" not in reasons
    assert reporter.dropped >= 10


def test_slow_api_never_slows_the_tracker(fake: FakeApiServer, environ: dict[str, str], tmp_path: Path) -> None:
    tracker = _tracker()
    features = _features(environ, tmp_path, tracker)
    fake.delay = 0.5
    t0 = time.monotonic()
    for i in range(400):
        tracker.retry(reason=f"r{i}", path=None, delay=0.0, message="x")
    assert time.monotonic() - t0 < 0.5  # callbacks only enqueue
    t1 = time.monotonic()
    features.close(timeout=1.0)
    assert time.monotonic() - t1 < 3.0  # close is bounded too
    assert features.reporter is not None and features.reporter.dropped > 0


def test_readiness_condition(fake: FakeApiServer, environ: dict[str, str], tmp_path: Path) -> None:
    cond = "model-provisioner.example.com/ready"
    tracker = _tracker()
    features = _features(environ, tmp_path, tracker, readiness_condition=cond)
    tracker.set_plan(_plan())
    tracker.mark_ready()
    _wait(lambda: any(c["type"] == cond for c in fake.pods[(NS, POD)]["status"]["conditions"]), what="condition")
    conds = {c["type"]: c for c in fake.pods[(NS, POD)]["status"]["conditions"]}
    assert "PodScheduled" in conds  # a strategic merge keeps the kubelet's conditions
    assert conds[cond]["status"] == "True" and conds[cond]["reason"] == "ModelReady"
    tracker.mark_failed(message="boom", exit_code=7)
    features.close()
    conds_list = fake.pods[(NS, POD)]["status"]["conditions"]
    assert [c["type"] for c in conds_list].count(cond) == 1
    assert {c["type"]: c for c in conds_list}[cond]["status"] == "False"
    patches = fake.requests_for("PATCH", "/status")
    assert patches and all(r.content_type == "application/strategic-merge-patch+json" for r in patches)
    assert set(patches[0].json) == {"status"}
    _no_client_errors(fake)


def test_forbidden_events_warn_once_and_condition_still_works(fake: FakeApiServer, environ: dict[str, str],
                                                              tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    fake.deny("*", "events")
    cond = "example.com/model-ready"
    tracker = _tracker()
    with caplog.at_level(logging.WARNING, logger="provisioner.kube"):
        features = _features(environ, tmp_path, tracker, readiness_condition=cond)
        tracker.set_phase(Phase.DOWNLOADING)
        for i in range(5):
            tracker.retry(reason=f"r{i}", path=None, delay=0.0, message="x")
        tracker.mark_ready()
        features.close()
    assert len(caplog.records) == 1 and "events" in caplog.text and "403" in caplog.text
    assert len(fake.requests_for("POST", "/events")) == 1  # stopped after the first 403
    assert any(c["type"] == cond for c in fake.pods[(NS, POD)]["status"]["conditions"])


def test_no_secret_reaches_the_api(fake: FakeApiServer, environ: dict[str, str], tmp_path: Path) -> None:
    canary = "hf_canaryTOKEN1234567890abcdef"
    tracker = _tracker()
    # the run's token is the canary (its Redactor comes from the config); the signature is in a URL query
    features = _features(environ, tmp_path, tracker, readiness_condition="example.com/ready", token=canary)
    assert isinstance(features.coordinator, kube.LeaseCoordinator)
    with features.coordinator.hold(key=KEY, tracker=tracker, stop=threading.Event()):
        tracker.set_phase(Phase.DOWNLOADING)
        tracker.retry(reason="http_5xx", path="model.safetensors", delay=1.0,
                      message=f"GET https://cdn.example/x?X-Amz-Signature=s3cr3t-signature-value token {canary}")
        tracker.stall(path=f"weights-{canary}.bin")
        tracker.waiting(holder=f"Bearer {canary}")
    tracker.mark_failed(message=f"401 for token {canary}", exit_code=4)
    features.close()
    bodies = b"".join(r.body for r in fake.requests)
    assert len(fake.requests_for("POST", "/events")) >= 3
    assert canary.encode() not in bodies and b"s3cr3t" not in bodies
    assert b"hf_<redacted>" in bodies or b"<redacted>" in bodies


# ---- --events and POD_UID (issue 10, issue 12 item 7) ----------------------------------------------
def _drive(tracker: Tracker) -> None:
    """Everything that would post an Event: plan, download start, retries, a stall, waiting, ready."""
    tracker.set_plan(_plan())
    tracker.set_phase(Phase.DOWNLOADING)
    for i in range(3):
        tracker.retry(reason=f"r{i}", path=None, delay=0.0, message="x")
    tracker.stall(path="model.safetensors")
    tracker.waiting(holder="replica-9/abcdef")
    tracker.mark_ready()


def _event_requests(fake: FakeApiServer) -> list[tuple[str, str]]:
    with fake.lock:
        return [(r.method, r.path) for r in fake.requests if "/events" in r.path]


def test_events_off_never_attempts_an_event(fake: FakeApiServer, environ: dict[str, str], tmp_path: Path) -> None:
    cond = "example.com/model-ready"
    tracker = _tracker()
    features = _features(environ, tmp_path, tracker, events="off", readiness_condition=cond)
    assert not features.events and features.condition
    assert isinstance(features.coordinator, kube.LeaseCoordinator)
    with features.coordinator.hold(key=KEY, tracker=tracker, stop=threading.Event()):
        _drive(tracker)
    features.close()
    assert _event_requests(fake) == []
    assert not fake.requests_for("GET", f"/pods/{POD}")  # the uid is only for Events: not read
    # the condition is independent of --events
    assert any(c["type"] == cond for c in fake.pods[(NS, POD)]["status"]["conditions"])
    _no_client_errors(fake)


def test_pod_uid_from_the_downward_api(fake: FakeApiServer, environ: dict[str, str], tmp_path: Path,
                                       caplog: pytest.LogCaptureFixture) -> None:
    fake.deny("get", "pods")  # the Role need not grant `get pods` when POD_UID is set
    uid = "0f5b2c1e-7d4a-4e0b-9c39-2b1f6a8d4e11"
    tracker = _tracker()
    with caplog.at_level(logging.INFO, logger="provisioner.kube"):
        features = _features({**environ, "POD_UID": uid}, tmp_path, tracker)
        _drive(tracker)
        features.close()
    posts = fake.requests_for("POST", "/events")
    assert len(posts) >= 3
    assert all(r.json["involvedObject"]["uid"] == uid for r in posts)
    assert all(e["involvedObject"]["uid"] == uid for e in _events(fake))
    assert not fake.requests_for("GET", f"/pods/{POD}")
    assert "cannot read pod" not in caplog.text
    _no_client_errors(fake)


def test_lease_only_posts_no_event_and_logs_no_warning(fake: FakeApiServer, environ: dict[str, str],
                                                       tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # what a Lease-only Role grants: leases get/create/update, nothing on events or pods
    fake.deny("*", "events")
    fake.deny("*", "pods")
    fake.deny("*", "pods/status")
    tracker = _tracker()
    with caplog.at_level(logging.INFO, logger="provisioner.kube"):
        features = _features(environ, tmp_path, tracker, events="off", coordination="lease")
        assert isinstance(features.coordinator, kube.LeaseCoordinator)
        with features.coordinator.hold(key=KEY, tracker=tracker, stop=threading.Event()):
            _drive(tracker)
        features.close()
    assert _event_requests(fake) == []
    assert {r.path.split("/")[2] for r in fake.requests} == {"coordination.k8s.io"}  # Leases only
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "403" not in caplog.text
    _no_client_errors(fake)
