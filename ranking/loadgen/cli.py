"""`ranking load` / `python -m ranking.loadgen`: one load run from the command line.

Exit status: 0 the run counted, 2 the client fell behind (figures printed but not valid),
1 the run could not be carried out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ranking.loadgen._config import LoadConfig
from ranking.loadgen._mix import CandidateCount, RankPayload, RequestMix
from ranking.loadgen._report import LoadReport
from ranking.loadgen._runner import LoadGenError, run_load
from ranking.tls import ClientTls, TlsError, add_client_tls_arguments

__all__ = ["build_parser", "config_from_args", "main"]


def build_parser(prog: str = "ranking load") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Send Rank requests at a target rate (open loop) or N in flight (closed loop) "
        "and report latency percentiles timed from each request's intended send time.",
    )
    p.add_argument("--target", default="127.0.0.1:50051", help="host:port of the server")
    g = p.add_argument_group("load")
    g.add_argument("--rate", type=float, default=100.0, help="open loop: requests per second")
    g.add_argument("--arrivals", choices=["poisson", "constant"], default="poisson")
    g.add_argument("--closed", type=int, metavar="N", help="closed loop with N requests in flight")
    g.add_argument("--duration", type=float, default=10.0, help="seconds (warm-up included)")
    g.add_argument("--requests", type=int, help="stop after this many requests")
    g.add_argument("--warmup", type=float, default=0.0, help="seconds not recorded")
    g.add_argument("--deadline-ms", type=float, default=1000.0, help="per-request deadline")
    g.add_argument("--processes", type=int, default=1, help="client processes")
    g.add_argument("--channels", type=int, default=4, help="channels per client process")
    g.add_argument("--max-in-flight", type=int, help="open loop: cap per process")
    g.add_argument("--connect-timeout", type=float, default=10.0, help="seconds to connect")
    g.add_argument("--seed", type=int, default=1)
    m = p.add_argument_group("request mix")
    m.add_argument(
        "--scenario",
        type=Path,
        help="take the id spaces and the mix from a benchmark scenario's [world] and [mix]",
    )
    m.add_argument("--candidates", help='per request: "200", "50-200" or "50:1,200:3"')
    m.add_argument("--users", choices=["uniform", "zipf"])
    m.add_argument("--items", choices=["uniform", "zipf"])
    m.add_argument("--zipf-s", type=float)
    m.add_argument("--n-users", type=int)
    m.add_argument("--n-items", type=int)
    m.add_argument("--user-prefix")
    m.add_argument("--item-prefix")
    m.add_argument("--unknown-users", type=float, help="fraction of unknown user ids")
    m.add_argument("--unknown-items", type=float, help="fraction of unknown candidate ids")
    m.add_argument("--top-k", type=int)
    m.add_argument(
        "--context", action="append", default=[], metavar="NAME=VALUE", help="request context"
    )
    p.add_argument("--json", type=Path, help="write the full report (every figure) here")
    add_client_tls_arguments(p)
    return p


def mix_from_scenario(path: Path) -> dict[str, Any]:
    """The `RequestMix` fields a benchmark scenario declares ([world] id spaces, [mix])."""
    with path.open("rb") as f:
        data = tomllib.load(f)
    fields: dict[str, Any] = {}
    world = data.get("world", {})
    for key in ("n_users", "n_items", "user_prefix", "item_prefix"):
        if key in world:
            fields[key] = world[key]
    fields.update(data.get("mix", {}))
    return fields


def config_from_args(args: argparse.Namespace) -> LoadConfig:
    fields: dict[str, Any] = mix_from_scenario(args.scenario) if args.scenario else {}
    overrides = {
        "candidates": args.candidates,
        "users": args.users,
        "items": args.items,
        "zipf_s": args.zipf_s,
        "n_users": args.n_users,
        "n_items": args.n_items,
        "user_prefix": args.user_prefix,
        "item_prefix": args.item_prefix,
        "unknown_user_fraction": args.unknown_users,
        "unknown_item_fraction": args.unknown_items,
        "top_k": args.top_k,
    }
    fields.update({k: v for k, v in overrides.items() if v is not None})
    if args.context:
        ctx = dict(fields.get("context", {}))
        for item in args.context:
            name, _, value = item.partition("=")
            ctx[name] = float(value)
        fields["context"] = ctx
    if "candidates" in fields:
        fields["candidates"] = CandidateCount.parse(fields["candidates"])
    mix = RequestMix.from_mapping(fields)
    return LoadConfig(
        target=args.target,
        payload=RankPayload(mix),
        mode="closed" if args.closed else "open",
        rate_rps=args.rate,
        arrivals=args.arrivals,
        concurrency=args.closed or 16,
        duration_s=args.duration,
        max_requests=args.requests,
        warmup_s=args.warmup,
        deadline_ms=args.deadline_ms,
        processes=args.processes,
        channels_per_process=args.channels,
        max_in_flight=args.max_in_flight,
        connect_timeout_s=args.connect_timeout,
        seed=args.seed,
        tls=ClientTls.from_args(args),
    )


def main(argv: Sequence[str] | None = None, prog: str = "ranking load") -> int:
    """Parse `argv`, run, print the summary; see the module docstring for the exit status."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except (ValueError, TypeError, KeyError, OSError, tomllib.TOMLDecodeError) as exc:
        parser.error(str(exc))
    try:
        report: LoadReport = _run(config)
    except (LoadGenError, TlsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    if args.json:
        args.json.write_text(json.dumps(report.as_dict(), indent=2, sort_keys=True) + "\n")
    return 0 if report.valid else 2


def _run(config: LoadConfig) -> LoadReport:
    try:
        import uvloop

        result: LoadReport = uvloop.run(run_load(config))
        return result
    except ImportError:  # pragma: no cover - uvloop is optional
        return asyncio.run(run_load(config))
