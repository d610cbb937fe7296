"""`run_load`: one run, in the caller's event loop or across several client processes.

One Python process sends a few thousand requests a second at most (~0.2 ms of CPU each), so
higher rates use `processes` > 1. Children are spawned (never forked: gRPC's threads do not
survive a fork), build their own requests and channels, report ready, and then all start on one
wall-clock instant the parent picks, so their schedules line up.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import queue
import time
from collections.abc import Sequence
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from ranking.loadgen._config import LoadConfig
from ranking.loadgen._engine import drive, open_channels
from ranking.loadgen._report import LoadReport, Sample, merge
from ranking.loadgen._schedule import _share, arrival_offsets

__all__ = ["LoadGenError", "run_load"]

logger = logging.getLogger(__name__)
_START_MARGIN_S = 0.25


class LoadGenError(RuntimeError):
    """The load run could not be carried out (no connection, a client process failed)."""


def _process_seed(cfg: LoadConfig, index: int) -> int:
    return cfg.seed * 1_000_003 + index


def _pool_size(cfg: LoadConfig, index: int) -> int:
    pool = int(getattr(getattr(cfg.payload, "mix", None), "pool_size", 2048))
    if cfg.max_requests is not None:
        pool = min(pool, _share(cfg.max_requests, index, cfg.processes))
    return max(1, pool)


def _offsets_for(cfg: LoadConfig, index: int) -> Any:
    if cfg.mode != "open":
        return None
    return arrival_offsets(
        arrivals=cfg.arrivals,
        rate_rps=cfg.rate_rps,
        duration_s=cfg.duration_s,
        max_requests=cfg.max_requests,
        seed=cfg.seed,
        process_index=index,
        processes=cfg.processes,
    )


def _concurrency_for(cfg: LoadConfig, index: int) -> int:
    return _share(cfg.concurrency, index, cfg.processes)


def _max_requests_for(cfg: LoadConfig, index: int) -> int | None:
    return None if cfg.max_requests is None else _share(cfg.max_requests, index, cfg.processes)


async def run_load(config: LoadConfig) -> LoadReport:
    """Carry out one load run and return its merged report.

    Raises `LoadGenError` when the target cannot be reached within `connect_timeout_s` or a
    client process fails. A run that completes but fell behind returns normally with
    `report.valid` False and the reasons in `report.problems`.
    """
    if config.processes == 1:
        samples = [await _run_here(config)]
    else:
        samples = await _run_spawned(config)
    return merge(
        samples,
        mode=config.mode,
        target=config.target,
        target_rps=config.rate_rps,
        min_rate_ratio=config.min_rate_ratio,
        max_send_lag_p99_ms=config.max_send_lag_p99_ms,
        config=config.describe(),
    )


async def _run_here(cfg: LoadConfig) -> Sample:
    # Building a few thousand requests takes a moment; keep the caller's loop free meanwhile
    # (it may be serving the very server under test).
    requests = await asyncio.to_thread(cfg.payload.build, _pool_size(cfg, 0), _process_seed(cfg, 0))
    offsets = _offsets_for(cfg, 0)
    try:
        channels = await open_channels(cfg)
    except TimeoutError as exc:
        raise LoadGenError(
            f"could not connect to {cfg.target} within {cfg.connect_timeout_s:g} s"
        ) from exc
    try:
        t0 = time.monotonic() + 0.01
        return await _drive_share(cfg, 0, channels, requests, offsets, t0)
    finally:
        await asyncio.gather(*(c.close(None) for c in channels))


async def _drive_share(
    cfg: LoadConfig,
    index: int,
    channels: Sequence[grpc.aio.Channel],
    requests: Sequence[bytes],
    offsets: npt.NDArray[np.float64] | None,
    t0: float,
) -> Sample:
    """Drive client process `index`'s share of the run (its concurrency and request cap)."""
    return await drive(
        cfg,
        channels,
        requests,
        offsets,
        t0,
        concurrency=_concurrency_for(cfg, index),
        max_requests=_max_requests_for(cfg, index),
    )


async def _child_async(cfg: LoadConfig, index: int, out: Any, go: Any) -> Sample:
    requests = cfg.payload.build(_pool_size(cfg, index), _process_seed(cfg, index))
    offsets = _offsets_for(cfg, index)
    channels = await open_channels(cfg)
    try:
        out.put(("ready", index, None))
        start_wall = await asyncio.to_thread(go.get)
        t0 = time.monotonic() + (float(start_wall) - time.time())
        return await _drive_share(cfg, index, channels, requests, offsets, t0)
    finally:
        await asyncio.gather(*(c.close(None) for c in channels))


def _child_main(cfg: LoadConfig, index: int, out: Any, go: Any) -> None:
    """Entry point of a spawned client process."""
    try:
        coro = _child_async(cfg, index, out, go)
        runner: Any = asyncio.run
        if cfg.uvloop:
            try:
                import uvloop

                runner = uvloop.run
            except ImportError:  # pragma: no cover - uvloop is optional
                pass
        sample = runner(coro)
        out.put(("ok", index, sample))
    except BaseException as exc:  # report every failure to the parent, then exit
        out.put(("error", index, f"{type(exc).__name__}: {exc}"))


async def _run_spawned(cfg: LoadConfig) -> list[Sample]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    gos = [ctx.Queue() for _ in range(cfg.processes)]
    procs = [
        ctx.Process(target=_child_main, args=(cfg, i, out, gos[i]), daemon=True)
        for i in range(cfg.processes)
    ]
    for p in procs:
        p.start()
    try:
        setup_deadline = time.monotonic() + cfg.connect_timeout_s + 60.0
        ready = 0
        while ready < cfg.processes:
            kind, index, value = await _get(out, setup_deadline)
            if kind == "error":
                raise LoadGenError(f"client process {index} failed: {value}")
            ready += 1
        start_wall = time.time() + _START_MARGIN_S
        for q in gos:
            q.put(start_wall)
        grace = (cfg.deadline_ms or 30_000.0) / 1000.0 + 30.0
        run_deadline = time.monotonic() + _START_MARGIN_S + cfg.duration_s + grace
        samples: dict[int, Sample] = {}
        while len(samples) < cfg.processes:
            kind, index, value = await _get(out, run_deadline)
            if kind == "error":
                raise LoadGenError(f"client process {index} failed: {value}")
            samples[index] = value
        return [samples[i] for i in range(cfg.processes)]
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                logger.warning("client process %s did not exit; terminating it", p.pid)
                p.terminate()
                p.join(timeout=5)
        for q in [out, *gos]:
            q.close()
            q.join_thread()


async def _get(q: Any, deadline: float) -> tuple[str, int, Any]:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise LoadGenError("timed out waiting for the client processes")
    try:
        item: tuple[str, int, Any] = await asyncio.to_thread(q.get, True, remaining)
    except queue.Empty as exc:
        raise LoadGenError("timed out waiting for the client processes") from exc
    return item
