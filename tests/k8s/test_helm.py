"""The Helm chart (charts/simmesh) with the real helm binary and the real test apiserver.

``helm lint`` and ``helm template`` render the chart; the rendered objects are checked against
the project's own code (mesh.core.parse.parse_settings reads the settings ConfigMap, the CLI's
argument parsers read the controller's and proxies' commands, mesh.core.shadow's proxy selector
matches the proxy pods, mesh.dns.corefile's server block is the mesh-owned CoreDNS's Corefile).
Then the kube-apiserver accepts every object (server-side dry run, strict field validation),
``helm install --dry-run=server`` and a real ``helm install`` work, the controller's
ServiceAccount holds exactly the permissions it needs (SubjectAccessReview), and the real
controller, run with that ServiceAccount's token and the installed command and settings,
creates a shadow Service. No kubelet runs: pods never start, and nothing waits for them.

helm comes from the k8s bin dir (``make k8s-bins``); missing, these tests skip, or fail under
CI=true.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mesh.core.model import PortRange, Settings
from mesh.core.parse import parse_settings
from mesh.core.shadow import PROXY_SELECTOR, SHADOW_LABEL, shadow_name

try:
    from . import apiserver as k8s_harness
except ImportError:
    import apiserver as k8s_harness  # type: ignore[no-redef]

pytestmark = pytest.mark.k8s

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "simmesh"
SCHEMA_ERROR = "values don't meet the specifications of the schema"
SMI_KINDS = {
    ("access.smi-spec.io", "traffictargets"),
    ("specs.smi-spec.io", "httproutegroups"),
    ("specs.smi-spec.io", "tcproutes"),
    ("specs.smi-spec.io", "udproutes"),
    ("split.smi-spec.io", "trafficsplits"),
}
CLUSTER_READS = {("", "services"), ("discovery.k8s.io", "endpointslices"), ("", "pods")}
GAMMA_KINDS = {
    ("gateway.networking.k8s.io", "httproutes"),
    ("gateway.networking.k8s.io", "grpcroutes"),
}
CLUSTER_READS |= {("", "namespaces"), *SMI_KINDS, *GAMMA_KINDS}


def _kube_version() -> str:
    for line in (REPO_ROOT / "tools" / "k8s-versions.env").read_text().splitlines():
        if line.startswith("KUBERNETES_VERSION="):
            return line.split("=", 1)[1].strip()
    raise AssertionError("KUBERNETES_VERSION missing from tools/k8s-versions.env")


class Helm:
    """The helm binary with private cache/config/data homes and no ambient kubeconfig."""

    def __init__(self, binary: Path, home: Path) -> None:
        self.binary = binary
        self.env = {key: value for key, value in os.environ.items() if not key.startswith("HELM_")}
        self.env.pop("KUBECONFIG", None)
        for name in ("CACHE", "CONFIG", "DATA"):
            self.env[f"HELM_{name}_HOME"] = str(home / name.lower())

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(self.binary), *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=REPO_ROOT,
            timeout=90,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{done.stderr}{done.stdout}")
        return done

    def template(
        self, *sets: str, namespace: str = "simmesh", check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        args = ["template", "simmesh", str(CHART), "-n", namespace]
        args += ["--kube-version", _kube_version()]
        for item in sets:
            args += ["--set", item]
        return self.run(*args, check=check)

    def render(self, *sets: str, namespace: str = "simmesh") -> list[dict[str, Any]]:
        out = self.template(*sets, namespace=namespace).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    try:
        found = k8s_harness.find_binaries(("helm",))
    except k8s_harness.BinaryMissing as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{exc}. CI must build them first: run make k8s-bins", pytrace=False)
        pytest.skip(f"run make k8s-bins ({exc})")
    return Helm(found["helm"], tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="module")
def default_docs(helm: Helm) -> list[dict[str, Any]]:
    return helm.render()


@pytest.fixture(scope="module")
def acl_docs(helm: Helm) -> list[dict[str, Any]]:
    return helm.render("acl=true", "watchNamespaces={a,b}")


# --------------------------------------------------------------------------- helpers


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
    return found[0]


def container(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    containers = one(docs, kind, name)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]  # type: ignore[no-any-return]


def settings_of(docs: list[dict[str, Any]]) -> Settings:
    return parse_settings(
        yaml.safe_load(one(docs, "ConfigMap", "simmesh-settings")["data"]["mesh.yaml"])
    )


def controller_settings(command: list[str], mesh_yaml: str, tmp_path: Path) -> Settings:
    """What `simmesh controller` makes of the rendered command and settings file."""
    from mesh.cli import build_parser
    from mesh.controller.main import settings_from

    (tmp_path / "mesh.yaml").write_text(mesh_yaml)
    argv = [str(tmp_path / "mesh.yaml") if a == "/etc/simmesh/mesh.yaml" else a for a in command]
    assert argv[0] == "simmesh"
    args = build_parser(argv[1:]).parse_args(argv[1:])
    return settings_from(args)


def allows(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    return any(
        group in r.get("apiGroups", [])
        and resource in r.get("resources", [])
        and verb in r.get("verbs", [])
        for r in rules
    )


def no_wildcards(rules: list[dict[str, Any]]) -> None:
    for rule in rules:
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule.get(key, []), rule


# --------------------------------------------------------------------------- lint and render


def test_lint(helm: Helm) -> None:
    for extra in ([], ["--set", "acl=true", "--set", "watchNamespaces={a,b}"]):
        done = helm.run("lint", "--strict", str(CHART), *extra)
        assert "0 chart(s) failed" in done.stdout, done.stdout


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert (chart["name"], chart["version"], str(chart["appVersion"])) == (
        "simmesh",
        "0.1.0",
        "0.1.0",
    )


def test_crds_ship_with_the_chart(helm: Helm) -> None:
    args = ["template", "simmesh", str(CHART), "--include-crds", "--kube-version", _kube_version()]
    docs = [d for d in yaml.safe_load_all(helm.run(*args).stdout) if d]
    shown = sorted(d["metadata"]["name"] for d in docs if d["kind"] == "CustomResourceDefinition")
    files = sorted(d["metadata"]["name"] for d in k8s_harness.load_crds())
    assert shown == files
    assert {tuple(name.split(".", 1)[::-1]) for name in files} == SMI_KINDS


def test_default_objects(default_docs: list[dict[str, Any]]) -> None:
    names = sorted((d["kind"], d["metadata"]["name"]) for d in default_docs)
    assert names == [
        ("ClusterRole", "simmesh-controller"),
        ("ClusterRoleBinding", "simmesh-controller"),
        ("ConfigMap", "simmesh-settings"),
        ("DaemonSet", "simmesh-proxy"),
        ("Deployment", "simmesh-controller"),
        ("Role", "simmesh-controller"),
        ("RoleBinding", "simmesh-controller"),
        ("Secret", "simmesh-proxy-token"),
        ("Service", "simmesh-controller"),
        ("ServiceAccount", "simmesh-controller"),
        ("ServiceAccount", "simmesh-proxy"),
    ]
    for doc in default_docs:
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == "simmesh", doc["metadata"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "simmesh"


def test_settings_configmap_is_the_default_settings(default_docs: list[dict[str, Any]]) -> None:
    assert settings_of(default_docs) == Settings(mesh_namespace="simmesh")


def test_settings_follow_the_values(helm: Helm) -> None:
    docs = helm.render(
        "zone=corp.mesh",
        "clusterDomain=k8s.example",
        "defaultTrafficType=tcp",
        "ignoreNamespaces={legacy}",
        "ports.http.start=6000",
        "ports.http.size=3",
        "ports.tcp.start=20000",
        "ports.tcp.size=50",
        "ports.udp.start=20000",
        "ports.udp.size=60",
        namespace="mesh-system",
    )
    assert settings_of(docs) == parse_settings(
        {
            "zone": "corp.mesh",
            "clusterDomain": "k8s.example",
            "meshNamespace": "mesh-system",
            "defaultTrafficType": "tcp",
            "acl": False,
            "watchNamespaces": [],
            "ignoreNamespaces": ["legacy"],
            "httpPorts": {"start": 6000, "size": 3},
            "tcpPorts": {"start": 20000, "size": 50},
            "udpPorts": {"start": 20000, "size": 60},
        }
    )
    proxy = container(docs, "DaemonSet", "simmesh-proxy")
    assert [(p["name"], p["containerPort"]) for p in proxy["ports"]] == [
        ("admin", 9901),
        ("http-0", 6000),
        ("http-1", 6001),
        ("http-2", 6002),
    ]
    url = "http://simmesh-controller.mesh-system.svc.k8s.example:9000"
    assert proxy["command"][proxy["command"].index("--controller") + 1] == url


def test_acl_and_watched_namespaces(
    default_docs: list[dict[str, Any]], acl_docs: list[dict[str, Any]], tmp_path: Path
) -> None:
    plain = container(default_docs, "Deployment", "simmesh-controller")["command"]
    acl = container(acl_docs, "Deployment", "simmesh-controller")["command"]
    assert "--acl" not in plain and "--watch-namespace" not in plain
    assert "--acl" in acl
    assert [acl[i + 1] for i, a in enumerate(acl) if a == "--watch-namespace"] == ["a", "b"]
    expected = Settings(mesh_namespace="simmesh", acl=True, watch_namespaces=("a", "b"))
    assert settings_of(acl_docs) == expected
    mesh_yaml = one(acl_docs, "ConfigMap", "simmesh-settings")["data"]["mesh.yaml"]
    assert controller_settings(acl, mesh_yaml, tmp_path) == expected
    plain_yaml = one(default_docs, "ConfigMap", "simmesh-settings")["data"]["mesh.yaml"]
    assert controller_settings(plain, plain_yaml, tmp_path) == Settings(mesh_namespace="simmesh")


def test_controller_deployment(default_docs: list[dict[str, Any]]) -> None:
    deployment = one(default_docs, "Deployment", "simmesh-controller")
    assert deployment["spec"]["replicas"] == 1
    # replaced by surging: the new controller is ready before the old one stops
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    pod = deployment["spec"]["template"]
    assert pod["spec"]["terminationGracePeriodSeconds"] == 30
    assert pod["spec"]["serviceAccountName"] == "simmesh-controller"
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    c = container(default_docs, "Deployment", "simmesh-controller")
    assert c["image"] == "ghcr.io/simmesh/simmesh:0.1.0"
    assert c["command"][:8] == [
        "simmesh",
        "controller",
        "--kubeconfig",
        "in-cluster",
        "--listen",
        "0.0.0.0:9000",
        "--settings",
        "/etc/simmesh/mesh.yaml",
    ]
    cmd = c["command"]
    assert cmd[cmd.index("--namespace") + 1] == "simmesh"
    assert cmd[cmd.index("--zone") + 1] == "mesh"
    assert cmd[cmd.index("--cluster-domain") + 1] == "cluster.local"
    assert c["ports"] == [{"name": "api", "containerPort": 9000, "protocol": "TCP"}]
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "api"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "api"}
    assert c["volumeMounts"] == [
        {"name": "settings", "mountPath": "/etc/simmesh", "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "token", "mountPath": "/var/run/simmesh/token", "readOnly": True},
    ]
    assert pod["spec"]["volumes"] == [
        {"name": "settings", "configMap": {"name": "simmesh-settings"}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "token", "secret": {"secretName": "simmesh-proxy-token"}},
    ]
    assert cmd[cmd.index("--token-file") + 1] == "/var/run/simmesh/token/token"
    assert cmd[cmd.index("--drain-delay") + 1] == "3"
    assert cmd[cmd.index("--route-status-controller-name") + 1] == "simmesh.io/mesh-controller"
    assert "--no-route-status" not in cmd
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    service = one(default_docs, "Service", "simmesh-controller")
    assert service["spec"]["type"] == "ClusterIP"
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(9000, "api")]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()


def test_proxy_daemonset(default_docs: list[dict[str, Any]]) -> None:
    from mesh.cli import build_parser

    daemonset = one(default_docs, "DaemonSet", "simmesh-proxy")
    # upgrades surge: a node's new proxy is ready before the old one stops (no host ports)
    assert daemonset["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    pod = daemonset["spec"]["template"]
    assert pod["spec"]["terminationGracePeriodSeconds"] == 60
    assert not pod["spec"].get("hostNetwork")
    # the controller's shadow Services select exactly this label
    assert PROXY_SELECTOR == {"app.kubernetes.io/name": "simmesh-proxy"}
    assert PROXY_SELECTOR.items() <= pod["metadata"]["labels"].items()
    assert daemonset["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert pod["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "9901",
        "prometheus.io/path": "/metrics",
    }
    c = container(default_docs, "DaemonSet", "simmesh-proxy")
    assert c["command"][:10] == [
        "simmesh",
        "proxy",
        "--controller",
        "http://simmesh-controller.simmesh.svc.cluster.local:9000",
        "--node",
        "$(NODE_NAME)",
        "--bind",
        "0.0.0.0",
        "--admin-port",
        "9901",
    ]
    args = build_parser(c["command"][1:]).parse_args(c["command"][1:])
    assert (args.controller, args.admin_port, args.log_level, args.workers) == (
        "http://simmesh-controller.simmesh.svc.cluster.local:9000",
        9901,
        "info",
        1,
    )
    # SIGTERM: 5 s still accepting, then 50 s for in-flight work, 5 s before SIGKILL
    assert (args.drain_delay, args.drain_timeout) == (5.0, 50.0)
    assert not any("hostPort" in p for p in c["ports"])
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {
        "fieldRef": {"apiVersion": "v1", "fieldPath": "spec.nodeName"}
    }
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env
    ports = {p["containerPort"] for p in c["ports"] if p["name"].startswith("http-")}
    assert ports == set(range(5000, 5010))
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert c["readinessProbe"]["periodSeconds"] == 2
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert c["resources"]["requests"] == {"cpu": "100m", "memory": "128Mi"}
    assert "nodeSelector" not in pod["spec"] and "tolerations" not in pod["spec"]


def test_proxy_values(helm: Helm) -> None:
    docs = helm.render(
        "tracing.otlpEndpoint=http://jaeger.tracing:4318",
        "proxy.image.tag=dev",
        "proxy.logLevel=debug",
        "proxy.accessLog=true",
        "proxy.workers=2",
        "proxy.nodeSelector.mesh=enabled",
        "proxy.tolerations[0].operator=Exists",
        "proxy.resources.limits.cpu=2",
        "proxy.drainDelaySeconds=10",
        "proxy.terminationGracePeriodSeconds=120",
        "proxy.maxSurge=25%",
        "controller.drainDelaySeconds=0",
        "metrics.prometheusAnnotations=false",
    )
    pod = one(docs, "DaemonSet", "simmesh-proxy")["spec"]["template"]
    c = pod["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger.tracing:4318"
    assert c["image"] == "ghcr.io/simmesh/simmesh:dev"
    assert "--access-log" in c["command"]
    assert c["command"][c["command"].index("--log-level") + 1] == "debug"
    assert c["command"][c["command"].index("--workers") + 1] == "2"
    assert pod["spec"]["nodeSelector"] == {"mesh": "enabled"}
    assert pod["spec"]["tolerations"] == [{"operator": "Exists"}]
    assert c["resources"]["limits"]["cpu"] == 2
    assert pod["spec"]["terminationGracePeriodSeconds"] == 120
    assert c["command"][c["command"].index("--drain-delay") + 1] == "10"
    assert c["command"][c["command"].index("--drain-timeout") + 1] == "105"
    strategy = one(docs, "DaemonSet", "simmesh-proxy")["spec"]["updateStrategy"]
    assert strategy["rollingUpdate"] == {"maxSurge": "25%", "maxUnavailable": 0}
    assert "annotations" not in pod["metadata"]
    controller_pod = one(docs, "Deployment", "simmesh-controller")["spec"]["template"]
    assert not any(
        k.startswith("prometheus.io/") for k in controller_pod["metadata"]["annotations"]
    )
    assert controller_pod["spec"]["containers"][0]["image"] == "ghcr.io/simmesh/simmesh:0.1.0"
    command = controller_pod["spec"]["containers"][0]["command"]
    assert command[command.index("--drain-delay") + 1] == "0"


def test_rbac(default_docs: list[dict[str, Any]]) -> None:
    cluster_rules = one(default_docs, "ClusterRole", "simmesh-controller")["rules"]
    no_wildcards(cluster_rules)
    for group, resource in CLUSTER_READS:
        for verb in ("get", "list", "watch"):
            assert allows(cluster_rules, group, resource, verb), (group, resource, verb)
    assert allows(cluster_rules, "", "events", "create")
    assert allows(cluster_rules, "", "events", "patch")
    assert not allows(cluster_rules, "", "namespaces", "create")
    assert not any(allows(cluster_rules, "", "services", v) for v in ("create", "delete"))
    assert not allows(cluster_rules, "", "secrets", "get")
    for group, resource in GAMMA_KINDS:  # the routes are read; only their status is written
        assert not allows(cluster_rules, group, resource, "update")
        assert not allows(cluster_rules, group, resource, "patch")
        for verb in ("get", "update", "patch"):
            assert allows(cluster_rules, group, f"{resource}/status", verb), (resource, verb)

    role_rules = one(default_docs, "Role", "simmesh-controller")["rules"]
    no_wildcards(role_rules)
    for verb in ("create", "update", "patch", "delete", "get", "list", "watch"):
        assert allows(role_rules, "", "services", verb), verb

    subject = {"kind": "ServiceAccount", "name": "simmesh-controller", "namespace": "simmesh"}
    for kind, role in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        binding = one(default_docs, kind, "simmesh-controller")
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": role,
            "name": "simmesh-controller",
        }
        assert binding["subjects"] == [subject]
    proxy_sa = one(default_docs, "ServiceAccount", "simmesh-proxy")
    assert proxy_sa["automountServiceAccountToken"] is False


IDENTITY_OBJECTS = {
    ("ClusterRole", "simmesh-controller-ca"),
    ("ClusterRoleBinding", "simmesh-controller-ca"),
    ("Role", "simmesh-controller-ca"),
    ("RoleBinding", "simmesh-controller-ca"),
    ("ClusterRole", "simmesh-proxy"),
    ("ClusterRoleBinding", "simmesh-proxy"),
    ("Role", "simmesh-proxy"),
    ("RoleBinding", "simmesh-proxy"),
}


def test_mtls_off_renders_no_identity_objects(default_docs: list[dict[str, Any]]) -> None:
    rendered = {(d["kind"], d["metadata"]["name"]) for d in default_docs}
    assert not IDENTITY_OBJECTS & rendered
    assert settings_of(default_docs).mtls.value == "off"
    proxy = container(default_docs, "DaemonSet", "simmesh-proxy")
    assert "--certificates" not in proxy["command"]
    assert "--tunnel-port" not in proxy["command"]
    assert not [p for p in proxy["ports"] if p["name"] == "tunnel"]


@pytest.mark.parametrize("mode", ["permissive", "strict"])
def test_mtls_renders_the_ca_its_rbac_and_the_proxies_certificates(
    helm: Helm, mode: str, tmp_path: Path
) -> None:
    from mesh.cli import build_parser
    from mesh.controller.main import settings_from

    docs = helm.render(f"mtls={mode}", "trustDomain=prod.example")
    rendered = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert rendered >= IDENTITY_OBJECTS
    settings = settings_of(docs)
    assert settings.mtls.value == mode and settings.trust_domain == "prod.example"
    # the commands parse with the programs' own parsers
    (tmp_path / "mesh.yaml").write_text(
        one(docs, "ConfigMap", "simmesh-settings")["data"]["mesh.yaml"]
    )
    local = {
        "/etc/simmesh/mesh.yaml": str(tmp_path / "mesh.yaml"),
        "/var/run/simmesh/certs": str(tmp_path),
    }
    cmd = [local.get(a, a) for a in container(docs, "Deployment", "simmesh-controller")["command"]]
    args = build_parser(cmd[1:]).parse_args(cmd[1:])
    assert settings_from(args).mtls.value == mode
    assert args.ca_secret == "simmesh-ca" and args.cert_lifetime == 86400.0
    assert args.ca_overlap >= args.cert_lifetime
    assert args.proxy_service_account == "simmesh/simmesh-proxy"
    publish_delay, check_interval = args.ca_publish_delay, args.ca_check_interval
    proxy = one(docs, "DaemonSet", "simmesh-proxy")["spec"]["template"]["spec"]
    assert proxy["automountServiceAccountToken"] is True
    cmd = [local.get(a, a) for a in proxy["containers"][0]["command"]]
    args = build_parser(cmd[1:]).parse_args(cmd[1:])
    assert args.certificates == "kubernetes" and args.mesh_namespace == "simmesh"
    # a new root is trusted by every proxy (each re-reads the bundle) before it signs
    assert (publish_delay, check_interval, args.trust_bundle_refresh) == (90.0, 30.0, 30.0)
    assert publish_delay >= 2 * args.trust_bundle_refresh
    # the tunnel: the proxy listens where its pod says, which is what the controller publishes
    assert args.tunnel_port == 15008
    tunnel = [p for p in proxy["containers"][0]["ports"] if p["name"] == "tunnel"]
    assert tunnel == [{"name": "tunnel", "containerPort": 15008, "protocol": "TCP"}]
    certs = next(v for v in proxy["volumes"] if v["name"] == "certs")
    assert certs["emptyDir"]["medium"] == "Memory"  # keys never on the node's disk
    # RBAC: exactly the CSR verbs, approve/sign only for our signer
    ca_rules = one(docs, "ClusterRole", "simmesh-controller-ca")["rules"]
    no_wildcards(ca_rules)
    group = "certificates.k8s.io"
    for verb in ("get", "list", "watch"):
        assert allows(ca_rules, group, "certificatesigningrequests", verb)
    assert allows(ca_rules, group, "certificatesigningrequests/approval", "update")
    assert allows(ca_rules, group, "certificatesigningrequests/status", "update")
    signers = [r for r in ca_rules if "signers" in r["resources"]]
    assert signers == [
        {
            "apiGroups": [group],
            "resources": ["signers"],
            "resourceNames": ["simmesh.io/workload"],
            "verbs": ["approve", "sign", "attest"],
        }
    ]
    assert not allows(ca_rules, group, "certificatesigningrequests", "create")
    proxy_rules = one(docs, "ClusterRole", "simmesh-proxy")["rules"]
    assert proxy_rules == [
        {
            "apiGroups": [group],
            "resources": ["certificatesigningrequests"],
            "verbs": ["create", "get"],
        }
    ]
    role = one(docs, "Role", "simmesh-proxy")["rules"]
    assert role == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["simmesh-trust-bundle"],
            "verbs": ["get"],
        }
    ]


@pytest.mark.parametrize("mode", ["permissive", "strict"])
def test_the_controller_takes_the_rendered_proxies_for_proxies(
    helm: Helm, mode: str, tmp_path: Path
) -> None:
    """A proxy pod as the DaemonSet makes it (its labels, ServiceAccount, namespace and port
    named tunnel), once scheduled and Ready, gives its node's tunnel address to the controller
    run with the rendered command and settings; the same pod outside the release's namespace
    does not."""
    from mesh.core.parse import parse_proxy_pod
    from mesh.core.topology import tunnel_addresses

    docs = helm.render(f"mtls={mode}", "proxy.tunnelPort=16008", namespace="mesh-sys")
    settings = controller_settings(
        container(docs, "Deployment", "simmesh-controller")["command"],
        one(docs, "ConfigMap", "simmesh-settings")["data"]["mesh.yaml"],
        tmp_path,
    )
    template = one(docs, "DaemonSet", "simmesh-proxy")["spec"]["template"]
    cmd = template["spec"]["containers"][0]["command"]
    assert cmd[cmd.index("--tunnel-port") + 1] == "16008"

    def scheduled(namespace: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "ProxyPod",
            "metadata": {**template["metadata"], "name": "simmesh-proxy-x", "namespace": namespace},
            "spec": {**template["spec"], "nodeName": "node-a"},
            "status": {
                "phase": "Running",
                "podIP": "10.0.0.7",
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }

    found = tunnel_addresses([parse_proxy_pod(scheduled("mesh-sys"))], settings)
    assert found == {"node-a": "10.0.0.7:16008"}
    assert tunnel_addresses([parse_proxy_pod(scheduled("default"))], settings) == {}


def test_mtls_objects_are_accepted_by_the_apiserver(
    helm: Helm, apiserver: k8s_harness.Cluster
) -> None:
    docs = helm.render("mtls=strict")
    status, out = apiserver.request("POST", "/api/v1/namespaces", {"metadata": {"name": "simmesh"}})
    assert status in (201, 409), out
    for doc in docs:
        if (doc["kind"], doc["metadata"]["name"]) not in IDENTITY_OBJECTS:
            continue
        api = doc["apiVersion"]
        plural = doc["kind"].lower() + "s"
        base = f"/apis/{api}"
        if doc["kind"] in ("Role", "RoleBinding"):
            base += "/namespaces/simmesh"
        status, out = apiserver.request(
            "POST", f"{base}/{plural}", doc, query={"dryRun": "All", "fieldValidation": "Strict"}
        )
        assert status in (200, 201), (doc["kind"], doc["metadata"]["name"], out)


def test_kubedns_coredns_serves_the_mesh_block(helm: Helm) -> None:
    from mesh.dns.corefile import DnsSettings, server_block

    docs = helm.render("kubedns=true", "zone=my-mesh", "clusterDomain=k8s.local", namespace="m-s")
    corefile = one(docs, "ConfigMap", "simmesh-coredns")["data"]["Corefile"]
    settings = DnsSettings(zone="my-mesh", mesh_namespace="m-s", cluster_domain="k8s.local")
    block = server_block(settings, port="1053", extra=("health :8080", "ready :8181"))
    assert corefile == "\n".join(block) + "\n"
    service = one(docs, "Service", "simmesh-coredns")
    assert {(p["port"], p["protocol"]) for p in service["spec"]["ports"]} == {
        (53, "UDP"),
        (53, "TCP"),
    }
    deployment = one(docs, "Deployment", "simmesh-coredns")
    assert deployment["spec"]["template"]["spec"]["dnsPolicy"] == "Default"
    rules = one(docs, "ClusterRole", "simmesh-coredns")["rules"]
    assert allows(rules, "discovery.k8s.io", "endpointslices", "watch")
    assert not any(d["metadata"]["name"] == "simmesh-coredns" for d in helm.render())


@pytest.mark.parametrize(
    "value",
    [
        "acl=yes",
        "acll=true",
        "zone=Not_A_Zone",
        "defaultTrafficType=grpc",
        "watchNamespaces={Bad_Name}",
        "ports.http.size=0",
        "ports.tcp.start=70000",
        "controller.logLevel=verbose",
        "proxy.image.pullPolicy=Sometimes",
        "tracing.otlpEndpoint=jaeger:4318",
        "proxy.drainDelaySeconds=-1",
        "proxy.maxSurge=0",
        "proxy.maxSurge=150%",
        "controller.terminationGracePeriodSeconds=5",
        "gate.mode=on",
        "gate.failurePolicy=Never",
        "gate.timeoutSeconds=31",
        "gate.slosConfigMap=Bad_Name",
        "gatewayAPI.installCRDs=maybe",
        "gatewayAPI.controllerName=no-path",
        "gatewayAPI.controllerName=Example.com/x",
        "gatewayAPI.routeStatuss=true",
        "proxy.tunnelPort=0",
        "proxy.tunnelPort=65536",
    ],
)
def test_schema_rejects(helm: Helm, value: str) -> None:
    done = helm.template(value, check=False)
    assert done.returncode != 0, done.stdout[:500]
    assert SCHEMA_ERROR in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (("ports.tcp.start=5005",), "ports.http [5000, 5010) overlaps ports.tcp"),
        (("ports.http.start=9895",), "ports.http contains 9901"),
        (("ports.udp.start=65000", "ports.udp.size=1000"), "ports.udp: 65000 + 1000"),
        (
            ("proxy.drainDelaySeconds=30", "proxy.terminationGracePeriodSeconds=35"),
            "proxy.terminationGracePeriodSeconds (35) must be at least",
        ),
        (("mtls=strict", "proxy.tunnelPort=5003"), "proxy.tunnelPort 5003 is in ports.http"),
        (("mtls=permissive", "proxy.tunnelPort=10500"), "proxy.tunnelPort 10500 is in ports.tcp"),
        (("mtls=strict", "proxy.tunnelPort=9901"), "proxy.tunnelPort 9901 is the proxy's admin"),
        (("mtls=permissive", "proxy.workers=2"), "proxy.workers 2 with mtls permissive"),
        (
            ("mtls=strict", "identity.rootPublishDelaySeconds=50"),
            "identity.rootPublishDelaySeconds (50) must be at least twice",
        ),
    ],
)
def test_values_that_cannot_work_are_refused(
    helm: Helm, values: tuple[str, ...], message: str
) -> None:
    done = helm.template(*values, check=False)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr


# --------------------------------------------------------------------------- Gateway API

GATEWAY_CRDS = CHART / "files" / "gateway-api"


def gateway_crds(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["name"]: d
        for d in docs
        if d["kind"] == "CustomResourceDefinition" and "gateway.networking" in d["metadata"]["name"]
    }


def test_gateway_api_crds_are_not_installed_by_default(
    default_docs: list[dict[str, Any]],
) -> None:
    assert gateway_crds(default_docs) == {}


def test_gateway_api_crds_with_the_value(helm: Helm) -> None:
    crds = gateway_crds(helm.render("gatewayAPI.installCRDs=true"))
    assert sorted(crds) == [
        "grpcroutes.gateway.networking.k8s.io",
        "httproutes.gateway.networking.k8s.io",
    ]
    for name, crd in crds.items():
        vendored = yaml.safe_load(
            (GATEWAY_CRDS / f"gateway.networking.k8s.io_{name.split('.')[0]}.yaml").read_text()
        )
        annotations = crd["metadata"]["annotations"]
        assert annotations.pop("helm.sh/resource-policy") == "keep"  # never deleted by helm
        assert crd == vendored  # as vendored, not re-rendered
        assert annotations["gateway.networking.k8s.io/bundle-version"] == "v1.6.3"
        assert annotations["gateway.networking.k8s.io/channel"] == "standard"
        assert crd["spec"]["versions"][0]["subresources"] == {"status": {}}


def test_route_status_can_be_turned_off(helm: Helm, tmp_path: Path) -> None:
    docs = helm.render("gatewayAPI.routeStatus=false")
    cmd = container(docs, "Deployment", "simmesh-controller")["command"]
    assert "--no-route-status" in cmd and "--route-status-controller-name" not in cmd
    rules = one(docs, "ClusterRole", "simmesh-controller")["rules"]
    for group, resource in GAMMA_KINDS:
        assert allows(rules, group, resource, "watch")
        assert not allows(rules, group, f"{resource}/status", "patch")
    named = helm.render("gatewayAPI.controllerName=example.com/mesh")
    cmd = container(named, "Deployment", "simmesh-controller")["command"]
    assert cmd[cmd.index("--route-status-controller-name") + 1] == "example.com/mesh"
    controller_settings(cmd, "{}", tmp_path)  # the controller's parser takes the option


NETWORKING = "networking.k8s.io"


def test_network_policies_off_by_default_may_only_be_listed_and_deleted(
    default_docs: list[dict[str, Any]],
) -> None:
    cmd = container(default_docs, "Deployment", "simmesh-controller")["command"]
    assert "--network-policies" not in cmd
    rules = one(default_docs, "ClusterRole", "simmesh-controller")["rules"]
    # off: the controller deletes the policies an earlier configuration left, and writes none
    assert allows(rules, NETWORKING, "networkpolicies", "list")
    assert allows(rules, NETWORKING, "networkpolicies", "delete")
    for verb in ("create", "update", "patch"):
        assert not allows(rules, NETWORKING, "networkpolicies", verb), verb
    assert not allows(rules, "rbac.authorization.k8s.io", "clusterroles", "get")


def test_network_policies_with_the_value(helm: Helm, tmp_path: Path) -> None:
    docs = helm.render("networkPolicies=true", "mtls=strict")
    cmd = container(docs, "Deployment", "simmesh-controller")["command"]
    assert "--network-policies" in cmd
    controller_settings(cmd, "{}", tmp_path)  # the controller's parser takes the option
    rules = one(docs, "ClusterRole", "simmesh-controller")["rules"]
    no_wildcards(rules)
    for verb in ("get", "list", "watch", "create", "update", "patch", "delete"):
        assert allows(rules, NETWORKING, "networkpolicies", verb), verb
    # the owner of the policies: this ClusterRole itself, by name, and no other
    (owner,) = [r for r in rules if "clusterroles" in r.get("resources", [])]
    assert owner == {
        "apiGroups": ["rbac.authorization.k8s.io"],
        "resources": ["clusterroles"],
        "resourceNames": ["simmesh-controller"],
        "verbs": ["get"],
    }


def test_capture_is_off_by_default(default_docs: list[dict[str, Any]]) -> None:
    assert not [d for d in default_docs if "capture" in d["metadata"]["name"]]
    assert settings_of(default_docs).capture is False


def test_capture_agents_with_the_value(helm: Helm, tmp_path: Path) -> None:
    docs = helm.render(
        "gatewayAPI.capture.enabled=true",
        "ports.capture.start=30000",
        "ports.capture.size=20",
        namespace="mesh-system",
    )
    settings = settings_of(docs)
    assert settings.capture is True and settings.capture_ports == PortRange(30000, 20)
    daemonset = one(docs, "DaemonSet", "simmesh-capture")
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["automountServiceAccountToken"] is False  # no API access at all
    assert pod["tolerations"] == [{"operator": "Exists"}]  # every node
    agent = container(docs, "DaemonSet", "simmesh-capture")
    security = agent["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
    assert security["privileged"] is False and security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert "hostPort" not in str(docs)
    command = agent["command"]
    assert command[:2] == ["simmesh", "capture"]
    url = "http://simmesh-controller.mesh-system.svc.cluster.local:9000"
    assert command[command.index("--controller") + 1] == url
    assert command[command.index("--node") + 1] == "$(NODE_NAME)"
    assert {
        "name": "NODE_NAME",
        "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "spec.nodeName"}},
    } in agent["env"]
    from mesh.cli import build_parser  # the agent's own parser takes the command

    args = build_parser(command[1:]).parse_args(command[1:])
    assert args.controller == url and args.node == "$(NODE_NAME)"
    # no role of its own: its ServiceAccount is bound to nothing
    bound = [d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    assert not [b for b in bound if any(s["name"] == "simmesh-capture" for s in b["subjects"])]
    one(docs, "ServiceAccount", "simmesh-capture")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (("ports.capture.start=5005",), "ports.capture [5005, 6005) overlaps ports.http"),
        (("ports.capture.start=10900", "ports.capture.size=10"), "overlaps ports.tcp"),
        (("ports.capture.start=9900", "ports.capture.size=5"), "ports.capture contains 9901"),
    ],
)
def test_capture_ports_that_collide_are_refused(
    helm: Helm, values: tuple[str, ...], message: str
) -> None:
    done = helm.template("gatewayAPI.capture.enabled=true", *values, check=False)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr


def test_the_gate_is_off_by_default(default_docs: list[dict[str, Any]]) -> None:
    assert not [d for d in default_docs if "gate" in d["metadata"]["name"]]
    assert (
        "--gate-mode" not in container(default_docs, "Deployment", "simmesh-controller")["command"]
    )


def test_the_gate(helm: Helm, tmp_path: Path) -> None:
    from cryptography import x509

    docs = helm.render(
        "gate.mode=enforce",
        "gate.budgetSeconds=4",
        "gate.timeoutSeconds=9",
        "gate.slosConfigMap=shop-slos",
        "ignoreNamespaces={legacy}",
        "watchNamespaces={shop}",
    )
    webhook = one(docs, "ValidatingWebhookConfiguration", "simmesh-gate")["webhooks"][0]
    assert (webhook["failurePolicy"], webhook["timeoutSeconds"], webhook["sideEffects"]) == (
        "Ignore",
        9,
        "None",
    )
    assert webhook["clientConfig"]["service"] == {
        "name": "simmesh-controller",
        "namespace": "simmesh",
        "path": "/validate",
        "port": 443,
    }
    selector = webhook["namespaceSelector"]["matchExpressions"]
    assert selector[0]["values"] == ["kube-system", "simmesh", "legacy"]
    assert selector[1] == {
        "key": "kubernetes.io/metadata.name",
        "operator": "In",
        "values": ["shop"],
    }
    resources = {
        (g, r) for rule in webhook["rules"] for g in rule["apiGroups"] for r in rule["resources"]
    }
    assert resources == SMI_KINDS | {("", "services")}
    secret = one(docs, "Secret", "simmesh-gate-tls")
    assert webhook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "simmesh-controller.simmesh.svc" in names.get_values_for_type(x509.DNSName)
    ca = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    cert.verify_directly_issued_by(ca)
    # the controller serves it, reads the ConfigMap named and nothing else of ConfigMaps
    c = container(docs, "Deployment", "simmesh-controller")
    assert {"name": "webhook", "containerPort": 9443, "protocol": "TCP"} in c["ports"]
    assert {"name": "gate-tls", "mountPath": "/var/run/simmesh/gate", "readOnly": True} in c[
        "volumeMounts"
    ]
    command = [str(tmp_path) if a == "/var/run/simmesh/gate" else a for a in c["command"]]
    (tmp_path / "mesh.yaml").write_text("{}")
    command = [str(tmp_path / "mesh.yaml") if a == "/etc/simmesh/mesh.yaml" else a for a in command]
    from mesh.cli import build_parser

    args = build_parser(command[1:]).parse_args(command[1:])
    assert (args.gate_mode, args.gate_budget, args.gate_slos_configmap) == (
        "enforce",
        4.0,
        "shop-slos",
    )
    rules = one(docs, "Role", "simmesh-controller")["rules"]
    assert {
        "apiGroups": [""],
        "resources": ["configmaps"],
        "resourceNames": ["shop-slos"],
        "verbs": ["get"],
    } in rules
    service = one(docs, "Service", "simmesh-controller")
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        (9000, "api"),
        (443, "webhook"),
    ]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (("gate.mode=warn", "gate.budgetSeconds=8"), "gate.timeoutSeconds (10) must be at least"),
    ],
)
def test_gate_values_that_cannot_work_are_refused(
    helm: Helm, values: tuple[str, ...], message: str
) -> None:
    done = helm.template(*values, check=False)
    assert done.returncode != 0 and message in done.stderr, done.stderr


# --------------------------------------------------------------------------- the apiserver


def fresh_namespace(cluster: k8s_harness.Cluster, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cluster.create("/api/v1/namespaces", {"metadata": {"name": name}})
    return name


class Discovery:
    """Collection paths of kinds, from the apiserver's discovery documents."""

    def __init__(self, cluster: k8s_harness.Cluster) -> None:
        self.cluster = cluster
        self.cache: dict[str, dict[str, tuple[str, bool]]] = {}

    def resources(self, api_version: str) -> dict[str, tuple[str, bool]]:
        if api_version not in self.cache:
            prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            listing = self.cluster.get(prefix)["resources"]
            self.cache[api_version] = {
                r["kind"]: (r["name"], r["namespaced"]) for r in listing if "/" not in r["name"]
            }
        return self.cache[api_version]

    def collection(self, doc: dict[str, Any]) -> str:
        plural, namespaced = self.resources(doc["apiVersion"])[doc["kind"]]
        prefix = "/api/v1" if doc["apiVersion"] == "v1" else f"/apis/{doc['apiVersion']}"
        if namespaced:
            return f"{prefix}/namespaces/{doc['metadata']['namespace']}/{plural}"
        return f"{prefix}/{plural}"


