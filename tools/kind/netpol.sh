#!/usr/bin/env bash
# The offline kind cluster's NetworkPolicy enforcer: kube-router's network policy controller
# (github.com/cloudnativelabs/kube-router/v2, $KUBE_ROUTER_VERSION of deploy/kind/versions.env),
# built from the Go module proxy, in an image made from a Debian rootfs (iptables, ipset), run
# as the DaemonSet kube-system/simmesh-netpol (deploy/kind/netpol.yaml). Nothing is pulled.
#
#   tools/kind/netpol.sh build      the binary, unless cached: $SIMMESH_BIN_CACHE (default
#                                   ~/.cache/simmesh/bin)/kube-router-<V>/kube-router; prints it
#   tools/kind/netpol.sh built      exit 0 if that binary is there (builds nothing)
#   tools/kind/netpol.sh image      build + the image $NETPOL_IMAGE (default simmesh/netpol:dev),
#                                   re-imported only when the binary or the rootfs changed
#   tools/kind/netpol.sh install    image + kind load into the cluster's nodes + apply the
#                                   DaemonSet; waits until it runs on every node (idempotent)
#   tools/kind/netpol.sh check      exit 1 unless the DaemonSet is ready on every node
#   tools/kind/netpol.sh uninstall  delete the DaemonSet and its RBAC, and take its iptables
#                                   chains out of every node (offline nodes: docker exec)
#
# Why not kube-network-policies (sigs.k8s.io/kube-network-policies, kind's own enforcer): it
# sends each new connection to userspace with the nftables `queue` statement, and this kernel
# is built without CONFIG_NFT_QUEUE (`nft add rule ... queue num 100` fails with "Could not
# process rule: No such file or directory"); kube-router needs only iptables (nft backend),
# ipset and the physdev match, all built in. The stock path (kind's own node image) needs none
# of this: kindnet enforces NetworkPolicies itself.
#
# The Go build runs under `nice -n 19` except under CI (CI=true); NETPOL_NICE overrides.
set -euo pipefail
LOG_TAG=netpol
. "$(dirname "$0")/lib.sh"

NETPOL_IMAGE=${NETPOL_IMAGE:-simmesh/netpol:dev}
BIN_CACHE=${SIMMESH_BIN_CACHE:-$CACHE/bin}
KR_MODULE=github.com/cloudnativelabs/kube-router/v2
KR_OUT=$BIN_CACHE/kube-router-$KUBE_ROUTER_VERSION
KR_BIN=$KR_OUT/kube-router
SERVICE_CIDR=$(sed -n 's/^ *serviceSubnet: *//p' "$ROOT/deploy/kind/cluster.yaml")
MANIFEST=$ROOT/deploy/kind/netpol.yaml

build() {
    if [ -x "$KR_BIN" ]; then log "kube-router $KUBE_ROUTER_VERSION: cached ($KR_BIN)"; echo "$KR_BIN"; return; fi
    command -v go >/dev/null || die "the go command is required to build kube-router"
    local nice logfile tmp t
    if [ "${CI:-}" = true ]; then nice=${NETPOL_NICE:-0}; else nice=${NETPOL_NICE:-19}; fi
    mkdir -p "$KR_OUT" "$BIN_CACHE/logs"
    logfile=$BIN_CACHE/logs/kube-router-$KUBE_ROUTER_VERSION.log
    tmp=$(mktemp -d "$KR_OUT/.bin.XXXXXX")
    log "building kube-router $KUBE_ROUTER_VERSION (go install $KR_MODULE/cmd/kube-router, log: $logfile)"
    t=$(date +%s)
    # `go install module@version`: kube-router's own go.mod decides every dependency
    if ! (cd "$tmp" && GOTOOLCHAIN=${GOTOOLCHAIN:-local} GOWORK=off CGO_ENABLED=0 GOFLAGS=-mod=mod \
            GOBIN=$tmp with_heartbeat nice -n "$nice" go install -trimpath -ldflags="-s -w" \
            "$KR_MODULE/cmd/kube-router@$KUBE_ROUTER_VERSION" >"$logfile" 2>&1); then
        rm -rf "$tmp"
        tail -n 30 "$logfile" >&2
        die "building kube-router failed (log: $logfile)"
    fi
    mv "$tmp/kube-router" "$KR_BIN"
    rm -rf "$tmp"
    log "kube-router $KUBE_ROUTER_VERSION built in $(($(date +%s) - t))s"
    echo "$KR_BIN"
}

