#!/usr/bin/env bash
# The full test suite, from a fresh machine: Python deps, real tools (helm, kubectl, promtool,
# prometheus), lint, types, pytest, then the quick mutation run (docs/testing.md). Extra arguments go
# to pytest (and skip the mutation run).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
bash scripts/install-python.sh test
bash scripts/install-tools.sh
export PATH="$repo_root/.tools/bin:$PATH"
# Tool-backed tests skip when a tool is absent (handy on a laptop); here a missing tool is an install bug.
for tool in helm kubectl promtool prometheus prometheus-pushgateway hadolint kubernetes-validate podman debootstrap; do
    command -v "$tool" >/dev/null || { echo "test: $tool is missing after install" >&2; exit 1; }
done
echo "test: ruff" >&2
ruff check provisioner tests benchmarks scripts emulator
echo "test: mypy" >&2
mypy provisioner
mypy emulator/hub_emulator
echo "test: pytest" >&2
export MP_STRICT_SKIPS=1  # a skip not in tests/allowed_skips.txt fails the run
python3 -m pytest -q -p no:cacheprovider "$@"
if [ "$#" -eq 0 ]; then  # the whole suite: also check that the safety modules' unit tests kill mutants
    echo "test: mutation (quick)" >&2
    python3 scripts/mutation.py --quick
fi
