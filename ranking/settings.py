"""One typed settings object, built once at start-up and passed down.

Values come from (highest first) command-line flags, `RANKING_*` environment variables, and the
defaults below. Units are in the names. Ranges are checked when the object is built, so a bad
value fails at start-up with a message naming the setting.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ranking.demo.sizes import DEMO
from ranking.limits.limiter import LimiterKind
from ranking.scoring.scorer import Engine

__all__ = ["CacheSettings", "HedgeSettings", "Settings", "default_cache_dir"]


def default_cache_dir() -> Path:
    """Where built artifacts (the demo bundle) are cached: $XDG_CACHE_HOME/ranking."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ranking"


class CacheSettings(BaseSettings):
    """The feature cache in front of Redis (`ranking.features.cache.CachedFeatureStore`).

    Environment: `RANKING_CACHE_CAPACITY`, `RANKING_CACHE_TTL_S`, ... The defaults here are
    the only ones: components take this object (`CacheSettings.defaults()` without env).
    """

    model_config = SettingsConfigDict(env_prefix="RANKING_CACHE_", frozen=True, extra="forbid")

    capacity: int = Field(
        200_000, ge=0, le=2**30, description="Cached entities per entity type; 0 = no cache."
    )
    ttl_s: float = Field(60.0, ge=0, description="Freshness of found entries.")
    negative_ttl_s: float = Field(10.0, ge=0, description="Freshness of unknown ids.")
    stale_ttl_s: float = Field(
        600.0, ge=0, description="How long past expiry entries serve while the store fails."
    )

    @classmethod
    def defaults(cls, **changes: Any) -> CacheSettings:
        """These settings with `changes`, ignoring the environment (for library callers)."""
        return cls.model_validate({**_defaults(cls), **changes})


class HedgeSettings(BaseSettings):
    """Hedged reads across Redis replicas (`ranking.features.hedging.HedgePolicy`).

    Environment: `RANKING_HEDGE_ENABLED`, `RANKING_HEDGE_PERCENTILE`,
    `RANKING_HEDGE_DELAY_FLOOR_MS`, `RANKING_HEDGE_DELAY_CAP_MS`, `RANKING_HEDGE_BUDGET_RATIO`.
    """

    model_config = SettingsConfigDict(env_prefix="RANKING_HEDGE_", frozen=True, extra="forbid")

    enabled: bool = Field(True, description="False: one replica per read (failover still).")
    percentile: float = Field(95.0, gt=0, lt=100, description="Of recent reads: the delay.")
    delay_floor_ms: float = Field(0.5, ge=0, description="The hedge delay is at least this.")
    delay_cap_ms: float = Field(20.0, gt=0, description="The hedge delay is at most this.")
    budget_ratio: float = Field(0.05, ge=0, le=1, description="Hedges per read, at most.")

    @model_validator(mode="after")
    def _check(self) -> HedgeSettings:
        if self.delay_floor_ms > self.delay_cap_ms:
            raise ValueError("hedge delay_floor_ms must not exceed delay_cap_ms")
        return self

    @classmethod
    def defaults(cls, **changes: Any) -> HedgeSettings:
        """These settings with `changes`, ignoring the environment (for library callers)."""
        return cls.model_validate({**_defaults(cls), **changes})


def _defaults(cls: type[BaseSettings]) -> dict[str, Any]:
    return {name: f.default for name, f in cls.model_fields.items()}


