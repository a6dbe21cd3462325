"""Log text that h2 and hpack build on every frame and header, for loggers that drop it.

h2 formats `repr(frame)` for its trace log before calling it, for every frame it receives,
although grpclib gives it a logger that discards everything; the repr of a HEADERS or DATA frame
renders its body (about 2 us each, four frames per unary call). hpack calls its module logger
about thirty times per request. Neither text is ever read here: the daemon logs at INFO and
above. `install()` gives frames a repr that names the frame without rendering its body, and, while
hpack's logger would drop DEBUG anyway, a logger that does nothing. Installed by the server
when it starts, like bounds.install(); this process serves nothing else over HTTP/2.
"""

from __future__ import annotations

import logging
from typing import Any

import hpack.hpack
import hyperframe.frame


class _Dropped:
    """Takes hpack's debug calls and does nothing with them."""

    def debug(self, *args: Any, **kwargs: Any) -> None:
        pass


def _frame_repr(frame: hyperframe.frame.Frame) -> str:
    return f"{type(frame).__name__}(stream_id={frame.stream_id})"


def install() -> None:
    """Idempotent."""
    hyperframe.frame.Frame.__repr__ = _frame_repr  # type: ignore[method-assign]
    if not logging.getLogger(hpack.hpack.__name__).isEnabledFor(logging.DEBUG):
        hpack.hpack.log = _Dropped()  # type: ignore[assignment]
