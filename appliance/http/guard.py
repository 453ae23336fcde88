"""The connection caps of the HTTP server: how many connections are open in total and per client
address (an IPv4 address, an IPv6 /64), and the refusal of those over a cap."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections import Counter
from dataclasses import dataclass

from ..log import QuietLog
from ..metrics import HTTP_REFUSED, Registry

log = logging.getLogger("appliance.http")

#: Client addresses of this machine's own processes, exempt from the total cap.
_LOCAL_PEERS = frozenset({"127.0.0.1", "::1"})


@dataclass(frozen=True)
class ConnectionLimits:
    """Settings http.max_connections, http.max_connections_per_ip, http.header_timeout and
    http.send_timeout."""

    max_connections: int
    max_per_peer: int
    header_timeout: float
    send_timeout: float = 30.0


class ConnectionGuard:
    """Counts open connections in total and per client address, and refuses those over a cap."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.total = 0
        self.per_peer: Counter[str] = Counter()
        self.quiet = QuietLog(log)

    def admit(self, peer: str) -> str | None:
        """Count a new connection; or, over a cap, say why it is refused (and count nothing).
        This machine's own clients (health checks, plugins calling the API) are held only to the
        per-address cap, so remote clients filling the server cannot lock them out."""
        if self.total >= self.limits.max_connections and peer not in _LOCAL_PEERS:
            HTTP_REFUSED.inc(reason="max_connections")
            return f"the server has {self.total} connections open (http.max_connections)"
        if self.per_peer[peer] >= self.limits.max_per_peer:
            HTTP_REFUSED.inc(reason="max_connections_per_ip")
            return f"{peer} has {self.per_peer[peer]} connections open (http.max_connections_per_ip)"
        self.total += 1
        self.per_peer[peer] += 1
        return None

    def release(self, peer: str) -> None:
        """Count a connection admitted earlier out."""
        self.total -= 1
        self.per_peer[peer] -= 1
        if self.per_peer[peer] <= 0:
            del self.per_peer[peer]

    def register_metrics(self, registry: Registry) -> None:
        """The connection gauge /metrics reads when scraped (no per-address label: unbounded)."""
        registry.gauge(
            "appliance_http_connections",
            "HTTP connections open, the refused ones not counted.",
            lambda: self.total,
        )


def peer_of(transport: asyncio.BaseTransport) -> str:
    """The client a connection counts against (client_key of its peer address)."""
    peer = transport.get_extra_info("peername")
    return client_key(str(peer[0]) if isinstance(peer, tuple) and peer else "local")


def client_key(host: str) -> str:
    """The client a per-address cap applies to: an IPv4 address, or an IPv6 /64 (one host's
    share of a LAN; a single machine can pick any address in it). Loopback stays itself."""
    host = host.removeprefix("::ffff:")  # an IPv4 client of a dual-stack socket is that IPv4 address
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    if address.version == 6 and not address.is_loopback:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)