def test_apiserver_accepts_every_object(helm: Helm, apiserver: k8s_harness.Cluster) -> None:
    ns = fresh_namespace(apiserver, "helm-dry")
    docs = helm.render(
        "kubedns=true",
        "acl=true",
        "watchNamespaces={a,b}",
        "tracing.otlpEndpoint=http://otel:4318",
        "proxy.tolerations[0].operator=Exists",
        "imagePullSecrets[0].name=ghcr",
        "gate.mode=warn",
        namespace=ns,
    )
    assert len(docs) == 19
    discovery = Discovery(apiserver)
    for doc in docs:
        path = discovery.collection(doc)
        out = apiserver.create(path, doc, query={"dryRun": "All", "fieldValidation": "Strict"})
        assert out["kind"] == doc["kind"] and out["metadata"]["name"] == doc["metadata"]["name"]
        if doc["kind"] in ("Deployment", "DaemonSet"):
            sent = doc["spec"]["template"]["spec"]["containers"][0]
            kept = out["spec"]["template"]["spec"]["containers"][0]
            for key in ("command", "args", "ports", "env"):
                assert kept.get(key) == sent.get(key), (doc["metadata"]["name"], key)
        # dry run: nothing was stored
        status, _ = apiserver.request("GET", f"{path}/{doc['metadata']['name']}")
        assert status == 404, (doc["kind"], doc["metadata"]["name"])


