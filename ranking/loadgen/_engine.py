"""The send loops of one client process: open loop (a schedule) and closed loop (N in flight).

Requests are prebuilt bytes handed to gRPC without a serializer; responses come back as bytes
and are parsed only for their degraded reasons. Each request is one small task, so a slow
response never delays a later send.

Timing, all on `time.monotonic` (the event loop's clock):
    intended  when the schedule says the request goes out
    sent      when the sender handed it to gRPC
    done      when its response (or error) arrived
    latency   = done - min(intended, sent)   what a user arriving on schedule waits
    service   = done - sent                  what the server and the network took
    send lag  = max(0, sent - intended)      how far the client fell behind its schedule
A client that falls behind (slow loop, `max_in_flight` reached, a stalled server holding the
only slot) thus still charges the wait to latency: coordinated-omission correction. The timers
of the event loop fire up to ~1 ms late, so the sender wakes up to `timer_slack_ms` early and
times such a request from its real, earlier send: never an understatement.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import grpc.aio
import numpy as np
import numpy.typing as npt

from ranking.loadgen._config import LoadConfig
from ranking.loadgen._report import BulkHistogram, Sample, encode_histogram
from ranking.tls import channel_credentials

__all__ = ["Recorder", "drive", "open_channels"]

Clock = Callable[[], float]
_MAX_ERROR_SAMPLES = 5
#: Fire at most this many overdue requests before yielding to the loop once.
_BURST = 32


class Recorder:
    """Accumulates one process's results; `sample()` turns them into plain data."""

    def __init__(self, cfg: LoadConfig, t0: float) -> None:
        self._cfg = cfg
        self._t0 = t0
        self._warm_until = t0 + cfg.warmup_s
        self.latency = BulkHistogram()
        self.latency_ok = BulkHistogram()
        self.service = BulkHistogram()
        self.send_lag = BulkHistogram()
        self.s = Sample()
        self._first_send = -1.0

    def measured(self, intended: float) -> bool:
        return intended >= self._warm_until

    def on_sent(self, intended: float, sent: float) -> None:
        if not self.measured(intended):
            self.s.warmup_sent += 1
            return
        self.s.sent += 1
        if self._first_send < 0:
            self._first_send = sent
        self.s.last_send_s = sent - self._t0
        self.send_lag.add(max(1, int((sent - intended) * 1e6)))

    def on_done(
        self,
        intended: float,
        sent: float,
        done: float,
        code: str,
        response: bytes | None,
        detail: str = "",
    ) -> None:
        if not self.measured(intended):
            return
        s = self.s
        s.completed += 1
        s.last_done_s = max(s.last_done_s, done - self._t0)
        s.status[code] += 1
        latency_us = max(1, int((done - min(intended, sent)) * 1e6))
        self.latency.add(latency_us)
        if code == "OK":
            self.latency_ok.add(latency_us)
        self.service.add(max(1, int((done - sent) * 1e6)))
        if response is not None:
            reasons = self._cfg.payload.degraded_reasons(response)
            if reasons:
                s.degraded_responses += 1
                s.degraded.update(reasons)
                if any(r.startswith("budget.") for r in reasons):
                    s.partial_responses += 1
        elif len(s.errors) < _MAX_ERROR_SAMPLES:
            s.errors.append(f"{code}: {detail}"[:300])

    def sample(self, window_s: float, cpu_s: float) -> Sample:
        s = self.s
        s.first_send_s = self._first_send - self._t0 if self._first_send >= 0 else 0.0
        s.window_s = window_s
        s.client_cpu_s = cpu_s
        s.latency = encode_histogram(self.latency.histogram())
        s.latency_ok = encode_histogram(self.latency_ok.histogram())
        s.service = encode_histogram(self.service.histogram())
        s.send_lag = encode_histogram(self.send_lag.histogram())
        return s


async def open_channels(cfg: LoadConfig) -> list[grpc.aio.Channel]:
    """`channels_per_process` channels, each its own TCP connection, all connected."""
    options: list[tuple[str, Any]] = [
        # Channels with equal arguments share one connection through the global subchannel
        # pool; a local pool per channel gives each its own, so SO_REUSEPORT can spread them.
        ("grpc.use_local_subchannel_pool", 1),
        # The load generator never retries (no retry policy), so gRPC's retry filter only adds
        # per-call bookkeeping: off, the client measured 6-13 % less CPU per request (medians of
        # interleaved rounds at 400 req/s on a shared 2-core machine; noisy).
        ("grpc.enable_retries", 0),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ]
    if cfg.tls is None:
        channels = [
            grpc.aio.insecure_channel(cfg.target, options=options)
            for _ in range(cfg.channels_per_process)
        ]
    else:
        credentials = channel_credentials(cfg.tls)
        options += cfg.tls.channel_options()
        channels = [
            grpc.aio.secure_channel(cfg.target, credentials, options=options)
            for _ in range(cfg.channels_per_process)
        ]
    try:
        await asyncio.wait_for(
            asyncio.gather(*(c.channel_ready() for c in channels)), cfg.connect_timeout_s
        )
    except BaseException:
        await asyncio.gather(*(c.close(None) for c in channels))
        raise
    return channels


