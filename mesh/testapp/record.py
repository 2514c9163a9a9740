"""Who this test app is, and what it received.

``Identity`` is the pod the app runs as (name, namespace, node), put into every answer so a
caller knows which pod served it. ``Recorder`` keeps what the app received over HTTP, TCP and
UDP (not probes, not the control endpoints), so a test can count exactly what each backend got:
``GET /calls`` lists it, ``DELETE /calls`` resets it. It is bounded (oldest dropped first) and
counts everything it ever dropped.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

__all__ = ["Identity", "Recorder"]


@dataclass(frozen=True, slots=True)
class Identity:
    name: str
    namespace: str = ""
    node: str = ""

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "namespace": self.namespace, "node": self.node}


class Recorder:
    def __init__(self, limit: int = 100_000) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=limit)
        self.total = 0

    def add(self, *, protocol: str, source: tuple[str, int] | None, **fields: Any) -> None:
        ip, port = source if source else ("", 0)
        entry = {"protocol": protocol, "source": ip, "sourcePort": port, "time": time.time()}
        entry.update(fields)
        self._entries.append(entry)
        self.total += 1

    def entries(self) -> list[dict[str, Any]]:
        return list(self._entries)

    def clear(self) -> int:
        count = len(self._entries)
        self._entries.clear()
        return count
