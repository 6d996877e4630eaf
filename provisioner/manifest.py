"""The immutable plan that flows plan -> fetch -> verify -> ready.

Kept free of heavy imports: `check` reads markers built from these types.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

UNKNOWN_COMMIT_PREFIX = "unknown-"


def unknown_commit_key(repo_id: str, revision: str) -> str:
    """The folder key of a revision whose commit no source names: deterministic, and never 40-hex (so it
    cannot be mistaken for a real commit)."""
    digest = hashlib.sha256(f"{repo_id}@{revision}".encode()).hexdigest()[:16]
    return f"{UNKNOWN_COMMIT_PREFIX}{digest}"


@dataclass(frozen=True)
class FileEntry:
    """One repo file: where it goes and what its bytes must hash to."""

    path: str  # repo-relative POSIX path, already checked to stay inside the target
    size: int
    sha256: str | None = None  # LFS files: the LFS oid
    blob_sha1: str | None = None  # regular files: git blob sha1 of b"blob %d\0" + data

    @property
    def is_lfs(self) -> bool:
        return self.sha256 is not None

    @property
    def expected(self) -> str:
        """A short, stable identity of the expected content (used to key partial data)."""
        if self.sha256:
            return f"sha256:{self.sha256}"
        return f"sha1:{self.blob_sha1}" if self.blob_sha1 else f"size:{self.size}"

    @property
    def evidence(self) -> str:
        """What verification can check: `sha256`, `git-sha1`, or `size-only` (the hub gave no digest)."""
        return "sha256" if self.sha256 else "git-sha1" if self.blob_sha1 else "size-only"

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"path": self.path, "size": self.size}
        if self.sha256:
            d["sha256"] = self.sha256
        if self.blob_sha1:
            d["blob_sha1"] = self.blob_sha1
        d["evidence"] = self.evidence
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FileEntry:
        return cls(path=str(d["path"]), size=int(d["size"]), sha256=d.get("sha256"), blob_sha1=d.get("blob_sha1"))


@dataclass(frozen=True)
class Plan:
    """Everything fetch and verify need, resolved once from the hub."""

    repo_id: str
    revision: str  # as requested (branch, tag or commit)
    commit: str | None  # the resolved 40-hex commit sha; None: the hub names no commit anywhere
    endpoint: str
    files: tuple[FileEntry, ...]

    @property
    def commit_known(self) -> bool:
        return self.commit is not None

    @property
    def ref(self) -> str:
        """What the files are fetched at: the commit, or the revision as named when no commit is known."""
        return self.commit or self.revision

    @property
    def key(self) -> str:
        """The commit's folder / lock key: the commit, or a synthetic `unknown-...` key for an unknown one."""
        return self.commit or unknown_commit_key(self.repo_id, self.revision)

    @property
    def short(self) -> str:
        """For log lines: 12 characters of the commit, or `unknown commit`."""
        return self.commit[:12] if self.commit else "unknown commit"

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def file(self, path: str) -> FileEntry:
        for f in self.files:
            if f.path == path:
                return f
        raise KeyError(path)

    def to_json(self) -> dict[str, Any]:
        return {
            "repo_id": self.repo_id,
            "revision": self.revision,
            "commit": self.commit,
            "commit_known": self.commit_known,
            "endpoint": self.endpoint,
            "files": [f.to_json() for f in self.files],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Plan:
        return cls(
            repo_id=str(d["repo_id"]),
            revision=str(d["revision"]),
            commit=str(d["commit"]) if d.get("commit") is not None else None,
            endpoint=str(d.get("endpoint", "")),
            files=tuple(FileEntry.from_json(f) for f in d["files"]),
        )
