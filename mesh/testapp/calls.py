"""``/call``: requests made from inside the pod, so the caller has the pod's mesh identity.

A ``CallSpec`` (parsed from the query string or a JSON body) names a URL and how many times to
call it. ``http://`` sends HTTP requests (one connection pool per ``/call``), ``tcp://host:port``
opens a connection, sends the payload (``whoami`` by default) and reads one line back,
``udp://host:port`` sends the payload as one datagram and waits for one back. With ``hold``
(seconds, TCP only) a connection stays open that long after its reply, sending a line every
:data:`HOLD_TICK` and reading its echo: a long-lived flow, for what a proxy restart does to
one (``echoes`` counts the lines that came back; a cut flow is an error). Each call gives
a result: ``status`` (HTTP) or ``reply`` (TCP/UDP), the mesh's ``X-Simmesh-Reason`` header,
``pod`` (the answering test app, from its JSON answer), ``error`` (``refused``, ``reset``,
``timeout``, ``dns`` or ``error``) with ``message``, and ``elapsedMs``. ``summarise`` counts
statuses, errors and pods over all calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import socket
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

__all__ = ["CallError", "CallSpec", "run_calls", "summarise"]

MAX_COUNT = 10_000
MAX_CONCURRENCY = 100
MAX_TIMEOUT = 300.0
MAX_HOLD = 600.0
HOLD_TICK = 0.5  # seconds between two lines of a held TCP connection
BODY_PREVIEW = 512
METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}


class CallError(ValueError):
    """A bad /call request; the message names the parameter."""


@dataclass(frozen=True, slots=True)
class CallSpec:
    url: str
    scheme: str
    host: str
    port: int
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    payload: bytes = b"whoami"
    count: int = 1
    concurrency: int = 1
    timeout: float = 5.0
    hold: float = 0.0  # TCP: seconds the connection stays open after the reply


def _number(raw: Any, name: str, *, low: float, high: float, integer: bool) -> Any:
    try:
        value = int(raw) if integer else float(raw)
    except (TypeError, ValueError):
        raise CallError(f"{name}: expected a number, got {raw!r}") from None
    if isinstance(raw, bool) or not low <= value <= high:
        raise CallError(f"{name}: expected {low:g}..{high:g}, got {raw!r}")
    return value


def _target(url: Any) -> tuple[str, str, int]:
    if not isinstance(url, str) or not url:
        raise CallError("url: required, e.g. http://b.ns.mesh:8080/echo or tcp://b.ns.mesh:9000")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "tcp", "udp") or not parts.hostname:
        raise CallError(f"url: expected http://, tcp:// or udp:// with a host, got {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise CallError(f"url: bad port in {url!r}") from None
    if port is None:
        if parts.scheme != "http":
            raise CallError(f"url: {parts.scheme}:// needs a port, got {url!r}")
        port = 80
    return parts.scheme, parts.hostname, port


def _headers(raw: Any) -> tuple[tuple[str, str], ...]:
    if isinstance(raw, Mapping):
        items = [(str(k), str(v)) for k, v in raw.items()]
    elif isinstance(raw, Sequence) and not isinstance(raw, str):
        items = []
        for text in raw:
            name, sep, value = str(text).partition(":")
            if not sep or not name.strip():
                raise CallError(f"header: expected Name:value, got {text!r}")
            items.append((name.strip(), value.strip()))
    else:
        raise CallError("headers: expected an object of names to values")
    return tuple(items)


def parse_spec(raw: Mapping[str, Any]) -> CallSpec:
    """A CallSpec from a JSON body or query parameters (``header`` repeated as Name:value)."""
    known = {"url", "method", "headers", "header", "body", "payload", "count", "concurrency"}
    known |= {"timeout", "hold"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise CallError(f"{unknown[0]}: unknown parameter (known: {', '.join(sorted(known))})")
    scheme, host, port = _target(raw.get("url"))
    method = str(raw.get("method", "GET")).upper()
    if method not in METHODS:
        raise CallError(f"method: expected one of {', '.join(sorted(METHODS))}, got {method!r}")
    headers = _headers(raw.get("headers", raw.get("header", ())))
    body, payload = raw.get("body", ""), raw.get("payload", "whoami")
    if not isinstance(body, str) or not isinstance(payload, str):
        raise CallError("body and payload: expected strings")
    return CallSpec(
        url=raw["url"],
        scheme=scheme,
        host=host,
        port=port,
        method=method,
        headers=headers,
        body=body.encode(),
        payload=payload.encode(),
        count=_number(raw.get("count", 1), "count", low=1, high=MAX_COUNT, integer=True),
        concurrency=_number(
            raw.get("concurrency", 1), "concurrency", low=1, high=MAX_CONCURRENCY, integer=True
        ),
        timeout=_number(
            raw.get("timeout", 5), "timeout", low=0.001, high=MAX_TIMEOUT, integer=False
        ),
        hold=_hold(raw.get("hold", 0), scheme),
    )


def _hold(raw: Any, scheme: str) -> float:
    hold: float = _number(raw, "hold", low=0, high=MAX_HOLD, integer=False)
    if hold and scheme != "tcp":
        raise CallError(f"hold: only for tcp:// (a held connection), not {scheme}://")
    return hold


# --------------------------------------------------------------------------- errors


def classify(exc: BaseException) -> str:
    """refused, reset, timeout, dns or error."""
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        exc = exc.os_error
    if isinstance(exc, socket.gaierror):
        return "dns"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError | aiohttp.ServerDisconnectedError):
        return "reset"
    if isinstance(exc, aiohttp.ClientPayloadError | asyncio.IncompleteReadError):
        return "reset"
    if isinstance(exc, OSError) and exc.errno in (errno.ECONNRESET, errno.EPIPE):
        return "reset"
    if isinstance(exc, OSError) and exc.errno == errno.ECONNREFUSED:
        return "refused"
    return "error"


def _pod_of(data: bytes) -> str | None:
    try:
        answer = json.loads(data)
    except ValueError:
        return None
    name = answer.get("name") if isinstance(answer, dict) else None
    return name if isinstance(name, str) else None


# --------------------------------------------------------------------------- one call


async def _http(spec: CallSpec, session: aiohttp.ClientSession) -> dict[str, Any]:
    async with session.request(
        spec.method, spec.url, headers=list(spec.headers), data=spec.body or None
    ) as response:
        data = await response.read()
    pod = response.headers.get("X-Testapp-Pod") or _pod_of(data)
    result = {
        "status": response.status,
        "reason": response.headers.get("X-Simmesh-Reason"),
        "pod": pod,
    }
    if pod is None or response.status >= 400:
        result["body"] = data[:BODY_PREVIEW].decode(errors="replace")
    return result


async def _tcp(spec: CallSpec) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection(spec.host, spec.port, limit=1 << 20)
    echoes, longest = 0, 0.0
    try:
        writer.write(spec.payload + b"\n")
        await writer.drain()
        line = await reader.readline()
        if not line:
            raise ConnectionResetError("connection closed without a reply")
        if spec.hold:
            echoes, longest = await _hold_open(reader, writer, spec.hold)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
    result: dict[str, Any] = {
        "reply": line[:BODY_PREVIEW].decode(errors="replace"),
        "pod": _pod_of(line),
    }
    if spec.hold:
        result["echoes"] = echoes
        result["longestRoundTripMs"] = round(longest * 1000, 1)
    return result


async def _hold_open(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seconds: float
) -> tuple[int, float]:
    """Keep a TCP connection busy for ``seconds``: a line every HOLD_TICK (on a fixed
    schedule, so that the count does not depend on the round trips), each echo read back;
    the number of echoes and the longest round trip in seconds (ConnectionResetError when the
    flow is cut)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    end = start + seconds
    echoes = 0
    longest = 0.0
    while (left := end - loop.time()) > 0:
        await asyncio.sleep(min(max(0.0, start + (echoes + 1) * HOLD_TICK - loop.time()), left))
        sent = loop.time()
        line = b"tick %d\n" % echoes
        writer.write(line)
        await writer.drain()
        if await reader.readline() != line:
            raise ConnectionResetError(f"held connection cut after {echoes} echoes")
        longest = max(longest, loop.time() - sent)
        echoes += 1
    return echoes, longest


