"""Open- and closed-loop load generator for the ranking service (`ranking load`).

    from ranking.loadgen import LoadConfig, RankPayload, RequestMix, run_load
    report = await run_load(LoadConfig(target="127.0.0.1:50051", rate_rps=300, duration_s=10))
    print(report.summary())

Open loop sends on a constant or Poisson schedule whatever the server does and times each
request from its intended send time (coordinated-omission correct); closed loop keeps N requests
in flight to find the maximum throughput. Percentiles come from HDR histograms merged across
client processes. A run whose client fell behind its schedule says so (`report.valid`).
"""

from ranking.loadgen._config import LoadConfig, Mode
from ranking.loadgen._mix import RANK_METHOD, CandidateCount, Payload, RankPayload, RequestMix
from ranking.loadgen._report import LatencySummary, LoadReport, decode_histogram
from ranking.loadgen._runner import LoadGenError, run_load
from ranking.loadgen._schedule import Arrivals, arrival_offsets
from ranking.loadgen.cli import main

__all__ = [
    "RANK_METHOD",
    "Arrivals",
    "CandidateCount",
    "LatencySummary",
    "LoadConfig",
    "LoadGenError",
    "LoadReport",
    "Mode",
    "Payload",
    "RankPayload",
    "RequestMix",
    "arrival_offsets",
    "decode_histogram",
    "main",
    "run_load",
]
