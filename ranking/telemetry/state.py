"""A worker's state beyond the shared counters: model, reloads, limiter, feature-store counters.

The request path counts into the shared stats row (`stats.py`); everything else a dashboard
wants is already counted by the parts themselves (`ModelHolder`, `Limiter`, `CacheStats`,
`HedgeStats`, `RedisStoreStats`) and read here, nothing per request. `service_state` reads
them into one `ServiceState`; `RankingService.state()` returns it to GetStats, and each worker
of a multi-process server publishes it to a small JSON file every `PUBLISH_EVERY_S` so the
process serving /metrics can sum them (`publish` / `read_published`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ranking.core.models import ModelHolder
    from ranking.features.store import FeatureStore
    from ranking.limits import Limiter

__all__ = ["PUBLISH_EVERY_S", "ServiceState", "publish", "read_published", "service_state"]

#: How often a worker of a multi-process server writes its state for /metrics.
PUBLISH_EVERY_S = 1.0

_LIMITER_FIELDS = ("limit", "inflight", "accepted", "rejected", "dropped", "ignored")


@dataclass
class ServiceState:
    """One worker's state. Counter dicts use the features layer's own field names."""

    model_version: str
    engine: str
    #: Unix time the serving model was built (start-up or the last reload).
    model_loaded_at: float
    reloads: int
    reload_failures: int
    limiter: dict[str, float]
    #: `CacheStats` of the cache in front of the store; None without a cache.
    cache: dict[str, float] | None = None
    #: The cache's lookups by entity type: type -> `TypeLookups` fields; {} without a cache.
    cache_types: dict[str, dict[str, float]] = field(default_factory=dict)
    #: `HedgeStats` scalars and `delay_ms`, the hedge delay in use; None without hedging.
    hedge: dict[str, float] | None = None
    #: Per replica of the online store: `name`, its `RedisStoreStats`, and the hedger's
    #: per-replica counts (`hedge_reads`, `hedge_errors`, `marked_down`).
    replicas: list[dict[str, Any]] = field(default_factory=list)
    #: The worker's gRPC server calls from channelz and the backlog refusals estimated from
    #: them (`backlog.BacklogRefusals`); None when not read (GetStats) or unavailable.
    grpc: dict[str, float] | None = None

    def counters(self) -> dict[str, float]:
        """Flat numeric view for GetStats: limiter_*, cache_*, hedge_*, replica<i>_*."""
        out = {f"limiter_{k}": float(v) for k, v in self.limiter.items()}
        out["model_reloads"] = float(self.reloads)
        out["model_reload_failures"] = float(self.reload_failures)
        out["model_loaded_at"] = self.model_loaded_at
        for prefix, values in (("cache", self.cache), ("hedge", self.hedge), ("grpc", self.grpc)):
            for k, v in (values or {}).items():
                out[f"{prefix}_{k}"] = float(v)
        for i, replica in enumerate(self.replicas):
            for k, v in replica.items():
                if k != "name":
                    out[f"replica{i}_{k}"] = float(v)
        return out

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServiceState:
        return cls(**json.loads(text))


def service_state(models: ModelHolder, limiter: Limiter, store: FeatureStore) -> ServiceState:
    """Read the parts' own counters into a `ServiceState` (a few dozen attribute reads)."""
    model = models.current
    state = ServiceState(
        model_version=model.version,
        engine=model.scorer.name,
        model_loaded_at=model.loaded_at,
        reloads=models.reloads,
        reload_failures=models.failed_reloads,
        limiter={k: float(getattr(limiter, k)) for k in _LIMITER_FIELDS},
    )
    _read_store(store, state)
    return state


def _read_store(store: object, state: ServiceState) -> None:
    from ranking.features.cache import CachedFeatureStore
    from ranking.features.hedging import HedgedFeatureStore

    if isinstance(store, CachedFeatureStore):
        state.cache = _numbers(store.stats)
        state.cache_types = {et: _numbers(c) for et, c in store.type_lookups.items()}
        _read_store(store.inner, state)
    elif isinstance(store, HedgedFeatureStore):
        hs = store.stats
        state.hedge = _numbers(hs)
        state.hedge["delay_ms"] = store.tracker.delay_ms
        for i, replica in enumerate(store.replicas):
            entry = _replica(replica, i)
            entry["hedge_reads"] = hs.replica_reads[i]
            entry["hedge_errors"] = hs.errors[i]
            entry["marked_down"] = hs.marked_down[i]
            state.replicas.append(entry)
    elif dataclasses.is_dataclass(getattr(store, "stats", None)):
        state.replicas.append(_replica(store, 0))  # one store, unhedged


def _replica(replica: object, i: int) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": str(getattr(replica, "name", "") or f"replica{i}")}
    stats = getattr(replica, "stats", None)
    if dataclasses.is_dataclass(stats) and not isinstance(stats, type):
        entry.update(_numbers(stats))
    return entry


def _numbers(obj: Any) -> dict[str, float]:
    """The dataclass's int and float fields (lists and the rest are left out)."""
    out: dict[str, float] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[f.name] = float(value)
    return out


def published_path(stats_path: Path, worker: int) -> Path:
    """Where worker `worker` of the server sharing `stats_path` publishes its state."""
    return stats_path.with_name(f"{stats_path.stem}-w{worker}.json")


def publish(state: ServiceState, stats_path: Path, worker: int) -> None:
    """Write the state atomically (readers never see half a file)."""
    path = published_path(stats_path, worker)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(state.to_json())
    os.replace(tmp, path)


def read_published(stats_path: Path, workers: int) -> list[tuple[int, ServiceState]]:
    """The states the workers last published; a worker that has not published yet is left out."""
    out = []
    for w in range(workers):
        try:
            text = published_path(stats_path, w).read_text()
        except OSError:
            continue
        try:
            out.append((w, ServiceState.from_json(text)))
        except (ValueError, TypeError):
            continue  # written by a different version: skip rather than fail the scrape
    return out
