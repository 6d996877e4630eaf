"""The warm start: a restart whose volume already holds a verified copy is ready without downloading.

Owns the decision "serve the marker as is?": a pinned commit needs no network; a branch costs one API
call to see whether it moved, and a hub that cannot be asked does not block a verified copy. A copy whose
commit is unknown (a hub that names no commit) cannot be compared by commit: the revision is planned again
(model_info, the listings that hub needs and one HEAD per file) and the copy is current when the planned
files (paths, sizes, digests) are exactly the verified ones. Read-only on disk (a verified model on a
read-only volume is served as is). Imports manifest, plan, observe.progress and state.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from .context import RunContext
from .errors import Interrupted, NotFoundError, ProvisionerError, UnauthorizedError
from .manifest import FileEntry
from .observe.progress import Tracker
from .redact import redact
from .retry import RetryBudget
from .state import marker

log = logging.getLogger("provisioner")

REVISION_CHECK_MAX_SECONDS = 10.0  # don't hold a restart hostage to a flaky hub


def usable_marker(ctx: RunContext, *, target: Path) -> dict[str, Any] | None:
    """The marker to serve as is, or None when the model must be (re)provisioned."""
    cfg = ctx.config
    # The app-image embedding check (--verify app) runs after us: a marker waiting for it is ours to serve.
    check = marker.check_ready(target, repo_id=cfg.repo_id, revision=cfg.revision, app_check_pending_ok=True)
    if not check.ok or check.marker is None:
        if check.marker is not None:
            log.info("existing marker not usable: %s", check.reason)
        return None
    if cfg.expect_commit and check.marker.get("commit") != cfg.expect_commit:
        log.info("existing marker is commit %s, not --expect-commit %s: not served",
                 str(check.marker.get("commit"))[:12], cfg.expect_commit[:12])
        return None
    known = check.marker.get("commit")
    if cfg.commit_pinned or (known is not None and known == cfg.revision):
        return check.marker
    from .plan import resolve_commit

    quick = RetryBudget(min(cfg.api_timeout, REVISION_CHECK_MAX_SECONDS))
    side = dataclasses.replace(ctx, config=dataclasses.replace(cfg, retry_budget=quick.seconds), budget=quick,
                               tracker=Tracker(repo_id=cfg.repo_id, revision=cfg.revision))  # not the run's
    try:
        commit = resolve_commit(side) if known is not None else None
        if commit is None:  # no commit to compare on one side or the other: compare what the files must be
            if _lists_the_verified_files(side, check.marker):
                log.info("%s: the hub names no commit; its files are the verified ones: serving the copy",
                         cfg.revision)
                return check.marker
            log.info("%s: the hub names no commit and its files differ from the verified copy: updating",
                     cfg.revision)
            return None
    except (NotFoundError, UnauthorizedError) as exc:
        log.warning("hub refused the revision check (%s); serving the verified copy", redact(str(exc)))
        return check.marker
    except Interrupted:
        raise
    except ProvisionerError as exc:  # hub unreachable: a verified copy beats no copy
        log.warning("cannot reach the hub to check %s (%s); serving the verified copy %s",
                    cfg.revision, redact(str(exc)), str(known or "with an unknown commit")[:12])
        return check.marker
    if commit == known:
        return check.marker
    log.info("%s moved from %s to %s: updating", cfg.revision, str(known)[:12], commit[:12])
    return None


def _lists_the_verified_files(ctx: RunContext, m: dict[str, Any]) -> bool:
    """Plan the revision again and compare: the same paths with the same sizes and digests."""
    from .plan import build_plan

    plan = build_plan(ctx)
    return set(plan.files) == {FileEntry.from_json(f) for f in m["files"]}
