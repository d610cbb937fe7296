"""The one reader of tabular files: CSV / TSV (optionally gzipped) and Parquet, by suffix.

Feature tables (`ranking.features.memory.read_entity_file`, `ranking features load`) and
training data (`ranking.train`) both come through here, so the same files are accepted
everywhere: `TABLE_SUFFIXES`. Anything else is refused with a message naming the suffixes
(training reads such files as LETOR instead, see `ranking.train.data`).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CSV_SUFFIXES",
    "PARQUET_SUFFIXES",
    "TABLE_SUFFIXES",
    "TableError",
    "is_parquet",
    "is_table",
    "read_table",
    "row_place",
]

CSV_SUFFIXES = (".csv", ".tsv", ".csv.gz", ".tsv.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")
TABLE_SUFFIXES = CSV_SUFFIXES + PARQUET_SUFFIXES


class TableError(ValueError):
    """A table file cannot be read; the message names the file (and the line when known)."""


def is_table(path: str | Path) -> bool:
    """Whether `path`'s suffix is one `read_table` reads (case-insensitive)."""
    return Path(path).name.lower().endswith(TABLE_SUFFIXES)


def is_parquet(path: str | Path) -> bool:
    return Path(path).name.lower().endswith(PARQUET_SUFFIXES)


def _delimiter(path: Path) -> str:
    return "\t" if path.name.lower().endswith((".tsv", ".tsv.gz")) else ","


def read_table(path: str | Path, *, string_columns: Sequence[str] = ()) -> Any:
    """Read a CSV, TSV or Parquet file into a `pyarrow.Table`.

    CSV columns are typed by pyarrow's inference, except `string_columns`, which stay strings
    (ids such as "007" keep their zeros); empty CSV cells are nulls. Raises `TableError` for an
    unsupported suffix or an unreadable file (for a CSV with a ragged row, naming its line).
    """
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    file = Path(path)
    if not is_table(file):
        raise TableError(
            f"{file}: unsupported file type {''.join(file.suffixes[-2:]) or 'without a suffix'!r}"
            f" (tables are {', '.join(TABLE_SUFFIXES)})"
        )
    try:
        if is_parquet(file):
            return pq.read_table(file)
        parse = pa_csv.ParseOptions(delimiter=_delimiter(file))
        convert = pa_csv.ConvertOptions(column_types=dict.fromkeys(string_columns, pa.string()))
        return pa_csv.read_csv(file, parse_options=parse, convert_options=convert)
    except (pa.ArrowInvalid, OSError) as exc:
        where = "" if is_parquet(file) else _locate_csv_error(file)
        raise TableError(f"{file}{where}: cannot read: {exc}") from exc


def row_place(path: str | Path, row: int) -> str:
    """Where data row `row` (0-based) of a table file is: a CSV line, or a Parquet row."""
    if is_parquet(path):
        return f" row {row}"
    return f"{row + 2}"  # a header line, then 1-based lines


def _locate_csv_error(path: Path) -> str:
    """':LINE' of the first row whose field count differs from the header's, or ''."""
    if path.name.lower().endswith(".gz"):
        return ""
    try:
        with path.open(newline="") as f:
            reader = csv.reader(f, delimiter=_delimiter(path))
            header = next(reader, [])
            for row in reader:
                if row and len(row) != len(header):
                    return f":{reader.line_num}"
    except (OSError, UnicodeDecodeError, csv.Error):
        return ""
    return ""
