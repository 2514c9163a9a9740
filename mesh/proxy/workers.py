"""``--workers N``: N processes, one event loop each, serving the same listeners.

The process ``simmesh proxy`` starts is worker 0 and the supervisor: it runs the config
source and the admin port, serves traffic like the others, and starts workers 1..N-1 as
child processes (``python -m mesh.proxy.workers``), each connected to it by a socket pair.
Every worker binds every listener with ``SO_REUSEPORT``, so the kernel spreads new
connections (and UDP clients, by address) over them; nothing is passed between processes on
the request path.

Over each socket pair the supervisor sends, as length-prefixed pickles of plain data, the
worker's options, then each config to apply (the MeshConfig's JSON; the worker decodes and
checks it as a file config), and asks for the worker's metrics and ``/config`` summary when
the admin port is read: ``/metrics`` adds up every worker's counters, histograms and gauges
(:func:`mesh.proxy.metrics.render_merged`); ``/readyz`` is 200 once every worker applied the
current config. SIGTERM drains every worker, each as a single proxy drains. A worker that
dies is started again and given the current config; one whose supervisor is gone (its
socket closes) drains and exits.

What stays per worker, because workers share no memory: balancers, circuit breakers and
in-flight counts (each worker sees its share of the traffic), and rate limits, which each
worker enforces as 1/N of the service's (``average``/N per second, burst divided up, at
least 1), so the node as a whole allows about what the annotation says.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
import socket
import struct
import sys
from dataclasses import replace
from typing import Any

from mesh.core import schema
from mesh.core.schema import MeshConfig
from mesh.proxy.metrics import render_merged
from mesh.proxy.options import Options
from mesh.proxy.proxy import Proxy, settle_memory

log = logging.getLogger("simmesh.proxy")
_HEADER = struct.Struct("!I")
MAX_MESSAGE = 512 * 1024 * 1024  # a config is at most 256 MiB (CONFIG_LIMITS)


async def send(writer: asyncio.StreamWriter, message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(_HEADER.pack(len(data)) + data)
    await writer.drain()


async def receive(reader: asyncio.StreamReader) -> Any:
    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    if size > MAX_MESSAGE:
        raise ValueError(f"a message of {size} bytes")
    return pickle.loads(await reader.readexactly(size))  # only ever from our own processes


class _Child:
    """One worker process, as the supervisor sees it."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: asyncio.subprocess.Process | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.version: str | None = None
        self.lock = asyncio.Lock()

    async def start(self, options: Options, log_level: str) -> None:
        ours, theirs = socket.socketpair()
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "mesh.proxy.workers",
                str(theirs.fileno()),
                pass_fds=(theirs.fileno(),),
            )
        finally:
            theirs.close()
        self.reader, self.writer = await asyncio.open_connection(sock=ours)
        self.version = None
        await send(self.writer, (replace(options, worker=self.index, admin_port=None), log_level))

    async def ask(self, message: tuple[str, Any], *, timeout: float = 30.0) -> Any:
        """Send one request, return the worker's answer."""
        if self.reader is None or self.writer is None:
            raise ConnectionError(f"worker {self.index} is not running")
        async with self.lock, asyncio.timeout(timeout):
            await send(self.writer, message)
            return await receive(self.reader)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class Supervisor:
    """Worker 0 and the others: what the config source and the admin port talk to."""

    def __init__(self, proxy: Proxy, *, log_level: str = "info") -> None:
        self.proxy = proxy
        self.log_level = log_level
        self.options = proxy.options
        self.children = [_Child(i) for i in range(1, self.options.workers)]
        self.config: MeshConfig | None = None
        self.stopping = False
        self._watchers: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.proxy.start(status=self)
        for child in self.children:
            await child.start(self.options, self.log_level)
            self._watchers.append(asyncio.create_task(self._watch(child)))

    async def _watch(self, child: _Child) -> None:
        """Start a worker again if it dies (and give it the current config)."""
        while not self.stopping:
            process = child.process
            assert process is not None
            code = await process.wait()
            child.close()
            if self.stopping:
                return
            log.error("worker %d exited with %s; starting it again", child.index, code)
            await asyncio.sleep(0.5)
            try:
                await child.start(self.options, self.log_level)
                if self.config is not None:
                    await self._apply_to(child, self.config)
            except (OSError, ConnectionError, TimeoutError, EOFError) as exc:
                log.error("worker %d: %s", child.index, exc)

    # -- what the config source calls --------------------------------------------------------

    async def apply(self, config: MeshConfig) -> bool:
        changed = await self.proxy.apply(config)
        self.config = config
        await asyncio.gather(*(self._apply_to(child, config) for child in self.children))
        return changed

    async def _apply_to(self, child: _Child, config: MeshConfig) -> None:
        try:
            answer = await child.ask(("config", schema.encode(config)))
        except (OSError, ConnectionError, TimeoutError, EOFError, asyncio.IncompleteReadError):
            log.error("worker %d did not take config %s", child.index, config.version)
            return
        if answer[0] == "applied":
            child.version = answer[1]
        else:
            log.error("worker %d refused config %s: %s", child.index, config.version, answer[1])

    # -- the admin port (mesh.proxy.admin.Status) -------------------------------------------------

    @property
    def ready(self) -> bool:
        version = self.proxy.version
        return self.proxy.ready and all(c.version == version for c in self.children)

    @property
    def draining(self) -> bool:
        return self.proxy.draining

    @property
    def version(self) -> str | None:
        return self.proxy.version

    async def _ask_all(self, what: str) -> list[Any]:
        answers = []
        for child in self.children:
            try:
                answers.append(await child.ask((what, None), timeout=5.0))
            except (OSError, ConnectionError, TimeoutError, EOFError, asyncio.IncompleteReadError):
                answers.append(None)
        return answers

    async def metrics_text(self) -> bytes:
        exports = [self.proxy.metrics.export(self.proxy.live())]
        exports += [a for a in await self._ask_all("metrics") if a is not None]
        return render_merged(exports)

    async def certificates(self) -> dict[str, Any]:
        # the certificate manager runs in this process and loads the first worker's tunnels
        return self.proxy.certificate_state()

    async def summary(self) -> dict[str, Any]:
        out = self.proxy.describe()
        out["ready"] = self.ready
        workers = [self.proxy.worker_summary()]
        for child, answer in zip(self.children, await self._ask_all("worker"), strict=True):
            workers.append(answer or {"worker": child.index, "running": False})
        out["workers"] = workers
        return out

    # -- stopping -------------------------------------------------------------------------------

    async def drain(self) -> None:
        self.stopping = True
        timeout = self.options.drain_timeout
        limit = self.options.drain_delay + timeout + 10
        asks = [child.ask(("drain", timeout), timeout=limit) for child in self.children]
        results = await asyncio.gather(self.proxy.drain(), *asks, return_exceptions=True)
        for child, result in zip(self.children, results[1:], strict=True):
            if isinstance(result, BaseException):
                log.warning("worker %d did not drain: %r", child.index, result)

    async def close(self) -> None:
        self.stopping = True
        for task in self._watchers:
            task.cancel()
        for child in self.children:
            child.close()
            process = child.process
            if process is not None and process.returncode is None:
                try:
                    async with asyncio.timeout(5):
                        await process.wait()
                except TimeoutError:
                    process.kill()
                    await process.wait()
        await self.proxy.close()


