"""The warm start that needs nothing but the marker: an init container restarting on a verified volume.

In init mode with a pinned commit (or offline), no linger, no Pushgateway and no Kubernetes API features, a valid
marker is the whole answer: no request, no metrics, no listener (init containers have no probes). This
path loads only config, logs, marker and layout — not prometheus_client, http.server, huggingface_hub or
the pipeline — which is most of a warm start's cost. Anything else (a branch that may have moved, a
sidecar that must serve probes, Events to post) takes the full path in `serve.modes`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

from ..config import Config
from ..observe import logs
from ..redact import Redactor
from ..state.layout import model_dir
from ..state.marker import check_ready

log = logging.getLogger("provisioner")


def eligible(cfg: Config, *, environ: Mapping[str, str]) -> bool:
    """Nothing but the marker could change the outcome or needs to be reported."""
    if cfg.mode != "init" or cfg.reverify or cfg.linger > 0 or cfg.pushgateway:
        return False
    if not (cfg.commit_pinned or cfg.offline):  # a branch may have moved: only offline takes it as it is
        return False
    from ..kube.client import wanted  # cheap: the kubernetes package itself loads only when used

    return not wanted(cfg, environ)


def ready_from_marker(cfg: Config, *, environ: Mapping[str, str] | None = None) -> int | None:
    """Exit code 0 when the marker answers for this repo and pinned commit; None: take the full path."""
    t0 = time.monotonic()
    env = os.environ if environ is None else environ
    if not eligible(cfg, environ=env):
        return None
    folder = model_dir(target=Path(cfg.target), revision=cfg.revision, layout=cfg.layout)
    check = check_ready(folder, repo_id=cfg.repo_id, revision=cfg.revision)
    if not check.ok or check.marker is None:
        return None  # the full path says why and repairs
    if cfg.expect_commit and check.marker.get("commit") != cfg.expect_commit:
        return None  # a verified copy of another commit: the full path says why
    logs.setup_logging(fmt=cfg.log_format, level=cfg.log_level, redactor=Redactor.for_secrets(cfg.token))
    m = check.marker
    if cfg.offline:  # the same line the full path logs: say why nothing was asked
        log.info("offline: serving the verified copy %s", str(m["commit"] or "(commit unknown)")[:12])
    log.info("ready", extra={"commit": m["commit"], "files": len(m["files"]), "bytes_total": m.get("bytes_total"),
                             "bytes_downloaded": 0, "warm": True, "seconds": round(time.monotonic() - t0, 3)})
    return 0
