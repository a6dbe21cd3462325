"""The bundles of federated trust domains: kept across restarts, refreshed in the background.

One task per `[[federation.trust_domains]]` fetches its bundle endpoint, then sleeps for the
bundle's `spiffe_refresh_hint` (bounded). A fetch that fails, hangs or returns something that is
not a bundle keeps the last good bundle: the failure is one warning line in the log, shows in
`ensign status` and in the `ensign_federation_bundle_stale` metric, and is retried with backoff.
Good bundles are written to `data_dir/federation/<td>.json` (0600) before they are used, so a
restart serves them at once, before the first fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ensign.daemon.config import FederatedTrustDomain, FederationConfig
from ensign.daemon.federation.bundle import BundleError, TrustBundle, parse, parse_any
from ensign.daemon.files import ensure_private_dir, write_private
from ensign.daemon.observe import metrics

log = logging.getLogger(__name__)

MIN_REFRESH = 1.0
MAX_REFRESH = 86400.0
DEFAULT_REFRESH = 300.0  # when a bundle names no refresh hint (SPIFFE bundle §4.1)
MAX_BACKOFF = 300.0


@dataclass(slots=True)
class _State:
    bundle: TrustBundle | None = None
    raw: bytes = b""
    fetched_at: float = 0.0
    error: str = ""
    failures: int = 0


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class FederatedBundles:
    """Bundles by trust domain name. Used from the event loop only."""

    def __init__(self, config: FederationConfig, data_dir: Path,
                 on_change: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.time) -> None:
        self._cfg = config
        self._dir = data_dir / "federation"
        self._on_change = on_change
        self._clock = clock
        self._domains = {t.trust_domain: t for t in config.trust_domains}
        self._state = {name: _State() for name in self._domains}
        self._tasks: list[asyncio.Task[None]] = []
        self.version = 0

    # -- views -----------------------------------------------------------------------------

    def get(self, trust_domain: str) -> TrustBundle | None:
        state = self._state.get(trust_domain)
        return state.bundle if state is not None else None

    def available(self, trust_domains: tuple[str, ...]) -> list[TrustBundle]:
        """The bundles among these trust domains that this node holds, in name order."""
        out = []
        for td in sorted(set(trust_domains)):
            b = self.get(td)
            if b is not None:
                out.append(b)
        return out

    def status(self) -> dict[str, str]:
        out = {}
        for name, s in sorted(self._state.items()):
            if s.bundle is None:
                out[name] = f"no bundle: {s.error or 'not fetched yet'}"
            elif s.error:
                out[name] = (f"stale: {s.error} (keeping the bundle fetched "
                             f"{_iso(s.fetched_at)})")
            else:
                out[name] = (f"ok: sequence {s.bundle.sequence}, fetched {_iso(s.fetched_at)}")
        return out

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if not self._domains:
            return
        ensure_private_dir(self._dir)
        for name, td in self._domains.items():
            self._load(name, td)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._refresh_loop(td), name=f"federation {name}")
                       for name, td in self._domains.items()]

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def _path(self, name: str) -> Path:
        return self._dir / f"{name}.json"

    def _load(self, name: str, td: FederatedTrustDomain) -> None:
        state = self._state[name]
        try:
            doc = json.loads(self._path(name).read_bytes())
            raw = str(doc["bundle"]).encode()
            state.bundle, state.raw = parse(name, raw), raw
            state.fetched_at = float(doc["fetched_at"])
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("kept federated bundle unreadable; fetching anew", extra={
                "trust_domain": name, "error": str(e)})
        if state.bundle is None and td.bundle_file is not None:
            try:  # only authenticates the first fetch (https_spiffe); never served as fetched
                state.bundle = parse_any(name, td.bundle_file.read_bytes())
            except (OSError, BundleError) as e:
                state.error = f"bundle_file {td.bundle_file}: {e}"
                log.error("bootstrap bundle unusable", extra={"trust_domain": name,
                                                              "error": state.error})
        self._gauges(name)

    async def _refresh_loop(self, td: FederatedTrustDomain) -> None:
        while True:
            delay = await self.refresh(td.trust_domain)
            await asyncio.sleep(delay)

    async def refresh(self, name: str) -> float:
        """Fetch once; return the seconds until the next fetch."""
        # aiohttp only once a trust domain is federated with: a node without federation starts
        # without it.
        from ensign.daemon.federation.fetch import FetchError, fetch

        td, state = self._domains[name], self._state[name]
        timeout = self._cfg.fetch_timeout.total_seconds()
        try:
            raw = await fetch(td, state.bundle, timeout)
            bundle = parse(name, raw)
        except (FetchError, BundleError) as e:
            state.error = str(e)[:500]
            state.failures += 1
            metrics.FEDERATION_FETCHES.labels(name, "failure").inc()
            log.warning("federated bundle fetch failed; keeping the last good bundle", extra={
                "trust_domain": name, "endpoint": td.bundle_endpoint_url, "error": state.error,
                "have_bundle": state.bundle is not None, "failures": state.failures})
            self._gauges(name)
            hint = (state.bundle.refresh_hint if state.bundle else None) or DEFAULT_REFRESH
            return max(MIN_REFRESH, min(hint, MAX_BACKOFF, 2.0 ** min(state.failures, 16)))
        now = self._clock()
        changed = raw != state.raw
        if changed:
            write_private(self._path(name), json.dumps(
                {"bundle": raw.decode(), "fetched_at": now}).encode())
            log.info("federated bundle updated", extra={
                "trust_domain": name, "sequence": bundle.sequence,
                "x509_authorities": len(bundle.x509_authorities),
                "jwt_authorities": len(bundle.jwt_authorities)})
        elif state.error:
            log.info("federated bundle endpoint answers again", extra={"trust_domain": name})
        state.bundle, state.raw, state.fetched_at = bundle, raw, now
        state.error, state.failures = "", 0
        metrics.FEDERATION_FETCHES.labels(name, "success").inc()
        self._gauges(name)
        if changed:
            self.version += 1
            self._on_change()
        hint = bundle.refresh_hint or DEFAULT_REFRESH
        return float(max(MIN_REFRESH, min(MAX_REFRESH, hint)))

    def _gauges(self, name: str) -> None:
        s = self._state[name]
        metrics.FEDERATION_STALE.labels(name).set(1.0 if s.error else 0.0)
        metrics.FEDERATION_AGE.labels(name).set(s.fetched_at)