# -- a worker process ---------------------------------------------------------------------------


async def _serve(fd: int) -> int:
    reader, writer = await asyncio.open_connection(sock=socket.socket(fileno=fd))
    options, log_level = await receive(reader)
    logging.basicConfig(
        level=log_level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s %(name)s[worker {options.worker}]: %(message)s",
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: None)  # the supervisor says when to drain
    proxy = Proxy(options)
    await proxy.start()
    try:
        while True:
            try:
                kind, body = await receive(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                log.warning("the supervisor is gone: draining")
                await proxy.drain()
                return 0
            if kind == "config":
                try:
                    config = schema.decode(body)
                    if await proxy.apply(config):
                        settle_memory()
                except (ValueError, OSError) as exc:
                    await send(writer, ("refused", str(exc)))
                    continue
                await send(writer, ("applied", config.version))
            elif kind == "metrics":
                await send(writer, proxy.metrics.export(proxy.live()))
            elif kind == "worker":
                await send(writer, proxy.worker_summary())
            elif kind == "drain":
                await proxy.drain(body)
                await send(writer, ("drained", None))
                return 0
    finally:
        await proxy.close()
        writer.close()


def runner(*, no_uvloop: bool) -> asyncio.Runner:
    """An event loop runner: uvloop's when installed (and not refused), else asyncio's."""
    if not no_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    return asyncio.Runner()


def main(argv: list[str]) -> int:
    with runner(no_uvloop=os.environ.get("SIMMESH_NO_UVLOOP") == "1") as loop_runner:
        return loop_runner.run(_serve(int(argv[0])))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
