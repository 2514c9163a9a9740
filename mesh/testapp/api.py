"""The test app's HTTP API (aiohttp).

Reserved paths, never delayed, failed or recorded: ``/healthz``, ``/readyz`` (503 while
stopping), ``/call`` (requests from this pod, see calls.py), ``/calls`` (``GET`` what was
received, ``DELETE`` to reset) and ``/behaviour`` (``GET``; ``PUT`` a JSON object with any of
``latency``, ``errorRate``, ``errorStatus``, ``capacity``, ``latencyFactor``, ``latencyAdd``,
``contention``). Every other path and method is the
echo (``/echo`` by convention): it waits for a capacity slot, takes the latency, and answers
JSON with the serving pod, the caller's address, method, path, query, headers and body length,
or, at the error rate, the error status with the pod's name. Every echo answer carries
``X-Testapp-Pod``.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

from aiohttp import web

from mesh.testapp.behaviour import Behaviour, BehaviourError, Gate
from mesh.testapp.calls import CallError, parse_spec, run_calls, summarise
from mesh.testapp.record import Identity, Recorder

__all__ = ["HttpApp"]

RESERVED = {"/healthz", "/readyz", "/call", "/calls", "/behaviour"}


def _json(body: Any, status: int = 200, **headers: str) -> web.Response:
    text = json.dumps(body, sort_keys=True)
    return web.Response(text=text, status=status, content_type="application/json", headers=headers)


def _bad(message: str) -> web.Response:
    return _json({"error": message}, status=400)


class HttpApp:
    def __init__(
        self, identity: Identity, recorder: Recorder, behaviour: Behaviour, rng: random.Random
    ) -> None:
        self.identity = identity
        self.recorder = recorder
        self.rng = rng
        self.behaviour = behaviour
        self.sample = behaviour.sampler()
        self.gate = Gate(behaviour.capacity)
        self.stopping = False
        self.app = web.Application(client_max_size=1 << 20)
        self.app.router.add_route("*", "/{tail:.*}", self.dispatch)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        if request.path not in RESERVED:
            return await self.echo(request)
        handler = getattr(self, f"{request.method.lower()}_{request.path[1:]}", None)
        if handler is None:
            return _json({"error": f"{request.method} {request.path}: method not allowed"}, 405)
        response: web.StreamResponse = await handler(request)
        return response

    # ------------------------------------------------------------------ probes

    async def get_healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def get_readyz(self, request: web.Request) -> web.Response:
        if self.stopping:
            return web.Response(text="stopping\n", status=503)
        return web.Response(text="ok\n")

    # ------------------------------------------------------------------ the echo

    async def echo(self, request: web.Request) -> web.Response:
        length = 0
        while chunk := await request.content.readany():
            length += len(chunk)
        await self.serve()
        behaviour = self.behaviour
        failed = behaviour.error_rate > 0 and self.rng.random() < behaviour.error_rate
        status = behaviour.error_status if failed else 200
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.recorder.add(
            protocol="http",
            source=peer,
            method=request.method,
            path=request.path,
            query=request.query_string,
            host=request.host,
            status=status,
        )
        ip, port = (peer[0], peer[1]) if peer else ("", 0)
        body: dict[str, Any] = self.identity.to_json()
        if failed:
            body["error"] = "injected failure"
        else:
            body.update(
                client={"ip": ip, "port": port},
                method=request.method,
                path=request.path,
                query=request.query_string,
                headers={name: value for name, value in request.headers.items()},
                headerList=[[name, value] for name, value in request.headers.items()],
                bodyLength=length,
            )
        return _json(body, status=status, **{"X-Testapp-Pod": self.identity.name})

    async def serve(self) -> None:
        """Wait for a capacity slot, then take the service time (the echo and TCP lines)."""
        async with self.gate:
            others = self.gate.busy - 1
            await asyncio.sleep(self.behaviour.service_time(self.sample(self.rng), others))

    # ------------------------------------------------------------------ control

    async def get_call(self, request: web.Request) -> web.Response:
        raw: dict[str, Any] = {}
        for key, value in request.query.items():
            if key == "header":
                raw.setdefault("header", []).append(value)
            elif key in raw:
                return _bad(f"{key}: given more than once")
            else:
                raw[key] = value
        return await self._call(raw)

    async def post_call(self, request: web.Request) -> web.Response:
        try:
            raw = await request.json()
        except ValueError:
            return _bad("expected a JSON object with url, method, headers, body, count, timeout")
        if not isinstance(raw, dict):
            return _bad("expected a JSON object with url, method, headers, body, count, timeout")
        return await self._call(raw)

    async def _call(self, raw: dict[str, Any]) -> web.Response:
        try:
            spec = parse_spec(raw)
        except CallError as exc:
            return _bad(str(exc))
        results = await run_calls(spec)
        body = {"from": self.identity.to_json(), "url": spec.url, "results": results}
        body["summary"] = summarise(results)
        return _json(body)

    async def get_calls(self, request: web.Request) -> web.Response:
        entries = self.recorder.entries()
        return _json({"total": self.recorder.total, "count": len(entries), "calls": entries})

    async def delete_calls(self, request: web.Request) -> web.Response:
        return _json({"cleared": self.recorder.clear()})

    async def get_behaviour(self, request: web.Request) -> web.Response:
        state = {"busy": self.gate.busy, "queued": self.gate.queued}
        return _json({**self.behaviour.to_json(), **state})

    async def put_behaviour(self, request: web.Request) -> web.Response:
        try:
            self.set_behaviour(self.behaviour.updated(await request.json()))
        except ValueError as exc:  # BehaviourError, or a body that is not JSON
            message = str(exc) if isinstance(exc, BehaviourError) else "expected a JSON object"
            return _bad(message)
        return await self.get_behaviour(request)

    def set_behaviour(self, behaviour: Behaviour) -> None:
        self.sample = behaviour.sampler()
        self.behaviour = behaviour
        self.gate.set_limit(behaviour.capacity)
