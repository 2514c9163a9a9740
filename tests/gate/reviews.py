"""AdmissionReviews as the API server sends them, for the gate's tests."""

from __future__ import annotations

import copy
from typing import Any

from tests.snapshot import world


def admission(
    operation: str,
    *,
    new: dict[str, Any] | None = None,
    old: dict[str, Any] | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    doc = new or old
    assert doc is not None
    kind = doc["kind"]
    group, _, version = doc["apiVersion"].rpartition("/")
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": kind.lower() + "s"},
            "operation": operation,
            "namespace": doc["metadata"].get("namespace", "default"),
            "name": doc["metadata"]["name"],
            "userInfo": {"username": "admin"},
            "object": new,
            "oldObject": old,
            "dryRun": dry_run,
        },
    }


def find(kind: str, name: str) -> dict[str, Any]:
    for doc in world.objects():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return copy.deepcopy(doc)
    raise KeyError(name)


def lockout() -> dict[str, Any]:
    """Deleting the TrafficTarget that lets the frontend call web: every call is then denied."""
    return admission("DELETE", old=find("TrafficTarget", "frontend-to-web"))


def harmless() -> dict[str, Any]:
    """web may also reach db from a second ServiceAccount: nothing anyone does changes."""
    old = find("TrafficTarget", "web-to-db")
    new = copy.deepcopy(old)
    reports = {"kind": "ServiceAccount", "name": "reports", "namespace": "shop"}
    new["spec"]["sources"].append(reports)
    return admission("UPDATE", new=new, old=old)


def annotated(annotations: dict[str, str]) -> dict[str, Any]:
    old = find("Service", "web")
    new = copy.deepcopy(old)
    new["metadata"]["annotations"].update(annotations)
    return admission("UPDATE", new=new, old=old)


SLOS = """
slos:
  - name: the frontend can use web
    service: shop/web
    successRate: 0.9
  - name: web reads the database
    service: shop/db
    successRate: 0.99
"""
