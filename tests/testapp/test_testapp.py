"""The test app on loopback, with real sockets: echo, behaviour, /call, /calls, TCP and UDP."""

from __future__ import annotations

import asyncio
import json
import math
import random
import socket
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from mesh.core import distributions
from mesh.testapp import Options, TestApp
from mesh.testapp.behaviour import Behaviour, BehaviourError, Gate, parse_latency
from mesh.testapp.calls import CallError, classify, parse_spec
from mesh.testapp.record import Identity

HOST = "127.0.0.1"


@asynccontextmanager
async def running(
    name: str = "pod-a", *, echo: bool = True, **behaviour: Any
) -> AsyncIterator[TestApp]:
    options = Options(
        identity=Identity(name, "ns-a", "node-1"),
        behaviour=Behaviour(**behaviour),
        bind=HOST,
        http_port=0,
        tcp_port=0 if echo else None,
        udp_port=0 if echo else None,
        seed=7,
    )
    app = TestApp(options)
    await app.start()
    try:
        yield app
    finally:
        await app.close()


def url(app: TestApp, path: str) -> str:
    return f"http://{HOST}:{app.ports['http']}{path}"


async def fetch(
    method: str, target: str, *, json_body: Any = None, **kwargs: Any
) -> tuple[int, Any, dict[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, target, json=json_body, **kwargs) as response,
    ):
        text = await response.text()
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = text
        return response.status, body, dict(response.headers)


# --------------------------------------------------------------------------- echo


async def test_echo_names_the_pod_and_reports_the_request() -> None:
    async with running() as app:
        status, body, headers = await fetch(
            "POST", url(app, "/echo/deep/path?a=1&b=2"), data=b"x" * 1000, headers={"X-T": "v"}
        )
    assert status == 200
    assert headers["X-Testapp-Pod"] == "pod-a"
    assert (body["name"], body["namespace"], body["node"]) == ("pod-a", "ns-a", "node-1")
    assert body["client"]["ip"] == HOST and body["client"]["port"] > 0
    assert (body["method"], body["path"], body["query"]) == ("POST", "/echo/deep/path", "a=1&b=2")
    assert body["headers"]["X-T"] == "v"
    assert ["X-T", "v"] in body["headerList"]
    assert body["bodyLength"] == 1000


async def test_every_unreserved_path_and_method_is_the_echo() -> None:
    async with running() as app:
        for method, path in (("GET", "/metrics"), ("DELETE", "/api/items/3"), ("PATCH", "/")):
            status, body, _ = await fetch(method, url(app, path))
            assert (status, body["path"], body["method"]) == (200, path, method)


async def test_calls_counts_what_was_received_but_not_probes_or_control() -> None:
    async with running() as app:
        for path in ("/healthz", "/readyz", "/behaviour", "/calls"):
            assert (await fetch("GET", url(app, path)))[0] == 200
        await fetch("GET", url(app, "/echo?q=1"), headers={"Host": "b.ns.mesh"})
        await fetch("PUT", url(app, "/other"))
        _, listed, _ = await fetch("GET", url(app, "/calls"))
        assert listed["count"] == 2 and listed["total"] == 2
        first, second = listed["calls"]
        assert (first["method"], first["path"], first["query"]) == ("GET", "/echo", "q=1")
        assert (first["protocol"], first["source"], first["host"]) == ("http", HOST, "b.ns.mesh")
        assert first["status"] == 200 and first["time"] <= second["time"]
        assert (await fetch("DELETE", url(app, "/calls")))[1] == {"cleared": 2}
        assert (await fetch("GET", url(app, "/calls")))[1]["count"] == 0


async def test_reserved_paths_refuse_other_methods() -> None:
    async with running() as app:
        status, body, _ = await fetch("POST", url(app, "/healthz"))
    assert status == 405 and "POST /healthz" in body["error"]


# --------------------------------------------------------------------------- behaviour


async def test_latency_delays_the_echo_but_never_the_probes() -> None:
    async with running(latency=0.5) as app:
        start = time.perf_counter()
        await fetch("GET", url(app, "/healthz"))
        await fetch("GET", url(app, "/readyz"))
        probes = time.perf_counter() - start
        start = time.perf_counter()
        await fetch("GET", url(app, "/echo"))
        echo = time.perf_counter() - start
    assert probes < 0.4
    assert echo >= 0.5