def test_helm_install_dry_run_server(helm: Helm, apiserver: k8s_harness.Cluster) -> None:
    ns = f"helm-drs-{uuid.uuid4().hex[:6]}"
    done = helm.run(
        "install",
        "simmesh",
        str(CHART),
        "-n",
        ns,
        "--create-namespace",
        "--dry-run=server",
        "--kubeconfig",
        apiserver.kubeconfig,
    )
    assert "STATUS: pending-install" in done.stdout
    notes = done.stdout.split("NOTES:", 1)[1]
    for command in ("prepare", "check", "cleanup"):
        assert f"simmesh {command} --namespace {ns}" in notes, notes
    rendered = [
        d
        for d in yaml.safe_load_all(done.stdout.split("MANIFEST:", 1)[1].split("NOTES:", 1)[0])
        if d
    ]
    assert {d["kind"] for d in rendered} >= {"Deployment", "DaemonSet", "ConfigMap"}
    status, _ = apiserver.request("GET", f"/api/v1/namespaces/{ns}")
    assert status == 404


def test_gateway_api_crds_apply_server_side(helm: Helm, apiserver: k8s_harness.Cluster) -> None:
    """The vendored CRDs as the chart renders them are valid CRDs for the API server (server-side
    apply, dry run: httproutes is too large for kubectl's client-side last-applied annotation)."""
    for name, crd in gateway_crds(helm.render("gatewayAPI.installCRDs=true")).items():
        out = apiserver.call(
            "PATCH",
            f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}",
            crd,
            content_type="application/apply-patch+yaml",
            query={"dryRun": "All", "fieldManager": "simmesh-test", "force": "true"},
        )
        assert out["metadata"]["name"] == name
        assert out["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_gateway_api_crds_of_another_owner_are_left_alone(
    helm: Helm, apiserver: k8s_harness.Cluster
) -> None:
    """With installCRDs, a CRD that exists and is not the release's is not rendered (helm
    would refuse to install over it): Gateway API installed by hand stays as it is."""
    vendored = [yaml.safe_load(p.read_text()) for p in sorted(GATEWAY_CRDS.glob("*.yaml"))]
    apiserver.install_crds(vendored)
    ns = f"helm-gw-{uuid.uuid4().hex[:6]}"
    done = helm.run(
        "install",
        "simmesh",
        str(CHART),
        "-n",
        ns,
        "--create-namespace",
        "--dry-run=server",
        "--set",
        "gatewayAPI.installCRDs=true",
        "--kubeconfig",
        apiserver.kubeconfig,
    )
    manifest = done.stdout.split("MANIFEST:", 1)[1].split("NOTES:", 1)[0]
    rendered = [d for d in yaml.safe_load_all(manifest) if d]
    assert {d["kind"] for d in rendered} >= {"Deployment", "ClusterRole"}
    assert gateway_crds(rendered) == {}


