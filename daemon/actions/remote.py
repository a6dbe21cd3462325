"""In a fleet: the attribution of a token another node issued, from that node's shipped trail.

The issuing node's issuance record reaches the fleet database through its audit shipping, in
the background, moments after the token was handed out. `lookup(node, jti)` asks the database
(`Fleet.issuance`: only the attribution fields, only that node's record); what it returns is
parsed by the same `entry_of` as a local record.

Shipping lag: a token issued less than `recent` ago (its `iat`) and not found yet is asked for
again, with a growing pause, for at most `wait` (2 s: shipping wakes every 0.2 s), so an action
reported moments after issuance on another node is attributed. Past that the action is recorded
`unknown` with the reason (not shipped yet); the reporter is never held longer. An older token
that is not there is not waited for. With the database known to be down (`down()` says why) it is
not asked at all; a query is bounded by `query_timeout`; either way the action is recorded
`unknown` naming the reason, never refused, never dropped.

Found attributions are cached by (node, jti) (a record never changes); misses are not. Two
reports of one token at once share one lookup.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ensign.daemon.actions.index import Attribution, entry_of

Lookup = Callable[[str, str], Awaitable[dict[str, Any] | None]]
WAIT = 2.0
RECENT = 60.0  # seconds since issuance within which a miss may be shipping lag
QUERY_TIMEOUT = 2.0
MAX_CACHED = 65_536


@dataclass(frozen=True, slots=True)
class Remote:
    """A lookup's answer: the attribution and expiry, or why there is none."""

    found: tuple[Attribution, int] | None
    reason: str = ""


class FleetIssuances:
    def __init__(self, lookup: Lookup, *, down: Callable[[], str | None],
                 clock: Callable[[], datetime], wait: float = WAIT, recent: float = RECENT,
                 query_timeout: float = QUERY_TIMEOUT) -> None:
        self._lookup = lookup
        self._down = down
        self._clock = clock
        self._wait, self._recent, self._timeout = wait, recent, query_timeout
        self._cache: OrderedDict[tuple[str, str], tuple[Attribution, int]] = OrderedDict()
        self._inflight: dict[tuple[str, str], asyncio.Future[Remote]] = {}

    async def find(self, node: str, jti: str, issued_at: int) -> Remote:
        key = (node, jti)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return Remote(hit)
        running = self._inflight.get(key)
        if running is None:
            running = asyncio.ensure_future(self._find(node, jti, issued_at))
            self._inflight[key] = running
            running.add_done_callback(lambda _: self._inflight.pop(key, None))
        return await asyncio.shield(running)

    async def _find(self, node: str, jti: str, issued_at: int) -> Remote:
        down = self._down()
        if down is not None:
            return Remote(None, f"the fleet database cannot be asked ({down[:300]})")
        loop = asyncio.get_running_loop()
        age = self._clock().timestamp() - issued_at
        waiting = age < self._recent
        deadline = loop.time() + (self._wait if waiting else 0.0)
        pause = 0.05
        while True:
            try:
                fields = await asyncio.wait_for(self._lookup(node, jti), self._timeout)
            except TimeoutError:
                return Remote(None, f"the fleet database did not answer within "
                                    f"{self._timeout:g} s")
            except Exception as e:  # any failure to ask: recorded, never raised to the reporter
                return Remote(None, f"the fleet database cannot be asked "
                                    f"({_one_line(e)[:300]})")
            if fields is not None:
                return self._parsed(node, jti, fields)
            if loop.time() + pause > deadline:
                break
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)
        if waiting:
            return Remote(None, f"not in the fleet database yet (node {node} ships its trail in "
                                f"the background; waited {self._wait:g} s)")
        return Remote(None, "not in the fleet database")

    def _parsed(self, node: str, jti: str, fields: dict[str, Any]) -> Remote:
        try:
            at = datetime.fromisoformat(str(fields.get("time"))).timestamp()
        except ValueError:
            at = None
        found = entry_of(fields, at) if at is not None else None
        if found is None or found[0] != jti:
            return Remote(None, f"node {node}'s issuance record of it cannot be read")
        self._cache[(node, jti)] = (found[1], found[2])
        if len(self._cache) > MAX_CACHED:
            self._cache.popitem(last=False)
        return Remote((found[1], found[2]))


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__
