"""Where configs come from: a watched file, or the controller's long-poll API.

Both call ``apply(config)`` with each new :class:`~mesh.core.config.MeshConfig` and never
stop on a bad input: a config that cannot be read or applied is logged and counted, and the
last good one keeps serving.

- :class:`FileSource` polls every 0.5 s: a changed (mtime, size, inode) triggers a read, and the
  content's hash decides whether it is new (so touching the file, or a write that is still in
  progress and fails to parse, does not reload). It also rehashes every few seconds, for
  filesystems with coarse mtimes. JSON is expected; YAML (``simmesh compile -o yaml``) works.
- :class:`ControllerSource` long-polls ``GET URL/api/v1/config?version=V&node=NAME`` with
  ``If-None-Match: "V"``: 200 brings a config (``ETag`` is its version), 304 means no change
  before the server's timeout. Failures back off exponentially with full jitter (capped), and
  the proxy keeps serving its last config while the controller is down. With ``--token-file``
  each poll carries ``Authorization: Bearer <token>``; the file is read again after a 401.
  Once it holds a config it asks for deltas (``&delta=1``): a controller that still has that
  version answers with what changed (:meth:`mesh.core.schema.ConfigReader.read_delta` applies
  it and checks that the result's digest is the new version); when a delta cannot be applied
  the same poll is made again for the full config, and ``on_delta("fallback")`` counts it.

Both decode with :func:`parse_config`: the size limit of :mod:`mesh.documents`
(``CONFIG_LIMITS``; a controller's answer is read up to that size only) and then the
MeshConfig schema's validating decoder (:func:`mesh.core.schema.decode`: types, ranges,
references, no NaN), so a document the proxy cannot use is refused as a whole, with the field
that is wrong, before anything of it is applied.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from mesh.core import schema
from mesh.core.schema import ConfigError, MeshConfig
from mesh.documents import CONFIG_LIMITS, DocumentError, load_yaml, read_bytes

log = logging.getLogger("simmesh.proxy")
Apply = Callable[[MeshConfig], Awaitable[bool]]


def parse_config(
    data: bytes, *, name: str = "config", reader: schema.ConfigReader | None = None
) -> MeshConfig:
    """A MeshConfig from JSON (or YAML, for ``*.yaml`` files), checked by its schema;
    ValueError naming the file and the field when it is unusable. ``reader``: the source's
    :class:`~mesh.core.schema.ConfigReader`, which takes the routes and clusters that did
    not change from the last config it read (the same result)."""
    if len(data) > CONFIG_LIMITS.max_bytes:
        raise DocumentError(f"{name}: {len(data)} bytes, larger than {CONFIG_LIMITS.max_bytes}")
    try:
        if name.endswith((".yaml", ".yml")):
            return schema.convert(load_yaml(data, name=name, limits=CONFIG_LIMITS))
        if reader is not None:
            return reader.decode(data)
        return schema.decode(data)
    except ConfigError as exc:
        raise DocumentError(f"{name}: {exc}") from None


def read_token(path: str) -> str:
    """The proxy token in ``path``; ValueError when the file holds none."""
    raw = read_bytes(Path(path))
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise DocumentError(f"{path}: the token must be ASCII text") from None
    if not token or len(token) > 4096 or any(c.isspace() or not c.isprintable() for c in token):
        raise DocumentError(f"{path}: expected one token of printable characters, no spaces")
    return token


class FileSource:
    def __init__(
        self,
        path: str,
        apply: Apply,
        *,
        interval: float = 0.5,
        rehash_every: int = 10,
        status: dict[str, Any] | None = None,
        on_error: Callable[[], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self._apply = apply
        self._interval = interval
        self._rehash_every = rehash_every
        self.status = status if status is not None else {}
        self.status.update(kind="file", path=str(self.path), error=None)
        self._on_error = on_error
        self._signature: tuple[int, int, int] | None = None
        self._digest: str | None = None
        self._reader = schema.ConfigReader()

    async def run(self) -> None:
        polls = 0
        while True:
            await self.poll(force=polls % self._rehash_every == 0)
            polls += 1
            await asyncio.sleep(self._interval)

    async def poll(self, *, force: bool = False) -> None:
        try:
            st = self.path.stat()
        except OSError as exc:
            self._fail(f"cannot read {self.path}: {exc.strerror}")
            return
        signature = (st.st_mtime_ns, st.st_size, st.st_ino)
        if signature == self._signature and not force:
            return
        self._signature = signature
        try:
            data = read_bytes(self.path, CONFIG_LIMITS)
        except DocumentError as exc:
            self._fail(str(exc))
            return
        digest = hashlib.sha256(data).hexdigest()
        if digest == self._digest:
            return
        try:
            config = parse_config(data, name=str(self.path), reader=self._reader)
        except ValueError as exc:  # DocumentError, ConfigError: keep the last good config
            self._fail(f"{self.path}: not a usable MeshConfig: {exc}")
            return
        try:
            await self._apply(config)
        except Exception as exc:  # any bad document: keep serving the last good one
            self._fail(f"{self.path}: not a usable MeshConfig: {exc!r}")
            return
        self._digest = digest
        self.status["error"] = None

    def _fail(self, message: str) -> None:
        if self.status.get("error") != message:
            log.error("%s (keeping the last config)", message)
            if self._on_error is not None:
                self._on_error()
        self.status["error"] = message


def backoff(failures: int, rng: random.Random, *, base: float = 0.25, cap: float = 10.0) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**failures)]."""
    return rng.uniform(0.0, min(cap, base * (2 ** min(failures, 16))))


