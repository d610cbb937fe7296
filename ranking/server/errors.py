"""The one place where errors become gRPC statuses.

Known errors (`RankingError`) abort with their own code and caller-facing message; anything else
is logged with its traceback and becomes INTERNAL with a generic message, so exception text
never reaches a client.
"""

from __future__ import annotations

import asyncio
import logging
from typing import NoReturn

import grpc

from ranking.errors import DeadlineExceeded, InvalidRequest, Overloaded, RankingError, Unavailable
from ranking.telemetry.stats import Stats

__all__ = ["abort", "status_of"]

log = logging.getLogger(__name__)

_COUNTER = {
    InvalidRequest: "invalid",
    Overloaded: "shed",
    DeadlineExceeded: "deadline",
    Unavailable: "unavailable",
}


def status_of(exc: BaseException) -> grpc.StatusCode:
    """The status `abort` ends a call with for `exc` (a cancelled call: CANCELLED)."""
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    if isinstance(exc, RankingError):
        return exc.code
    return grpc.StatusCode.INTERNAL


async def abort(context: grpc.aio.ServicerContext, exc: BaseException, stats: Stats) -> NoReturn:
    """Abort the call for `exc` (always raises, as `context.abort` does).

    A cancelled call (the caller cancelled, or its deadline passed while the call ran) has no
    one to answer: the cancellation is counted and goes on, unlogged.
    """
    if isinstance(exc, asyncio.CancelledError):
        stats.add("cancelled")
        raise exc
    if isinstance(exc, RankingError):
        for kind, name in _COUNTER.items():
            if isinstance(exc, kind):
                stats.add(name)
                break
        else:
            stats.add("internal")
        if isinstance(exc, Overloaded):
            # grpc-retry-pushback-ms is what gRPC clients with a retryPolicy honour.
            hint = str(exc.retry_after_ms)
            context.set_trailing_metadata(
                (("retry-after-ms", hint), ("grpc-retry-pushback-ms", hint))
            )
        await context.abort(exc.code, exc.message)
    stats.add("internal")
    log.error("unexpected error in a call", exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error; it has been logged")
    raise AssertionError("unreachable: context.abort raises")
