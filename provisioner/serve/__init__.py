"""Serving a run: the long-lived process around `provision` (the `run` and `demo` commands).

Owns: `server.HealthServer` (the /metrics /healthz /readyz /status HTTP server), `listener.Listener`
(its bounded connection handling: stdlib only, imports nothing from the package) and
`modes.run_service(config) -> exit code` (logging, signal handlers, progress reporting, the
provision worker thread with its stop grace period, the sidecar's restart loop, the final
Pushgateway push and the linger), and `warm_path` (an init-mode restart on a verified volume answered
from the marker alone, before any of the above is imported). The top stage: it may import every other
module of the package and nothing imports it except cli.py. This file imports nothing, so `cli check`
stays light.
"""
