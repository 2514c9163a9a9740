#!/usr/bin/env bash
# Create the simmesh kind cluster (deploy/kind/cluster.yaml: one control plane, two workers),
# or reuse it when it already runs. Idempotent.
#
# Stock (a user with internet): kind's own node image and configuration.
# Offline (this machine, CI; see offline_reason in lib.sh):
#   - the node image of tools/kind/node-image.sh, with deploy/kind/offline-patches.yaml;
#   - a Docker network of its own (bridge br-simmesh, no masquerading) and, on the host, a
#     DOCKER-USER rule that counts and drops every packet that would leave that bridge for
#     another interface (chain SIMMESH-KIND-EGRESS; the cluster tests read its counter);
#   - CoreDNS from kubeadm's manifest without the upstream `forward`;
#   - with KIND_NETPOL=1, a NetworkPolicy enforcer (the offline pod network enforces none):
#     kube-router's policy controller, tools/kind/netpol.sh install (built from the Go module
#     proxy and cached; docs/install.md has its cost). Stock kind's kindnet enforces them itself.
# The kubeconfig is written to $KUBECONFIG_FILE (never ~/.kube/config).
set -euo pipefail
LOG_TAG=kind-up
. "$(dirname "$0")/lib.sh"

NETWORK=simmesh-kind
BRIDGE=br-simmesh
KUBECTL=
kubectl() { "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

exists() { cluster_exists "$KIND_BIN"; }

network() {
    if ! docker network inspect "$NETWORK" >/dev/null 2>&1; then
        docker network create --driver bridge -o "com.docker.network.bridge.name=$BRIDGE" \
            -o com.docker.network.bridge.enable_ip_masquerade=false "$NETWORK" >/dev/null
    fi
    log "docker network $NETWORK: $(docker network inspect -f '{{(index .IPAM.Config 0).Subnet}}' "$NETWORK") on $BRIDGE"
    host_guard
}

# Count and drop anything leaving the kind bridge for any other interface (IPv4 and IPv6).
host_guard() {
    local ipt
    for ipt in iptables ip6tables; do
        $ipt -N SIMMESH-KIND-EGRESS 2>/dev/null || true
        $ipt -C SIMMESH-KIND-EGRESS -j DROP 2>/dev/null || $ipt -A SIMMESH-KIND-EGRESS -j DROP
        $ipt -N DOCKER-USER 2>/dev/null || true
        $ipt -C DOCKER-USER -i "$BRIDGE" ! -o "$BRIDGE" -j SIMMESH-KIND-EGRESS 2>/dev/null ||
            $ipt -I DOCKER-USER -i "$BRIDGE" ! -o "$BRIDGE" -j SIMMESH-KIND-EGRESS
        $ipt -C FORWARD -j DOCKER-USER 2>/dev/null || $ipt -I FORWARD -j DOCKER-USER
    done
}

config() {
    local out=$KIND_CACHE/$CLUSTER_NAME-kind.yaml
    cp "$ROOT/deploy/kind/cluster.yaml" "$out"
    if [ "$MODE" = offline ]; then
        sed -e "s/@ETCD_VERSION@/$ETCD_VERSION/g" -e "s/@COREDNS_VERSION@/$COREDNS_VERSION/g" \
            "$ROOT/deploy/kind/offline-patches.yaml" >>"$out"
    fi
    echo "$out"
}

create() {
    local args=(create cluster --name "$CLUSTER_NAME" --config "$(config)" --kubeconfig "$KUBECONFIG_FILE"
        --wait 3m)
    if [ "$MODE" = offline ]; then
        args+=(--image "$NODE_IMAGE")
        export KIND_EXPERIMENTAL_DOCKER_NETWORK=$NETWORK
    fi
    "$KIND_BIN" "${args[@]}" 2>&1 | grep -v "Here be dragons\|Overriding docker network" >&2
    return "${PIPESTATUS[0]}"
}

# kubeadm's CoreDNS manifest (same image, RBAC and Deployment) with `forward` taken out.
coredns_without_forward() {
    local manifest
    manifest=$(docker exec "$CLUSTER_NAME-control-plane" kubeadm init phase addon coredns \
        --config /kind/kubeadm.conf --print-manifest 2>/dev/null |
        sed '/^ *forward \. \/etc\/resolv\.conf/,/^ *}/d')
    if grep -q 'forward' <<<"$manifest"; then die "could not take forward out of the Corefile"; fi
    kubectl apply -f - <<<"$manifest" >/dev/null
}

wait_ready() {
    kubectl wait --for=condition=Ready nodes --all --timeout=180s >/dev/null
    # `kind create --wait` returns before the default ServiceAccount exists
    for _ in $(seq 1 120); do
        kubectl -n default get serviceaccount default >/dev/null 2>&1 && break
        sleep 1
    done
    kubectl -n kube-system rollout status deployment/coredns --timeout=180s >/dev/null
}

main() {
    local t0; t0=$(date +%s)
    bash "$ROOT/tools/kind/docker.sh" up
    KIND_BIN=$(bash "$ROOT/tools/kind/kind.sh")
    MODE=stock
    local reason
    if reason=$(offline_reason); then
        MODE=offline
        log "offline path ($reason)"
        NODE_IMAGE=$(bash "$ROOT/tools/kind/node-image.sh")
    else
        log "stock path: kind's node image (set SIMMESH_OFFLINE=1 for the offline path)"
    fi
    KUBECTL=$(kubectl_bin)
    if exists; then
        log "cluster $CLUSTER_NAME exists; reusing it"
        local running
        running=$(docker inspect -f '{{.Config.Image}}' "$CLUSTER_NAME-control-plane" 2>/dev/null || true)
        if [ "$MODE" = offline ] && [ "$running" != "$NODE_IMAGE" ]; then
            log "note: it runs $running; the current node image is $NODE_IMAGE (make kind-down kind-up to use it)"
        fi
        "$KIND_BIN" export kubeconfig --name "$CLUSTER_NAME" --kubeconfig "$KUBECONFIG_FILE" 2>/dev/null
        [ "$MODE" = stock ] || host_guard
    else
        [ "$MODE" = stock ] || network
        step "kind create cluster $CLUSTER_NAME" create
        [ "$MODE" = stock ] || step "CoreDNS without upstream forwarding" coredns_without_forward
    fi
    step "nodes Ready, default ServiceAccount, CoreDNS" wait_ready
    if [ "${KIND_NETPOL:-0}" = 1 ]; then
        if [ "$MODE" = offline ]; then
            step "NetworkPolicy enforcer (tools/kind/netpol.sh install)" bash "$ROOT/tools/kind/netpol.sh" install
        else
            log "KIND_NETPOL=1: kind's own CNI (kindnet) enforces NetworkPolicies; nothing to install"
        fi
    fi
    kubectl get nodes -o wide >&2
    log "cluster $CLUSTER_NAME up in $(($(date +%s) - t0))s; export KUBECONFIG=$KUBECONFIG_FILE"
}

main "$@"
