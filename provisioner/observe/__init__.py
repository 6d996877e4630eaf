"""What a run reports: the live `Tracker` (progress.py) every stage writes into, and its readers —
Prometheus metrics (metrics.py) and JSON/text logs with the progress heartbeat (logs.py). /status, Events
and the API's progress callback read the same Tracker.

May import only the standard library, prometheus_client (metrics.py), `manifest` and `redact`; every stage
may import `observe.progress`. This package's `__init__` imports nothing, so stages pay only for what they use.
"""
