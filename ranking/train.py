"""`ranking train`: a LambdaRank model bundle from a file of judged query results.

Inputs (chosen by suffix: .csv / .tsv, .parquet / .pq, anything else is LETOR):

- LETOR / libsvm, as LightGBM reads it: one document per line, `label idx:value idx:value ...`
  (an optional `qid:Q` token after the label and `# comments` are accepted). Features are named
  `f0`..`f{max index}`; an index absent from a line is 0.0, exactly as LightGBM reads it, so a
  model trained here scores like one trained by LightGBM on the same file. Queries come from
  `--query FILE` (one document count per line), else from `FILE.query` beside the data (as
  LightGBM looks for it), else from the `qid:` tokens.
- CSV / Parquet with a group column (default `query_id`) and a label column (default `label`);
  every other numeric column is a feature, in file order; nulls are missing values (NaN).
  Non-numeric columns (ids, text) are left out and listed in the report. Rows of one query
  need not be contiguous: rows are sorted by the group when they are not.

Labels are relevance grades, integers 0..30 (LightGBM's default `label_gain` is 2^grade - 1).

The schema says where each feature comes from when the bundle is served: by default columns
prefixed `u_` / `i_` / `c_` are user / item / context features and all others (and every LETOR
feature) are sent inline with the candidates; `sources` changes the prefix mapping.

Whole queries are held out (`valid_fraction`, seeded) and the report gives NDCG@10 on them,
computed by `ndcg_at_k` and, for comparison, by LightGBM's own `ndcg@10` metric.
"""

from __future__ import annotations

import csv
import logging
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from ranking.scoring.bundle import SOURCES, Bundle, FeatureSpec, write_bundle

__all__ = [
    "DEFAULT_SOURCES",
    "RankingData",
    "TqdmCallback",
    "TrainDataError",
    "TrainReport",
    "load_ranking_data",
    "ndcg_at_k",
    "train_command",
]

logger = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

DEFAULT_SOURCES: Mapping[str, str] = {"u_": "user", "i_": "item", "c_": "context"}
MAX_LABEL = 30  # LightGBM's default label_gain has 31 entries
MAX_DENSE_FEATURES = 100_000
_CSV_SUFFIXES = (".csv", ".tsv", ".csv.gz", ".tsv.gz")
_PARQUET_SUFFIXES = (".parquet", ".pq")
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


@dataclass(frozen=True, eq=False)
class TrainReport:
    """What `train_command` did. `heldout` is the held-out split (None without one)."""

    out: Path
    bundle: Bundle
    n_rows: int
    n_features: int
    n_train_queries: int
    n_valid_queries: int
    ndcg_at_10: float | None
    lightgbm_ndcg_at_10: float | None
    seconds: float
    heldout: RankingData | None
    ignored_columns: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.summary()

    def summary(self) -> str:
        """Lines for the CLI to print."""
        sources = [f.source for f in self.bundle.features]
        counts = ", ".join(f"{sources.count(s)} {s}" for s in SOURCES if s in sources)
        lines = [
            f"bundle     {self.out} (model_version {self.bundle.version})",
            f"data       {self.n_rows} rows, {self.n_features} features ({counts})",
            f"queries    {self.n_train_queries} train, {self.n_valid_queries} held out",
            f"trained in {self.seconds:.1f} s",
        ]
        if self.ndcg_at_10 is not None:
            lines.append(f"NDCG@10    {self.ndcg_at_10:.4f} on the held-out queries")
        if self.ignored_columns:
            lines.append(f"ignored    non-numeric columns: {', '.join(self.ignored_columns)}")
        return "\n".join(lines)


class TqdmCallback:
    """A LightGBM callback that advances a tqdm bar by one tree per boosting round."""

    order = 40
    before_iteration = False

    def __init__(self, bar: tqdm[Any]) -> None:
        self.bar = bar

    def __call__(self, env: Any) -> None:
        self.bar.update(1)
        results = env.evaluation_result_list or []
        if results and (env.iteration + 1) % 10 == 0:
            self.bar.set_postfix({f"{r[0]} {r[1]}": f"{r[2]:.4f}" for r in results}, refresh=False)


