"""The warm start: a restart whose volume already holds a verified copy is ready without downloading.

Owns the decision "serve the marker as is?": a pinned commit needs no network; a branch costs one API
call to see whether it moved, and a hub that cannot be asked does not block a verified copy.
Read-only on disk (a verified model on a read-only volume is served as is). Imports plan and state.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from .context import RunContext
from .errors import Interrupted, NotFoundError, ProvisionerError, UnauthorizedError
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
    if cfg.commit_pinned or check.marker["commit"] == cfg.revision:
        return check.marker
    from .plan import resolve_commit

    quick = RetryBudget(min(cfg.api_timeout, REVISION_CHECK_MAX_SECONDS))
    try:
        commit = resolve_commit(dataclasses.replace(ctx, config=dataclasses.replace(cfg, retry_budget=quick.seconds),
                                                    budget=quick))
    except (NotFoundError, UnauthorizedError) as exc:
        log.warning("hub refused the revision check (%s); serving the verified copy", redact(str(exc)))
        return check.marker
    except Interrupted:
        raise
    except ProvisionerError as exc:  # hub unreachable: a verified copy beats no copy
        log.warning("cannot reach the hub to check %s (%s); serving the verified copy %s",
                    cfg.revision, redact(str(exc)), check.marker["commit"][:12])
        return check.marker
    if commit == check.marker["commit"]:
        return check.marker
    log.info("%s moved from %s to %s: updating", cfg.revision, check.marker["commit"][:12], commit[:12])
    return None