async def test_error_rate_fails_with_the_error_status_and_the_pod_name() -> None:
    async with running(error_rate=1.0, error_status=503) as app:
        status, body, headers = await fetch("GET", url(app, "/echo"))
        assert (status, body["name"], body["error"]) == (503, "pod-a", "injected failure")
        assert headers["X-Testapp-Pod"] == "pod-a"
        assert (await fetch("GET", url(app, "/healthz")))[0] == 200
        _, listed, _ = await fetch("GET", url(app, "/calls"))
        assert [c["status"] for c in listed["calls"]] == [503]


async def test_error_rate_is_honoured_within_a_binomial_bound() -> None:
    n, p = 400, 0.3
    async with running(error_rate=p) as app:
        _, body, _ = await fetch(
            "GET", url(app, "/call"), params={"url": url(app, "/echo"), "count": str(n)}
        )
    failed = body["summary"]["statuses"].get("500", 0)
    assert abs(failed - n * p) <= 4 * math.sqrt(n * p * (1 - p))
    assert failed + body["summary"]["statuses"].get("200", 0) == n


async def test_capacity_queues_requests_beyond_it() -> None:
    async with running(latency=0.3, capacity=1) as app:
        start = time.perf_counter()
        await asyncio.gather(*(fetch("GET", url(app, "/echo")) for _ in range(3)))
        serial = time.perf_counter() - start
    async with running(latency=0.3, capacity=3) as app:
        start = time.perf_counter()
        await asyncio.gather(*(fetch("GET", url(app, "/echo")) for _ in range(3)))
        parallel = time.perf_counter() - start
    assert serial >= 0.9
    assert parallel < 0.75


async def test_put_behaviour_changes_latency_errors_and_capacity_at_runtime() -> None:
    async with running(latency=0.0) as app:
        status, now, _ = await fetch(
            "PUT", url(app, "/behaviour"), json_body={"latency": 0.25, "errorRate": 1}
        )
        assert status == 200
        assert (now["latency"], now["errorRate"], now["errorStatus"]) == (0.25, 1, 500)
        start = time.perf_counter()
        assert (await fetch("GET", url(app, "/echo")))[0] == 500
        assert time.perf_counter() - start >= 0.25
        spec = {"dist": "exponential", "mean": 0.001}
        status, now, _ = await fetch(
            "PUT", url(app, "/behaviour"), json_body={"latency": spec, "errorRate": 0}
        )
        assert (status, now["latency"]) == (200, spec)
        assert (await fetch("GET", url(app, "/echo")))[0] == 200


async def test_latency_factor_and_added_seconds_make_a_spike_and_undo_it() -> None:
    async with running(latency=0.05) as app:
        status, now, _ = await fetch(
            "PUT", url(app, "/behaviour"), json_body={"latencyFactor": 3, "latencyAdd": 0.1}
        )
        assert (status, now["latencyFactor"], now["latencyAdd"]) == (200, 3, 0.1)
        start = time.perf_counter()
        await fetch("GET", url(app, "/echo"))
        assert time.perf_counter() - start >= 0.25  # 0.05 * 3 + 0.1
        await fetch("PUT", url(app, "/behaviour"), json_body={"latencyFactor": 1, "latencyAdd": 0})
        start = time.perf_counter()
        await fetch("GET", url(app, "/echo"))
        assert time.perf_counter() - start < 0.2


async def test_contention_slows_each_request_by_the_ones_already_in_service() -> None:
    async with running(latency=0.1, contention=1.0) as app:
        first = asyncio.create_task(fetch("GET", url(app, "/echo")))
        await asyncio.sleep(0.03)
        start = time.perf_counter()
        await fetch("GET", url(app, "/echo"))  # one other in service: 0.1 * (1 + 1)
        second = time.perf_counter() - start
        await first
    assert second >= 0.2
    assert Behaviour(latency=0.1, contention=0.5).service_time(0.1, 4) == pytest.approx(0.3)


