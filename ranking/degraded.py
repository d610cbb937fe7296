"""Every reason an answer may carry in `degraded_reasons`, defined once.

The feature stores and the cache report the reasons about features (`FetchResult.degraded`),
the core adds the ones only it can know (unknown ids, a missing user, partial scoring) and
decides strict mode from them (`OUTAGE`). README "Calling it" has the table callers read;
tests/core/test_degraded.py checks that it lists exactly these.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["OUTAGE", "Degraded"]


class Degraded(StrEnum):
    """A degraded reason; the value is the string callers see."""

    #: the store answered that the user id is not there: user features took defaults
    USER_UNKNOWN = "features.user_unknown"
    #: the request named no user (empty `user_id`): user features took defaults
    USER_MISSING = "features.user_missing"
    #: the store answered that some candidate ids are not there: their features took defaults
    ITEMS_UNKNOWN = "features.items_unknown"
    #: the store failed (errors, refused connections, every replica down): for the ids it
    #: did not answer, the cache (if any) and defaults were used
    STORE_UNAVAILABLE = "features.store_unavailable"
    #: the store did not answer within the fetch's share of the request's time left (a tight
    #: budget or a slow store); cache and defaults were used for the ids it did not answer
    FETCH_TIMEOUT = "features.fetch_timeout"
    #: the cache served entries past their TTL because the store did not answer
    STALE = "features.stale"
    #: a stored vector did not match the schema: those ids took defaults
    SCHEMA_MISMATCH = "features.schema_mismatch"
    #: not every candidate fit in the time left; the rest follow unscored
    PARTIAL_SCORING = "budget.partial_scoring"


#: Reasons that mean features the request asked for were not read from the store: a strict
#: request fails with UNAVAILABLE when its answer would carry one of them.
OUTAGE = frozenset({Degraded.STORE_UNAVAILABLE, Degraded.FETCH_TIMEOUT, Degraded.STALE})
