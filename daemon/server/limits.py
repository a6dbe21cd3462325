"""Per-client limits: open connections and request rate. One client must not starve others.

On the Unix sockets a client is a uid: a connection over the cap is kept open only to be told
UNAVAILABLE; a request over the rate (a token bucket per uid, refilled continuously) gets
UNAVAILABLE, which clients retry with backoff. The HTTPS endpoint applies the same `[limits]`
per client address (refusing the connection, or answering 429). 0 turns a limit off.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from grpclib.const import Status

from ensign.daemon.errors import EnsignError


class RateLimited(EnsignError):
    grpc_status = Status.UNAVAILABLE
    exit_code = 75  # EX_TEMPFAIL
    public_message = "rate limited: retry later"
    detailed = True


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class UidLimits:
    def __init__(self, max_connections: int, rate: float, burst: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._max_connections = max_connections
        self._rate = rate
        self._burst = max(burst, rate)
        self._clock = clock
        self._connections: Counter[Hashable] = Counter()
        self._buckets: dict[Hashable, _Bucket] = {}

    def connect(self, uid: Hashable) -> bool:
        """Count a new connection; False when it is over the uid's cap (it still counts)."""
        self._connections[uid] += 1
        return not self._max_connections or self._connections[uid] <= self._max_connections

    def disconnect(self, uid: Hashable) -> None:
        self._connections[uid] -= 1
        if self._connections[uid] <= 0:
            del self._connections[uid]
            self._buckets.pop(uid, None)

    def allow(self, uid: Hashable) -> bool:
        if not self._rate:
            return True
        now = self._clock()
        b = self._buckets.get(uid)
        if b is None:
            b = self._buckets[uid] = _Bucket(tokens=self._burst, at=now)
        b.tokens = min(self._burst, b.tokens + (now - b.at) * self._rate)
        b.at = now
        if b.tokens < 1:
            return False
        b.tokens -= 1
        return True

    def connections(self, uid: Hashable) -> int:
        return self._connections[uid]