def ndcg_at_k(
    scores: npt.ArrayLike, labels: npt.ArrayLike, group_sizes: npt.ArrayLike, k: int = 10
) -> float:
    """Mean NDCG@k over queries, as LightGBM's `ndcg` metric defines it.

    Gain 2^label - 1, discount 1 / log2(2 + position); documents are ranked by descending score
    with ties kept in input order (LightGBM's stable sort); a query shorter than k counts all its
    documents; a query with no relevant document scores 1 (LightGBM's convention: no ranking
    could do better).
    """
    score_arr = np.asarray(scores, dtype=np.float64)
    gains = np.exp2(np.asarray(labels, dtype=np.float64)) - 1.0
    discount = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
    total = 0.0
    start = 0
    for size in np.asarray(group_sizes, dtype=np.int64).tolist():
        end = start + size
        g, s = gains[start:end], score_arr[start:end]
        top = min(k, size)
        ideal = float(np.sort(g)[::-1][:top] @ discount[:top])
        if ideal <= 0.0:
            total += 1.0
        else:
            order = np.argsort(-s, kind="stable")[:top]
            total += float(g[order] @ discount[:top]) / ideal
        start = end
    n = int(np.size(group_sizes))
    return total / n if n else math.nan


# --------------------------------------------------------------------------- loading


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
    name = data.name.lower()
    if name.endswith(_CSV_SUFFIXES) or name.endswith(_PARQUET_SUFFIXES):
        if query is not None:
            raise TrainDataError(f"{query}: a query file goes with LETOR data, not {data.name}")
        table = _read_table(data)
        return _from_table(table, data, group_column, label_column)
    return _read_letor(data, query)


def _read_table(path: Path) -> Any:
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    name = path.name.lower()
    try:
        if name.endswith(_PARQUET_SUFFIXES):
            return pq.read_table(path)
        delimiter = "\t" if ".tsv" in name else ","
        return pa_csv.read_csv(path, parse_options=pa_csv.ParseOptions(delimiter=delimiter))
    except (pa.ArrowInvalid, OSError) as exc:
        where = _locate_csv_error(path) if not name.endswith(_PARQUET_SUFFIXES) else ""
        raise TrainDataError(f"{path}{where}: cannot read: {exc}") from exc