async def test_tcp_lines_wait_for_the_service_time() -> None:
    async with running(latency=0.2) as app:
        reader, writer = await asyncio.open_connection(HOST, app.ports["tcp"])
        start = time.perf_counter()
        writer.write(b"whoami\n")
        line = await asyncio.wait_for(reader.readline(), 5)
        elapsed = time.perf_counter() - start
        writer.close()
    assert json.loads(line)["protocol"] == "tcp"
    assert elapsed >= 0.2


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"errorRate": 2}, "errorRate: expected a number in [0, 1]"),
        ({"errorStatus": 99}, "errorStatus: expected an HTTP status"),
        ({"capacity": 0}, "capacity: expected a positive integer"),
        ({"latency": "slow"}, "latency:"),
        ({"latency": {"dist": "gamma"}}, "latency: dist: expected constant"),
        ({"speed": 1}, "speed: unknown field"),
        ({"latencyFactor": -1}, "latencyFactor: expected a number >= 0"),
        ({"contention": "lots"}, "contention: expected a number >= 0"),
        ([1, 2], "expected a JSON object"),
    ],
)
async def test_bad_behaviour_is_refused_with_one_line_and_nothing_changes(
    body: Any, message: str
) -> None:
    async with running(latency=0.0) as app:
        status, answer, _ = await fetch("PUT", url(app, "/behaviour"), json_body=body)
        assert status == 400 and message in answer["error"] and "\n" not in answer["error"]
        assert (await fetch("GET", url(app, "/behaviour")))[1]["errorRate"] == 0.0


async def test_capacity_raised_at_runtime_lets_queued_requests_in() -> None:
    async with running(latency=0.3, capacity=1) as app:
        start = time.perf_counter()
        pending = [asyncio.create_task(fetch("GET", url(app, "/echo"))) for _ in range(3)]
        await asyncio.sleep(0.1)
        _, state, _ = await fetch("GET", url(app, "/behaviour"))
        assert (state["busy"], state["queued"]) == (1, 2)
        await fetch("PUT", url(app, "/behaviour"), json_body={"capacity": 3})
        await asyncio.gather(*pending)
        assert time.perf_counter() - start < 0.75  # not 0.9 s: the queued two ran together


async def test_gate_is_fifo_and_a_cancelled_waiter_keeps_no_slot() -> None:
    gate = Gate(1)
    order: list[int] = []

    async def user(i: int, hold: float) -> None:
        async with gate:
            order.append(i)
            await asyncio.sleep(hold)

    first = asyncio.create_task(user(0, 0.05))
    await asyncio.sleep(0)
    cancelled = asyncio.create_task(user(1, 0))
    rest = [asyncio.create_task(user(i, 0)) for i in (2, 3)]
    await asyncio.sleep(0.01)
    cancelled.cancel()
    await asyncio.gather(first, *rest)
    assert order == [0, 2, 3]
    assert (gate.busy, gate.queued) == (0, 0)


def test_latency_spec_is_seconds_or_the_scenario_distribution_format() -> None:
    assert parse_latency("0.25") == 0.25
    spec = parse_latency('{"dist": "lognormal", "median": 0.01, "sigma": 0.5}')
    assert spec == {"dist": "lognormal", "median": 0.01, "sigma": 0.5}
    for bad in ("-1", "nan", "fast", '{"dist": "exponential"}'):
        with pytest.raises(BehaviourError, match="latency"):
            parse_latency(bad)


def test_the_app_samples_latency_exactly_as_the_simulator() -> None:
    from sim import distributions as sim_distributions

    spec = {"dist": "empirical", "percentiles": {"50": 0.01, "99": 0.2}}
    assert sim_distributions.sampler is distributions.sampler
    ours, theirs = Behaviour(latency=spec).sampler(), sim_distributions.sampler(spec)[0]
    a, b = random.Random(3), random.Random(3)
    assert [ours(a) for _ in range(50)] == [theirs(b) for _ in range(50)]


# --------------------------------------------------------------------------- /call


