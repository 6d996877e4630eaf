#!/usr/bin/env bash
# Sourced by the other scripts/podman-*.sh: the podman settings that work on our machines.
# Writes <tools dir>/podman/containers.conf (runc as the OCI runtime, bounded default ulimits: the
# machine's own limits are too high for runc's defaults) and exports CONTAINERS_CONF pointing at it,
# unless CONTAINERS_CONF is already set. Also defines the names the scripts share.
#
# Env: MP_TOOLS_DIR (default <repo>/.tools), CONTAINERS_CONF (use this file instead).

podman_repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
podman_tools_dir="${MP_TOOLS_DIR:-$podman_repo_root/.tools}"

# The base image scripts/podman-base.sh makes and scripts/podman-image.sh builds on.
MP_PODMAN_BASE_IMAGE="${MP_PODMAN_BASE_IMAGE:-localhost/debian-py}"
# The slim (EMBED=0) image scripts/podman-image.sh builds.
MP_PODMAN_IMAGE="${MP_PODMAN_IMAGE:-localhost/model-provisioner:slim}"

podman_log() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }

if [ -z "${CONTAINERS_CONF:-}" ]; then
    mkdir -p "$podman_tools_dir/podman"
    CONTAINERS_CONF="$podman_tools_dir/podman/containers.conf"
    cat >"$CONTAINERS_CONF.tmp" <<'CONF'
# Written by scripts/podman-env.sh.
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1000:1000"]

[engine]
runtime = "runc"
CONF
    mv -f "$CONTAINERS_CONF.tmp" "$CONTAINERS_CONF"
fi
export CONTAINERS_CONF MP_PODMAN_BASE_IMAGE MP_PODMAN_IMAGE

if ! command -v podman >/dev/null 2>&1; then
    podman_log "podman is not installed: run scripts/install-tools.sh"
    exit 1
fi