# The image's label io.simmesh.inputs: a hash of the binary and the rootfs tarball's name.
image() {
    local bin rootfs inputs have tree
    bin=$(build)
    rootfs=$(bash "$ROOT/tools/kind/rootfs.sh" netpol)
    inputs=$( (sha256sum <"$bin"; basename "$rootfs") | sha256sum | cut -c1-16)
    bash "$ROOT/tools/kind/docker.sh" up
    have=$(docker image inspect -f '{{index .Config.Labels "io.simmesh.inputs"}}' "$NETPOL_IMAGE" 2>/dev/null || true)
    if [ "$have" = "$inputs" ]; then log "image $NETPOL_IMAGE: current"; echo "$NETPOL_IMAGE"; return; fi
    tree=$(mktemp -d "${TMPDIR:-/tmp}/simmesh-netpol-image.XXXXXX")
    TREE=$tree
    trap 'rm -rf "$TREE"' EXIT
    tar -C "$tree" -xf "$rootfs"
    chmod 0755 "$tree"
    mkdir -p "$tree/usr/local/bin" "$tree/tmp" "$tree/run"
    chmod 1777 "$tree/tmp"
    install -m 0755 "$bin" "$tree/usr/local/bin/kube-router"
    tar -C "$tree" --numeric-owner -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENTRYPOINT ["/usr/local/bin/kube-router"]' \
        --change "LABEL io.simmesh.inputs=$inputs io.simmesh.kube-router-version=$KUBE_ROUTER_VERSION" \
        - "$NETPOL_IMAGE" >/dev/null
    rm -rf "$tree"
    log "built $NETPOL_IMAGE: $(docker image inspect -f '{{.Size}}' "$NETPOL_IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
    echo "$NETPOL_IMAGE"
}

kubectl() { "$(kubectl_bin)" --kubeconfig "$KUBECONFIG_FILE" "$@"; }
manifest() { sed -e "s|@IMAGE@|$NETPOL_IMAGE|g" -e "s|@SERVICE_CIDR@|$SERVICE_CIDR|g" "$MANIFEST"; }

install_netpol() {
    local kind_bin
    kind_bin=$(bash "$ROOT/tools/kind/kind.sh")
    cluster_exists "$kind_bin" ||
        die "no kind cluster $CLUSTER_NAME: run make kind-up"
    image >/dev/null
    step "kind load $NETPOL_IMAGE" "$kind_bin" load docker-image "$NETPOL_IMAGE" --name "$CLUSTER_NAME"
    # the image's ID in the pod template: a new image under the same tag rolls the pods
    manifest | sed "s|@IMAGE_ID@|$(docker image inspect -f '{{.Id}}' "$NETPOL_IMAGE" | cut -c8-19)|" |
        kubectl apply -f - >/dev/null
    step "DaemonSet kube-system/simmesh-netpol ready on every node" \
        kubectl -n kube-system rollout status daemonset/simmesh-netpol --timeout=180s >/dev/null
}

check() {
    local ds want ready
    ds=$(kubectl -n kube-system get daemonset simmesh-netpol \
        -o jsonpath='{.status.desiredNumberScheduled} {.status.numberReady}' 2>/dev/null) ||
        { echo "no DaemonSet kube-system/simmesh-netpol"; return 1; }
    read -r want ready <<<"$ds"
    echo "simmesh-netpol: $ready of $want nodes ready"
    [ -n "$want" ] && [ "$want" -gt 0 ] && [ "$want" = "$ready" ]
}

# Delete the DaemonSet and RBAC, then take kube-router's chains out of every node's filter
# table (its own --cleanup-config leaves them with the nft backend); its ipsets stay, unused.
uninstall() {
    local kind_bin node
    manifest | sed "s|@IMAGE_ID@|none|" | kubectl delete --ignore-not-found --wait=true -f - >/dev/null
    # its pods go after the DaemonSet; one still running could write its chains again
    kubectl -n kube-system wait --for=delete pod -l app.kubernetes.io/name=simmesh-netpol \
        --timeout=90s >/dev/null 2>&1 || die "the simmesh-netpol pods did not go"
    kind_bin=$(bash "$ROOT/tools/kind/kind.sh")
    for node in $("$kind_bin" get nodes --name "$CLUSTER_NAME"); do
        docker exec "$node" sh -c 'iptables-save -t filter |
            grep -v -e KUBE-ROUTER -e KUBE-POD-FW -e KUBE-NWPLCY | iptables-restore' ||
            die "could not remove kube-router's rules from $node"
    done
    log "uninstalled; every node's filter table is without kube-router's chains"
}

case "${1:-}" in
    build) build ;;
    built) [ -x "$KR_BIN" ] ;;
    image) image ;;
    install) install_netpol ;;
    check) check ;;
    uninstall) uninstall ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' ;;
    *) echo "usage: $0 build|built|image|install|check|uninstall" >&2; exit 2 ;;
esac
