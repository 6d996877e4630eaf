"""model-provisioner: make a Hugging Face model ready on a volume before the app starts.

The package root stays import-light (the `check` probe imports it): `provision` and friends are
loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Config", "ProvisionResult", "__version__", "provision"]

if TYPE_CHECKING:
    from .api import ProvisionResult, provision
    from .config import Config


def __getattr__(name: str) -> Any:
    if name in ("provision", "ProvisionResult"):
        from . import api

        return getattr(api, name)
    if name == "Config":
        from .config import Config

        return Config
    raise AttributeError(name)