def _locate_csv_error(path: Path) -> str:
    """':LINE' of the first row whose field count differs from the header's, or ''."""
    delimiter = "\t" if ".tsv" in path.name.lower() else ","
    try:
        with path.open(newline="") as f:
            reader = csv.reader(f, delimiter=delimiter)
            header = next(reader, [])
            for row in reader:
                if row and len(row) != len(header):
                    return f":{reader.line_num}"
    except (OSError, UnicodeDecodeError, csv.Error):
        return ""
    return ""


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
    _check_labels(labels, lambda row: f"{path}:{_row_place(path, row)} column {label_column!r}")

    group_col = table.column(group_column)
    if group_col.null_count:
        row = int(np.flatnonzero(group_col.is_null().to_numpy(zero_copy_only=False))[0])
        raise TrainDataError(
            f"{path}:{_row_place(path, row)} group column {group_column!r} is empty"
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


def _row_place(path: Path, row: int) -> str:
    """Where data row `row` (0-based) is in the file: a CSV line, or a Parquet row."""
    if path.name.lower().endswith(_PARQUET_SUFFIXES):
        return f" row {row}"
    return f"{row + 2}"  # a header line, then 1-based lines


def _first_non_numeric(column: Any, path: Path) -> str:
    for row, value in enumerate(column.to_pylist()):
        try:
            float(value)
        except (TypeError, ValueError):
            return f"; {path}:{_row_place(path, row)} holds {value!r}"
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


# --------------------------------------------------------------------------- training


def _source_of(name: str, sources: Mapping[str, str]) -> str:
    best = ""
    for prefix in sources:
        if name.startswith(prefix) and len(prefix) > len(best):
            best = prefix
    return sources[best] if best else "inline"


def train_command(
    data: Path,
    query: Path | None,
    out: Path,
    *,
    group_column: str = "query_id",
    label_column: str = "label",
    trees: int = 300,
    leaves: int = 31,
    learning_rate: float = 0.05,
    min_data_in_leaf: int = 20,
    valid_fraction: float = 0.2,
    seed: int = 0,
    sources: Mapping[str, str] | None = None,
    prior: str | None = None,
    version: str | None = None,
    num_threads: int = 0,
    progress: bool = True,
) -> TrainReport:
    """Train a LambdaRank model on `data` and write a bundle to folder `out`.

    Whole queries (a `valid_fraction` share, drawn with `seed`) are held out of training; the
    report's `ndcg_at_10` is measured on them. `sources` maps feature-name prefixes to bundle
    sources (default `DEFAULT_SOURCES`; unmatched names are `inline`); `prior` names an item
    feature as the bundle's cheap prior. `num_threads` 0 uses every core. Raises
    `TrainDataError` (a ValueError) for unusable inputs or arguments.
    """
    import lightgbm as lgb

    started = time.perf_counter()
    if trees < 1 or leaves < 2 or not 0.0 < learning_rate <= 1.0 or min_data_in_leaf < 1:
        raise TrainDataError(
            "need trees >= 1, leaves >= 2, 0 < learning_rate <= 1 and min_data_in_leaf >= 1"
        )
    if not 0.0 <= valid_fraction < 1.0:
        raise TrainDataError("valid_fraction must be in [0, 1)")
    mapping = dict(DEFAULT_SOURCES if sources is None else sources)
    for prefix, source in mapping.items():
        if source not in SOURCES:
            raise TrainDataError(
                f"source {source!r} for prefix {prefix!r} must be one of {', '.join(SOURCES)}"
            )

    dataset = load_ranking_data(data, query, group_column=group_column, label_column=label_column)
    n_queries = dataset.n_queries
    n_valid = max(1, round(valid_fraction * n_queries)) if valid_fraction > 0 else 0
    if n_queries - n_valid < 1:
        raise TrainDataError(f"{data}: {n_queries} queries are too few to hold {n_valid} out")
    perm = np.random.default_rng(seed).permutation(n_queries)
    valid_q, train_q = np.sort(perm[:n_valid]), np.sort(perm[n_valid:])
    train = dataset.take_queries(train_q)
    heldout = dataset.take_queries(valid_q) if n_valid else None

    names = list(dataset.feature_names)
    specs = [FeatureSpec(name, _source_of(name, mapping)) for name in names]
    if prior is not None and not any(s.name == prior and s.source == "item" for s in specs):
        raise TrainDataError(f"prior {prior!r} is not an item feature of {data}")

    params: dict[str, Any] = {
        "objective": "lambdarank",
        "metric": "ndcg",
        "eval_at": [10],
        "num_leaves": leaves,
        "learning_rate": learning_rate,
        "min_data_in_leaf": min_data_in_leaf,
        "deterministic": True,
        "force_row_wise": True,  # LightGBM otherwise picks row/col-wise by timing: not repeatable
        "seed": seed,
        "num_threads": num_threads,
        "verbosity": -1,
    }
    train_set = lgb.Dataset(
        train.features, train.labels, group=train.group_sizes, feature_name=names
    )
    valid_sets: list[Any] = []
    evals: dict[str, dict[str, list[float]]] = {}
    if heldout is not None:
        valid_sets.append(
            lgb.Dataset(
                heldout.features, heldout.labels, group=heldout.group_sizes, reference=train_set
            )
        )
    desc = f"training {trees}x{leaves}"
    with tqdm(total=trees, desc=desc, unit="tree", file=sys.stderr, disable=not progress) as bar:
        booster = lgb.train(
            params,
            train_set,
            num_boost_round=trees,
            valid_sets=valid_sets,
            valid_names=["heldout"][: len(valid_sets)],
            callbacks=[TqdmCallback(bar), lgb.record_evaluation(evals)],
        )

    ndcg = lgb_ndcg = None
    if heldout is not None:
        predicted = booster.predict(heldout.features, raw_score=True)
        ndcg = ndcg_at_k(predicted, heldout.labels, heldout.group_sizes, 10)
        lgb_ndcg = float(evals["heldout"]["ndcg@10"][-1])
    from ranking.flywheel.reference import build_reference, write_reference

    # The training rows' distribution, for drift monitoring; written before the model so a
    # server watching `out` finds it when it reloads.
    write_reference(out, build_reference(train.features, names))
    bundle = write_bundle(out, booster.model_to_string(), specs, version=version, prior=prior)
    seconds = time.perf_counter() - started
    logger.debug("trained %s in %.1f s (NDCG@10 %s)", out, seconds, ndcg)
    return TrainReport(
        out=Path(out),
        bundle=bundle,
        n_rows=int(dataset.labels.shape[0]),
        n_features=len(names),
        n_train_queries=train.n_queries,
        n_valid_queries=n_valid,
        ndcg_at_10=ndcg,
        lightgbm_ndcg_at_10=lgb_ndcg,
        seconds=seconds,
        heldout=heldout,
        ignored_columns=dataset.ignored_columns,
    )
