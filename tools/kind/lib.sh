# Shared by the tools/kind/*.sh scripts (sourced, not run).
#
# Everything built here lives in a cache OUTSIDE the repository, never committed:
#   $SIMMESH_CACHE (default ~/.cache/simmesh)/kind/   kind binary, rootfs and image tarballs,
#                                                     kubeconfig, docker daemon config and logs
# Versions: deploy/kind/versions.env (kind, Debian suite) and tools/k8s-versions.env
# (Kubernetes, etcd, CoreDNS, built by tools/k8s-bins.sh).

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=../../deploy/kind/versions.env
. "$ROOT/deploy/kind/versions.env"
# shellcheck source=../k8s-versions.env
. "$ROOT/tools/k8s-versions.env"

CACHE=${SIMMESH_CACHE:-$HOME/.cache/simmesh}
KIND_CACHE=$CACHE/kind
KIND_BIN=$KIND_CACHE/bin/kind-$KIND_VERSION/kind
CLUSTER_NAME=${SIMMESH_CLUSTER:-simmesh}
KUBECONFIG_FILE=${SIMMESH_KUBECONFIG:-$KIND_CACHE/$CLUSTER_NAME.kubeconfig}
mkdir -p "$KIND_CACHE"

# cluster_exists KIND_BIN: whether kind has a cluster $CLUSTER_NAME. grep reads the whole list:
# `grep -q` stops at the first match and kind, still writing the next name, dies of SIGPIPE,
# which pipefail turns into "no cluster" (2 in 40 calls with the clusters np and simmesh).
cluster_exists() { "$1" get clusters 2>/dev/null | grep -x "$CLUSTER_NAME" >/dev/null; }

_T0=$(date +%s)
log() { printf '[%s %s +%ss] %s\n' "${LOG_TAG:-kind}" "$(date +%H:%M:%S)" "$(($(date +%s) - _T0))" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# step NAME CMD...: run CMD, print how long it took (the times quoted in docs/install.md).
step() {
    local name=$1; shift
    local t; t=$(date +%s)
    log "$name ..."
    "$@"
    log "$name: done in $(($(date +%s) - t))s"
}

# with_heartbeat CMD...: a line every 30 s while a long step runs, so CI logs show progress.
with_heartbeat() {
    local t; t=$(date +%s)
    ( while sleep 30; do log "  ... still running ($(($(date +%s) - t))s): $1"; done ) &
    local hb=$! rc=0
    "$@" || rc=$?
    kill "$hb" 2>/dev/null || true
    wait "$hb" 2>/dev/null || true
    return $rc
}

# The offline path (this machine, CI) builds the kind node image and every image locally and
# applies this machine's workarounds; the stock path (a user with internet on a usual host) uses
# kind's own node image. SIMMESH_OFFLINE=1|0 decides; unset, hosts where stock kind cannot
# boot (no CAP_SYS_RESOURCE in the bounding set, or cgroup v1) take the offline path.
offline_reason() {
    case "${SIMMESH_OFFLINE:-}" in
        1|true|yes) echo "SIMMESH_OFFLINE=$SIMMESH_OFFLINE"; return 0 ;;
        0|false|no) return 1 ;;
    esac
    if ! capsh_has_sys_resource; then echo "the capability bounding set lacks CAP_SYS_RESOURCE"; return 0; fi
    if [ ! -f /sys/fs/cgroup/cgroup.controllers ]; then echo "the host runs cgroup v1"; return 0; fi
    return 1
}

# CAP_SYS_RESOURCE is capability 24.
capsh_has_sys_resource() {
    local bnd; bnd=$(awk '/^CapBnd:/ {print $2}' /proc/self/status)
    (( (16#$bnd >> 24) & 1 ))
}

# kubectl for the host: the one tools/k8s-bins.sh builds (the cluster's version), built first
# when missing.
kubectl_bin() {
    local dir; dir=$(bash "$ROOT/tools/k8s-bins.sh" --print-dir)
    if [ ! -x "$dir/kubectl" ]; then
        log "building kubectl $KUBERNETES_VERSION (tools/k8s-bins.sh kubectl)"
        bash "$ROOT/tools/k8s-bins.sh" kubectl >&2 || die "could not build kubectl"
    fi
    echo "$dir/kubectl"
}
