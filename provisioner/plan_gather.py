"""The planner's fallback chain: ask each metadata source only for what the previous ones lacked.

model_info(files_metadata=True) -> recursive tree -> paths-info -> one resolve HEAD per file. A source
the hub does not offer (404/405/501, or an empty answer) is skipped; a source that answers with
malformed or contradicting metadata is BadRemoteError (exit 9). Every call goes through
plan.call_with_retries (our timeouts, retried within the run's budget). Imports context, errors,
hubclient and plan_sources; plan's helpers are imported at call time (plan imports this module).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from .context import RunContext
from .errors import BadRemoteError, NotFoundError, ProvisionerError
from .plan_sources import FileMeta, listing_reports_lfs, merge_head, merge_listing, merge_sibling

log = logging.getLogger("provisioner.plan")

PATHS_INFO_BATCH = 500  # paths per paths-info request (a POST body; keeps each one small)


@dataclass
class Gathered:
    files: list[FileMeta]
    commit: str | None  # from a HEAD's X-Repo-Commit when model_info gave none


def gather_metadata(ctx: RunContext, *, info: Any, commit: str | None) -> Gathered:
    """Every file's size and digest (and the commit), asking each source only for what is still missing."""
    from huggingface_hub import HfApi

    from . import __version__

    config = ctx.config
    api = HfApi(endpoint=config.endpoint, token=config.token or False, library_name="model-provisioner",
                library_version=__version__)
    chain = _Chain(ctx, api=api, rev=commit or config.revision)
    siblings = getattr(info, "siblings", None)
    if siblings is not None:
        chain.from_siblings(siblings)
    if siblings is None or chain.lacking():
        chain.from_tree(listed=siblings is not None)
    if not chain.metas:
        raise BadRemoteError(f"the hub listed no files for {config.repo_id}@{config.revision}")
    chain.from_paths_info()
    head_commit = chain.from_heads(need_commit=commit is None)
    return Gathered(files=[chain.metas[p] for p in sorted(chain.metas)], commit=commit or head_commit)


class _Chain:
    """The files gathered so far (path -> FileMeta) and one method per metadata source."""

    def __init__(self, ctx: RunContext, *, api: Any, rev: str) -> None:
        self.ctx, self.api, self.rev = ctx, api, rev
        self.metas: dict[str, FileMeta] = {}

    def lacking(self) -> list[str]:
        return sorted(p for p, m in self.metas.items() if not m.complete)

    def call(self, fn: Any, what: str) -> Any:
        from .plan import call_with_retries

        cfg = self.ctx.config
        return call_with_retries(fn, ctx=self.ctx, what=what, repo_id=cfg.repo_id, revision=cfg.revision)

    def from_siblings(self, siblings: Any) -> None:
        from .plan import MAX_FILES, safe_repo_path

        if not isinstance(siblings, list):
            raise BadRemoteError("the hub's file list is not a list", detail=repr(siblings)[:80])
        if len(siblings) > MAX_FILES:
            raise BadRemoteError(f"the hub listed {len(siblings)} files; refusing more than {MAX_FILES}")
        for s in siblings:
            path = safe_repo_path(getattr(s, "rfilename", None))
            if path in self.metas:
                raise BadRemoteError(f"the hub listed {path!r} twice")
            meta = self.metas[path] = FileMeta(path=path)
            merge_sibling(meta, s)

    def from_tree(self, *, listed: bool) -> None:
        from .plan import MAX_FILES, safe_repo_path

        cfg = self.ctx.config
        tree = _optional(lambda: self.call(lambda: _not_offered(lambda: [
            e for e in self.api.list_repo_tree(cfg.repo_id, revision=self.rev, recursive=True)
            if type(e).__name__ == "RepoFile"]), "tree"))
        if not tree:
            return
        if len(tree) > MAX_FILES:
            raise BadRemoteError(f"the hub listed {len(tree)} files; refusing more than {MAX_FILES}")
        reports = listing_reports_lfs(tree)
        for e in tree:
            path = safe_repo_path(getattr(e, "path", None))
            if listed and path not in self.metas:
                raise BadRemoteError(f"the tree lists {path!r}, which model_info did not")
            merge_listing(self.metas.setdefault(path, FileMeta(path=path)), e, source="tree", reports_lfs=reports)

    def from_paths_info(self) -> None:
        from .plan import safe_repo_path

        cfg = self.ctx.config
        lacking = self.lacking()
        for i in range(0, len(lacking), PATHS_INFO_BATCH):
            batch = lacking[i:i + PATHS_INFO_BATCH]
            got = _optional(lambda b=batch: self.call(lambda: _not_offered(
                lambda: self.api.get_paths_info(cfg.repo_id, b, revision=self.rev)), "paths-info"))
            entries = [e for e in (got or []) if type(e).__name__ == "RepoFile"]
            reports = listing_reports_lfs(entries)
            for e in entries:
                path = safe_repo_path(getattr(e, "path", None))
                if path not in self.metas:
                    raise BadRemoteError(f"paths-info answered for {path!r}, which was not asked for")
                merge_listing(self.metas[path], e, source="paths-info", reports_lfs=reports)

    def from_heads(self, *, need_commit: bool) -> str | None:
        """One HEAD per file still lacking (or until a commit is known): size, ETag, X-Repo-Commit."""
        head_commit: str | None = None
        for path in sorted(self.metas):
            m = self.metas[path]
            if m.complete and not need_commit:
                continue
            size, etag, head_commit_one = _head(self.ctx, api_endpoint=self.ctx.config.endpoint, path=path,
                                                rev=self.rev, call=self.call)
            merge_head(m, size=size, etag=etag)
            if head_commit_one is not None:
                if head_commit is not None and head_commit != head_commit_one:
                    raise BadRemoteError(f"the hub served {path!r} from another commit ({head_commit_one})")
                head_commit = head_commit_one
            need_commit = need_commit and head_commit is None
        return head_commit


def _head(ctx: RunContext, *, api_endpoint: str, path: str, rev: str, call: Any) -> tuple[int | None, str | None,
                                                                                        str | None]:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    config = ctx.config
    url = hf_hub_url(config.repo_id, path, revision=rev, endpoint=api_endpoint)
    try:
        md = call(lambda: get_hf_file_metadata(url, token=config.token or False, timeout=config.api_timeout,
                                               endpoint=api_endpoint), f"HEAD {path}")
    except NotFoundError:  # the listing named a file the hub does not serve: the hub contradicts itself
        raise BadRemoteError(f"the hub listed {path!r} but does not serve it") from None
    return md.size, md.etag, md.commit_hash


NOT_OFFERED = (404, 405, 501)  # statuses by which a hub says it has no such endpoint


def _not_offered(fn: Any) -> Any:
    """Run one API call; an endpoint the hub does not have answers None (before the retry classifier,
    which would count a 501 as transient and retry it for the whole budget)."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return fn()
    except HfHubHTTPError as exc:  # only "no such endpoint" is absorbed; the rest is classified as usual
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in NOT_OFFERED:
            log.info("metadata source not offered (HTTP %s)", status)
            return None
        raise


def _optional(fn: Any) -> Any:
    """A source the hub may not offer: 'not found' means 'not offered here', so the next source is asked."""
    try:
        return fn()
    except NotFoundError as exc:  # endpoint absent on this hub (e.g. no tree on a minimal mirror)
        log.info("metadata source not offered: %s", exc)
        return None
    except ProvisionerError:
        raise
