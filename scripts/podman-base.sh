#!/usr/bin/env bash
# Make the base image scripts/podman-image.sh builds on: Debian bookworm (debootstrap minbase) with
# python3 (3.11), python3-venv and ca-certificates, imported into podman's store as
# $MP_PODMAN_BASE_IMAGE (default localhost/debian-py). No image registry is reachable on our
# machines, so this replaces `FROM python:3.11-slim-bookworm`.
#
# Cached: does nothing when the image already exists (MP_PODMAN_BASE_REBUILD=1 rebuilds it).
# The Debian mirror is the first bookworm `main` source configured for apt on this host
# (MP_DEBIAN_MIRROR overrides). Needs root (debootstrap) and the tools from scripts/install-tools.sh.
set -euo pipefail
# shellcheck source=podman-env.sh
. "$(dirname "${BASH_SOURCE[0]}")/podman-env.sh"

if [ "${MP_PODMAN_BASE_REBUILD:-0}" != "1" ] && podman image exists "$MP_PODMAN_BASE_IMAGE"; then
    podman_log "$MP_PODMAN_BASE_IMAGE already exists"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    podman_log "debootstrap needs root: run this script as root (or import a python3.11 Debian image yourself)"
    exit 1
fi
if ! command -v debootstrap >/dev/null 2>&1; then
    podman_log "debootstrap is not installed: run scripts/install-tools.sh"
    exit 1
fi

# The apt mirror of this host: one-line sources.list entries first, then deb822 *.sources files.
debian_mirror() {
    local uri
    uri="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
        | awk '$1 == "deb" && $3 == "bookworm" && / main/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }')"
    if [ -z "$uri" ]; then
        uri="$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '
            /^$/ { if (suite && main && u) { print u; exit } u = ""; suite = 0; main = 0 }
            /^URIs:/ { u = $2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == "bookworm") suite = 1 }
            /^Components:/ { for (i = 2; i <= NF; i++) if ($i == "main") main = 1 }
            END { if (suite && main && u) print u }' | head -n1)"
    fi
    printf '%s\n' "${uri:-http://deb.debian.org/debian}"
}
mirror="${MP_DEBIAN_MIRROR:-$(debian_mirror)}"

work="$(mktemp -d "${TMPDIR:-/tmp}/podman-base.XXXXXX")"
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"

podman_log "debootstrap bookworm from $mirror (a few minutes)"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }

# `python` as in the python:* images; drop what no container uses (package caches, docs, manuals,
# translations).
ln -sf python3 "$rootfs/usr/bin/python"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* \
    "$rootfs"/var/log/*.log \
    "$rootfs"/debootstrap

old_id="$(podman image inspect --format '{{.Id}}' "$MP_PODMAN_BASE_IMAGE" 2>/dev/null || true)"
# Without the PATH change, containers fail with `exec: "sh": executable file not found`.
tar -C "$rootfs" --numeric-owner -c . | podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/sh"]' \
    --quiet - "$MP_PODMAN_BASE_IMAGE" >/dev/null
podman_log "imported $MP_PODMAN_BASE_IMAGE ($(podman image inspect --format '{{.Size}}' "$MP_PODMAN_BASE_IMAGE") bytes)"
if [ -n "$old_id" ]; then  # a rebuild: drop the previous base unless an image still builds on it
    podman rmi "$old_id" >/dev/null 2>&1 || true
fi
