"""Per-client request rate limits, shared by REST and gRPC (``GLIDER_RATE_LIMIT``).

The counting is the ``limits`` library's moving window in this process's memory: at most N requests
in any rolling period, exactly.  (Its sliding-window counter is an estimate from two fixed windows that
lets a client that spent its budget just before a window boundary in again just after it.)  A
client's budget covers both transports of one replica (with N replicas behind a Service, a client
spread over them gets up to N times the rate). The client is the peer address, or the value of
``GLIDER_RATE_LIMIT_CLIENT_HEADER`` when one is set (behind an ingress every peer is the ingress:
name a header the ingress overwrites, such as ingress-nginx's ``X-Real-IP``; one a client could
forge would let it pick its own bucket).
"""

from __future__ import annotations

import math
import time

from limits import parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter


class ClientRateLimiter:
    def __init__(self, spec: str, client_header: str = ""):
        self.items = parse_many(spec)
        self.spec = spec
        self.client_header = client_header.strip().lower()
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def retry_after(self, client: str) -> int | None:
        """Count one request of ``client``: None when every limit allows it, else the whole seconds until
        the limit it exceeds has room again. A refused request is not counted."""
        for item in self.items:
            if not self._limiter.test(item, client):
                reset = self._limiter.get_window_stats(item, client).reset_time
                return max(1, math.ceil(reset - time.time()))
        for item in self.items:
            self._limiter.hit(item, client)
        return None

    def message(self, retry_after: int) -> str:
        return f"rate limit {self.spec!r} exceeded for this client; retry in {retry_after} s"

    def rest_client(self, scope) -> str:
        if self.client_header:
            wanted = self.client_header.encode("latin-1")
            for name, value in scope.get("headers", ()):
                if name == wanted:
                    return value.decode("latin-1").strip()
        client = scope.get("client")
        return client[0] if client else "unknown"

    def grpc_client(self, context) -> str:
        if self.client_header:
            for key, value in context.invocation_metadata() or ():
                if key == self.client_header and isinstance(value, str):
                    return value.strip()
        return peer_host(context.peer() or "unknown")


def peer_host(peer: str) -> str:
    """The address part of a gRPC peer string ("ipv4:10.0.0.7:51234" -> "10.0.0.7",
    "ipv6:[::1]:51234" -> "::1"), so that one client's connections share a bucket."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6" and rest.startswith("["):
        return rest[1:rest.find("]")]
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    return peer