class Settings(BaseSettings):
    """Everything the server needs to start. See README "Settings" for the chosen values."""

    model_config = SettingsConfigDict(env_prefix="RANKING_", frozen=True, extra="forbid")

    # --- transport ---
    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0 in containers).")
    port: int = Field(50051, ge=0, le=65535, description="Port; 0 picks a free one (1 worker).")
    workers: int = Field(
        0, ge=0, le=64, description="Server processes sharing the port; 0 = one per CPU."
    )
    grace_s: float = Field(5.0, ge=0, le=300, description="Drain time for in-flight calls.")
    drain_quiet_ms: float = Field(
        100.0, ge=0, le=60_000, description="Shutdown waits this long without a new call."
    )
    worker_max_deaths: int = Field(
        5,
        ge=1,
        le=1000,
        description="With several workers: this many worker deaths within "
        "worker_death_window_s stop the server (exit 1); fewer are restarted with back-off.",
    )
    worker_death_window_s: float = Field(60.0, gt=0, le=86_400)
    warmup_rounds: int = Field(
        4,
        ge=0,
        le=1000,
        description="Rounds of 8 concurrent synthetic queries a worker runs through its core "
        "before it listens (first store connections, code paths); 0 = none.",
    )
    balance_connections: bool = Field(
        True,
        description="With several workers: deal new connections to the workers in turn (an "
        "eBPF SO_REUSEPORT program; needs root or CAP_BPF + CAP_NET_ADMIN). Without it, or where "
        "the kernel refuses it (logged at start), Linux's hash spreads them: with a few "
        "connections often 3:1 or 4:0 (ranking/server/balance.py).",
    )
    max_concurrent_streams: int = Field(
        256, ge=1, le=100_000, description="HTTP/2 streams per connection."
    )
    max_pending_calls: int = Field(
        8,
        ge=0,
        le=100_000,
        description="Calls gRPC's core may hold for a busy worker before it takes them; more are "
        "refused at once (CANCELLED). Smaller keeps overload tails nearer the budget but refuses "
        "bursts; see ranking/limits/README.md. 0 = gRPC's default backlog (1,000 calls).",
    )
    uvloop: bool = Field(True, description="Run the event loop on uvloop when installed.")
    grpc_experiments: str = Field(
        "-event_engine_listener,-event_engine_for_all_other_endpoints",
        pattern=r"^[A-Za-z0-9_,\- ]*$",
        description="gRPC core experiments for `ranking serve` (GRPC_EXPERIMENTS syntax), set "
        "before grpc loads; an operator's own GRPC_EXPERIMENTS wins for what it names. The "
        "default runs the server's I/O on the completion-queue poller thread instead of "
        "EventEngine's threads: ~70-100 us less CPU per call (ranking/server/experiments.py). "
        "'' = gRPC's defaults.",
    )
    metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Serve Prometheus /metrics for the whole server (all workers) on this port "
        "of the server's host; 0 = off.",
    )
    max_connection_age_s: float = Field(
        0.0,
        ge=0,
        le=86_400,
        description="Close each client connection after about this long (GOAWAY; calls in "
        "flight finish): clients reconnect, re-resolve DNS (new replicas get traffic) and see a "
        "rotated certificate. 0 = never.",
    )

    # --- TLS (README "Deploying it") ---
    tls_cert: Path | None = Field(
        None, description="PEM certificate chain; with tls_key the serving port speaks TLS."
    )
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert.")
    tls_client_ca: Path | None = Field(
        None,
        description="PEM CA bundle: clients must present a certificate it signed (mutual TLS).",
    )

    # --- operator ports: never the serving port ---
    admin_host: str = Field(
        "127.0.0.1", description="Address of the admin port (loopback: reach it from the host)."
    )
    admin_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Port of the admin service (GetStats, ReloadModel) on admin_host, with the "
        "serving port's TLS settings; unset = no admin service. 0 picks a free one (1 worker).",
    )
    health_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="A plaintext port on host serving only grpc.health.v1, for probes that "
        "cannot speak TLS (Kubernetes' gRPC probes); unset = none.",
    )

    # --- model ---
    bundle: Path | None = Field(None, description="Model bundle folder; None serves the demo.")
    engine: Engine = Field(
        "auto", description="Scoring engine; auto picks the fastest exact one available."
    )
    reload_poll_s: float = Field(
        2.0, ge=0, le=3600, description="How often to check the bundle for changes; 0 = never."
    )
    admin_token: str | None = Field(
        None,
        description="Token (x-admin-token metadata) the admin ReloadModel RPC requires; unset "
        "disables that RPC.",
    )

    # --- demo ---
    demo_trees: int = Field(DEMO.trees, ge=1, le=5000)
    demo_leaves: int = Field(DEMO.leaves, ge=2, le=1024)
    demo_users: int = Field(DEMO.n_users, ge=1)
    demo_items: int = Field(DEMO.n_items, ge=1)
    cache_dir: Path = Field(default_factory=default_cache_dir)

    # --- features ---
    features: dict[str, Path] = Field(
        default_factory=dict,
        description="Entity feature files (CSV/Parquet) for the in-process store, by entity type.",
    )
    redis_urls: tuple[str, ...] = Field(
        (), description="Redis replicas (redis://host:port/db); empty = in-process store."
    )
    redis_cluster: bool = False
    redis_namespace: str = Field("rk", min_length=1, max_length=64)
    redis_timeout_ms: float = Field(50.0, gt=0, le=60_000)
    cache: CacheSettings = Field(default_factory=lambda: CacheSettings())
    hedge: HedgeSettings = Field(default_factory=lambda: HedgeSettings())

    # --- request path ---
    budget_ms: float = Field(
        8.0, gt=0, le=60_000, description="Server-side latency budget per request."
    )
    fetch_share: float = Field(
        0.5, gt=0, le=1, description="Share of the remaining budget the feature fetch may use."
    )
    max_candidates: int = Field(1000, ge=1, le=100_000)
    inline_max_row_trees: int = Field(
        400_000,
        ge=0,
        description="Score on the event loop when rows x trees is at most this; else in a thread.",
    )
    limiter: LimiterKind = Field(
        "vegas", description="Concurrency limit algorithm; see ranking/limits/README.md."
    )
    limiter_initial: int = Field(16, ge=1, description="Starting limit per worker.")
    limiter_min: int = Field(2, ge=1, description="Adaptive limits never go below this.")
    limiter_max: int = Field(64, ge=1, description="Adaptive limits never exceed this.")
    limiter_fixed: int = Field(32, ge=1, description="The static cap when limiter=fixed.")

    # --- flywheel: served-feature log, drift, shadow model (ranking/flywheel/README.md) ---
    log_dir: Path | None = Field(
        None, description="Write served features to hour-partitioned Parquet files here."
    )
    log_sample: float = Field(1.0, ge=0, le=1, description="Share of requests logged.")
    log_roll_s: float = Field(300.0, gt=0, le=86_400, description="Close a log file this old.")
    log_roll_rows: int = Field(1_000_000, ge=1, description="Close a log file at this many rows.")
    log_queue: int = Field(
        4096,
        ge=1,
        le=1_000_000,
        description="Shadow/drift requests queued for the flywheel thread; more are dropped.",
    )
    log_buffer_mb: int = Field(
        16,
        ge=1,
        le=16_384,
        description="Shared ring per worker for its log process; rows beyond it are dropped.",
    )
    drift_window_s: float = Field(
        600.0, gt=0, le=7 * 86_400, description="Sliding window of the served distributions."
    )
    drift_sample: float = Field(
        0.1, ge=0, le=1, description="Share of requests counted into the drift window."
    )
    shadow_bundle: Path | None = Field(
        None, description="A second model scored off the critical path; never affects answers."
    )
    shadow_sample: float = Field(0.1, ge=0, le=1, description="Share of requests shadow-scored.")
    shadow_cpu_share: float = Field(
        0.1, gt=0, le=1, description="Share of one core the shadow model may use on average."
    )
    shadow_busy_inflight: int = Field(
        1,
        ge=0,
        description="Skip the shadow while this many live calls are in flight (0: never skip).",
    )
    shadow_min_idle: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Skip the shadow while less of the machine's CPU was idle (0: never skip).",
    )
    shadow_max_lag_ms: float = Field(
        2.0,
        ge=0,
        le=10_000,
        description="Skip the shadow while the event loop runs it later than this (0: never).",
    )
    shadow_lag_hold_s: float = Field(
        1.0,
        ge=0,
        le=3600,
        description="After a late shadow, skip every shadow for this long.",
    )

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if not self.limiter_min <= self.limiter_initial <= self.limiter_max:
            raise ValueError("need limiter_min <= limiter_initial <= limiter_max")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        ports = [p for p in (self.port, self.admin_port, self.health_port, self.metrics_port) if p]
        if len(ports) != len(set(ports)):
            raise ValueError("port, admin_port, health_port and metrics_port must differ")
        if self.effective_workers() > 1 and 0 in (self.admin_port, self.health_port):
            raise ValueError("admin_port and health_port 0 cannot be shared by several workers")
        return self

    def effective_workers(self) -> int:
        return self.workers or (os.cpu_count() or 1)
