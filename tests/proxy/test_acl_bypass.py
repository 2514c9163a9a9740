"""Access control cannot be bypassed by how a request is written: path traversal, encodings,
path parameters, duplicate or connection-listed headers, over HTTP/1.1 and h2c.

The backend here is as lenient as backends get: it decodes every escape, drops ';' path
parameters and resolves dot segments, and serves a secret under /admin. With a grant for
``GET /api/.*`` only, no request may ever be served anything outside /api/, and the backend
must receive exactly the header lines that access control matched.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote

import h2.config
import h2.connection
import h2.events
from hyperframe.frame import HeadersFrame, RstStreamFrame

from tests.core.test_request import ALPHABET, tomcat_backend
from tests.proxy.h2attack import PROTOCOL_ERROR, RawH2, request_headers
from tests.proxy.harness import (
    build,
    endpoints,
    free_range,
    pod,
    route_group,
    running_proxy,
    service,
    settings,
    traffic_target,
)

CLIENT = "127.0.0.5"
HOST = "web.demo.mesh"


class LenientBackend(asyncio.Protocol):
    """HTTP/1.1, one request per connection: resolves the path as leniently as possible and
    answers JSON with what it received; /admin/* answers the secret."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer:
            return
        head = self.buffer.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        line, *fields = head.split("\r\n")
        _, target, _ = line.split(" ")
        path = target.split("?", 1)[0]
        resolved = tomcat_backend(unquote(path))  # decode twice over: the most lenient reading
        headers = [f.split(":", 1) for f in fields]
        body = json.dumps(
            {
                "target": target,
                "resolved": resolved,
                "headers": [[n.strip(), v.strip()] for n, v in headers],
                "secret": "s3cr3t" if resolved.startswith("/admin") else None,
            }
        ).encode()
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        self.transport.close()


@contextlib.asynccontextmanager
async def mesh(matches: list[dict[str, Any]]) -> AsyncIterator[int]:
    """A proxy in ACL mode in front of the lenient backend; the client may use ``matches``."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(LenientBackend, "127.0.0.2", 0)
    port = server.sockets[0].getsockname()[1]
    http = free_range(1)
    docs = [
        service("web"),
        *endpoints("web", [("127.0.0.2", port)], pods=["web-0"]),
        pod("web-0", "127.0.0.2", "web"),
        pod("client-0", CLIENT, "client"),
        route_group("web-routes", matches),
        traffic_target(
            "client-to-web",
            destination="web",
            sources=["client"],
            rules=[{"kind": "HTTPRouteGroup", "name": "web-routes"}],
        ),
    ]
    try:
        async with running_proxy(build(docs, settings(http=http, acl=True))):
            yield http
    finally:
        server.close()
        await server.wait_closed()


async def h1(
    port: int,
    target: str,
    headers: list[tuple[str, str]] | None = None,
    *,
    source: str = CLIENT,
    method: str = "GET",
    host: str = HOST,
) -> Any:
    """One raw HTTP/1.1 request (bytes exactly as given): (status, reason header, JSON)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{n}: {v}" for n, v in headers or []]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape"))
    try:
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    found = {n.strip().lower(): v.strip() for n, v in (f.split(":", 1) for f in fields)}
    data = json.loads(body) if found.get("content-type") == "application/json" else None
    return int(status_line.split(" ")[1]), found.get("x-simmesh-reason"), data


async def h2c(
    port: int,
    target: str,
    headers: list[tuple[str, str]] | None = None,
    *,
    source: str = CLIENT,
    method: str = "GET",
    host: str = HOST,
) -> Any:
    """One h2c prior-knowledge request: (status, reason header, JSON)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    conn = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding="utf-8"))
    conn.initiate_connection()
    pseudo = [(":method", method), (":scheme", "http"), (":authority", host), (":path", target)]
    conn.send_headers(1, pseudo + (headers or []), end_stream=True)
    writer.write(conn.data_to_send())
    status, found, body = 0, {}, b""
    try:
        while True:
            data = await asyncio.wait_for(reader.read(65536), 10)
            if not data:
                break
            ended = False
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    found = dict(event.headers)
                    status = int(found[":status"])
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    ended = True
            writer.write(conn.data_to_send())
            if ended:
                break
    finally:
        writer.close()
    data = json.loads(body) if found.get("content-type") == "application/json" else None
    return status, found.get("x-simmesh-reason"), data


TRAVERSALS = [
    "/api/../admin/secret.txt",
    "/api/%2e%2e/admin/secret.txt",
    "/api/%2E%2E/admin/secret.txt",
    "/api/.%2e/admin/secret.txt",
    "/api/%252e%252e/admin/secret.txt",
    "/api/..%2fadmin/secret.txt",
    "/api/..%5cadmin/secret.txt",
    "/api/..;/admin/secret.txt",
    "/api/%2e%2e;x/admin/secret.txt",
    "/api/;/../admin/secret.txt",
    "/api/x/../../admin/secret.txt",
    "/api/./.././admin/secret.txt",
    "/api//../admin/secret.txt",
    "/api/%00/../../admin",
    "/api/items;/../../admin",
    "/admin;/api/",
    "/admin/secret.txt;/api/",
]


def assert_safe(target: str, answer: Any) -> None:
    status, reason, data = answer
    if status == 200:
        assert data is not None and data["secret"] is None, (target, data)
        assert data["resolved"].startswith("/api/"), (target, data)
    else:
        assert status in (400, 403), (target, answer)
        assert reason in ("bad-request", "no-matching-route") or status == 400, (target, answer)


async def test_path_traversal_never_reaches_outside_the_grant_h1_and_h2c() -> None:
    async with mesh([{"name": "api", "pathRegex": "/api/.*", "methods": ["GET"]}]) as port:
        assert (await h1(port, "/api/items"))[0] == 200
        assert (await h1(port, "/admin/secret.txt"))[:2] == (403, "no-matching-route")
        for send in (h1, h2c):
            for target in TRAVERSALS:
                assert_safe(target, await send(port, target))
        # What the backend received is the canonical path, the one that was matched.
        _, _, data = await h1(port, "/api/%69tems/./a//b/../c?q=/../x")
        assert data["target"] == "/api/items/a/c?q=/../x"


async def test_generated_paths_are_decided_on_what_the_backend_reads() -> None:
    """A property over generated paths, through the real proxy: a request reaches the
    backend only when every reading of it the backend may take is under the grant."""
    rng = random.Random(1)
    alphabet = [*ALPHABET, *["a", "items", "/", "api"] * 4]
    targets = ["/api/" + "".join(rng.choice(alphabet) for _ in range(6)) for _ in range(200)]
    targets += ["/" + "".join(rng.choice(alphabet) for _ in range(6)) for _ in range(200)]
    targets = [t for t in targets if " " not in t and "#" not in t and "?" not in t]
    async with mesh([{"name": "api", "pathRegex": "/api/", "methods": ["GET"]}]) as port:
        statuses: dict[int, int] = {}
        for i, target in enumerate(targets):
            send = h1 if i % 2 else h2c
            answer = await send(port, target)
            assert_safe(target, answer)
            statuses[answer[0]] = statuses.get(answer[0], 0) + 1
        # The property was exercised on allowed, denied and refused requests alike.
        assert min(statuses.get(200, 0), statuses.get(403, 0), statuses.get(400, 0)) > 30


async def test_duplicate_headers_are_matched_combined_and_sent_as_matched() -> None:
    match = {"name": "users", "pathRegex": "/", "headers": [{"x-role": "user"}]}
    async with mesh([match]) as port:
        for send in (h1, h2c):
            status, _, data = await send(port, "/x", [("x-role", "user")])
            assert status == 200
            assert [v for n, v in data["headers"] if n.lower() == "x-role"] == ["user"]
            # Smuggling a second value: matched as "user, admin", which is not "user".
            answer = await send(port, "/x", [("x-role", "user"), ("x-role", "admin")])
            assert answer[:2] == (403, "no-matching-route")


async def test_a_connection_listed_header_is_not_matched_because_it_is_not_sent() -> None:
    match = {"name": "users", "pathRegex": "/", "headers": [{"x-role": "user"}]}
    async with mesh([match]) as port:
        answer = await h1(port, "/x", [("Connection", "x-role"), ("x-role", "user")])
        assert answer[:2] == (403, "no-matching-route")


async def test_a_match_on_a_header_the_proxy_sets_never_matches() -> None:
    match = {"name": "xff", "pathRegex": "/", "headers": [{"x-forwarded-for": ".*"}]}
    async with mesh([match]) as port:
        for send in (h1, h2c):
            answer = await send(port, "/x", [("x-forwarded-for", "10.0.0.1")])
            assert answer[:2] == (403, "no-matching-route")


async def test_an_h2c_request_line_cannot_be_injected_through_method_or_path() -> None:
    """HTTP/2 carries the method and the path as separate fields, but they go upstream on one
    HTTP/1.1 request line: ``GET /admin`` as a method with ``:path /user/x`` matched the
    ``/user/`` grant and was sent as ``GET /admin /user/x HTTP/1.1``. A method that is no
    token, or whitespace in the path or query, makes a malformed request: RST_STREAM
    (PROTOCOL_ERROR) before routing; the connection goes on."""
    cases = [
        ("GET /admin", "/user/x"),
        ("GET", "/user/x /admin"),
        ("GET", "/user/x?a= /admin"),
        ("GET", "/user/x\t/admin"),
        ("GET", "/user/x?\tq"),
        ("G\tET", "/user/x"),
    ]
    grant = [{"name": "user", "pathRegex": "/user/.*", "methods": ["GET"]}]
    async with mesh(grant) as port, RawH2.connect(port, source=CLIENT) as client:
        refused = []
        for method, path in cases:
            refused.append(client.stream())
            await client.send(
                client.headers(refused[-1], request_headers(path, method=method, host=HOST))
            )
        good = client.stream()
        await client.send(client.headers(good, request_headers("/user/x", host=HOST)))
        received = client.received
        assert await client.until(lambda: all(received.of(RstStreamFrame, s) for s in refused))
        for stream_id in refused:
            (reset,) = received.of(RstStreamFrame, stream_id)
            assert reset.error_code == PROTOCOL_ERROR  # type: ignore[attr-defined]
            assert not received.of(HeadersFrame, stream_id)
        assert await client.until(lambda: client.response_status(good) == "200")
