"""Adaptive concurrency limits and admission: shed overload at once instead of queueing it.

`Limit` algorithms (Vegas, Gradient2, AIMD, Fixed) estimate how many requests may be in
flight; the `Limiter` admits up to that many and rejects the rest immediately. See
README.md in this folder for the default and how to tune it.
"""

from ranking.limits.algorithms import (
    AIMDLimit,
    FixedLimit,
    Gradient2Limit,
    Limit,
    VegasLimit,
)
from ranking.limits.limiter import (
    LIMITER_KINDS,
    Limiter,
    Token,
    build_limit,
    build_limiter,
)

__all__ = [
    "LIMITER_KINDS",
    "AIMDLimit",
    "FixedLimit",
    "Gradient2Limit",
    "Limit",
    "Limiter",
    "Token",
    "VegasLimit",
    "build_limit",
    "build_limiter",
]
