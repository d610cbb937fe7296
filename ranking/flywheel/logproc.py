"""The served-feature log's writer process, and the worker's handle on it.

Each serving worker with `--log-dir` starts one log process (`LogProcess.start`): the worker's
event loop queues each logged request for the ring's copy thread (`ring.py`, `_ring.c`: no
Python object per row), which writes it into a shared ring, and this process decodes the ring
and writes Parquet (`logwriter.py`). Encoding Parquet costs ~10x the copy; in its own process
it neither holds the worker's GIL nor shares its interpreter, so the event loop only pays the
hand-off.

Control, worker -> log process, over a pipe (`ctl`): `F` + int64 head + `R`/`-`: "flush: write
everything up to `head`, then (`R`) complete the open file", answered on the `reply` pipe by
`D` + the head. End of file on `ctl` (the worker closed it, or died) means: drain the ring,
complete the open file, exit 0. So a clean shutdown (SIGTERM to the server: the worker drains
its calls, then closes the log) loses nothing that was queued, and a worker that dies leaves
no orphan. The log process ignores SIGINT and SIGTERM: its worker decides when it ends.

A log process that dies is restarted by the worker (`LogProcess.check`, from the flywheel's
thread; back-off 1 s doubling to 30 s, counted as `log_writer_deaths`, logged); the ring keeps
what was queued, and serving never notices. Schemas the new process has not seen in the ring
are handed to it on its stdin at start.

    python -m ranking.flywheel.logproc --fd N --capacity BYTES --ctl FD --reply FD \\
        --folder DIR [--roll-s S] [--roll-rows N] [--shadow] [--worker K]   (started by the worker)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from ranking.flywheel.logwriter import LogSchema, LogWriter
from ranking.flywheel.ring import (
    SLOT_ERRORS,
    SLOT_FILES,
    SLOT_HEAD,
    SLOT_RECORDS,
    SLOT_ROWS,
    LogRing,
    RingReader,
    make_memfd,
)

__all__ = ["LogProcess", "main"]

log = logging.getLogger(__name__)

_FLUSH = struct.Struct("<cqc")  # b"F", head, b"R" | b"-"
_DONE = struct.Struct("<cq")  # b"D", head


class LogProcess:
    """The worker's side: the ring it writes into and the log process that drains it."""

    def __init__(
        self,
        folder: Path,
        *,
        capacity: int = 16 << 20,
        roll_s: float = 300.0,
        roll_rows: int = 1_000_000,
        shadow: bool = False,
        worker: int = 0,
        poll_s: float = 0.02,
    ) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        capacity = max(4096, capacity - capacity % 8)
        self._fd = make_memfd(64 + capacity)
        self.ring = LogRing(self._fd, capacity)
        self._args = [
            "--capacity", str(capacity), "--folder", str(self.folder), "--roll-s", str(roll_s),
            "--roll-rows", str(roll_rows), "--worker", str(worker), "--poll-s", str(poll_s),
        ] + (["--shadow"] if shadow else [])  # fmt: skip
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._ctl = self._reply = -1
        self._closed = False
        self._backoff_s = 1.0
        self._next_start = 0.0
        self._started = 0.0
        self.deaths = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the log process (blocking for the fork/exec only, not for its imports)."""
        with self._lock:
            self._spawn()

    def _spawn(self) -> None:
        ctl_r, ctl_w = os.pipe()
        reply_r, reply_w = os.pipe()
        cmd = [sys.executable, "-m", "ranking.flywheel.logproc", "--fd", str(self._fd),
               "--ctl", str(ctl_r), "--reply", str(reply_w), *self._args]  # fmt: skip
        try:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, pass_fds=(self._fd, ctl_r, reply_w), close_fds=True
            )
        finally:
            os.close(ctl_r)
            os.close(reply_w)
        assert proc.stdin is not None
        # Every schema given out so far: records in the ring may refer to ones it never sees.
        known = {str(k): [v.version, v.names, v.key] for k, v in dict(self.ring.schemas).items()}
        try:
            proc.stdin.write(json.dumps(known).encode())
            proc.stdin.close()
        except OSError:  # it died at once; check() will see it
            pass
        os.set_blocking(ctl_w, False)
        for fd in (self._ctl, self._reply):
            if fd >= 0:
                os.close(fd)
        self._proc, self._ctl, self._reply = proc, ctl_w, reply_r
        self._started = time.monotonic()

    def check(self) -> None:
        """Restart the log process if it died (called periodically off the request path)."""
        with self._lock:
            proc = self._proc
            now = time.monotonic()
            if self._closed or proc is None:
                return
            if proc.poll() is None:
                if now - self._started > 60.0:  # it has lived a while: a new death starts over
                    self._backoff_s = 1.0
                return
            if self._next_start == 0.0:
                self.deaths += 1
                if self.deaths == 1 or math.log2(self.deaths).is_integer():
                    log.error(
                        "served-feature log process %d exited with %s (%d deaths): restarting in"
                        " %.0f s; serving goes on, rows are queued or dropped meanwhile",
                        proc.pid, proc.returncode, self.deaths, self._backoff_s,
                    )  # fmt: skip
                self._next_start = now + self._backoff_s
                self._backoff_s = min(30.0, self._backoff_s * 2)
            if now >= self._next_start:
                self._next_start = 0.0
                self._spawn()

    def flush(self, timeout_s: float = 10.0, *, roll: bool = False) -> bool:
        """Wait until the log process has written everything offered so far and, with `roll`,
        completed the open file. False on timeout or when it is not running (blocking)."""
        until = time.monotonic() + timeout_s
        if not self.ring.sync(timeout_s):  # the copy thread first: then the ring's head
            return False
        with self._lock:
            ctl, reply, target = self._ctl, self._reply, self.ring.head
            if ctl < 0:
                return False
            try:
                os.write(ctl, _FLUSH.pack(b"F", target, b"R" if roll else b"-"))
            except OSError:
                return False
            buf = b""
            while True:
                left = until - time.monotonic()
                if left <= 0 or not select.select([reply], [], [], left)[0]:
                    return False
                chunk = os.read(reply, 4096)
                if not chunk:
                    return False
                buf += chunk
                while len(buf) >= _DONE.size:
                    _, done = _DONE.unpack_from(buf)
                    buf = buf[_DONE.size :]
                    if done >= target:
                        return True

    def close(self, timeout_s: float = 30.0) -> None:
        """Let the log process write out everything in the ring and exit (blocking)."""
        self.ring.sync(timeout_s)  # every queued request into the ring first
        with self._lock:
            self._closed = True
            proc = self._proc
            if proc is not None and proc.poll() is not None and self.ring.pending_bytes() > 0:
                log.warning("log process had died; starting one to write out the queued rows")
                self._spawn()
                proc = self._proc
            for fd in (self._ctl, self._reply):
                if fd >= 0:
                    os.close(fd)
            self._ctl = self._reply = -1
            if proc is not None:
                try:
                    proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    log.error("log process did not finish within %.0f s; killing it", timeout_s)
                    proc.kill()
                    proc.wait()
                if proc.returncode:
                    log.error("log process exited with %s", proc.returncode)
            self._proc = None
        self.ring.close()
        os.close(self._fd)

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return None if proc is None else proc.pid

    def metrics(self) -> dict[str, float]:
        r = self.ring
        return {
            "log_queued": float(r.offered),
            "log_dropped": float(r.refused),
            "log_backlog_bytes": float(r.pending_bytes()),
            "log_copy_pending": float(r.pending),
            "log_copy_cpu_s": r.copy_cpu_s,
            "log_copy_inline": float(r.copied_inline),
            "log_copy_inline_cpu_s": r.inline_cpu_s,
            "log_rows": float(r.counter(SLOT_ROWS)),
            "log_files": float(r.counter(SLOT_FILES)),
            "log_errors": float(r.counter(SLOT_ERRORS)),
            "log_records": float(r.counter(SLOT_RECORDS)),
            "log_writer_deaths": float(self.deaths),
        }


# ---------------------------------------------------------------------- the log process


def _serve(args: argparse.Namespace) -> int:
    known = json.loads(sys.stdin.buffer.read() or b"{}")
    schemas = {int(k): LogSchema(v[0], tuple(v[1]), v[2]) for k, v in known.items()}
    ring = RingReader(args.fd, args.capacity, schemas)
    writer = LogWriter(
        Path(args.folder),
        roll_s=args.roll_s,
        roll_rows=args.roll_rows,
        shadow=args.shadow,
        worker=args.worker,
    )
    slots = ring.slots
    errors = 0
    records = int(slots[SLOT_RECORDS])
    base_rows, base_files = int(slots[SLOT_ROWS]), int(slots[SLOT_FILES])
    base_errors = int(slots[SLOT_ERRORS])
    flushes: list[tuple[int, bool]] = []
    buf = b""
    eof = False

    def publish() -> None:
        slots[SLOT_ROWS] = base_rows + writer.rows_written
        slots[SLOT_FILES] = base_files + writer.files_written
        slots[SLOT_ERRORS] = base_errors + errors
        slots[SLOT_RECORDS] = records

    def failed(what: str) -> None:
        nonlocal errors
        errors += 1
        if errors == 1 or math.log2(errors).is_integer():
            log.exception("served-feature log %s failed (%d failures)", what, errors)

    while True:
        if not eof and select.select([args.ctl], [], [], args.poll_s)[0]:
            chunk = os.read(args.ctl, 4096)
            if not chunk:
                eof = True
            buf += chunk
            while len(buf) >= _FLUSH.size:
                _, head, roll = _FLUSH.unpack_from(buf)
                buf = buf[_FLUSH.size :]
                flushes.append((head, roll == b"R"))
        while ring.available() > 0:
            try:
                count, tail = ring.read_into(writer)
            except Exception:
                # A record the writer could not take (or a corrupt ring): skip what is there.
                failed("write")
                count, tail = 0, ring.counter(SLOT_HEAD)
            records += count
            ring.release(tail)
            publish()
        try:
            writer.tick()
            if flushes and any(roll for _, roll in flushes):
                writer.roll()
        except Exception:
            failed("roll")
        publish()
        tail = ring.tail
        for head, _ in flushes:
            with contextlib.suppress(OSError):  # the worker stopped listening: nothing to tell
                os.write(args.reply, _DONE.pack(b"D", min(head, tail)))
        flushes = []
        if eof:
            break
    try:
        writer.close()
    except Exception:
        failed("close")
    publish()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ranking.flywheel.logproc")
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--capacity", type=int, required=True)
    p.add_argument("--ctl", type=int, required=True)
    p.add_argument("--reply", type=int, required=True)
    p.add_argument("--folder", required=True)
    p.add_argument("--roll-s", type=float, default=300.0)
    p.add_argument("--roll-rows", type=int, default=1_000_000)
    p.add_argument("--shadow", action="store_true")
    p.add_argument("--worker", type=int, default=0)
    p.add_argument("--poll-s", type=float, default=0.02)
    args = p.parse_args(argv)
    # The worker ends this process (by closing `ctl`); a signal to the process group must not
    # cut a file short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s log-w{args.worker} %(levelname)s %(message)s"
    )
    return _serve(args)


if __name__ == "__main__":
    raise SystemExit(main())
