"""Admission: admit a request at once or reject it at once, never queue it.

    limiter = build_limiter("gradient2")
    token = limiter.try_acquire()
    if token is None:
        raise Overloaded("server busy", retry_after_ms=limiter.retry_after_ms())
    try:
        ...work...
    except DeadlineExceeded:
        token.dropped()      # overload signal: the limit shrinks
        raise
    except InvalidRequest:
        token.ignore()       # says nothing about capacity
        raise
    else:
        token.success()

A `Limiter` admits while fewer than `limit` requests are in flight, and feeds the `Limit`
algorithm one sample (rtt, inflight at admission, dropped) per finished request. Each `Token`
is released exactly once: the first of `success()`, `ignore()` and `dropped()` takes effect,
later calls do nothing, so cleanup code may release defensively.

Concurrency: single-threaded by design. Every call (acquire and release) must come from the
thread running the event loop; there are no locks, because on one loop none are needed and a
lock would cost more than the limiter itself. Work handed to an executor must release its
token back on the loop (after the `await`), never from the worker thread.

Counters are plain ints, for metrics to read at any time:

    accepted = succeeded + dropped + ignored + inflight
    accepted + rejected = attempts
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any, Final, Literal, get_args

from ranking.limits.algorithms import AIMDLimit, FixedLimit, Gradient2Limit, Limit, VegasLimit

__all__ = [
    "LIMITER_KINDS",
    "Limiter",
    "LimiterKind",
    "Token",
    "build_limit",
    "build_limiter",
]

#: Names accepted by `build_limiter` (and the RANKING_LIMITER setting, and `--limiter`).
LimiterKind = Literal["off", "fixed", "vegas", "gradient2", "aimd"]
LIMITER_KINDS: Final[tuple[LimiterKind, ...]] = get_args(LimiterKind)

_UNLIMITED: Final = sys.maxsize


class Token:
    """One admitted request. Release it exactly once; extra releases are no-ops."""

    __slots__ = ("_limiter", "inflight", "start_ns")

    def __init__(self, limiter: Limiter, start_ns: int, inflight: int) -> None:
        self._limiter: Limiter | None = limiter
        #: The limiter's clock when the request was admitted.
        self.start_ns = start_ns
        #: Requests in flight right after this one was admitted (itself included).
        self.inflight = inflight

    @property
    def released(self) -> bool:
        return self._limiter is None

    def success(self) -> None:
        """The request completed (an answer, even a degraded one): its rtt is a sample."""
        limiter = self._limiter
        if limiter is not None:
            self._limiter = None
            limiter._complete(self, False)

    def dropped(self) -> None:
        """The request failed from overload (timed out, ran out of deadline): the limit backs
        off. Only for overload-like failures; a bad request is `ignore()`."""
        limiter = self._limiter
        if limiter is not None:
            self._limiter = None
            limiter._complete(self, True)

    def ignore(self) -> None:
        """Free the slot without a sample: the rtt says nothing about capacity (the request
        was invalid, the client cancelled, the work was not done)."""
        limiter = self._limiter
        if limiter is not None:
            self._limiter = None
            limiter.inflight -= 1
            limiter.ignored += 1


class Limiter:
    """Admits up to `limit.limit` requests at once; rejects the rest immediately.

    limit: the algorithm; None turns the limiter off (always admit, still count), for
        "limiter off" benchmarks.
    clock: monotonic nanoseconds; injectable for tests.
    retry_after_*: shape of the hint `retry_after_ms()` gives rejected callers.

    Single-threaded: see the module docstring.
    """

    __slots__ = (
        "_algorithm",
        "_clock",
        "_limit",
        "_rtt_ns",
        "accepted",
        "dropped",
        "ignored",
        "inflight",
        "rejected",
        "retry_after_max_ms",
        "retry_after_min_ms",
        "retry_after_rtt_multiple",
        "succeeded",
    )

    def __init__(
        self,
        limit: Limit | None,
        *,
        clock: Callable[[], int] = time.monotonic_ns,
        retry_after_min_ms: int = 1,
        retry_after_max_ms: int = 1000,
        retry_after_rtt_multiple: float = 2.0,
    ) -> None:
        if isinstance(retry_after_min_ms, bool) or not isinstance(retry_after_min_ms, int):
            raise TypeError("retry_after_min_ms must be an int")
        if isinstance(retry_after_max_ms, bool) or not isinstance(retry_after_max_ms, int):
            raise TypeError("retry_after_max_ms must be an int")
        if not 0 <= retry_after_min_ms <= retry_after_max_ms:
            raise ValueError(
                "need 0 <= retry_after_min_ms <= retry_after_max_ms, got "
                f"{retry_after_min_ms}, {retry_after_max_ms}"
            )
        if not (isinstance(retry_after_rtt_multiple, int | float) and retry_after_rtt_multiple > 0):
            raise ValueError(
                f"retry_after_rtt_multiple must be > 0, got {retry_after_rtt_multiple!r}"
            )
        self._algorithm = limit
        self._clock = clock
        self._limit = _UNLIMITED if limit is None else limit.limit
        #: Smoothed rtt of sampled requests (success and dropped), for the retry hint.
        self._rtt_ns = 0
        self.retry_after_min_ms = retry_after_min_ms
        self.retry_after_max_ms = retry_after_max_ms
        self.retry_after_rtt_multiple = float(retry_after_rtt_multiple)
        #: Admitted requests.
        self.accepted = 0
        #: Requests turned away at once (never admitted).
        self.rejected = 0
        #: Admitted requests released with success().
        self.succeeded = 0
        #: Admitted requests released with dropped().
        self.dropped = 0
        #: Admitted requests released with ignore().
        self.ignored = 0
        #: Admitted requests not yet released.
        self.inflight = 0

    @property
    def algorithm(self) -> Limit | None:
        return self._algorithm

    @property
    def enabled(self) -> bool:
        return self._algorithm is not None

    @property
    def limit(self) -> int:
        """The current concurrency limit; 0 when the limiter is off (no limit)."""
        return 0 if self._algorithm is None else self._limit

    @property
    def smoothed_rtt_ns(self) -> int:
        """Exponential average of recent sampled rtts (about the last 16); 0 before any."""
        return self._rtt_ns

    def try_acquire(self) -> Token | None:
        """A token if fewer than `limit` requests are in flight, else None. Never waits."""
        inflight = self.inflight
        if inflight >= self._limit:
            self.rejected += 1
            return None
        inflight += 1
        self.inflight = inflight
        self.accepted += 1
        return Token(self, self._clock(), inflight)

    def retry_after_ms(self) -> int:
        """How long a rejected caller should wait before retrying, in ms.

        A slot frees within about one rtt, but every rejected caller retrying after one rtt
        would meet the same full limiter; `retry_after_rtt_multiple` (2 by default) rtts spreads
        them out. Clamped to [retry_after_min_ms, retry_after_max_ms]; the minimum before any
        request has finished. Suitable for gRPC's `grpc-retry-pushback-ms` trailer.
        """
        hint = math.ceil(self._rtt_ns * self.retry_after_rtt_multiple / 1_000_000)
        if hint < self.retry_after_min_ms:
            return self.retry_after_min_ms
        if hint > self.retry_after_max_ms:
            return self.retry_after_max_ms
        return hint

    def _complete(self, token: Token, dropped: bool) -> None:
        # Called by Token.success / Token.dropped, once per token.
        start_ns = token.start_ns
        rtt_ns = self._clock() - start_ns
        self.inflight -= 1
        if dropped:
            self.dropped += 1
        else:
            self.succeeded += 1
        # Integer EWMA with weight 1/16: cheap, and enough for a retry hint.
        average = self._rtt_ns
        self._rtt_ns = rtt_ns if average == 0 else average + ((rtt_ns - average) >> 4)
        algorithm = self._algorithm
        if algorithm is not None:
            algorithm.on_sample(start_ns, rtt_ns, token.inflight, dropped)
            self._limit = algorithm.limit

    def __repr__(self) -> str:
        return (
            f"Limiter(algorithm={self._algorithm!r}, limit={self.limit}, "
            f"inflight={self.inflight}, accepted={self.accepted}, rejected={self.rejected})"
        )


_LIMIT_CLASSES: Final[dict[str, type[Limit]]] = {
    "fixed": FixedLimit,
    "vegas": VegasLimit,
    "gradient2": Gradient2Limit,
    "aimd": AIMDLimit,
}


def build_limit(kind: str, **params: Any) -> Limit | None:
    """The `Limit` named by `kind` (one of `LIMITER_KINDS`), built from `params`; None for
    "off". Parameters are the constructor's keywords (`initial_limit`, `min_limit`, ...);
    unknown or out-of-range ones raise TypeError / ValueError at start-up, not per request."""
    if kind == "off":
        if params:
            raise ValueError(f"limiter 'off' takes no parameters, got {sorted(params)}")
        return None
    if kind not in _LIMIT_CLASSES:
        raise ValueError(
            f"unknown limiter kind {kind!r}; expected one of {', '.join(LIMITER_KINDS)}"
        )
    return _LIMIT_CLASSES[kind](**params)


def build_limiter(
    kind: str,
    *,
    clock: Callable[[], int] = time.monotonic_ns,
    retry_after_min_ms: int = 1,
    retry_after_max_ms: int = 1000,
    retry_after_rtt_multiple: float = 2.0,
    **params: Any,
) -> Limiter:
    """A `Limiter` over `build_limit(kind, **params)`; the server builds one per worker at
    start-up from its settings (`ranking.server.app`)."""
    return Limiter(
        build_limit(kind, **params),
        clock=clock,
        retry_after_min_ms=retry_after_min_ms,
        retry_after_max_ms=retry_after_max_ms,
        retry_after_rtt_multiple=retry_after_rtt_multiple,
    )
