"""The JSON API: repo lookup and authorization (shared with resolve), ``model_info``
(``/api/models/{repo}[/revision/{rev}]``, ``?blobs=true``) and the paginated tree listing.

Imports ``cdn`` (which it subclasses), ``core`` and ``repo``.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any
from urllib.parse import unquote, urlencode

from .cdn import _HubCdn
from .core import _Ctx
from .repo import _EPOCH, FileInfo, _dir_oid, _Repo


class _HubApi(_HubCdn):
    """Repo lookup, auth and the ``/api/models`` routes."""

    def _find_repo(self, segs: list[str], markers: tuple[str, ...]) -> tuple[str, list[str]]:
        """Split path segments into (repo_id, rest), preferring known two-segment ids."""
        with self._lock:
            if len(segs) >= 2 and f"{segs[0]}/{segs[1]}" in self._repos:
                return f"{segs[0]}/{segs[1]}", segs[2:]
            if segs and segs[0] in self._repos:
                return segs[0], segs[1:]
        if len(segs) >= 2 and segs[1] in markers:
            return segs[0], segs[1:]
        return "/".join(segs[:2]), segs[2:]

    def _authorize(self, ctx: _Ctx, repo_id: str) -> _Repo | None:
        with self._lock:
            repo = self._repos.get(repo_id)
        if repo is None:
            self._error(ctx, 404, "RepoNotFound", f"Repository {repo_id} not found")
            return None
        if repo.token is None and not repo.gated:
            return repo
        auth = ctx.handler.headers.get("Authorization", "")
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        code = "GatedRepo" if repo.gated else "RepoNotFound"
        if not given:
            self._error(ctx, 401, code, f"Access to {repo_id} requires authentication")
            return None
        if repo.token is not None and not hmac.compare_digest(given, repo.token):
            self._error(ctx, 403, code if repo.gated else None, f"Invalid credentials for {repo_id}")
            return None
        return repo

    def _commit_for(self, ctx: _Ctx, repo: _Repo, rev: str) -> str | None:
        with self._lock:
            if rev in repo.refs:
                return repo.refs[rev]
            if rev in repo.commits:
                return rev
        self._error(ctx, 404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return None

    # ------------------------------------------------------------------ API

    def _handle_api(self, ctx: _Ctx, raw_path: str) -> None:
        segs = raw_path.split("/")[2:]  # after "", "api"
        if not segs or segs[0] != "models":
            self._error(ctx, 404, None, "Only model repos are emulated")
            return
        repo_id, rest = self._find_repo([unquote(s) for s in segs[1:] if s != ""], ("revision", "tree"))
        repo = self._authorize(ctx, repo_id)
        if repo is None:
            return
        if not rest:
            rest = ["revision", "main"]
        if rest[0] == "revision" and len(rest) >= 2:
            rev = "/".join(rest[1:])
            commit = self._commit_for(ctx, repo, rev)
            if commit is not None:
                self._send_json(ctx, self._model_info(repo, commit, ctx.query), commit=commit)
        elif rest[0] == "tree" and len(rest) >= 2:
            # the revision is quoted with safe="" by the client, so it is exactly one raw segment
            rev, sub = rest[1], "/".join(rest[2:])
            commit = self._commit_for(ctx, repo, rev)
            if commit is not None:
                self._tree(ctx, repo, rev, commit, sub.strip("/"))
        else:
            self._error(ctx, 404, None, "Unknown API route")

    def _model_info(self, repo: _Repo, commit: str, query: dict[str, list[str]]) -> dict[str, Any]:
        with self._lock:
            files = repo.commits[commit]
        blobs = _truthy(query.get("blobs"))
        siblings: list[dict[str, Any]] = []
        for f in sorted(files.values(), key=lambda f: f.path):
            s: dict[str, Any] = {"rfilename": f.path}
            if blobs:
                s["size"] = f.size
                s["blobId"] = f.oid
                if f.lfs:
                    s["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": len(f.pointer)}
            siblings.append(s)
        author = repo.repo_id.split("/")[0] if "/" in repo.repo_id else None
        return {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": author,
            "sha": commit,
            "lastModified": _EPOCH,
            "createdAt": _EPOCH,
            "private": repo.token is not None and not repo.gated,
            "gated": "auto" if repo.gated else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "library_name": None,
            "siblings": siblings,
        }

    def _tree(self, ctx: _Ctx, repo: _Repo, rev: str, commit: str, sub: str) -> None:
        with self._lock:
            files = repo.commits[commit]
        recursive = _truthy(ctx.query.get("recursive"))
        expand = _truthy(ctx.query.get("expand"))
        prefix = f"{sub}/" if sub else ""
        dirs: set[str] = set()
        for p in files:
            parts = p.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add("/".join(parts[:i]))
        if sub and sub not in dirs and sub not in files:
            self._error(ctx, 404, "EntryNotFound", f"{sub} does not exist on {rev}", commit=commit)
            return
        entries: list[dict[str, Any]] = []
        candidates: list[tuple[str, FileInfo | None]] = sorted(
            [(d, None) for d in dirs] + list(files.items()), key=lambda x: x[0]
        )
        for path, info in candidates:
            if sub in files:
                if path != sub:  # a file path lists as that single entry
                    continue
            elif not path.startswith(prefix) or (not recursive and "/" in path[len(prefix) :]):
                continue
            if info is None:
                entries.append({"type": "directory", "oid": _dir_oid(files, path), "path": path})
            else:
                e: dict[str, Any] = {"type": "file", "oid": info.oid, "size": info.size, "path": path}
                if info.lfs:
                    e["lfs"] = {"oid": info.sha256, "size": info.size, "pointerSize": len(info.pointer)}
                if expand:
                    e["lastCommit"] = {"id": commit, "title": "emulated commit", "date": _EPOCH}
                entries.append(e)
        try:
            cursor = int(ctx.query.get("cursor", ["0"])[0])
        except ValueError:
            cursor = 0
        page = entries[cursor : cursor + self.page_size]
        headers: dict[str, str] = {}
        if cursor + self.page_size < len(entries):
            q = {k: v[0] for k, v in ctx.query.items() if k != "cursor"}
            q["cursor"] = str(cursor + self.page_size)
            base = ctx.handler.path.split("?", 1)[0]
            headers["Link"] = f'<{self.url}{base}?{urlencode(q)}>; rel="next"'
        self._send_json(ctx, page, commit=commit, headers=headers)


def _truthy(values: list[str] | None) -> bool:
    return bool(values) and values[-1].lower() in ("1", "true", "yes")  # type: ignore[index]
