"""Warm start: what the first calls after a server says SERVING see, with and without warm-up.

    python -m benchmarks.warm_start                  # R200 (Redis), 150 req/s, 3 rounds
    python -m benchmarks.warm_start --rate 300 --repeat 5 --scenario r200-memory

For each round, a fresh `ranking serve` (2 workers) is started once with
RANKING_WARMUP_ROUNDS=0 ("cold") and once with the default ("warm"), in alternation so both
see the same machine. As soon as health says SERVING (polled every 10 ms) an open-loop Poisson
load at `--rate` starts from a fresh client (4 channels, 1 s deadline): the first second is
recorded as one run, the next two seconds as another. The report gives, per configuration,
statuses and the OK latency (p50 / p99 / max) of each window, and the time from spawn to
SERVING (what the warm-up costs at start-up).

Writes benchmarks/results/warm-start[-<scenario>].json and .md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/warm_start.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.harness import REPO, log, machine_info, run_async, serve_world_args
from benchmarks.ports import free_port
from benchmarks.scenario import find_scenario, load_scenario
from benchmarks.servers import ManagedProcess
from benchmarks.world import prepare_world
from ranking.loadgen import RANK_METHOD, LoadConfig, LoadReport, RankPayload, run_load

RESULTS = REPO / "benchmarks" / "results"
CONFIGS = {"cold": {"RANKING_WARMUP_ROUNDS": "0"}, "warm": {}}
WINDOWS = (("first 1 s", 1.0), ("1-3 s", 2.0))


@dataclass(frozen=True)
class Prebuilt:
    """A payload whose requests were built before the server started, so the load begins the
    moment the server says SERVING (building 4,096 R200 requests takes seconds)."""

    inner: RankPayload
    requests: tuple[bytes, ...]
    method: str = RANK_METHOD

    def build(self, n: int, seed: int) -> list[bytes]:
        return [self.requests[(seed + i) % len(self.requests)] for i in range(n)]

    def degraded_reasons(self, response: bytes) -> tuple[str, ...]:
        return self.inner.degraded_reasons(response)


def wait_serving(server: ManagedProcess, target: str, timeout_s: float = 600) -> float:
    """Seconds until health says SERVING, polled every 10 ms."""
    started = time.monotonic()
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() - started < timeout_s:
            if not server.alive():
                raise RuntimeError(f"server exited:\n{server.tail()}")
            try:
                r = stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return time.monotonic() - started
            except grpc.RpcError:
                pass
            time.sleep(0.01)
    raise RuntimeError(f"not SERVING after {timeout_s:g} s:\n{server.tail()}")


def window(report: LoadReport) -> dict[str, Any]:
    ok = report.latency_ok
    return {
        "sent": report.sent,
        "statuses": dict(report.status_counts),
        "ok_p50_ms": ok.p50_ms,
        "ok_p99_ms": ok.p99_ms,
        "ok_max_ms": ok.max_ms,
        "valid": report.valid,
    }


def one(
    config: str, args: argparse.Namespace, world_args: list[str], payload: Prebuilt, logs: Path
) -> dict[str, Any]:
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update({"RANKING_RELOAD_POLL_S": "0", "RANKING_WORKERS": str(args.workers)})
    env.update(CONFIGS[config])
    argv = [sys.executable, "-m", "ranking.cli", "serve", "--port", str(port), *world_args]
    spawned = time.monotonic()
    server = ManagedProcess(config, argv, logs / f"{config}.log", env=env, cwd=REPO)
    target = f"127.0.0.1:{port}"
    out: dict[str, Any] = {"config": config}
    try:
        wait_serving(server, target)
        out["spawn_to_serving_s"] = time.monotonic() - spawned
        for name, duration in WINDOWS:
            cfg = LoadConfig(
                target=target,
                payload=payload,
                rate_rps=args.rate,
                arrivals="poisson",
                duration_s=duration,
                warmup_s=0.0,
                deadline_ms=1000.0,
                processes=1,
                channels_per_process=4,
                seed=len(name),
            )
            out[name] = window(run_async(run_load(cfg)))
    finally:
        server.stop()
    return out


def summary(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for config in CONFIGS:
        mine = [r for r in runs if r["config"] == config]
        row: dict[str, Any] = {
            "config": config,
            "runs": len(mine),
            "spawn_to_serving_s": statistics.median(r["spawn_to_serving_s"] for r in mine),
        }
        for name, _ in WINDOWS:
            row[name] = {
                "ok_p99_ms": [round(r[name]["ok_p99_ms"], 1) for r in mine],
                "ok_p50_ms": [round(r[name]["ok_p50_ms"], 1) for r in mine],
                "not_ok": [r[name]["sent"] - r[name]["statuses"].get("OK", 0) for r in mine],
                "statuses": [r[name]["statuses"] for r in mine],
            }
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The report; `meta["runs"]` holds the runs themselves."""
    lines = [
        f"# Warm start: {meta['scenario']}, {meta['rate']:g} req/s from the moment of SERVING",
        "",
        f"{meta['date']}; {meta['workers']} workers, {meta['store']}; a fresh server per run, "
        "cold (RANKING_WARMUP_ROUNDS=0) and warm (default) alternating; 2 shared cores, the "
        "client on the same machine. Values per run, in run order.",
        "",
        "| config | spawn to SERVING (median) | window | OK p50 ms | OK p99 ms | not OK |",
        "|---|---:|---|---|---|---|",
    ]
    for row in rows:
        for name, _ in WINDOWS:
            w = row[name]
            lines.append(
                f"| {row['config']} | {row['spawn_to_serving_s']:.1f} s | {name} | "
                f"{' / '.join(map(str, w['ok_p50_ms']))} | {' / '.join(map(str, w['ok_p99_ms']))} "
                f"| {' / '.join(map(str, w['not_ok']))} |"
            )
    valid = all(r[name]["valid"] for r in meta["runs"] for name, _ in WINDOWS)
    lines += [
        "",
        "Not OK: CANCELLED by the gRPC backlog cap (RANKING_MAX_PENDING_CALLS), nothing else. "
        "Spawn to SERVING includes the warm-up (the servers log 0.3-1 s for it); on a shared "
        "machine it varies by seconds between runs, so compare it over many runs.",
    ]
    if not valid:
        lines.append(
            "The load generator reported falling behind its schedule in some windows (the "
            "client starts cold on the same 2 cores too); latency is timed from the intended "
            "send times, so that delay counts against both configurations alike."
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scenario", default="r200")
    ap.add_argument("--rate", type=float, default=150.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    sc = load_scenario(find_scenario(args.scenario))
    world = prepare_world(sc.world)
    logs = args.out / "logs" / "warm-start"
    world_args, redis = serve_world_args(world, sc.store, logs)
    mix = RankPayload(sc.mix)
    payload = Prebuilt(mix, tuple(mix.build(sc.mix.pool_size, 1)))
    runs = []
    started = time.time()
    try:
        for rep in range(args.repeat):
            for config in CONFIGS:
                log(f"{config} (run {rep + 1}/{args.repeat})")
                run = one(config, args, world_args, payload, logs)
                log("    " + json.dumps(run))
                runs.append(run)
    finally:
        if redis is not None:
            redis.stop()
    meta = {
        "scenario": sc.name,
        "rate": args.rate,
        "workers": args.workers,
        "store": "in-process store" if sc.store == "memory" else "Redis behind the cache",
        "date": dt.datetime.fromtimestamp(started, dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
    }
    meta["runs"] = runs
    rows = summary(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "warm-start" if sc.name == "R200" else f"warm-start-{sc.name.lower()}"
    (args.out / f"{stem}.json").write_text(
        json.dumps({"meta": {**meta, "runs": len(runs)}, "summary": rows, "runs": runs}, indent=1)
        + "\n"
    )
    (args.out / f"{stem}.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
