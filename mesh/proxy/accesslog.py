"""Structured access log: one JSON object per line on stdout, per request, connection or
UDP session. Off by default (``--access-log``); the proxy calls :meth:`AccessLog.write` only
when it is on, so a disabled log costs nothing on the hot path. Lines are flushed at most every
0.2 s (and at exit), not one write system call per request; with ``--workers`` every line is
flushed at once, so lines of several processes on one stdout never interleave.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO


class AccessLog:
    def __init__(self, stream: TextIO | None = None, *, flush_every: float = 0.2) -> None:
        self._stream = stream if stream is not None else sys.stdout
        self._flush_every = flush_every
        self._flushed = 0.0

    def write(self, record: dict[str, Any]) -> None:
        now = time.time()
        record["time"] = round(now, 6)
        self._stream.write(json.dumps(record, separators=(",", ":")) + "\n")
        if now - self._flushed >= self._flush_every:
            self.flush()
            self._flushed = now

    def flush(self) -> None:
        self._stream.flush()