def token_kubeconfig(cluster: k8s_harness.Cluster, ns: str, account: str, path: Path) -> str:
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}
    out = cluster.create(f"/api/v1/namespaces/{ns}/serviceaccounts/{account}/token", request)
    ca = base64.b64encode(Path(cluster.ca).read_bytes()).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "c", "cluster": {"server": cluster.url, "certificate-authority-data": ca}}
        ],
        "users": [{"name": account, "user": {"token": out["status"]["token"]}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": account}}],
        "current-context": "c",
    }
    path.write_text(json.dumps(config))
    return str(path)


def can(cluster: k8s_harness.Cluster, user: str, verb: str, resource: str, **attrs: str) -> bool:
    group, _, plural = resource.rpartition("/")
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": user,
            "groups": ["system:serviceaccounts", "system:authenticated"],
            "resourceAttributes": {"verb": verb, "group": group, "resource": plural, **attrs},
        },
    }
    out = cluster.create("/apis/authorization.k8s.io/v1/subjectaccessreviews", review)
    return bool(out["status"].get("allowed"))


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, urllib.error.URLError, k8s_harness.ApiError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


@pytest.fixture
def installed(helm: Helm, apiserver: k8s_harness.Cluster) -> Iterator[tuple[str, str]]:
    """A real `helm install` into a fresh namespace, meshing one fresh app namespace."""
    ns = f"helm-mesh-{uuid.uuid4().hex[:6]}"
    app = fresh_namespace(apiserver, "helm-app")
    kubeconfig = ["--kubeconfig", apiserver.kubeconfig]
    helm.run(
        "install",
        "simmesh",
        str(CHART),
        "-n",
        ns,
        "--create-namespace",
        "--set",
        f"watchNamespaces={{{app}}}",
        "--set",
        "acl=true",
        *kubeconfig,
    )
    try:
        yield ns, app
    finally:
        helm.run("uninstall", "simmesh", "-n", ns, *kubeconfig, check=False)