async def drive(
    cfg: LoadConfig,
    channels: Sequence[grpc.aio.Channel],
    requests: Sequence[bytes],
    offsets: npt.NDArray[np.float64] | None,
    t0: float,
    *,
    concurrency: int = 1,
    max_requests: int | None = None,
    clock: Clock = time.monotonic,
) -> Sample:
    """Run one process's share of a load run starting at monotonic time `t0`.

    Open loop: `offsets` is this process's schedule. Closed loop: `concurrency` workers send
    back to back until `cfg.duration_s` or `max_requests` (this process's share).
    """
    if not requests:
        raise ValueError("no requests to send")
    rec = Recorder(cfg, t0)
    calls = [c.unary_unary(cfg.payload.method, None, None) for c in channels]
    timeout = None if cfg.deadline_ms is None else cfg.deadline_ms / 1000.0
    counter = itertools.count()

    async def one(i: int, intended: float, sent: float) -> None:
        call = calls[i % len(calls)](requests[i % len(requests)], timeout=timeout)
        try:
            response: bytes = await call
        except grpc.aio.AioRpcError as exc:
            rec.on_done(intended, sent, clock(), exc.code().name, None, exc.details() or "")
            return
        except asyncio.CancelledError:
            call.cancel()
            raise
        rec.on_done(intended, sent, clock(), "OK", response)

    cpu0 = time.process_time()
    if cfg.mode == "open":
        assert offsets is not None
        await _open_loop(cfg, offsets, t0, rec, one, clock)
        window = float(cfg.duration_s - cfg.warmup_s)
    else:
        end = t0 + cfg.duration_s
        cap = max_requests if max_requests is not None else 1 << 62

        async def worker() -> None:
            while True:
                now = clock()
                i = next(counter)
                if now >= end or i >= cap:
                    return
                rec.on_sent(now, now)
                await one(i, now, now)

        await clock_sleep_until(t0, clock)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        window = max(0.0, min(clock(), end) - (t0 + cfg.warmup_s))
    return rec.sample(window, time.process_time() - cpu0)


async def clock_sleep_until(when: float, clock: Clock) -> None:
    delay = when - clock()
    if delay > 0:
        await asyncio.sleep(delay)


async def _open_loop(
    cfg: LoadConfig,
    offsets: npt.NDArray[np.float64],
    t0: float,
    rec: Recorder,
    one: Callable[[int, float, float], Any],
    clock: Clock,
) -> None:
    loop = asyncio.get_running_loop()
    slack = cfg.timer_slack_ms / 1000.0
    slots = None if cfg.max_in_flight is None else asyncio.Semaphore(cfg.max_in_flight)
    tasks: set[asyncio.Task[None]] = set()
    rec.s.scheduled = int(np.count_nonzero(offsets >= cfg.warmup_s))
    burst = 0

    async def limited(i: int, intended: float, sent: float) -> None:
        assert slots is not None
        try:
            await one(i, intended, sent)
        finally:
            slots.release()

    for i, offset in enumerate(offsets.tolist()):
        intended = t0 + offset
        wait = intended - clock() - slack
        if wait > 0:
            await asyncio.sleep(wait)
            burst = 0
        elif burst >= _BURST:
            await asyncio.sleep(0)
            burst = 0
        if slots is not None:
            await slots.acquire()
        sent = clock()
        rec.on_sent(intended, sent)
        task = loop.create_task(limited(i, intended, sent) if slots else one(i, intended, sent))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        burst += 1
    # Give stragglers their deadline (plus a margin) to finish; whatever is still out then is
    # cancelled and counted, so a run always ends.
    grace = (cfg.deadline_ms or 30_000.0) / 1000.0 + 2.0
    if tasks:
        _, pending = await asyncio.wait(set(tasks), timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            rec.s.status["CLIENT_GAVE_UP"] += len(pending)
            rec.s.completed += len(pending)
            await asyncio.gather(*pending, return_exceptions=True)
