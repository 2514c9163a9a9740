"""The node proxy's options: every limit and timeout, as ``simmesh proxy`` parsed them.

One frozen value, built once by the command line (:func:`mesh.proxy.app.options_from`) or a
test, and read by every component through its :class:`~mesh.proxy.context.Context`. The
defaults are the documented ones (docs/proxy.md, docs/security.md#limits).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mesh.proxy.addresses import AddressMap


@dataclass(frozen=True, slots=True)
class Options:
    node: str
    bind: str = "0.0.0.0"
    admin_port: int | None = 9901  # None: no admin server; 0: any free port
    access_log: bool = False
    header_timeout: float = 10.0  # request headers; h2c preface and first request
    keepalive_timeout: float = 60.0  # idle HTTP/1.1 keep-alive and h2c connections
    body_timeout: float = 30.0  # between two reads of a request body
    write_timeout: float = 30.0  # a client that reads nothing of its response for this long
    upstream_timeout: float = 60.0  # per try, for services without simmesh.io/timeout
    connect_timeout: float = 5.0
    drain_delay: float = 0.0  # SIGTERM: still accepting (and ready) this long, then stop
    drain_timeout: float = 15.0  # then in-flight requests and flows may take this long
    udp_idle_timeout: float = 30.0
    buffer_limit: int = 64 * 1024
    max_header_size: int = 8190
    max_headers: int = 100  # request headers (431 beyond), and upstream response headers
    max_response_header_size: int = 64 * 1024  # upstream response headers in total (502)
    max_connections: int = 10_000  # downstream connections and UDP sessions
    max_upstream_connections: int | None = None  # None: what RLIMIT_NOFILE leaves (resources)
    max_connections_per_source: int | None = None  # None: a tenth of max_connections, >= 100
    reserved_connections: int | None = None  # for sources with identity; None: a tenth
    max_concurrent_streams: int = 100  # h2c SETTINGS_MAX_CONCURRENT_STREAMS, per connection
    max_mirrors: int = 64  # RequestMirror copies in flight; more are dropped
    # per h2c connection, token buckets (per second, burst); overspent: GOAWAY(ENHANCE_YOUR_CALM)
    h2_reset_rate: int = 100  # streams reset while served (rapid reset)
    h2_reset_burst: int = 200
    h2_control_rate: int = 100  # SETTINGS, PING, refused or malformed HEADERS
    h2_control_burst: int = 1000
    upstream_ca: str | None = None
    address_map: AddressMap = field(default_factory=lambda: AddressMap([]))
    tunnel_port: int = 15008  # mTLS from other nodes' proxies (0: any free port, for tests)
    tunnel_pipes: bool = True  # HTTP/1.1 to another node's pod on pipes where they can be
    # mTLS on: not Ready (so not published as the node's tunnel address) until every identity
    # of the node's pods is held, for at most this long after the first config (0: no wait)
    certificate_wait: float = 0.0
    # deployed to hold certificates (--certificates kubernetes): the tunnel port stays open,
    # and the certificates held, when a config says mTLS off (see Proxy._reconcile_tunnel)
    mtls_capable: bool = False
    workers: int = 1  # processes sharing the listeners (SO_REUSEPORT when more than one)
    worker: int = 0  # this process's index among them
