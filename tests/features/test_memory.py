"""The in-process store: files in, vectorised gathers out, unknown ids flagged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ranking.features.memory import EntityTable, MemoryFeatureStore, read_entity_file
from ranking.features.store import Lookup
from tests.features.contract import check_feature_store


def test_csv_and_parquet_read_alike(tmp_path: Path) -> None:
    (tmp_path / "items.csv").write_text("id,a,b\nx1,1.5,\nx2,2,3.25\n")
    pq.write_table(
        pa.table({"id": ["x1", "x2"], "a": [1.5, 2.0], "b": [None, 3.25]}),
        tmp_path / "items.parquet",
    )
    for name in ("items.csv", "items.parquet"):
        table = read_entity_file(tmp_path / name)
        assert list(table.ids) == ["x1", "x2"]
        assert table.columns == ("a", "b")
        np.testing.assert_array_equal(table.matrix, [[1.5, np.nan], [2.0, 3.25]])


def test_numeric_ids_stay_strings(tmp_path: Path) -> None:
    (tmp_path / "u.csv").write_text("id,a\n007,1\n8,2\n")
    assert list(read_entity_file(tmp_path / "u.csv").ids) == ["007", "8"]


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("t.csv", "key,a\n1,2\n", "no id column"),
        ("t.csv", "id,a\n1,abc\n", "non-numeric"),
        ("t.json", "{}", "unsupported file type"),
    ],
)
def test_bad_files_are_named(tmp_path: Path, name: str, text: str, needle: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=needle):
        read_entity_file(tmp_path / name)


async def test_fetch_gathers_rows_and_flags_unknown() -> None:
    matrix = np.arange(12, dtype=np.float32).reshape(4, 3)
    store = MemoryFeatureStore({"item": EntityTable(["a", "b", "c", "d"], ("x", "y", "z"), matrix)})
    await check_feature_store(store, {"item": {"c": matrix[2], "a": matrix[0]}}, close=False)
    [result] = await store.fetch([Lookup("item", ["c", "nope", "a"])])
    np.testing.assert_array_equal(result.found, [True, False, True])
    np.testing.assert_array_equal(result.rows[[0, 2]], matrix[[2, 0]])
    assert np.isnan(result.rows[1]).all()
    with pytest.raises(KeyError):
        store.columns("user")


def test_duplicate_ids_refused() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        MemoryFeatureStore({"item": EntityTable(["a", "a"], ("x",), np.zeros((2, 1), np.float32))})
