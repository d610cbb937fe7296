"""Training data: LETOR / libsvm files, and CSV / Parquet tables with a group column.

- LETOR / libsvm, as LightGBM reads it: one document per line, `label idx:value idx:value ...`
  (an optional `qid:Q` token after the label and `# comments` are accepted). Features are named
  `f0`..`f{max index}`; an index absent from a line is 0.0, exactly as LightGBM reads it, so a
  model trained here scores like one trained by LightGBM on the same file. Queries come from
  `--query FILE` (one document count per line), else from `FILE.query` beside the data (as
  LightGBM looks for it), else from the `qid:` tokens.
- CSV / Parquet (any of `ranking.tables.TABLE_SUFFIXES`, read by `ranking.tables.read_table`)
  with a group column (default `query_id`) and a label column (default `label`); every other
  numeric column is a feature, in file order; nulls are missing values (NaN). Non-numeric
  columns (ids, text) are left out and listed in the report. Rows of one query need not be
  contiguous: rows are sorted by the group when they are not.

A file whose suffix is not a table suffix is read as LETOR. Labels are relevance grades,
integers 0..30 (LightGBM's default `label_gain` is 2^grade - 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ranking.tables import TableError, is_table, read_table, row_place

__all__ = ["MAX_LABEL", "RankingData", "TrainDataError", "load_ranking_data"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

MAX_LABEL = 30  # LightGBM's default label_gain has 31 entries
MAX_DENSE_FEATURES = 100_000
_BAD_NAME_CHARS = frozenset('[]{}:,"')  # LightGBM refuses JSON specials in feature names


class TrainDataError(ValueError):
    """A training input cannot be used; the message names the file and the line or column."""


@dataclass(frozen=True, eq=False)
class RankingData:
    """Documents grouped by query: rows of one query are contiguous, in `group_sizes` order.

    features: (n_rows, n_features) float64, C-contiguous, NaN = missing.
    labels: (n_rows,) float64 integer grades.
    group_sizes: (n_queries,) int64 rows per query.
    """

    features: F64
    labels: F64
    group_sizes: I64
    feature_names: tuple[str, ...]
    ignored_columns: tuple[str, ...] = ()

    @property
    def n_queries(self) -> int:
        return int(self.group_sizes.shape[0])

    def take_queries(self, queries: npt.NDArray[np.integer[Any]]) -> RankingData:
        """The sub-dataset of the given query indices, in ascending query order."""
        chosen = np.zeros(self.n_queries, dtype=bool)
        chosen[queries] = True
        rows = np.repeat(chosen, self.group_sizes)
        return RankingData(
            np.ascontiguousarray(self.features[rows]),
            self.labels[rows],
            self.group_sizes[chosen],
            self.feature_names,
            self.ignored_columns,
        )


def load_ranking_data(
    data: Path,
    query: Path | None = None,
    *,
    group_column: str = "query_id",
    label_column: str = "label",
) -> RankingData:
    """Read a LETOR, CSV or Parquet file (see the module docstring) into `RankingData`."""
    data = Path(data)
    if not data.is_file():
        raise TrainDataError(f"{data}: file not found")
    if is_table(data):
        if query is not None:
            raise TrainDataError(f"{query}: a query file goes with LETOR data, not {data.name}")
        try:
            table = read_table(data)
        except TableError as exc:
            raise TrainDataError(str(exc)) from exc
        return _from_table(table, data, group_column, label_column)
    return _read_letor(data, query)


def _from_table(table: Any, path: Path, group_column: str, label_column: str) -> RankingData:
    import pyarrow as pa
    import pyarrow.compute as pc

    names = list(table.column_names)
    for role, col in (("group", group_column), ("label", label_column)):
        if col not in names:
            raise TrainDataError(f"{path}: no {role} column {col!r} (columns: {', '.join(names)})")
    n = table.num_rows
    if n == 0:
        raise TrainDataError(f"{path}: no rows")

    label_col = table.column(label_column)
    if not (pa.types.is_integer(label_col.type) or pa.types.is_floating(label_col.type)):
        raise TrainDataError(
            f"{path}: label column {label_column!r} must be numeric"
            f"{_first_non_numeric(label_col, path)}"
        )
    labels = pc.cast(label_col, pa.float64()).to_numpy(zero_copy_only=False)
    _check_labels(labels, lambda row: f"{path}:{row_place(path, row)} column {label_column!r}")

    group_col = table.column(group_column)
    if group_col.null_count:
        row = int(np.flatnonzero(group_col.is_null().to_numpy(zero_copy_only=False))[0])
        raise TrainDataError(
            f"{path}:{row_place(path, row)} group column {group_column!r} is empty"
        )
    keys = group_col.to_numpy(zero_copy_only=False)

    features: list[str] = []
    ignored: list[str] = []
    for col_name in names:
        if col_name in (group_column, label_column):
            continue
        typ = table.column(col_name).type
        if pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_boolean(typ):
            _check_feature_name(col_name, path)
            features.append(col_name)
        else:
            ignored.append(col_name)
    if not features:
        raise TrainDataError(f"{path}: no numeric feature columns")
    matrix = np.empty((n, len(features)), dtype=np.float64)
    for j, col_name in enumerate(features):
        matrix[:, j] = pc.cast(table.column(col_name), pa.float64()).to_numpy(zero_copy_only=False)

    order, sizes = _group_rows(keys)
    if order is not None:
        matrix, labels = matrix[order], labels[order]
    return RankingData(np.ascontiguousarray(matrix), labels, sizes, tuple(features), tuple(ignored))


def _first_non_numeric(column: Any, path: Path) -> str:
    for row, value in enumerate(column.to_pylist()):
        try:
            float(value)
        except (TypeError, ValueError):
            return f"; {path}:{row_place(path, row)} holds {value!r}"
    return ""


def _group_rows(keys: npt.NDArray[Any]) -> tuple[I64 | None, I64]:
    """(row order or None when already contiguous, group sizes) for per-row group keys."""
    _, codes = np.unique(keys, return_inverse=True)
    codes = codes.reshape(-1)
    starts = np.flatnonzero(np.concatenate(([True], codes[1:] != codes[:-1])))
    n_groups = int(codes.max()) + 1
    order: I64 | None = None
    if starts.shape[0] != n_groups:  # some query's rows are split: sort rows by group
        order = np.argsort(codes, kind="stable").astype(np.int64)
        codes = codes[order]
        starts = np.flatnonzero(np.concatenate(([True], codes[1:] != codes[:-1])))
    sizes = np.diff(np.append(starts, codes.shape[0])).astype(np.int64)
    return order, sizes


def _check_labels(labels: F64, where: Any) -> None:
    bad = ~np.isfinite(labels) | (labels < 0) | (labels > MAX_LABEL) | (labels != np.floor(labels))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise TrainDataError(
            f"{where(row)}: label {float(labels[row]):g} is not an integer grade 0..{MAX_LABEL}"
        )


def _check_feature_name(name: str, path: Path) -> None:
    if not name or any(ch.isspace() or ch in _BAD_NAME_CHARS for ch in name):
        raise TrainDataError(
            f"{path}: column {name!r} cannot be a LightGBM feature name "
            '(no spaces or any of []{}:,")'
        )


def _read_letor(path: Path, query: Path | None) -> RankingData:
    try:
        text = path.read_text()
    except UnicodeDecodeError as exc:
        raise TrainDataError(f"{path}: not a text file (byte {exc.start})") from exc
    labels: list[str] = []
    qids: list[str] = []
    rows: list[int] = []
    idx: list[str] = []
    vals: list[str] = []
    line_of_row: list[int] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        tokens = line.partition("#")[0].split()
        if not tokens:
            continue
        row = len(labels)
        labels.append(tokens[0])
        line_of_row.append(lineno)
        rest = tokens[1:]
        if rest and rest[0].startswith("qid:"):
            qids.append(rest[0][4:])
            rest = rest[1:]
        for col, tok in enumerate(rest, 2):
            i, sep, v = tok.partition(":")
            if not sep or not i or not v:
                raise TrainDataError(f"{path}:{lineno}: token {col} {tok!r} is not index:value")
            idx.append(i)
            vals.append(v)
        rows.extend([row] * len(rest))
    n = len(labels)
    if n == 0:
        raise TrainDataError(f"{path}: no data lines")
    if qids and len(qids) != n:
        raise TrainDataError(f"{path}: some lines have a qid: token and some do not")

    row_arr = np.asarray(rows, dtype=np.int64)
    label_arr = _parse_numbers(labels, np.float64, path, line_of_row, "label")
    _check_labels(label_arr, lambda row: f"{path}:{line_of_row[row]}")
    pair_lines = [line_of_row[r] for r in rows] if idx else []
    idx_arr = _parse_numbers(idx, np.int64, path, pair_lines, "feature index")
    val_arr = _parse_numbers(vals, np.float64, path, pair_lines, "feature value")
    if idx_arr.size and int(idx_arr.min()) < 0:
        bad = int(np.flatnonzero(idx_arr < 0)[0])
        raise TrainDataError(f"{path}:{pair_lines[bad]}: negative feature index {idx[bad]}")
    n_features = int(idx_arr.max()) + 1 if idx_arr.size else 1
    if n_features > MAX_DENSE_FEATURES:
        bad = int(np.argmax(idx_arr))
        raise TrainDataError(
            f"{path}:{pair_lines[bad]}: feature index {idx[bad]} is too large "
            f"(at most {MAX_DENSE_FEATURES - 1})"
        )
    matrix = np.zeros((n, n_features), dtype=np.float64)
    matrix[row_arr, idx_arr] = val_arr

    sizes = _letor_groups(path, query, n, qids)
    names = tuple(f"f{j}" for j in range(n_features))
    order = None
    if sizes is None:
        order, sizes = _group_rows(np.asarray(qids))
    if order is not None:
        matrix, label_arr = matrix[order], label_arr[order]
    return RankingData(np.ascontiguousarray(matrix), label_arr, sizes, names)


def _parse_numbers(
    tokens: Sequence[str],
    dtype: type[np.float64] | type[np.int64],
    path: Path,
    lines: Sequence[int],
    what: str,
) -> Any:
    """Convert all tokens at once; on failure find the first bad one for the message."""
    try:
        return np.asarray(tokens).astype(dtype) if tokens else np.empty(0, dtype=dtype)
    except (ValueError, OverflowError):
        convert = float if dtype is np.float64 else int
        for i, tok in enumerate(tokens):
            try:
                convert(tok)
            except (ValueError, OverflowError):
                raise TrainDataError(f"{path}:{lines[i]}: {what} {tok!r} is not a number") from None
        raise TrainDataError(f"{path}: cannot parse {what}s") from None


def _letor_groups(path: Path, query: Path | None, n_rows: int, qids: list[str]) -> I64 | None:
    """Group sizes from the query file; None when the qid: tokens should be used."""
    if query is None:
        beside = path.with_name(path.name + ".query")
        if beside.is_file():
            query = beside
        elif qids:
            return None
        else:
            raise TrainDataError(
                f"{path}: no query groups: pass --query FILE, put {beside.name} beside it, "
                "or add qid: tokens"
            )
    if not query.is_file():
        raise TrainDataError(f"{query}: query file not found")
    sizes: list[int] = []
    for lineno, line in enumerate(query.read_text().splitlines(), 1):
        token = line.strip()
        if not token:
            continue
        try:
            size = int(token)
        except ValueError:
            raise TrainDataError(f"{query}:{lineno}: {token!r} is not a document count") from None
        if size <= 0:
            raise TrainDataError(f"{query}:{lineno}: a query needs at least one document")
        sizes.append(size)
    total = sum(sizes)
    if total != n_rows:
        raise TrainDataError(
            f"{query}: counts add up to {total} documents but {path} has {n_rows} lines of data"
        )
    return np.asarray(sizes, dtype=np.int64)
