#!/usr/bin/env bash
# Install the Python side: torch FIRST as the local CPU wheel (anything else pulls a multi-GB CUDA
# build), then the project with the given extras (default: test), then the hub emulator (its own
# distribution in emulator/, used by the tests, the demo and the benchmarks). Idempotent and quiet.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras="${1:-test}"
py="${PYTHON:-python3}"
if ! "$py" -c 'import torch, sys; sys.exit(0 if torch.__version__.startswith("2.13.0") else 1)' 2>/dev/null; then
    echo "install-python: torch==2.13.0 (CPU)" >&2
    "$py" -m pip install -q --disable-pip-version-check torch==2.13.0
fi
echo "install-python: model-provisioner[$extras]" >&2
"$py" -m pip install -q --disable-pip-version-check -e "$repo_root[$extras]"
echo "install-python: model-provisioner-hub-emulator" >&2
"$py" -m pip install -q --disable-pip-version-check -e "$repo_root/emulator"
# olah, a third-party Hugging Face mirror server, in its own venv (its FastAPI/uvicorn pins stay out of
# the project's environment); tests/test_real_mirror.py runs it offline on loopback.
olah_venv="$repo_root/.tools/olah-venv"
if [ ! -x "$olah_venv/bin/olah-cli" ]; then
    echo "install-python: olah (real HF mirror for the tests, in .tools/olah-venv)" >&2
    "$py" -m venv "$olah_venv"
    "$olah_venv/bin/pip" install -q --disable-pip-version-check olah==0.5.4
fi