async def test_call_http_reports_status_pod_and_a_summary() -> None:
    async with running("pod-a") as caller, running("pod-b") as target:
        params = [("url", url(target, "/echo")), ("count", "5"), ("header", "X-Who: tester")]
        status, body, _ = await fetch("GET", url(caller, "/call"), params=params)
        _, seen, _ = await fetch("GET", url(target, "/calls"))
    assert status == 200
    assert body["from"]["name"] == "pod-a"
    assert body["summary"] == {
        "count": 5,
        "ok": 5,
        "statuses": {"200": 5},
        "errors": {},
        "pods": {"pod-b": 5},
    }
    first = body["results"][0]
    assert (first["status"], first["pod"], first["error"], first["reason"]) == (
        200,
        "pod-b",
        None,
        None,
    )
    assert first["elapsedMs"] > 0
    assert seen["count"] == 5


async def test_call_by_post_sends_method_headers_and_body() -> None:
    async with running("pod-a") as caller, running("pod-b") as target:
        spec = {
            "url": url(target, "/echo/x"),
            "method": "PUT",
            "headers": {"Host": "b.ns.mesh", "X-A": "1"},
            "body": "hello",
            "count": 2,
            "concurrency": 2,
        }
        status, body, _ = await fetch("POST", url(caller, "/call"), json_body=spec)
        _, seen, _ = await fetch("GET", url(target, "/calls"))
    assert status == 200 and body["summary"]["statuses"] == {"200": 2}
    assert {(c["method"], c["path"], c["host"]) for c in seen["calls"]} == {
        ("PUT", "/echo/x", "b.ns.mesh")
    }


async def test_call_reports_the_mesh_reason_of_a_denial() -> None:
    async def deny(request: web.Request) -> web.Response:
        return web.Response(status=403, text="denied by mesh", headers={"X-Simmesh-Reason": "no"})

    server = web.Application()
    server.router.add_get("/x", deny)
    runner = web.AppRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with running() as caller:
            _, body, _ = await fetch(
                "GET", url(caller, "/call"), params={"url": f"http://{HOST}:{port}/x"}
            )
    finally:
        await runner.cleanup()
    result = body["results"][0]
    assert (result["status"], result["reason"], result["pod"]) == (403, "no", None)
    assert result["body"] == "denied by mesh"
    assert body["summary"]["ok"] == 0


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


async def test_call_errors_are_classified_refused_timeout_and_reset() -> None:
    async def reset_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    resetter = await asyncio.start_server(reset_at_once, HOST, 0)
    reset_port = resetter.sockets[0].getsockname()[1]
    closed = _free_port()
    try:
        async with running() as caller, running("slow", latency=2.0) as slow:
            cases = {
                "refused": {"url": f"http://{HOST}:{closed}/"},
                "timeout": {"url": url(slow, "/echo"), "timeout": "0.3"},
                "reset": {"url": f"http://{HOST}:{reset_port}/"},
            }
            for expected, params in cases.items():
                _, body, _ = await fetch("GET", url(caller, "/call"), params=params)
                result = body["results"][0]
                assert result["error"] == expected, result
                assert result["status"] is None and result["message"]
                assert body["summary"]["errors"] == {expected: 1}
            _, body, _ = await fetch(
                "GET", url(caller, "/call"), params={"url": f"tcp://{HOST}:{closed}"}
            )
            assert body["results"][0]["error"] == "refused"
    finally:
        resetter.close()


def test_dns_failures_are_classified_as_dns() -> None:
    # Resolving a missing name would send a query to the machine's resolver; the class is
    # decided from the exception alone, so test that mapping.
    gai = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    assert classify(gai) == "dns"
    assert classify(aiohttp.ClientConnectorError(_key(), gai)) == "dns"
    assert classify(ConnectionRefusedError()) == "refused"
    assert classify(TimeoutError()) == "timeout"


