"""The log ring's native copy (`LogRing.offer` queues, `_ring.Copier`'s thread writes, read
back by `RingReader`): every returned row comes back bit for bit (columns the same in every row
stored once, float32 ones as float32), in response order, with its id, scores and strings; a
full ring drops and counts without writing; bad inputs raise at once and queue nothing; the
core's arrays are held until copied, the degraded reasons copied when offered."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ranking.flywheel.logwriter import FeatureParts, LogSchema, LogWriter
from ranking.flywheel.ring import SLOT_HEAD, LogRing, RingReader, make_memfd
from ranking.ids import Ids
from ranking.scoring.bundle import Bundle, load_bundle
from tests.conftest import SmallWorld

# A NaN with a payload, and the two zeros: "the same" must mean the same bits.
ODD_NAN, SIGNALLING_NAN, QUIET_NAN32 = np.array(
    [0x7FF8_0000_0000_BADF, 0x7FF0_0000_2000_0000, 0xFFFC_0000_2000_0000], dtype=np.uint64
).view(np.float64)


class Capture(LogWriter):
    """Rebuilds each record's full rows from what the reader hands over (no Parquet)."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.got: list[dict[str, Any]] = []

    def add(  # type: ignore[override]
        self,
        timestamp: float,
        request_id: str,
        user_id: str,
        schema: LogSchema,
        features: Any,
        id_data: Any,
        id_offsets: Any,
        id_rows: Any,
        scores: Any,
        unscored: int,
        degraded: list[str],
        shadow_scores: Any = None,
        shadow_version: str = "",
        *,
        parts: FeatureParts | None = None,
    ) -> None:
        assert id_rows is None and features is None and parts is not None
        n = scores.shape[0]
        full = np.empty((parts.kinds.size, n))
        parts.into(full)
        data = bytes(id_data)
        ids = [data[id_offsets[k] : id_offsets[k + 1]].decode() for k in range(n)]
        self.got.append(
            dict(
                ts=timestamp, rid=request_id, uid=user_id, features=full.T, ids=ids,
                scores=np.array(scores), unscored=unscored, degraded=degraded,
                shadow=None if shadow_scores is None else np.array(shadow_scores),
                sv=shadow_version, kinds=parts.kinds.tolist(),
            )
        )  # fmt: skip


def ring_pair(capacity: int) -> tuple[LogRing, RingReader]:
    fd = make_memfd(64 + capacity)
    try:
        return LogRing(fd, capacity), RingReader(fd, capacity)
    finally:
        os.close(fd)


