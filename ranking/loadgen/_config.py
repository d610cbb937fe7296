"""`LoadConfig`: one run of the load generator, checked when built."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

from ranking.loadgen._mix import Payload, RankPayload
from ranking.loadgen._schedule import Arrivals
from ranking.tls import ClientTls

__all__ = ["LoadConfig", "Mode"]

Mode = Literal["open", "closed"]


@dataclass(frozen=True)
class LoadConfig:
    """One load run against one server.

    mode: "open" sends on a schedule at `rate_rps` whatever the server does (latency is timed
        from each request's intended send time); "closed" keeps `concurrency` requests in
        flight, each sent when one returns, to find the maximum throughput (its latency is
        service time, not what users at a given rate would see).
    duration_s / max_requests: the run stops at whichever comes first (warm-up included).
    warmup_s: requests intended before this offset are sent but not recorded.
    deadline_ms: the gRPC deadline of every request (None: none).
    processes: client processes; the rate and the concurrency are split between them. 1 runs
        in the caller's event loop.
    channels_per_process: gRPC channels (TCP connections) per process, used round-robin: servers
        that share a port with SO_REUSEPORT spread connections, not requests.
    max_in_flight: open loop only; when set, a process waits for a free slot before sending, so
        sends fall behind schedule instead of piling up (the run then reports itself invalid).
    timer_slack_ms: the event loop's timers fire up to ~1 ms late; the sender wakes up to this
        much early instead and times such a request from its actual (earlier) send. Latency is
        always timed from the earlier of the intended and the actual send time.
    min_rate_ratio / max_send_lag_p99_ms: a run whose achieved send rate is below this share of
        the scheduled rate, or whose sends lag the schedule more than this at p99, fell behind:
        its figures are reported but it does not count.
    tls: dial with TLS (roots, client certificate, server name); None: plaintext.
    """

    target: str = "127.0.0.1:50051"
    payload: Payload = field(default_factory=RankPayload)
    mode: Mode = "open"
    rate_rps: float = 100.0
    arrivals: Arrivals = "poisson"
    concurrency: int = 16
    duration_s: float = 10.0
    max_requests: int | None = None
    warmup_s: float = 0.0
    deadline_ms: float | None = 1000.0
    processes: int = 1
    channels_per_process: int = 4
    max_in_flight: int | None = None
    timer_slack_ms: float = 1.0
    min_rate_ratio: float = 0.95
    max_send_lag_p99_ms: float = 2.0
    connect_timeout_s: float = 10.0
    seed: int = 1
    uvloop: bool = True
    tls: ClientTls | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("open", "closed"):
            raise ValueError("mode must be 'open' or 'closed'")
        if self.arrivals not in ("poisson", "constant"):
            raise ValueError("arrivals must be 'poisson' or 'constant'")
        if self.rate_rps <= 0:
            raise ValueError("rate_rps must be > 0")
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if self.duration_s <= 0:
            raise ValueError("duration_s must be > 0")
        if self.max_requests is not None and self.max_requests < 1:
            raise ValueError("max_requests must be >= 1")
        if not 0 <= self.warmup_s < self.duration_s:
            raise ValueError("warmup_s must be in [0, duration_s)")
        if self.deadline_ms is not None and self.deadline_ms <= 0:
            raise ValueError("deadline_ms must be > 0")
        if not 1 <= self.processes <= 64:
            raise ValueError("processes must be in [1, 64]")
        if self.mode == "closed" and self.concurrency < self.processes:
            raise ValueError("closed loop needs concurrency >= processes")
        if not 1 <= self.channels_per_process <= 64:
            raise ValueError("channels_per_process must be in [1, 64]")
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        if not 0 <= self.timer_slack_ms <= 5:
            raise ValueError("timer_slack_ms must be in [0, 5]")
        if not 0 < self.min_rate_ratio <= 1:
            raise ValueError("min_rate_ratio must be in (0, 1]")
        if self.max_send_lag_p99_ms <= 0 or self.connect_timeout_s <= 0:
            raise ValueError("max_send_lag_p99_ms and connect_timeout_s must be > 0")
        if not isinstance(self.payload, Payload):
            raise TypeError("payload must provide method, build() and degraded_reasons()")

    def describe(self) -> dict[str, Any]:
        """JSON-ready settings for reports (the payload by its repr)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "payload"}
        out["payload"] = repr(self.payload)
        return out
