"""What a run measured: per-process `Sample`s merged into one `LoadReport`.

Latencies are recorded in microseconds into HDR histograms (1 us to 120 s, 3 significant
digits), which merge exactly across processes; percentiles come from the merged histogram.
"""

from __future__ import annotations

from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram

__all__ = [
    "BulkHistogram",
    "LatencySummary",
    "LoadReport",
    "Sample",
    "decode_histogram",
    "encode_histogram",
    "merge",
    "new_histogram",
    "summarize",
]

_LOWEST_US = 1
_HIGHEST_US = 120_000_000
_DIGITS = 3


def new_histogram() -> HdrHistogram:
    return HdrHistogram(_LOWEST_US, _HIGHEST_US, _DIGITS)


def decode_histogram(encoded: str) -> HdrHistogram:
    """A histogram from `LoadReport.histograms[...]` (or an empty one for "")."""
    if not encoded:
        return new_histogram()
    return HdrHistogram.decode(encoded.encode("ascii"))


class BulkHistogram:
    """Values (us) gathered in an array and added to an HDR histogram in bulk.

    hdrh's `record_value` is Python, ~5 us a call; four per request were a tenth of the load
    generator's CPU. Appending to an array costs ~0.1 us, and a flush records each distinct
    value once with its count, so the histogram holds exactly what per-value recording would.
    """

    __slots__ = ("_histogram", "_values")

    #: Flush after this many values, so a long run's memory stays bounded (512 KiB).
    FLUSH_AT = 1 << 16

    def __init__(self) -> None:
        self._histogram = new_histogram()
        self._values = array("q")

    def add(self, value_us: int) -> None:
        self._values.append(value_us)
        if len(self._values) >= self.FLUSH_AT:
            self._flush()

    def _flush(self) -> None:
        if self._values:
            distinct, counts = np.unique(np.frombuffer(self._values, np.int64), return_counts=True)
            for value, count in zip(distinct.tolist(), counts.tolist(), strict=True):
                self._histogram.record_value(value, count)
            self._values = array("q")

    def histogram(self) -> HdrHistogram:
        """Everything added so far, as one histogram."""
        self._flush()
        return self._histogram


def encode_histogram(h: HdrHistogram) -> str:
    """The histogram as text (hdrh's compressed base64 form), "" when empty."""
    return h.encode().decode("ascii") if h.get_total_count() else ""


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Percentiles of one histogram, in milliseconds."""

    count: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float

    def as_dict(self) -> dict[str, float]:
        return {
            "count": self.count,
            "mean_ms": self.mean_ms,
            "p50_ms": self.p50_ms,
            "p90_ms": self.p90_ms,
            "p99_ms": self.p99_ms,
            "p999_ms": self.p999_ms,
            "max_ms": self.max_ms,
        }


def summarize(h: HdrHistogram) -> LatencySummary:
    n = h.get_total_count()
    if not n:
        nan = float("nan")
        return LatencySummary(0, nan, nan, nan, nan, nan, nan)

    # One pass over the histogram for all percentiles (each get_value_at_percentile walks it).
    at = h.get_percentile_to_value_dict([50.0, 90.0, 99.0, 99.9])
    return LatencySummary(
        count=int(n),
        mean_ms=float(h.get_mean_value()) / 1000.0,
        p50_ms=at[50.0] / 1000.0,
        p90_ms=at[90.0] / 1000.0,
        p99_ms=at[99.0] / 1000.0,
        p999_ms=at[99.9] / 1000.0,
        max_ms=float(h.get_max_value()) / 1000.0,
    )


@dataclass
class Sample:
    """One client process's raw results; plain data so it pickles between processes."""

    scheduled: int = 0  # requests the schedule held (open loop), measured window only
    sent: int = 0  # requests sent in the measured window
    warmup_sent: int = 0
    completed: int = 0
    first_send_s: float = 0.0  # offsets from the run's start
    last_send_s: float = 0.0
    last_done_s: float = 0.0
    window_s: float = 0.0  # length of the measured schedule window
    client_cpu_s: float = 0.0
    status: Counter[str] = field(default_factory=Counter)
    degraded: Counter[str] = field(default_factory=Counter)
    degraded_responses: int = 0
    partial_responses: int = 0  # responses with a "budget.*" degraded reason
    latency: str = ""  # encoded histograms, us
    latency_ok: str = ""  # latency of OK answers only (shed calls are fast; this is the rest)
    service: str = ""
    send_lag: str = ""
    errors: list[str] = field(default_factory=list)  # first few error details, for diagnosis


