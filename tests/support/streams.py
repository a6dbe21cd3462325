"""A py-spiffe X.509 context stream that records what it was sent, for tests that wait on it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from spiffe import WorkloadApiClient


class X509Stream:
    """Records contexts and errors (with their monotonic times) of one stream."""

    def __init__(self, endpoint: str) -> None:
        self.contexts: list[Any] = []
        self.errors: list[tuple[float, Exception]] = []
        self.cond = threading.Condition()
        self.client = WorkloadApiClient(socket_path=endpoint)
        self.handle = self.client.stream_x509_contexts(self._ok, self._err, retry_connect=False)

    def _ok(self, ctx: Any) -> None:
        with self.cond:
            self.contexts.append(ctx)
            self.cond.notify_all()

    def _err(self, err: Exception) -> None:
        with self.cond:
            self.errors.append((time.monotonic(), err))
            self.cond.notify_all()

    def wait(self, pred: Callable[[], object], timeout: float) -> bool:
        with self.cond:
            return bool(self.cond.wait_for(pred, timeout))

    def close(self) -> None:
        self.handle.cancel()
        self.client.close()
