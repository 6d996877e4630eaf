"""The JSON API: repo lookup and authorization (shared with resolve), ``model_info``
(``/api/models/{repo}[/revision/{rev}]``, ``?blobs=true``), the paginated tree listing, paths-info
(``POST /api/models/{repo}/paths-info/{rev}``) and the xet profile's token endpoint, each shaped by the
hub profile.

Imports ``cdn`` (which it subclasses), ``core``, ``profiles`` and ``repo``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode

from .cdn import _HubCdn
from .core import _Ctx
from .profiles import file_entry, sibling, xet_hash
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
        repo_id, rest = self._find_repo(
            [unquote(s) for s in segs[1:] if s != ""], ("revision", "tree", "paths-info", "xet-read-token")
        )
        repo = self._authorize(ctx, repo_id)
        if repo is None:
            return
        if not rest:
            rest = ["revision", "main"]
        if ctx.method == "POST":
            if rest[0] == "paths-info" and len(rest) == 2:
                commit = self._commit_for(ctx, repo, rest[1])
                if commit is not None:
                    self._paths_info(ctx, repo, commit)
            else:
                self._error(ctx, 404, None, "Unknown API route")
        elif rest[0] == "xet-read-token" and len(rest) == 2 and self.profile == "xet":
            if self._commit_for(ctx, repo, rest[1]) is not None:
                status = self.xet_auth_status or 503
                self._error(ctx, status, None, "Xet storage is not available here (emulated)")
        elif rest[0] == "revision" and len(rest) >= 2:
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
        info = self._model_info_body(repo, commit, files, query)
        if self.faults.hide_commit:
            del info["sha"]
        elif self.faults.commit_as is not None:
            info["sha"] = self.faults.commit_as
        return info

    def _model_info_body(
        self, repo: _Repo, commit: str, files: dict[str, FileInfo], query: dict[str, list[str]]
    ) -> dict[str, Any]:
        profile = self.profile
        if profile == "bare":
            return {"id": repo.repo_id, "sha": commit}
        blobs = _truthy(query.get("blobs"))
        siblings = [sibling(profile, f, blobs=blobs) for f in sorted(files.values(), key=lambda f: f.path)]
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
        profile = self.profile
        if profile == "mirror":  # such mirrors answer every listing with an empty one
            self._send_json(ctx, [], commit=commit)
            return
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
                entries.append(file_entry(profile, info, commit=commit, expand=expand and not self.faults.hide_commit))
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

    def _paths_info(self, ctx: _Ctx, repo: _Repo, commit: str) -> None:
        """``[{type, path, size, oid, lfs?}]`` for the requested ``paths`` (form or JSON body) that exist, in
        request order; unknown paths are left out, like the real hub."""
        parsed = _paths_info_request(ctx)
        if parsed is None:
            self._error(ctx, 400, None, "expected form or JSON field 'paths' (a list of strings)")
            return
        paths, expand = parsed
        with self._lock:
            files = repo.commits[commit]
        entries: list[dict[str, Any]] = []
        for path in dict.fromkeys(p.strip("/") for p in paths):
            if path in files:
                entries.append(file_entry(self.profile, files[path], commit=commit, expand=expand and not self.faults.hide_commit))
            elif path and any(f.startswith(path + "/") for f in files):
                entries.append({"type": "directory", "oid": _dir_oid(files, path), "path": path})
        self._send_json(ctx, entries, commit=commit)

    def _xet_headers(self, repo_id: str, commit: str, info: FileInfo) -> dict[str, str]:
        """What huggingface.co adds to the resolve of a Xet-backed file: its hash and where to get a token."""
        origin = self.url if self.xet_auth_status is not None else self._refusing_origin()
        link = f"{origin}/api/models/{repo_id}/xet-read-token/{commit}"
        return {"X-Xet-Hash": xet_hash(info), "Link": f'<{link}>; rel="xet-auth"'}


def _paths_info_request(ctx: _Ctx) -> tuple[list[str], bool] | None:
    """(paths, expand) from a paths-info body: a form (what huggingface_hub sends: ``paths`` repeated) or a
    JSON object; None if malformed."""
    if "json" in ctx.handler.headers.get("Content-Type", "").lower():
        try:
            data = json.loads(ctx.body or b"{}")
        except ValueError:  # not JSON: the caller answers 400
            return None
        if not isinstance(data, dict):
            return None
        paths, expand = data.get("paths"), bool(data.get("expand"))
        if isinstance(paths, str):
            paths = [paths]
    else:
        form = parse_qs(ctx.body.decode("utf-8", "replace"), keep_blank_values=True)
        paths, expand = form.get("paths", []) + form.get("paths[]", []), _truthy(form.get("expand"))
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        return None
    return paths, expand


def _truthy(values: list[str] | None) -> bool:
    return bool(values) and values[-1].lower() in ("1", "true", "yes")  # type: ignore[index]
