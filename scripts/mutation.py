#!/usr/bin/env python3
"""Mutation testing (mutmut) of the modules that carry the safety claims; see docs/testing.md.

    python scripts/mutation.py --quick       # journal, checksums, place against their unit tests (CI size)
    python scripts/mutation.py               # + frontier, engine, policy, marker, plan (in-process tests)
    python scripts/mutation.py --module provisioner/place.py --tests tests/test_place.py

The run happens in a scratch copy of the repository (mutmut rewrites the sources it mutates into
`mutants/`), so the checkout is never touched. mutmut runs the tests in-process: tests that start
`python -m provisioner` in a subprocess import the unmutated package and cannot kill a mutant, so the
selections below name the in-process test files only. Prints a score per module and every surviving
mutant; exits 1 if a module scores below its floor (--quick and --check), else 0.
Needs `pip install mutmut` (the `test` extra installs it).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# module -> the in-process test files that exercise it
_FETCH_UNITS = [f"tests/test_fetch.py::{t}" for t in (
    "test_part_key_is_path_and_expected_hash", "test_layout_covers_the_file_exactly",
    "test_start_writeback_uses_sync_file_range_on_linux")]
QUICK: dict[str, list[str]] = {
    "provisioner/fetch/journal.py": ["tests/test_journal.py", "tests/test_journal_io.py", *_FETCH_UNITS],
    "provisioner/verify/checksums.py": ["tests/test_checksums.py"],
    "provisioner/place.py": ["tests/test_place.py"],
}
FULL: dict[str, list[str]] = {
    **QUICK,
    "provisioner/fetch/frontier.py": ["tests/test_fetch.py"],
    "provisioner/fetch/engine.py": ["tests/test_fetch.py"],
    "provisioner/verify/policy.py": ["tests/test_fetch.py", "tests/test_provision_e2e.py"],
    "provisioner/state/marker.py": ["tests/test_marker.py"],
    # (the planner properties in test_bad_input.py also reach these functions, but through real HTTP and
    # hundreds of examples each: ~20 s per surviving mutant; test_plan_rules.py is their unit test)
    "provisioner/plan.py": ["tests/test_plan_rules.py"],
}
# plan.py: only its path-safety functions carry a safety claim; the rest is reported but not scored.
SCORED_FUNCTIONS = {"provisioner/plan.py": ("safe_repo_path", "check_no_conflicts")}
# Floors for --quick (the CI gate): the score after triage (docs/testing.md lists the survivors).
QUICK_FLOORS = {"provisioner/fetch/journal.py": 0.88, "provisioner/verify/checksums.py": 0.88,
                "provisioner/place.py": 0.95}
# Lines whose mutants say nothing about safety: debug logging.
NO_MUTATE_PATTERNS = [r"log\.debug\("]
KILLED = {1, 3, 36, -24, 24, 152, 255, -11, -9, 37}  # a failing test, a timeout or a crash all kill
STATUS = {0: "survived", 33: "no tests", 5: "no tests", 34: "skipped", None: "not checked"}


def _copy_tree(work: Path, source: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "mutants", ".mypy_cache",
                                    ".ruff_cache", ".tools", "*.egg-info")
    for name in ("provisioner", "tests", "emulator"):
        shutil.copytree(source / name, work / name, ignore=ignore)
    shutil.copy2(source / "pyproject.toml", work / "pyproject.toml")


def _exists(work: Path, test: str) -> bool:
    """The test file exists (and, for a node id, defines that test): older trees lack newer tests."""
    path, _, name = test.partition("::")
    file = work / path
    return file.exists() and (not name or f"def {name}(" in file.read_text(encoding="utf-8"))


def _write_config(work: Path, selection: dict[str, list[str]]) -> None:
    tests = sorted({t for ts in selection.values() for t in ts if _exists(work, t)})
    lines = ["[mutmut]", "source_paths = provisioner", "only_mutate ="]
    lines += [f"    {m}" for m in selection]
    lines += ["pytest_add_cli_args_test_selection ="] + [f"    {t}" for t in tests]
    lines += ["pytest_add_cli_args =", "    -p", "    no:cacheprovider", "    -q"]
    lines += ["do_not_mutate_patterns ="] + [f"    {p}" for p in NO_MUTATE_PATTERNS]
    lines += ["use_git_change_detection = false", ""]
    (work / "setup.cfg").write_text("\n".join(lines), encoding="utf-8")


def _name_filter(selection: dict[str, list[str]]) -> list[str]:
    """mutmut mutant-name globs: every mutant of each module, but only the scored functions where those
    are named (no time spent on mutants that are not scored). Empty: no filter needed."""
    if not any(m in SCORED_FUNCTIONS for m in selection):
        return []
    globs = []
    for module in selection:
        dotted = module.removesuffix(".py").replace("/", ".")
        scored = SCORED_FUNCTIONS.get(module)
        globs += [f"{dotted}.x_{f}__mutmut_*" for f in scored] if scored else [f"{dotted}.*"]
    return globs


def _module_of(mutant: str) -> tuple[str, str]:
    """'provisioner.fetch.journal.x__load__mutmut_3' -> ('provisioner/fetch/journal.py', '_load')."""
    head, _, rest = mutant.partition(".x")
    name = rest.split("__mutmut_")[0].lstrip("_ǁ").split("ǁ")[-1]
    return head.replace(".", "/") + ".py", name


def _results(work: Path) -> dict[str, dict[str, int | None]]:
    out: dict[str, dict[str, int | None]] = {}
    for meta in (work / "mutants").rglob("*.py.meta"):
        data = json.loads(meta.read_text(encoding="utf-8"))
        for key, code in data.get("exit_code_by_key", {}).items():
            module, _ = _module_of(key)
            out.setdefault(module, {})[key] = code
    return out


def report(work: Path, selection: dict[str, list[str]]) -> dict[str, float]:
    scores: dict[str, float] = {}
    results = _results(work)
    for module in selection:
        codes = results.get(module, {})
        scored = SCORED_FUNCTIONS.get(module)
        if scored:
            codes = {k: v for k, v in codes.items() if _module_of(k)[1] in scored}
        counts = Counter("killed" if c in KILLED else STATUS.get(c, "suspicious") for c in codes.values())
        total = sum(counts.values())
        score = counts["killed"] / total if total else 1.0
        scores[module] = score
        label = module + (f" ({', '.join(scored)})" if scored else "")
        print(f"{label}: {counts['killed']}/{total} killed = {score:.0%}  {dict(counts)}")
        for key, code in sorted(codes.items()):
            if code not in KILLED:
                print(f"    {STATUS.get(code, 'suspicious')}: {key}")
    return scores


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="journal, checksums, place only (the CI subset)")
    ap.add_argument("--module", action="append", default=[], help="mutate only this module (repeatable)")
    ap.add_argument("--tests", action="append", default=[], help="with --module: the test files to run")
    ap.add_argument("--source", type=Path, default=ROOT, help="the tree to copy (default: this checkout)")
    ap.add_argument("--workdir", type=Path, help="scratch directory to keep (default: a temp dir, removed)")
    ap.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--check", action="store_true", help="exit 1 below the floors (implied by --quick)")
    ap.add_argument("--show", metavar="MUTANT", help="with --workdir of a finished run: print one mutant's diff")
    args = ap.parse_args(argv)

    if args.module:
        selection = {m: args.tests or FULL.get(m, []) for m in args.module}
    else:
        selection = QUICK if args.quick else FULL
    if importlib.util.find_spec("mutmut") is None:
        print("mutation: mutmut is not installed (pip install mutmut)", file=sys.stderr)
        return 2
    mutmut = [sys.executable, "-m", "mutmut"]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="mp-mutation-"))
    if args.show:
        return subprocess.call([*mutmut, "show", args.show], cwd=work)
    try:
        if work.exists() and any(work.iterdir()):
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        _copy_tree(work, args.source.resolve())
        _write_config(work, selection)
        env = dict(os.environ)
        # The emulator is a separate distribution the tests import; the package under test must come
        # from mutants/ (mutmut puts it first on sys.path), never from a PYTHONPATH entry.
        env["PYTHONPATH"] = str(work / "emulator")
        env.pop("MP_STRICT_SKIPS", None)  # a mutant may make a test skip: that counts as survived, not an error
        proc = subprocess.run([*mutmut, "run", "--max-children", str(args.max_children), *_name_filter(selection)], cwd=work, env=env,
                              stdout=subprocess.DEVNULL if not os.environ.get("MUTATION_VERBOSE") else None,
                              check=False)
        if proc.returncode != 0:
            print(f"mutation: mutmut run exited {proc.returncode} (MUTATION_VERBOSE=1 shows its output)",
                  file=sys.stderr)
            return 2
        scores = report(work, selection)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.quick or args.check:
        low = {m: s for m, s in scores.items() if s < QUICK_FLOORS.get(m, 0.0)}
        if low:
            print(f"mutation: below the floor: {low}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
