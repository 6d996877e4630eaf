"""docs/design.md names only functions and classes that exist (it is the modules' contract)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def defined_names() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "provisioner").rglob("*.py"):
        names.update(re.findall(r"^\s*(?:def|class)\s+(\w+)", path.read_text(), flags=re.M))
    return names


def test_every_call_named_in_design_md_is_defined() -> None:
    text = (ROOT / "docs" / "design.md").read_text()
    called = set(re.findall(r"(\w+)\(", " ".join(re.findall(r"`([^`]+)`", text))))
    called -= {"sha1", "sha256", "rename", "min", "max", "flock", "fsync", "dataclass"}  # syscalls, stdlib
    missing = sorted(called - defined_names())
    assert not missing, f"docs/design.md names functions that do not exist: {missing}"


def test_every_module_path_named_in_design_md_exists() -> None:
    text = (ROOT / "docs" / "design.md").read_text()
    for rel in set(re.findall(r"`((?:[a-z_]+/)*[a-z_]+\.py)`", text)):
        candidates = [ROOT / "provisioner" / rel, ROOT / rel, ROOT / "emulator" / "hub_emulator" / rel]
        assert any(c.is_file() for c in candidates), f"docs/design.md names a missing file: {rel}"
