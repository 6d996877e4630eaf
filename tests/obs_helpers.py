"""Shared bits of the observability tests: a fake clock and a Tracker driven by hand."""

from __future__ import annotations

from provisioner.manifest import FileEntry, Plan
from provisioner.observe.progress import Phase, Tracker

REPO = "org/model"
REVISION = "main"
COMMIT = "c0ffee" + "0" * 34
CANARY_TOKEN = "hf_CanaryToken0123456789abcdef"
CANARY_SECRET = "CanarySecretValue-9f8e7d"  # the run's own secret: tests hand it to the sinks via redact.Redactor
SIGNED_URL = ("https://cdn-lfs.example.com/repos/ab/cd/model.safetensors"
              "?X-Amz-Signature=SIGNATURE0canary&Expires=1700000000&token=" + CANARY_SECRET)
SECRETS = (CANARY_TOKEN, CANARY_SECRET, "SIGNATURE0canary")


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_plan(sizes: dict[str, int] | None = None) -> Plan:
    sizes = sizes or {"config.json": 1_000, "model.safetensors": 9_000, "tokenizer.json": 2_000}
    files = tuple(
        FileEntry(path, size, sha256=f"{i:064x}") if path.endswith(".safetensors")
        else FileEntry(path, size, blob_sha1=f"{i:040x}")
        for i, (path, size) in enumerate(sizes.items())
    )
    return Plan(repo_id=REPO, revision=REVISION, commit=COMMIT, endpoint="http://127.0.0.1:1", files=files)


def downloading_tracker(clock: FakeClock | None = None, plan: Plan | None = None) -> Tracker:
    tracker = Tracker(repo_id=REPO, revision=REVISION, clock=clock) if clock else \
        Tracker(repo_id=REPO, revision=REVISION)
    tracker.set_phase(Phase.PLANNING)
    tracker.set_plan(plan or make_plan())
    tracker.set_phase(Phase.DOWNLOADING)
    return tracker


def leaky_retry(tracker: Tracker) -> None:
    """A retry whose message carries a signed URL and tokens, as a careless engine might send."""
    tracker.retry(reason="url_expired", path="model.safetensors", delay=0.5,
                  message=f"403 from {SIGNED_URL} with Authorization: Bearer {CANARY_TOKEN}")
