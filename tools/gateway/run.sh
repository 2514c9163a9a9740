#!/usr/bin/env bash
# `make conformance-gateway`: the official Gateway API mesh conformance suite (MESH-HTTP and
# MESH-GRPC, every mesh test simmesh supports) against simmesh on the kind cluster.
#
#   tools/gateway/run.sh [IMAGE] [HELM_ARGS...]     IMAGE defaults to simmesh/simmesh:dev
#
# 1. builds the suite and Istio's echo app if missing (tools/gateway/build.sh, cached);
# 2. builds the echo image under the name the suite's manifests use and loads it into every
#    node (imagePullPolicy IfNotPresent: a loaded image is never pulled);
# 3. deploys simmesh with the chart's Gateway API CRDs (gatewayAPI.installCRDs, the same
#    bundle version as the suite, which checks it) and GAMMA capture on (gatewayAPI.capture.enabled:
#    the suite calls Services by their cluster names, so their ClusterIPs must reach the proxy);
# 4. runs the suite with the supported features below, writing the upstream ConformanceReport
#    to out/conformance/gateway/report.yaml and its log beside it;
# 5. undeploys simmesh (the suite deletes its own namespaces).
#
# Environment: GATEWAY_FEATURES (the --supported-features list; default: every mesh feature but
# those exempted in docs/conformance.md), GATEWAY_ARGS (more suite flags, e.g.
# --run-test=MeshHTTPRouteWeight or --cleanup-base-resources=false), GATEWAY_VALUES (the chart
# values instead of the two above), GATEWAY_KEEP=1 leaves simmesh
# deployed afterwards. Exit status: the suite's (0 when every test it ran passed).
set -euo pipefail
LOG_TAG=conformance-gateway
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../kind/lib.sh
. "$HERE/../kind/lib.sh"

IMAGE=${1:-simmesh/simmesh:dev}
shift || true
OUT=$ROOT/out/conformance/gateway
KIND=$(bash "$ROOT/tools/kind/kind.sh")
export KUBECONFIG=$KUBECONFIG_FILE

# Every mesh feature of the v1.6 suite: the two profiles' core (Mesh, HTTPRoute, GRPCRoute) and
# extended features, and the Gateway HTTPRoute features the out-of-profile mesh tests need.
# A feature simmesh cannot pass is left out here, with the reason in docs/conformance.md.
DEFAULT_FEATURES=(
    Mesh HTTPRoute GRPCRoute
    MeshClusterIPMatching MeshConsumerRoute
    MeshHTTPRouteRewritePath MeshHTTPRouteSchemeRedirect MeshHTTPRouteRedirectPort
    MeshHTTPRouteRedirectPath MeshHTTPRouteBackendRequestHeaderModification
    MeshHTTPRouteQueryParamMatching MeshHTTPRouteNamedRouteRule
    HTTPRouteResponseHeaderModification HTTPRouteParentRefPort
    HTTPRoute303RedirectStatusCode HTTPRoute307RedirectStatusCode HTTPRoute308RedirectStatusCode
)
FEATURES=${GATEWAY_FEATURES:-$(IFS=,; echo "${DEFAULT_FEATURES[*]}")}

cluster_exists "$KIND" ||
    die "no kind cluster $CLUSTER_NAME: run make kind-up"

step "the suite and the echo app (tools/gateway/build.sh)" with_heartbeat bash "$HERE/build.sh"
SUITE=$(bash "$HERE/build.sh" --print-dir conformance)/gateway-conformance.test

load_echo() {
    local image
    image=$(bash "$HERE/echo-image.sh")
    "$KIND" load docker-image "$image" --name "$CLUSTER_NAME" >/dev/null
    log "loaded $image into every node"
}
step "the echo image" load_echo

undeploy() { [ "${GATEWAY_KEEP:-}" = 1 ] || bash "$ROOT/tools/kind/undeploy.sh"; }
trap undeploy EXIT
# shellcheck disable=SC2086 # GATEWAY_VALUES is a list of helm flags
step "simmesh with the Gateway API CRDs and GAMMA capture" bash "$ROOT/tools/kind/deploy.sh" \
    "$IMAGE" ${GATEWAY_VALUES:---set gatewayAPI.installCRDs=true --set gatewayAPI.capture.enabled=true} "$@"

mkdir -p "$OUT"
version=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo dev)
log "the suite (features: $FEATURES); log in $OUT/suite.log"
rc=0
# shellcheck disable=SC2086 # GATEWAY_ARGS is a list of flags
with_heartbeat "$SUITE" -test.v -test.timeout 60m -test.run TestGatewayAPIMeshConformance \
    --supported-features="$FEATURES" --report-output="$OUT/report.yaml" --version="$version" \
    ${GATEWAY_ARGS:-} >"$OUT/suite.log" 2>&1 || rc=$?
# the verdict of each test the suite ran (the suite lists every other test of its 150 as skipped:
# counted, not printed), and the report's summary
grep -E '^ {0,4}--- (PASS|FAIL)' "$OUT/suite.log" || true
log "$(grep -cE '^ {4}--- SKIP' "$OUT/suite.log" || true) tests of other features skipped (see $OUT/suite.log)"
[ -f "$OUT/report.yaml" ] && sed -n '/^profiles:/,$p' "$OUT/report.yaml" | grep -E 'name:|result:|statistics|Passed|Failed|Skipped|failedTests|- Mesh' || true
log "suite exit $rc; report in $OUT/report.yaml"
# A run of the whole suite passes only when every profile's core and extended tests passed:
# the suite itself exits 0 on a "partial" profile (tests skipped for a feature left out).
if [ "$rc" = 0 ] && [ -z "${GATEWAY_ARGS:-}" ]; then
    python3 - "$OUT/report.yaml" <<'PY' || rc=1
import sys
import yaml

report = yaml.safe_load(open(sys.argv[1]))
bad = []
for profile in report.get("profiles") or []:
    for level in ("core", "extended"):
        part = profile.get(level)
        if part and part.get("result") != "success":
            bad.append(f"{profile['name']} {level}: {part.get('result')} ({part.get('statistics')})")
for line in bad:
    print(f"conformance-gateway: {line}", file=sys.stderr)
sys.exit(1 if bad or not report.get("profiles") else 0)
PY
fi
exit $rc
