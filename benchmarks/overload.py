"""Overload: offer about twice what the service sustains, with admission control on and off.

    python -m benchmarks.overload                       # R200-memory, 300, 600 and 800 req/s
    python -m benchmarks.overload --rates 300,600,900 --repeat 2
    python -m benchmarks.overload --config backlog-2=RANKING_MAX_PENDING_CALLS=2
    python -m benchmarks.overload --scenario r200 --rates 300,600   # features in Redis
    python -m benchmarks.overload --workers 1 --rates 400,800 --repeat 2   # server on one core

Each configuration is a set of RANKING_* variables for `ranking serve` (2 workers). For every
rate and configuration a fresh server is started (overload can leave a server busy with calls
nobody waits for any more; a fresh one makes the runs independent), warmed up for
`--server-warmup` seconds at up to 200 req/s (not recorded), loaded open-loop with the
scenario's mix for `--duration` seconds, asked for its counters, and stopped. The report gives,
per run, the OK answers per second, how the rest ended (RESOURCE_EXHAUSTED: the concurrency
limiter; CANCELLED: gRPC's core backlog cap; DEADLINE_EXCEEDED: the 1 s client deadline) and
the latency of the OK answers, which is what the callers that were served saw.

With a Redis scenario (r200) one redis-server is started for the whole run and loaded with the
world's features once; each server reads them through its cache, as in the scoreboard.

Writes benchmarks/results/overload[-<scenario>][-w<workers>].json and .md (no scenario suffix for
r200-memory, no workers suffix for 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/overload.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import REPO, log, machine_info, run_async, serve_world_args
from benchmarks.ports import free_port
from benchmarks.scenario import find_scenario, load_scenario
from benchmarks.servers import ManagedProcess, wait_ready
from benchmarks.stats import get_stats
from benchmarks.world import prepare_world
from ranking.loadgen import LoadConfig, LoadReport, RankPayload, run_load

RESULTS = REPO / "benchmarks" / "results"

#: name -> RANKING_* settings. "off" has no admission control at all: no limiter and gRPC's
#: own backlog (about a thousand calls). The others add one mechanism each, then both.
CONFIGS: dict[str, dict[str, str]] = {
    "off": {"RANKING_LIMITER": "off", "RANKING_MAX_PENDING_CALLS": "0"},
    "vegas only": {"RANKING_LIMITER": "vegas", "RANKING_MAX_PENDING_CALLS": "0"},
    "default (vegas + backlog 8)": {},
    "latency-first (vegas + backlog 1)": {"RANKING_MAX_PENDING_CALLS": "1"},
}
STATUSES = ("OK", "RESOURCE_EXHAUSTED", "CANCELLED", "DEADLINE_EXCEEDED")


@dataclass
class Run:
    config: str
    rate: float
    report: LoadReport
    counters: dict[str, float]

    def row(self) -> dict[str, Any]:
        r = self.report
        sent = max(r.sent, 1)
        counts = r.status_counts
        other = sum(v for k, v in counts.items() if k not in STATUSES)
        return {
            "config": self.config,
            "rate": self.rate,
            "achieved_rps": r.achieved_rps,
            "ok_per_s": counts.get("OK", 0) / r.duration_s,
            "shed_limiter": counts.get("RESOURCE_EXHAUSTED", 0) / sent,
            "shed_backlog": counts.get("CANCELLED", 0) / sent,
            "deadline": counts.get("DEADLINE_EXCEEDED", 0) / sent,
            "other": other / sent,
            "ok_p50_ms": r.latency_ok.p50_ms,
            "ok_p99_ms": r.latency_ok.p99_ms,
            "ok_p999_ms": r.latency_ok.p999_ms,
            "valid": r.valid,
            "problems": r.problems,
        }


def describe(row: dict[str, Any]) -> str:
    return (
        f"OK {row['ok_per_s']:.0f}/s, shed {100 * row['shed_limiter']:.1f} % (limiter) + "
        f"{100 * row['shed_backlog']:.1f} % (backlog), deadline {100 * row['deadline']:.1f} %, "
        f"OK p50 {row['ok_p50_ms']:.2f} p99 {row['ok_p99_ms']:.2f} ms"
    )


def parse_configs(extra: Sequence[str], only: str | None) -> dict[str, dict[str, str]]:
    configs = dict(CONFIGS)
    for item in extra:
        name, _, assignments = item.partition("=")
        env: dict[str, str] = {}
        for pair in filter(None, assignments.split(",")):
            key, sep, value = pair.partition("=")
            if not sep or not key.startswith("RANKING_"):
                raise SystemExit(f"--config {item!r}: want NAME=RANKING_X=v[,RANKING_Y=w]")
            env[key] = value
        configs[name] = env
    if only:
        wanted = [n.strip() for n in only.split(",")]
        missing = [n for n in wanted if n not in configs]
        if missing:
            raise SystemExit(f"--only: unknown configurations {missing}; have {list(configs)}")
        configs = {n: configs[n] for n in wanted}
    return configs


def run_one(
    name: str,
    env_extra: dict[str, str],
    rate: float,
    args: argparse.Namespace,
    world_args: list[str],
    payload: RankPayload,
    logs: Path,
) -> Run:
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update({"RANKING_RELOAD_POLL_S": "0", "RANKING_WORKERS": str(args.workers)})
    env.update(env_extra)
    admin_port = free_port()  # GetStats is on the admin port, never on the serving port
    argv = [sys.executable, "-m", "ranking.cli", "serve", "--port", str(port), *world_args]
    argv += ["--admin-port", str(admin_port)]

    slug = "".join(c if c.isalnum() else "-" for c in name)
    server = ManagedProcess(name, argv, logs / f"{slug}-{int(rate)}.log", env=env, cwd=REPO)
    target = f"127.0.0.1:{port}"
    try:
        wait_ready(server, target, timeout_s=600)
        processes = 1 if rate <= 300 else 2
        cfg = LoadConfig(
            target=target,
            payload=payload,
            rate_rps=rate,
            arrivals="poisson",
            duration_s=args.duration,
            warmup_s=min(2.0, args.duration / 4),
            deadline_ms=1000.0,
            processes=processes,
            channels_per_process=4,
            seed=int(rate),
        )
        # Not recorded: fills the service's cache with the hot ids, as the scoreboard does.
        warm = dataclasses.replace(
            cfg, rate_rps=min(rate, 200.0), duration_s=args.server_warmup, warmup_s=0.0, processes=1
        )
        if args.server_warmup > 0:
            run_async(run_load(warm))
        report = run_async(run_load(cfg))
        stats = get_stats(f"127.0.0.1:{admin_port}") or {}
    finally:
        server.stop()
    return Run(name, rate, report, dict(stats.get("counters", {})))


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    out = [
        "# Overload: admission control on and off",
        "",
        f"Scenario {meta['scenario']} ({meta['workers']} workers, {meta['store']}), open-loop "
        f"Poisson arrivals, {meta['duration_s']:g} s per run (the first {meta['warmup_s']:g} s "
        "not recorded), "
        f"1 s client deadline, a fresh server per run; {meta['date']}. Latency of OK answers only.",
        "",
        "| offered req/s | configuration | OK answers/s | shed by limiter | shed by backlog "
        "| past deadline | OK p50 ms | OK p99 ms | OK p99.9 ms |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        flag = "" if r["valid"] else " (client behind)"
        out.append(
            f"| {r['rate']:g} | {r['config']}{flag} | {r['ok_per_s']:.0f} | "
            f"{100 * r['shed_limiter']:.1f} % | {100 * r['shed_backlog']:.1f} % | "
            f"{100 * r['deadline']:.1f} % | {r['ok_p50_ms']:.2f} | {r['ok_p99_ms']:.2f} | "
            f"{r['ok_p999_ms']:.2f} |"
        )
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scenario", default="r200-memory", help="scenario for the world and mix")
    ap.add_argument("--rates", default="300,600,800", help="offered req/s, comma-separated")
    ap.add_argument("--duration", type=float, default=12.0, help="seconds per run")
    ap.add_argument(
        "--server-warmup", type=float, default=4.0, help="seconds of unrecorded warm-up load"
    )
    ap.add_argument("--repeat", type=int, default=1, help="runs per rate and configuration")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--config", action="append", default=[], help="NAME=RANKING_X=v,...")
    ap.add_argument("--only", help="comma-separated configuration names to run")
    ap.add_argument("--out", type=Path, default=RESULTS, help="report folder")
    args = ap.parse_args(argv)
    configs = parse_configs(args.config, args.only)
    rates = [float(r) for r in args.rates.split(",")]
    sc = load_scenario(find_scenario(args.scenario))
    world = prepare_world(sc.world)
    logs = args.out / "logs" / "overload"
    world_args, redis = serve_world_args(world, sc.store, logs)
    payload = RankPayload(sc.mix)
    runs: list[Run] = []
    started = time.time()
    try:
        for rate in rates:
            for rep in range(args.repeat):
                for name, env in configs.items():
                    log(f"{name} @ {rate:g} req/s (run {rep + 1}/{args.repeat})")
                    run = run_one(name, env, rate, args, world_args, payload, logs)
                    log("    " + describe(run.row()))
                    runs.append(run)
    finally:
        if redis is not None:
            redis.stop()
    meta = {
        "scenario": sc.name,
        "workers": args.workers,
        "store": "in-process store" if sc.store == "memory" else "Redis behind the cache",
        "duration_s": args.duration,
        "warmup_s": min(2.0, args.duration / 4),
        "date": dt.datetime.fromtimestamp(started, dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "configs": configs,
        "machine": machine_info(),
    }
    rows = [r.row() for r in runs]
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "overload" if sc.name == "R200-memory" else f"overload-{sc.name.lower()}"
    if args.workers != 2:
        stem += f"-w{args.workers}"
    (args.out / f"{stem}.json").write_text(
        json.dumps(
            {
                "meta": meta,
                "runs": [
                    {**row, "counters": run.counters, "report": run.report.as_dict()}
                    for row, run in zip(rows, runs, strict=True)
                ],
            },
            indent=1,
        )
    )
    (args.out / f"{stem}.md").write_text(markdown(rows, meta))
    log(f"wrote {args.out / f'{stem}.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
