"""The one table reader: feature files and training data accept the same suffixes."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ranking.features.memory import read_entity_file
from ranking.tables import TABLE_SUFFIXES, TableError, is_table, read_table
from ranking.train import TrainDataError, load_ranking_data

ROWS = {"id": ["007", "x"], "query_id": [1, 1], "label": [1, 0], "a": [1.5, None]}


def _write(path: Path) -> Path:
    name = path.name
    if name.endswith((".parquet", ".pq")):
        pq.write_table(pa.table(ROWS), path)
        return path
    sep = "\t" if ".tsv" in name else ","
    lines = [sep.join(ROWS)]
    for i in range(2):
        cells = ["" if ROWS[k][i] is None else str(ROWS[k][i]) for k in ROWS]
        lines.append(sep.join(cells))
    text = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(text) if name.endswith(".gz") else text)
    return path


def test_suffixes_are_exactly_these() -> None:
    assert TABLE_SUFFIXES == (".csv", ".tsv", ".csv.gz", ".tsv.gz", ".parquet", ".pq")
    assert is_table("A.CSV") and is_table("x.tsv.gz") and is_table("x.PQ")
    assert not is_table("rank.train") and not is_table("x.txt") and not is_table("x.gz")


@pytest.mark.parametrize("suffix", TABLE_SUFFIXES)
def test_every_suffix_reads_the_same_in_both_readers(tmp_path: Path, suffix: str) -> None:
    """Each accepted suffix gives the same table to the feature store and to training."""
    path = _write(tmp_path / f"t{suffix}")
    table = read_table(path, string_columns=("id",))
    assert table.column("id").to_pylist() == ["007", "x"]
    entities = read_entity_file(path)
    assert list(entities.ids) == ["007", "x"]
    assert entities.columns == ("query_id", "label", "a")
    np.testing.assert_array_equal(entities.matrix[:, 2], [1.5, np.nan])
    data = load_ranking_data(path)
    assert data.feature_names == ("a",) and data.group_sizes.tolist() == [2]
    assert data.ignored_columns == ("id",)
    np.testing.assert_array_equal(data.labels, [1.0, 0.0])


@pytest.mark.parametrize("name", ["t.txt", "t.json", "t.gz", "t"])
def test_other_suffixes_are_refused_by_the_feature_store(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text("id,a\nx,1\n")
    with pytest.raises(TableError, match=r"unsupported file type .*\.csv, \.tsv"):
        read_entity_file(tmp_path / name)


def test_training_reads_other_suffixes_as_letor(tmp_path: Path) -> None:
    """The same `.txt` the feature store refuses is LETOR to training, not a misread CSV."""
    (tmp_path / "t.txt").write_text("1 qid:1 0:2.5\n0 qid:1 1:1\n")
    data = load_ranking_data(tmp_path / "t.txt")
    assert data.feature_names == ("f0", "f1")
    (tmp_path / "t.json").write_text("id,a\nx,1\n")
    with pytest.raises(TrainDataError, match=r"t\.json:1: label 'id,a' is not a number"):
        load_ranking_data(tmp_path / "t.json")


def test_a_ragged_csv_names_its_line(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("id,a\nx,1\ny\n")
    with pytest.raises(TableError, match=r"t\.csv:3: cannot read"):
        read_table(tmp_path / "t.csv")
