"""Calls gRPC's core refused for the backlog cap (`max_pending_calls`), counted from channelz.

The cap refuses calls in C before any Python runs, so the service cannot count them as they
happen. gRPC's channelz does count every call a server starts, succeeds and fails, and a
refused call is started but neither succeeded nor failed (checked: grpcio 1.85, a Python abort
and a caller's deadline count as failed). So

    refused ~= started - succeeded - failed - calls still running

read per worker when its state is read. "Still running" is known for Rank calls in the handler
(the stats row); calls waiting in the core's backlog or other methods in flight are not, so the
estimate can run ahead of the truth by at most the backlog cap plus a few; taking the running
maximum keeps it a counter, and that bounded error does not accumulate: over any window its
rate is the refusal rate. Channelz is read through grpcio's Cython layer (the public
grpcio-channelz package wraps the same call); where it is missing the figure is left out.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

__all__ = ["BacklogRefusals", "channelz_server_ids"]

log = logging.getLogger(__name__)


def _servers() -> list[dict[str, object]] | None:
    try:
        from grpc._cython import cygrpc

        out: list[dict[str, object]] = []
        start = 0
        while True:
            page = json.loads(cygrpc.channelz_get_servers(start))
            servers = page.get("server", [])
            out.extend(servers)
            if page.get("end", True) or not servers:
                return out
            start = int(servers[-1]["ref"]["serverId"]) + 1
    except Exception:  # a grpcio without channelz: the figure is left out
        return None


def _id(server: dict[str, object]) -> int:
    ref = server.get("ref")
    return int(ref.get("serverId", -1)) if isinstance(ref, dict) else -1


def channelz_server_ids() -> set[int]:
    """Ids of the gRPC servers of this process now (empty without channelz)."""
    return {_id(s) for s in _servers() or ()}


class BacklogRefusals:
    """The estimate for the servers `ids` (this worker's; see `channelz_server_ids`)."""

    def __init__(self, ids: Iterable[int]) -> None:
        self._ids = set(ids)
        self._refused = 0.0

    def read(self, running: float) -> dict[str, float] | None:
        """{started, succeeded, failed, backlog_refused}; `running`: Rank calls in the handler."""
        servers = _servers()
        if servers is None or not self._ids:
            return None
        totals = {"started": 0.0, "succeeded": 0.0, "failed": 0.0}
        for server in servers:
            data = server.get("data")
            if _id(server) in self._ids and isinstance(data, dict):
                for key in totals:
                    totals[key] += float(data.get(f"calls{key.title()}", 0))
        estimate = totals["started"] - totals["succeeded"] - totals["failed"] - running
        self._refused = max(self._refused, estimate)
        return {**totals, "backlog_refused": self._refused}
