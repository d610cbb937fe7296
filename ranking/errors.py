"""The service's errors, each naming the gRPC status a caller sees.

    RankingError                      INTERNAL (base; never raised directly)
    ├── InvalidRequest                INVALID_ARGUMENT: malformed; the message names the field
    ├── DeadlineExceeded              DEADLINE_EXCEEDED: the caller's deadline had passed
    ├── Overloaded                    RESOURCE_EXHAUSTED: shed by the concurrency limiter
    ├── Unavailable                   UNAVAILABLE: strict mode with the store down, or shutting down
    │   └── FeatureStoreUnavailable   a store failed (adapters raise it)
    │       └── FeatureStoreTimeout   ... or did not answer within the time it was given
    └── BundleError                   FAILED_PRECONDITION: a model bundle is invalid (load / reload)

Only `server/errors` turns these into gRPC statuses; everything else raises. A status is its
`grpc.StatusCode` name, so that importing the errors does not load grpc: `ranking serve` must
set grpc-core's experiments before grpc loads (`server/experiments.py`). Messages are
written for the caller: they never contain exception text from a library. Errors from Redis
and LightGBM are translated at the adapter edge with `raise ... from exc`.
"""

from __future__ import annotations

__all__ = [
    "BundleError",
    "DeadlineExceeded",
    "FeatureStoreTimeout",
    "FeatureStoreUnavailable",
    "InvalidRequest",
    "Overloaded",
    "RankingError",
    "Unavailable",
]


class RankingError(Exception):
    """Base of the service's errors; `status` names the gRPC status sent to the caller (a
    `grpc.StatusCode` member's name)."""

    status: str = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(RankingError):
    status = "INVALID_ARGUMENT"


class DeadlineExceeded(RankingError):
    status = "DEADLINE_EXCEEDED"


class Overloaded(RankingError):
    """Shed by admission control. `retry_after_ms` is a hint sent as trailing metadata."""

    status = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, retry_after_ms: int) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class Unavailable(RankingError):
    status = "UNAVAILABLE"


class FeatureStoreUnavailable(Unavailable):
    """A feature store failed or timed out. Raised by store adapters; the cache and the core
    turn it into a degraded answer unless the request is strict."""


class FeatureStoreTimeout(FeatureStoreUnavailable):
    """A feature store did not answer within the time it was given (the caller's share of a
    request budget, or the store's own timeout): slow or tight, not known to be down."""


class BundleError(RankingError):
    status = "FAILED_PRECONDITION"
