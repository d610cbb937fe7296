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

from ranking.errors import Overloaded, RankingError

__all__ = ["abort"]

log = logging.getLogger(__name__)


async def abort(context: grpc.aio.ServicerContext, exc: BaseException) -> NoReturn:
    """Abort the call for `exc` (always raises, as `context.abort` does).

    A cancelled call (the caller cancelled, or its deadline passed while the call ran) has no
    one to answer: the cancellation goes on, unlogged. Outcomes are counted by the core's
    call record (`CallRecord.end`), not here.
    """
    if isinstance(exc, asyncio.CancelledError):
        raise exc
    if isinstance(exc, RankingError):
        if isinstance(exc, Overloaded):
            # grpc-retry-pushback-ms is what gRPC clients with a retryPolicy honour.
            hint = str(exc.retry_after_ms)
            context.set_trailing_metadata(
                (("retry-after-ms", hint), ("grpc-retry-pushback-ms", hint))
            )
        await context.abort(grpc.StatusCode[exc.status], exc.message)
    log.error("unexpected error in a call", exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error; it has been logged")
    raise AssertionError("unreachable: context.abort raises")
