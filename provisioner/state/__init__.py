"""What the volume remembers between runs: the ready marker, the download lock, the on-disk layout.

Owns `marker` (ready.json: written last, atomically; `check_ready` is the probe path), `lock` (one
downloader per volume: flock, or the Kubernetes Lease through the same `Coordinator` protocol),
`layout` (flat, or one folder per commit behind an atomically switched revision link) and `fsutil`
(atomic JSON writes, 0755 folders whatever the umask, directory fsync).

May import only the standard library and the leaf modules `manifest`, `errors`, `context` (lock waits
interruptibly). The `check` probe imports `state.marker`: this package's `__init__` stays empty of imports.
"""