def test_helm_install_and_the_controller_runs_with_its_rbac(
    helm: Helm, apiserver: k8s_harness.Cluster, installed: tuple[str, str], tmp_path: Path
) -> None:
    ns, app = installed
    status = json.loads(
        helm.run(
            "status", "simmesh", "-n", ns, "-o", "json", "--kubeconfig", apiserver.kubeconfig
        ).stdout
    )
    assert status["info"]["status"] == "deployed"
    for path in (
        f"/apis/apps/v1/namespaces/{ns}/deployments/simmesh-controller",
        f"/apis/apps/v1/namespaces/{ns}/daemonsets/simmesh-proxy",
        f"/api/v1/namespaces/{ns}/services/simmesh-controller",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles/simmesh-controller",
    ):
        apiserver.get(path)

    user = f"system:serviceaccount:{ns}:simmesh-controller"
    for resource in ("services", "pods", "namespaces", "discovery.k8s.io/endpointslices"):
        assert can(apiserver, user, "watch", resource), resource
    for group, plural in SMI_KINDS:
        assert can(apiserver, user, "list", f"{group}/{plural}"), plural
    assert can(apiserver, user, "create", "events", namespace=app)
    assert can(apiserver, user, "delete", "services", namespace=ns)
    assert not can(apiserver, user, "delete", "services", namespace=app)
    assert not can(apiserver, user, "get", "secrets", namespace=ns)
    assert not can(apiserver, user, "create", "namespaces")  # helm --create-namespace does it
    # networkPolicies off (the default): the mesh's old policies may be deleted, none written
    assert can(apiserver, user, "delete", "networking.k8s.io/networkpolicies", namespace=app)
    assert not can(apiserver, user, "create", "networking.k8s.io/networkpolicies", namespace=app)
    proxy = f"system:serviceaccount:{ns}:simmesh-proxy"
    assert not can(apiserver, proxy, "list", "services")

    # the installed controller command and settings, run here with the ServiceAccount's token
    deployment = apiserver.get(f"/apis/apps/v1/namespaces/{ns}/deployments/simmesh-controller")
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    mesh_yaml = apiserver.get(f"/api/v1/namespaces/{ns}/configmaps/simmesh-settings")["data"][
        "mesh.yaml"
    ]
    (tmp_path / "mesh.yaml").write_text(mesh_yaml)
    secret = apiserver.get(f"/api/v1/namespaces/{ns}/secrets/simmesh-proxy-token")
    proxy_token = base64.b64decode(secret["data"]["token"]).decode()
    assert len(proxy_token) == 48
    (tmp_path / "token").write_text(proxy_token)
    port = k8s_harness.free_port()
    swap = {
        "in-cluster": token_kubeconfig(apiserver, ns, "simmesh-controller", tmp_path / "kc"),
        "0.0.0.0:9000": f"127.0.0.1:{port}",
        "/etc/simmesh/mesh.yaml": str(tmp_path / "mesh.yaml"),
        "/var/run/simmesh/token/token": str(tmp_path / "token"),
    }
    argv = [sys.executable, "-m", "mesh.cli", *(swap.get(a, a) for a in command[1:])]
    log = tmp_path / "controller.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"controller exited:\n{log.read_text()[-3000:]}")
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                return r.status == 200

        wait_for(ready, "the controller's /readyz")
        apiserver.create(
            f"/api/v1/namespaces/{app}/services",
            {
                "metadata": {"name": "web"},
                "spec": {"ports": [{"port": 80}], "selector": {"a": "b"}},
            },
        )
        shadow_path = f"/api/v1/namespaces/{ns}/services/{shadow_name(app, 'web')}"
        shadow = wait_for(lambda: apiserver.get(shadow_path), "the shadow Service")
        assert shadow["metadata"]["labels"][SHADOW_LABEL] == "true"
        assert shadow["spec"]["selector"] == PROXY_SELECTOR
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/config", timeout=5) as r:
            config = json.loads(r.read())
        assert "web" in json.dumps(config)
        poll = f"http://127.0.0.1:{port}/api/v1/config?node=node-a&version=v1&wait=0"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(poll, timeout=5)
        refused.value.close()
        assert refused.value.code == 401  # marking a node needs the Secret's token
        request = urllib.request.Request(poll, headers={"Authorization": f"Bearer {proxy_token}"})
        with urllib.request.urlopen(request, timeout=5) as r:
            assert r.status == 200
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
