"""The native module's contracts: argument checks, key spelling, reply decoding, gathering."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ranking.features._index as _index
from ranking.features.redis_store import KeyLayout, header_for
from ranking.ids import Ids

COLS = ("a", "b", "c")


def parse_resp_array(raw: bytes) -> list[bytes]:
    """A RESP array of bulk strings, parsed strictly (the test's own reader)."""
    assert raw.startswith(b"*")
    head, rest = raw.split(b"\r\n", 1)
    out = []
    for _ in range(int(head[1:])):
        assert rest.startswith(b"$")
        size, rest = rest.split(b"\r\n", 1)
        n = int(size[1:])
        out.append(rest[:n])
        assert rest[n : n + 2] == b"\r\n"
        rest = rest[n + 2 :]
    assert rest == b""
    return out


def insert(ix: _index.Index, ids: list[str], rows: np.ndarray, found: list[bool]) -> None:
    f = np.asarray(found, dtype=np.bool_)
    ix.insert(ids, rows.astype(np.float32), f, ~f, 100.0, 10.0, 5.0)


@given(
    st.lists(st.text(min_size=0, max_size=12), max_size=20),
    st.sampled_from([0, 1, 16]),
    st.booleans(),
)
def test_mget_command_spells_keys_like_key_layout(ids: list[str], buckets: int, as_ids: bool):
    layout = KeyLayout("ns", buckets)
    source = (Ids.from_strs(ids).data, Ids.from_strs(ids).offsets) if as_ids else ids
    raw = _index.mget_command(
        [(layout.prefix("item"), source), (layout.prefix("user"), ["u"])], buckets
    )
    expected = [*layout.keys("item", ids), *layout.keys("user", ["u"])]
    assert parse_resp_array(raw) == [b"MGET", *(k.encode() for k in expected)]


def test_lookup_gathers_into_model_order_and_reports_states() -> None:
    ix = _index.Index(8, len(COLS))
    rows = np.arange(9, dtype=np.float32).reshape(3, 3)
    insert(ix, ["é", "b", "gone"], rows, [True, True, False])
    assert len(ix) == 3 and ix.contains("é") and ix.contains("é".encode())
    out = np.full((4, 5), -1.0)
    state = np.empty(4, np.int8)
    ids = Ids.from_strs(["b", "zz", "gone", "é"])
    hits = ix.lookup(
        (ids.data, ids.offsets),
        101.0,
        state,
        out,
        np.array([4, 0], np.int64),
        np.array([0, 2], np.int64),
    )
    assert hits == (2, 1)
    assert state.tolist() == [1, 0, 2, 1]
    assert out[0].tolist() == [5.0, -1, -1, -1, 3.0]
    assert out[3].tolist() == [2.0, -1, -1, -1, 0.0]
    assert (out[1] == -1).all() and (out[2] == -1).all()
    # past the TTLs: misses; within the stale window: served again, without a reference bit
    state[:] = 0
    assert ix.lookup(["b", "gone"], 111.0, state[:2]) == (0, 0)
    assert ix.stale(["b", "gone"], np.array([0, 1], np.int64), 111.0, 10.0, state[:2]) == (1, 1)
    assert state[:2].tolist() == [1, 2]
    assert ix.stale(["b"], np.array([0], np.int64), 200.0, 5.0, state[:1]) == (0, 0)


def test_overwrite_keeps_one_slot_and_duplicates_in_a_batch_share_it() -> None:
    ix = _index.Index(2, 1)
    insert(ix, ["a", "a", "b"], np.array([[1.0], [2.0], [3.0]]), [True, True, True])
    assert len(ix) == 2
    out = np.zeros((1, 1), np.float32)
    ix.lookup(["a"], 100.5, np.empty(1, np.int8), out, np.zeros(1, np.int64), np.zeros(1, np.int64))
    assert out[0, 0] == 2.0  # the later row of the batch wins


def test_batch_larger_than_capacity_keeps_what_fits() -> None:
    ix = _index.Index(3, 1)
    ids = [f"k{i}" for i in range(10)]
    inserted, evicted = ix.insert(
        ids, np.zeros((10, 1), np.float32), np.ones(10, np.bool_), np.zeros(10, np.bool_),
        0.0, 1.0, 1.0,
    )  # fmt: skip
    assert (inserted, evicted) == (3, 0) and len(ix) == 3
    assert [ix.contains(i) for i in ids[:4]] == [True, True, True, False]


def test_churn_through_a_small_table_keeps_every_live_key_findable() -> None:
    """Backward-shift deletion under heavy collision: many evictions in a 16-cell table."""
    ix = _index.Index(8, 1)
    live: list[str] = []
    for r in range(300):
        batch = [f"id{r}-{j}" for j in range(3)]
        ix.insert(
            batch, np.full((3, 1), r, np.float32), np.ones(3, np.bool_), np.zeros(3, np.bool_),
            float(r), 1e9, 1e9,
        )  # fmt: skip
        live = [*live, *batch][-8:]  # no hits: CLOCK degenerates to FIFO
        assert len(ix) == 8 if r >= 2 else True
        assert all(ix.contains(i) for i in live)
    assert sum(ix.contains(f"id{r}-{j}") for r in range(300) for j in range(3)) == 8


def test_decode_values() -> None:
    header = header_for(COLS)
    good = header + np.array([1, 2, 3], "<f4").tobytes()
    values = [b"junk", good, None, header + b"\0" * 4, b"X" * 8 + np.zeros(3, "<f4").tobytes()]
    rows = np.full((4, 3), 7.0, np.float32)  # garbage: rows not found must become NaN
    found = np.empty(4, np.bool_)
    unknown = np.empty(4, np.bool_)
    assert _index.decode_values(values, 1, header, rows, found, unknown) == 2
    assert found.tolist() == [True, False, False, False]
    assert unknown.tolist() == [False, True, False, False]
    assert rows[0].tolist() == [1.0, 2.0, 3.0]
    assert np.isnan(rows[1:]).all()


def test_arguments_are_checked_before_anything_is_written() -> None:
    ix = _index.Index(4, 2)
    state = np.empty(2, np.int8)
    with pytest.raises(ValueError, match="offsets"):
        ix.lookup((b"abc", np.array([0, 5, 3], np.int64)), 0.0, state)
    with pytest.raises(ValueError, match="offsets"):
        ix.lookup((b"abc", np.array([1, 2, 3], np.int64)), 0.0, state)
    with pytest.raises(TypeError):
        ix.lookup((b"abc", np.array([0, 1, 3], np.int32)), 0.0, state)
    with pytest.raises(TypeError):
        ix.lookup(["a", 3], 0.0, state)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="state"):
        ix.lookup(["a"], 0.0, state)
    out = np.zeros((2, 2))
    with pytest.raises(ValueError, match="column"):
        ix.lookup(["a", "b"], 0.0, state, out, np.array([2], np.int64), np.array([0], np.int64))
    with pytest.raises(ValueError, match="column"):
        ix.lookup(["a", "b"], 0.0, state, out, np.array([0], np.int64), np.array([2], np.int64))
    with pytest.raises(ValueError, match="rows"):
        ix.lookup(["a", "b"], 0.0, state, out[:1], np.array([0], np.int64), np.array([0], np.int64))
    with pytest.raises(TypeError):
        ix.lookup(
            ["a", "b"], 0.0, state, out[:, :1], np.array([0], np.int64), np.array([0], np.int64)
        )
    with pytest.raises(IndexError):
        ix.stale(["a", "b"], np.array([2], np.int64), 0.0, 1.0, state)
    with pytest.raises(ValueError):
        _index.Index(0, 2)
    with pytest.raises(ValueError):
        ix.insert(
            ["a"],
            np.zeros((1, 3), np.float32),
            np.ones(1, np.bool_),
            np.zeros(1, np.bool_),
            0.0,
            1.0,
            1.0,
        )


