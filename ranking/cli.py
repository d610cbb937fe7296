"""The `ranking` command: parse flags, build settings, hand off to the module that does the work.

Each subcommand is a few lines here and a call: `serve` to `ranking.server.workers`, `rank` and
`health` to `ranking.client`, `train` to `ranking.train`, `features load` to the table reader
and `ranking.features.redis_loader`, `load` to `ranking.loadgen.cli`. Choices and defaults come
from the modules that own them (limiter kinds, engines, training parameters).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass

__all__ = ["main"]


def _pairs(values: list[str] | None, what: str) -> dict[str, str]:
    out = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{what}: expected NAME=VALUE, got {item!r}")
        out[key] = value
    return out


def _serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from ranking.settings import Settings

    overrides: dict[str, Any] = {
        k: v
        for k, v in {
            "bundle": args.bundle,
            "port": args.port,
            "host": args.host,
            "workers": args.workers,
            "engine": args.engine,
            "budget_ms": args.budget_ms,
            "limiter": args.limiter,
            "max_pending_calls": args.max_pending_calls,
            "metrics_port": args.metrics_port,
            "admin_token": args.admin_token,
            "admin_host": args.admin_host,
            "admin_port": args.admin_port,
            "health_port": args.health_port,
            "tls_cert": args.tls_cert,
            "tls_key": args.tls_key,
            "tls_client_ca": args.tls_client_ca,
            "demo_trees": args.demo_trees,
            "demo_leaves": args.demo_leaves,
            "log_dir": args.log_dir,
            "log_sample": args.log_sample,
            "shadow_bundle": args.shadow_bundle,
            "shadow_sample": args.shadow_sample,
        }.items()
        if v is not None
    }
    if args.redis:
        overrides["redis_urls"] = tuple(args.redis)
    if args.redis_cluster:
        overrides["redis_cluster"] = True
    if args.features:
        overrides["features"] = {k: Path(v) for k, v in _pairs(args.features, "--features").items()}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise SystemExit(f"bad settings:\n{exc}") from None
    from ranking.server.experiments import apply

    apply(settings.grpc_experiments)  # before anything below imports grpc
    from ranking.server.app import demo_bundle_path
    from ranking.server.listeners import serving_credentials
    from ranking.server.workers import serve
    from ranking.tls import TlsError

    try:
        serving_credentials(settings)  # a bad certificate is an exit message, not a traceback
    except TlsError as exc:
        raise SystemExit(f"ranking serve: {exc}") from None
    if settings.bundle is None:
        # Build (or find) the demo bundle once here, before any worker starts.
        demo_bundle_path(settings, progress=True)
    return serve(settings)


def _rank(args: argparse.Namespace) -> int:
    from ranking.client import build_request, demo_request, rank_command

    if args.candidates:
        context = {k: float(v) for k, v in _pairs(args.context, "--context").items()}
        ids = [c for c in args.candidates.split(",") if c]
        request = build_request(args.user, ids, context, args.top_k)
    else:
        request = demo_request(args.n, args.top_k, args.seed)
        if args.user:
            request.user_id = args.user
    return rank_command(
        args.target,
        request,
        repeat=args.repeat,
        deadline_ms=args.deadline_ms,
        show=args.show,
        tls=_client_tls(args),
    )


def _client_tls(args: argparse.Namespace) -> Any:
    from ranking.tls import ClientTls

    try:
        return ClientTls.from_args(args)
    except ValueError as exc:
        raise SystemExit(f"ranking {args.command}: {exc}") from None


def _train(args: argparse.Namespace) -> int:
    from ranking.train import TrainDataError, TrainParams, train_command

    if args.log is not None:
        from ranking.flywheel.train_log import train_from_log

        if args.labels is None or args.data is not None:
            raise SystemExit("train --log: give --labels FILE, and no --data")
        params = TrainParams(trees=args.trees, leaves=args.leaves)
        print(train_from_log(args.log, args.labels, args.out, params=params))
        return 0
    if args.data is None:
        raise SystemExit("train: give --data FILE (or --log DIR --labels FILE)")

    try:
        report = train_command(
            args.data,
            args.query,
            args.out,
            params=TrainParams(trees=args.trees, leaves=args.leaves),
            group_column=args.group_column,
            label_column=args.label_column,
        )
    except TrainDataError as exc:  # the message names the file and line, or the argument
        raise SystemExit(f"ranking train: {exc}") from None
    print(report)
    return 0


def _drift(args: argparse.Namespace) -> int:
    from ranking.flywheel.drift_report import drift_command

    return drift_command(args.log, args.bundle, args.threshold, args.all_versions)


def _features_load(args: argparse.Namespace) -> int:
    from ranking.features.memory import read_entity_file

    if args.demo:
        from ranking.server.app import demo_tables
        from ranking.settings import Settings

        tables = demo_tables(Settings())
    else:
        if not args.file or not args.entity_type:
            raise SystemExit("features load: give --type and --file, or --demo")
        tables = {args.entity_type: read_entity_file(args.file, args.id_column, progress=True)}
    if not args.redis:
        for et, table in tables.items():
            print(f"{et}: {len(table.ids)} entities x {len(table.columns)} features (checked)")
        print("no --redis given: nothing written (the in-process store reads files at start-up)")
        return 0
    from ranking.features.redis_loader import load_entities

    for et, table in tables.items():
        count = load_entities(
            args.redis,
            args.namespace,
            et,
            table.ids,
            table.columns,
            table.matrix,
            ttl_s=args.ttl_s,
            progress=True,
            cluster=args.redis_cluster,
        )
        print(f"{et}: wrote {count} entities to {args.redis} (namespace {args.namespace})")
    return 0


def _health(args: argparse.Namespace) -> int:
    from grpc_health.v1 import health_pb2

    from ranking.client import check_health

    code, status = check_health(args.target, args.service, args.timeout_s, _client_tls(args))
    if status is None:
        print(f"{args.target}: {code}", file=sys.stderr)
        return 1
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    print(f"{args.target}: {name}")
    return 0 if status == health_pb2.HealthCheckResponse.SERVING else 1


def _load(args: argparse.Namespace, rest: list[str]) -> int:
    from ranking.loadgen.cli import main as load_main

    return load_main(rest)


def build_parser() -> argparse.ArgumentParser:
    """The `ranking` parser; choices and defaults come from the modules that own them."""
    from ranking.limits.limiter import LIMITER_KINDS
    from ranking.scoring.scorer import ENGINES
    from ranking.tls import add_client_tls_arguments
    from ranking.train import TrainParams

    parser = argparse.ArgumentParser(prog="ranking", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gRPC server (the demo when no --bundle)")
    p.add_argument("--bundle", type=Path, help="model bundle folder (model.txt + schema.json)")
    p.add_argument("--port", type=int)
    p.add_argument("--host")
    p.add_argument("--workers", type=int, help="server processes; 0 = one per CPU")
    p.add_argument("--engine", choices=ENGINES)
    p.add_argument("--budget-ms", type=float)
    p.add_argument("--limiter", choices=LIMITER_KINDS)
    p.add_argument(
        "--max-pending-calls",
        type=int,
        metavar="N",
        help="calls gRPC may hold for a busy worker; more are refused (0 = gRPC's default)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        metavar="N",
        help="serve Prometheus /metrics for all workers on this port (0 = off)",
    )
    p.add_argument("--redis", action="append", metavar="URL", help="Redis replica (repeat)")
    p.add_argument("--redis-cluster", action="store_true")
    p.add_argument("--features", action="append", metavar="TYPE=PATH", help="CSV/Parquet table")
    p.add_argument("--admin-token", help="token ReloadModel requires (x-admin-token)")
    p.add_argument(
        "--admin-port",
        type=int,
        metavar="N",
        help="serve the admin service (GetStats, ReloadModel) here; it is never on --port",
    )
    p.add_argument("--admin-host", help="address of the admin port (default 127.0.0.1)")
    p.add_argument(
        "--health-port", type=int, metavar="N", help="plaintext grpc.health.v1 only, for probes"
    )
    p.add_argument("--tls-cert", type=Path, metavar="FILE", help="PEM chain: serve TLS")
    p.add_argument("--tls-key", type=Path, metavar="FILE", help="PEM private key of --tls-cert")
    p.add_argument(
        "--tls-client-ca",
        type=Path,
        metavar="FILE",
        help="PEM CA: require client certificates it signed (mutual TLS)",
    )
    p.add_argument("--demo-trees", type=int)
    p.add_argument("--demo-leaves", type=int)
    p.add_argument("--log-dir", type=Path, help="log served features as Parquet under DIR")
    p.add_argument("--log-sample", type=float, metavar="RATIO", help="share of requests logged")
    p.add_argument("--shadow-bundle", type=Path, help="a second model scored in shadow")
    p.add_argument("--shadow-sample", type=float, metavar="RATIO", help="share shadow-scored")
    p.set_defaults(func=_serve)

    p = sub.add_parser("rank", help="send a Rank request and print the ranked list")
    p.add_argument("--target", default="127.0.0.1:50051")
    p.add_argument("--user", default="")
    p.add_argument("--candidates", help="comma-separated ids (default: a demo request)")
    p.add_argument("--context", action="append", metavar="NAME=VALUE")
    p.add_argument("-n", type=int, default=200, help="demo candidates")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=1, help="send it N times; print latency")
    p.add_argument("--deadline-ms", type=float, default=1000.0)
    p.add_argument("--show", type=int, default=20)
    add_client_tls_arguments(p)
    p.set_defaults(func=_rank)

    p = sub.add_parser("train", help="train a LambdaRank bundle")
    p.add_argument("--data", type=Path, help="LETOR/libsvm, CSV or Parquet")
    p.add_argument("--log", type=Path, metavar="DIR", help="train from a served-feature log")
    p.add_argument("--labels", type=Path, help="with --log: outcomes (request_id, item_id, label)")
    p.add_argument("--query", type=Path, help="query/group file for LETOR data")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--trees", type=int, default=TrainParams.trees)
    p.add_argument("--leaves", type=int, default=TrainParams.leaves)
    p.add_argument("--group-column", default="query_id")
    p.add_argument("--label-column", default="label")
    p.set_defaults(func=_train)

    p = sub.add_parser("drift", help="compare a served-feature log with a bundle's reference")
    p.add_argument("--log", type=Path, required=True, metavar="DIR")
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--threshold", type=float, default=0.2, help="PSI above which to fail")
    p.add_argument(
        "--all-versions", action="store_true", help="count rows of every model, not the bundle's"
    )
    p.set_defaults(func=_drift)

    p = sub.add_parser("features", help="feature data")
    fsub = p.add_subparsers(dest="features_command", required=True)
    f = fsub.add_parser("load", help="bulk-load entity features (into Redis with --redis)")
    f.add_argument("--type", dest="entity_type", help="entity type: user or item")
    f.add_argument("--file", type=Path, help="CSV or Parquet with an id column")
    f.add_argument("--id-column", default="id")
    f.add_argument("--demo", action="store_true", help="load the demo world's users and items")
    f.add_argument("--redis", metavar="URL")
    f.add_argument("--redis-cluster", action="store_true", help="the URL is a cluster seed")
    f.add_argument("--namespace", default="rk")
    f.add_argument("--ttl-s", type=float)
    f.set_defaults(func=_features_load)

    p = sub.add_parser("health", help="check a server's gRPC health (exit 0 when SERVING)")
    p.add_argument("--target", default="127.0.0.1:50051")
    p.add_argument("--service", default="")
    p.add_argument("--timeout-s", type=float, default=2.0)
    add_client_tls_arguments(p)
    p.set_defaults(func=_health)

    p = sub.add_parser(
        "load", help="load-test a server (see `ranking load --help`)", add_help=False
    )
    p.set_defaults(func=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # inside the try: a closed pipe must fail here, not at exit
    except BrokenPipeError:
        # The reader went away (`ranking drift ... | head -1`): stop quietly, like cat. Point
        # stdout at /dev/null so the interpreter's own flush at exit does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    return code


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "load":
        return _load(argparse.Namespace(), argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
