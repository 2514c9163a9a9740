#!/usr/bin/env bash
# Delete the simmesh kind cluster and, offline, its Docker network and the host's egress rule.
# Idempotent. Docker itself is left running (tools/kind/docker.sh down stops it).
set -euo pipefail
LOG_TAG=kind-down
. "$(dirname "$0")/lib.sh"

[ -x "$KIND_BIN" ] || { log "no kind binary: nothing to delete"; exit 0; }
if ! timeout 10 docker info >/dev/null 2>&1; then log "no Docker engine: nothing to delete"; exit 0; fi
if cluster_exists "$KIND_BIN"; then
    step "kind delete cluster $CLUSTER_NAME" "$KIND_BIN" delete cluster --name "$CLUSTER_NAME" \
        --kubeconfig "$KUBECONFIG_FILE"
fi
# The network and the host's egress rule are shared by every offline cluster (SIMMESH_CLUSTER
# names another one): kept while another cluster's nodes are on the network.
if docker network inspect simmesh-kind >/dev/null 2>&1; then
    others=$(docker network inspect -f '{{range .Containers}}{{.Name}} {{end}}' simmesh-kind)
    if [ -n "$others" ]; then
        rm -f "$KUBECONFIG_FILE"
        log "cluster $CLUSTER_NAME is down; the docker network simmesh-kind and the host's egress rule stay (in use by: $others)"
        exit 0
    fi
    docker network rm simmesh-kind >/dev/null
fi
for ipt in iptables ip6tables; do
    command -v $ipt >/dev/null || continue
    while $ipt -D DOCKER-USER -i br-simmesh ! -o br-simmesh -j SIMMESH-KIND-EGRESS 2>/dev/null; do :; done
    if $ipt -F SIMMESH-KIND-EGRESS 2>/dev/null; then $ipt -X SIMMESH-KIND-EGRESS 2>/dev/null || true; fi
done
rm -f "$KUBECONFIG_FILE"
log "cluster $CLUSTER_NAME is down"
