"""Locust users for a scenario's traffic, run headless by the local mesh (mesh/local/run.py).

Environment: ``SIMMESH_PLAN`` (plan.json, see plan.py), ``SIMMESH_READY_FILE`` (written when
the test starts), ``SIMMESH_T0_FILE`` (then written by the runner: the wall-clock time at which
the scenario starts; users wait for it) and ``SIMMESH_ROWS`` (every request, written at the
end).

One User class per traffic entry, with a fixed count:

- open loop (``rate``): one user that fires requests at Poisson arrival times, each in a
  greenlet of its own, so arrivals never wait for answers (the arrival schedule is computed
  from absolute times: when the process falls behind it catches up instead of slowing down);
- closed loop (``users``): that many users, each sending a request, waiting for its answer,
  then thinking an exponential time of mean ``thinkTime``, as the simulator's users do.

Every client socket is bound to the local address of a pod with the traffic's source
identity, so the node proxy (with ``--address-map``) sees that identity. HTTP goes through
Locust's FastHttpUser (geventhttpclient) with a client pool whose sockets are bound before
they connect; TCP opens a connection, sends ``whoami`` and reads the test app's one-line
answer; UDP sends one ``whoami`` datagram and waits for the answer. Each request carries a
``traceparent`` with a fresh trace id, which the proxy's access log repeats, so each request
can be matched with the proxy's record of it (tries, endpoint).

Each request becomes one row: stream, start and end (seconds after t0), status (0 when the
client got no answer), trace id or client port, and the answering pod.
"""

from __future__ import annotations

import json
import os
import random
import time
from bisect import bisect_right
from itertools import accumulate
from pathlib import Path
from typing import Any

import gevent
from gevent import socket as gsocket
from gevent.pool import Pool
from geventhttpclient.client import HTTPClientPool
from locust import User, events, task
from locust.contrib.fasthttp import FastHttpUser

PLAN: dict[str, Any] = json.loads(Path(os.environ["SIMMESH_PLAN"]).read_text())
T0 = 0.0
ROWS: list[tuple[Any, ...]] = []
STARTED: dict[int, int] = {}
TIMEOUT = float(os.environ.get("SIMMESH_REQUEST_TIMEOUT", "60"))


@events.test_start.add_listener  # type: ignore[untyped-decorator]
def _ready(**_: Any) -> None:
    Path(os.environ["SIMMESH_READY_FILE"]).write_text("ready\n")


def _wait_t0() -> None:
    global T0
    path = Path(os.environ["SIMMESH_T0_FILE"])
    while not T0:
        try:
            T0 = float(path.read_text())
        except (OSError, ValueError):
            gevent.sleep(0.01)


@events.quitting.add_listener  # type: ignore[untyped-decorator]
def _write_rows(**_: Any) -> None:
    path = Path(os.environ["SIMMESH_ROWS"])
    with path.open("w") as out:
        json.dump({"started": STARTED, "rows": ROWS}, out)


def _sleep_until(moment: float) -> None:
    delay = moment - time.time()
    if delay > 0:
        gevent.sleep(delay)


