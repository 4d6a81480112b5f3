"""Per-client request rate limits, shared by REST and gRPC (``GLIDER_RATE_LIMIT``).

The limits are written in the ``limits`` library's notation (``20/second;600/minute``) and counted as a
moving window in this process's memory: at most N requests in any rolling period, exactly.  (A
sliding-window counter estimates from two fixed windows, and lets a client that spent its budget just
before a window boundary in again just after it.)  Each client keeps the times of its latest requests,
as many as the largest limit counts, and a client silent for the longest period is forgotten, so memory
follows the clients of the last period, not every client ever seen.  A client's budget covers both
transports of one replica (with N replicas behind a Service, a client spread over them gets up to N
times the rate). The client is the peer address, or the value of ``GLIDER_RATE_LIMIT_CLIENT_HEADER``
when one is set (behind an ingress every peer is the ingress: name a header the ingress overwrites, such
as ingress-nginx's ``X-Real-IP``; one a client could forge would let it pick its own bucket).
"""

from __future__ import annotations

import bisect
import math
import time

from limits import parse_many


class ClientRateLimiter:
    def __init__(self, spec: str, client_header: str = ""):
        # (requests, seconds) per limit
        self.limits = [(item.amount, float(item.get_expiry())) for item in parse_many(spec)]
        self.spec = spec
        self.client_header = client_header.strip().lower()
        self._keep = max(amount for amount, _ in self.limits)  # times a client needs, at most
        self._longest = max(seconds for _, seconds in self.limits)
        self._hits: dict[str, list[float]] = {}  # client -> its latest request times, oldest first
        self._swept = time.monotonic()

    def retry_after(self, client: str) -> int | None:
        """Count one request of ``client``: None when every limit allows it, else the whole seconds until
        the limit it exceeds has room again. A refused request is not counted."""
        now = time.monotonic()
        if now - self._swept >= self._longest:
            self._sweep(now)
        hits = self._hits.get(client, [])
        wait = 0.0
        for amount, seconds in self.limits:
            recent = len(hits) - bisect.bisect_right(hits, now - seconds)  # requests in (now - seconds, now]
            if recent >= amount:  # room again when the amount-th latest request leaves the window
                wait = max(wait, hits[len(hits) - amount] + seconds - now)
        if wait > 0:
            return max(1, math.ceil(wait))
        hits.append(now)
        if len(hits) > self._keep:
            del hits[: len(hits) - self._keep]
        self._hits[client] = hits
        return None

    def _sweep(self, now: float) -> None:
        """Forget the clients with no request in the longest period (their times can refuse nothing)."""
        horizon = now - self._longest
        self._hits = {client: hits for client, hits in self._hits.items() if hits[-1] > horizon}
        self._swept = now

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
