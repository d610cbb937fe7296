"""Tracing and metrics: providers built once and injected, and the hot-path counters."""

from ranking.telemetry.providers import Telemetry, build_telemetry
from ranking.telemetry.stats import Stats

__all__ = ["Stats", "Telemetry", "build_telemetry"]
