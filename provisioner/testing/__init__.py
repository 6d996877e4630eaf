"""Test helpers shipped with the package (the hub emulator is used by tests, the demo and benchmarks).

Names are loaded lazily so that ``python -m provisioner.testing.hub`` does not import the module twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from provisioner.testing.hub import Faults, FileInfo, HubEmulator, HubStats, RequestRecord

__all__ = ["Faults", "FileInfo", "HubEmulator", "HubStats", "RequestRecord"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from provisioner.testing import hub

        return getattr(hub, name)
    raise AttributeError(name)
