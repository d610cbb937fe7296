"""The Prometheus text format (version 0.0.4) of the whole server's stats and states.

Counters and histograms are summed over the workers (they come from the shared stats table);
gauges that belong to one worker (limiter limit and in-flight, hedge delay, model info) carry a
`worker` label. Names follow Prometheus conventions: prefix `ranking_`, seconds, `_total` for
counters. The list is in README "Operating it".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from ranking.telemetry.state import ServiceState
from ranking.telemetry.stats import DEGRADED_REASONS, INDEX, OUTCOMES, STAGES, Stats

__all__ = ["CONTENT_TYPE", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = dict[str, str]


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, labels: Labels | None = None) -> None:
        self.lines.append(f"{name}{_labels(labels)} {_number(value)}")

    def metric(
        self, name: str, kind: str, help_text: str, samples: Iterable[tuple[Labels, float]]
    ) -> None:
        self.family(name, kind, help_text)
        for labels, value in samples:
            self.sample(name, value, labels)

    def histogram(
        self,
        name: str,
        labels: Labels,
        bounds: Sequence[float],
        cumulative: Sequence[float],
        total_s: float,
    ) -> None:
        for bound, count in zip(bounds, cumulative, strict=False):
            self.sample(f"{name}_bucket", count, {**labels, "le": _number(bound)})
        self.sample(f"{name}_bucket", cumulative[-1], {**labels, "le": "+Inf"})
        self.sample(f"{name}_sum", total_s, labels)
        self.sample(f"{name}_count", cumulative[-1], labels)


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _labels(labels: Labels | None) -> str:
    if not labels:
        return ""
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + body + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(stats: Stats, states: Sequence[tuple[int, ServiceState]]) -> str:
    """The exposition of the server: `stats` holds every worker's row; `states` is each
    worker's `ServiceState` (published ones, or the one worker's own)."""
    summed = stats.summed()
    w = _Writer()
    _requests(w, stats, summed)
    _states(w, states, float(summed[INDEX["shed"]]))
    return "\n".join(w.lines) + "\n"


def _requests(w: _Writer, stats: Stats, s: npt.NDArray[np.float64]) -> None:
    def value(name: str) -> float:
        return float(s[INDEX[name]])

    w.metric(
        "ranking_requests_total",
        "counter",
        "Rank calls by the gRPC status their caller got (CANCELLED: the caller went away). "
        "Calls refused by the gRPC backlog cap never reach the service and are not counted.",
        (({"code": code}, value(name)) for name, code in OUTCOMES.items()),
    )
    w.metric(
        "ranking_requests_in_flight",
        "gauge",
        "Rank calls begun and not yet ended, all workers.",
        [({}, value("requests") - sum(value(n) for n in OUTCOMES))],
    )
    w.family(
        "ranking_request_duration_seconds",
        "histogram",
        "Time in the service per Rank call, every outcome, from the handler's start to its end.",
    )
    bounds, counts, total = stats.histogram("total", s)
    w.histogram("ranking_request_duration_seconds", {}, bounds, counts, total)
    w.family(
        "ranking_stage_duration_seconds",
        "histogram",
        "Wall time per stage of a Rank call (stages are contiguous: their sum is the call).",
    )
    for stage in STAGES[:-1]:
        bounds, counts, total = stats.histogram(stage, s)
        w.histogram("ranking_stage_duration_seconds", {"stage": stage}, bounds, counts, total)
    w.metric(
        "ranking_degraded_total",
        "counter",
        "OK answers that carried each degraded reason.",
        (({"reason": r}, value(f"degraded:{r}")) for r in DEGRADED_REASONS),
    )
    w.metric(
        "ranking_degraded_responses_total",
        "counter",
        "OK answers with at least one degraded reason.",
        [({}, value("degraded"))],
    )
    for name, key, help_text in (
        ("ranking_candidates_total", "candidates", "Candidates in answered calls."),
        ("ranking_unscored_candidates_total", "unscored_rows", "Candidates the budget left "
         "unscored."),
        ("ranking_unknown_users_total", "unknown_users", "Calls whose user the store lacks."),
        ("ranking_unknown_items_total", "unknown_items", "Candidates the store lacks."),
        ("ranking_fetch_failures_total", "store_errors", "Answers that met a failing feature "
         "store (features.store_unavailable; cache and defaults, or UNAVAILABLE when strict)."),
        ("ranking_fetch_timeouts_total", "fetch_timeouts", "Answers whose feature fetch ran out "
         "of its share of the budget (features.fetch_timeout), apart from store failures."),
        ("ranking_worker_restarts_total", "worker_restarts", "Workers that died and were "
         "restarted by the parent."),
    ):  # fmt: skip
        w.metric(name, "counter", help_text, [({}, value(key))])


def _states(w: _Writer, states: Sequence[tuple[int, ServiceState]], shed: float) -> None:
    grpcs = [st.grpc for _, st in states if st.grpc is not None]
    sheds = [({"cause": "limiter"}, shed)]
    if grpcs:
        sheds.append(({"cause": "backlog"}, _sum(grpcs, "backlog_refused")))
    w.metric(
        "ranking_shed_total",
        "counter",
        "Calls refused at once for overload, by cause: limiter (RESOURCE_EXHAUSTED), backlog "
        "(gRPC's core refused the call before the service saw it, CANCELLED at the client; "
        "estimated from channelz, at most the backlog cap ahead of the truth).",
        sheds,
    )
    if grpcs:
        w.metric(
            "ranking_grpc_server_calls_started_total",
            "counter",
            "Calls gRPC's servers started (every method, refused ones included; channelz).",
            [({}, _sum(grpcs, "started"))],
        )

    def per_worker(get: str) -> list[tuple[Labels, float]]:
        return [({"worker": str(i)}, st.limiter.get(get, 0.0)) for i, st in states]

    w.metric(
        "ranking_limiter_limit", "gauge", "Concurrency limit of each worker.", per_worker("limit")
    )
    w.metric(
        "ranking_limiter_in_flight",
        "gauge",
        "Calls holding a limiter slot in each worker.",
        per_worker("inflight"),
    )
    w.metric(
        "ranking_model_info",
        "gauge",
        "The model each worker serves (value 1).",
        (
            ({"worker": str(i), "model_version": st.model_version, "engine": st.engine}, 1.0)
            for i, st in states
        ),
    )
    w.metric(
        "ranking_model_loaded_timestamp_seconds",
        "gauge",
        "Unix time each worker's model was loaded (start-up or the last reload).",
        (({"worker": str(i)}, st.model_loaded_at) for i, st in states),
    )
    w.metric(
        "ranking_model_reloads_total",
        "counter",
        "Successful model reloads.",
        [({}, float(sum(st.reloads for _, st in states)))],
    )
    w.metric(
        "ranking_model_reload_failures_total",
        "counter",
        "Bundles refused on reload (the old model kept serving).",
        [({}, float(sum(st.reload_failures for _, st in states)))],
    )
    _cache(w, [st.cache for _, st in states if st.cache is not None], states)
    _hedge(w, states)
    _replicas(w, states)


def _sum(dicts: Sequence[dict[str, float]], key: str) -> float:
    return float(sum(d.get(key, 0.0) for d in dicts))


def _cache(
    w: _Writer, caches: Sequence[dict[str, float]], states: Sequence[tuple[int, ServiceState]]
) -> None:
    if not caches:
        return
    by_type: dict[str, list[dict[str, float]]] = {}
    for _, st in states:
        for entity_type, one in st.cache_types.items():
            by_type.setdefault(entity_type, []).append(one)
    samples: list[tuple[dict[str, str], float]] = []
    for entity_type, counts in sorted(by_type.items()):
        hits, negative = _sum(counts, "hits"), _sum(counts, "negative_hits")
        misses, stale = _sum(counts, "misses"), _sum(counts, "stale_served")
        labels = {"entity_type": entity_type}
        samples += [
            ({**labels, "result": "hit"}, hits - negative),
            ({**labels, "result": "negative"}, negative),
            ({**labels, "result": "stale"}, stale),
            ({**labels, "result": "miss"}, misses - stale),
        ]
    w.metric(
        "ranking_cache_lookups_total",
        "counter",
        "Cache lookups (ids) by entity type and result: hit, negative (a cached unknown id), "
        "stale (a miss answered from an expired entry while the store failed), miss.",
        samples,
    )
    for name, key, help_text in (
        ("ranking_cache_inserts_total", "inserts", "Entries written into the cache."),
        ("ranking_cache_evictions_total", "evictions", "Entries evicted to make room."),
        ("ranking_cache_joined_total", "joined", "Misses that joined a read in flight."),
        ("ranking_cache_store_reads_total", "inner_reads", "Reads the cache sent to the store."),
        ("ranking_cache_store_failures_total", "store_failures", "Those that failed."),
    ):
        w.metric(name, "counter", help_text, [({}, _sum(caches, key))])


def _hedge(w: _Writer, states: Sequence[tuple[int, ServiceState]]) -> None:
    hedges = [(i, st.hedge) for i, st in states if st.hedge is not None]
    if not hedges:
        return
    values = [h for _, h in hedges]
    for name, key, help_text in (
        ("ranking_hedge_reads_total", "reads", "Reads through the hedger."),
        ("ranking_hedges_sent_total", "hedges_sent", "Hedged (second) reads sent."),
        ("ranking_hedges_won_total", "hedges_won", "Hedged reads that answered first."),
        ("ranking_hedge_budget_exhausted_total", "budget_exhausted", "Reads that wanted a "
         "hedge and found no token."),
        ("ranking_hedge_failovers_total", "failovers", "Reads retried on another replica "
         "after an error."),
    ):  # fmt: skip
        w.metric(name, "counter", help_text, [({}, _sum(values, key))])
    w.metric(
        "ranking_hedge_delay_seconds",
        "gauge",
        "The hedge delay each worker uses now.",
        (({"worker": str(i)}, h.get("delay_ms", math.nan) / 1e3) for i, h in hedges),
    )


def _replicas(w: _Writer, states: Sequence[tuple[int, ServiceState]]) -> None:
    by_name: dict[str, list[dict[str, float]]] = {}
    for _, st in states:
        for replica in st.replicas:
            by_name.setdefault(str(replica["name"]), []).append(replica)
    if not by_name:
        return
    for name, key, help_text in (
        ("ranking_store_reads_total", "fetches", "Reads (one MGET each) per store replica."),
        ("ranking_store_keys_read_total", "keys_read", "Keys read per store replica."),
        ("ranking_store_errors_total", "errors", "Failed reads per store replica."),
        ("ranking_store_timeouts_total", "timeouts", "Timed-out reads per store replica."),
        ("ranking_store_schema_mismatches_total", "schema_mismatches", "Vectors whose "
         "header did not match the schema."),
        ("ranking_store_marked_down_total", "marked_down", "Times the hedger marked the "
         "replica down."),
    ):  # fmt: skip
        w.metric(
            name,
            "counter",
            help_text,
            (({"replica": r}, _sum(entries, key)) for r, entries in by_name.items()),
        )
