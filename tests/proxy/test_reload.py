"""Hot reload: atomic swaps under load, in-flight work on the old config, listener diffs,
policy state carried over."""

from __future__ import annotations

import asyncio
import contextlib
import random

import aiohttp

from tests.proxy.harness import (
    LOCAL,
    backends,
    build,
    endpoints,
    free_range,
    running_proxy,
    service,
    session,
    settings,
    tcp_workload,
    url,
)

HOST = {"Host": "web.demo.mesh"}


async def test_hundred_reloads_under_load_fail_nothing() -> None:
    http, tcp = free_range(1), free_range(4)
    async with (
        backends("127.0.0.2", "127.0.0.3", "127.0.0.4") as targets,
        tcp_workload("127.0.0.5") as db,
    ):
        rng = random.Random(7)

        def config(i: int):  # type: ignore[no-untyped-def]
            chosen = rng.sample(targets, rng.randint(1, 3))
            docs = [
                service("web", annotations={"simmesh.io/retry-attempts": str(i % 3)}),
                *endpoints("web", chosen),
            ]
            if i % 2:
                docs += [service("api"), *endpoints("api", targets[:1])]
            if i % 4 == 1:
                docs += [
                    service(
                        "db", ports=[("pg", 5432)], annotations={"simmesh.io/traffic-type": "tcp"}
                    ),
                    *endpoints("db", [db], port_name="pg"),
                ]
            return build(docs, settings(http=http, tcp=tcp))

        async with running_proxy(config(0)) as proxy:
            statuses: list[int] = []
            errors: list[str] = []
            stop = asyncio.Event()

            async def load() -> None:
                async with session() as client:
                    while not stop.is_set():
                        try:
                            async with client.get(url(http, "/x"), headers=HOST) as resp:
                                await resp.read()
                                statuses.append(resp.status)
                        except aiohttp.ClientError as exc:
                            errors.append(repr(exc))

            workers = [asyncio.create_task(load()) for _ in range(6)]
            applied = 0
            for i in range(1, 101):
                applied += await proxy.apply(config(i))
                await asyncio.sleep(0.01)
            stop.set()
            await asyncio.gather(*workers)
    assert applied == 100
    assert not errors
    assert len(statuses) > 200 and set(statuses) == {200}


async def test_inflight_request_finishes_on_its_config() -> None:
    http = free_range(1)
    async with backends("127.0.0.2") as targets:
        with_web = build([service("web"), *endpoints("web", targets)], settings(http=http))
        without = build([service("api"), *endpoints("api", targets)], settings(http=http))
        async with running_proxy(with_web) as proxy, session() as client:
            slow = asyncio.create_task(client.get(url(http, "/stall?seconds=0.5"), headers=HOST))
            await asyncio.sleep(0.2)
            await proxy.apply(without)
            async with client.get(url(http), headers=HOST) as resp:
                assert resp.status == 404
            resp = await slow
            assert resp.status == 200 and await resp.text() == "late"
            resp.release()


async def test_only_changed_listeners_open_and_close() -> None:
    http, tcp = free_range(1), free_range(4)
    async with (
        tcp_workload("127.0.0.2") as one,
        tcp_workload("127.0.0.3") as two,
        backends("127.0.0.4") as web,
    ):
        tcp_type = {"simmesh.io/traffic-type": "tcp"}
        http_docs = [service("web"), *endpoints("web", web)]
        a = build(
            [
                *http_docs,
                service("a", ports=[("pg", 1)], annotations=tcp_type),
                *endpoints("a", [one], port_name="pg"),
            ],
            settings(http=http, tcp=tcp),
        )
        b = build(
            [
                *http_docs,
                service("b", ports=[("pg", 1)], annotations=tcp_type),
                *endpoints("b", [two], port_name="pg"),
            ],
            settings(http=http, tcp=tcp + 1),
        )
        async with running_proxy(a) as proxy:
            assert set(proxy.listeners.open) == {(http, "http"), (tcp, "tcp")}
            http_listener = proxy.listeners.open[(http, "http")]
            reader, writer = await asyncio.open_connection(LOCAL, tcp)
            writer.write(b"before")
            assert await reader.readexactly(6) == b"before"
            await proxy.apply(b)
            assert set(proxy.listeners.open) == {(http, "http"), (tcp + 1, "tcp")}
            assert proxy.listeners.open[(http, "http")] is http_listener
            writer.write(b"after")  # the open connection lives on
            assert await reader.readexactly(5) == b"after"
            with contextlib.suppress(ConnectionRefusedError):
                _, refused = await asyncio.open_connection(LOCAL, tcp)
                refused.close()
                raise AssertionError("the removed listener still accepts")
            reader2, writer2 = await asyncio.open_connection(LOCAL, tcp + 1)
            writer2.write(b"new")
            assert await reader2.readexactly(3) == b"new"
            for w in (writer, writer2):
                w.close()


async def test_policy_state_survives_reload() -> None:
    http = free_range(1)
    async with backends("127.0.0.2") as targets:
        breaker = {"simmesh.io/circuit-breaker": "ConsecutiveFailures() >= 2"}
        first = build(
            [service("web", annotations=breaker), *endpoints("web", targets)], settings(http=http)
        )
        second = build(
            [
                service("web", annotations=breaker),
                *endpoints("web", targets),
                service("other"),
                *endpoints("other", targets),
            ],
            settings(http=http),
        )
        async with running_proxy(first) as proxy, session() as client:
            for _ in range(2):
                async with client.get(url(http, "/status/500"), headers=HOST) as resp:
                    assert resp.status == 500
            await proxy.apply(second)
            async with client.get(url(http), headers=HOST) as resp:
                assert resp.status == 503
                assert resp.headers["X-Simmesh-Reason"] == "circuit-open"
