"""Every change we make to huggingface_hub's process-wide state, in one place.

Why global: huggingface_hub has no per-call knob for two timeouts we need, so the only way to set
them is on the library itself, for the whole process. That is safe because the provisioner serves
one model per process and these values come from that run's config.

* The shared HTTP client (used for API calls and `--engine hub`'s tree listing) is built with
  `timeout=None`: a stalled hub would hang an API call forever. `install_client` replaces its
  factory with one that has connect and read timeouts (downloads set their own).
* `HF_HUB_DOWNLOAD_TIMEOUT` is read into a module constant at import time, and `http_get` looks the
  constant up on every download: setting the constant is the only way to apply our stall timeout
  (an idle timeout per socket read) without restarting the process.

Imports config only (and ssl); huggingface_hub and httpx2 are imported on first use.
"""

from __future__ import annotations

import math
import ssl
import threading
from typing import Any

from .config import Config

_client_lock = threading.Lock()
_client_key: tuple[float, float, str] | None = None


def install_client(*, connect_timeout: float, api_timeout: float, ca_bundle: str = "") -> None:
    """Give huggingface_hub's shared client connect and read timeouts and our CA bundle (a no-op if
    already these). Proxies come from the environment (trust_env)."""
    global _client_key
    key = (connect_timeout, api_timeout, ca_bundle)
    with _client_lock:
        if _client_key == key:
            return
        import httpx2
        from huggingface_hub import set_client_factory
        from huggingface_hub.utils._http import hf_request_event_hook

        verify: Any = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else True

        def factory() -> httpx2.Client:
            return httpx2.Client(
                event_hooks={"request": [hf_request_event_hook]},
                follow_redirects=True,
                timeout=httpx2.Timeout(api_timeout, connect=connect_timeout),
                verify=verify,
                trust_env=True,  # HTTPS_PROXY / HTTP_PROXY / NO_PROXY
            )

        set_client_factory(factory)
        _client_key = key


def configure_api(config: Config) -> None:
    """Before the planner's API calls."""
    install_client(connect_timeout=config.connect_timeout, api_timeout=config.api_timeout,
                   ca_bundle=config.ca_bundle)


def configure_downloads(config: Config) -> None:
    """Before `snapshot_download` (`--engine hub`): the stall timeout per read, and the API client."""
    from huggingface_hub import constants as hf_constants

    hf_constants.HF_HUB_DOWNLOAD_TIMEOUT = max(1, math.ceil(config.stall_timeout))
    configure_api(config)


__all__ = ["configure_api", "configure_downloads", "install_client"]
