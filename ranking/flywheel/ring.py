"""A bounded single-producer, single-consumer byte ring in shared memory.

The served-feature log's hand-off between a serving worker (the producer: its event loop queues
each logged request, `LogRing.offer`, and a native copy thread writes it in, `_ring.Copier`) and
its log process (the consumer: `logproc.py` decodes and writes Parquet). The memory is a `memfd`
(anonymous, not limited by the size of /dev/shm, freed when both sides have closed it) passed to
the log process as a file descriptor.

Layout: a 64-byte header of int64 slots, then `capacity` bytes of records.

    slot 0  head: bytes ever written (the producer's only)
    slot 1  tail: bytes ever consumed (the consumer's only)
    slot 2  rows written to Parquet     slot 3  files completed
    slot 4  write failures              slot 5  records consumed      (the consumer's counters)

A record is 8-byte aligned: int64 size (the whole record, a multiple of 8), int64 kind, then
its body. A record never wraps: when it does not fit before the end, the producer pads the end
(kind 0, or fewer than 16 bytes left, which the consumer skips) and writes at the start. The
producer publishes a record by storing the new head after writing its bytes; the consumer
releases space by storing the new tail after copying records out. Both are aligned 8-byte
stores, atomic on x86-64, whose stores are not reordered with earlier stores (TSO; the copy
thread's non-temporal stores are not, hence its sfence before the head); a weakly ordered CPU
would need a fence between the body and the head.

When the ring has no room the record is dropped and counted (`LogRing.refused`): the request
path never waits for the consumer.

A served record's body (little-endian), written by `_ring.put_served` (one native call):

    float64 timestamp; uint32 n_rows, n_features, schema_id, unscored, n_const, ids_bytes,
    flags (1: shadow scores), request_id bytes, user_id bytes, degraded bytes,
    shadow_version bytes, n_single                                            (56 bytes)
    uint8 kind[n_features], padded to 8     each column's: 0 float64 per row, 1 the same in
                                            every row (once), 2 float32 per row (exact)
    float64 const_values[n_const]           the kind-1 columns' values, in column order
    float64 double[n_rows][n_double]        the kind-0 columns of the returned items' rows,
                                            response order (n_double = the rest)
    float32 single[n_rows][n_single]        the kind-2 columns, padded to 8
    float64 scores[n_rows]                  returned scores, 0 for the unscored
    float64 shadow[n_rows]                  (flags & 1) the shadow's scores, NaN where none
    int64 id_offsets[n_rows + 1]            the returned items' ids, response order
    bytes ids, request_id, user_id, degraded ("\\n"-joined), shadow_version, padded to 8

"The same" is bit for bit (a NaN is the same NaN) and a float32 is one whose conversion back
gives the same bits (and is not subnormal), so the consumer rebuilds every row exactly as
scored. A user's and the context's features are the same in every row and the stores hold
float32, so R200's 200 x 64 request takes 26 KB of features instead of 100 KB: the copy
into memory the log process read long ago is what the request path pays for.

A schema record (kind 1) is `uint32 schema_id` + pad + the JSON of a `LogSchema`; the producer
writes it before the first served record that refers to it.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ranking.flywheel._ring import Copier
from ranking.flywheel.logwriter import FeatureParts, LogSchema, LogWriter, log_schema
from ranking.ids import Ids
from ranking.scoring.bundle import Bundle

__all__ = ["HEADER", "LogRing", "RingReader", "make_memfd"]

HEADER = 64
KIND_PAD, KIND_SCHEMA, KIND_SERVED = 0, 1, 2
_PREFIX = struct.Struct("<qq")
_SERVED = struct.Struct("<d12I")  # 56 bytes (the native writer packs the same)
_SCHEMA = struct.Struct("<I4x")
SLOT_HEAD, SLOT_TAIL, SLOT_ROWS, SLOT_FILES, SLOT_ERRORS, SLOT_RECORDS = range(6)


def _align(n: int) -> int:
    return (n + 7) & ~7


def make_memfd(size: int) -> int:
    """An anonymous shared-memory file of `size` bytes (memfd, or an unlinked temp file)."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("ranking-log-ring", 0)
    else:  # pragma: no cover - not Linux
        fd, path = tempfile.mkstemp(prefix="ranking-log-ring-")
        os.unlink(path)
    os.ftruncate(fd, size)
    return fd


