"""Proxies: HTTP_PROXY / HTTPS_PROXY / NO_PROXY are honoured by the API calls and the native engine,
through a real forward proxy (tinyproxy from Debian, started here on 127.0.0.1 with a temp config),
and the token still never reaches the CDN."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_helpers import run_args, run_cli, wait_until
from hub_emulator import HubEmulator

REPO = "org/proxied"
TOKEN = "hf_proxytesttoken0123456789"


@dataclass
class Proxy:
    url: str
    log: Path

    def requests(self) -> list[str]:
        """The request lines tinyproxy logged (e.g. 'GET http://127.0.0.1:PORT/api/... HTTP/1.1')."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [line.split("): ", 1)[1] for line in text.splitlines() if "Request (file descriptor" in line]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Proxy]:
    binary = shutil.which("tinyproxy")
    if binary is None:
        pytest.skip("tinyproxy not installed (scripts/install-tools.sh installs it)")
    port = _free_port()
    log = tmp_path / "tinyproxy.log"
    conf = tmp_path / "tinyproxy.conf"
    conf.write_text(f"Port {port}\nListen 127.0.0.1\nAllow 127.0.0.1\nTimeout 60\nLogFile \"{log}\"\n"
                    f"LogLevel Info\nMaxClients 64\nDisableViaHeader Yes\n")
    proc = subprocess.Popen([binary, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_until(listening, timeout=10, what="tinyproxy listening")
        yield Proxy(url=f"http://127.0.0.1:{port}", log=log)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _both_cases(env: dict[str, str]) -> dict[str, str]:
    """The lower-case name wins in urllib's rules, so set both (an inherited no_proxy must not interfere)."""
    return {**env, **{k.lower(): v for k, v in env.items()}}


def _run(hub: HubEmulator, target: Path, env: dict[str, str]) -> None:
    done = run_cli(run_args(endpoint=hub.url, target=target, repo_id=REPO, extra=["--verify", "checksums"]),
                   env={"HF_TOKEN": TOKEN, **_both_cases({"NO_PROXY": "", **env})})
    assert done.returncode == 0, done.stderr + done.stdout
    assert TOKEN not in done.stderr + done.stdout


def test_api_and_downloads_go_through_the_proxy(hub: HubEmulator, proxy: Proxy, small_repo: Path,
                                                tmp_path: Path) -> None:
    hub.add_repo(REPO, small_repo)
    _run(hub, tmp_path / "vol", {"HTTP_PROXY": proxy.url, "HTTPS_PROXY": proxy.url})
    lines = proxy.requests()
    assert any(f"{hub.url}/api/models/{REPO}" in line for line in lines), lines
    assert any(f"{hub.url}/{REPO}/resolve/" in line for line in lines), lines
    assert any(f"{hub.cdn_url}/cdn/" in line for line in lines), lines
    cdn = hub.stats.requests_for(kind="cdn")
    assert cdn and not any(r.authorization for r in cdn), "the token went to the CDN"
    assert any(r.authorization for r in hub.stats.requests_for(kind="api"))  # it did reach the hub


def test_no_proxy_bypasses_it(hub: HubEmulator, proxy: Proxy, small_repo: Path, tmp_path: Path) -> None:
    hub.add_repo(REPO, small_repo)
    _run(hub, tmp_path / "vol", {"HTTP_PROXY": proxy.url, "HTTPS_PROXY": proxy.url, "NO_PROXY": "127.0.0.1"})
    assert proxy.requests() == []
    assert hub.stats.requests_for(kind="cdn")


def test_hub_engine_goes_through_the_proxy(hub: HubEmulator, proxy: Proxy, small_repo: Path,
                                           tmp_path: Path) -> None:
    hub.add_repo(REPO, small_repo)
    done = run_cli(run_args(endpoint=hub.url, target=tmp_path / "vol", repo_id=REPO,
                            extra=["--verify", "checksums", "--engine", "hub"]),
                   env={"HF_TOKEN": TOKEN, **_both_cases({"HTTP_PROXY": proxy.url, "NO_PROXY": ""})})
    assert done.returncode == 0, done.stderr + done.stdout
    lines = proxy.requests()
    assert any(f"{hub.url}/{REPO}/resolve/" in line for line in lines), lines
    assert not any(r.authorization for r in hub.stats.requests_for(kind="cdn"))
