"""What is one mesh's own, behind one small interface: the cases speak only SMI and plain
HTTP/TCP/UDP.

An ``Adapter`` says whether its mesh is installed and ready (``preflight``), which mode it runs
in (``mode``: ACL or default), which host name a client calls to go through the mesh
(``host``), what a Service needs to be meshed as TCP or UDP (``service_annotations``), which
port a TCPRoute/UDPRoute names for a Service (``route_port``: the SMI spec leaves it open), and
how to wait until the mesh has picked up a case's Services (``wait_meshed``, optional
speed-up). Another SMI mesh is tested by writing its adapter and passing ``--adapter``.

``Simmesh`` uses simmesh as a user would: the ``simmesh check`` command (subprocess), the
chart's objects (the mesh namespace, the ``simmesh-settings`` ConfigMap) and the shadow
Services the controller creates (label ``simmesh.io/shadow``). It imports nothing of the mesh.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import yaml

from conformance.kube import Kube, KubeError
from conformance.model import Mode

__all__ = ["ADAPTERS", "DEFAULT_ROUTE_CONTROLLER", "Adapter", "Simmesh"]

DEFAULT_ROUTE_CONTROLLER = "simmesh.io/mesh-controller"


class Adapter(Protocol):
    name: str

    def preflight(self, kube: Kube) -> list[str]:
        """What is missing for the suite to run (empty: ready)."""

    def mode(self, kube: Kube) -> Mode: ...

    def host(self, service: str, namespace: str) -> str:
        """The name a client calls; ValueError when the mesh cannot route that name."""

    def service_annotations(self, protocol: str) -> dict[str, str]: ...

    def route_port(self, port: int, target_port: int) -> int: ...

    def wait_meshed(
        self,
        kube: Kube,
        services: Sequence[tuple[str, str]],
        until: float,
        stop: Callable[[], bool],
    ) -> None:
        """Return once the mesh knows these (namespace, name) Services, or at ``until``."""

    def testapp_image(self, kube: Kube) -> tuple[str, str] | None:
        """The image with the test app and its pull policy, when the mesh ships one."""

    def route_controller(self, kube: Kube) -> str:
        """The ``controllerName`` the mesh writes in Gateway API route status."""


class Simmesh:
    """simmesh installed by its Helm chart in ``namespace``, with the ``simmesh`` CLI here."""

    name = "simmesh"
    SEPARATOR = "6d61657368"  # the shadow Service name is <svc>-6d61657368-<ns>, at most 63

    def __init__(
        self,
        *,
        namespace: str = "simmesh",
        zone: str = "mesh",
        kubeconfig: str | None = None,
        context: str | None = None,
        cli: str = "simmesh",
        settle: float = 30.0,
    ) -> None:
        self.settle = settle
        self.namespace = namespace
        self.zone = zone
        self.kubeconfig = kubeconfig
        self.context = context
        self.cli = cli

    def preflight(self, kube: Kube) -> list[str]:
        if kube.get("v1", "Namespace", None, self.namespace) is None:
            return [
                f"simmesh is not installed: no namespace {self.namespace!r} "
                "(helm install simmesh charts/simmesh -n simmesh --create-namespace; "
                "docs/install.md), or name it with --mesh-namespace"
            ]
        if kube.get("v1", "ConfigMap", self.namespace, "simmesh-settings") is None:
            return [f"simmesh is not installed in {self.namespace!r}: no simmesh-settings"]
        return self._check()

    def _check(self) -> list[str]:
        beside = Path(sys.executable).parent / self.cli  # the same virtualenv's
        cli = shutil.which(self.cli) or (str(beside) if beside.exists() else None)
        if cli is None:
            return [f"the simmesh CLI ({self.cli}) is not on PATH: pip install . (make setup)"]
        args = [cli, "check", "--namespace", self.namespace, "--zone", self.zone]
        if self.kubeconfig:
            args += ["--kubeconfig", self.kubeconfig]
        if self.context:
            args += ["--context", self.context]
        # A proxy may be a poll behind a config that just changed (namespaces of an earlier
        # run still going away, say): ready means check passes within settle seconds.
        args += ["--wait", f"{self.settle:g}"]
        done = subprocess.run(args, capture_output=True, text=True, timeout=self.settle + 120)
        if done.returncode == 0:
            return []
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        failed = [line for line in lines if " OK " not in line and not line.startswith("CHECK")]
        errors = [line for line in done.stderr.splitlines() if "not yet" not in line]
        return [f"simmesh check failed (for {self.settle:g} s):", *(failed or lines), *errors]

    def mode(self, kube: Kube) -> Mode:
        cm = kube.get("v1", "ConfigMap", self.namespace, "simmesh-settings") or {}
        settings = yaml.safe_load(cm.get("data", {}).get("mesh.yaml", "")) or {}
        return Mode.ACL if settings.get("acl") else Mode.DEFAULT

    def host(self, service: str, namespace: str) -> str:
        shadow = f"{service}-{self.SEPARATOR}-{namespace}"
        if len(shadow) > 63:
            raise ValueError(
                f"{service}.{namespace}.{self.zone}: simmesh's DNS rewrite maps names whose "
                f"shadow Service name ({len(shadow)} characters) fits in 63: use a shorter "
                "--namespace-prefix"
            )
        return f"{service}.{namespace}.{self.zone}"

    def service_annotations(self, protocol: str) -> dict[str, str]:
        return {"simmesh.io/traffic-type": protocol}

    def route_port(self, port: int, target_port: int) -> int:
        return target_port  # docs/semantics.md: TCPRoute/UDPRoute ports are target ports

    def wait_meshed(
        self,
        kube: Kube,
        services: Sequence[tuple[str, str]],
        until: float,
        stop: Callable[[], bool],
    ) -> None:
        wanted = {f"{ns}/{name}" for ns, name in services}
        while time.monotonic() < until and not stop():
            try:
                shadows = kube.list_objects("v1", "Service", self.namespace, "simmesh.io/shadow")
            except KubeError:
                shadows = []
            have = {
                s["metadata"].get("annotations", {}).get("simmesh.io/shadow-of") for s in shadows
            }
            if wanted <= have:
                return
            time.sleep(0.25)

    def testapp_image(self, kube: Kube) -> tuple[str, str] | None:
        """The controller's image: simmesh's image is also the test app's."""
        deployment = kube.get("apps/v1", "Deployment", self.namespace, "simmesh-controller")
        if deployment is None:
            return None
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        return str(container["image"]), str(container.get("imagePullPolicy", "IfNotPresent"))

    def route_controller(self, kube: Kube) -> str:
        """The controller's ``--route-status-controller-name`` (the chart's
        ``gatewayAPI.controllerName``), else simmesh's default."""
        deployment = kube.get("apps/v1", "Deployment", self.namespace, "simmesh-controller")
        args: list[str] = []
        if deployment is not None:
            args = deployment["spec"]["template"]["spec"]["containers"][0].get("args") or []
        flag = "--route-status-controller-name"
        for i, arg in enumerate(args):
            if arg == flag and i + 1 < len(args):
                return str(args[i + 1])
            if arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
        return DEFAULT_ROUTE_CONTROLLER


ADAPTERS: dict[str, type[Simmesh]] = {"simmesh": Simmesh}
