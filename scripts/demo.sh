#!/usr/bin/env bash
# The embedded default: install, then provision the bundled real all-MiniLM-L6-v2 from the local
# hub emulator (emulator/) into a temp dir (or $PROVISIONER_TARGET), with checksums and the embedding test.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo_root/scripts/install-python.sh" demo
exec model-provisioner demo "$@"
