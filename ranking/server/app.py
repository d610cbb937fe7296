"""One owner for start-up and shutdown of a server process.

`App` builds, in order: the feature store, the serving model (off the event loop), the limiter,
the core, a warm-up (`warmup.py`), and the grpc.aio server with health and reflection; `stop`
undoes it in reverse after draining in-flight calls. `run_worker` is the process entry: uvloop,
signals, serve until SIGTERM/SIGINT.

Health: the server binds its port only once a model is loaded and warmed, so nothing connects
to a worker without a model. The overall status ("", liveness) is SERVING while this process
serves; the services' (`ranking.v1.RankingService`, readiness) while it and, with several
workers, every other worker serve (`roster.py`). Both turn NOT_SERVING when a drain starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ranking.api.v1 import ranking_pb2
from ranking.core.models import ModelHolder, build_serving_model
from ranking.core.service import RankingService
from ranking.errors import BundleError
from ranking.features.memory import EntityTable, MemoryFeatureStore, read_entity_file
from ranking.features.store import FeatureStore, columns_or_empty
from ranking.flywheel.hook import Flywheel, build_flywheel
from ranking.flywheel.shadow_watch import watch_shadow
from ranking.limits import Limiter, build_limiter
from ranking.scoring.bundle import Bundle, load_bundle
from ranking.server.balance import ConnectionBalancer
from ranking.server.listeners import (
    ListenError,
    Listeners,
    OpsServers,
    bind,
    serving_credentials,
    start_ops_servers,
)
from ranking.server.roster import Roster
from ranking.server.warmup import warm_up
from ranking.settings import Settings
from ranking.telemetry import Stats, Telemetry, build_telemetry
from ranking.telemetry.backlog import BacklogRefusals, channelz_server_ids
from ranking.telemetry.endpoint import LocalSource, MetricsServer
from ranking.telemetry.state import PUBLISH_EVERY_S, ServiceState, publish
from ranking.tls import CertificateReloader

__all__ = ["App", "run_worker"]

log = logging.getLogger(__name__)

# Served (and listed by reflection) on the serving port; the admin service has its own port.
SERVICE_NAMES = (ranking_pb2.DESCRIPTOR.services_by_name["RankingService"].full_name,)


def demo_bundle_path(settings: Settings, progress: bool = True) -> Path:
    """The cached demo bundle for these settings, built (once) when missing."""
    from ranking.demo.model import build_demo_bundle

    return build_demo_bundle(
        settings.cache_dir,
        trees=settings.demo_trees,
        leaves=settings.demo_leaves,
        n_users=settings.demo_users,
        n_items=settings.demo_items,
        progress=progress,
    )


async def build_store(settings: Settings) -> FeatureStore:
    """Redis when URLs are set; else files into the in-process store; else the demo world."""
    if settings.redis_urls:
        from ranking.features.redis_factory import build_redis_store

        return await build_redis_store(
            settings.redis_urls,
            cluster=settings.redis_cluster,
            namespace=settings.redis_namespace,
            timeout_s=settings.redis_timeout_ms / 1e3,
            cache=settings.cache,
            hedge=settings.hedge,
        )
    loop = asyncio.get_running_loop()
    if settings.features:
        tables = {}
        for entity_type, path in settings.features.items():
            tables[entity_type] = await loop.run_in_executor(
                None, functools.partial(read_entity_file, path, progress=True)
            )
        return MemoryFeatureStore(tables)
    if settings.bundle is None:
        return MemoryFeatureStore(await loop.run_in_executor(None, demo_tables, settings))
    return MemoryFeatureStore({})


def demo_tables(settings: Settings) -> dict[str, EntityTable]:
    from ranking.demo.world import make_world

    world = make_world(n_users=settings.demo_users, n_items=settings.demo_items)
    return {
        "user": EntityTable(world.user_ids, tuple(world.user_columns), world.user_matrix),
        "item": EntityTable(world.item_ids, tuple(world.item_columns), world.item_matrix),
    }


class App:
    """A server process's parts, started and stopped together."""

    def __init__(
        self,
        settings: Settings,
        *,
        telemetry: Telemetry | None = None,
        stats: Stats | None = None,
        worker: int = 0,
        roster: Roster | None = None,
        serve_metrics: bool = True,
        balancer: ConnectionBalancer | None = None,
    ) -> None:
        """`serve_metrics`: serve --metrics-port from this process (False in the workers of a
        multi-process server, whose parent serves it). `balancer`: the workers' connection
        balancer this worker joins once it listens (`ranking.server.balance`)."""
        self.settings = settings
        self.worker = worker
        self.roster = roster
        self._balancer = balancer
        self._serve_metrics = serve_metrics
        self.metrics: MetricsServer | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._backlog = BacklogRefusals(())
        stats = stats or Stats()
        self.telemetry = telemetry or build_telemetry(stats)
        self.port = 0
        #: Every port this worker bound (serving, admin, probe; 0 = off).
        self.listeners = Listeners()
        #: Re-reads the TLS files on change (None: plaintext).
        self.tls: CertificateReloader | None = None
        self._ops = OpsServers()
        self.core: RankingService | None = None
        self.store: FeatureStore | None = None
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._score_executor: ThreadPoolExecutor | None = None
        self._build_executor: ThreadPoolExecutor | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._shadow_watcher: asyncio.Task[None] | None = None
        self._readiness: asyncio.Task[None] | None = None
        self._serving: tuple[bool, bool] | None = None
        self._draining = False
        self._servicer: Any = None
        self.flywheel: Flywheel | None = None

    async def __aenter__(self) -> App:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> int:
        """Build everything and start serving; returns the bound port."""
        s = self.settings
        loop = asyncio.get_running_loop()
        credentials, self.tls = serving_credentials(s)  # TlsError before anything is built
        # Scoring large batches and building models run off the event loop, so one slow call
        # never holds every other request (small batches are scored inline: see
        # inline_max_row_trees in settings.py).
        self._score_executor = ThreadPoolExecutor(1, thread_name_prefix="score")
        self._build_executor = ThreadPoolExecutor(1, thread_name_prefix="model-build")
        self.store = await build_store(s)
        bundle_dir = s.bundle
        if bundle_dir is None:
            bundle_dir = await loop.run_in_executor(self._build_executor, demo_bundle_path, s)
        build = functools.partial(
            build_serving_model,
            user_columns=columns_or_empty(self.store, "user"),
            item_columns=columns_or_empty(self.store, "item"),
            engine=s.engine,
        )
        bundle: Bundle = await loop.run_in_executor(self._build_executor, load_bundle, bundle_dir)
        model = await loop.run_in_executor(self._build_executor, build, bundle)
        holder = ModelHolder(model, build=build, executor=self._build_executor)
        await warm_up(
            models=holder,
            store=self.store,
            executor=self._score_executor,
            inline_max_row_trees=s.inline_max_row_trees,
            fetch_share=s.fetch_share,
            budget_s=s.budget_ms / 1e3,
            rounds=s.warmup_rounds,
            candidates=min(200, s.max_candidates),
        )
        limiter = _limiter(s)
        self.flywheel = await loop.run_in_executor(
            self._build_executor,
            build_flywheel,
            s,
            model.bundle,
            self.worker,
            lambda: limiter.inflight,
        )
        self.core = RankingService(
            models=holder,
            store=self.store,
            limiter=limiter,
            telemetry=self.telemetry,
            max_candidates=s.max_candidates,
            fetch_share=s.fetch_share,
            inline_max_row_trees=s.inline_max_row_trees,
            executor=self._score_executor,
            flywheel=self.flywheel,
        )
        options: list[tuple[str, Any]] = [
            ("grpc.so_reuseport", 1 if s.effective_workers() > 1 else 0),
            ("grpc.max_concurrent_streams", s.max_concurrent_streams),
        ]
        if s.max_connection_age_s > 0:
            options += [
                ("grpc.max_connection_age_ms", int(s.max_connection_age_s * 1e3)),
                ("grpc.max_connection_age_grace_ms", int(s.grace_s * 1e3)),
            ]
        ops_options = list(options)
        options += backlog_options(s.max_pending_calls)
        before = channelz_server_ids()  # to tell this server's channelz entry from others'
        server = grpc.aio.server(options=options)
        self._backlog = BacklogRefusals(channelz_server_ids() - before)
        from ranking.server.servicer import AdminServicer, RankingServicer, add_ranking_servicer

        self._servicer = RankingServicer(self.core, s.budget_ms / 1e3)
        add_ranking_servicer(self._servicer, server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, reflection.SERVICE_NAME, health.SERVICE_NAME), server
        )
        self.port = self.listeners.serving = bind(server, s.host, s.port, credentials)
        self._server = server
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.start()
        if self._balancer is not None:
            self._balancer.join(self.worker, self.port)
        try:
            self._ops = await start_ops_servers(
                s,
                admin_servicer=AdminServicer(self.core, s.admin_token, s.effective_workers()),
                health_servicer=self._health,
                options=ops_options,
                listeners=self.listeners,
            )
        except BaseException:
            await server.stop(0)
            self._server = None
            raise
        if self.roster is not None:
            self.roster.set_ready(self.worker, True)
        await self._update_health()
        self._readiness = asyncio.create_task(self._follow_readiness())
        if s.bundle is not None and s.reload_poll_s > 0:
            self._watcher = asyncio.create_task(self._watch(s.bundle, s.reload_poll_s))
        if s.shadow_bundle is not None and s.reload_poll_s > 0 and self.flywheel is not None:
            self._shadow_watcher = asyncio.create_task(
                watch_shadow(
                    self.flywheel,
                    s.shadow_bundle,
                    s.reload_poll_s,
                    engine=s.engine,
                    cpu_share=s.shadow_cpu_share,
                    executor=self._build_executor,
                )
            )
        self._start_metrics()
        log.info(
            "worker %d serving model %s (%s) on %s:%d (%s)%s; limiter %s, gRPC backlog %s",
            self.worker,
            model.version,
            model.scorer.name,
            s.host,
            self.port,
            ("mutual TLS" if s.tls_client_ca else "TLS") if credentials else "plaintext",
            _ops_ports(s, self.listeners),
            s.limiter,
            s.max_pending_calls or "gRPC default",
        )
        return self.port

    def _start_metrics(self) -> None:
        """Serve /metrics here (one process), or publish this worker's state for the parent."""
        stats = self.telemetry.stats
        if stats.path is not None and self.settings.metrics_port:
            self._publisher = asyncio.create_task(self._publish(stats.path))
        if self._serve_metrics and self.settings.metrics_port:
            source = LocalSource(stats, self.state)
            self.metrics = MetricsServer(self.settings.host, self.settings.metrics_port, source)
            self.metrics.start()

    def state(self) -> ServiceState | None:
        """The core's state plus what only the transport knows (gRPC's backlog refusals)."""
        if self.core is None:
            return None
        state = self.core.state()
        state.grpc = self._backlog.read(self.telemetry.stats.running())
        return state

    async def _publish(self, stats_path: Path) -> None:
        while (state := self.state()) is not None:
            publish(state, stats_path, self.worker)
            await asyncio.sleep(PUBLISH_EVERY_S)

    async def _watch(self, folder: Path, every_s: float) -> None:
        """Poll the bundle folder; reload when its files changed and then held still for one
        more poll (a writer replaces model.txt and schema.json one after the other, and a
        half-written pair must not be loaded). A bad bundle is refused; the old one serves on.
        For an instant, atomic switch, point --bundle at a symlink and replace the link.
        """
        loaded = _fingerprint(folder)
        previous = loaded
        while True:
            await asyncio.sleep(every_s)
            now = _fingerprint(folder)
            settled, previous = now == previous, now
            if now == loaded or not settled or self.core is None:
                continue
            loaded = now
            with contextlib.suppress(BundleError):
                await self.core.models.reload(folder)

    def alive(self) -> bool:
        """This process serves: its model is loaded (it is once started) and no drain has begun.
        The overall health status ("") says this: a liveness probe."""
        return self.core is not None and self._server is not None and not self._draining

    def ready(self) -> bool:
        """Alive, and so is every worker of the server. The services' health status says this
        (`ranking.v1.RankingService`): readiness probes and client-side health checking."""
        return self.alive() and (self.roster is None or self.roster.all_ready())

    async def _update_health(self) -> None:
        state = (self.alive(), self.ready())
        if state == self._serving or self._health is None:
            return
        self._serving = state
        alive, ready = state
        await self._health.set("", _status(alive))
        for name in SERVICE_NAMES:
            await self._health.set(name, _status(ready))
        if self.roster is not None:
            log.info("worker %d ready: %s", self.worker, ready)

    async def _follow_readiness(self, every_s: float = 0.05) -> None:
        """Keep health in step with the other workers (a sibling died or came back)."""
        while True:
            await asyncio.sleep(every_s)
            await self._update_health()

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain, stop, close: nothing a client already sent is lost if it fits in the grace.

        1. Health turns NOT_SERVING so balancers and health-checking clients move away.
        2. Drain: keep serving until no call is running and none has arrived for
           `drain_quiet_ms` (bounded by the grace period). gRPC cancels calls it has received
           but not yet handed to the application when the server stops, so stopping at once
           would lose calls that were already on the wire.
        3. `server.stop` with what is left of the grace: GOAWAY, in-flight calls finish.
        """
        grace = self.settings.grace_s if grace_s is None else grace_s
        until = time.monotonic() + grace
        self._draining = True
        if self.roster is not None:
            self.roster.set_ready(self.worker, False)
        if self._readiness is not None:
            self._readiness.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._readiness
            self._readiness = None
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._servicer is not None:
            quiet = self.settings.drain_quiet_ms / 1e3
            while time.monotonic() < until and (  # noqa: ASYNC110 (waits on a clock)
                self._servicer.inflight or time.monotonic() - self._servicer.last_arrival_s < quiet
            ):
                await asyncio.sleep(min(quiet / 4, 0.01))
        grace = max(until - time.monotonic(), 0.0)
        if self._publisher is not None:
            self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher
            self._publisher = None
        if self.metrics is not None:
            self.metrics.stop()
            self.metrics = None
        for watcher in (self._watcher, self._shadow_watcher):
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
        self._watcher = self._shadow_watcher = None
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        await self._ops.stop(0)
        if self.flywheel is not None:
            # After the drain: every answered request is queued; write it all out.
            await asyncio.get_running_loop().run_in_executor(None, self.flywheel.close)
            self.flywheel = None
        if self.store is not None:
            await self.store.close()
            self.store = None
        for executor in (self._score_executor, self._build_executor):
            if executor is not None:
                executor.shutdown(wait=True)
        self._score_executor = self._build_executor = None
        self.telemetry.shutdown()


def _status(serving: bool) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
    if serving:
        return health_pb2.HealthCheckResponse.SERVING
    return health_pb2.HealthCheckResponse.NOT_SERVING


def _ops_ports(s: Settings, ports: Listeners) -> str:
    out = ""
    if ports.admin:
        out += f", admin on {s.admin_host}:{ports.admin}"
    if ports.health:
        out += f", health probes on {s.host}:{ports.health}"
    return out


def _fingerprint(folder: Path) -> tuple[tuple[str, int, int, int], ...]:
    out = []
    for name in ("model.txt", "schema.json"):
        try:
            st = (folder / name).stat()  # follows a symlinked folder to its target
        except OSError:
            continue
        out.append((name, st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


def backlog_options(max_pending_calls: int) -> list[tuple[str, int]]:
    """gRPC core options that cap the calls a worker's server holds before Python takes them.

    grpc.aio takes one new call from the core per event-loop turn; calls arriving faster wait in
    the core's pending queue, where no in-flight count can see them. Its random-early-detection
    backlog guard (soft and hard limit) refuses calls beyond the cap at once, in C, with no
    Python work: the client sees CANCELLED. 0 keeps gRPC's defaults (1,000 soft, 3,000 hard).
    """
    if max_pending_calls <= 0:
        return []
    return [
        ("grpc.server.max_pending_requests", max_pending_calls - 1),
        ("grpc.server.max_pending_requests_hard_limit", max_pending_calls),
    ]


def _limiter(s: Settings) -> Limiter:
    if s.limiter == "off":
        return build_limiter("off")
    if s.limiter == "fixed":
        return build_limiter("fixed", limit=s.limiter_fixed)
    return build_limiter(
        s.limiter,
        initial_limit=s.limiter_initial,
        min_limit=s.limiter_min,
        max_limit=s.limiter_max,
    )


def run_worker(
    settings: Settings,
    worker: int = 0,
    stats_path: Path | None = None,
    roster_path: Path | None = None,
    balancer: ConnectionBalancer | None = None,
) -> None:
    """Process entry: serve until SIGTERM or SIGINT, then drain and exit."""
    if settings.uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    stats = Stats(settings.effective_workers(), stats_path, worker) if stats_path else Stats()
    roster = Roster(settings.effective_workers(), roster_path) if roster_path else None

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        app = App(
            settings,
            stats=stats,
            worker=worker,
            serve_metrics=stats_path is None,
            roster=roster,
            balancer=balancer,
        )
        try:
            await app.start()
        except ListenError as exc:  # a message, not a traceback: the caller picks another port
            raise SystemExit(f"ranking serve: {exc}") from None
        await stop.wait()
        log.info("worker %d draining (grace %.1f s)", worker, settings.grace_s)
        await app.stop()

    asyncio.run(main())
