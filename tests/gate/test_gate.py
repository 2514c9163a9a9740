"""The gate end to end without a cluster: the controller's objects, a measured window, the SLO
ConfigMap, a real worker process simulating each change (mesh/gate/server.py, job.py,
worker.py), and the webhook over TLS."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from mesh.controller.api import make_app
from mesh.controller.controller import Controller
from mesh.core.parse import parse_settings
from mesh.gate import job
from mesh.gate.review import Mode
from mesh.gate.server import Gate, GateExtension, Options, Workers
from mesh.snapshot import exposition
from tests.gate.reviews import SLOS, annotated, harmless, lockout
from tests.snapshot import world

pytestmark = pytest.mark.timeout(180)


class FakeKube:
    def __init__(self, data: dict[str, str] | None) -> None:
        self.data = data

    async def get(self, path: str) -> dict[str, Any] | None:
        assert path == "/api/v1/namespaces/simmesh/configmaps/simmesh-slos", path
        return None if self.data is None else {"data": self.data}


class FakeMeasurer:
    def __init__(self, window: job.Window | None) -> None:
        self.latest = self.last = window


def window(seconds: float = 60.0) -> job.Window:
    texts, _ = world.metrics(seconds)
    per_node = {node: exposition.parse(text) for node, text in texts.items()}
    return job.Window(per_node, seconds, 0.0)


def controller() -> Controller:
    settings = parse_settings(yaml.safe_load(world.MESH_YAML))
    made = Controller(settings)
    made.store.keep_documents()
    for doc in world.objects():
        made.store.put(doc)
    return made


def options(mode: Mode, *, budget: float = 20.0) -> Options:
    return Options(
        mode=mode,
        listen=("127.0.0.1", 0),
        cert_dir=Path("."),
        configmap="simmesh-slos",
        budget=budget,
        seeds=3,
        duration=20.0,
        window=60.0,
    )


async def handle(
    body: dict[str, Any],
    mode: Mode = Mode.ENFORCE,
    *,
    data: dict[str, str] | None = None,
    measured: job.Window | None = None,
    budget: float = 20.0,
) -> dict[str, Any]:
    workers = Workers()
    gate = Gate(
        controller(),
        options(mode, budget=budget),
        kube=FakeKube({"slos.yaml": SLOS} if data is None else data),  # type: ignore[arg-type]
        measurer=FakeMeasurer(measured or window()),  # type: ignore[arg-type]
        workers=workers,
    )
    try:
        answer = await gate.handle(body)
    finally:
        await workers.close()
    response: dict[str, Any] = answer["response"]
    return response


async def test_a_lockout_is_denied_in_enforce_mode_naming_the_slo() -> None:
    response = await handle(lockout())
    assert response["allowed"] is False, response
    message = response["status"]["message"]
    assert message.startswith("simmesh gate: this change breaks SLO 'the frontend can use web'")
    assert "successRate 0.98" in message and "-> 0 (objective >= 0.9)" in message
    assert "'web reads the database'" not in message  # it still holds


async def test_the_same_lockout_warns_in_warn_mode() -> None:
    response = await handle(lockout(), Mode.WARN)
    assert response["allowed"] is True
    (warning,) = response["warnings"]
    assert warning.startswith("simmesh gate: this change breaks SLO 'the frontend can use web'")


async def test_harmless_changes_pass_without_a_word() -> None:
    assert await handle(harmless()) == {"uid": lockout()["request"]["uid"], "allowed": True}
    response = await handle(annotated({"simmesh.io/retry-attempts": "2"}))
    assert response["allowed"] is True and "warnings" not in response


def heavy(rate: float) -> str:
    source = {"from": "shop/frontend", "to": "http://web.shop.mesh:8080/", "rate": rate}
    return yaml.safe_dump({"traffic": [source]})


async def test_what_cannot_be_decided_is_allowed_with_a_warning() -> None:
    response = await handle(lockout(), data={})
    assert response["allowed"] is True
    assert response["warnings"] == [
        "simmesh gate: did not simulate (no SLOs to check: ConfigMap simmesh/simmesh-slos has "
        "no slos.yaml); allowed"
    ]
    quiet = job.Window({}, 60.0, 0.0)
    response = await handle(lockout(), measured=quiet)
    assert "no traffic to simulate" in response["warnings"][0]
    data = {"slos.yaml": SLOS, "traffic.yaml": heavy(2e4)}  # 400,000 requests a run
    response = await handle(lockout(), data=data, budget=1.5)
    assert response["allowed"] is True
    assert response["warnings"][0].startswith("simmesh gate: could not decide ("), response


async def test_a_what_if_too_large_for_the_gate_is_not_run() -> None:
    response = await handle(lockout(), data={"slos.yaml": SLOS, "traffic.yaml": heavy(1e5)})
    assert response["allowed"] is True
    assert "too large for the gate" in response["warnings"][0], response


async def test_traffic_from_the_configmap_replaces_the_measured() -> None:
    traffic = {
        "traffic": [
            {"name": "f", "from": "shop/frontend", "to": "http://web.shop.mesh:8080/", "rate": 30}
        ],
        "nodes": ["node-a", "node-b"],
    }
    data = {"slos.yaml": SLOS, "traffic.yaml": yaml.safe_dump(traffic)}
    response = await handle(lockout(), data=data, measured=job.Window({}, 60.0, 0.0))
    assert (
        response["allowed"] is False and "the frontend can use web" in response["status"]["message"]
    )


def certificate(directory: Path) -> Path:
    """A self-signed CA and a serving certificate for 127.0.0.1 (what the chart makes)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "simmesh-controller")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (directory / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "tls.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return directory / "tls.crt"


async def test_the_webhook_answers_over_tls(tmp_path: Path, unused_port: int) -> None:
    ca = certificate(tmp_path)
    made = controller()
    extension = GateExtension(
        Options(
            mode=Mode.ENFORCE,
            listen=("127.0.0.1", unused_port),
            cert_dir=tmp_path,
            configmap="simmesh-slos",
            budget=20.0,
            seeds=3,
            duration=20.0,
            window=60.0,
        )
    )
    extension.prepare(made)
    app = make_app(made)
    await extension.start(made, app, None)  # no Kubernetes: no SLOs, allowed with a warning
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    api = runner.addresses[0][1]
    try:
        context = ssl.create_default_context(cafile=str(ca))
        connector = aiohttp.TCPConnector(ssl=context)
        async with aiohttp.ClientSession(connector=connector) as session:
            url = f"https://127.0.0.1:{unused_port}/validate"
            async with session.post(url, json=lockout()) as resp:
                assert resp.status == 200
                body = await resp.json()
            assert body["response"]["allowed"] is True
            assert "no SLOs to check" in body["response"]["warnings"][0]
            async with session.post(url, data=b"not json") as resp:
                assert resp.status == 400
            async with session.get(f"http://127.0.0.1:{api}/api/v1/gate") as resp:
                view = await resp.json()
            assert view["mode"] == "enforce" and view["recent"][0]["outcome"] == "failed"
            async with session.get(f"http://127.0.0.1:{api}/metrics") as resp:
                text = await resp.text()
            counted = '_gate_reviews_total{decision="warned",outcome="failed"} 1.0'
            assert f"simmesh_controller{counted}" in text
    finally:
        await runner.cleanup()
        await extension.stop()


@pytest.fixture
def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
