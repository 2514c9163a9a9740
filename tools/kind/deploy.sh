#!/usr/bin/env bash
# Deploy simmesh on the kind cluster: load the image, helm install the chart with it, run
# `simmesh prepare`, and wait until `simmesh check` passes. Idempotent (helm upgrade --install).
#
#   tools/kind/deploy.sh [IMAGE] [HELM_ARGS...]     IMAGE defaults to simmesh/simmesh:dev
#   e.g. tools/kind/deploy.sh simmesh/simmesh:dev --set acl=true
#
# The image is loaded into every node (kind load) and the chart runs it with
# imagePullPolicy Never: a pod never tries a registry. The release and the mesh namespace are
# both `simmesh`. The simmesh CLI (prepare, check) runs here, with the cluster's kubeconfig.
set -euo pipefail
LOG_TAG=deploy
. "$(dirname "$0")/lib.sh"

IMAGE=${1:-simmesh/simmesh:dev}
shift || true
SIMMESH=${SIMMESH:-simmesh}
NAMESPACE=simmesh
HELM=$(bash "$ROOT/tools/k8s-bins.sh" --print-dir)/helm
KIND_BIN=$(bash "$ROOT/tools/kind/kind.sh")
export KUBECONFIG=$KUBECONFIG_FILE

cluster_exists "$KIND_BIN" ||
    die "no kind cluster $CLUSTER_NAME: run make kind-up"
[ -x "$HELM" ] || die "no helm in $(dirname "$HELM"): run make k8s-bins"
docker image inspect "$IMAGE" >/dev/null 2>&1 || die "no image $IMAGE: run make image"

load() {
    if loaded_everywhere; then
        log "every node already has $IMAGE ($(docker image inspect -f '{{.Id}}' "$IMAGE" | cut -c1-19))"
        return 0
    fi
    "$KIND_BIN" load docker-image "$IMAGE" --name "$CLUSTER_NAME" >/dev/null
}

# Whether every node's containerd has this very image (its config digest is the Docker image
# ID). kind checks this itself with crictl, which the offline node image does not have, so
# without this every deploy would copy the image again (about 20 s).
loaded_everywhere() {
    local want ref node digest config
    want=$(docker image inspect -f '{{.Id}}' "$IMAGE") || return 1
    ref=$IMAGE
    case ${ref%%/*} in
    *.* | *:* | localhost) ;;
    *) [[ $ref == */* ]] && ref=docker.io/$ref || ref=docker.io/library/$ref ;;
    esac
    for node in $("$KIND_BIN" get nodes --name "$CLUSTER_NAME"); do
        digest=$(docker exec "$node" ctr -n k8s.io images ls "name==$ref" 2>/dev/null |
            awk 'NR == 2 {print $3}')
        [ -n "$digest" ] || return 1
        config=$(docker exec "$node" ctr -n k8s.io content get "$digest" 2>/dev/null |
            python3 -c 'import json, sys; print(json.load(sys.stdin)["config"]["digest"])' 2>/dev/null)
        [ "$config" = "$want" ] || return 1
    done
}

# A release left pending by an interrupted deploy (Ctrl-C or a kill during `helm --wait`)
# makes every later helm upgrade fail with "another operation is in progress". No helm of
# ours is running on it (checked), so it is stale: an install is uninstalled, an upgrade or
# rollback rolled back to the release before it.
recover() {
    local status
    status=$("$HELM" status simmesh --namespace "$NAMESPACE" -o json 2>/dev/null |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["info"]["status"])' 2>/dev/null) ||
        return 0
    case $status in
    pending-*) ;;
    *) return 0 ;;
    esac
    if command -v pgrep >/dev/null && pgrep -f "helm (upgrade|install|rollback|uninstall).*simmesh" >/dev/null; then
        die "release simmesh is $status and a helm on this machine is still working on it: wait for it"
    fi
    if [ "$status" = pending-install ]; then
        log "release simmesh was left $status by an interrupted deploy: uninstalling it"
        "$HELM" uninstall simmesh --namespace "$NAMESPACE" --wait --timeout 120s >/dev/null
    else
        log "release simmesh was left $status by an interrupted deploy: rolling it back"
        "$HELM" rollback simmesh --namespace "$NAMESPACE" --wait --timeout 180s >/dev/null
    fi
}

install() {
    local repo=${IMAGE%:*} tag=${IMAGE##*:} part id
    id=$(docker image inspect -f '{{.Id}}' "$IMAGE")
    local sets=()
    for part in controller proxy; do
        sets+=(--set "$part.image.repository=$repo" --set "$part.image.tag=$tag"
            --set "$part.image.pullPolicy=Never"
            # a rebuilt image under the same tag changes the pod template: helm rolls the pods
            --set-string "$part.podAnnotations.simmesh\.io/image-id=$id")
    done
    "$HELM" upgrade --install simmesh "$ROOT/charts/simmesh" --namespace "$NAMESPACE" \
        --create-namespace "${sets[@]}" "$@" --wait --timeout 180s >/dev/null
}

prepare() { "$SIMMESH" prepare --kubeconfig "$KUBECONFIG_FILE" --namespace "$NAMESPACE" >&2; }

wait_check() {
    "$SIMMESH" check --kubeconfig "$KUBECONFIG_FILE" --namespace "$NAMESPACE" --wait 180 >&2 ||
        die "simmesh check did not pass within 180s"
}

step "kind load docker-image $IMAGE" load
step "a release left pending by an interrupted deploy" recover
step "helm upgrade --install simmesh ${*:-}" install "$@"
step "simmesh prepare" prepare
step "simmesh check" wait_check
log "simmesh is deployed; export KUBECONFIG=$KUBECONFIG_FILE"
