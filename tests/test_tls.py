"""Enterprise TLS: a hub (and CDN) behind a private CA. Without the CA: a clear one-line error with its own
exit code at once (never retried); with --ca-bundle / SSL_CERT_FILE / REQUESTS_CA_BUNDLE: ready."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import run_args, run_cli
from hub_emulator import HubEmulator
from tls_helpers import make_ca_and_server_cert

from provisioner.errors import ExitCode

REPO = "org/tls"


@pytest.fixture
def tls_hub(tmp_path: Path, small_repo: Path) -> Iterator[tuple[HubEmulator, Path]]:
    ca, cert, key = make_ca_and_server_cert(tmp_path)
    with HubEmulator(tls=(str(cert), str(key))) as hub:
        hub.add_repo(REPO, small_repo)
        yield hub, ca


@pytest.mark.parametrize("engine", ["native", "hub"])
def test_untrusted_certificate_is_a_permanent_one_line_error(tls_hub: tuple[HubEmulator, Path], tmp_path: Path,
                                                             engine: str) -> None:
    hub, _ca = tls_hub
    assert hub.url.startswith("https://")
    # a 900 s budget: only "not retried" lets this finish inside the subprocess timeout
    done = run_cli(run_args(endpoint=hub.url, target=tmp_path / "vol", repo_id=REPO,
                            extra=["--verify", "checksums", "--engine", engine, "--retry-budget", "900"]),
                   env={"SSL_CERT_FILE": "", "REQUESTS_CA_BUNDLE": ""}, timeout=120)
    assert done.returncode == ExitCode.TLS == 12, done.stderr + done.stdout
    out = done.stderr + done.stdout
    assert "TLS certificate not trusted" in out and "Traceback" not in out


@pytest.mark.parametrize("how", ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "--ca-bundle"])
def test_ca_bundle_makes_it_ready(tls_hub: tuple[HubEmulator, Path], tmp_path: Path, how: str) -> None:
    hub, ca = tls_hub
    extra = ["--verify", "checksums"]
    env = {"SSL_CERT_FILE": "", "REQUESTS_CA_BUNDLE": ""}
    if how == "--ca-bundle":
        extra += ["--ca-bundle", str(ca)]
    else:
        env[how] = str(ca)
    done = run_cli(run_args(endpoint=hub.url, target=tmp_path / "vol", repo_id=REPO, extra=extra), env=env)
    assert done.returncode == 0, done.stderr + done.stdout
    assert (tmp_path / "vol" / "model.safetensors").is_file()
    assert hub.stats.connections > 0


def test_hub_engine_with_the_ca_bundle(tls_hub: tuple[HubEmulator, Path], tmp_path: Path) -> None:
    hub, ca = tls_hub
    done = run_cli(run_args(endpoint=hub.url, target=tmp_path / "vol", repo_id=REPO,
                            extra=["--verify", "checksums", "--engine", "hub", "--ca-bundle", str(ca)]),
                   env={"SSL_CERT_FILE": "", "REQUESTS_CA_BUNDLE": ""})
    assert done.returncode == 0, done.stderr + done.stdout