def case(rng: np.random.Generator, n_cand: int, nf: int) -> dict[str, Any]:
    """A request: some columns constant across rows (one of them an odd NaN, one -0.0), some
    that differ from constant only by the sign of zero or the NaN's payload in one row."""
    matrix = rng.normal(size=(n_cand, nf))
    # Half the columns hold float32 values (as the stores do), some with a NaN, one with a
    # value a float32 cannot hold exactly in one row, one a float32 subnormal.
    for j in rng.choice(nf, size=(nf + 1) // 2, replace=False):
        matrix[:, j] = matrix[:, j].astype(np.float32)
    matrix[rng.random(matrix.shape) < 0.1] = np.nan
    if nf > 7:
        matrix[:, 4] = np.float32(0.25)
        matrix[rng.integers(n_cand), 4] = 0.1
        matrix[:, 5] = np.float32(0.5)
        matrix[rng.integers(n_cand), 5] = float(np.float32(1e-40))
        matrix[:, 6] = np.float32(2.0)  # a signalling NaN: not a float32 (it would be quieted)
        matrix[rng.integers(n_cand), 6] = SIGNALLING_NAN
        matrix[:, 7] = np.float32(-1.0)  # a quiet NaN whose payload a float32 holds: one
        matrix[rng.integers(n_cand), 7] = QUIET_NAN32
        matrix[rng.integers(n_cand), 7] = -np.inf
    for j in rng.choice(nf, size=nf // 2, replace=False):
        matrix[:, j] = rng.choice([1.5, -0.0, ODD_NAN, np.nan, 0.0])
    if n_cand > 1 and nf > 3:
        matrix[:, 0] = 0.0
        matrix[rng.integers(n_cand), 0] = -0.0
        matrix[:, 1] = np.nan
        matrix[rng.integers(n_cand), 1] = ODD_NAN
    n = int(rng.integers(1, n_cand + 1))
    rows = rng.permutation(n_cand)[:n].astype(np.intp)
    unscored = int(rng.integers(0, n + 1)) if rng.random() < 0.3 else 0
    names = [f"é{k}-{'x' * int(rng.integers(0, 12))}" for k in range(n_cand)]
    return dict(
        matrix=matrix, rows=rows, unscored=unscored, ids=Ids.from_strs(names), names=names,
        scores=rng.normal(size=n - unscored),
        shadow=rng.normal(size=n) if rng.random() < 0.5 else None,
        rid=f"req-{rng.integers(1e9)}", uid="üser" if rng.random() < 0.5 else "",
        degraded=["features.items_unknown", "partial"][: int(rng.integers(0, 3))],
        sv="shadow-v2" if rng.random() < 0.5 else "",
    )  # fmt: skip


def offer(ring: LogRing, bundle: Bundle, c: dict[str, Any], ts: float) -> bool:
    """Queue the request and wait for the copy thread: True when it is in the ring."""
    written = ring.offered
    queued = ring.offer(
        ts, c["rid"], c["uid"], bundle, c["matrix"], c["ids"], c["rows"], c["scores"],
        c["unscored"], c["degraded"], c["shadow"], c["sv"],
    )  # fmt: skip
    assert queued and ring.sync(10.0)
    return ring.offered == written + 1


def check(c: dict[str, Any], got: dict[str, Any], ts: float) -> None:
    want = c["matrix"][c["rows"]]
    assert got["features"].view(np.uint64).tolist() == want.view(np.uint64).tolist()
    assert got["ids"] == [c["names"][i] for i in c["rows"]]
    unscored = c["unscored"]
    assert got["scores"].tolist() == c["scores"].tolist() + [0.0] * unscored
    assert got["unscored"] == unscored and got["ts"] == ts
    assert (got["rid"], got["uid"], got["degraded"], got["sv"]) == (
        c["rid"], c["uid"], c["degraded"], c["sv"],
    )  # fmt: skip
    if c["shadow"] is None:
        assert got["shadow"] is None
    else:
        assert got["shadow"].tolist() == c["shadow"].tolist()
    # Stored once: exactly the columns whose bits agree in every row; as float32: exactly
    # the others whose every value survives the round trip and is not a float32 subnormal.
    bits = want.view(np.uint64)
    const = (bits == bits[0]).all(axis=0)
    with np.errstate(invalid="ignore"):  # the signalling NaN
        single = want.astype(np.float32)
    exact = (single.astype(np.float64).view(np.uint64) == bits) & ~(
        (np.abs(single) < np.finfo(np.float32).tiny) & (single != 0)
    )
    want_kinds = np.where(const, 1, np.where(exact.all(axis=0), 2, 0))
    assert got["kinds"] == want_kinds.tolist()


def test_records_round_trip_bit_for_bit_across_the_wrap(
    small_world: SmallWorld, tmp_path: Path
) -> None:
    bundle = load_bundle(small_world.bundle)
    ring, reader = ring_pair(1 << 16)
    capture = Capture(tmp_path)
    rng = np.random.default_rng(5)
    sent = 0
    for k in range(400):
        nf = int(rng.choice([1, 3, 8, 9, 64, 65]))
        c = case(rng, int(rng.integers(1, 40)), nf)
        assert offer(ring, bundle, c, 1000.0 + k)
        sent += 1
        count, tail = reader.read_into(capture)
        reader.release(tail)
        assert count == 1
        check(c, capture.got[-1], 1000.0 + k)
    mixed = [g for g in capture.got if len(set(g["kinds"])) == 3]
    assert len(mixed) > 50  # constant, float32 and float64 columns in one record, often
    assert ring.head > 1 << 18  # wrapped several times
    assert ring.offered == sent and int(ring.slots[SLOT_HEAD]) == ring.head
    assert ring.refused == 0 and ring.pending == 0 and ring.copy_cpu_s > 0


def test_wide_and_non_contiguous_inputs(small_world: SmallWorld, tmp_path: Path) -> None:
    """More features than the native code keeps on its stack; a matrix that is a view with
    strides, rows as int32 and scores as a list: converted, same record."""
    bundle = load_bundle(small_world.bundle)
    ring, reader = ring_pair(1 << 22)
    capture = Capture(tmp_path)
    rng = np.random.default_rng(9)
    c = case(rng, 30, 1500)
    assert offer(ring, bundle, c, 1.0)
    wide = np.zeros((30, 3000))
    wide[:, ::2] = c["matrix"]
    d = dict(c, matrix=wide[:, ::2], rows=c["rows"].astype(np.int32), scores=list(c["scores"]))
    assert offer(ring, bundle, d, 2.0)
    count, _ = reader.read_into(capture)
    assert count == 2
    check(c, capture.got[0], 1.0)
    check(c, capture.got[1], 2.0)


def test_full_ring_refuses_without_writing(small_world: SmallWorld) -> None:
    bundle = load_bundle(small_world.bundle)
    ring, _ = ring_pair(4096)
    c = case(np.random.default_rng(1), 8, len(bundle.features))
    kept = 0
    while offer(ring, bundle, c, 1.0):
        kept += 1
    head = ring.head
    assert kept >= 1 and int(ring.slots[SLOT_HEAD]) == head
    assert not offer(ring, bundle, c, 1.0)
    assert ring.head == head == int(ring.slots[SLOT_HEAD]) and ring.refused == 2
    assert ring.offered == kept
    big = case(np.random.default_rng(2), 200, 64)  # larger than the whole ring: never fits
    assert not offer(ring, bundle, big, 1.0) and ring.head == head


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(rows=np.array([0, 8], dtype=np.intp)), "outside the matrix"),
        (dict(rows=np.array([-1], dtype=np.intp)), "outside the matrix"),
        (dict(ids=Ids(b"abc", np.array([0, 1, 2, 3, 4, 5, 6, 7, 9]))), "id_offsets"),
        (dict(ids=Ids(b"abcdefgh", np.array([0, 9, 2, 3, 4, 5, 6, 7, 8]))), "outside id_data"),
        (dict(ids=Ids(b"abc", np.array([0, 1, 2]))), "id_offsets"),
        (dict(scores=np.zeros(0)), "a score per scored row"),
        (dict(shadow=np.zeros(3)), "a shadow score per row"),
    ],
)
def test_bad_inputs_raise_and_write_nothing(
    small_world: SmallWorld, change: dict[str, Any], message: str
) -> None:
    bundle = load_bundle(small_world.bundle)
    ring, _ = ring_pair(1 << 16)
    rng = np.random.default_rng(3)
    c = case(rng, 8, 4)
    c.update(rows=np.arange(8, dtype=np.intp)[::-1].copy(), unscored=0, scores=np.ones(8))
    c.update(shadow=None)
    assert offer(ring, bundle, c, 1.0)
    head = ring.head
    with pytest.raises(ValueError, match=message):
        offer(ring, bundle, dict(c, **change), 2.0)
    assert ring.sync(10.0) and ring.head == head == int(ring.slots[SLOT_HEAD])
    assert ring.offered == 1 and ring.refused == 0