class _Mapped:
    def __init__(self, fd: int, capacity: int) -> None:
        if capacity % 8 or capacity < 4096:
            raise ValueError("ring capacity must be a multiple of 8 and at least 4096 bytes")
        self.capacity = capacity
        self.mm = mmap.mmap(fd, HEADER + capacity)
        self.slots = np.ndarray((8,), np.int64, buffer=self.mm)
        self.whole = np.ndarray((HEADER + capacity,), np.uint8, buffer=self.mm)
        self.u8 = np.ndarray((capacity,), np.uint8, buffer=self.mm, offset=HEADER)
        self.f64 = np.ndarray((capacity // 8,), np.float64, buffer=self.mm, offset=HEADER)
        self.i64 = np.ndarray((capacity // 8,), np.int64, buffer=self.mm, offset=HEADER)
        self.f32 = np.ndarray((capacity // 4,), np.float32, buffer=self.mm, offset=HEADER)

    def counter(self, slot: int) -> int:
        return int(self.slots[slot])

    def close(self) -> None:
        del self.slots, self.whole, self.u8, self.f64, self.i64, self.f32
        self.mm.close()


class LogRing(_Mapped):
    """The producer side: the serving worker's event loop queues requests (`offer`), a native
    thread (`_ring.Copier`) copies them into the ring and owns its head."""

    def __init__(self, fd: int, capacity: int) -> None:
        super().__init__(fd, capacity)
        self._copier: Copier | _Closed = Copier(self.whole)
        #: id(bundle) -> (bundle, schema id, its record's JSON).
        self._schemas: dict[int, tuple[Bundle, int, bytes]] = {}
        self.schemas: dict[int, LogSchema] = {}  # every schema id given out (for a new consumer)

    def _schema(self, bundle: Bundle) -> tuple[Bundle, int, bytes]:
        known = self._schemas.get(id(bundle))
        if known is None or known[0] is not bundle:
            schema = log_schema(bundle)
            sid = next((k for k, v in self.schemas.items() if v == schema), len(self.schemas))
            self.schemas[sid] = schema
            text = json.dumps({"version": schema.version, "names": schema.names,
                               "key": schema.key}).encode()  # fmt: skip
            known = (bundle, sid, text)
            self._schemas[id(bundle)] = known
            if len(self._schemas) > 16:
                self._schemas.pop(next(iter(self._schemas)))
        return known

    def offer(
        self,
        timestamp: float,
        request_id: str,
        user_id: str,
        bundle: Bundle,
        matrix: npt.NDArray[np.float64],
        ids: Sequence[str],
        rows: npt.NDArray[np.intp],
        scores: Any,
        unscored: int,
        degraded: list[str],
        shadow: npt.NDArray[np.float64] | None = None,
        shadow_version: str = "",
    ) -> bool:
        """Queue one answered request for the copy thread (or, when its queue is full, copy it
        here: a burst; `copied_inline`). The arrays are kept by reference until copied: the
        caller must not modify them. A request the thread finds no room for in the ring is
        dropped and counted (`refused`), so True means "accepted", not "in the ring". Raises
        ValueError for inconsistent arguments (nothing queued)."""
        if len(rows) == 0:
            return True
        _, sid, text = self._schema(bundle)
        if not isinstance(ids, Ids):
            ids = Ids.from_strs(ids)
        self._copier.put_served(
            timestamp, sid, text, matrix, rows, scores, unscored, shadow, ids.data,
            ids.offsets, request_id, user_id, degraded, shadow_version,
        )  # fmt: skip
        return True

    def sync(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued request is in the ring (or dropped); False on timeout."""
        return self._copier.sync(timeout_s)

    def reap(self) -> None:
        """Release the references of requests already copied (the flywheel thread calls it:
        without traffic, the last few would otherwise be held until the next request)."""
        self._copier.reap()

    @property
    def offered(self) -> int:
        """Requests written into the ring."""
        return int(self._copier.written)

    @property
    def refused(self) -> int:
        """Requests dropped: the ring was full."""
        return int(self._copier.refused)

    @property
    def copied_inline(self) -> int:
        """Requests the caller copied itself (the copy queue was full: a burst)."""
        return int(self._copier.inline)

    @property
    def inline_cpu_s(self) -> float:
        """The caller's CPU seconds for those (on the request path)."""
        return float(self._copier.inline_cpu_s)

    @property
    def copy_cpu_s(self) -> float:
        """The copy thread's CPU seconds (off the request path)."""
        return float(self._copier.cpu_s)

    @property
    def pending(self) -> int:
        """Requests queued for the copy thread, not yet copied."""
        return int(self._copier.pending)

    def pending_bytes(self) -> int:
        return self.head - int(self.slots[SLOT_TAIL])

    @property
    def head(self) -> int:
        return int(self._copier.head)

    def close(self) -> None:
        """Copy what is queued, stop the thread, unmap (the counters stay readable)."""
        copier = self._copier
        copier.close()
        if isinstance(copier, Copier):
            self._copier = _Closed(copier)
        del copier
        super().close()


class _Closed:
    """A closed ring's copier: its last counters (the native one holds the mapping)."""

    def __init__(self, c: Copier) -> None:
        self.head: int = c.head
        self.written: int = c.written
        self.refused: int = c.refused
        self.pending = 0
        self.cpu_s: float = c.cpu_s
        self.inline: int = c.inline
        self.inline_cpu_s: float = c.inline_cpu_s

    def put_served(self, *args: Any) -> bool:
        raise ValueError("put_served: the log ring is closed")

    def sync(self, timeout_s: float) -> bool:
        return True

    def reap(self) -> None:
        pass

    def close(self) -> None:
        pass


class RingReader(_Mapped):
    """The consumer side: the log process (one thread)."""

    def __init__(self, fd: int, capacity: int, schemas: dict[int, LogSchema] | None = None):
        super().__init__(fd, capacity)
        self.schemas: dict[int, LogSchema] = dict(schemas or {})
        self.unknown_schema = 0

    @property
    def tail(self) -> int:
        return self.counter(SLOT_TAIL)

    def available(self) -> int:
        return self.counter(SLOT_HEAD) - self.tail

    def read_into(self, writer: LogWriter, max_records: int = 256) -> tuple[int, int]:
        """Hand up to `max_records` served records to `writer.add` (which copies them out of
        the ring); returns how many, and the tail to `release` once they are added."""
        cap = self.capacity
        tail = self.tail
        head = self.counter(SLOT_HEAD)
        count = 0
        while tail < head and count < max_records:
            pos = tail % cap
            if cap - pos < 16:
                tail += cap - pos
                continue
            size, kind = _PREFIX.unpack_from(self.mm, HEADER + pos)
            if size <= 0 or size % 8 or pos + size > cap:
                raise ValueError(f"corrupt log ring record at {tail}: size {size}")
            at = HEADER + pos + 16
            if kind == KIND_SCHEMA:
                (sid,) = _SCHEMA.unpack_from(self.mm, at)
                end = HEADER + pos + size
                d = json.loads(bytes(self.mm[at + 8 : end]).rstrip(b"\0"))
                self.schemas[sid] = LogSchema(d["version"], tuple(d["names"]), d["key"])
            elif kind == KIND_SERVED:
                self._served(pos, writer)
                count += 1
            tail += size
        return count, tail

    def _served(self, pos: int, writer: LogWriter) -> None:
        head = _SERVED.unpack_from(self.mm, HEADER + pos + 16)
        (ts, n, nf, sid, unscored, n_const, ids_len, flags, rid_len, uid_len, deg_len) = head[:11]
        sv_len, n_single = head[11:]
        schema = self.schemas.get(sid)
        if schema is None:  # a consumer that missed the schema (should not happen): skip
            self.unknown_schema += 1
            return
        b = pos + 16 + _SERVED.size
        kinds = self.u8[b : b + nf]
        w = (b + _align(nf)) // 8
        f64, i64 = self.f64, self.i64
        n_double = nf - n_const - n_single
        const_values = f64[w : w + n_const]
        w += n_const
        double = f64[w : w + n * n_double].reshape(n, n_double)
        w += n * n_double
        single = self.f32[2 * w : 2 * w + n * n_single].reshape(n, n_single)
        w += _align(4 * n * n_single) // 8
        scores = f64[w : w + n]
        w += n
        shadow = None
        if flags & 1:
            shadow = f64[w : w + n]
            w += n
        offsets = i64[w : w + n + 1]
        b = (w + n + 1) * 8
        data = self.u8[b : b + ids_len]
        b += ids_len
        strings = bytes(self.u8[b : b + rid_len + uid_len + deg_len + sv_len])
        rid = strings[:rid_len].decode()
        uid = strings[rid_len : rid_len + uid_len].decode()
        deg = strings[rid_len + uid_len : rid_len + uid_len + deg_len].decode()
        sv = strings[rid_len + uid_len + deg_len :].decode()
        writer.add(
            ts, rid, uid, schema, None, data, offsets, None, scores, unscored,
            deg.split("\n") if deg else [], shadow, sv,
            parts=FeatureParts(kinds, const_values, double, single),
        )  # fmt: skip

    def release(self, tail: int) -> None:
        self.slots[SLOT_TAIL] = tail
