"""Route status against a real kube-apiserver: the chart's Gateway API CRDs (v1.6.3, standard
channel, their validation and status subresource) installed, the controller run as a process,
and the status.parents it writes on HTTPRoutes and GRPCRoutes read back from the API server:
conditions and reasons per Service parent, observedGeneration, controllerName, another
controller's entry kept, a fixed route flipping its condition, a route that loses its Service
parent losing our entry."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s import apiserver as harness
from tests.k8s.test_conformance import apply_every_manifest
from tests.k8s.test_controller_k8s import ControllerProcess, namespace, service, wait_for

pytestmark = pytest.mark.k8s
ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "charts" / "simmesh" / "files" / "gateway-api"
API = "gateway.networking.k8s.io/v1"
OURS = "simmesh.io/mesh-controller"
NS = "rs-a"
OTHER = {
    "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"},
    "controllerName": "example.net/gateway-controller",
    "conditions": [
        {
            "type": "Accepted",
            "status": "True",
            "reason": "Accepted",
            "message": "",
            "observedGeneration": 1,
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }
    ],
}


def gateway_crds() -> list[dict[str, Any]]:
    return [yaml.safe_load(p.read_text()) for p in sorted(CRDS.glob("*.yaml"))]


@pytest.fixture
def controller(apiserver: harness.Cluster, tmp_path: Path) -> Iterator[Callable[[], Any]]:
    started: list[ControllerProcess] = []

    def start() -> ControllerProcess:
        proc = ControllerProcess(apiserver, "mesh-rs", [NS], tmp_path / "controller.log")
        started.append(proc.start())
        return proc

    yield start
    for proc in started:
        proc.stop()


def route(
    name: str,
    parents: list[dict[str, Any]],
    backends: list[dict[str, Any]],
    kind: str = "HTTPRoute",
) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": kind,
        "metadata": {"name": name},
        "spec": {"parentRefs": parents, "rules": [{"backendRefs": backends}]},
    }


def svc_parent(name: str, port: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"group": "", "kind": "Service", "name": name}
    if port is not None:
        out["port"] = port
    return out


def path(kind: str, name: str = "") -> str:
    plural = {"HTTPRoute": "httproutes", "GRPCRoute": "grpcroutes"}[kind]
    return f"/apis/{API}/namespaces/{NS}/{plural}" + (f"/{name}" if name else "")


def create(cluster: harness.Cluster, doc: dict[str, Any]) -> None:
    cluster.create(path(doc["kind"]), doc)


def ours(cluster: harness.Cluster, kind: str, name: str) -> list[dict[str, Any]]:
    parents = (cluster.get(path(kind, name)).get("status") or {}).get("parents") or []
    return [p for p in parents if p["controllerName"] == OURS]


def conds(entry: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in entry["conditions"]}


def test_route_status_is_written_per_service_parent(
    apiserver: harness.Cluster, controller: Callable[[], ControllerProcess]
) -> None:
    apiserver.install_crds(gateway_crds())
    namespace(apiserver, NS)
    service(apiserver, NS, "web")
    service(apiserver, NS, "web-v2")
    service(apiserver, NS, "api")
    create(apiserver, route("valid", [svc_parent("web", 80)], [{"name": "web-v2", "port": 80}]))
    create(apiserver, route("no-backend", [svc_parent("web")], [{"name": "nope", "port": 80}]))
    create(apiserver, route("ghost", [svc_parent("ghost")], [{"name": "web", "port": 80}]))
    create(apiserver, route("h", [svc_parent("api", 80)], [{"name": "web", "port": 80}]))
    create(
        apiserver,
        route("g", [svc_parent("api", 80)], [{"name": "web", "port": 80}], kind="GRPCRoute"),
    )
    # another controller's entry on a route that names a Gateway and a Service
    shared = route("shared", [{"name": "gw"}, svc_parent("web")], [{"name": "web", "port": 80}])
    create(apiserver, shared)
    apiserver.merge_patch(path("HTTPRoute", "shared") + "/status", {"status": {"parents": [OTHER]}})

    controller()

    def written(kind: str, name: str) -> list[dict[str, Any]] | None:
        return ours(apiserver, kind, name) or None

    valid = wait_for(lambda: written("HTTPRoute", "valid"), what="status of valid")
    assert len(valid) == 1
    assert valid[0]["parentRef"] == {"group": "", "kind": "Service", "name": "web", "port": 80}
    assert conds(valid[0]) == {
        "Accepted": ("True", "Accepted"),
        "ResolvedRefs": ("True", "ResolvedRefs"),
    }
    assert {c["observedGeneration"] for c in valid[0]["conditions"]} == {1}
    # written once: the status it wrote is the status it wants (no write per rebuild)
    version = apiserver.get(path("HTTPRoute", "valid"))["metadata"]["resourceVersion"]
    service(apiserver, NS, "unrelated")  # a rebuild
    time.sleep(1.0)
    assert apiserver.get(path("HTTPRoute", "valid"))["metadata"]["resourceVersion"] == version

    no_backend = wait_for(lambda: written("HTTPRoute", "no-backend"), what="no-backend")
    assert conds(no_backend[0]) == {
        "Accepted": ("True", "Accepted"),
        "ResolvedRefs": ("False", "BackendNotFound"),
    }
    ghost = wait_for(lambda: written("HTTPRoute", "ghost"), what="ghost")
    assert conds(ghost[0])["Accepted"] == ("False", "NoMatchingParent")
    loser = wait_for(lambda: written("HTTPRoute", "h"), what="conflict loser")
    assert conds(loser[0])["Accepted"] == ("False", "Conflicted")
    winner = wait_for(lambda: written("GRPCRoute", "g"), what="conflict winner")
    assert conds(winner[0])["Accepted"] == ("True", "Accepted")

    wait_for(lambda: written("HTTPRoute", "shared"), what="shared")
    parents = apiserver.get(path("HTTPRoute", "shared"))["status"]["parents"]
    assert parents[0] == OTHER  # kept as it was, in its place
    assert [p["controllerName"] for p in parents] == [OTHER["controllerName"], OURS]

    # fixing the route flips ResolvedRefs, at the new generation; Accepted keeps its time
    accepted_since = no_backend[0]["conditions"][0]["lastTransitionTime"]
    apiserver.merge_patch(
        path("HTTPRoute", "no-backend"),
        {"spec": {"rules": [{"backendRefs": [{"name": "web-v2", "port": 80}]}]}},
    )

    def fixed() -> list[dict[str, Any]] | None:
        entry = ours(apiserver, "HTTPRoute", "no-backend")
        return entry if entry and conds(entry[0])["ResolvedRefs"][0] == "True" else None

    entry = wait_for(fixed, what="the fixed route's ResolvedRefs")[0]
    assert conds(entry)["ResolvedRefs"] == ("True", "ResolvedRefs")
    assert {c["observedGeneration"] for c in entry["conditions"]} == {2}
    assert entry["conditions"][0]["lastTransitionTime"] == accepted_since

    # a route that no longer names the Service loses our entry, not the other's
    apiserver.merge_patch(path("HTTPRoute", "shared"), {"spec": {"parentRefs": [{"name": "gw"}]}})
    wait_for(lambda: not ours(apiserver, "HTTPRoute", "shared"), what="our entry removed")
    assert apiserver.get(path("HTTPRoute", "shared"))["status"]["parents"] == [OTHER]

    # the parent Service appears: the route is accepted
    service(apiserver, NS, "ghost")

    def accepted() -> bool:
        entry = ours(apiserver, "HTTPRoute", "ghost")
        return bool(entry) and conds(entry[0])["Accepted"] == ("True", "Accepted")

    wait_for(accepted, what="ghost accepted once its Service exists")

    # a route the core rejects as a whole (a regular expression outside RE2, which the CRD
    # allows): Accepted False, UnsupportedValue, naming the field; fixed, it is accepted
    regex = route("regex", [svc_parent("web", 80)], [{"name": "web", "port": 80}])
    match = {"path": {"type": "RegularExpression", "value": "/(a)\\1"}}
    regex["spec"]["rules"][0]["matches"] = [match]
    create(apiserver, regex)
    rejected = wait_for(lambda: written("HTTPRoute", "regex"), what="the rejected route's status")
    assert conds(rejected[0]) == {"Accepted": ("False", "UnsupportedValue")}
    message = rejected[0]["conditions"][0]["message"]
    assert message.startswith("spec.rules[0].matches[0].path.value: "), message
    match["path"]["value"] = "/(a)+"
    apiserver.merge_patch(path("HTTPRoute", "regex"), {"spec": {"rules": regex["spec"]["rules"]}})

    def regex_fixed() -> bool:
        entry = ours(apiserver, "HTTPRoute", "regex")
        return bool(entry) and conds(entry[0]).get("Accepted") == ("True", "Accepted")

    wait_for(regex_fixed, what="the fixed regex route accepted")
    assert conds(ours(apiserver, "HTTPRoute", "regex")[0])["ResolvedRefs"] == (
        "True",
        "ResolvedRefs",
    )


def test_the_gamma_conformance_cases_routes_are_accepted_and_read_by_the_core(
    apiserver: harness.Cluster,
) -> None:
    """The HTTPRoutes and GRPCRoutes the conformance cases write (tests/k8s/test_conformance.py
    applies their other objects): the CRDs' validation accepts each, and read back it parses."""
    apiserver.install_crds(gateway_crds())
    apply_every_manifest(apiserver, gateway=True)
