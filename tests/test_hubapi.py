"""hubapi.origin: the one "same server" rule (the token goes only where the origin matches the hub's)."""

from __future__ import annotations

import pytest

from provisioner.hubapi import origin


@pytest.mark.parametrize(("a", "b"), [
    ("https://hub.example/api/models/x", "https://hub.example:443/acme/x/resolve/main/f"),
    ("http://127.0.0.1:80/x", "http://127.0.0.1/y"),
    ("HTTPS://Hub.Example/x", "https://hub.example/y"),
])
def test_same_origin_with_default_ports(a: str, b: str) -> None:
    assert origin(a) == origin(b)


@pytest.mark.parametrize(("a", "b"), [
    ("https://hub.example/x", "http://hub.example/x"),  # scheme
    ("https://hub.example/x", "https://hub.example:8443/x"),  # port
    ("https://hub.example/x", "https://cdn.hub.example/x"),  # host
])
def test_different_origins(a: str, b: str) -> None:
    assert origin(a) != origin(b)


def test_default_ports_are_filled_in() -> None:
    assert origin("https://hub.example/x") == ("https", "hub.example", 443)
    assert origin("http://hub.example/x") == ("http", "hub.example", 80)
    assert origin("http://127.0.0.1:5000/x") == ("http", "127.0.0.1", 5000)