@dataclass
class LoadReport:
    """The merged result of one run. `valid` is False when the client fell behind."""

    mode: str
    target: str
    target_rps: float
    scheduled_rps: float
    achieved_rps: float
    throughput_rps: float
    duration_s: float
    scheduled: int
    sent: int
    completed: int
    warmup_sent: int
    status_counts: dict[str, int]
    degraded_counts: dict[str, int]
    degraded_ratio: float
    partial_ratio: float
    error_ratio: float
    latency: LatencySummary
    latency_ok: LatencySummary  # OK answers only
    service_time: LatencySummary
    send_lag: LatencySummary
    client_cpu_ms_per_request: float
    processes: int
    valid: bool
    problems: list[str]
    error_samples: list[str]
    config: dict[str, Any]
    histograms: dict[str, str]  # "latency", "service", "send_lag": encoded, us

    @property
    def ok(self) -> int:
        return self.status_counts.get("OK", 0)

    def latency_histogram(self) -> HdrHistogram:
        return decode_histogram(self.histograms.get("latency", ""))

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "target": self.target,
            "target_rps": self.target_rps,
            "scheduled_rps": self.scheduled_rps,
            "achieved_rps": self.achieved_rps,
            "throughput_rps": self.throughput_rps,
            "duration_s": self.duration_s,
            "scheduled": self.scheduled,
            "sent": self.sent,
            "completed": self.completed,
            "warmup_sent": self.warmup_sent,
            "status_counts": dict(self.status_counts),
            "degraded_counts": dict(self.degraded_counts),
            "degraded_ratio": self.degraded_ratio,
            "partial_ratio": self.partial_ratio,
            "error_ratio": self.error_ratio,
            "latency": self.latency.as_dict(),
            "latency_ok": self.latency_ok.as_dict(),
            "service_time": self.service_time.as_dict(),
            "send_lag": self.send_lag.as_dict(),
            "client_cpu_ms_per_request": self.client_cpu_ms_per_request,
            "processes": self.processes,
            "valid": self.valid,
            "problems": list(self.problems),
            "error_samples": list(self.error_samples),
            "config": dict(self.config),
            "histograms": dict(self.histograms),
        }

    def summary(self) -> str:
        """A few human lines."""
        lat = self.latency
        head = (
            f"{self.mode}-loop {self.target}: target {self.target_rps:.0f} req/s, "
            f"achieved {self.achieved_rps:.0f} req/s, throughput {self.throughput_rps:.0f} req/s "
            f"over {self.duration_s:.1f} s; sent {self.sent}, completed {self.completed}"
        )
        if self.mode == "closed":
            head = (
                f"closed-loop {self.target}: {self.config.get('concurrency')} in flight, "
                f"throughput {self.throughput_rps:.0f} req/s over {self.duration_s:.1f} s; "
                f"sent {self.sent}, completed {self.completed}"
            )
        lines = [
            head,
            f"latency ms: p50 {lat.p50_ms:.2f}  p90 {lat.p90_ms:.2f}  p99 {lat.p99_ms:.2f}  "
            f"p99.9 {lat.p999_ms:.2f}  max {lat.max_ms:.2f}  (n={lat.count})",
            f"service time p99 {self.service_time.p99_ms:.2f} ms; send lag p99 "
            f"{self.send_lag.p99_ms:.2f} ms; client CPU {self.client_cpu_ms_per_request:.3f} "
            f"ms/request",
            "status: " + ", ".join(f"{k} {v}" for k, v in sorted(self.status_counts.items())),
        ]
        ok = self.latency_ok
        if ok.count and ok.count != lat.count:
            lines.insert(
                2,
                f"OK answers only, ms: p50 {ok.p50_ms:.2f}  p90 {ok.p90_ms:.2f}  "
                f"p99 {ok.p99_ms:.2f}  p99.9 {ok.p999_ms:.2f}  (n={ok.count})",
            )
        if self.degraded_counts:
            lines.append(
                "degraded: "
                + ", ".join(f"{k} {v}" for k, v in sorted(self.degraded_counts.items()))
            )
        lines.append("VALID" if self.valid else "NOT VALID: " + "; ".join(self.problems))
        return "\n".join(lines)