def test_queued_arrays_are_held_and_degraded_copied_at_once(
    small_world: SmallWorld, tmp_path: Path
) -> None:
    """The request path only queues: the matrix stays alive (referenced) until copied, even
    when the caller drops it, and reasons appended to its degraded list afterwards (the core
    may add `explain.partial`) are not logged. Many requests at once, then one sync."""
    import gc
    import weakref

    bundle = load_bundle(small_world.bundle)
    ring, reader = ring_pair(1 << 22)
    capture = Capture(tmp_path)
    rng = np.random.default_rng(11)
    cases = [case(rng, 30, 9) for _ in range(200)]
    wanted = [(dict(c), c["matrix"][c["rows"]].copy()) for c in cases]
    refs = []
    for k, c in enumerate(cases):
        assert ring.offer(
            float(k), c["rid"], c["uid"], bundle, c["matrix"], c["ids"], c["rows"],
            c["scores"], c["unscored"], c["degraded"], c["shadow"], c["sv"],
        )  # fmt: skip
        c["degraded"].append("explain.partial")
        refs.append(weakref.ref(c["matrix"]))
    cases.clear()
    for c, _ in wanted:
        del c["matrix"]
    gc.collect()
    assert ring.sync(10.0) and ring.offered == 200 and ring.pending == 0
    while ring.head > reader.tail:
        _, tail = reader.read_into(capture)
        reader.release(tail)
    assert len(capture.got) == 200
    for (c, want), g in zip(wanted, capture.got, strict=True):
        assert g["features"].view(np.uint64).tolist() == want.view(np.uint64).tolist()
        assert g["degraded"] == [d for d in c["degraded"] if d != "explain.partial"]
    ring.reap()
    gc.collect()
    assert all(r() is None for r in refs)  # released once copied