class _OneDatagram(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.answer.done():
            self.answer.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)


async def _udp(spec: CallSpec) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(spec.host, spec.port, type=socket.SOCK_DGRAM)
    address = infos[0][4]
    transport, protocol = await loop.create_datagram_endpoint(
        _OneDatagram, remote_addr=(str(address[0]), int(address[1]))
    )
    try:
        transport.sendto(spec.payload)
        data = await protocol.answer
    finally:
        transport.close()
    return {"reply": data[:BODY_PREVIEW].decode(errors="replace"), "pod": _pod_of(data)}


async def _one(spec: CallSpec, session: aiohttp.ClientSession | None) -> dict[str, Any]:
    start = time.perf_counter()
    result: dict[str, Any] = {"status": None, "reason": None, "pod": None, "error": None}
    try:
        async with asyncio.timeout(spec.timeout + spec.hold):
            if session is not None:
                result.update(await _http(spec, session))
            else:
                result.update(await (_tcp(spec) if spec.scheme == "tcp" else _udp(spec)))
    except (TimeoutError, OSError, aiohttp.ClientError, asyncio.IncompleteReadError) as exc:
        result["error"] = classify(exc)
        result["message"] = str(exc) or type(exc).__name__
    result["elapsedMs"] = round((time.perf_counter() - start) * 1000, 3)
    return result


async def run_calls(spec: CallSpec) -> list[dict[str, Any]]:
    """Every call of the spec, ``concurrency`` at a time, results in call order."""
    session = None
    if spec.scheme == "http":
        connector = aiohttp.TCPConnector(limit=spec.concurrency)
        session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
    results: list[dict[str, Any]] = [{} for _ in range(spec.count)]
    next_index = iter(range(spec.count))

    async def worker() -> None:
        for i in next_index:
            results[i] = await _one(spec, session)

    try:
        await asyncio.gather(*(worker() for _ in range(min(spec.concurrency, spec.count))))
    finally:
        if session is not None:
            await session.close()
    return results


def summarise(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    statuses = Counter(str(r["status"]) for r in results if r["status"] is not None)
    errors = Counter(str(r["error"]) for r in results if r["error"] is not None)
    pods = Counter(str(r["pod"]) for r in results if r["pod"] is not None)
    return {
        "count": len(results),
        "ok": sum(1 for r in results if r["error"] is None and (r["status"] or 200) < 400),
        "statuses": dict(sorted(statuses.items())),
        "errors": dict(sorted(errors.items())),
        "pods": dict(sorted(pods.items())),
    }
