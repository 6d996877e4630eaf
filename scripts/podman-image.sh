#!/usr/bin/env bash
# Build the model-provisioner image from the repo's Dockerfile on the debootstrap base
# (scripts/podman-base.sh, made first if missing) and print its size, unpacked and gzip-compressed.
#
#   scripts/podman-image.sh [slim]   # EMBED=0: checksums only, no torch; tag $MP_PODMAN_IMAGE
#                                    # (default localhost/model-provisioner:slim). The one CI builds.
#   scripts/podman-image.sh full     # EMBED=1: CPU torch + sentence-transformers (verify=full); tag
#                                    # $MP_PODMAN_FULL_IMAGE (default localhost/model-provisioner:full).
#                                    # Slow (~1 GB): built by hand to measure it, not in CI.
#
# pip inside the build reaches the package index the way this host's pip does: its CA bundle goes in as
# the build secret `host-ca`, a configured index URL as the build-stage ARG PIP_INDEX_URL, and podman passes
# the host's *_PROXY variables to RUN steps without storing them. For `full`, the host pip's local
# find-links directories (where a CPU torch wheel may lie) are mounted read-only into the RUN steps
# (`podman build -v`) and named in the build-stage ARG PIP_FIND_LINKS. None of that ends up in the final
# image (tests/test_image_podman.py checks its Config.Env).
#
# Env: MP_PODMAN_EMBED (0/1; overrides the variant's), MP_PODMAN_CA_BUNDLE (the CA bundle; default: pip's
#      `cert` setting, else /etc/ssl/certs/ca-certificates.crt), MP_PODMAN_BUILD_ARGS (extra `podman build`
#      arguments), MP_PODMAN_SIZE=0 (skip the size measurement).
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"
# shellcheck source=podman-env.sh
. "$here/podman-env.sh"

variant="${1:-slim}"
case "$variant" in
    slim) embed="${MP_PODMAN_EMBED:-0}" ;;
    full)
        embed="${MP_PODMAN_EMBED:-1}"
        MP_PODMAN_IMAGE="${MP_PODMAN_FULL_IMAGE:-localhost/model-provisioner:full}"
        ;;
    *) podman_log "usage: $0 [slim|full]"; exit 2 ;;
esac

bash "$here/podman-base.sh"

pip_setting() {  # the host pip's value of one setting, from the environment or its config files
    local env_name="$1" key="$2" value
    value="${!env_name:-}"
    if [ -z "$value" ] && command -v python3 >/dev/null 2>&1; then
        value="$(python3 -m pip config get "$key" 2>/dev/null || true)"
    fi
    printf '%s' "$value"
}

# Revision and date go in as --label, not as the Dockerfile's build args: buildah 1.28 reuses a cached
# LABEL step whose ARG values changed (a stale label), and a changing ARG re-runs every later RUN step.
revision="$(git -C "$podman_repo_root" rev-parse HEAD 2>/dev/null || echo unknown)"
created="$(git -C "$podman_repo_root" log -1 --format=%cI 2>/dev/null || echo unknown)"
args=(--pull=never --layers --build-arg "PYTHON_IMAGE=$MP_PODMAN_BASE_IMAGE"
      --build-arg "EMBED=$embed"
      --label "org.opencontainers.image.revision=$revision"
      --label "org.opencontainers.image.created=$created")

ca="${MP_PODMAN_CA_BUNDLE:-$(pip_setting PIP_CERT global.cert)}"
[ -n "$ca" ] || ca=/etc/ssl/certs/ca-certificates.crt
if [ -s "$ca" ]; then
    args+=(--secret "id=host-ca,src=$ca")
fi
index="$(pip_setting PIP_INDEX_URL global.index-url)"
case "$index" in
    http://* | https://*) args+=(--build-arg "PIP_INDEX_URL=$index") ;;
    *) ;;  # not set, or a local file:// index the build cannot see: the Dockerfile's default (PyPI) applies
esac
if [ "$embed" = "1" ]; then  # local wheel directories of the host's pip (a CPU torch wheel), mounted read-only
    links=()
    n=0
    for link in $(pip_setting PIP_FIND_LINKS global.find-links); do
        link="${link#file://}"
        if [ -d "$link" ]; then
            args+=(-v "$link:/run/host-wheels/$n:ro")
            links+=("/run/host-wheels/$n")
            n=$((n + 1))
        fi
    done
    if [ "$n" -gt 0 ]; then
        args+=(--build-arg "PIP_FIND_LINKS=${links[*]}")
    fi
fi
# shellcheck disable=SC2206  # word splitting wanted: a list of extra arguments
args+=(${MP_PODMAN_BUILD_ARGS:-})

old_id="$(podman image inspect --format '{{.Id}}' "$MP_PODMAN_IMAGE" 2>/dev/null || true)"
podman_log "building $MP_PODMAN_IMAGE on $MP_PODMAN_BASE_IMAGE"
podman build "${args[@]}" -t "$MP_PODMAN_IMAGE" -f "$podman_repo_root/Dockerfile" "$podman_repo_root"
new_id="$(podman image inspect --format '{{.Id}}' "$MP_PODMAN_IMAGE")"
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then  # the previous build, unless a container still uses it
    podman rmi "$old_id" >/dev/null 2>&1 || true
fi

if [ "${MP_PODMAN_SIZE:-1}" != "0" ]; then
    unpacked="$(podman image inspect --format '{{.Size}}' "$MP_PODMAN_IMAGE")"
    compressed="$(podman save --format docker-archive "$MP_PODMAN_IMAGE" 2>/dev/null | gzip -6 -c | wc -c)"
    base="$(podman image inspect --format '{{.Size}}' "$MP_PODMAN_BASE_IMAGE")"
    printf 'image %s: %s bytes unpacked (%s MB; base %s MB), %s bytes as gzip of `podman save` (%s MB)\n' \
        "$MP_PODMAN_IMAGE" "$unpacked" "$((unpacked / 1000000))" "$((base / 1000000))" \
        "$compressed" "$((compressed / 1000000))"
fi