class BoundClientPool(HTTPClientPool):
    """HTTP clients whose sockets are bound to ``source`` before they connect (geventhttpclient
    names ``_create_tcp_socket`` as the socket factory to override)."""

    def __init__(self, source: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.source = source

    def get_client(self, url: Any) -> Any:
        client = super().get_client(url)
        pool = client._connection_pool
        if not getattr(pool, "simmesh_bound", False):
            create = pool._create_tcp_socket
            source = self.source

            def bound(family: int, socktype: int, protocol: int) -> Any:
                sock = create(family, socktype, protocol)
                sock.bind((source, 0))
                return sock

            pool._create_tcp_socket = bound  # type: ignore[method-assign]
            pool.simmesh_bound = True  # type: ignore[attr-defined]
        return client


class _Stream:
    """What every user class of a stream shares: the plan entry and the request mix."""

    stream: dict[str, Any]

    def _setup(self) -> None:
        s = self.stream
        self.rng = random.Random(f"{PLAN['seed']}:{s['index']}:{id(self)}")
        self.cumulative = list(accumulate(k["weight"] for k in s["mix"]))

    def _kind(self) -> dict[str, Any]:
        mix = self.stream["mix"]
        if len(mix) == 1:
            return dict(mix[0])
        index = bisect_right(self.cumulative, self.rng.random() * self.cumulative[-1])
        return dict(mix[min(index, len(mix) - 1)])

    def _record(self, start: float, status: int, key: Any, pod: Any) -> None:
        end = time.time()
        ROWS.append((self.stream["index"], start - T0, end - T0, status, key, pod))

    def _count(self) -> None:
        index = self.stream["index"]
        STARTED[index] = STARTED.get(index, 0) + 1

    def one(self) -> None:
        raise NotImplementedError

    def fire(self, name: str, start: float, length: int, failed: str | None) -> None:
        self.environment.events.request.fire(  # type: ignore[attr-defined]
            request_type=self.stream["protocol"].upper(),
            name=name,
            response_time=(time.time() - start) * 1000,
            response_length=length,
            exception=None if failed is None else RuntimeError(failed),
            context={},
        )

    # -- the two loops ---------------------------------------------------------------------

    def open_loop(self) -> None:
        s = self.stream
        moment = T0 + s["start"]
        stop = T0 + s["stop"]
        arrivals = random.Random(f"{PLAN['seed']}:arrivals:{s['index']}")
        pool = Pool()
        while True:
            moment += arrivals.expovariate(s["rate"])
            if moment >= stop:
                break
            _sleep_until(moment)
            pool.spawn(self.one)
        self._idle()

    def closed_loop(self) -> None:
        s = self.stream
        _sleep_until(T0 + s["start"])
        stop = T0 + s["stop"]
        while time.time() < stop:
            self.one()
            if s["think"] > 0:
                gevent.sleep(self.rng.expovariate(1.0 / s["think"]))
        self._idle()

    def _idle(self) -> None:
        while True:  # Locust's --run-time ends the test
            gevent.sleep(3600)


class HttpStream(_Stream, FastHttpUser):
    abstract = True

    def one(self) -> None:
        s = self.stream
        kind = self._kind()
        trace = os.urandom(16).hex()
        headers = {"Host": s["host"], "traceparent": f"00-{trace}-{os.urandom(8).hex()}-01"}
        headers.update(kind["headers"])
        self._count()
        start = time.time()
        name = f"{s['name']} {kind['method']} {kind['path']}"
        with self.client.request(
            kind["method"], kind["path"], headers=headers, catch_response=True, name=name
        ) as response:
            status = int(response.status_code or 0)
            pod = response.headers.get("X-Testapp-Pod") if status else None
            if 200 <= status < 400:
                response.success()
            else:
                response.failure(f"status {status}")
        self._record(start, status, trace, pod)


class FlowStream(_Stream, User):
    """TCP and UDP: one flow (or datagram) per request, answered by the test app's whoami."""

    abstract = True

    def one(self) -> None:
        s = self.stream
        self._count()
        start = time.time()
        port = 0
        reply = b""
        failed: str | None = None
        kind = gsocket.SOCK_STREAM if s["protocol"] == "tcp" else gsocket.SOCK_DGRAM
        sock = gsocket.socket(gsocket.AF_INET, kind)
        try:
            sock.bind((s["address"], 0))
            port = sock.getsockname()[1]
            sock.settimeout(TIMEOUT if kind == gsocket.SOCK_STREAM else 2.0)
            sock.connect((s["proxy"], s["port"]))
            if kind == gsocket.SOCK_STREAM:
                sock.sendall(b"whoami\n")
                while not reply.endswith(b"\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    reply += chunk
            else:
                sock.send(b"whoami\n")
                reply = sock.recv(65536)
        except OSError as exc:
            failed = type(exc).__name__
        finally:
            sock.close()
        pod = None
        if reply.endswith(b"\n"):
            try:
                pod = json.loads(reply).get("name")
            except ValueError:
                pod = None
        status = 200 if pod is not None else 0
        if pod is None and failed is None:
            failed = "closed without an answer"  # the proxy's access log says why
        self.fire(f"{s['name']} {s['protocol']}", start, len(reply), failed)
        self._record(start, status, port, pod)


def _user_class(stream: dict[str, Any]) -> type:
    base: type = HttpStream if stream["protocol"] == "http" else FlowStream
    attrs: dict[str, Any] = {
        "stream": stream,
        "fixed_count": 1 if stream["rate"] > 0 else stream["users"],
        "host": f"http://{stream['proxy']}:{stream['port']}",
        "abstract": False,
    }
    if base is HttpStream:
        attrs["client_pool"] = BoundClientPool(
            stream["address"], concurrency=1000, network_timeout=TIMEOUT, connection_timeout=TIMEOUT
        )
        attrs["network_timeout"] = TIMEOUT
        attrs["connection_timeout"] = TIMEOUT
        attrs["max_retries"] = 0

    def start(self: Any) -> None:
        self._setup()
        _wait_t0()

    def drive(self: Any) -> None:
        if self.stream["rate"] > 0:
            self.open_loop()
        else:
            self.closed_loop()

    attrs["on_start"] = start
    attrs["tasks"] = [task(drive)]
    return type(f"Stream{stream['index']}", (base,), attrs)


for _stream in PLAN["streams"]:
    globals()[f"Stream{_stream['index']}"] = _user_class(_stream)