def _key() -> Any:
    from aiohttp.client_reqrep import ConnectionKey

    return ConnectionKey("h", 80, False, True, None, None, None)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "url: required"),
        ({"url": "ftp://x/"}, "url: expected http://, tcp:// or udp://"),
        ({"url": "tcp://x"}, "url: tcp:// needs a port"),
        ({"url": "http://x:99999/"}, "url: bad port"),
        ({"url": "http://x/", "count": "0"}, "count: expected 1..10000"),
        ({"url": "http://x/", "count": "many"}, "count: expected a number"),
        ({"url": "http://x/", "timeout": "-1"}, "timeout: expected"),
        ({"url": "http://x/", "method": "FETCH"}, "method: expected one of"),
        ({"url": "http://x/", "header": ["novalue"]}, "header: expected Name:value"),
        ({"url": "http://x/", "colour": "red"}, "colour: unknown parameter"),
        ({"url": "http://x/", "hold": "5"}, "hold: only for tcp://"),
        ({"url": "tcp://x:1", "hold": "-1"}, "hold: expected 0..600"),
    ],
)
def test_bad_call_specs_name_the_parameter(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(CallError, match=message.replace("(", r"\(")):
        parse_spec(raw)


async def test_bad_call_is_a_400_with_one_line() -> None:
    async with running() as app:
        status, body, _ = await fetch("GET", url(app, "/call"), params={"count": "3"})
        assert status == 400 and body == {"error": body["error"]} and "url" in body["error"]
        status, body, _ = await fetch("POST", url(app, "/call"), data=b"{not json")
        assert status == 400 and "JSON" in body["error"]
        status, body, _ = await fetch(
            "GET", url(app, "/call"), params=[("url", "http://x/"), ("url", "http://y/")]
        )
        assert status == 400 and "more than once" in body["error"]


# --------------------------------------------------------------------------- TCP and UDP


async def test_tcp_echo_lines_whoami_and_the_tail_at_half_close() -> None:
    async with running() as app:
        reader, writer = await asyncio.open_connection(HOST, app.ports["tcp"])
        writer.write(b"hello\nwhoami\r\npartial")
        writer.write_eof()
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        _, seen, _ = await fetch("GET", url(app, "/calls"))
    first, second, third = data.split(b"\n", 2)
    assert first == b"hello"
    who = json.loads(second)
    assert (who["name"], who["namespace"], who["node"], who["protocol"]) == (
        "pod-a",
        "ns-a",
        "node-1",
        "tcp",
    )
    assert who["client"]["ip"] == HOST
    assert third == b"partial"
    assert [(c["protocol"], c["method"]) for c in seen["calls"]] == [("tcp", "TCP")]


async def test_udp_echo_and_whoami() -> None:
    async with running() as app:
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            await loop.sock_connect(sock, (HOST, app.ports["udp"]))
            await loop.sock_sendall(sock, b"\x00binary\xff")
            echoed = await asyncio.wait_for(loop.sock_recv(sock, 65535), 5)
            await loop.sock_sendall(sock, b"whoami\n")
            who = json.loads(await asyncio.wait_for(loop.sock_recv(sock, 65535), 5))
        _, seen, _ = await fetch("GET", url(app, "/calls"))
    assert echoed == b"\x00binary\xff"
    assert (who["name"], who["protocol"]) == ("pod-a", "udp")
    assert [c["protocol"] for c in seen["calls"]] == ["udp", "udp"]


async def test_call_over_tcp_and_udp_names_the_answering_pod() -> None:
    async with running("pod-a") as caller, running("pod-b") as target:
        for scheme in ("tcp", "udp"):
            params = {"url": f"{scheme}://{HOST}:{target.ports[scheme]}", "count": "3"}
            _, body, _ = await fetch("GET", url(caller, "/call"), params=params)
            assert body["summary"]["pods"] == {"pod-b": 3}, body
            assert json.loads(body["results"][0]["reply"])["protocol"] == scheme
        params = {"url": f"tcp://{HOST}:{target.ports['tcp']}", "payload": "ping"}
        _, body, _ = await fetch("GET", url(caller, "/call"), params=params)
        assert (body["results"][0]["reply"], body["results"][0]["pod"]) == ("ping\n", None)


async def test_call_holds_a_tcp_connection_open_and_counts_its_echoes() -> None:
    async with running("pod-a") as caller, running("pod-b") as target:
        params = {"url": f"tcp://{HOST}:{target.ports['tcp']}", "hold": "1.2", "count": "2"}
        start = time.monotonic()
        _, body, _ = await fetch("GET", url(caller, "/call"), params=params)
        elapsed = time.monotonic() - start
        _, seen, _ = await fetch("GET", url(target, "/calls"))
    assert body["summary"]["pods"] == {"pod-b": 2} and not body["summary"]["errors"], body
    assert [r["echoes"] for r in body["results"]] == [3, 3]  # a line every 0.5 s for 1.2 s
    assert all(0 < r["longestRoundTripMs"] < 500 for r in body["results"]), body
    assert 1.2 <= elapsed < 4
    assert [c["method"] for c in seen["calls"]] == ["TCP", "TCP"]  # one connection each


async def test_a_held_tcp_connection_cut_midway_is_an_error() -> None:
    async def cut_after_reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"hello\n")
        await reader.readline()  # the first tick
        writer.close()

    server = await asyncio.start_server(cut_after_reply, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with running("pod-a") as caller:
            params = {"url": f"tcp://{HOST}:{port}", "hold": "3"}
            _, body, _ = await fetch("GET", url(caller, "/call"), params=params)
    finally:
        server.close()
        await server.wait_closed()
    result = body["results"][0]
    assert result["error"] == "reset" and "cut after 0 echoes" in result["message"], result


async def test_call_over_udp_to_a_closed_port_is_refused() -> None:
    async with running() as caller:
        params = {"url": f"udp://{HOST}:{_free_port(socket.SOCK_DGRAM)}", "timeout": "2"}
        _, body, _ = await fetch("GET", url(caller, "/call"), params=params)
    assert body["results"][0]["error"] == "refused"


# --------------------------------------------------------------------------- the command


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--latency", "soon"], "latency: expected seconds or a JSON distribution"),
        (["--error-rate", "1.5"], "errorRate: expected a number in [0, 1]"),
        (["--capacity", "0"], "capacity: expected a positive integer"),
        (["--error-status", "700"], "errorStatus: expected an HTTP status"),
    ],
)
def test_bad_options_exit_2_with_one_line(args: list[str], message: str) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "mesh.cli", "testapp", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"simmesh testapp: error: {message}")