def merge(
    samples: list[Sample],
    *,
    mode: str,
    target: str,
    target_rps: float,
    min_rate_ratio: float,
    max_send_lag_p99_ms: float,
    config: dict[str, Any],
    extra_problems: list[str] | None = None,
) -> LoadReport:
    """Merge per-process samples and judge whether the run counts."""
    lat, svc, lag = new_histogram(), new_histogram(), new_histogram()
    lat_ok = new_histogram()
    status: Counter[str] = Counter()
    degraded: Counter[str] = Counter()
    errors: list[str] = []
    for s in samples:
        lat.add(decode_histogram(s.latency))
        lat_ok.add(decode_histogram(s.latency_ok))
        svc.add(decode_histogram(s.service))
        lag.add(decode_histogram(s.send_lag))
        status.update(s.status)
        degraded.update(s.degraded)
        errors.extend(s.errors)
    scheduled = sum(s.scheduled for s in samples)
    sent = sum(s.sent for s in samples)
    completed = sum(s.completed for s in samples)
    window = max((s.window_s for s in samples), default=0.0)
    send_span = max((s.last_send_s for s in samples), default=0.0) - min(
        (s.first_send_s for s in samples if s.sent), default=0.0
    )
    done_span = max((s.last_done_s for s in samples), default=0.0) - min(
        (s.first_send_s for s in samples if s.sent), default=0.0
    )
    # The schedule's own realized rate (Poisson counts wander by sqrt(n)) is the yardstick for
    # "did the client keep up"; the achieved rate is what went out over the sending span, which
    # stretches when sends fall behind.
    scheduled_rps = scheduled / window if window > 0 else 0.0
    achieved_rps = sent / max(send_span, window) if sent and window > 0 else 0.0
    if mode == "closed":
        scheduled_rps = 0.0
        achieved_rps = sent / window if window > 0 else 0.0
    ok = status.get("OK", 0)
    throughput = ok / max(done_span, window) if window > 0 else 0.0
    lag_summary = summarize(lag)
    problems = list(extra_problems or [])
    if sent == 0:
        problems.append("no requests were sent")
    if mode == "open" and sent:
        if scheduled and sent < scheduled:
            problems.append(f"only {sent} of {scheduled} scheduled requests were sent")
        if achieved_rps < min_rate_ratio * scheduled_rps:
            problems.append(
                f"client fell behind: achieved {achieved_rps:.0f} req/s < "
                f"{min_rate_ratio:.0%} of scheduled {scheduled_rps:.0f} req/s"
            )
        if lag_summary.count and lag_summary.p99_ms > max_send_lag_p99_ms:
            problems.append(
                f"client fell behind: send lag p99 {lag_summary.p99_ms:.2f} ms > "
                f"{max_send_lag_p99_ms:g} ms"
            )
    errors_n = completed - ok
    degraded_n = sum(s.degraded_responses for s in samples)
    partial_n = sum(s.partial_responses for s in samples)
    cpu = sum(s.client_cpu_s for s in samples)
    return LoadReport(
        mode=mode,
        target=target,
        target_rps=target_rps if mode == "open" else 0.0,
        scheduled_rps=scheduled_rps,
        achieved_rps=achieved_rps,
        throughput_rps=throughput,
        duration_s=window,
        scheduled=scheduled,
        sent=sent,
        completed=completed,
        warmup_sent=sum(s.warmup_sent for s in samples),
        status_counts=dict(status),
        degraded_counts=dict(degraded),
        degraded_ratio=degraded_n / ok if ok else 0.0,
        partial_ratio=partial_n / ok if ok else 0.0,
        error_ratio=errors_n / completed if completed else 0.0,
        latency=summarize(lat),
        latency_ok=summarize(lat_ok),
        service_time=summarize(svc),
        send_lag=lag_summary,
        client_cpu_ms_per_request=1000.0 * cpu / (sent + sum(s.warmup_sent for s in samples))
        if sent
        else 0.0,
        processes=len(samples),
        valid=not problems,
        problems=problems,
        error_samples=errors[:10],
        config=config,
        histograms={
            "latency": encode_histogram(lat),
            "latency_ok": encode_histogram(lat_ok),
            "service": encode_histogram(svc),
            "send_lag": encode_histogram(lag),
        },
    )
