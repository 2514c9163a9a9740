"""A real etcd + kube-apiserver for tests, on 127.0.0.1, with no kubectl and no Docker.

The binaries come from ``tools/k8s-bins.sh`` (a version-keyed cache outside the repo): the
directory is ``$SIMMESH_BIN_DIR`` if set, else what ``tools/k8s-bins.sh --print-dir`` prints.

``Cluster(workdir).start()`` generates its own PKI (a CA, a serving certificate for
127.0.0.1/localhost, a service-account key pair, an admin client certificate in
``system:masters`` and a static admin token), starts etcd and kube-apiserver on free loopback
ports, waits for ``/readyz``, writes a kubeconfig, installs the CRDs of
``charts/simmesh/crds`` and waits until they are Established and served. ``restart()`` stops
and starts kube-apiserver again on the same port with the same etcd; ``stop()`` kills every
process group it started. Requests use the standard library only (http.client + ssl).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import datetime as _dt
import http.client
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = REPO_ROOT / "charts" / "simmesh" / "crds"
BINS_SCRIPT = REPO_ROOT / "tools" / "k8s-bins.sh"
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"

__all__ = [
    "ApiError",
    "BinaryMissing",
    "Cluster",
    "find_bin_dir",
    "find_binaries",
]


class BinaryMissing(Exception):
    """A harness binary is not built; the message says which and how to build it."""


class ApiError(Exception):
    """A non-2xx answer from the apiserver."""

    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.body = body
        msg = body.get("message") if isinstance(body, dict) else body
        super().__init__(f"{method} {path} -> {status}: {msg}")


# --------------------------------------------------------------------------- binaries


def find_bin_dir() -> Path:
    """$SIMMESH_BIN_DIR, else the directory printed by ``tools/k8s-bins.sh --print-dir``."""
    env = os.environ.get("SIMMESH_BIN_DIR")
    if env:
        return Path(env)
    try:
        out = subprocess.run(
            ["bash", str(BINS_SCRIPT), "--print-dir"],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise BinaryMissing(
            f"cannot locate the k8s binaries ({BINS_SCRIPT} --print-dir: {exc})"
        ) from exc
    return Path(out)


def find_binaries(names: Iterable[str] = ("etcd", "kube-apiserver")) -> dict[str, Path]:
    """Paths of the named binaries; BinaryMissing names every missing one."""
    bin_dir = find_bin_dir()
    found: dict[str, Path] = {}
    missing: list[str] = []
    for name in names:
        path = bin_dir / name
        if path.is_file() and os.access(path, os.X_OK):
            found[name] = path.resolve()
        else:
            missing.append(name)
    if missing:
        raise BinaryMissing(
            f"missing k8s test binaries {', '.join(missing)} in {bin_dir} "
            "(set SIMMESH_BIN_DIR or build them with `make k8s-bins` / tools/k8s-bins.sh)"
        )
    return found


# --------------------------------------------------------------------------- small helpers


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to SIGKILL the child if the test process dies without cleaning up."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except Exception:
        pass


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def load_crds(crd_dir: Path = CRD_DIR) -> list[dict[str, Any]]:
    """Every CustomResourceDefinition document in crd_dir/*.yaml, sorted by file name."""
    import yaml  # project dependency; imported here so the module imports without it

    docs: list[dict[str, Any]] = []
    for path in sorted(crd_dir.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                docs.append(doc)
    return docs


# --------------------------------------------------------------------------- PKI


class PKI:
    """CA, apiserver serving cert, service-account keys, admin client cert and token."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca = directory / "ca.crt"
        self.ca_key = directory / "ca.key"
        self.serving_cert = directory / "apiserver.crt"
        self.serving_key = directory / "apiserver.key"
        self.sa_key = directory / "sa.key"
        self.sa_pub = directory / "sa.pub"
        self.admin_cert = directory / "admin.crt"
        self.admin_key = directory / "admin.key"
        self.token_file = directory / "tokens.csv"
        self.token = ""

    def generate(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        self.dir.mkdir(parents=True, exist_ok=True)
        now = _dt.datetime.now(_dt.UTC)
        not_before = now - _dt.timedelta(hours=1)
        not_after = now + _dt.timedelta(days=365)

        def write_key(path: Path, key: Any) -> None:
            path.write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            path.chmod(0o600)

        def name(cn: str, org: str | None = None) -> x509.Name:
            attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
            if org:
                attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
            return x509.Name(attrs)

        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = name("simmesh-test-ca")
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        write_key(self.ca_key, ca_key)
        self.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))

        def leaf(
            subject: x509.Name, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName] | None
        ) -> tuple[Any, Any]:
            key = ec.generate_private_key(ec.SECP256R1())
            builder = (
                x509.CertificateBuilder()
                .subject_name(subject)
                .issuer_name(ca_name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(not_before)
                .not_valid_after(not_after)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(
                    x509.KeyUsage(
                        digital_signature=True,
                        content_commitment=False,
                        key_encipherment=False,
                        data_encipherment=False,
                        key_agreement=False,
                        key_cert_sign=False,
                        crl_sign=False,
                        encipher_only=False,
                        decipher_only=False,
                    ),
                    critical=True,
                )
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                    critical=False,
                )
            )
            if sans:
                builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
            return key, builder.sign(ca_key, hashes.SHA256())

        first_service_ip = ipaddress.IPv4Network(SERVICE_CLUSTER_IP_RANGE)[1]
        sans: list[x509.GeneralName] = [
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes"),
            x509.DNSName("kubernetes.default"),
            x509.DNSName("kubernetes.default.svc"),
            x509.DNSName("kubernetes.default.svc.cluster.local"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
            x509.IPAddress(first_service_ip),
        ]
        key, cert = leaf(name("kube-apiserver"), ExtendedKeyUsageOID.SERVER_AUTH, sans)
        write_key(self.serving_key, key)
        self.serving_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

        key, cert = leaf(
            name("simmesh-admin", "system:masters"), ExtendedKeyUsageOID.CLIENT_AUTH, None
        )
        write_key(self.admin_key, key)
        self.admin_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        write_key(self.sa_key, sa_key)
        self.sa_pub.write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

        # static token: token,user,uid,"group1,group2"
        self.token = secrets.token_hex(24)
        self.token_file.write_text(f'{self.token},simmesh-admin,simmesh-admin,"system:masters"\n')
        self.token_file.chmod(0o600)


# --------------------------------------------------------------------------- processes


class _Proc:
    """One child in its own process group, logging to a file."""

    def __init__(self, name: str, argv: list[str], log: Path, cwd: Path) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        self.cwd = cwd
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            out.write(
                f"\n===== start {time.strftime('%H:%M:%S')}: {' '.join(self.argv)}\n".encode()
            )
            out.flush()
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                start_new_session=True,
                preexec_fn=_set_pdeathsig if sys.platform.startswith("linux") else None,
            )

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def check_alive(self) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.popen.returncode}; log {self.log}:\n"
                f"{_tail(self.log)}"
            )

    def stop(self, timeout: float = 15.0) -> None:
        p = self.popen
        if p is None:
            return
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
        # the leader is gone; kill anything left in its group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        self.popen = None


# --------------------------------------------------------------------------- the cluster


class Cluster:
    """etcd + kube-apiserver on 127.0.0.1 with the simmesh CRDs installed.

    Attributes for tests and other clients: ``kubeconfig`` (path), ``url``, ``ca`` (CA
    certificate path), ``client_cert``/``client_key`` (admin, system:masters), ``token``
    (static admin bearer token), ``etcd_url``, ``workdir``, ``timings`` (seconds).
    """

    def __init__(
        self,
        workdir: Path,
        binaries: dict[str, Path] | None = None,
        crd_dir: Path | None = CRD_DIR,
        ready_timeout: float = 90.0,
        keep_data: bool = False,
    ) -> None:
        self.workdir = Path(workdir)
        self.binaries = binaries or find_binaries()
        self.crd_dir = crd_dir
        self.ready_timeout = ready_timeout
        self.keep_data = keep_data
        self.pki = PKI(self.workdir / "pki")
        self.host = "127.0.0.1"
        self.etcd_port = 0
        self.etcd_peer_port = 0
        self.port = 0
        self.timings: dict[str, float] = {}
        self._etcd: _Proc | None = None
        self._apiserver: _Proc | None = None
        self._ssl: ssl.SSLContext | None = None
        self._atexit_registered = False

    # ---- public attributes
    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def etcd_url(self) -> str:
        return f"http://{self.host}:{self.etcd_port}"

    @property
    def ca(self) -> str:
        return str(self.pki.ca)

    @property
    def client_cert(self) -> str:
        return str(self.pki.admin_cert)

    @property
    def client_key(self) -> str:
        return str(self.pki.admin_key)

    @property
    def token(self) -> str:
        return self.pki.token

    @property
    def kubeconfig(self) -> str:
        return str(self.workdir / "kubeconfig")

    # ---- lifecycle
    def start(self) -> Cluster:
        t0 = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        self.pki.generate()
        self._ssl = None
        self.timings["pki"] = time.monotonic() - t0
        try:
            self._start_etcd()
            self.port = free_port(self.host)
            self._write_kubeconfig()
            self._start_apiserver()
            if self.crd_dir is not None:
                t = time.monotonic()
                self.install_crds(load_crds(self.crd_dir))
                self.timings["crds"] = time.monotonic() - t
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = time.monotonic() - t0
        return self

    def restart(self) -> None:
        """Stop kube-apiserver and start it again: same etcd, same port, same certs."""
        assert self._apiserver is not None, "not started"
        t = time.monotonic()
        self._apiserver.stop()
        self.timings["apiserver_stop"] = time.monotonic() - t
        self._start_apiserver(key="apiserver_restart")
        if self.crd_dir is not None:
            self.wait_crds_served(load_crds(self.crd_dir))

    def stop(self) -> None:
        """Kill kube-apiserver and etcd (process groups); drop etcd's data unless keep_data.
        Logs and certificates stay in workdir."""
        for proc in (self._apiserver, self._etcd):
            if proc is not None:
                proc.stop()
        if not self.keep_data:
            shutil.rmtree(self.workdir / "etcd-data", ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def pids(self) -> list[int]:
        return [
            p.popen.pid
            for p in (self._etcd, self._apiserver)
            if p is not None and p.popen is not None
        ]

    # ---- etcd
    def _start_etcd(self) -> None:
        t = time.monotonic()
        self.etcd_port = free_port(self.host)
        self.etcd_peer_port = free_port(self.host)
        peer = f"http://{self.host}:{self.etcd_peer_port}"
        argv = [
            str(self.binaries["etcd"]),
            "--name=simmesh-test",
            f"--data-dir={self.workdir / 'etcd-data'}",
            f"--listen-client-urls={self.etcd_url}",
            f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=simmesh-test={peer}",
            "--initial-cluster-state=new",
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ]
        self._etcd = _Proc("etcd", argv, self.workdir / "etcd.log", self.workdir)
        self._etcd.start()
        deadline = time.monotonic() + self.ready_timeout
        while True:
            self._etcd.check_alive()
            try:
                conn = http.client.HTTPConnection(self.host, self.etcd_port, timeout=2)
                try:
                    conn.request("GET", "/health")
                    resp = conn.getresponse()
                    body = resp.read()
                finally:
                    conn.close()
                if resp.status == 200 and b'"true"' in body:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"etcd not healthy; log:\n{_tail(self._etcd.log)}")
            time.sleep(0.05)
        self.timings["etcd"] = time.monotonic() - t

    # ---- kube-apiserver
    def apiserver_argv(self) -> list[str]:
        pki = self.pki
        return [
            str(self.binaries["kube-apiserver"]),
            f"--etcd-servers={self.etcd_url}",
            f"--bind-address={self.host}",
            f"--advertise-address={self.host}",
            f"--secure-port={self.port}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--tls-cert-file={pki.serving_cert}",
            f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca}",
            f"--token-auth-file={pki.token_file}",
            "--authorization-mode=RBAC",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            "--disable-admission-plugins=ServiceAccount",
            # 127.0.0.1 may not be written into the `kubernetes` Endpoints; no reconciler
            "--endpoint-reconciler-type=none",
            "--profiling=false",
            # ClusterTrustBundle (beta, off by default): where the mesh CA publishes its roots
            "--runtime-config=certificates.k8s.io/v1beta1/clustertrustbundles=true",
            "--feature-gates=ClusterTrustBundle=true",
            "--v=1",
        ]

    def _start_apiserver(self, key: str = "apiserver") -> None:
        t = time.monotonic()
        self._apiserver = _Proc(
            "kube-apiserver",
            self.apiserver_argv(),
            self.workdir / "kube-apiserver.log",
            self.workdir,
        )
        self._apiserver.start()
        self.wait_ready()
        self.timings[key] = time.monotonic() - t

    def wait_ready(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.ready_timeout)
        last: object = None
        while True:
            if self._apiserver is not None:
                self._apiserver.check_alive()
            try:
                status, body = self.request("GET", "/readyz", raw=True, timeout=5)
                if status == 200:
                    return
                last = body
            except OSError as exc:  # refused while starting, TLS not up yet
                last = exc
            if time.monotonic() > deadline:
                log = self._apiserver.log if self._apiserver else Path("/nonexistent")
                raise TimeoutError(f"kube-apiserver not ready: {last!r}; log:\n{_tail(log)}")
            time.sleep(0.1)

    def _write_kubeconfig(self) -> None:
        def b64(path: Path) -> str:
            return base64.b64encode(path.read_bytes()).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "simmesh-test",
                    "cluster": {
                        "server": self.url,
                        "certificate-authority-data": b64(self.pki.ca),
                    },
                }
            ],
            "users": [
                {
                    "name": "simmesh-admin",
                    "user": {
                        "client-certificate-data": b64(self.pki.admin_cert),
                        "client-key-data": b64(self.pki.admin_key),
                    },
                }
            ],
            "contexts": [
                {
                    "name": "simmesh-test",
                    "context": {"cluster": "simmesh-test", "user": "simmesh-admin"},
                }
            ],
            "current-context": "simmesh-test",
        }
        path = Path(self.kubeconfig)
        path.write_text(json.dumps(config, indent=2) + "\n")  # JSON is valid kubeconfig YAML
        path.chmod(0o600)

    # ---- HTTP
    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            ctx = ssl.create_default_context(cafile=str(self.pki.ca))
            ctx.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
            self._ssl = ctx
        return self._ssl

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        query: dict[str, str] | None = None,
        raw: bool = False,
        timeout: float = 30.0,
    ) -> tuple[int, Any]:
        """One request as the admin; returns (status, decoded JSON or text). Never raises
        on HTTP status (OSError on connection failure)."""
        if query:
            path = f"{path}?{urllib.parse.urlencode(query)}"
        data = None
        headers = {"Accept": "application/json"}
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = content_type
        conn = http.client.HTTPSConnection(
            self.host, self.port, context=self.ssl_context(), timeout=timeout
        )
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            status = resp.status
        finally:
            conn.close()
        text = payload.decode(errors="replace")
        if raw:
            return status, text
        try:
            return status, json.loads(text) if text else None
        except ValueError:
            return status, text

    def call(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        status, out = self.request(method, path, body, **kw)
        if not 200 <= status < 300:
            raise ApiError(method, path, status, out)
        return out

    def get(self, path: str, **kw: Any) -> Any:
        return self.call("GET", path, **kw)

    def create(self, path: str, obj: dict[str, Any], **kw: Any) -> Any:
        return self.call("POST", path, obj, **kw)

    def merge_patch(self, path: str, patch: dict[str, Any], **kw: Any) -> Any:
        return self.call("PATCH", path, patch, content_type="application/merge-patch+json", **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.call("DELETE", path, **kw)

    # ---- CRDs
    def install_crds(self, crds: list[dict[str, Any]]) -> None:
        base = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        for crd in crds:
            status, out = self.request("POST", base, crd)
            if status == 409:  # already there (same etcd): replace
                cur = self.get(f"{base}/{crd['metadata']['name']}")
                crd = json.loads(json.dumps(crd))
                crd["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"]
                self.call("PUT", f"{base}/{crd['metadata']['name']}", crd)
            elif not 200 <= status < 300:
                raise ApiError("POST", f"{base} ({crd['metadata']['name']})", status, out)
        self.wait_crds_served(crds)

    def wait_crds_served(self, crds: list[dict[str, Any]], timeout: float = 60.0) -> None:
        """Established and NamesAccepted, and every served version lists (discovery caught up)."""
        base = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        deadline = time.monotonic() + timeout
        pending = {c["metadata"]["name"]: c for c in crds}
        while pending:
            for name, crd in list(pending.items()):
                status, cur = self.request("GET", f"{base}/{name}")
                conds = {}
                if status == 200:
                    conds = {
                        c["type"]: c["status"]
                        for c in (cur.get("status") or {}).get("conditions") or []
                    }
                if conds.get("Established") == "True" and conds.get("NamesAccepted") == "True":
                    group, plural = crd["spec"]["group"], crd["spec"]["names"]["plural"]
                    served = [v["name"] for v in crd["spec"]["versions"] if v.get("served")]
                    if all(
                        self.request("GET", f"/apis/{group}/{v}/{plural}", query={"limit": "1"})[0]
                        == 200
                        for v in served
                    ):
                        del pending[name]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRDs not established/served: {sorted(pending)}")
            time.sleep(0.1)

    # ---- misc
    def namespaced(self, api: str, namespace: str, plural: str, name: str = "") -> str:
        """Path of a namespaced collection or object: api is 'v1' or 'group/version'."""
        prefix = "/api/v1" if api == "v1" else f"/apis/{api}"
        path = f"{prefix}/namespaces/{namespace}/{plural}"
        return f"{path}/{name}" if name else path

    def logs(self) -> dict[str, Path]:
        return {
            "etcd": self.workdir / "etcd.log",
            "kube-apiserver": self.workdir / "kube-apiserver.log",
        }


def main(argv: list[str] | None = None) -> int:
    """Start a cluster by hand: ``python tests/k8s/apiserver.py [workdir]``; Ctrl-C stops it."""
    import tempfile

    args = sys.argv[1:] if argv is None else argv
    workdir = Path(args[0]) if args else Path(tempfile.mkdtemp(prefix="simmesh-k8s-"))
    cluster = Cluster(workdir)
    cluster.start()
    print(f"kubeconfig: {cluster.kubeconfig}\nurl: {cluster.url}\ntimings: {cluster.timings}")
    print("Ctrl-C to stop", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
