"""The import-direction rule (docs/design.md, "Layers"): a module imports only modules of its own layer or
lower ones, at module level and inside functions alike. Read from the source with `ast`: nothing is run."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "provisioner"

# Lowest first. A module belongs to the first entry that is a prefix of its dotted name (after "provisioner.").
LAYERS: list[tuple[str, ...]] = [
    ("__version__", "errors", "manifest", "redact", "config", "sources"),  # leaves: data, settings, byte sources
    ("observe",),  # the Tracker every stage writes into, and its readers (metrics, logs)
    ("retry", "context"),  # the run's budget, stop and shared parts (they name each other's types)
    ("state",),  # marker, lock, layout, fsutil: what the volume remembers
    ("netconf", "hubapi", "hubclient"),  # TLS trust; talking to huggingface_hub / the hub's HTTP errors
    ("verify.checksums", "verify.model_files"),  # digests and model files: fetch hashes while streaming
    ("plan", "plan_sources", "plan_gather"),
    ("fetch",),
    ("place",),
    ("verify",),  # the verify stage proper: smoke test, checksum + refetch policy
    ("kube",),
    ("warm",),
    ("api",),
    ("serve",),
    ("cli", "__main__"),
]


def rank(module: str) -> int:
    name = module.removeprefix("provisioner").lstrip(".")
    for i, layer in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in layer):
            return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in {Path(__file__).name} and to docs/design.md")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every provisioner module `path` imports (relative imports resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if not target.startswith("provisioner"):
                continue
            if node.module:
                found.add(target)
            else:  # `from . import marker`: the names are modules
                found.update(f"{target}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("provisioner"))
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py")  # the root is the facade


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_point_down(path: Path) -> None:
    me = rank(module_name(path))
    upward = sorted(t for t in imports(path) if t != "provisioner" and rank(t) > me)
    assert not upward, f"{module_name(path)} (layer {me}) imports higher layers: {upward}"


def test_the_rule_can_fail() -> None:
    assert rank("provisioner.state.marker") < rank("provisioner.api")
    assert rank("provisioner.verify.checksums") < rank("provisioner.fetch.engine") < rank("provisioner.verify.policy")
