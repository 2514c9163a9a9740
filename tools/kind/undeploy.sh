#!/usr/bin/env bash
# Undo tools/kind/deploy.sh: `simmesh cleanup` (the cluster DNS restored byte for byte, shadow
# Services deleted), `helm uninstall`, and the mesh namespace deleted. The SMI CRDs stay, as
# helm leaves CRDs. Idempotent.
set -euo pipefail
LOG_TAG=undeploy
. "$(dirname "$0")/lib.sh"

SIMMESH=${SIMMESH:-simmesh}
NAMESPACE=simmesh
HELM=$(bash "$ROOT/tools/k8s-bins.sh" --print-dir)/helm
KUBECTL=$(kubectl_bin)
export KUBECONFIG=$KUBECONFIG_FILE
[ -f "$KUBECONFIG_FILE" ] || { log "no kubeconfig $KUBECONFIG_FILE: no cluster, nothing to undeploy"; exit 0; }

if "$KUBECTL" get namespace "$NAMESPACE" >/dev/null 2>&1; then
    step "simmesh cleanup" "$SIMMESH" cleanup --kubeconfig "$KUBECONFIG_FILE" --namespace "$NAMESPACE"
fi
if "$HELM" status simmesh --namespace "$NAMESPACE" >/dev/null 2>&1; then
    step "helm uninstall simmesh" "$HELM" uninstall simmesh --namespace "$NAMESPACE" --wait --timeout 120s
fi
step "delete namespace $NAMESPACE" "$KUBECTL" delete namespace "$NAMESPACE" --ignore-not-found --wait --timeout=120s
log "simmesh is undeployed"