class ControllerSource:
    def __init__(
        self,
        url: str,
        node: str,
        apply: Apply,
        *,
        poll_timeout: float = 90.0,
        status: dict[str, Any] | None = None,
        on_error: Callable[[], None] | None = None,
        backoff_base: float = 0.25,
        backoff_cap: float = 10.0,
        token_file: str | None = None,
        max_bytes: int = CONFIG_LIMITS.max_bytes,
        deltas: bool = True,
        on_delta: Callable[[str], None] | None = None,
    ) -> None:
        self.url = url.rstrip("/") + "/api/v1/config"
        self.node = node
        self._apply = apply
        self._poll_timeout = poll_timeout
        self.status = status if status is not None else {}
        self.status.update(kind="controller", url=url, error=None, version=None)
        self._on_error = on_error
        self._base = backoff_base
        self._cap = backoff_cap
        self._rng = random.Random()
        self.version = ""
        self._token_file = token_file
        self._token = read_token(token_file) if token_file else None
        self._max_bytes = max_bytes
        self._reader = schema.ConfigReader()
        self._deltas = deltas
        self._on_delta = on_delta

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5.0, sock_read=self._poll_timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            failures = 0
            while True:
                try:
                    changed = await self.poll(session)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # any failure: keep the last config, back off
                    failures += 1
                    delay = backoff(failures, self._rng, base=self._base, cap=self._cap)
                    self._fail(f"config from {self.url}: {exc!r}; retrying in {delay:.2f}s")
                    await asyncio.sleep(delay)
                    continue
                failures = 0
                self.status["error"] = None
                if changed is False:
                    await asyncio.sleep(0.5)  # a 200 without a new version: do not spin

    async def poll(self, session: aiohttp.ClientSession, *, delta: bool = True) -> bool | None:
        """One long-poll: True when a new config was applied, None on 304."""
        params = {"node": self.node}
        headers = {}
        if self.version:
            params["version"] = self.version
            headers["If-None-Match"] = f'"{self.version}"'
            if delta and self._deltas:
                params["delta"] = "1"
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        async with session.get(self.url, params=params, headers=headers) as resp:
            if resp.status == 304:
                return None
            if resp.status == 401 and self._token_file:
                self._token = read_token(self._token_file)  # rotated? use it next time
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}")
            data = await self._body(resp)
            etag = resp.headers.get("ETag", "").removeprefix("W/").strip('"')
            is_delta = resp.content_type == schema.DELTA_CONTENT_TYPE
        if is_delta:
            try:
                config = self._reader.read_delta(data)
            except ConfigError as exc:  # DeltaError too: the full config instead, at once
                log.warning(
                    "config delta from %s not applied: %s; fetching it whole", self.url, exc
                )
                self._count_delta("fallback")
                return await self.poll(session, delta=False)
            self._count_delta("applied")
        else:
            config = parse_config(data, name=self.url, reader=self._reader)
        await self._apply(config)
        old = self.version
        self.version = etag or config.version
        self.status["version"] = self.version
        return self.version != old

    def _count_delta(self, result: str) -> None:
        if self._on_delta is not None:
            self._on_delta(result)

    async def _body(self, resp: aiohttp.ClientResponse) -> bytes:
        if (resp.content_length or 0) > self._max_bytes:
            raise DocumentError(f"{self.url}: a config larger than {self._max_bytes} bytes")
        parts: list[bytes] = []
        size = 0
        while chunk := await resp.content.readany():
            size += len(chunk)
            if size > self._max_bytes:
                raise DocumentError(f"{self.url}: a config larger than {self._max_bytes} bytes")
            parts.append(chunk)
        return b"".join(parts)

    def _fail(self, message: str) -> None:
        log.warning("%s (keeping the last config)", message)
        if self._on_error is not None:
            self._on_error()
        self.status["error"] = message


def env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default
