"""One applied config, as a request or connection sees it from start to end.

A reload builds the next :class:`Snapshot` beside the current one and swaps one reference
(``Context.snapshot``); a request or connection reads it once when it starts and keeps it, so
it finishes on the config it started on.
"""

from __future__ import annotations

from dataclasses import dataclass

from mesh.core.routing import Engine, Router
from mesh.core.schema import MeshConfig


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The document, its compiled router and the engine over it."""

    config: MeshConfig
    router: Router
    engine: Engine
    version: str
    applied_at: float  # wall-clock seconds

    def server_name(self, service: str) -> str:
        """The cluster DNS name of ``namespace/name``, checked when HTTPS is verified."""
        namespace, _, name = service.partition("/")
        return f"{name}.{namespace}.svc.{self.config.settings.cluster_domain}"