def test_the_command_serves_from_the_pod_environment_and_stops_on_sigterm() -> None:
    import os
    import signal
    import subprocess
    import sys
    import urllib.request

    port, tcp = _free_port(), _free_port()
    env = {**os.environ, "POD_NAME": "web-1", "POD_NAMESPACE": "shop", "NODE_NAME": "kind-w"}
    command = [sys.executable, "-m", "mesh.cli", "testapp", "--bind", HOST]
    command += ["--http-port", str(port), "--tcp-port", str(tcp)]
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://{HOST}:{port}/echo", timeout=2) as r:
                    body = json.loads(r.read())
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "testapp did not start"
                time.sleep(0.1)
        assert (body["name"], body["namespace"], body["node"]) == ("web-1", "shop", "kind-w")
        with socket.create_connection((HOST, tcp), timeout=5) as s:
            s.sendall(b"whoami\n")
            with s.makefile() as lines:
                assert json.loads(lines.readline())["name"] == "web-1"
        proc.send_signal(signal.SIGTERM)
        _, log = proc.communicate(timeout=15)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "simmesh testapp web-1" in log and "stopped" in log


def test_listen_at_keeps_the_port_closed_until_then() -> None:
    import subprocess
    import sys
    import urllib.request

    port = _free_port()
    at = time.time() + 3.0
    command = [sys.executable, "-m", "mesh.cli", "testapp", "--bind", HOST, "--http-port",
               str(port), "--listen-at", repr(at), "--log-level", "warning"]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.5)
        with pytest.raises(OSError):
            socket.create_connection((HOST, port), timeout=1).close()
        deadline = time.time() + 30
        answered = None
        while answered is None and time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://{HOST}:{port}/healthz", timeout=1) as r:
                    answered = (r.status, time.time())
            except OSError:
                time.sleep(0.05)
        assert answered is not None and answered[0] == 200
        assert answered[1] >= at
    finally:
        process.terminate()
        process.wait(10)
