"""prepare and cleanup against an in-memory API server: detection, idempotence, restarts,
conflicts and the error messages. The same flows run against a real apiserver in tests/k8s."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from typing import Any

import pytest

from mesh.dns import apply
from mesh.dns import corefile as cf
from mesh.dns import kubedns as kd
from mesh.dns.kube import configmap, deployment, service
from tests.dns import corefiles
from tests.dns.fakekube import FakeKube

KS = "kube-system"
SETTINGS = cf.DnsSettings()
NOW = "2026-01-02T03:04:05+00:00"


def run(work: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(work)


def dns_deployment(name: str, image: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels or {"k8s-app": "kube-dns"}},
        "spec": {"template": {"spec": {"containers": [{"name": "dns", "image": image}]}}},
    }


def coredns_cluster(corefile: str = corefiles.KUBEADM, image: str = "coredns:v1.11.3") -> FakeKube:
    kube = FakeKube()
    kube.put(configmap(KS, ""), {"metadata": {"name": "coredns"}, "data": {"Corefile": corefile}})
    kube.put(deployment(KS), dns_deployment("coredns", f"registry.k8s.io/coredns/{image}"))
    return kube


def kubedns_cluster(data: dict[str, str] | None = None) -> FakeKube:
    kube = FakeKube()
    kube.put(deployment(KS), dns_deployment("kube-dns", "registry.k8s.io/dns/k8s-dns-kube-dns"))
    if data is not None:
        kube.put(configmap(KS, ""), {"metadata": {"name": "kube-dns"}, "data": data})
    return kube


def prepare(kube: FakeKube, settings: cf.DnsSettings = SETTINGS) -> list[str]:
    said: list[str] = []
    run(apply.prepare(kube, settings, now=NOW, report=said.append))
    return said


def cleanup(kube: FakeKube, namespace: str = "simmesh") -> list[str]:
    said: list[str] = []
    run(apply.cleanup(kube, mesh_namespace=namespace, now=NOW, report=said.append))
    return said


def corefile_of(kube: FakeKube) -> str:
    return str(kube.objects[configmap(KS, "coredns")]["data"]["Corefile"])


def restarted_at(kube: FakeKube, name: str, namespace: str = KS) -> str | None:
    template = kube.objects[deployment(namespace, name)]["spec"]["template"]
    value = (template.get("metadata") or {}).get("annotations", {}).get(apply.RESTART_ANNOTATION)
    return None if value is None else str(value)


# --------------------------------------------------------------------------- detection


def test_detects_coredns() -> None:
    found = run(apply.detect(coredns_cluster()))
    assert found.mode is apply.Mode.COREDNS
    assert found.deployment["metadata"]["name"] == "coredns"


def test_detects_aks_coredns_custom_first() -> None:
    kube = coredns_cluster()
    kube.put(configmap(KS, ""), {"metadata": {"name": "coredns-custom"}})
    assert run(apply.detect(kube)).mode is apply.Mode.COREDNS_CUSTOM


def test_detects_kube_dns_with_or_without_its_configmap() -> None:
    assert run(apply.detect(kubedns_cluster())).mode is apply.Mode.KUBE_DNS
    found = run(apply.detect(kubedns_cluster({"stubDomains": "{}"})))
    assert found.configmap is not None and found.mode is apply.Mode.KUBE_DNS


def test_finds_a_coredns_deployment_with_another_name_by_label() -> None:
    kube = FakeKube()
    kube.put(configmap(KS, ""), {"metadata": {"name": "coredns"}, "data": {"Corefile": ""}})
    kube.put(deployment(KS), dns_deployment("dns-server", "coredns/coredns:1.9.4"))
    assert run(apply.detect(kube)).deployment["metadata"]["name"] == "dns-server"


def test_no_dns_is_an_error_naming_what_was_looked_for() -> None:
    expected = (
        "no cluster DNS found in namespace kube-system: expected ConfigMap coredns (with a "
        "Corefile key), ConfigMap coredns-custom (AKS) or Deployment kube-dns"
    )
    with pytest.raises(apply.DnsError) as caught:
        run(apply.detect(FakeKube()))
    assert str(caught.value) == expected


def test_a_coredns_configmap_without_corefile_is_an_error() -> None:
    kube = FakeKube()
    kube.put(configmap(KS, ""), {"metadata": {"name": "coredns"}, "data": {"other": "x"}})
    with pytest.raises(apply.DnsError, match=r"ConfigMap kube-system/coredns: data.Corefile is"):
        run(apply.detect(kube))


def test_a_kube_dns_deployment_running_coredns_needs_its_configmap() -> None:
    kube = FakeKube()
    kube.put(deployment(KS), dns_deployment("kube-dns", "registry.k8s.io/coredns/coredns:v1.11"))
    with pytest.raises(apply.DnsError, match=r"runs CoreDNS but ConfigMap kube-system/coredns"):
        run(apply.detect(kube))


@pytest.mark.parametrize(
    ("image", "version"),
    [
        ("registry.k8s.io/coredns/coredns:v1.11.3", (1, 11, 3)),
        ("coredns/coredns:1.2.6", (1, 2, 6)),
        ("coredns/coredns:1.8.0@sha256:abc", (1, 8, 0)),
        ("coredns/coredns@sha256:abc", None),
        ("mirror.local:5000/coredns", None),
        ("k8s-dns-kube-dns:1.22.28", None),
    ],
)
def test_coredns_version(image: str, version: tuple[int, int, int] | None) -> None:
    assert apply.coredns_version(dns_deployment("coredns", image)) == version


# --------------------------------------------------------------------------- CoreDNS


def test_prepare_writes_the_block_and_restarts_coredns() -> None:
    kube = coredns_cluster()
    said = prepare(kube)
    assert corefile_of(kube) == cf.prepare(corefiles.KUBEADM, SETTINGS)
    assert restarted_at(kube, "coredns") == NOW
    assert said[0] == "cluster DNS: CoreDNS (ConfigMap kube-system/coredns)"
    assert any("restarted" in line for line in said)


def test_prepare_twice_equals_once() -> None:
    kube = coredns_cluster()
    prepare(kube)
    snapshot = json.dumps(kube.objects, sort_keys=True)
    writes = len(kube.writes)
    said = prepare(kube)
    assert json.dumps(kube.objects, sort_keys=True) == snapshot
    assert len(kube.writes) == writes
    assert said[-1] == "DNS already prepared; nothing changed"


@pytest.mark.parametrize("name", ["kubeadm", "crlf", "no-trailing-newline", "tabs", "k3s"])
def test_cleanup_restores_the_corefile_byte_for_byte(name: str) -> None:
    original = corefiles.SHAPES[name]
    kube = coredns_cluster(original)
    prepare(kube)
    said = cleanup(kube)
    assert corefile_of(kube) == original
    assert "ConfigMap kube-system/coredns: simmesh server block removed" in said
    assert cleanup(kube) == ["nothing to clean up"]


def test_an_old_coredns_is_refused() -> None:
    kube = coredns_cluster(image="coredns:1.2.6")
    with pytest.raises(apply.DnsError, match=r"runs CoreDNS 1\.2\.6; expected 1\.3\.0 or later"):
        prepare(kube)
    assert corefile_of(kube) == corefiles.KUBEADM


def test_a_foreign_block_for_the_zone_names_the_configmap_and_line() -> None:
    kube = coredns_cluster(corefiles.KUBEADM + "mesh:53 {\n    forward . 10.0.0.1\n}\n")
    with pytest.raises(apply.DnsError, match=r"^ConfigMap kube-system/coredns: line 21: "):
        prepare(kube)


def test_a_concurrent_edit_is_not_lost() -> None:
    kube = coredns_cluster()
    path = configmap(KS, "coredns")

    def someone_else(_: str) -> None:  # edits the ConfigMap between our read and our write
        kube.objects[path]["data"]["Corefile"] += "example.org:53 {\n}\n"
        kube.objects[path]["metadata"]["resourceVersion"] = "999"

    kube.before_patch = someone_else
    prepare(kube)
    assert corefile_of(kube) == cf.prepare(corefiles.KUBEADM + "example.org:53 {\n}\n", SETTINGS)


def test_no_deployment_is_a_warning_not_an_error() -> None:
    kube = coredns_cluster()
    del kube.objects[deployment(KS, "coredns")]
    said = prepare(kube)
    assert any(line.startswith("warning: no DNS Deployment found") for line in said)
    assert cf.state(corefile_of(kube), SETTINGS) is cf.BlockState.CURRENT


# --------------------------------------------------------------------------- coredns-custom


def test_aks_custom_key_and_a_leftover_corefile_block() -> None:
    leftover = cf.prepare(corefiles.KUBEADM, SETTINGS)  # prepared before the map existed
    kube = coredns_cluster(leftover)
    user = {"log.override": "log\n"}
    kube.put(configmap(KS, ""), {"metadata": {"name": "coredns-custom"}, "data": user})
    prepare(kube)
    custom = kube.objects[configmap(KS, "coredns-custom")]["data"]
    assert custom == cf.prepare_custom(user, SETTINGS)
    assert corefile_of(kube) == corefiles.KUBEADM  # one block only: CoreDNS refuses two
    cleanup(kube)
    assert kube.objects[configmap(KS, "coredns-custom")]["data"] == user


# --------------------------------------------------------------------------- kube-dns


def test_kube_dns_without_configmap() -> None:
    kube = kubedns_cluster()
    said = prepare(kube)
    svc = kube.objects[service("simmesh", kd.MESH_COREDNS)]
    data = kube.objects[configmap(KS, "kube-dns")]["data"]
    assert json.loads(data["stubDomains"]) == {"mesh": [svc["spec"]["clusterIP"]]}
    assert restarted_at(kube, "kube-dns") == NOW
    assert "Namespace simmesh: created" in said
    for manifest in kd.mesh_coredns_manifests(SETTINGS):
        assert any(key.endswith("/" + manifest["metadata"]["name"]) for key in kube.objects)
    snapshot = json.dumps(kube.objects, sort_keys=True)
    assert prepare(kube)[-1] == "DNS already prepared; nothing changed"
    assert json.dumps(kube.objects, sort_keys=True) == snapshot
    cleanup(kube)
    assert configmap(KS, "kube-dns") not in kube.objects
    assert not any("simmesh-coredns" in key for key in kube.objects)


def test_kube_dns_configmap_restored_exactly() -> None:
    original = {"stubDomains": '{"acme.local": ["1.2.3.4"]}', "upstreamNameservers": "[]"}
    kube = kubedns_cluster(original)
    prepare(kube)
    cleanup(kube)
    restored = kube.objects[configmap(KS, "kube-dns")]
    assert restored["data"] == original
    assert not (restored["metadata"].get("annotations") or {})


def test_a_changed_mesh_corefile_restarts_the_mesh_coredns() -> None:
    kube = kubedns_cluster()
    prepare(kube)
    path = configmap("simmesh", kd.MESH_COREDNS)
    kube.objects[path]["data"]["Corefile"] = "edited by hand\n"
    said = prepare(kube)
    assert "ConfigMap simmesh/simmesh-coredns: updated" in said
    assert restarted_at(kube, kd.MESH_COREDNS, "simmesh") == NOW


# --------------------------------------------------------------------------- cleanup


def test_cleanup_deletes_only_labelled_shadows() -> None:
    kube = coredns_cluster()
    shadow = {"metadata": {"name": "web-6d61657368-shop", "labels": {"simmesh.io/shadow": "true"}}}
    kube.put(service("simmesh"), shadow)
    kube.put(service("simmesh"), {"metadata": {"name": "simmesh-controller"}})
    kube.put(
        service("shop"), {"metadata": {"name": "web", "labels": {"simmesh.io/shadow": "true"}}}
    )
    said = cleanup(kube)
    assert "shadow Services in simmesh: 1 deleted" in said
    assert service("simmesh", "web-6d61657368-shop") not in kube.objects
    assert service("simmesh", "simmesh-controller") in kube.objects
    assert service("shop", "web") in kube.objects


def test_contains() -> None:
    assert apply.contains({"a": 1, "b": [{"c": 1, "d": 2}]}, {"b": [{"c": 1}]})
    assert not apply.contains({"b": [{"c": 1}, {"c": 2}]}, {"b": [{"c": 1}]})
    assert not apply.contains({"a": {"b": 1}}, {"a": {"b": 2}})
    assert not apply.contains({}, {"a": None})