@settings(max_examples=300)
@given(st.binary(max_size=40), st.lists(st.integers(-3, 50), max_size=8))
def test_random_offsets_never_crash(data: bytes, offsets: list[int]) -> None:
    ix = _index.Index(4, 1)
    off = np.asarray(offsets, np.int64)
    n = max(len(offsets) - 1, 0)
    try:
        ix.lookup((data, off), 0.0, np.empty(n, np.int8))
        ix.insert(
            (data, off),
            np.zeros((n, 1), np.float32),
            np.ones(n, np.bool_),
            np.zeros(n, np.bool_),
            0.0,
            1.0,
            1.0,
        )
    except ValueError:
        pass


def test_long_and_short_ids_share_a_table_through_evictions() -> None:
    """Ids over 40 bytes are kept off the slot (heap); both kinds survive churn and removal."""
    ix = _index.Index(16, 2)
    live: list[str] = []
    for r in range(200):
        batch = [f"{'x' * (r % 70)}-{r}-{j}" for j in range(2)]
        rows = np.full((2, 2), r, np.float32)
        ix.insert(batch, rows, np.ones(2, np.bool_), np.zeros(2, np.bool_), float(r), 1e9, 1e9)
        live = [*live, *batch][-16:]
        out = np.zeros((len(live), 2), np.float32)
        state = np.empty(len(live), np.int8)
        cols = np.arange(2, dtype=np.int64)
        assert ix.lookup(live, float(r), state, out, cols, cols) == (len(live), 0)
        want = [float(i.split("-")[-2]) for i in live]
        assert out[:, 0].tolist() == want
    assert len(ix) == 16
